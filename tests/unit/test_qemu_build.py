"""The QEMU build pipeline: its pure parts (versions, keys, manifest, tool output, apt sources), the
CLI around it, and one real build (cached after the first run)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from dmalab.artifacts import apt, qemu
from dmalab.artifacts.cache import tree_hash
from dmalab.artifacts.progress import Progress
from dmalab.cli import Group, main
from dmalab.errors import EXIT_ENVIRONMENT, EnvironmentProblem

SHOWSRC = """\
Package: qemu
Binary: qemu-system, qemu-utils
Version: 1:10.0.2+ds-1
Build-Depends: debhelper-compat (= 13),
 meson (>> 1.5.0~)
Files:
 0123 12462 qemu_10.0.2+ds-1.dsc

Package: qemu
Version: 1:10.0.13+ds-0+deb13u1
Files:
 ef31 12462 qemu_10.0.13+ds-0+deb13u1.dsc

Package: qemu
Version: 1:10.0.13~rc1+ds-1

Package: qemu
Version: 1:10.1.0+ds-1

Package: qemu
Version: 1:9.2.4+ds-1

Package: qemu-other
Version: 1:10.0.99+ds-1
"""


# --- version selection -----------------------------------------------------------------------


def test_newest_10_0_version_is_selected() -> None:
    assert qemu.select_version(SHOWSRC) == "1:10.0.13+ds-0+deb13u1"


def test_showsrc_versions_ignore_other_packages() -> None:
    assert "1:10.0.99+ds-1" not in qemu.showsrc_versions(SHOWSRC)
    assert len(qemu.showsrc_versions(SHOWSRC)) == 5


def test_no_matching_version_is_an_environment_problem() -> None:
    with pytest.raises(EnvironmentProblem, match=r"no qemu 1:10\.0"):
        qemu.select_version("Package: qemu\nVersion: 1:9.2.4+ds-1\n")


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1:10.0.13+ds-0+deb13u1", "1:10.0.9+ds-1", 1),
        ("1:10.0.13~rc1+ds-1", "1:10.0.13+ds-1", -1),
        ("1:10.0.13+ds-0+deb13u1", "1:10.0.13+ds-0+deb13u2", -1),
        ("1:10.0.13+ds-1", "1:10.0.13+ds-1", 0),
        ("2:1.0", "1:99.0", 1),
        ("10.0", "1:1.0", -1),
        ("1.0-1", "1.0-1+b1", -1),
        ("1.0a", "1.0", 1),
    ],
)
def test_debian_version_order(a: str, b: str, expected: int) -> None:
    assert qemu.compare_debian_versions(a, b) == expected
    assert qemu.compare_debian_versions(b, a) == -expected


def test_debian_version_order_agrees_with_dpkg() -> None:
    pairs = [("1:10.0.13~rc1+ds-1", "1:10.0.13+ds-1"), ("1:10.0.9+ds-1", "1:10.0.13+ds-1")]
    for a, b in pairs:
        lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b], check=False)
        assert (lt.returncode == 0) == (qemu.compare_debian_versions(a, b) < 0)


# --- cache keys ------------------------------------------------------------------------------


def test_source_key_names_the_version_without_epoch() -> None:
    key = qemu.source_key("1:10.0.13+ds-0+deb13u1", qemu.CONFIGURE_OPTIONS, "ab" * 32)
    assert key.startswith("10.0.13+ds-0+deb13u1-")
    assert len(key.rsplit("-", 1)[1]) == 8


def test_source_key_changes_with_options_patch_and_version() -> None:
    base = qemu.source_key("1:10.0.13+ds-1", qemu.CONFIGURE_OPTIONS, "a" * 64)
    assert base == qemu.source_key("1:10.0.13+ds-1", qemu.CONFIGURE_OPTIONS, "a" * 64)
    assert base != qemu.source_key("1:10.0.13+ds-1", (*qemu.CONFIGURE_OPTIONS, "--x"), "a" * 64)
    assert base != qemu.source_key("1:10.0.13+ds-1", qemu.CONFIGURE_OPTIONS, "b" * 64)
    assert base != qemu.source_key("1:10.0.14+ds-1", qemu.CONFIGURE_OPTIONS, "a" * 64)


def test_binary_key_changes_when_a_device_file_changes(tmp_path: Path) -> None:
    (tmp_path / "meson.build").write_text("system_ss.add(files('dev.c'))\n")
    (tmp_path / "dev.c").write_text("int x;\n")
    src = qemu.source_key("1:10.0.13+ds-1", qemu.CONFIGURE_OPTIONS, "a" * 64)
    before = qemu.binary_key(src, tree_hash(tmp_path))
    assert before == qemu.binary_key(src, tree_hash(tmp_path))
    (tmp_path / "dev.c").write_text("int y;\n")
    after = qemu.binary_key(src, tree_hash(tmp_path))
    assert before != after
    assert before.startswith(src) and after.startswith(src)


def test_layout_puts_binaries_under_bin_and_trees_under_the_source_key(tmp_path: Path) -> None:
    lay = qemu.Layout.of(tmp_path, "1:10.0.13+ds-1", "a" * 64, "d" * 64)
    assert lay.src == tmp_path / lay.src_key / "src"
    assert lay.build == tmp_path / lay.src_key / "build"
    assert lay.bin_dir == tmp_path / "bin" / lay.bin_key
    assert lay.downloads == tmp_path / "downloads" / "10.0.13+ds-1"


# --- manifest and published builds ------------------------------------------------------------


def test_manifest_is_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    qemu.write_manifest(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    with pytest.raises(TypeError):
        qemu.write_manifest(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def _publish_fake(
    bin_dir: Path, size_delta: int = 0, arches: tuple[str, ...] = qemu.ARCHES
) -> None:
    bin_dir.mkdir(parents=True)
    binaries = {}
    for arch in arches:
        binary = bin_dir / qemu.TARGETS[arch]
        binary.write_bytes(b"\x7fELF" + b"\0" * 60)
        binaries[arch] = {"file": binary.name, "size": binary.stat().st_size + size_delta}
    manifest = {"binaries": binaries, "firmware_dirs": []}
    qemu.write_manifest(bin_dir / "manifest.json", manifest)


def test_a_complete_published_build_is_found(tmp_path: Path) -> None:
    _publish_fake(tmp_path / "good")
    found = qemu._published(tmp_path / "good")
    assert found is not None
    assert found.binaries == {
        "x86_64": tmp_path / "good" / "qemu-system-x86_64",
        "aarch64": tmp_path / "good" / "qemu-system-aarch64",
    }
    assert found.binary == found.binaries["x86_64"]


def test_an_incomplete_published_build_is_ignored(tmp_path: Path) -> None:
    _publish_fake(tmp_path / "truncated", size_delta=1)
    assert qemu._published(tmp_path / "truncated") is None
    _publish_fake(tmp_path / "one-target", arches=("x86_64",))
    assert qemu._published(tmp_path / "one-target") is None
    (tmp_path / "no-manifest").mkdir()
    assert qemu._published(tmp_path / "no-manifest") is None


def test_base_argv_passes_every_firmware_dir_for_each_arch() -> None:
    binaries = {"x86_64": Path("/q/qemu"), "aarch64": Path("/q/qemu-a")}
    build = qemu.QemuBuild(binaries, [Path("/usr/share/qemu"), Path("/fw")], {})
    assert build.base_argv() == ["/q/qemu", "-L", "/usr/share/qemu", "-L", "/fw"]
    assert build.base_argv("aarch64") == ["/q/qemu-a", "-L", "/usr/share/qemu", "-L", "/fw"]


# --- tool output and progress -----------------------------------------------------------------


def test_ninja_status_lines_are_parsed() -> None:
    assert qemu.ninja_progress("[12/1585] Compiling C object libqemu.a.p/x.c.o\n") == (12, 1585)
    assert qemu.ninja_progress("ninja: Entering directory `build'") is None
    assert qemu.ninja_progress("  [1/2] indented") is None


def test_compile_failure_names_the_compiler_error() -> None:
    lines = [
        "[1/3] Compiling C object a.o",
        "FAILED: libsystem.a.p/hw_misc_dmalab_ncdma.c.o",
        "cc -Ilibsystem.a.p -I. -I../src -c ../src/hw/misc/dmalab/ncdma.c",
        "../src/hw/misc/dmalab/ncdma.c: In function 'ncdma_realize':",
        "../src/hw/misc/dmalab/ncdma.c:12:5: error: 'x' undeclared (first use in this function)",
        "../src/hw/misc/dmalab/ncdma.c:12:5: note: each undeclared identifier is reported once",
        "ninja: build stopped: subcommand failed.",
    ]
    assert qemu.meaningful_line(lines).endswith(
        "error: 'x' undeclared (first use in this function)"
    )


def test_configure_failure_names_the_missing_dependency() -> None:
    lines = [
        "The Meson build system",
        "Run-time dependency glib-2.0 found: NO",
        '../src/meson.build:951:9: ERROR: Dependency "glib-2.0" not found, tried pkgconfig',
        "",
        "A full log can be found at /b/meson-logs/meson-log.txt",
        "",
    ]
    assert "glib-2.0" in qemu.meaningful_line(lines)
    assert "ERROR" in qemu.meaningful_line(lines)


def test_failure_without_error_words_gives_the_last_line() -> None:
    assert qemu.meaningful_line(["first", "last words", ""]) == "last words"
    assert qemu.meaningful_line([]) == "no output"


def test_run_logged_keeps_the_log_and_raises_one_line(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "step.log"
    script = "echo building; echo 'x.c:1:1: error: boom' >&2; exit 2"
    with pytest.raises(EnvironmentProblem) as caught:
        qemu.run_logged(["sh", "-c", script], phase="compile", log=log)
    assert str(caught.value) == f"compile failed: x.c:1:1: error: boom; full log: {log}"
    assert "building" in log.read_text()


def test_progress_in_a_log_prints_about_every_ten_percent() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=False)
    progress.phase("qemu", "compile")
    for i in range(1, 1001):
        progress.step(i, 1000)
    progress.done()
    lines = out.getvalue().splitlines()
    assert lines[0] == "qemu: compile ..."
    assert 10 <= len(lines) - 1 <= 12
    assert lines[-1] == "qemu: compile 1000/1000 (100%)"


def test_progress_on_a_terminal_rewrites_one_line() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=True)
    progress.phase("qemu", "compile")
    for i in range(1, 101):
        progress.step(i, 100)
    progress.done("qemu: done")
    text = out.getvalue()
    assert text.count("\r") == 100
    assert text.endswith("(100%)\nqemu: done\n")


# --- host packages and DMALAB_QEMU -----------------------------------------------------------


def test_missing_packages_asks_dpkg() -> None:
    assert qemu.missing_packages(["dpkg", "dmalab-no-such-package"]) == ["dmalab-no-such-package"]


def test_missing_packages_without_root_name_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(EnvironmentProblem) as caught:
        qemu._ensure_packages(["dpkg", "dmalab-no-such-package"], Progress(io.StringIO()), None)
    assert str(caught.value).endswith(
        "as root run: apt-get install --no-install-recommends dmalab-no-such-package"
    )


def fake_qemu(
    where: Path, *, device: bool = True, name: str = "qemu-system-x86_64", version: str = ""
) -> Path:
    """A script that answers `--version` and `-device help` as a QEMU (with ncdma or without)."""
    fake = where / name
    devices = 'name "ncdma", bus PCI' if device else 'name "edu", bus PCI'
    says = f"QEMU emulator version 10.1.50{version}"
    answer = f"*'-device help'*) echo '{devices}';; *) echo '{says}';;"
    fake.write_text(f'#!/bin/sh\ncase "$*" in {answer} esac\n')
    fake.chmod(0o755)
    return fake


def test_dmalab_qemu_uses_the_users_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_qemu(tmp_path)
    monkeypatch.setenv("DMALAB_QEMU", str(fake))
    monkeypatch.delenv("DMALAB_QEMU_AARCH64", raising=False)
    build = qemu.ensure_qemu()
    assert build.binary == fake
    assert build.manifest["source"] == "DMALAB_QEMU"
    assert build.manifest["qemu_version"] == "QEMU emulator version 10.1.50"
    with pytest.raises(
        EnvironmentProblem, match="set DMALAB_QEMU_AARCH64 to a qemu-system-aarch64"
    ):
        build.base_argv("aarch64")


def test_dmalab_qemu_aarch64_uses_the_users_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = {}
    for arch, var in qemu.USER_QEMU_VARS.items():
        fakes[arch] = fake_qemu(tmp_path, name=qemu.TARGETS[arch], version=f" {arch}")
        monkeypatch.setenv(var, str(fakes[arch]))
    build = qemu.ensure_qemu()
    assert build.binaries == fakes
    assert build.manifest["qemu_versions"]["aarch64"].endswith("aarch64")
    monkeypatch.setenv("DMALAB_QEMU_AARCH64", str(tmp_path))
    with pytest.raises(EnvironmentProblem, match=f"DMALAB_QEMU_AARCH64={tmp_path}: is a directory"):
        qemu.ensure_qemu()


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda d: d / "nothing", "no such file"),
        (lambda d: d, "is a directory"),
        (lambda d: Path("/bin/true"), "not a QEMU (`--version` printed 'true"),
        (lambda d: fake_qemu(d).parent / "qemu-system-x86_64", None),
        (lambda d: fake_qemu(d, device=False), "has no ncdma device"),
    ],
)
def test_dmalab_qemu_that_is_no_qemu_with_ncdma_is_an_environment_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make: Any, problem: str | None
) -> None:
    binary = make(tmp_path)
    monkeypatch.setenv("DMALAB_QEMU", str(binary))
    if problem is None:  # the control: a QEMU with the device is taken
        assert qemu.ensure_qemu().binary == binary
        return
    with pytest.raises(EnvironmentProblem, match=f"^DMALAB_QEMU={binary}: .*{re.escape(problem)}"):
        qemu.ensure_qemu()


# --- apt sources: the host's mirror, both formats ---------------------------------------------

DEB822 = """\
Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Enabled: no
"""


def _sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, text: str) -> None:
    monkeypatch.delenv("DMALAB_DEBIAN_MIRROR", raising=False)
    monkeypatch.delenv("DMALAB_DEBIAN_SECURITY_MIRROR", raising=False)
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (parts / name).write_text(text)
    monkeypatch.setattr(apt, "APT_SOURCES", (tmp_path / "sources.list", parts))


def test_mirror_from_deb822_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _sources(tmp_path, monkeypatch, "debian.sources", DEB822)
    assert apt.mirror() == "http://mirror.example/debian"
    assert apt.mirror(security=True) == "http://mirror.example/debian-security"


def test_mirror_from_one_line_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (
        "# a comment\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian/ bookworm main\n"
        "deb http://mirror.example/debian-security bookworm-security main\n"
    )
    _sources(tmp_path, monkeypatch, "debian.list", text)
    assert apt.mirror() == "http://mirror.example/debian"
    assert apt.mirror(security=True) == "http://mirror.example/debian-security"


def test_mirror_override_and_missing_mirror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sources(
        tmp_path, monkeypatch, "other.list", "deb http://elsewhere.example/ubuntu jammy main\n"
    )
    with pytest.raises(EnvironmentProblem, match="DMALAB_DEBIAN_MIRROR"):
        apt.mirror()
    monkeypatch.setenv("DMALAB_DEBIAN_MIRROR", "http://override.example/debian")
    assert apt.mirror() == "http://override.example/debian"
    repo = apt.source_repo("trixie")
    assert repo.lines == (
        f"deb-src [signed-by={apt.KEYRING}] http://override.example/debian trixie main",
    )


# --- CLI --------------------------------------------------------------------------------------


def test_cli_errors_are_one_line_with_their_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DMALAB_QEMU", str(tmp_path / "missing"))
    result = CliRunner().invoke(main, ["build", "qemu"])
    assert result.exit_code == EXIT_ENVIRONMENT
    assert result.stderr.startswith("dmalab: error: DMALAB_QEMU=")
    assert result.stderr.count("\n") == 1


def test_build_qemu_prints_the_binary_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_qemu(tmp_path)
    monkeypatch.setenv("DMALAB_QEMU", str(fake))
    result = CliRunner().invoke(main, ["build", "qemu"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == str(fake)


def test_interrupt_exits_130_with_one_line() -> None:
    @click.group(cls=Group)
    def group() -> None:
        pass

    @group.command()
    def slow() -> None:
        raise KeyboardInterrupt

    result = CliRunner().invoke(group, ["slow"])
    assert result.exit_code == 130
    assert result.stderr == "dmalab: interrupted by SIGINT\n"


def test_version_and_help() -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["--version"]).output.startswith("dmalab, version ")
    helptext = runner.invoke(main, ["--help"]).output
    assert "build" in helptext and "spec" in helptext


def test_python_dash_m_dmalab_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dmalab", "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and "Usage: dmalab" in proc.stdout


# --- the real build -----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", qemu.ARCHES)
def test_built_qemu_runs_and_lists_ncdma(qemu_build: qemu.QemuBuild, arch: str) -> None:
    proc = subprocess.run(
        [*qemu_build.base_argv(arch), "-device", "help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ncdma" in proc.stdout
    if qemu_build.manifest.get("source") != "DMALAB_QEMU":
        assert qemu_build.manifest["debian_source"]["version"].startswith(qemu.VERSION_PREFIX)
        assert qemu_build.manifest["configure_options"] == list(qemu.CONFIGURE_OPTIONS)


@pytest.mark.skipif("DMALAB_QEMU" in os.environ, reason="DMALAB_QEMU: nothing is built")
def test_unchanged_build_runs_no_tool(
    qemu_build: qemu.QemuBuild, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_tools(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a tool ran although nothing changed: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_tools)
    started = time.monotonic()
    again = qemu.ensure_qemu()
    assert time.monotonic() - started < 1.0
    assert again.binaries == qemu_build.binaries
