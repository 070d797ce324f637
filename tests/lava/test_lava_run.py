"""The smoke jobs through LAVA's real dispatcher: `dmalab lava run-job` runs `lava-run` (Debian's
lava-dispatcher, unpacked, in a venv) on a device configuration rendered from LAVA's
qemu.jinja2; dmalab's QEMU boots the guest image with each architecture's topology, and the
test shell's cases all pass. A job whose check cannot hold fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dmalab.scenarios.runner import SHIPPED

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


def test_two_docker_shards_under_lava_run_give_the_unsharded_cases(tmp_path: Path) -> None:
    """Two shard jobs on the docker device type (podman behind LAVA's `docker` calls), in the
    runner image: together their LAVA test cases are those of the unsharded run here, and
    their results directories, kept by a volume, merge into the unsharded run's."""
    keyword = "003-sgt-cache and uncached"  # one item per shipped topology
    image = dmalab("build", "runner-image")
    assert image.returncode == 0, image.stderr
    jobs = tmp_path / "jobs"
    made = dmalab("lava", "job", "--shards", "2", "--no-smoke", "--minutes", "10",
                  "--output", str(jobs), "--", "-k", keyword)  # fmt: skip
    assert made.returncode == 0, made.stderr
    got: list[tuple[str, str]] = []
    verdicts = []
    kept = tmp_path / "kept"  # the lab's volume that outlives the containers
    kept.mkdir()
    for i in (1, 2):
        proc = dmalab("lava", "run-job", str(jobs / f"shard-{i}-of-2.yaml"),
                      "--output-dir", str(tmp_path / f"out{i}"),
                      "--volume", f"{kept}:/dmalab-results")  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        print("\n" + proc.stdout.splitlines()[-1])
        for line in proc.stdout.splitlines()[:-1]:
            name, result = line.rsplit(": ", 1)
            case = name.split(".", 1)[1]  # SET.CASE
            if case == "dmalab-verdict":
                verdicts.append(result)
            else:
                got.append((case, result))
    assert verdicts == ["pass", "pass"]
    whole = subprocess.run(
        [DMALAB, "run", "--accel", "tcg", "-k", keyword, "--results", str(tmp_path / "all")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert whole.returncode == 0, whole.stderr
    cases = dmalab("lava", "results", str(tmp_path / "all"), "--yaml")
    rows = yaml.safe_load(cases.stdout)
    want = sorted((f"{r['metadata']['set']}.{r['name']}", r["result"]) for r in rows
                  if r["name"] != "dmalab-verdict")  # fmt: skip
    assert sorted(got) == want
    assert len(want) == len(SHIPPED)
    # The shards' results, kept by the volume, merge into the unsharded run.
    shards = sorted(kept.glob("*/shard-*-of-2"))
    assert [p.name for p in shards] == ["shard-1-of-2", "shard-2-of-2"]
    merged = dmalab("report", "--merge", *map(str, shards), "--results", str(tmp_path / "m"))
    assert merged.returncode == 0, merged.stderr
    compared = dmalab("report", "--compare", str(tmp_path / "all"), str(tmp_path / "m"))
    unchanged = f"unchanged: {len(SHIPPED)}"
    assert compared.returncode == 0 and unchanged in compared.stdout, compared.stdout
