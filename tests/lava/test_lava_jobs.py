"""`dmalab lava job`: one job per shard on LAVA's docker device type and a guest smoke job on its
qemu device type, every one valid by LAVA's own schema (Debian's lava-common); `--submit`
through lavacli."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dmalab.lava.jobs import ShardJobs, shard_job, smoke_options
from dmalab.lava.schema import lava_validator
from dmalab.machine.topology import load_topology

DMALAB = str(Path(sys.executable).with_name("dmalab"))


def dmalab(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DMALAB, *args], capture_output=True, text=True, env=env, timeout=600)


def steps(job: dict[str, Any]) -> list[str]:
    test = next(a["test"] for a in job["actions"] if "test" in a)
    return test["definitions"][0]["repository"]["run"]["steps"]


@pytest.fixture(scope="module")
def job_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Eight shards of a matrix run on two keywords, and a smoke job per architecture."""
    out = tmp_path_factory.mktemp("jobs")
    proc = dmalab("lava", "job", "--shards", "8", "--output", str(out), "--check",
                  "--smoke", "default", "--smoke", "arm64-smmuv3", "--", "--matrix", "-k",
                  "revoke or 003")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    files = [Path(line) for line in proc.stdout.splitlines()]
    assert [f.parent for f in files] == [out] * 10
    return {f.name: yaml.safe_load(f.read_text()) for f in files}


def test_every_job_is_valid_for_lava(job_set: dict[str, dict[str, Any]]) -> None:
    validate = lava_validator()
    for name, job in job_set.items():
        validate(job, strict=True)  # raises on anything LAVA would refuse
        assert job["device_type"] == ("qemu" if name.startswith("smoke-") else "docker"), name


def test_one_docker_job_per_shard(job_set: dict[str, dict[str, Any]]) -> None:
    shards = [job_set[f"shard-{i}-of-8.yaml"] for i in range(1, 9)]
    for i, job in enumerate(shards, 1):
        run = steps(job)[1]
        assert f"--shard {i}/8" in run and "--matrix -k 'revoke or 003'" in run
        where = f'"/dmalab-results/${{DMALAB_COMMIT:-unknown}}/shard-{i}-of-8"'
        assert run.endswith(f"--results {where} || true")
        assert steps(job)[2].startswith(f"dmalab lava results {where} ||")
        deploy = job["actions"][0]["deploy"]
        assert deploy["image"]["local"] is True
        assert deploy["image"]["name"].startswith("localhost/dmalab-runner:")
        assert job["metadata"]["dmalab.shard"] == f"{i}/8"


def test_smoke_jobs_boot_dmalab_qemu_with_the_topology(job_set: dict[str, dict[str, Any]]) -> None:
    x86, arm = job_set["smoke-default.yaml"], job_set["smoke-arm64-smmuv3.yaml"]
    assert x86["context"]["arch"] == "x86_64" and arm["context"]["arch"] == "aarch64"
    for job, topology in ((x86, "default"), (arm, "arm64-smmuv3")):
        context = job["context"]
        assert context["no_kvm"] is True and context["netdevice"] == "none"
        devices = [o for o in context["extra_options"] if o.startswith("-device ncdma,")]
        assert len(devices) == len(load_topology(topology).devices)
        images = job["actions"][0]["deploy"]["images"]
        assert images["kernel"]["url"].startswith("file:///")
        assert images["ramdisk"]["overlays"] == {"lava": True}
        tests = steps(job)
        assert sum("-selftest" in s for s in tests) == len(devices)
    assert any(o.startswith("-device intel-iommu") for o in x86["context"]["extra_options"])
    assert "-machine virt,gic-version=3,iommu=smmuv3" in arm["context"]["extra_options"]


def test_lava_owns_memory_console_and_boot_files() -> None:
    options = smoke_options(load_topology("default"), [])
    assert not any(o.split()[0] in ("-m", "-serial", "-kernel", "-initrd", "-append",
                                    "-nodefaults", "-display") for o in options)  # fmt: skip


def test_a_pulled_image_is_named_as_is() -> None:
    job = shard_job(1, ShardJobs(2, "registry.example/dmalab-runner:1", local=False))
    assert job["actions"][0]["deploy"]["image"] == "registry.example/dmalab-runner:1"
    lava_validator()(job, strict=True)


def fake_lavacli(tmp_path: Path, identities: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "lavacli"
    script.write_text(f"""#!/bin/sh
echo "$*" >> {tmp_path}/lavacli.log
case "$*" in
*"identities list"*) printf 'Identities:\\n{identities}' ;;
*"jobs submit"*) echo 10$(wc -l < {tmp_path}/lavacli.log) ;;
esac
""")
    script.chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")


def test_submit_hands_each_job_to_lavacli(tmp_path: Path) -> None:
    env = fake_lavacli(tmp_path, "* lab\\n")
    proc = dmalab("lava", "job", "--shards", "2", "--no-smoke", "--output", str(tmp_path / "j"),
                  "--submit", "--identity", "lab", env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[1] for line in proc.stdout.splitlines()] == ["102", "103"]
    log = (tmp_path / "lavacli.log").read_text().splitlines()
    assert log[1:] == [f"--identity lab jobs submit {tmp_path}/j/shard-{i}-of-2.yaml"
                       for i in (1, 2)]  # fmt: skip


@pytest.mark.parametrize("identities", [None, ""])
def test_submit_without_lavacli_or_identity_is_one_line(
    tmp_path: Path, identities: str | None
) -> None:
    if identities is None:
        env = dict(os.environ, PATH=str(Path(sys.executable).parent) + ":/usr/bin:/bin")
        words = "lavacli is not installed"
    else:
        env, words = fake_lavacli(tmp_path, identities), "lavacli has no identity 'default'"
    proc = dmalab("lava", "job", "--no-smoke", "--output", str(tmp_path / "j"), "--submit", env=env)
    assert proc.returncode == 3
    assert proc.stderr.startswith("dmalab: error: ") and words in proc.stderr
    assert len(proc.stderr.splitlines()) == 1
