"""Guest code addresses as `function+0xoff [module]`, from what the running guest says.

The kernel's functions come from the start of `/proc/kallsyms` (read as root through the agent,
so KASLR is already applied; text symbols come first and fit in one 4 MiB read), a module's
from its own .ko in the guest (its ELF symbol table) placed at `/sys/module/<m>/sections/.text`.
Loaded once per agent connection: a restored snapshot is the same boot, with the same addresses.

The model reports CONTEXTIDR_EL1 with each event, where Linux keeps the running task's PID
(`process_symbols`): the task is named by its command (stable from boot to boot, where PIDs are
not), and a user-space address against the task's program, `/proc/<pid>/exe`'s symbol table
placed where `/proc/<pid>/maps` says for a position-independent one, as `function+0xoff
[comm]`. A task that has exited leaves its number and addresses.
"""

from __future__ import annotations

import bisect
import contextlib
import struct
import weakref
from dataclasses import dataclass, field

from dmalab.artifacts import elf
from dmalab.machine.agent import AgentClient, AgentError
from dmalab.machine.guest_modules import image_modules

KALLSYMS_READ = 4 << 20
MODULE_READ = 4 << 20
PROGRAM_READ = 4 << 20
#: arm64 user addresses lie below this; the kernel's start at 0xffff...
USER_TOP = 1 << 56
#: A kernel address further than this past its symbol is not in that function.
MAX_FUNCTION = 1 << 20
TEXT_KINDS = frozenset("TtWw")


@dataclass
class _Table:
    addrs: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def add(self, pairs: list[tuple[int, str]]) -> None:
        pairs.sort()
        self.addrs = [a for a, _ in pairs]
        self.names = [n for _, n in pairs]

    def find(self, pc: int) -> tuple[str, int] | None:
        i = bisect.bisect_right(self.addrs, pc) - 1
        if i < 0:
            return None
        return self.names[i], pc - self.addrs[i]


@dataclass
class _Module:
    name: str
    base: int
    size: int
    table: _Table


@dataclass
class _Process:
    comm: str
    table: _Table


class GuestSymbols:
    """The guest kernel's and its modules' functions, and those of the programs of tasks that
    `process_symbols` looked up."""

    def __init__(self) -> None:
        self.kernel = _Table()
        self.modules: list[_Module] = []
        self.processes: dict[int, _Process | None] = {}

    def task(self, pid: int) -> str:
        """How a finding names task `pid`: its command name, else its number."""
        proc = self.processes.get(pid)
        return proc.comm if proc is not None else f"pid {pid}"

    def name(self, pc: int, pid: int = 0) -> str:
        """`function+0xoff [module]` (for a user address, `[comm]` of task `pid`), or the
        address when nothing covers it."""
        if pc < USER_TOP:
            proc = self.processes.get(pid)
            if proc is None:
                return f"{pc:#x}"
            hit = proc.table.find(pc)
            if hit and hit[1] < MAX_FUNCTION:
                return f"{hit[0]}+{hit[1]:#x} [{proc.comm}]"
            return f"{pc:#x} [{proc.comm}]"
        for m in self.modules:
            if m.base <= pc < m.base + m.size:
                hit = m.table.find(pc)
                return f"{hit[0]}+{hit[1]:#x} [{m.name}]" if hit else f"{pc:#x} [{m.name}]"
        hit = self.kernel.find(pc)
        if hit and hit[1] < MAX_FUNCTION:
            return f"{hit[0]}+{hit[1]:#x}"
        return f"{pc:#x}"

    def trace(self, frames: list[int], pid: int = 0) -> str:
        """A short backtrace, innermost first (consecutive repeats folded)."""
        names: list[str] = []
        for pc in frames:
            n = self.name(pc, pid)
            if not names or names[-1] != n:
                names.append(n)
        return " <- ".join(names)


_loaded: weakref.WeakKeyDictionary[AgentClient, GuestSymbols] = weakref.WeakKeyDictionary()


async def guest_symbols(agent: AgentClient) -> GuestSymbols:
    """The symbols of the guest behind `agent` (read once per connection)."""
    syms = _loaded.get(agent)
    if syms is None:
        syms = GuestSymbols()
        # Addresses stay numbers: a finding never fails for want of a name.
        with contextlib.suppress(AgentError, ValueError, OSError):
            await _load(agent, syms)
        _loaded[agent] = syms
    return syms


async def _load(agent: AgentClient, syms: GuestSymbols) -> None:
    pairs = []
    for line in (await agent.read_file("/proc/kallsyms", KALLSYMS_READ)).decode().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in TEXT_KINDS:  # module symbols have a 4th word
            pairs.append((int(parts[0], 16), parts[2]))
    if pairs and any(a for a, _ in pairs):  # all zero: kptr_restrict hides them
        syms.kernel.add(pairs)
    mods = await image_modules(agent)
    for line in (await agent.read_file("/proc/modules", 1 << 16)).decode().splitlines():
        name, size = line.split()[:2]
        if name in mods.files:
            syms.modules.append(await _module(agent, name, int(size), mods.path(name)))


async def _module(agent: AgentClient, name: str, size: int, path: str) -> _Module:
    text = (await agent.read_file(f"/sys/module/{name}/sections/.text", 64)).decode()
    base = int(text.strip(), 16)
    ko = await agent.read_file(path, MODULE_READ)
    table = _Table()
    table.add(
        [(base + value, fn) for fn, sec, value, _ in elf.function_symbols(ko) if sec == ".text"]
    )
    return _Module(name, base, size, table)


async def process_symbols(agent: AgentClient, syms: GuestSymbols, pid: int) -> None:
    """Read the name and program of task `pid` into `syms` (once per task; nothing when it has
    exited; no functions for a kernel thread or what is not an ELF program)."""
    if pid <= 0 or pid in syms.processes:
        return
    syms.processes[pid] = None
    with contextlib.suppress(AgentError, ValueError, OSError, struct.error):
        comm = (await agent.read_file(f"/proc/{pid}/comm", 64)).decode().strip()
        syms.processes[pid] = _Process(comm, _Table())
        exe = await agent.read_file(f"/proc/{pid}/exe", PROGRAM_READ)
        base = 0
        if elf.file_type(exe) == elf.ET_DYN:
            # position-independent: its first mapping (file offset 0) is where it was loaded
            maps = (await agent.read_file(f"/proc/{pid}/maps", 1 << 16)).decode()
            base = int(maps.split("-", 1)[0], 16)
        table = _Table()
        table.add([(base + value, fn) for fn, _, value, _ in elf.function_symbols(exe) if value])
        syms.processes[pid] = _Process(comm, table)
