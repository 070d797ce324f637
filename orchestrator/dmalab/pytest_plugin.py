"""pytest plugin: a booted machine per topology for each test, back in its just-booted state.

A thin layer over `dmalab.machine.booted.BootedMachine`: it boots, saves and restores.
docs/pytest-plugin.md has the whole story and an example. In short:

```python
@pytest.mark.dmalab(topology="default")  # a shipped name or a path to a .toml file
def test_fill(dmalab_machine):
    hello = dmalab_machine.run(dmalab_machine.vm.agent.hello())
```

- Each topology boots once per test process (each pytest-xdist worker boots its own), then is
  saved as the snapshot "booted"; every later test that asks for it starts from a restore of
  that snapshot. A machine that failed (panic, QEMU died) is replaced by a fresh boot.
- The machines run on an asyncio loop of their own, in a thread, so any test can use them:
  `machine.run(coro)` from a plain test, `await machine.arun(coro)` from an async one.
- When a test that used a machine fails, its report gets the console's tail and each device's
  counters and violations, and `--dmalab-artifacts DIR` gets a folder for the test with the
  console log, QEMU's log, the QMP events and a full dump of every device (`ncdma-<id>.json`).
  Without the option, DIR is a temporary directory, removed at the end unless a test failed;
  the summary says where what was kept is (under pytest-xdist too, where the workers keep it).
- Options may also be set in the ini file (`dmalab_artifacts`, `dmalab_accel`).
- Loading the plugin imports nothing of dmalab's machinery: every pytest run in an environment
  with dmalab installed loads it, and most never boot a machine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import re
import shutil
import tempfile
import threading
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from dmalab.machine.booted import BootedMachine
    from dmalab.machine.topology import Topology

T = TypeVar("T")
ACCELS = ("auto", "tcg", "kvm")
CONSOLE_TAIL_LINES = 40
_ARTIFACT_FILES = ("console.log", "qemu.log", "qmp-events.jsonl", "argv.json")
_MACHINES = pytest.StashKey["Machines"]()


class Machine:
    """A booted topology as a test sees it: `vm` (a `dmalab.machine.vm.Vm`), `topology`, and
    `run`/`arun` to await the Vm's coroutines on the machine's own loop."""

    def __init__(self, owner: Machines, booted: BootedMachine) -> None:
        self._owner = owner
        self.booted = booted
        self.topology = booted.topology
        self.vm = booted.vm
        self.snapshots = booted.snapshots

    def run(self, awaitable: Awaitable[T], timeout: float | None = 120.0) -> T:
        """Await `awaitable` on the machine's loop and return its result (from a plain test)."""
        return self._owner.call(awaitable, timeout)

    async def arun(self, awaitable: Awaitable[T], timeout: float | None = 120.0) -> T:
        """The same from an async test, whatever loop it runs on."""
        future = asyncio.run_coroutine_threadsafe(_awaited(awaitable), self._owner.loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


class Machines:
    """The machines of one test process, on an event loop in a thread of their own."""

    def __init__(self, artifacts: Path, accel: str | None) -> None:
        self.artifacts = artifacts
        self.accel = accel
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="dmalab", daemon=True)
        self._thread.start()
        self._booted: dict[Path, Machine] = {}

    def call(self, awaitable: Awaitable[T], timeout: float | None = None) -> T:
        future = asyncio.run_coroutine_threadsafe(_awaited(awaitable), self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no result within {timeout} s") from None

    def get(self, spec: str | Path) -> Machine:
        """The machine for `spec`, booted on first use, else restored to just after its boot."""
        from dmalab.machine.topology import load_topology

        topology = load_topology(spec)
        key = topology.path.resolve()
        machine = self._booted.get(key)
        if machine is not None and machine.booted.healthy:
            try:
                self.call(machine.booted.fresh(), 120)
                return machine
            except Exception:
                pass  # boot it again below
        if machine is not None:
            self.stop(key)
        machine = self.call(self._boot(topology), 300)
        self._booted[key] = machine
        return machine

    async def _boot(self, topology: Topology) -> Machine:
        from dmalab.machine.booted import BootedMachine

        booted = BootedMachine(
            topology,
            accel=self.accel,
            artifacts_dir=self.artifacts / "machines",
            name=f"pytest-{topology.name}",
            boot_timeout=240,
        )
        await booted.start()
        await booted.fresh()  # the first test gets it as booted
        return Machine(self, booted)

    def stop(self, key: Path) -> None:
        machine = self._booted.pop(key)
        with contextlib.suppress(Exception):
            self.call(machine.booted.close(), 60)

    def close(self) -> None:
        for key in list(self._booted):
            self.stop(key)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def record_failure(self, machine: Machine, where: Path) -> list[tuple[str, str]]:
        """Keep the machine's artifacts in `where`; report sections (title, text)."""
        where.mkdir(parents=True, exist_ok=True)
        vm = machine.vm
        for name in _ARTIFACT_FILES:
            with contextlib.suppress(OSError):
                shutil.copy(vm.run_dir / name, where / name)
        devices: dict[str, Any] = {}
        for id, dev in vm.devices.items():
            try:
                devices[id] = self.call(dev.dump(), 20)
            except Exception as exc:
                devices[id] = {"id": id, "error": f"{type(exc).__name__}: {exc}"}
            (where / f"ncdma-{id}.json").write_text(json.dumps(devices[id], indent=1) + "\n")
        console = vm.console.tail(CONSOLE_TAIL_LINES) if vm.console is not None else ""
        summary = {
            id: {"counters": d.get("counters"), "violations": d.get("violations", [])}
            for id, d in devices.items()
        }
        return [
            (f"dmalab {machine.topology.name}: console tail", console),
            (f"dmalab {machine.topology.name}: ncdma counters and violations",
             json.dumps(summary, indent=1)),
            (f"dmalab {machine.topology.name}: artifacts", str(where)),
        ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# pytest hooks and the fixture


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dmalab")
    group.addoption(
        "--dmalab-artifacts",
        metavar="DIR",
        type=Path,
        help="keep the artifacts of failed tests (and of machines that failed) in DIR "
        "(default: a temporary directory, kept only when a test failed; ini: dmalab_artifacts)",
    )
    group.addoption(
        "--dmalab-accel",
        choices=ACCELS,
        help="override every topology's accelerator (ini: dmalab_accel)",
    )
    parser.addini(
        "dmalab_artifacts",
        "dmalab: where failed tests' artifacts go, relative to the ini file (--dmalab-artifacts)",
    )
    parser.addini("dmalab_accel", "dmalab: auto, tcg or kvm for every topology (--dmalab-accel)")


def _artifacts_setting(config: pytest.Config) -> Path | None:
    """--dmalab-artifacts, else the ini's dmalab_artifacts (relative to the ini file)."""
    given: Path | None = config.getoption("--dmalab-artifacts")
    if given is not None:
        return given
    ini = str(config.getini("dmalab_artifacts") or "")
    if not ini:
        return None
    base = config.inipath.parent if config.inipath else config.rootpath
    return base / ini


def _accel_setting(config: pytest.Config) -> str | None:
    """--dmalab-accel, else the ini's dmalab_accel."""
    given: str | None = config.getoption("--dmalab-accel")
    ini = str(config.getini("dmalab_accel") or "")
    if given is None and ini and ini not in ACCELS:
        raise pytest.UsageError(f"dmalab_accel = {ini}: expected one of {', '.join(ACCELS)}")
    return given or ini or None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "dmalab(topology=NAME_OR_PATH): the dmalab topology the dmalab_machine fixture boots "
        "(a shipped name such as default, or a path to a .toml file)",
    )
    _accel_setting(config)  # a bad ini value stops the run before any test
    config.stash[_KEEP] = False
    config.stash[_KEPT] = []


_KEEP = pytest.StashKey[bool]()
#: Artifact directories kept at the end, for the summary (the controller's, under xdist).
_KEPT = pytest.StashKey[list[str]]()


def _machines(config: pytest.Config) -> Machines:
    if _MACHINES not in config.stash:
        given = _artifacts_setting(config)
        artifacts = given if given else Path(tempfile.mkdtemp(prefix="dmalab-pytest-"))
        config.stash[_MACHINES] = Machines(artifacts, _accel_setting(config))
    return config.stash[_MACHINES]


def _topology(request: pytest.FixtureRequest) -> str | Path:
    """The test's `dmalab(topology=...)` (default: "default"); a relative .toml path is taken
    relative to the test file."""
    marker = request.node.get_closest_marker("dmalab")
    if marker is None and request.node.get_closest_marker("topology") is not None:
        pytest.fail(
            "@pytest.mark.topology(X) is now @pytest.mark.dmalab(topology=X)", pytrace=False
        )
    options = dict(marker.kwargs) if marker else {}
    if marker and (marker.args or set(options) - {"topology"}):
        pytest.fail(
            "@pytest.mark.dmalab takes topology=NAME_OR_PATH and nothing else", pytrace=False
        )
    spec = options.get("topology", "default")
    if isinstance(spec, str) and spec.endswith(".toml") and not Path(spec).is_absolute():
        spec = Path(request.node.path).parent / spec
    return spec


@pytest.fixture
def dmalab_machine(request: pytest.FixtureRequest) -> Iterator[Machine]:
    """The machine of the test's `dmalab(topology=...)` marker (default: "default"), in its
    just-booted state."""
    machine = _machines(request.config).get(_topology(request))
    request.node.stash[_USED] = machine
    yield machine


_USED = pytest.StashKey[Machine]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    machine = item.stash.get(_USED, None)
    if report.failed and machine is not None and report.when in ("setup", "call"):
        machines = _machines(item.config)
        where = machines.artifacts / re.sub(r"[^\w.-]+", "_", item.nodeid).strip("_")
        for title, text in machines.record_failure(machine, where):
            report.sections.append((title, text))
        for props in (item.user_properties, report.user_properties):
            props.append(("dmalab_artifacts", str(where)))
        item.config.stash[_KEEP] = True
    return report


def _close(config: pytest.Config) -> str | None:
    """Shut the machines down; the artifacts directory if it is kept, else remove it."""
    machines = config.stash.get(_MACHINES, None)
    if machines is None:
        return None
    del config.stash[_MACHINES]
    machines.close()
    kept = machines.artifacts / "machines"
    failed = config.stash.get(_KEEP, False) or (kept.exists() and any(kept.iterdir()))
    if failed:
        return str(machines.artifacts)
    if _artifacts_setting(config) is None:
        shutil.rmtree(machines.artifacts, ignore_errors=True)
    return None


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    kept = _close(config)
    if kept is None:
        return
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: the controller prints the summary
        workeroutput["dmalab_artifacts"] = kept
    else:
        config.stash[_KEPT].append(kept)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist, on the controller: a worker ended; note what it kept."""
    kept = getattr(node, "workeroutput", {}).get("dmalab_artifacts")
    if kept:
        node.config.stash[_KEPT].append(kept)


def pytest_unconfigure(config: pytest.Config) -> None:
    _close(config)  # when the session never finished


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    for kept in sorted(set(config.stash.get(_KEPT, []))):
        terminalreporter.write_line(f"dmalab: artifacts of failed tests in {kept}")
