"""Topology files: every shipped one becomes the expected command line; every mistake becomes one
line naming the file, the field and the problem, with exit status 2 and no traceback."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

import kernels
from dmalab.cli import main
from dmalab.machine.qemu_argv import Boot, qemu_argv
from dmalab.machine.topology import load_topology, shipped_topologies

BOOT = Boot(Path("/img/vmlinux"), Path("/img/initramfs.cpio"), "console=ttyS0 quiet")


def devices(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]


def test_the_shipped_topologies_are_there() -> None:
    assert {"default", "virtio-iommu", "coherent"} <= set(shipped_topologies())


def test_default_topology_argv() -> None:
    argv = qemu_argv(load_topology("default"), BOOT, accel="tcg", ram_fd=7)
    assert argv[:2] == ["-machine", "q35,kernel-irqchip=split,memory-backend=ram"]
    assert "memory-backend-file,id=ram,size=512M,mem-path=/dev/fd/7,share=on" in argv
    assert devices(argv) == [
        "intel-iommu,caching-mode=on,intremap=on,aw-bits=48",
        "pcie-root-port,id=rp-shared,bus=pcie.0,chassis=1",
        "pcie-pci-bridge,id=shared,bus=rp-shared",
        "ncdma,id=dma0,bus=shared,coherent=off,line-size=64,cache-size=262144,cache-ways=8,"
        "iotlb-entries=64,max-xfer=67108864,vlog-size=256,xlog-size=64,xlog-segs=1024",
        "ncdma,id=dma1,bus=shared,coherent=off,line-size=64,cache-size=262144,cache-ways=8,"
        "iotlb-entries=64,max-xfer=67108864,vlog-size=256,xlog-size=64,xlog-segs=1024",
        "pcie-root-port,id=rp-dma2,bus=pcie.0,chassis=2",
        "ncdma,id=dma2,bus=rp-dma2,coherent=off,line-size=64,cache-size=262144,cache-ways=8,"
        "iotlb-entries=64,max-xfer=67108864,vlog-size=256,xlog-size=64,xlog-segs=1024",
        "virtio-serial-pci,id=vser,bus=pcie.0",
        "virtserialport,bus=vser.0,chardev=agent,name=dmalab.agent",
    ]
    assert argv[-6:] == [
        "-kernel",
        "/img/vmlinux",
        "-initrd",
        "/img/initramfs.cpio",
        "-append",
        "console=ttyS0 quiet",
    ]
    assert argv[argv.index("-serial") + 1] == "chardev:console"
    assert argv[argv.index("-accel") + 1] == "tcg"


def test_virtio_iommu_topology_argv() -> None:
    argv = qemu_argv(load_topology("virtio-iommu"), BOOT, accel="kvm")
    assert argv[:2] == ["-machine", "q35"]  # no intremap, no shared-memory backend asked for
    assert not any("memory-backend" in a for a in argv)
    devs = devices(argv)
    assert devs[0] == "virtio-iommu-pci,bus=pcie.0"
    assert not any(d.startswith("intel-iommu") for d in devs)
    assert [d.split(",")[1] for d in devs if d.startswith("ncdma")] == [
        "id=dma0",
        "id=dma1",
        "id=dma2",
    ]
    assert argv[argv.index("-accel") + 1] == "kvm"


def test_arm64_topology_argv() -> None:
    argv = qemu_argv(load_topology("arm64-smmuv3"), BOOT, accel="tcg", ram_fd=7)
    assert argv[:2] == ["-machine", "virt,gic-version=3,iommu=smmuv3,memory-backend=ram"]
    assert argv[argv.index("-cpu") + 1] == "cortex-a57" and "-bios" not in argv
    devs = devices(argv)
    # dma0 and dma1: two functions of one slot on a root port (one IOMMU group)
    assert devs[0] == "pcie-root-port,id=rp-shared,bus=pcie.0,chassis=1"
    assert devs[1].startswith("ncdma,id=dma0,bus=rp-shared,addr=0.0,multifunction=on,")
    assert devs[2].startswith("ncdma,id=dma1,bus=rp-shared,addr=0.1,multifunction=on,")
    assert not any(d.startswith(("pcie-pci-bridge", "intel-iommu", "pxb")) for d in devs)
    other = qemu_argv(load_topology("arm64-virtio-iommu"), BOOT, accel="tcg")
    assert other[:2] == ["-machine", "virt,gic-version=3"]
    assert devices(other)[0] == "virtio-iommu-pci,bus=pcie.0"


def test_coherent_topology_argv() -> None:
    ncdma = [
        d
        for d in devices(qemu_argv(load_topology("coherent"), BOOT, accel="tcg"))
        if d.startswith("ncdma")
    ]
    assert len(ncdma) == 3 and all(",coherent=on," in d for d in ncdma)


def test_placements_and_bypass(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    (tmp_path / "bz").write_bytes(kernels.vmlinux())
    (tmp_path / kernels.RELEASE).mkdir()
    (tmp_path / kernels.RELEASE / "modules.builtin").write_text("")
    path.write_text(
        '[iommu]\nkind = "intel-iommu"\nintremap = false\ncaching-mode = false\n'
        '[[device]]\nid = "a"\nbus = "root"\niotlb-entries = 0\n'
        '[[device]]\nid = "b"\niommu = "bypass"\ncoherent = true\n'
        '[kernel]\nargs = ["loglevel=7"]\nkernel = "bz"\n'
        f'modules = "{kernels.RELEASE}"\n'
    )
    topo = load_topology(path)
    assert topo.kernel.kernel == tmp_path / "bz" and topo.kernel.args == ("loglevel=7",)
    argv = qemu_argv(topo, BOOT, accel="tcg")
    assert argv[:2] == ["-machine", "q35"]
    assert devices(argv)[:5] == [
        "intel-iommu,caching-mode=off,intremap=off,aw-bits=48",
        "pxb-pcie,id=pxb-bypass,bus=pcie.0,bus_nr=128,bypass_iommu=on",
        "ncdma,id=a,bus=pcie.0,coherent=off,line-size=64,cache-size=262144,cache-ways=8,"
        "iotlb-entries=0,max-xfer=67108864,vlog-size=256,xlog-size=64,xlog-segs=1024",
        "pcie-root-port,id=rp-b,bus=pxb-bypass,chassis=1",
        "ncdma,id=b,bus=rp-b,coherent=on,line-size=64,cache-size=262144,cache-ways=8,"
        "iotlb-entries=64,max-xfer=67108864,vlog-size=256,xlog-size=64,xlog-segs=1024",
    ]


def test_transfer_limit_and_log_sizes(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(
        "[machine]\nmemory = 16384\n"  # room for b's 8 GiB of transaction log
        '[[device]]\nid = "a"\nmax-xfer = 4100\n'
        '[[device]]\nid = "b"\nvlog-size = 1\nxlog-size = 4096\nxlog-segs = 65536\n'
    )
    a, b = load_topology(path).devices
    assert (a.max_xfer, b.max_xfer) == (4100, 64 << 20)
    ncdma = [d for d in devices(qemu_argv(load_topology(path), BOOT, accel="tcg")) if "ncdma" in d]
    assert ncdma == [
        "ncdma,id=a,bus=rp-a,coherent=off,line-size=64,cache-size=262144,cache-ways=8,"
        "iotlb-entries=64,max-xfer=4100,vlog-size=256,xlog-size=64,xlog-segs=1024",
        "ncdma,id=b,bus=rp-b,coherent=off,line-size=64,cache-size=262144,cache-ways=8,"
        "iotlb-entries=64,max-xfer=67108864,vlog-size=1,xlog-size=4096,xlog-segs=65536",
    ]


def test_guest_test_topologies_are_the_shipped_ones_with_a_transfer_limit() -> None:
    """tests/guest boots these: what users run, except that dma1 makes the driver split."""
    guest = Path(__file__).parents[1] / "guest" / "topologies"
    for name, shipped in (("intel-iommu", "default"), ("virtio-iommu", "virtio-iommu")):
        ours, theirs = load_topology(guest / f"{name}.toml"), load_topology(shipped)
        assert ours.name == name
        assert (ours.machine, ours.iommu, ours.bridges, ours.kernel) == (
            theirs.machine,
            theirs.iommu,
            theirs.bridges,
            theirs.kernel,
        )
        assert ours.devices == tuple(
            replace(d, max_xfer=4100) if d.id == "dma1" else d for d in theirs.devices
        )


def test_accel_must_be_resolved() -> None:
    with pytest.raises(ValueError):
        qemu_argv(load_topology("default"), BOOT, accel="auto")


MALFORMED = [
    ("not toml", "name = ", "not valid TOML"),
    ("unknown top-level field", 'nmae = "x"', "nmae: unknown field"),
    ("machine not a table", "machine = 3", "machine: must be a table"),
    ("memory a string", '[machine]\nmemory = "512M"', "machine.memory: must be an integer"),
    ("memory too small", "[machine]\nmemory = 16", "machine.memory: must be in [128, 16384]"),
    ("smp zero", "[machine]\nsmp = 0", "machine.smp: must be in [1, 64]"),
    ("bad accel", '[machine]\naccel = "hvf"', "machine.accel: must be one of auto, tcg, kvm"),
    ("unknown machine field", "[machine]\ncpus = 2", "machine.cpus: unknown field"),
    ("iommu without kind", "[iommu]\ncaching-mode = true", "iommu.kind: missing"),
    ("bad iommu kind", '[iommu]\nkind = "amd-iommu"', "iommu.kind: must be one of"),
    (
        "caching-mode not bool",
        '[iommu]\nkind = "intel-iommu"\ncaching-mode = 1',
        "iommu.caching-mode: must be true or false, not an integer",
    ),
    (
        "intel option on virtio",
        '[iommu]\nkind = "virtio-iommu"\nintremap = true',
        "iommu.intremap: only applies to intel-iommu",
    ),
    (
        "aw-bits 40",
        '[iommu]\nkind = "intel-iommu"\naw-bits = 40',
        "iommu.aw-bits: must be 39 or 48",
    ),
    ("device table not array", '[device]\nid = "a"', "device: must be an array of tables"),
    ("device without id", "[[device]]\ncoherent = true", "device[0].id: missing"),
    ("device id with space", '[[device]]\nid = "dma 0"', "device[0].id: 'dma 0' is not an id"),
    (
        "duplicate device id",
        '[[device]]\nid = "a"\n[[device]]\nid = "a"',
        "device[1].id: 'a' is already used by a device",
    ),
    (
        "bridge and device share an id",
        '[[bridge]]\nid = "a"\n[[device]]\nid = "a"',
        "device[0].id: 'a' is already used by a bridge",
    ),
    ("unknown bus", '[[device]]\nid = "a"\nbus = "nowhere"', "device[0].bus: no bridge 'nowhere'"),
    (
        "line size not power of two",
        '[[device]]\nid = "a"\nline-size = 48',
        "device[0].line-size: must be a power of two",
    ),
    (
        "cache size not a multiple",
        '[[device]]\nid = "a"\ncache-size = 1000',
        "device[0].cache-size: must be a multiple of line-size * cache-ways (512)",
    ),
    ("too many ways", '[[device]]\nid = "a"\ncache-ways = 65', "device[0].cache-ways: must be in"),
    (
        "coherent a string",
        '[[device]]\nid = "a"\ncoherent = "yes"',
        "device[0].coherent: must be true or false, not a string",
    ),
    ("iotlb negative", '[[device]]\nid = "a"\niotlb-entries = -1', "device[0].iotlb-entries"),
    (
        "max-xfer under a page",
        '[[device]]\nid = "a"\nmax-xfer = 4095',
        "device[0].max-xfer: must be in [4096, 1073741824], not 4095",
    ),
    (
        "max-xfer over 1 GiB",
        '[[device]]\nid = "a"\nmax-xfer = 1073741825',
        "device[0].max-xfer: must be in [4096, 1073741824]",
    ),
    (
        "max-xfer with a unit",
        '[[device]]\nid = "a"\nmax-xfer = "4K"',
        "device[0].max-xfer: must be an integer, not a string",
    ),
    ("vlog-size zero", '[[device]]\nid = "a"\nvlog-size = 0', "device[0].vlog-size: must be in"),
    (
        "xlog-size too large",
        '[[device]]\nid = "a"\nxlog-size = 4097',
        "device[0].xlog-size: must be in [1, 4096], not 4097",
    ),
    (
        "xlog-segs a bool",
        '[[device]]\nid = "a"\nxlog-segs = true',
        "device[0].xlog-segs: must be an integer, not true or false",
    ),
    ("unknown device kind", '[[device]]\nid = "a"\nkind = "edu"', "device[0].kind: must be one of"),
    ("unknown device field", '[[device]]\nid = "a"\ncache = 5', "device[0].cache: unknown field"),
    (
        "iommu yes without iommu",
        '[[device]]\nid = "a"\niommu = "yes"',
        "device[0].iommu: the topology has no [iommu] table",
    ),
    (
        "bypass behind a bridge",
        '[iommu]\nkind = "intel-iommu"\n[[bridge]]\nid = "b"\n'
        '[[device]]\nid = "a"\nbus = "b"\niommu = "bypass"',
        "device[0].iommu: bypass needs",
    ),
    (
        "intel-iommu on arm64",
        '[machine]\narch = "aarch64"\n[iommu]\nkind = "intel-iommu"',
        "iommu.kind: intel-iommu does not exist on aarch64 (virt offers smmuv3, virtio-iommu)",
    ),
    (
        "smmuv3 on x86",
        '[iommu]\nkind = "smmuv3"',
        "iommu.kind: smmuv3 does not exist on x86_64 (q35 offers intel-iommu, virtio-iommu)",
    ),
    ("unknown arch", '[machine]\narch = "riscv64"', "machine.arch: must be one of x86_64, aarch64"),
    (
        "kvm for arm64",
        '[machine]\narch = "aarch64"\naccel = "kvm"',
        "machine.accel: kvm cannot run an aarch64 guest on this host",
    ),
    (
        "cpu on x86",
        '[machine]\ncpu = "cortex-a57"',
        "machine.cpu: x86_64 topologies use QEMU's default",
    ),
    (
        "unknown arm64 cpu",
        '[machine]\narch = "aarch64"\ncpu = "cortex-a53"',
        "machine.cpu: must be one of cortex-a57, cortex-a72, max",
    ),
    (
        "bypass on arm64",
        '[machine]\narch = "aarch64"\n[iommu]\nkind = "smmuv3"\n'
        '[[device]]\nid = "a"\niommu = "bypass"',
        "device[0].iommu: bypass needs an extra root bus",
    ),
    (
        "pci-bridge on arm64",
        '[machine]\narch = "aarch64"\n[[bridge]]\nid = "b"',
        "bridge[0].kind: pci-bridge on aarch64",
    ),
    ("unknown bridge kind", '[[bridge]]\nid = "b"\nkind = "switch"', "bridge[0].kind: must be"),
    (
        "nine functions in one slot",
        '[[bridge]]\nid = "b"\nkind = "multifunction"\n'
        + "".join(f'[[device]]\nid = "d{i}"\nbus = "b"\n' for i in range(9)),
        "bridge 'b': 9 devices, but one multifunction slot has 8 functions",
    ),
    ("kernel args with a space", '[kernel]\nargs = ["a b"]', "kernel.args[0]: must be one"),
    (
        "modules without kernel",
        '[kernel]\nmodules = "."',
        "kernel.modules: needs kernel.kernel too",
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_topology_is_one_line_with_file_field_problem(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    result = CliRunner().invoke(main, ["topology", "check", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"dmalab: error: {path}: "), lines[0]
    assert expected in lines[0]
    assert "Traceback" not in result.output


def test_unknown_topology_name_lists_the_shipped_ones() -> None:
    result = CliRunner().invoke(main, ["topology", "check", "no-such-topology"])
    assert result.exit_code == 2
    assert (
        "shipped: arm64-noncoherent, arm64-noncoherent-virtio-iommu, arm64-smmuv3, "
        "arm64-virtio-iommu, coherent, default, "
        "virtio-iommu" in result.stderr
    )


def test_list_names_every_shipped_topology() -> None:
    result = CliRunner().invoke(main, ["topology", "list"])
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.splitlines()] == shipped_topologies()
