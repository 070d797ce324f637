"""What results say about what produced them, without a guest: results.json `meta`, topology
names, JUnit classnames and failure messages."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from dmalab.artifacts.cache import repo_root
from dmalab.artifacts.qemu import QemuBuild
from dmalab.errors import BadInput
from dmalab.machine.topology import load_topology, topology_path
from dmalab.provenance import dmalab_commit, qemu_build_key
from dmalab.scenarios.report import failure_message, write_junit
from dmalab.scenarios.results import Result
from dmalab.scenarios.runner import Machine, _names_unique, provenance

EVIDENCE = [
    "step 4 (device A reads while the CPU owns the buffer): STALE_READ dma0 line 0x3000 "
    "expected 5a5a5a5a got 00000000",
    "step 11 (CPU writes while device B owns it): BYTES 64 bytes differ at offset 0x40",
    "step 12: CONFLICTING_WRITE dma1 line 0x3040",
    "step 12: LOST_WRITE dma1 line 0x3080",
]


def result(outcome: str, evidence: list[str], topology: str = "default") -> Result:
    return Result("000-arnd-table", "000", topology, "no-sync", "detected", outcome, [4, 11],
                  [4] if evidence else [], evidence, {}, [])  # fmt: skip


def fake_qemu(where: Path) -> QemuBuild:
    binary = where / "qemu-system-x86_64"
    binary.write_text("#!/bin/sh\necho 'QEMU emulator version 10.0.13 (Debian 1:10.0.13)'\n")
    binary.chmod(0o755)
    return QemuBuild({"x86_64": binary}, [], {"binary_key": "10.0.13-3bcf8e80-341b05af29d5"})


def test_a_topology_is_named_by_its_name_not_its_file(tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "my-default.toml"
    copy.parent.mkdir()
    shutil.copy(topology_path("default"), copy)
    topo = load_topology(copy)
    machine = Machine(topo)
    assert machine.topology == topo.name == "default"


def test_two_files_with_one_name_cannot_run_together(tmp_path: Path) -> None:
    copy = tmp_path / "default.toml"
    shutil.copy(topology_path("default"), copy)
    with pytest.raises(BadInput, match=f"default and {copy} are both named 'default'"):
        _names_unique({"default": load_topology("default"), str(copy): load_topology(copy)})


def test_meta_says_what_produced_the_run(tmp_path: Path) -> None:
    copy = tmp_path / "mine.toml"
    shutil.copy(topology_path("virtio-iommu"), copy)
    loaded = {"default": load_topology("default"), str(copy): load_topology(copy)}
    manifest = Path("/cache/image/builds/8f1df283e1/manifest.json")
    image = SimpleNamespace(kernel_release="6.12.57+deb12-amd64", manifest=manifest)
    machines = [
        {"topology": "default", "vm": 1, "accel": "tcg"},
        {"topology": "virtio-iommu", "vm": 1, "accel": "tcg"},
        {"topology": "virtio-iommu", "vm": 2},  # never booted: says nothing
    ]
    meta = provenance(loaded, fake_qemu(tmp_path), dict.fromkeys(loaded, image), machines)
    assert meta["topology_files"] == {
        "default": str(topology_path("default")), "virtio-iommu": str(copy),
    }  # fmt: skip
    assert meta["accel"] == {"default": "tcg", "virtio-iommu": "tcg"}
    assert meta["guest"]["virtio-iommu"] == {
        "kernel_release": "6.12.57+deb12-amd64", "image_key": "8f1df283e1",
    }  # fmt: skip
    assert meta["qemu"] == {
        "version": "QEMU emulator version 10.0.13 (Debian 1:10.0.13)",
        "build_key": "10.0.13-3bcf8e80-341b05af29d5",
        "binary": str(tmp_path / "qemu-system-x86_64"),
    }
    assert meta["host"]["hostname"] and meta["host"]["kernel"] and meta["host"]["cores"]
    head = subprocess.run(["git", "-C", str(repo_root()), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert meta["dmalab_commit"].removesuffix("-dirty") == head == dmalab_commit()[:40]


def test_a_users_qemu_is_keyed_by_its_content(tmp_path: Path) -> None:
    build = fake_qemu(tmp_path)
    own = QemuBuild({"x86_64": build.binary}, [], {"source": "DMALAB_QEMU"})
    key = qemu_build_key(own)
    assert key.startswith("sha256-") and len(key) == len("sha256-") + 20


def test_junit_failure_message_says_what_was_found(tmp_path: Path) -> None:
    found = failure_message(result("FAIL", EVIDENCE))
    assert found == (
        "expected detected at steps 4,11, got FAIL at steps 4: "
        + "; ".join(EVIDENCE[:3])
        + "; and 1 more"
    )
    assert failure_message(result("FAIL", [])) == (
        "expected detected at steps 4,11, got FAIL: no finding"
    )
    write_junit([result("FAIL", EVIDENCE), result("detected", EVIDENCE[:1])], tmp_path / "j.xml")
    root = ET.parse(tmp_path / "j.xml").getroot()
    (failure,) = root.iter("failure")
    assert failure.get("message") == found and failure.text == "\n".join(EVIDENCE)
    assert {c.get("classname") for c in root.iter("testcase")} == {"default.000-arnd-table"}
