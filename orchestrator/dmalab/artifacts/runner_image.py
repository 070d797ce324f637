"""The runner image: a container image with dmalab, its QEMU (both targets), the firmware and
the guest images, for LAVA's docker device type and any container CI.

Built with Debian's tools and no registry: mmdebstrap makes a minimal bookworm root file system
with the run-time packages (Python, the firmware, the shared libraries dmalab's QEMU links
against), `podman import` turns it into the base image, and `podman build` adds the checkout
(installed editable into a venv from wheels made on this machine), the QEMU build and the guest
images as they are in the cache. Inside, $DMALAB_GUEST_IMAGES and $DMALAB_COMMIT say what is
prebuilt, so `dmalab run` builds and fetches nothing and records the same provenance as here.

Podman runs rootful with runc and explicit ulimits from a containers.conf of dmalab's own
($CONTAINERS_CONF): crun needs CAP_SYS_RESOURCE, which root on some CI hosts lacks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dmalab.artifacts import image as guest_image
from dmalab.artifacts.apt import mirror
from dmalab.artifacts.cache import cache_root, locked, repo_root, write_atomic
from dmalab.artifacts.qemu import ARCHES, FIRMWARE_PACKAGES, QemuBuild, ensure_qemu
from dmalab.errors import EnvironmentProblem

REPOSITORY = "localhost/dmalab-runner"
SUITE = "bookworm"
#: What the image runs dmalab with, besides QEMU's shared libraries and the firmware.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "procps")
#: The host tools the build needs (Debian packages).
TOOLS = {"podman": "podman", "mmdebstrap": "mmdebstrap", "runc": "runc"}
#: Inside the image.
PREFIX = Path("/opt/dmalab")
CACHE_IN_IMAGE = Path("/var/cache/dmalab")
LABEL = "org.dmalab.inputs"
CONTAINERS_CONF = """\
# dmalab's podman settings ($CONTAINERS_CONF): runc, with explicit limits (crun needs
# CAP_SYS_RESOURCE to raise them, which root on some hosts lacks).
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
"""


def image_tag() -> str:
    """The checkout's commit (12 hex digits, `-dirty` with uncommitted changes)."""
    from dmalab.provenance import dmalab_commit  # provenance builds on artifacts

    commit = dmalab_commit()
    head, dirty = commit.removesuffix("-dirty"), commit.endswith("-dirty")
    return head[:12] + ("-dirty" if dirty else "")


def image_name() -> str:
    return f"{REPOSITORY}:{image_tag()}"


@dataclass(frozen=True)
class RunnerImage:
    name: str
    inputs: str  # the key of everything in it
    built: bool  # False: it was there already
    seconds: float


