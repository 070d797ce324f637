"""The guest image: built once and then cached, its manifest true to its files, and it boots under
TCG to DMALAB-READY behind intel-iommu and virtio-iommu with udmabuf, the system dma-heap and
debugfs dma_buf present.

The first run downloads Debian's kernel (about 125 MB); later runs use the cache. Boot tests need a
QEMU: $DMALAB_QEMU, else dmalab.artifacts.qemu.ensure_qemu() once that exists; without either they
are skipped.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import select
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dmalab.artifacts import cpio, guest_kernel, image
from dmalab.artifacts.cache import cache_root, repo_root
from dmalab.errors import BadInput

BOOT_TIMEOUT_S = 90  # generous: TCG on a busy 2-core machine
QEMU_FIRMWARE = ("/usr/share/qemu", "/usr/share/seabios")

#: The recipe's modules that Debian's 6.12 does not build in, each after its dependencies.
RECIPE_MODULES = ["virtio_iommu", "drm", "drm_kms_helper", "drm_shmem_helper", "vgem"]


def _quiet(_message: str) -> None:
    pass


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _qemu_binary() -> Path | None:
    if os.environ.get("DMALAB_QEMU"):
        return Path(os.environ["DMALAB_QEMU"])
    try:
        from dmalab.artifacts.qemu import ensure_qemu  # type: ignore[import-not-found]
    except ImportError:
        return None
    built = ensure_qemu()
    return Path(getattr(built, "binary", built))


@pytest.fixture(scope="session")
def qemu() -> Path:
    binary = _qemu_binary()
    if binary is None or not binary.is_file():
        pytest.fail("no QEMU: set DMALAB_QEMU to a qemu-system-x86_64")
    return binary


@pytest.fixture(scope="session")
def built() -> image.ImageBuild:
    return image.ensure_image(progress=_quiet)


def _fake_checkout(root: Path, *, stubs: bool) -> Path:
    """A checkout with this one's images/ and, with stubs, stand-ins for the driver and agent."""
    shutil.copytree(repo_root() / "images", root / "images")
    if stubs:
        for name, files in STUBS.items():
            (root / "guest-tests" / name).mkdir(parents=True)
            for filename, text in files.items():
                (root / "guest-tests" / name / filename).write_text(text)
    return root


@contextmanager
def _checkout(root: Path) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(image, "repo_root", lambda: root)
        yield


@pytest.fixture(scope="session")
def stub_built(tmp_path_factory: pytest.TempPathFactory) -> image.ImageBuild:
    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.fail("gcc and make are needed to build the stand-in driver and agent")
    root = _fake_checkout(tmp_path_factory.mktemp("checkout"), stubs=True)
    with _checkout(root):
        return image.ensure_image(progress=_quiet)


# ---------------------------------------------------------------------------------------------
# Building and caching


def test_warm_build_is_cached_and_fast(built: image.ImageBuild) -> None:
    messages: list[str] = []
    started = time.monotonic()
    again = image.ensure_image(progress=messages.append)
    elapsed = time.monotonic() - started
    assert again == built
    assert any(m.startswith("up to date") for m in messages), messages
    assert elapsed < 2.0, f"warm build took {elapsed:.2f} s"


