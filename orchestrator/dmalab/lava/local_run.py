"""A LAVA job run on this machine by LAVA's own dispatcher (`lava-run`), with no server: the
device configuration lava-server would render from a device dictionary is rendered here from
LAVA's device-type template, and the test cases are read from the dispatcher's log.

For the qemu device type dmalab's QEMU goes first on PATH: LAVA's template names the binary
`qemu-system-<arch>` and its validation runs it with --version. For the docker device type a
`docker` that runs podman with dmalab's containers.conf goes first (artifacts/runner_image.py):
the dispatcher calls `docker run ... IMAGE bash` and drives the shell in it.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dmalab.artifacts.lava_dispatcher import Dispatcher
from dmalab.artifacts.qemu import QemuBuild
from dmalab.artifacts.runner_image import podman_env
from dmalab.errors import BadInput, EnvironmentProblem

#: The dispatcher's own address: given, so it does not look up a network interface.
DISPATCHER_CONFIG = "dispatcher_ip: 127.0.0.1\n"
#: Rendering as lava-server does it (sandboxed Jinja2, trim_blocks), run by the dispatcher's
#: interpreter, which has Jinja2: argv is the templates' directory and the device type, the
#: context comes as JSON on stdin.
RENDER = """\
import json, sys
from jinja2 import FileSystemLoader
from jinja2.sandbox import SandboxedEnvironment
env = SandboxedEnvironment(loader=FileSystemLoader(sys.argv[1]), trim_blocks=True,
                           autoescape=False)
template = env.from_string("{% extends '" + sys.argv[2] + ".jinja2' %}")
sys.stdout.write(template.render(**json.load(sys.stdin)))
"""


@dataclass(frozen=True)
class JobRun:
    job_result: str  # the dispatcher's "job" case: pass or fail
    error: str
    cases: list[dict[str, Any]]  # the test shell's cases (not LAVA's own actions)
    seconds: float
    log: Path

    @property
    def ok(self) -> bool:
        return (
            self.job_result == "pass"
            and bool(self.cases)
            and all(c.get("result") in ("pass", "skip") for c in self.cases)
        )


def render_device(dispatcher: Dispatcher, device_type: str, context: Mapping[str, Any]) -> str:
    """The device configuration lava-server renders for a device of `device_type` (a device
    dictionary that only extends the template), with the job's context as variables."""
    device_types = dispatcher.packages.device_types
    if not (device_types / f"{device_type}.jinja2").is_file():
        raise BadInput(f"LAVA has no device type {device_type!r}")
    proc = subprocess.run(
        [str(dispatcher.python), "-c", RENDER, str(device_types), device_type],
        input=json.dumps(dict(context)), capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise EnvironmentProblem(f"rendering LAVA's {device_type}.jinja2 failed: {detail}")
    return proc.stdout


def run_job(
    dispatcher: Dispatcher, job_file: Path, out_dir: Path, qemu: QemuBuild, *,
    job_id: int = 1, timeout: float = 3600, device_vars: Mapping[str, Any] | None = None,
) -> JobRun:  # fmt: skip
    """Run the job in `job_file`; the dispatcher's log and its results go into out_dir.
    `device_vars` are the device dictionary's variables (e.g. `docker_volumes`), which the
    job's context may not set."""
    job = yaml.safe_load(job_file.read_text())
    if not isinstance(job, dict) or "device_type" not in job:
        raise BadInput(f"{job_file}: not a LAVA job (no device_type)")
    out_dir.mkdir(parents=True, exist_ok=True)
    device = out_dir / "device.yaml"
    variables = {**(job.get("context") or {}), **(device_vars or {})}
    device.write_text(render_device(dispatcher, job["device_type"], variables))
    (out_dir / "dispatcher.yaml").write_text(DISPATCHER_CONFIG)
    log = out_dir / "lava-run.log"
    with tempfile.TemporaryDirectory(prefix="dmalab-lava-bin.") as tmp:
        for arch, binary in qemu.binaries.items():
            (Path(tmp) / f"qemu-system-{arch}").symlink_to(binary)
        env = {**podman_env(), "PATH": f"{tmp}:{os.environ.get('PATH', '')}"}
        docker = Path(tmp) / "docker"
        docker.write_text('#!/bin/sh\nexec podman "$@"\n')
        docker.chmod(0o755)
        argv = [*dispatcher.lava_run(), "--job-id", str(job_id), "--output-dir", str(out_dir),
                "--device", str(device), "--dispatcher", str(out_dir / "dispatcher.yaml"),
                str(job_file)]  # fmt: skip
        started = time.monotonic()
        with open(log, "w") as handle:
            subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, env=env,
                           timeout=timeout, check=False)  # fmt: skip
        seconds = time.monotonic() - started
    return _read_log(log, seconds)


def _read_log(log: Path, seconds: float) -> JobRun:
    """The results lines of the dispatcher's log (one YAML flow mapping a line)."""
    cases, job_result, error = [], "fail", "no job result in the log"
    for line in log.read_text(errors="replace").splitlines():
        if '"lvl": "results"' not in line:
            continue
        try:
            entry = yaml.safe_load(line)
        except yaml.YAMLError:
            continue
        msg = entry.get("msg") if isinstance(entry, dict) else None
        if not isinstance(msg, dict):
            continue
        if msg.get("definition") == "lava":
            if msg.get("case") == "job":
                job_result, error = str(msg.get("result")), str(msg.get("error_msg", ""))
            continue
        cases.append(msg)
    return JobRun(job_result, error, cases, seconds, log)
