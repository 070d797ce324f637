"""The noncoherent platform's scenarios: the kernel's own DMA API syncs, and their absence.

On a machine whose CPU caches QEMU models (`coherency = "noncoherent"`, docs/cpu-cache-model.md)
ncdma has no cache of its own: what decides the bytes is whether the kernel cleaned the CPU's
lines before a device read them (dma_map, dma_sync_*_for_device, end_cpu_access) and invalidated
them before the CPU read what a device wrote (dma_unmap, dma_sync_*_for_cpu, begin_cpu_access).
The model's detectors name the step where that was missed. Elsewhere these scenarios are n/a:
there the syncs do nothing and nothing can miss them.

- `platform-table`: seed 000's table with map/unmap as the only ownership API (the shared-read
  layout, then the CPU reads what the devices wrote), and the driver's faulty modes that skip
  or misdirect the exporter's syncs.
- `platform-cpu-access`: two cycles of CPU write, device copy, CPU read on an ncdma export whose
  importer keeps its mapping, so only `DMA_BUF_IOCTL_SYNC` keeps the CPU caches right.
- `platform-udmabuf`: the same on a udmabuf (the CPU writes through the memfd), imported by
  ncdma: udmabuf's own map, unmap and begin/end_cpu_access, unmodified.
- `platform-heap`: the same on a `/dev/dma_heap/system` buffer, where the kernel has the heap
  (Debian's arm64 6.12 has none: n/a there, with that reason).
- `platform-vgem`: the same on a vgem (DRM) dumb buffer exported through PRIME, the CPU
  writing and reading through its write-combining dma-buf mapping.
"""

from __future__ import annotations

from typing import Any

from dmalab.machine.agent import AgentError, Desc
from dmalab.scenarios.api import PAGE, Att, Buf, Run
from dmalab.scenarios.declarations import NONCOHERENT_PLATFORM, Cell, Scenario, Variant

BUF = "buf"
NO_SYNC = "without DMA_BUF_IOCTL_SYNC"
HEAP = "/dev/dma_heap/system"
UDMABUF = "/dev/udmabuf"
VGEM = "/sys/devices/platform/vgem"


def off_platform(run: Run) -> str | None:
    """Why the family cannot run here: the machine does not model its CPU caches."""
    topology = getattr(run.vm, "topology", None)
    if getattr(getattr(topology, "machine", None), "coherency", "coherent") == "noncoherent":
        return None
    return ("the kernel's DMA API syncs only matter where QEMU models the CPU caches "
            "(a noncoherent platform: arm64-noncoherent)")  # fmt: skip


async def _missing(run: Run, node: str) -> bool:
    """Whether the guest has no device node `node` (reading a dma-buf exporter's node fails
    with EINVAL: it is there)."""
    try:
        await run.agent.read_file(node, 1)
    except AgentError as exc:
        return exc.name == "ENOENT"
    return False


async def no_heap(run: Run) -> str | None:
    """`off_platform`, or the kernel has no system dma-heap (Debian's arm64 6.12 has no
    CONFIG_DMABUF_HEAPS)."""
    why = off_platform(run)
    if why or not await _missing(run, HEAP):
        return why
    return f"this kernel has no system dma-heap (no {HEAP}: CONFIG_DMABUF_HEAPS is not set)"


async def no_udmabuf(run: Run) -> str | None:
    """`off_platform`, or the kernel has no udmabuf (Debian's arm64 6.12 builds it in; 6.1's
    image does not have it)."""
    why = off_platform(run)
    if why or not await _missing(run, UDMABUF):
        return why
    return f"this kernel has no udmabuf (no {UDMABUF})"


async def no_vgem(run: Run) -> str | None:
    """`off_platform`, or the guest has no vgem device (the module is loaded before the
    snapshot where the image carries it)."""
    why = off_platform(run)
    if why or not await _missing(run, f"{VGEM}/uevent"):
        return why
    return f"this kernel has no vgem (no {VGEM}: CONFIG_DRM_VGEM is not set)"


def _only_base(cells: tuple[Cell, ...] = ()) -> tuple[Cell, ...]:
    why = "the variant chooses its buffer's mapping policy itself"
    return (*cells, Cell("cache-sgt", "n/a", why), Cell("exclusive", "n/a", why))


