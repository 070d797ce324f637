"""A small line language of guest agent operations, for people (`dmalab shell --agent`).

`await execute(vm, "stats dma0")` runs one line and returns its output as text. Devices are
named by QOM id (`dma0`) or by the guest's index N of `/dev/ncdmaN`; numbers may be written in
hex (`0x1000`). An error is one line starting with `error:`.
"""

from __future__ import annotations

import shlex
from collections.abc import Awaitable, Callable

from dmalab.errors import DmalabError
from dmalab.machine.agent import DeviceInfo
from dmalab.machine.devices import pci_names
from dmalab.machine.vm import Vm

HELP = """\
hello                               protocol, page size, device count, guest kernel
devices                             each /dev/ncdmaN: QOM id, PCI address, IOMMU group and domain
stats DEV                           driver and device counters of DEV (nonzero ones)
buf-create KIND SIZE [DEV]          KIND: NCDMA, UDMABUF, HEAP_SYSTEM or VGEM; prints the buffer id
buf-free BUF
buf-pages BUF [FIRST [COUNT]]       guest-physical address of each page
read BUF OFFSET LEN                 hexdump of the buffer's bytes (LEN <= 4096)
write-pattern BUF OFFSET LEN SEED   the agent's xorshift pattern (docs/guest-agent.md)
help                                this list
DEV is a QOM id (dma0) or the N of /dev/ncdmaN."""

MAX_READ = 4096


async def guest_devices(vm: Vm) -> dict[str, DeviceInfo]:
    """QOM id -> what the guest driver reports for that device (matched by PCI address)."""
    by_address = await pci_names(vm.qmp)
    hello = vm.hello or await vm.agent.hello()
    found = {}
    for index in range(hello.devices):
        info = await vm.agent.device_info(index)
        found[by_address.get(info.pci_name, f"ncdma{index}")] = info
    return found


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


async def _dev(vm: Vm, name: str) -> int:
    if name.isdigit():
        return int(name)
    devices = await guest_devices(vm)
    if name not in devices:
        raise ValueError(f"no device {name!r} (devices: {', '.join(devices)})")
    return devices[name].index


def _hexdump(data: bytes, base: int) -> str:
    rows = []
    for off in range(0, len(data), 16):
        chunk = data[off : off + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        rows.append(f"{base + off:08x}  {chunk.hex(' '):<47}  {text}")
    return "\n".join(rows)


async def _hello(vm: Vm, args: list[str]) -> str:
    h = await vm.agent.hello()
    return (
        f"protocol {h.proto_version}, uapi {h.uapi_version}, page size {h.page_size}, "
        f"{h.devices} devices, kernel {h.kernel_release}"
    )


async def _devices(vm: Vm, args: list[str]) -> str:
    return "\n".join(
        f"{qid}: /dev/ncdma{i.index} at {i.pci_name}, iommu group {i.iommu_group} "
        f"({i.iommu_domain}), cache {i.cache_size} B / {i.cache_line} B lines"
        for qid, i in (await guest_devices(vm)).items()
    )


async def _stats(vm: Vm, args: list[str]) -> str:
    (dev,) = args
    stats = await vm.agent.stats(await _dev(vm, dev))
    driver = " ".join(f"{k}={v}" for k, v in stats.driver.items() if v)
    device = " ".join(f"{k}={v}" for k, v in stats.device.items() if v)
    return f"driver: {driver or '(all zero)'}\ndevice: {device or '(all zero)'}"


async def _buf_create(vm: Vm, args: list[str]) -> str:
    kind, size, *dev = args
    buf = await vm.agent.buf_create(
        kind.upper(), _int(size), dev=await _dev(vm, dev[0]) if dev else 0
    )
    return f"buffer {buf.id}: {buf.size} bytes (handle {buf.handle})"


async def _buf_free(vm: Vm, args: list[str]) -> str:
    (buf,) = args
    await vm.agent.buf_free(_int(buf))
    return f"buffer {buf} freed"


async def _buf_pages(vm: Vm, args: list[str]) -> str:
    buf, *rest = args
    first = _int(rest[0]) if rest else 0
    count = _int(rest[1]) if len(rest) > 1 else 1
    pages = await vm.agent.buf_pages(_int(buf), first, count)
    return "\n".join(f"page {first + i}: {pa:#x}" for i, pa in enumerate(pages))


async def _read(vm: Vm, args: list[str]) -> str:
    buf, offset, length = (_int(a) for a in args)
    if length > MAX_READ:
        raise ValueError(f"at most {MAX_READ} bytes at a time")
    return _hexdump(await vm.agent.cpu_read(buf, offset, length), offset)


async def _write_pattern(vm: Vm, args: list[str]) -> str:
    buf, offset, length, seed = (_int(a) for a in args)
    await vm.agent.cpu_write_pattern(buf, offset, length, seed)
    return f"wrote {length} bytes of pattern {seed} at {offset}"


async def _help(vm: Vm, args: list[str]) -> str:
    return HELP


OPS: dict[str, Callable[[Vm, list[str]], Awaitable[str]]] = {
    "hello": _hello,
    "devices": _devices,
    "stats": _stats,
    "buf-create": _buf_create,
    "buf-free": _buf_free,
    "buf-pages": _buf_pages,
    "read": _read,
    "write-pattern": _write_pattern,
    "help": _help,
}


async def execute(vm: Vm, line: str) -> str:
    """Run one line; its output, or one `error: ...` line."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        return f"error: {exc}"
    if not words:
        return ""
    op = OPS.get(words[0])
    if op is None:
        return f"error: unknown op {words[0]!r} (try help)"
    try:
        return await op(vm, words[1:])
    except (ValueError, TypeError):
        return f"error: wrong arguments for {words[0]} (try help)"
    except DmalabError as exc:
        return f"error: {' '.join(str(exc).split())}"
