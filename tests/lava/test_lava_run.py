"""The smoke jobs through LAVA's real dispatcher: `dmalab lava run-job` runs `lava-run` (Debian's
lava-dispatcher, unpacked, in a venv) on a device configuration rendered from LAVA's
qemu.jinja2; dmalab's QEMU boots the guest image with each architecture's topology, and the
test shell's cases all pass. A job whose check cannot hold fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DMALAB = str(Path(sys.executable).with_name("dmalab"))
TOPOLOGIES = ("default", "arm64-smmuv3")


def dmalab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DMALAB, *args], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("jobs")
    smoke = [w for t in TOPOLOGIES for w in ("--smoke", t)]
    proc = dmalab("lava", "job", "--output", str(out), *smoke)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_smoke_job_passes_under_lava_run(jobs: Path, tmp_path: Path, topology: str) -> None:
    proc = dmalab("lava", "run-job", str(jobs / f"smoke-{topology}.yaml"),
                  "--output-dir", str(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print("\n" + proc.stdout.splitlines()[-1])
    cases = [line.split(": ") for line in proc.stdout.splitlines()[:-1]]
    names = [c[0].split(".", 1)[1] for c in cases]
    assert names[:2] == ["ncdma-driver-loaded", "ncdma-devices-probed"]
    assert len([n for n in names if n.endswith("-selftest")]) == 3
    assert all(result == "pass" for _, result in cases)
    assert proc.stdout.splitlines()[-1].startswith("job: pass in ")
    assert (tmp_path / "device.yaml").read_text().count("-device ncdma,") >= 3


def test_a_failing_check_fails_the_job(jobs: Path, tmp_path: Path) -> None:
    job = (jobs / "smoke-default.yaml").read_text().replace("-eq 3", "-eq 4")
    assert "-eq 4" in job
    (tmp_path / "job.yaml").write_text(job)
    proc = dmalab(
        "lava", "run-job", str(tmp_path / "job.yaml"), "--output-dir", str(tmp_path / "o")
    )
    assert proc.returncode == 1
    assert "ncdma-devices-probed: fail" in proc.stdout
    assert proc.stderr.splitlines()[-1].startswith("dmalab: error: lava job ")