def _detected(steps: tuple[int, ...], why: str) -> tuple[Cell, ...]:
    """A faulty variant: ncdma is coherent on the platform, so the detection is declared there."""
    return _only_base((Cell("base", "detected", why, steps, NONCOHERENT_PLATFORM),))


def explain(run: Run, step: int, kinds: tuple[str, ...], why: str) -> None:
    """Add to the model's findings at `step` the kernel call that was missing before it."""
    for f in run.findings:
        if f.step == step and f.kind in kinds:
            f.line += f"; {why}"


# ---------------------------------------------------------------------------------------------
# Seed 000's table through the real DMA API


async def table(run: Run) -> None:
    buf = await run.buffer(BUF, 4 * PAGE, exporter="dma0", faults=run.params.get("faults", []))
    a = await run.attach(buf, "dma0", "device A")
    b = await run.attach(buf, "dma1", "device B")
    model = run.ledger.model

    def copy_effect(dst: int) -> Any:
        return lambda: {BUF: {dst: model(BUF)[0:PAGE]}}

    await run.cpu(1, "driver A", buf, read=(0, PAGE), write=(0, PAGE, run.pattern_seed(1)))
    await run.cpu(2, "driver B", buf, read=(0, PAGE), write=(3 * PAGE, PAGE, run.pattern_seed(2)))
    await run.map(3, "driver A", a)
    await run.dma(5, "device A", "dma0", [Desc.copy(a.id, a.id, PAGE, dst_off=PAGE)],
                  action="dma (copy page 0 to page 1)", writes=copy_effect(PAGE))  # fmt: skip
    await run.map(6, "driver B", b)
    await run.dma(7, "device A", "dma0", [Desc.copy(a.id, a.id, PAGE, dst_off=PAGE)],
                  action="dma (read page 0)", writes=copy_effect(PAGE))  # fmt: skip
    await run.dma(8, "device B", "dma1", [Desc.copy(b.id, b.id, PAGE, dst_off=2 * PAGE)],
                  action="dma (read page 0)", writes=copy_effect(2 * PAGE))  # fmt: skip
    await run.unmap(9, "driver A", a)
    await run.dma(10, "device B", "dma1", [Desc.copy(b.id, b.id, PAGE, dst_off=2 * PAGE)],
                  action="dma (copy page 0 to page 2)", writes=copy_effect(2 * PAGE))  # fmt: skip
    await run.unmap(12, "driver B", b)
    await run.cpu(13, "driver A", buf, read=(PAGE, 2 * PAGE), action="CPU read pages 1-2")
    await run.check_bytes(13, buf, 0, model(BUF), "the buffer after the table vs. a coherent "
                          "machine")  # fmt: skip
    faults = run.params.get("faults", [])
    if "SKIP_SYNC_FOR_DEVICE" in faults:
        explain(
            run,
            5,
            ("DEVICE_READ_STALE",),
            "the exporter mapped with DMA_ATTR_SKIP_CPU_SYNC "
            "(no dma_sync_sgtable_for_device: the CPU's lines were not cleaned)",
        )
    for fault, why in (("SKIP_SYNC_FOR_CPU", "the exporter unmapped with DMA_ATTR_SKIP_CPU_SYNC"),
                       ("SYNC_WRONG_DIR", "the exporter unmapped with DMA_TO_DEVICE, for which "
                        "arm64 invalidates nothing")):  # fmt: skip
        if fault in faults:
            explain(run, 13, ("CPU_READ_STALE",), f"{why} (the CPU's lines were not invalidated)")


