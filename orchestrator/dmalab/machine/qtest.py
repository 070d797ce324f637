"""The qtest protocol (QEMU system/qtest.c) as an asyncio client, and machines driven by it.

qtest is a line protocol: one command per line, one reply per command ("OK [value]", "FAIL ...",
"ERR ..."), in order. `IRQ raise N` / `IRQ lower N` lines arrive between replies whenever an
intercepted interrupt line changes; they are recorded in `irq_events` and never taken for replies.
Because replies come back in order, commands can be pipelined: `submit()` sends a command and
returns a future for its reply without waiting, which bulk transfers use to keep QEMU busy.

All memory accesses are guest-physical on the CPU side: they never go through an IOMMU.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from qemu.qmp import QMPClient

from dmalab.errors import DmalabError
from dmalab.machine.process import QemuProcess
from dmalab.machine.stream import StreamClient

log = logging.getLogger(__name__)

# Big enough for one b64read reply of READ_CHUNK bytes.
_LINE_LIMIT = 64 << 20


class QtestError(DmalabError):
    """QEMU answered a qtest command with FAIL or ERR, or the connection broke."""


class QtestConnectionLost(QtestError):
    """QEMU closed the qtest connection (it exited or crashed)."""


@dataclass(frozen=True)
class IrqEvent:
    """One `IRQ raise/lower N` line, in arrival order."""

    line: int
    raised: bool


class QtestClient(StreamClient[tuple[int, str], bytes]):
    """Talks qtest over a connected stream socket; see the module docstring for the protocol.

    `READ_CHUNK` / `WRITE_CHUNK` split bulk transfers. Writes use small chunks on purpose: QEMU
    receives input 1 KiB at a time and rescans its whole pending line for the newline each time,
    so the cost of one command grows with the square of its length.
    """

    READER_NAME = "qtest-reader"
    READ_CHUNK = 256 << 10
    WRITE_CHUNK = 32 << 10

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self._sent = itertools.count()
        self.irq_events: list[IrqEvent] = []
        self.irq_levels: dict[int, bool] = {}
        self.start()

    @classmethod
    async def connect(cls, sock: socket.socket) -> Self:
        """Speak qtest over `sock` (already connected, e.g. one end of a socketpair)."""
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=_LINE_LIMIT)
        return cls(reader, writer)

    # ------------------------------------------------------------------------------------------
    # Protocol

    def submit(self, command: str) -> asyncio.Future[bytes]:
        """Send one command now; the future gets the reply text after "OK" (as bytes).

        Several submits before awaiting pipeline the commands; replies keep their order.
        """
        if self.lost is not None:
            raise QtestConnectionLost(str(self.lost))
        if "\n" in command:
            raise ValueError(f"a qtest command is one line: {command[:60]!r}")
        short = command if len(command) <= 80 else command[:77] + "..."
        future = self._expect((next(self._sent), short))
        self._writer.write(command.encode() + b"\n")
        return future

    async def command(self, command: str) -> bytes:
        """Send one command and wait for its reply (the text after "OK")."""
        future = self.submit(command)
        if self._writer.transport.get_write_buffer_size() > 1 << 20:
            await self._writer.drain()
        return await future

    async def _read_reply(self) -> None:
        line = await self._reader.readuntil(b"\n")
        if line.startswith(b"IRQ "):
            self._record_irq(line)
            return
        oldest = self._take_oldest()
        if oldest is None:
            log.warning("qtest: reply with no command pending: %r", line[:80])
            return
        (_, command), future = oldest
        if future.done():  # the caller gave up on it
            return
        if line.startswith(b"OK"):
            future.set_result(line[3:].rstrip(b"\n"))
        else:
            text = line.decode(errors="replace").strip()
            future.set_exception(QtestError(f"qtest {command!r}: QEMU replied {text!r}"))

    def _connection_lost(self, exc: Exception | None) -> Exception:
        if exc is None:
            return QtestConnectionLost("the qtest connection was closed")
        if isinstance(exc, (asyncio.IncompleteReadError, ConnectionError)):
            return QtestConnectionLost(f"QEMU closed the qtest connection ({exc!r})")
        if isinstance(exc, asyncio.LimitOverrunError):
            return QtestConnectionLost(f"qtest reply longer than {_LINE_LIMIT} bytes: {exc}")
        log.error("qtest: reply reader failed", exc_info=exc)
        return QtestConnectionLost(f"qtest reply reader failed: {exc!r}")

    def _record_irq(self, line: bytes) -> None:
        words = line.split()
        if len(words) != 3 or words[1] not in (b"raise", b"lower"):
            log.warning("qtest: malformed IRQ line %r", line)
            return
        try:
            event = IrqEvent(int(words[2]), words[1] == b"raise")
        except ValueError:
            log.warning("qtest: malformed IRQ line %r", line)
            return
        self.irq_events.append(event)
        self.irq_levels[event.line] = event.raised

    # ------------------------------------------------------------------------------------------
    # Memory (guest-physical, little-endian values)

    async def readb(self, addr: int) -> int:
        return int(await self.command(f"readb {addr:#x}"), 0)

    async def readw(self, addr: int) -> int:
        return int(await self.command(f"readw {addr:#x}"), 0)

    async def readl(self, addr: int) -> int:
        return int(await self.command(f"readl {addr:#x}"), 0)

    async def readq(self, addr: int) -> int:
        return int(await self.command(f"readq {addr:#x}"), 0)

    async def writeb(self, addr: int, value: int) -> None:
        await self.command(f"writeb {addr:#x} {value & 0xFF:#x}")

    async def writew(self, addr: int, value: int) -> None:
        await self.command(f"writew {addr:#x} {value & 0xFFFF:#x}")

    async def writel(self, addr: int, value: int) -> None:
        await self.command(f"writel {addr:#x} {value & 0xFFFF_FFFF:#x}")

    async def writeq(self, addr: int, value: int) -> None:
        await self.command(f"writeq {addr:#x} {value & 0xFFFF_FFFF_FFFF_FFFF:#x}")

    async def read(self, addr: int, size: int) -> bytes:
        """`size` bytes of guest-physical memory, in pipelined chunks."""
        if size < 0:
            raise ValueError(f"negative size {size}")
        futures = [
            self.submit(f"b64read {addr + off:#x} {min(self.READ_CHUNK, size - off):#x}")
            for off in range(0, size, self.READ_CHUNK)
        ]
        await self._writer.drain()
        try:
            # Decoding chunk by chunk overlaps with QEMU still producing the next ones.
            data = b"".join([base64.b64decode(await f) for f in futures])
        finally:
            _settle(futures)
        if len(data) != size:
            raise QtestError(f"b64read at {addr:#x}: asked {size} bytes, got {len(data)}")
        return data

    async def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Write guest-physical memory, in pipelined chunks."""
        view = memoryview(data).cast("B")
        futures = []
        for off in range(0, len(view), self.WRITE_CHUNK):
            chunk = view[off : off + self.WRITE_CHUNK]
            encoded = base64.b64encode(chunk).decode()
            futures.append(self.submit(f"b64write {addr + off:#x} {len(chunk):#x} {encoded}"))
            if self._writer.transport.get_write_buffer_size() > 4 << 20:
                await self._writer.drain()
        try:
            await self._writer.drain()
            for f in futures:
                await f
        finally:
            _settle(futures)

    async def memset(self, addr: int, size: int, value: int = 0) -> None:
        if size < 0:
            raise ValueError(f"negative size {size}")
        await self.command(f"memset {addr:#x} {size:#x} {value & 0xFF:#x}")

    # ------------------------------------------------------------------------------------------
    # I/O ports

    async def inb(self, port: int) -> int:
        return int(await self.command(f"inb {_port(port):#x}"), 0)

    async def inw(self, port: int) -> int:
        return int(await self.command(f"inw {_port(port):#x}"), 0)

    async def inl(self, port: int) -> int:
        return int(await self.command(f"inl {_port(port):#x}"), 0)

    async def outb(self, port: int, value: int) -> None:
        await self.command(f"outb {_port(port):#x} {value & 0xFF:#x}")

    async def outw(self, port: int, value: int) -> None:
        await self.command(f"outw {_port(port):#x} {value & 0xFFFF:#x}")

    async def outl(self, port: int, value: int) -> None:
        await self.command(f"outl {_port(port):#x} {value & 0xFFFF_FFFF:#x}")

    # ------------------------------------------------------------------------------------------
    # Virtual clock and interrupt lines

    async def clock_step(self, ns: int | None = None) -> int:
        """Advance QEMU_CLOCK_VIRTUAL by `ns`, or to the next timer deadline; returns the clock."""
        return int(await self.command("clock_step" if ns is None else f"clock_step {ns}"))

    async def clock_set(self, ns: int) -> int:
        return int(await self.command(f"clock_set {ns}"))

    async def irq_intercept_in(self, qom_path: str) -> None:
        """Report the input lines of `qom_path` (e.g. "ioapic") as IRQ events."""
        await self.command(f"irq_intercept_in {qom_path}")

    async def set_irq_in(self, qom_path: str, name: str, line: int, level: int) -> None:
        await self.command(f"set_irq_in {qom_path} {name} {line} {level}")


