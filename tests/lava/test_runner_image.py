"""`dmalab build runner-image`: the container image LAVA's docker device type runs. Inside it,
without any extra privilege, `dmalab doctor` passes and a shard of the suite runs under TCG and
records the provenance of this checkout's builds."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from dmalab.artifacts.runner_image import podman_env

DMALAB = str(Path(sys.executable).with_name("dmalab"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    archive = tmp_path_factory.mktemp("oci") / "runner.tar"
    proc = subprocess.run([DMALAB, "build", "runner-image", "--export", str(archive)],
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    print("\n" + "\n".join(line for line in proc.stderr.splitlines() if "runner image" in line))
    return proc.stdout.strip(), archive


def podman_run(image: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", "run", "--rm", image, *argv], env=podman_env(),
                          capture_output=True, text=True, timeout=900)  # fmt: skip


def test_tagged_by_commit_and_cached(built: tuple[str, Path]) -> None:
    name, _ = built
    assert name.startswith("localhost/dmalab-runner:")
    again = subprocess.run([DMALAB, "build", "runner-image"], capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert again.returncode == 0 and again.stdout.strip() == name
    assert "runner image up to date" in again.stderr


def test_exported_as_oci_archive(built: tuple[str, Path]) -> None:
    with tarfile.open(built[1]) as archive:
        names = set(archive.getnames())
    assert {"oci-layout", "index.json"} <= names


def test_doctor_passes_inside(built: tuple[str, Path]) -> None:
    proc = podman_run(built[0], "dmalab", "doctor")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "prebuilt QEMU and images" in proc.stdout


def test_a_shard_runs_inside_under_tcg(built: tuple[str, Path], tmp_path: Path) -> None:
    here = subprocess.run([DMALAB, "run", "--accel", "tcg", "-k", "003", "--shard", "1/2",
                           "--json"], capture_output=True, text=True, timeout=600)  # fmt: skip
    inside = podman_run(built[0], "dmalab", "run", "--accel", "tcg", "-k", "003",
                        "--shard", "1/2", "--json")  # fmt: skip
    assert here.returncode == 0 and inside.returncode == 0, inside.stderr
    a, b = json.loads(here.stdout), json.loads(inside.stdout)
    assert [(r["topology"], r["variant"], r["outcome"]) for r in b["results"]] == [
        (r["topology"], r["variant"], r["outcome"]) for r in a["results"]
    ]
    # The same builds as here: shards run in the image and here merge.
    for key in ("qemu", "guest"):
        assert b["meta"][key] != {} and b["meta"]["accel"] == a["meta"]["accel"]
    assert b["meta"]["qemu"]["build_key"] == a["meta"]["qemu"]["build_key"]
    assert b["meta"]["guest"] == a["meta"]["guest"]
    assert b["meta"]["dmalab_commit"] == a["meta"]["dmalab_commit"]