def test_manifest_matches_files(built: image.ImageBuild) -> None:
    manifest = json.loads(built.manifest.read_text())
    assert {"kernel", "initramfs", "packages", "modules", "parts", "cmdline"} <= manifest.keys()
    assert manifest["kernel"]["sha256"] == _sha256(built.kernel)
    assert manifest["initramfs"]["sha256"] == _sha256(built.initramfs)
    release = manifest["kernel"]["release"]
    assert re.fullmatch(r"6\.12\.\d+\+deb12-amd64", release), release
    assert built.kernel.read_bytes()[:4] == b"\x7fELF"
    names = set(manifest["packages"])
    abi = release.removesuffix("-amd64")
    assert {
        f"linux-image-{release}-unsigned",
        f"linux-headers-{release}",
        f"linux-headers-{abi}-common",
        f"linux-kbuild-{abi}",
        "busybox-static",
    } <= names
    debs = cache_root() / "image" / "debs"
    for name, package in manifest["packages"].items():
        deb = debs / f"{name}_{package['version'].replace(':', '%3a')}.deb"
        assert _sha256(deb) == package["sha256"], name
    assert set(manifest["parts"]) == {"driver", "agent"}
    expected = [*RECIPE_MODULES, *(["ncdma"] if built.parts["driver"] else [])]
    assert manifest["modules"]["included"] == expected
    assert "DMALAB" not in manifest["cmdline"]["default"]
    assert "intel_iommu=on" in built.cmdline_for("intel-iommu")


def _read_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    """path -> (mode, data) of a newc archive."""
    entries: dict[str, tuple[int, bytes]] = {}
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701", f"bad magic at {pos}"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, data[pos : pos + size])
        pos = (pos + size + 3) & ~3


def test_initramfs_layout(built: image.ImageBuild) -> None:
    entries = _read_newc(built.initramfs.read_bytes())
    release = built.kernel_release
    assert stat.S_ISCHR(entries["dev/console"][0])
    assert entries["init"][1] == (repo_root() / "images" / "init").read_bytes()
    assert entries["init"][0] & 0o111
    assert stat.S_ISLNK(entries["bin/sh"][0]) and entries["bin/sh"][1] == b"busybox"
    assert entries["sbin/modprobe"][1] == b"../bin/busybox"
    module = entries[f"lib/modules/{release}/kernel/drivers/iommu/virtio-iommu.ko"][1]
    assert module[:4] == b"\x7fELF", "modules must be stored decompressed"
    dep = entries[f"lib/modules/{release}/modules.dep"][1].decode()
    assert "kernel/drivers/iommu/virtio-iommu.ko:" in dep


def test_cpio_writer_is_deterministic() -> None:
    def make(order: list[str]) -> bytes:
        archive = cpio.Archive()
        for path in order:
            archive.file(path, path.encode(), 0o644)
        archive.symlink("bin/sh", "busybox")
        out = io.BytesIO()
        archive.write(out)
        return out.getvalue()

    first = make(["b/c", "a", "b/a"])
    assert first == make(["b/a", "a", "b/c"])
    entries = _read_newc(first)
    assert list(entries) == ["a", "b", "b/a", "b/c", "bin", "bin/sh"]
    assert stat.S_ISDIR(entries["b"][0])


def test_malformed_kernel_is_one_line_bad_input(tmp_path: Path) -> None:
    garbage = tmp_path / "bzImage"
    garbage.write_bytes(b"not a kernel\n" * 100)
    cases = [
        ({"kernel": garbage}, "neither a bzImage nor an ELF vmlinux"),
        ({"kernel": garbage, "arch": "aarch64"}, "not an arm64 Image (gzip'd or plain)"),
        ({"arch": "riscv64"}, "arch 'riscv64': expected one of x86_64, aarch64"),
        ({"kernel": tmp_path / "missing"}, "no such file"),
        ({"modules": tmp_path}, "modules given without kernel"),
    ]
    for kwargs, words in cases:
        with pytest.raises(BadInput) as raised:
            image.ensure_image(progress=_quiet, **kwargs)
        message = str(raised.value)
        assert words in message and "\n" not in message, message


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_bring_your_own_kernel(built: image.ImageBuild, tmp_path: Path, arch: str) -> None:
    """Debian's kernel (bzImage; arm64: gzip'd Image) and module tree, handed in as a user's:
    same release, user source, the same uncompressed kernel inside."""
    built = built if arch == "x86_64" else image.ensure_image(progress=_quiet, arch=arch)
    manifest = json.loads(built.manifest.read_text())
    modules = Path(manifest["kernel"]["modules_tree"])
    bzimage = modules.parents[2] / "boot" / f"vmlinuz-{built.kernel_release}"
    with _checkout(_fake_checkout(tmp_path / "checkout", stubs=False)):
        own = image.ensure_image(progress=_quiet, kernel=bzimage, modules=modules, arch=arch)
    assert own.arch == arch and own.kernel.name == ("vmlinux" if arch == "x86_64" else "Image")
    assert guest_kernel.kernel_arch(bzimage) == arch
    assert guest_kernel.kernel_arch(own.kernel) == arch  # the uncompressed one too
    data = json.loads(own.manifest.read_text())
    assert data["kernel"]["source"] == "user"
    assert data["kernel"]["origin"] == str(bzimage)
    assert data["kernel"]["origin_sha256"] == _sha256(bzimage)
    assert own.kernel_release == built.kernel_release
    assert data["kernel"]["sha256"] == manifest["kernel"]["sha256"]  # same vmlinux inside
    assert data["modules"]["included"] == RECIPE_MODULES