class QtestRegisters:
    """A device's register block at `base`, read and written through qtest.

    Each register must be accessed at its own width: QEMU devices refuse or assert on others.
    """

    def __init__(self, qtest: QtestClient, base: int) -> None:
        self.qtest = qtest
        self.base = base

    async def read32(self, offset: int) -> int:
        return await self.qtest.readl(self.base + offset)

    async def read64(self, offset: int) -> int:
        return await self.qtest.readq(self.base + offset)

    async def write32(self, offset: int, value: int) -> None:
        await self.qtest.writel(self.base + offset, value)

    async def write64(self, offset: int, value: int) -> None:
        await self.qtest.writeq(self.base + offset, value)


def _settle(futures: list[asyncio.Future[bytes]]) -> None:
    """After a failed bulk transfer: drop the replies nobody will await, without warnings."""
    for future in futures:
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()


def _port(port: int) -> int:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"I/O port {port:#x} out of range")  # QEMU would abort on it
    return port


@dataclass(frozen=True)
class QtestBoard:
    """A machine as the host drives it under qtest: its command line, and the parts of its memory
    map the host programs itself (no firmware runs to do it)."""

    arch: str
    machine: str  # the -machine value
    args: tuple[str, ...]
    ram_base: int
    ecam: tuple[int, int] | None  # PCIe ECAM (base, buses); None: ports 0xcf8/0xcfc
    mmio32: tuple[int, int]  # where 32-bit memory BARs go
    mmio64: tuple[int, int] | None  # 64-bit prefetchable BARs (None: in mmio32)
    #: IOMMUs that are a property of the machine (`-machine ...,iommu=X`), not a -device.
    machine_iommus: tuple[str, ...] = field(default=())