def podman_env() -> dict[str, str]:
    """The environment podman runs in: dmalab's containers.conf."""
    conf = cache_root() / "runner-image" / "containers.conf"
    if not conf.is_file() or conf.read_text() != CONTAINERS_CONF:
        conf.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(conf, CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman(*args: str, capture: bool = True, timeout: float = 3600) -> str:
    _need_tools()
    proc = subprocess.run(["podman", *args], env=podman_env(), capture_output=capture,
                          text=True, timeout=timeout, check=False)  # fmt: skip
    if proc.returncode != 0:
        detail = ((proc.stderr or "").strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise EnvironmentProblem(f"podman {args[0]} failed: {detail}")
    return proc.stdout or ""


def _need_tools() -> None:
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        raise EnvironmentProblem(f"the runner image needs {', '.join(missing)}: apt-get install "
                                 f"--no-install-recommends {' '.join(missing)}")  # fmt: skip


def runtime_packages(qemu: QemuBuild) -> list[str]:
    """The Debian packages holding the shared libraries the QEMU binaries load (the build ran
    on this machine, so its libraries are this machine's)."""
    libs: set[str] = set()
    for binary in qemu.binaries.values():
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True)
        for line in out.stdout.splitlines():
            parts = line.split("=>")
            path = parts[1].split()[0] if len(parts) == 2 and parts[1].strip() else ""
            if path.startswith("/"):
                real = Path(os.path.realpath(path))
                libs.add(f"*/{real.parent.name}/{real.name}")
    # By file name: with merged /usr, dpkg knows a library by /lib/... and ldd may say /usr/lib/.
    found = subprocess.run(["dpkg", "-S", *sorted(libs)], capture_output=True, text=True)
    packages = {
        name.split(":")[0]
        for line in found.stdout.splitlines()
        if ": /" in line
        for name in line.split(": /", 1)[0].split(", ")
    }
    return sorted(packages)


def _checkout_files(root: Path) -> list[str]:
    """The checkout's files as git knows them (tracked and new, not ignored)."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], capture_output=True, check=True)  # fmt: skip
    return sorted(f for f in out.stdout.decode().split("\0") if f and (root / f).is_file())


def _hash_files(root: Path, files: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    return digest.hexdigest()


def ensure_runner_image(say: Callable[[str], None]) -> RunnerImage:
    """The runner image of this checkout, built unless podman has it with the same inputs."""
    started = time.monotonic()
    _need_tools()
    qemu = ensure_qemu()
    if "binary_key" not in qemu.manifest:
        raise EnvironmentProblem("the runner image carries dmalab's own QEMU build: unset "
                                 "DMALAB_QEMU and DMALAB_QEMU_AARCH64")  # fmt: skip
    images = {arch: guest_image.ensure_image(say, arch=arch) for arch in ARCHES}
    root = repo_root()
    files = _checkout_files(root)
    packages = sorted({*BASE_PACKAGES, *FIRMWARE_PACKAGES, *runtime_packages(qemu)})
    from dmalab.provenance import dmalab_commit

    inputs = {
        "suite": SUITE, "packages": packages, "qemu": qemu.manifest["binary_key"],
        "images": {a: i.manifest.parent.name for a, i in images.items()},
        "checkout": _hash_files(root, files), "commit": dmalab_commit(),
        "builder": _hash_files(Path(__file__).parent, [Path(__file__).name]),
    }  # fmt: skip
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]
    name = image_name()
    work = cache_root() / "runner-image"
    with locked(work / "lock"):
        if _label(name) == key:
            return RunnerImage(name, key, False, time.monotonic() - started)
        base = _base_image(work, packages, say)
        with tempfile.TemporaryDirectory(dir=work, prefix="context.") as tmp:
            context = Path(tmp)
            _context(context, root, files, qemu, images, say)
            (context / "Containerfile").write_text(_containerfile(base, inputs["commit"], key))
            say(f"runner image: podman build {name}")
            podman("build", "--network", "none", "--tag", name, "--file",
                   str(context / "Containerfile"), str(context))  # fmt: skip
        _prune(name)
    return RunnerImage(name, key, True, time.monotonic() - started)


#: Runner images kept besides the newest (one per commit otherwise piles up).
KEEP_OLDER = 2


def _prune(newest: str) -> None:
    """Remove all but the newest runner images (and the layers nothing uses any more)."""
    listed = podman("images", "--sort", "created", "--format", "{{.Repository}}:{{.Tag}}",
                    "--filter", f"reference={REPOSITORY}")  # fmt: skip
    # Newest first.
    older = [n for n in listed.split() if n != newest and not n.endswith(":<none>")]
    for name in older[KEEP_OLDER:]:
        podman("rmi", name)
    podman("image", "prune", "--force")


def _label(name: str) -> str | None:
    proc = subprocess.run(
        ["podman", "image", "inspect", "--format", f'{{{{index .Labels "{LABEL}"}}}}', name],
        env=podman_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    return proc.stdout.strip() if proc.returncode == 0 else None


def _base_image(work: Path, packages: list[str], say: Callable[[str], None]) -> str:
    """localhost/dmalab-runner-base:<key>: bookworm minbase with `packages`, from a cached
    mmdebstrap tarball."""
    key = hashlib.sha256(json.dumps([SUITE, packages]).encode()).hexdigest()[:16]
    name = f"{REPOSITORY}-base:{key}"
    if _label(name) is not None:
        return name
    tarball = work / f"base-{key}.tar"
    if not tarball.is_file():
        say(f"runner image: mmdebstrap {SUITE} with {len(packages)} packages")
        partial = tarball.with_name(f".partial-{tarball.name}")  # mmdebstrap wants the .tar
        proc = subprocess.run(
            ["mmdebstrap", "--variant=minbase", "--quiet", f"--include={','.join(packages)}",
             "--aptopt=Acquire::Retries 3", SUITE, str(partial), mirror()],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True) if partial.is_dir() else partial.unlink(
                missing_ok=True
            )
            detail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            raise EnvironmentProblem(f"mmdebstrap failed: {detail}")
        partial.rename(tarball)  # whole or not at all
    podman("import", "--change", "CMD [\"bash\"]", "--change", f"LABEL {LABEL}=base",
           str(tarball), name)  # fmt: skip
    return name


def _context(
    context: Path, root: Path, files: list[str], qemu: QemuBuild,
    images: dict[str, guest_image.ImageBuild], say: Callable[[str], None],
) -> None:  # fmt: skip
    """The build context: the checkout, the wheels it installs from, the QEMU build as it is
    in the cache, the guest images."""
    src = context / "src"
    for name in files:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, src / name)
    say("runner image: wheels of dmalab's dependencies")
    wheels = context / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    for args in (["wheel", "--wheel-dir", str(wheels), str(src)],
                 ["download", "--dest", str(wheels), "setuptools>=68", "wheel"]):  # fmt: skip
        proc = subprocess.run([*pip, *args], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise EnvironmentProblem(f"pip {args[0]} failed: {detail}")
    for wheel in wheels.glob("dmalab-*.whl"):
        wheel.unlink()  # dmalab itself goes in editable: it runs from its checkout
    cache = context / "cache" / "qemu"
    bin_dir = next(iter(qemu.binaries.values())).parent
    shutil.copytree(bin_dir, cache / "bin" / bin_dir.name)
    shutil.copy2(cache_root() / "qemu" / "debian-version", cache / "debian-version")
    for arch, built in images.items():
        shutil.copytree(
            built.manifest.parent, context / "images" / arch / built.manifest.parent.name
        )


def _containerfile(base: str, commit: str, key: str) -> str:
    venv = PREFIX / "venv"
    return f"""\
FROM {base}
COPY wheels /tmp/wheels
COPY src {PREFIX}/src
COPY cache {CACHE_IN_IMAGE}
COPY images {PREFIX}/images
RUN python3 -m venv {venv} \\
 && {venv}/bin/pip install --quiet --no-index --find-links /tmp/wheels setuptools wheel \\
 && {venv}/bin/pip install --quiet --no-index --find-links /tmp/wheels --no-build-isolation \\
    -e {PREFIX}/src \\
 && rm -rf /tmp/wheels
ENV PATH={venv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    DMALAB_CACHE={CACHE_IN_IMAGE} DMALAB_GUEST_IMAGES={PREFIX}/images DMALAB_COMMIT={commit}
LABEL {LABEL}={key}
WORKDIR /root
CMD ["bash"]
"""


def export(name: str, file: Path) -> None:
    """The image as an OCI archive (`podman load -i FILE` brings it back), written whole."""
    partial = file.with_name(f".{file.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        podman("save", "--format", "oci-archive", "--output", str(partial), name)
        partial.rename(file)
    finally:
        partial.unlink(missing_ok=True)


def image_size(name: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", name).strip() or 0)
