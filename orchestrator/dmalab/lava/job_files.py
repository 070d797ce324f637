"""The jobs `dmalab lava job` writes: the smoke jobs made from this machine's builds, and the
YAML files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import yaml

from dmalab.artifacts.cache import write_atomic
from dmalab.artifacts.image import ensure_image
from dmalab.artifacts.progress import Progress
from dmalab.artifacts.qemu import ensure_qemu
from dmalab.lava.jobs import SmokeJob, smoke_job
from dmalab.machine.topology import load_topology


def smoke_jobs(
    topologies: Sequence[str], name: str, kernel_url: str | None, initrd_url: str | None
) -> dict[str, dict[str, Any]]:
    """`smoke-<topology>.yaml` -> job, booting the guest image built for each topology's
    architecture (file:// URLs unless given) with the firmware of dmalab's QEMU build."""
    qemu = ensure_qemu(Progress())
    out = {}
    for each in dict.fromkeys(topologies):
        topo = load_topology(each)
        image = ensure_image(lambda m: click.echo(m, err=True), arch=topo.arch)
        job = SmokeJob(
            topology=topo,
            kernel_url=kernel_url or image.kernel.resolve().as_uri(),
            initrd_url=initrd_url or image.initramfs.resolve().as_uri(),
            # LAVA waits for the kernel's "Linux version" banner, a notice `quiet` hides.
            cmdline=image.cmdline_for(topo.iommu_kind, *topo.kernel.args, "loglevel=6"),
            firmware_dirs=tuple(str(d) for d in qemu.firmware_dirs),
            name=name,
        )
        out[f"smoke-{topo.name}.yaml"] = smoke_job(job)
    return out


def dump(job: Mapping[str, Any]) -> str:
    # No folding: each test shell command stays on one line, as written.
    return yaml.safe_dump(dict(job), sort_keys=False, default_flow_style=False, width=1 << 16)


def write_jobs(jobs: Mapping[str, Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """One YAML file per job in out_dir; the paths, in order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for file_name, job in jobs.items():
        write_atomic(out_dir / file_name, dump(job))
        files.append(out_dir / file_name)
    return files