#: q35: BARs above any 32-bit RAM (up to 2.75 GiB stays below MMCONFIG at 0xb0000000) and below
#: the IOAPIC at 0xfec00000; 64-bit prefetchable BARs from 64 GiB up.
Q35_MMIO32 = (0xE000_0000, 0xFEC0_0000)
Q35_MMIO64 = (0x10_0000_0000, 0x20_0000_0000)
Q35 = QtestBoard(
    arch="x86_64",
    machine="q35",
    args=(),
    ram_base=0,
    ecam=None,
    mmio32=Q35_MMIO32,
    mmio64=Q35_MMIO64,
)
#: arm virt (hw/arm/virt.c base_memmap): RAM from 1 GiB, the 32-bit PCIe MMIO window, and the
#: ECAM kept low (highmem-ecam=off: 16 buses at 0x3f000000, instead of a high window whose
#: address depends on the RAM size). The CPU never runs under qtest; GICv3 as in the topologies.
VIRT = QtestBoard(
    arch="aarch64",
    machine="virt,gic-version=3,highmem-ecam=off",
    args=("-cpu", "cortex-a57"),
    ram_base=0x4000_0000,
    ecam=(0x3F00_0000, 16),
    mmio32=(0x1000_0000, 0x3EFF_0000),
    mmio64=None,
    machine_iommus=("smmuv3",),
)
BOARDS = {board.arch: board for board in (Q35, VIRT)}


class QtestVM:
    """A machine under the qtest accelerator: no guest code runs, this side drives it.

    `qemu_argv` starts the command line (binary and `-L` firmware dirs) and must suit `board`.
    `iommu` is a `-device` value placed before every other device (devices created earlier would
    not be translated), or one of the board's `machine_iommus`. `devices` are `-device` values,
    `global_props` `-global` values, in order.
    """

    def __init__(
        self,
        qemu_argv: Sequence[str],
        *,
        board: QtestBoard = Q35,
        iommu: str | None = None,
        devices: Sequence[str] = (),
        global_props: Sequence[str] = (),
        memory_mib: int = 256,
        extra_args: Sequence[str] = (),
        artifacts_dir: Path | None = None,
        name: str = "qtest",
    ) -> None:
        self.board = board
        self.memory_size = memory_mib << 20
        machine = board.machine
        if iommu in board.machine_iommus:
            machine += f",iommu={iommu}"
        argv = [
            *qemu_argv,
            "-machine", machine, *board.args, "-accel", "qtest", "-display", "none",
            "-nodefaults", "-m", f"{memory_mib}M",
            "-qtest", "chardev:qtest", "-qtest-log", "none",
        ]  # fmt: skip
        if iommu is not None and iommu not in board.machine_iommus:
            argv += ["-device", iommu]
        for prop in global_props:
            argv += ["-global", prop]
        for device in devices:
            argv += ["-device", device]
        argv += extra_args
        self.process = QemuProcess(argv, name=name, channels=["qtest"], artifacts_dir=artifacts_dir)
        self._qtest: QtestClient | None = None

    @property
    def ram_end(self) -> int:
        """The end of guest RAM (it starts at `board.ram_base`)."""
        return self.board.ram_base + self.memory_size

    @property
    def qtest(self) -> QtestClient:
        if self._qtest is None:
            raise RuntimeError("the machine is not started")
        return self._qtest

    @property
    def qmp(self) -> QMPClient:
        return self.process.qmp

    async def __aenter__(self) -> Self:
        await self.process.__aenter__()
        try:
            self._qtest = await QtestClient.connect(self.process.channel("qtest"))
        except BaseException as exc:
            await self.process.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._qtest is not None:
                await self._qtest.close()
        finally:
            await self.process.__aexit__(exc_type, exc, tb)