def test_driver_without_headers_is_bad_input(built: image.ImageBuild, tmp_path: Path) -> None:
    manifest = json.loads(built.manifest.read_text())
    modules = Path(manifest["kernel"]["modules_tree"])  # Debian's: no build/ in it
    bzimage = modules.parents[2] / "boot" / f"vmlinuz-{built.kernel_release}"
    with _checkout(_fake_checkout(tmp_path / "checkout", stubs=True)):
        with pytest.raises(BadInput, match="needs the kernel's headers"):
            image.ensure_image(progress=_quiet, kernel=bzimage, modules=modules)
        with pytest.raises(BadInput, match="no modules tree given"):
            image.ensure_image(progress=_quiet, kernel=bzimage)


def test_stub_driver_and_agent_are_included(stub_built: image.ImageBuild) -> None:
    data = json.loads(stub_built.manifest.read_text())
    assert stub_built.parts == {"driver": True, "agent": True}
    entries = _read_newc(stub_built.initramfs.read_bytes())
    assert entries["sbin/dmalab-agent"][1][:4] == b"\x7fELF"
    assert data["parts"]["driver"]["path"].lstrip("/") in entries
    dep = entries[f"lib/modules/{stub_built.kernel_release}/modules.dep"][1].decode()
    assert "extra/ncdma.ko:" in dep


# ---------------------------------------------------------------------------------------------
# Booting