PLATFORM_TABLE = Scenario(
    "platform-table", "P000", "seed 000's table on the noncoherent platform, through the DMA API",
    table,
    (
        Variant("table", "pass", (),
                "map/unmap own the buffer; the exporter's dma_map/unmap_sgtable clean and "
                "invalidate", cells=_only_base()),
        Variant("skip-sync-for-device", "detected", (5,),
                "SKIP_SYNC_FOR_DEVICE: dma_map_sgtable with DMA_ATTR_SKIP_CPU_SYNC, no clean",
                {"faults": ["SKIP_SYNC_FOR_DEVICE"]},
                cells=_detected((5,), "device A reads page 0 while step 1's write is still in "
                                "the CPU's lines (DEVICE_READ_STALE)")),
        Variant("skip-sync-for-cpu", "detected", (13,),
                "SKIP_SYNC_FOR_CPU: dma_unmap_sgtable with DMA_ATTR_SKIP_CPU_SYNC, no invalidate",
                {"faults": ["SKIP_SYNC_FOR_CPU"]},
                cells=_detected((13,), "the CPU reads its old lines of pages 1-2, not the "
                                "devices' copies (CPU_READ_STALE)")),
        Variant("sync-wrong-direction", "detected", (13,),
                "SYNC_WRONG_DIR: dma_unmap_sgtable with DMA_TO_DEVICE: arm64 skips the "
                "invalidate", {"faults": ["SYNC_WRONG_DIR"]},
                cells=_detected((13,), "the CPU reads its old lines of pages 1-2, not the "
                                "devices' copies (CPU_READ_STALE)")),
    ),
    unavailable=off_platform,
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# CPU access bracketed by DMA_BUF_IOCTL_SYNC, or not, on a mapping the importer keeps


async def _buffer(run: Run) -> tuple[Buf, Att]:
    kind = run.params.get("kind", "NCDMA")
    buf = await run.buffer(BUF, 2 * PAGE, exporter="dma0", kind=kind,
                           faults=run.params.get("faults", []))  # fmt: skip
    # An ncdma or heap import keeps the mapping only when asked (the importer's CACHE_SGT);
    # udmabuf and DRM's PRIME set cache_sgt_mapping themselves, so the dma-buf core keeps its
    # mapping until detach.
    flags = [] if kind in ("UDMABUF", "VGEM") else ["CACHE_SGT"]
    return buf, await run.attach(buf, "dma2", "device A", flags=flags)


async def _check(run: Run, step: int, buf: Buf, expected: bytes, what: str) -> None:
    """Page 1 as the CPU sees it: guest memory for a cacheable mapping; for vgem's
    write-combining one, what a read through it returns (memory behind the caches)."""
    check = run.check_read if run.params.get("kind") == "VGEM" else run.check_bytes
    await check(step, buf, PAGE, expected, what)


async def _memfd_fill(run: Run, buf: Buf) -> int:
    """A udmabuf wraps memory its memfd's owner filled before any dma-buf access (step 1);
    returns the number of the scenario's next step."""
    if run.params.get("kind", "NCDMA") != "UDMABUF":
        return 1
    await run.cpu(1, "memfd owner", buf, write=(0, 2 * PAGE, run.pattern_seed(20)),
                  action="CPU write pages 0-1 through the memfd")  # fmt: skip
    return 2


async def cpu_access(run: Run) -> None:
    """Two cycles: CPU write page 0, map, copy page 0 to page 1, unmap, CPU read page 1."""
    buf, a = await _buffer(run)
    first = await _memfd_fill(run, buf)
    sync_write = run.params.get("sync_write", True)
    sync_read = run.params.get("sync_read", True)
    for c in range(2):
        s = first + 5 * c
        tag = 21 + c
        how = "" if sync_write else f" {NO_SYNC}"
        await run.cpu(s, "driver A", buf, write=(0, PAGE, run.pattern_seed(tag)), sync=sync_write,
                      action=f"CPU write page 0{how}")  # fmt: skip
        await run.map(s + 1, "driver A", a)
        await run.dma(s + 2, "device A", "dma2", [Desc.copy(a.id, a.id, PAGE, dst_off=PAGE)],
                      action="dma (copy page 0 to page 1)",
                      writes={BUF: {PAGE: run.pattern(tag, PAGE)}})  # fmt: skip
        await run.unmap(s + 3, "driver A", a)
        how = "" if sync_read else f" {NO_SYNC}"
        await run.cpu(s + 4, "driver A", buf, read=(PAGE, PAGE), sync=sync_read,
                      action=f"CPU read page 1{how}")  # fmt: skip
        await _check(run, s + 4, buf, run.pattern(tag, PAGE), f"cycle {c + 1} copy")
        _explain_cycle(run, s, sync_write, sync_read)


def _explain_cycle(run: Run, s: int, sync_write: bool, sync_read: bool) -> None:
    if run.params.get("kind") == "VGEM":
        explain(run, s + 2, ("DEVICE_READ_STALE",), VGEM_ZEROED)
        return
    if "CPU_ACCESS_NO_SYNC" in run.params.get("faults", []):
        explain(
            run,
            s + 2,
            ("DEVICE_READ_STALE",),
            f"step {s}'s end_cpu_access called no dma_sync_sgtable_for_device (CPU_ACCESS_NO_SYNC)",
        )
    if not sync_write:
        explain(
            run,
            s + 2,
            ("DEVICE_READ_STALE",),
            f"step {s} wrote {NO_SYNC} (END): nothing cleaned the CPU's lines",
        )
    if not sync_read:
        explain(
            run,
            s + 4,
            ("CPU_READ_STALE",),
            f"step {s + 4} read {NO_SYNC} (START): nothing invalidated the CPU's lines",
        )


async def device_first(run: Run) -> None:
    """The device writes before the CPU's first access: map, fill page 1, unmap, CPU read."""
    buf, a = await _buffer(run)
    s = await _memfd_fill(run, buf)
    await run.map(s, "driver A", a)
    await run.dma(
        s + 1,
        "device A",
        "dma2",
        [Desc.fill(a.id, PAGE, run.fill_word(0xF1), dst_off=PAGE)],
        action="dma (fill page 1)",
        writes={BUF: {PAGE: run.fill(0xF1, PAGE)}},
    )
    await run.unmap(s + 2, "driver A", a)
    sync = run.params.get("sync_read", True)
    await run.cpu(s + 3, "driver A", buf, read=(PAGE, PAGE), sync=sync,
                  action="CPU read page 1" + ("" if sync else f" {NO_SYNC}"))  # fmt: skip
    await _check(run, s + 3, buf, run.fill(0xF1, PAGE), "the device's fill")


async def _body(run: Run) -> None:
    await (device_first if run.params.get("device_first") else cpu_access)(run)


WRITE_STALE = "device A reads page 0 from memory while the CPU's write is still in its lines"
READ_STALE = "the CPU reads its old lines of page 1, not the device's copy"


def _access_variants(kind: str, sync: tuple[Cell, ...] = ()) -> tuple[Variant, ...]:
    k = 1 if kind == "UDMABUF" else 0  # the memfd owner's step comes first
    write, read = (3 + k, 8 + k), (5 + k, 10 + k)
    return (
        Variant("sync", "pass", (), "every CPU access bracketed by DMA_BUF_IOCTL_SYNC",
                {"kind": kind}, cells=_only_base(sync)),
        Variant("write-without-sync", "detected", write,
                "the CPU writes page 0 without DMA_BUF_IOCTL_SYNC",
                {"kind": kind, "sync_write": False}, cells=_detected(write, WRITE_STALE)),
        Variant("read-without-sync", "detected", read,
                "the CPU reads page 1 without DMA_BUF_IOCTL_SYNC",
                {"kind": kind, "sync_read": False}, cells=_detected(read, READ_STALE)),
    )  # fmt: skip


PLATFORM_CPU_ACCESS = Scenario(
    "platform-cpu-access", "P001",
    "DMA_BUF_IOCTL_SYNC on an ncdma export whose importer keeps its mapping", _body,
    (
        *_access_variants("NCDMA"),
        # The device copies what it read, memory's old bytes, over the CPU's equally old view
        # of page 1: the missing invalidate changes nothing the CPU reads, the clean does.
        Variant("begin-cpu-without-sync", "detected", (3, 8),
                "CPU_ACCESS_NO_SYNC: the exporter's begin/end_cpu_access call no DMA API sync",
                {"faults": ["CPU_ACCESS_NO_SYNC"]}, cells=_detected((3, 8), WRITE_STALE)),
    ),
    unavailable=off_platform,
)  # fmt: skip


#: What the model shows of Linux 6.12's udmabuf: it maps (for the importer and for its own
#: begin_cpu_access) with DMA_ATTR_SKIP_CPU_SYNC, and its first begin_cpu_access syncs that new
#: mapping for the CPU: an invalidate of lines nobody cleaned. What the memfd's owner wrote
#: through the CPU caches before that (and the kernel's zeroing of fresh pages) is discarded
#: (CPU_WRITE_LOST): the user's mapping and the device see what memory held before.
UDMABUF_FIRST_SYNC = (
    "a finding about udmabuf on a noncoherent platform: its first DMA_BUF_IOCTL_SYNC maps with "
    "DMA_ATTR_SKIP_CPU_SYNC (no clean) and then invalidates, discarding what was written "
    "through the memfd before it: the CPU and the device see memory's old bytes"
)
PLATFORM_UDMABUF = Scenario(
    "platform-udmabuf", "P002",
    "udmabuf (memfd) exported to an ncdma importer, with and without DMA_BUF_IOCTL_SYNC", _body,
    (
        *_access_variants(
            "UDMABUF", (Cell("base", "detected", UDMABUF_FIRST_SYNC, (2,), NONCOHERENT_PLATFORM),)
        ),
        Variant("device-first", "pass", (),
                "the device writes before the CPU's first DMA_BUF_IOCTL_SYNC",
                {"kind": "UDMABUF", "device_first": True},
                cells=_only_base((Cell("base", "detected", UDMABUF_FIRST_SYNC, (5,),
                                       NONCOHERENT_PLATFORM),))),
    ),
    unavailable=no_udmabuf,
)  # fmt: skip


#: The system heap syncs every attachment's mapping in begin/end_cpu_access, as the ncdma
#: exporter does.
PLATFORM_HEAP = Scenario(
    "platform-heap", "P003",
    "a /dev/dma_heap/system buffer imported by ncdma, with and without DMA_BUF_IOCTL_SYNC", _body,
    _access_variants("HEAP_SYSTEM"), unavailable=no_heap,
)  # fmt: skip


#: What the model shows of vgem (Linux 6.12 and 6.1, unmodified): its pages are zeroed through the
#: kernel's cacheable linear map (DC ZVA in clear_page), and nothing cleans those lines: PRIME
#: maps for an importer with DMA_ATTR_SKIP_CPU_SYNC and vgem has no begin/end_cpu_access. The
#: user writes through a write-combining mapping, so memory holds its bytes and the device reads
#: them, under dirty zeros that a real cache writes back whenever it evicts them.
VGEM_ZEROED = (
    "a finding about vgem on a noncoherent platform: the kernel zeroed its pages through the "
    "cacheable linear map and nothing cleaned those lines (PRIME maps with "
    "DMA_ATTR_SKIP_CPU_SYNC; no begin/end_cpu_access): the device reads what the CPU wrote "
    "write-combining, under dirty zeros a cache may write back over it"
)
VGEM_WRITES = (3, 8)
PLATFORM_VGEM = Scenario(
    "platform-vgem", "P004",
    "a vgem (DRM) buffer imported by ncdma, the CPU through its write-combining mapping", _body,
    (
        Variant("sync", "pass", (), "every CPU access bracketed by DMA_BUF_IOCTL_SYNC",
                {"kind": "VGEM"},
                cells=_only_base((Cell("base", "detected", VGEM_ZEROED, VGEM_WRITES,
                                       NONCOHERENT_PLATFORM),))),
        Variant("without-sync", "pass", (), "no DMA_BUF_IOCTL_SYNC: vgem turns it into nothing",
                {"kind": "VGEM", "sync_write": False, "sync_read": False},
                cells=_only_base((Cell("base", "detected", VGEM_ZEROED, VGEM_WRITES,
                                       NONCOHERENT_PLATFORM),))),
        Variant("device-first", "pass", (),
                "the device fills page 1, the CPU reads it bracketed by DMA_BUF_IOCTL_SYNC",
                {"kind": "VGEM", "device_first": True}, cells=_only_base()),
        Variant("device-first-without-sync", "pass", (),
                "the same without DMA_BUF_IOCTL_SYNC: vgem's mapping needs none",
                {"kind": "VGEM", "device_first": True, "sync_read": False},
                cells=_only_base()),
    ),
    unavailable=no_vgem,
)  # fmt: skip


PLATFORM: tuple[Scenario, ...] = (
    PLATFORM_TABLE, PLATFORM_CPU_ACCESS, PLATFORM_UDMABUF, PLATFORM_HEAP, PLATFORM_VGEM,
)  # fmt: skip
