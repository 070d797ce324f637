"""Every command with a sweep of bad inputs.

Each case must end with no traceback, exactly one stderr line starting `dmalab: error:`, naming
what is wrong, and the exit code of README's table: 2 for a bad option, argument or file, 3 for
an environment that is wrong (DMALAB_QEMU, DMALAB_CACHE). The usage cases are generated from the
commands' own declarations, so a new option is swept as soon as it exists. The cases run in
this process through click's test runner (the same `main` a user's command line reaches; an
exception escaping it counts as a traceback); one case of each command and class runs again as
a real `python -m dmalab` process.

A case that is wrongly accepted must not build or boot anything: every case but the environment
ones runs with DMALAB_QEMU and DMALAB_CACHE pointing nowhere, so such a command stops at once
with exit 3, which the case then reports as a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dmalab.artifacts import apt
from dmalab.cli import main
from dmalab.cli.params import INPUT_DIR, INPUT_FILE, Output
from dmalab.errors import EXIT_BAD_INPUT, EXIT_ENVIRONMENT

#: Commands that need a QEMU (and the cache); each is tried with every bad DMALAB_QEMU and
#: DMALAB_CACHE. `bench image` builds in a private cache of its own, so only DMALAB_QEMU is
#: irrelevant to it and it is left out.
QEMU_COMMANDS = (
    ("build",), ("build", "qemu"), ("run",), ("run", "--demo"), ("up", "default"),
    ("shell", "default"), ("fuzz", "--ops", "1"), ("bench", "device"), ("bench", "machine"),
    ("bench", "suite"),
)  # fmt: skip
CACHE_COMMANDS = (*QEMU_COMMANDS, ("build", "image"))
#: Commands whose required arguments are given, so that only the option under test is wrong.
ARGUMENTS = {("up",): ["default"], ("shell",): ["default"], ("topology", "check"): ["default"]}


@dataclass
class Case:
    args: list[str]
    code: int
    names: str  # what the error line must mention
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    case: Case
    code: int
    stderr: str
    escaped: BaseException | None = None  # an exception main let through

    def problems(self) -> list[str]:
        lines = self.stderr.splitlines()
        errors = [line for line in lines if line.startswith("dmalab: error:")]
        out = []
        if "Traceback" in self.stderr or self.escaped is not None:
            out.append(f"a traceback ({self.escaped!r})")
        if len(errors) != 1:
            out.append(f"{len(errors)} error lines")
        elif self.case.names not in errors[0]:
            out.append(f"the error does not name {self.case.names!r}")
        if self.code != self.case.code:
            out.append(f"exit {self.code}, not {self.case.code}")
        return out


@pytest.fixture(scope="module")
def junk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Files and directories of every wrong kind."""
    root = tmp_path_factory.mktemp("junk")
    (root / "file").write_text("a file\n")
    (root / "dir").mkdir()
    (root / "empty.toml").write_text("")
    (root / "broken.toml").write_text("[machine\nmemory = \n")
    (root / "binary.toml").write_bytes(bytes(range(256)))
    (root / "not-json").mkdir()
    (root / "not-json" / "results.json").write_text("{ nope")
    (root / "list-json").mkdir()
    (root / "list-json" / "results.json").write_text("[1, 2]")
    (root / "bad-results").mkdir()
    (root / "bad-results" / "results.json").write_text(json.dumps({"results": [{"x": 1}]}))
    (root / "binary-results").mkdir()
    (root / "binary-results" / "results.json").write_bytes(b"\xff\xfe\x00" * 50)
    (root / "no-x").write_text("#!/bin/sh\necho 'QEMU emulator version 10.0.0'\n")
    for name, body in {
        "fails": "exit 1",
        "no-ncdma": 'case "$*" in *help*) echo \'name "edu", bus PCI\';; '
        "*) echo 'QEMU emulator version 10.0.0';; esac",
    }.items():
        (root / name).write_text(f"#!/bin/sh\n{body}\n")
        (root / name).chmod(0o755)
    return root


def _poisoned(junk: Path) -> dict[str, str]:
    return {"DMALAB_QEMU": str(junk / "no-such-qemu"), "DMALAB_CACHE": str(junk / "file")}


def _in_process(case: Case, env: dict[str, str | None]) -> Outcome:
    result = CliRunner().invoke(main, case.args, env={**env, **case.env})
    escaped = None if isinstance(result.exception, (SystemExit, type(None))) else result.exception
    return Outcome(case, result.exit_code, result.stderr, escaped)