class Guest:
    """A QEMU process with the serial console on its stdin/stdout."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.output = b""

    def expect(self, pattern: bytes, timeout: float = BOOT_TIMEOUT_S) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        assert self.proc.stdout is not None
        while not (match := regex.search(self.output)):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                tail = self.output[-3000:].decode(errors="replace")
                raise AssertionError(f"no {pattern!r} within {timeout} s; console:\n{tail}")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.5))
            if ready:
                self.output += os.read(self.proc.stdout.fileno(), 65536)
        return match

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()


IOMMU_ARGS = {
    "intel-iommu": [
        "-machine", "q35,kernel-irqchip=split",
        "-device", "intel-iommu,caching-mode=on,intremap=on",
    ],
    "virtio-iommu": ["-machine", "q35", "-device", "virtio-iommu-pci"],
}  # fmt: skip


@contextmanager
def boot(
    qemu: Path, built: image.ImageBuild, iommu: str, *extra_cmdline: str, qemu_args: tuple = ()
) -> Iterator[Guest]:
    firmware = [arg for d in QEMU_FIRMWARE for arg in ("-L", d)]
    args = [
        str(qemu), *firmware, "-bios", "/usr/share/qemu/qboot.rom",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-accel", "tcg", "-m", "512", *IOMMU_ARGS[iommu],
        "-kernel", str(built.kernel), "-initrd", str(built.initramfs),
        "-append", built.cmdline_for(iommu, *extra_cmdline),
        "-serial", "stdio", *qemu_args,
    ]  # fmt: skip
    proc = subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        yield Guest(proc)
    finally:
        proc.kill()
        proc.wait(timeout=30)


INVENTORY = rb"DMALAB-INVENTORY ([^\r\n]*)\r?\n"


def _inventory(guest: Guest) -> dict[str, str]:
    line = guest.expect(INVENTORY).group(1).decode()
    return dict(word.split("=", 1) for word in line.split())


@pytest.mark.parametrize("iommu", ["intel-iommu", "virtio-iommu"])
def test_boots_to_ready_with_dma_buf_inventory(
    qemu: Path, built: image.ImageBuild, iommu: str
) -> None:
    started = time.monotonic()
    with boot(qemu, built, iommu, "dmalab.inventory=1") as guest:
        guest.expect(rb"DMALAB-READY")
        ready_s = time.monotonic() - started
        found = _inventory(guest)
    print(f"{iommu}: DMALAB-READY after {ready_s:.2f} s")
    assert found["kernel"] == built.kernel_release
    assert found["udmabuf"] == "yes"
    assert found["dma_heap_system"] == "yes"
    assert found["debugfs_dma_buf"] == "yes"
    assert found["iommu"] != "none"
    assert "DMA" in found["group_types"].split(",")
    if iommu == "virtio-iommu":
        assert "virtio_iommu" in found["modules"].split(",")
    if built.parts["driver"]:
        assert "ncdma" in found["modules"].split(",")


def test_agent_runs_on_its_port_then_a_shell_remains(
    qemu: Path, stub_built: image.ImageBuild, tmp_path: Path
) -> None:
    port_out = tmp_path / "agent-port.out"
    serial = (
        "-device", "virtio-serial-pci",
        "-chardev", f"file,id=agent,path={port_out}",
        "-device", "virtserialport,chardev=agent,name=dmalab.agent",
    )  # fmt: skip
    with boot(qemu, stub_built, "virtio-iommu", "dmalab.inventory=1", qemu_args=serial) as guest:
        guest.expect(rb"DMALAB-READY")
        found = _inventory(guest)
        guest.expect(rb"agent-stub: wrote to /dev/vport\d+p\d+")
        guest.expect(rb"agent exited with status 0")
        guest.send("echo shell-$((6 * 7))\n")
        guest.expect(rb"shell-42")
    assert {"ncdma", "virtio_iommu"} <= set(found["modules"].split(","))
    assert port_out.read_bytes() == b"agent-stub hello\n"


STUBS = {
    "driver": {
        "Kbuild": "obj-m := ncdma.o\n",
        "ncdma.c": """\
// Stand-in for the ncdma driver: a module that imports the dma-buf namespace.
#include <linux/dma-buf.h>
#include <linux/module.h>

static int __init ncdma_stub_init(void)
{
\tpr_info("ncdma stub loaded\\n");
\treturn 0;
}

static void __exit ncdma_stub_exit(void)
{
}

module_init(ncdma_stub_init);
module_exit(ncdma_stub_exit);
MODULE_LICENSE("GPL");
MODULE_IMPORT_NS(DMA_BUF);
""",
    },
    "agent": {
        "Makefile": "dmalab-agent: agent.c\n\t$(CC) -static -O2 -o $@ $<\n",
        "agent.c": """\
// Stand-in for dmalab-agent: writes one line to the port it is given, then exits.
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
\tconst char hello[] = "agent-stub hello\\n";
\tint fd;

\tif (argc != 2 || (fd = open(argv[1], O_RDWR)) < 0) {
\t\tperror("agent-stub: open");
\t\treturn 2;
\t}
\tif (write(fd, hello, strlen(hello)) != (ssize_t)strlen(hello))
\t\treturn 3;
\tprintf("agent-stub: wrote to %s\\n", argv[1]);
\treturn 0;
}
""",
    },
}
