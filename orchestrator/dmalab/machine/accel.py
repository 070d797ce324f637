"""Which accelerator QEMU uses: `resolve_accel("auto" | "tcg" | "kvm")`.

"auto" uses KVM only when it really runs a stock kernel. `/dev/kvm` can exist and still be
unusable: a nested `kvm_pvm` hypervisor stops a stock kernel with `KVM internal error` and QEMU
then sits paused for ever. So the probe boots the real image with `-accel kvm` and a short
timeout and takes KVM only if the guest prints `DMALAB-READY`; a stop in `internal-error` (seen
through QMP), a panic, an early exit or the timeout all mean TCG. The QEMU of the probe is
always killed and reaped. The verdict is cached per (kernel sha256, QEMU binary) in
`<cache>/machine/accel/`.

"kvm" asked for explicitly but unusable raises `EnvironmentProblem` with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from pathlib import Path

from dmalab.artifacts.cache import cache_root, write_atomic
from dmalab.artifacts.image import ImageBuild
from dmalab.artifacts.qemu import QemuBuild
from dmalab.errors import BadInput, DmalabError, EnvironmentProblem
from dmalab.machine.qemu_argv import Boot, qemu_argv
from dmalab.machine.topology import minimal_topology
from dmalab.machine.vm import Vm

PROBE_TIMEOUT = 8.0
HOST_ARCH = platform.machine()
MODES = ("auto", "tcg", "kvm")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _cache_file(qemu: QemuBuild, image: ImageBuild) -> Path:
    st = qemu.binary.stat()
    key = hashlib.sha256(
        f"{_file_sha256(image.kernel)}\0{qemu.binary.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    ).hexdigest()[:24]
    return cache_root() / "machine" / "accel" / f"{key}.json"


def kvm_device_problem() -> str | None:
    """Why /dev/kvm cannot even be opened, or None."""
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm does not exist"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not readable and writable by this user"
    return None


async def probe_kvm(
    qemu: QemuBuild, image: ImageBuild, *, timeout: float = PROBE_TIMEOUT
) -> tuple[bool, str]:
    """Boot the image under KVM: (usable, what happened)."""
    problem = kvm_device_problem()
    if problem:
        return False, problem
    probe = minimal_topology("kvm-probe", memory_mib=256, devices=())
    boot = Boot(image.kernel, image.initramfs, image.cmdline_for("none"))
    vm = Vm(
        qemu.base_argv(),
        lambda fd: qemu_argv(probe, boot, accel="kvm", ram_fd=fd, agent=False),
        ram_mib=256,
        shared_ram=False,
        agent=False,
        ready="marker",
        ncdma=(),
        name="kvm-probe",
        boot_timeout=timeout,
        quit_timeout=1.0,
    )
    start = time.perf_counter()
    try:
        async with vm:
            return True, f"a stock kernel booted under KVM in {time.perf_counter() - start:.1f} s"
    except DmalabError as exc:
        first = str(exc).splitlines()[0].split("; console ends:")[0]
        return False, first
    finally:
        # a failed probe is an answer, not a failure: keep nothing of it
        if vm.process is not None and vm.process.run_dir is not None:
            shutil.rmtree(vm.process.run_dir, ignore_errors=True)


async def resolve_accel(
    mode: str = "auto",
    *,
    qemu: QemuBuild | None = None,
    image: ImageBuild | None = None,
    refresh: bool = False,
    arch: str = "x86_64",
) -> str:
    """ "tcg" or "kvm" for `mode` and a guest of `arch`; "auto" probes KVM once per kernel and
    QEMU binary. A guest of another architecture than the host's always runs under TCG."""
    if mode not in MODES:
        raise BadInput(f"accelerator {mode!r}: expected one of {', '.join(MODES)}")
    if arch != HOST_ARCH:
        if mode == "kvm":
            raise BadInput(f"accelerator kvm cannot run an {arch} guest on this {HOST_ARCH} host")
        return "tcg"
    if mode == "tcg":
        return "tcg"
    if mode == "kvm" and (problem := kvm_device_problem()):
        raise EnvironmentProblem(f"accelerator kvm requested, but {problem}")
    if qemu is None:
        from dmalab.artifacts.qemu import ensure_qemu

        qemu = ensure_qemu()
    if image is None:
        from dmalab.artifacts.image import ensure_image

        image = ensure_image(lambda _m: None)
    cache = _cache_file(qemu, image)
    verdict = None
    if not refresh:
        try:
            verdict = json.loads(cache.read_text())
        except (OSError, ValueError):
            verdict = None
    if verdict is None:
        usable, why = await probe_kvm(qemu, image)
        verdict = {
            "kvm": usable,
            "why": why,
            "probed": time.time(),
            "kernel": str(image.kernel),
            "qemu": str(qemu.binary),
        }
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, json.dumps(verdict, indent=1) + "\n")
    if verdict["kvm"]:
        return "kvm"
    if mode == "kvm":
        raise EnvironmentProblem(
            f"accelerator kvm requested, but KVM cannot run the guest kernel here: "
            f"{verdict['why']} (probe cached in {cache}; use tcg or auto)"
        )
    return "tcg"