def _as_process(case: Case, env: dict[str, str | None]) -> Outcome:
    full = {k: v for k, v in {**os.environ, **env, **case.env}.items() if v is not None}
    proc = subprocess.run(
        [sys.executable, "-m", "dmalab", *case.args],
        capture_output=True, text=True, env=full, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return Outcome(case, proc.returncode, proc.stderr)


def sweep(cases: Sequence[Case], junk: Path, *, poisoned: bool = True) -> None:
    """Run every case, and the first of each command as a process too; fail listing every case
    that misbehaved."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("DMALAB_")}
    if poisoned:
        env.update(_poisoned(junk))
    outcomes = [_in_process(case, env) for case in cases]
    firsts = {" ".join(c.args[:2]): c for c in reversed(cases)}.values()
    with ThreadPoolExecutor(4) as pool:
        outcomes += pool.map(lambda c: _as_process(c, env), firsts)
    bad = [
        f"dmalab {' '.join(o.case.args)} {o.case.env or ''}: {', '.join(o.problems())}\n"
        f"    {o.stderr.strip()[-400:]}"
        for o in outcomes
        if o.problems()
    ]
    assert not bad, f"{len(bad)} of {len(outcomes)} runs:\n" + "\n".join(bad)


# ---------------------------------------------------------------------------------------------
# Usage: generated from the command declarations


def leaf_commands(
    group: click.Group = main, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from leaf_commands(command, (*path, name))
        else:
            yield (*path, name), command


def _bad_values(param: click.Parameter, junk: Path) -> Iterator[str]:
    """Values of the parameter's type that it must refuse."""
    kind = param.type
    if isinstance(kind, click.Choice):
        yield "no-such-choice"
    if isinstance(kind, click.IntRange):
        if kind.min is not None:
            yield str(kind.min - 1)
        if kind.max is not None:
            yield str(kind.max + 1)
    if isinstance(kind, (click.IntRange, type(click.INT))):
        yield "not-a-number"
    if isinstance(kind, Output):
        yield from (
            [str(junk / "file"), str(junk / "file" / "below")]
            if kind.directory
            else [str(junk / "dir"), str(junk / "file" / "below.json")]
        )
    if kind is INPUT_FILE:
        yield from (str(junk / "no-such-file"), str(junk / "dir"))
    if kind is INPUT_DIR:
        yield from (str(junk / "no-such-dir"), str(junk / "file"))


def usage_cases(junk: Path) -> list[Case]:
    cases = []
    for path, command in leaf_commands():
        given = ARGUMENTS.get(path, [])
        cases.append(Case([*path, *given, "--no-such-option"], EXIT_BAD_INPUT, "--no-such-option"))
        arguments = [p for p in command.params if isinstance(p, click.Argument)]
        if not arguments:
            cases.append(Case([*path, "stray"], EXIT_BAD_INPUT, "stray"))
        if any(a.required for a in arguments):
            cases.append(Case([*path], EXIT_BAD_INPUT, "missing argument"))
        for param in command.params:
            if isinstance(param, click.Argument):
                cases += [Case([*path, v], EXIT_BAD_INPUT, v) for v in _bad_values(param, junk)]
                continue
            if not isinstance(param, click.Option) or param.is_flag or param.name == "help":
                continue
            opt = max(param.opts, key=len)
            cases.append(Case([*path, *given, opt], EXIT_BAD_INPUT, opt))
            if param.nargs == 2:
                cases.append(Case([*path, *given, opt, "one"], EXIT_BAD_INPUT, opt))
                continue
            for value in _bad_values(param, junk):
                cases.append(Case([*path, *given, opt, value], EXIT_BAD_INPUT, opt))
    # Options whose values the commands check themselves.
    for args, names in (
        (["-j", "0"], "--jobs"), (["-j", "65"], "--jobs"), (["-j", "two"], "--jobs"),
        (["--seed", "-1"], "--seed"), (["--seed", str(1 << 64)], "--seed"),
        (["--policy", "nope"], "--policy"), (["-s", "999"], "--scenario"),
        (["--matrix", "--policy", "cache-sgt", "--policy", "nope"], "nope"),
    ):  # fmt: skip
        cases.append(Case(["run", *args], EXIT_BAD_INPUT, names))
    cases += [
        Case(["bench", "device", "--size", size], EXIT_BAD_INPUT, "--size")
        for size in ("0", "5K", "1Q", "-4K", "4K,,8K")
    ]
    cases.append(Case(["shell"], EXIT_BAD_INPUT, "--attach"))
    cases.append(
        Case(["shell", "default", "--attach", str(junk / "dir")], EXIT_BAD_INPUT, "not both")
    )
    cases.append(Case(["report", str(junk), "--compare", "a", "b"], EXIT_BAD_INPUT, "not both"))
    cases.append(Case(["report", str(junk / "dir"), "--json"], EXIT_BAD_INPUT, "--json"))
    return cases


def test_usage_errors_are_one_line(junk: Path) -> None:
    cases = usage_cases(junk)
    commands = {tuple(c.args[:2]) for c in cases}
    assert len(cases) >= 80 and len(commands) >= 10, (len(cases), commands)
    sweep(cases, junk)


# ---------------------------------------------------------------------------------------------
# Files the user names


def file_cases(junk: Path) -> list[Case]:
    bad_topologies = [
        "no-such-topology", str(junk / "no-such.toml"), str(junk / "dir"),
        str(junk / "broken.toml"), str(junk / "binary.toml"),
    ]  # fmt: skip
    cases = []
    for topo in bad_topologies:
        name = Path(topo).name
        cases += [
            Case(["topology", "check", topo], EXIT_BAD_INPUT, name),
            Case(["run", "-t", topo], EXIT_BAD_INPUT, name),
            Case(["up", topo], EXIT_BAD_INPUT, name),
            Case(["shell", topo], EXIT_BAD_INPUT, name),
        ]
    for scenario in ("empty.toml", "broken.toml", "binary.toml"):
        cases.append(
            Case(["run", "--scenario-file", str(junk / scenario)], EXIT_BAD_INPUT, scenario)
        )
    bad_results = ["no-such-dir", "dir", "file", "not-json", "list-json", "bad-results",
                   "binary-results"]  # fmt: skip
    for results in bad_results:
        where = str(junk / results)
        cases += [
            Case(["report", where], EXIT_BAD_INPUT, results),
            Case(["report", "--compare", where, where], EXIT_BAD_INPUT, results),
            Case(
                ["report", "--compare", str(junk / "list-json"), where], EXIT_BAD_INPUT, "list-json"
            ),
        ]
    cases.append(Case(["shell", "--attach", str(junk / "dir")], EXIT_BAD_INPUT, "dmalab up"))
    return cases


def test_bad_files_are_one_line(junk: Path) -> None:
    cases = file_cases(junk)
    assert len(cases) >= 40
    sweep(cases, junk)


# ---------------------------------------------------------------------------------------------
# The environment


def environment_cases(junk: Path) -> list[Case]:
    qemus = {
        "missing": junk / "no-such-qemu", "directory": junk / "dir",
        "not executable": junk / "no-x", "not QEMU": Path("/bin/true"),
        "failing": junk / "fails", "no ncdma": junk / "no-ncdma",
    }  # fmt: skip
    caches = {
        "a file": junk / "file", "below a file": junk / "file" / "cache",
        "uncreatable": Path("/proc/dmalab-cache"),
    }  # fmt: skip
    cases = []
    for command in QEMU_COMMANDS:
        for qemu in qemus.values():
            cases.append(
                Case(list(command), EXIT_ENVIRONMENT, "DMALAB_QEMU=", {"DMALAB_QEMU": str(qemu)})
            )
    for command in CACHE_COMMANDS:
        for cache in caches.values():
            cases.append(
                Case(list(command), EXIT_ENVIRONMENT, "DMALAB_CACHE=", {"DMALAB_CACHE": str(cache)})
            )
    return cases


def test_bad_environment_is_one_line_and_exit_3(junk: Path) -> None:
    cases = environment_cases(junk)
    assert len(cases) >= 90
    sweep(cases, junk, poisoned=False)


def test_doctor_names_a_bad_cache_without_failing_itself(junk: Path) -> None:
    env = {**os.environ, "DMALAB_CACHE": str(junk / "file")}
    env.pop("DMALAB_QEMU", None)
    proc = subprocess.run(
        [sys.executable, "-m", "dmalab", "doctor"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == EXIT_ENVIRONMENT and "Traceback" not in proc.stderr
    assert f"DMALAB_CACHE={junk / 'file'}: not a directory" in proc.stdout


def test_a_full_disk_while_building_is_one_line_and_exit_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first file a QEMU build writes into the cache lands on /dev/full (ENOSPC); the build
    stops with one line naming that file, and leaves no part of it behind."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DMALAB_CACHE", str(cache))
    monkeypatch.delenv("DMALAB_QEMU", raising=False)

    class Debian:  # apt's answer, without the network
        def update(self) -> None:
            pass

        def run(self, *args: str, cwd: Path | None = None) -> str:
            return "Package: qemu\nVersion: 1:10.0.13+ds-0+deb13u1\n"

    monkeypatch.setattr(apt, "source_repo", lambda suite: Debian())
    target = cache / "qemu" / "debian-version"
    target.parent.mkdir(parents=True)
    (target.parent / f".debian-version.{os.getpid()}.tmp").symlink_to("/dev/full")
    result = CliRunner().invoke(main, ["build", "qemu"])
    assert result.exit_code == EXIT_ENVIRONMENT, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("dmalab: error:")]
    assert errors == [f"dmalab: error: {target}: cannot write: No space left on device"]
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert list(target.parent.iterdir()) == []
