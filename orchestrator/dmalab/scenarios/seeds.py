"""The seed scenarios (ARCHITECTURE.md §5): 000 Arnd's table, 003 sg_table caching, 004 mapping
reuse in one IOMMU domain, 001 pinning vs. move, 002 revoke. Each has a correct variant and
faulty ones; docs/scenarios.md describes what each step does and where each variant is caught.

Pattern constants are tags: `run.pattern_seed` and `run.fill_word` make them the run's bytes.
The `Cell`s say what a variant does in matrix cells beyond its own expectation (`dmalab run
--matrix`), each with the reason it follows from the device and driver semantics.
"""

from __future__ import annotations

from dmalab.machine.agent import Desc
from dmalab.scenarios.api import PAGE, Run
from dmalab.scenarios.declarations import (
    NONCOHERENT_PLATFORM,
    POLICIES,
    Cell,
    Scenario,
    Variant,
)

BUF = "buf"

#: On a noncoherent platform the dma-buf core's cached mapping (CACHE_SGT) maps once: the
#: exporter's map and unmap, and with them the DMA API's clean and invalidate, run once for all
#: cycles. The CPU's later writes never reach memory (DEVICE_READ_STALE) and the device's writes
#: never reach the CPU's view (the bytes check at the unmap step).
CACHED_MAPPING_SKIPS_SYNC = (
    "a finding about cached dma-buf mappings on a noncoherent platform: with the mapping kept, "
    "nobody cleans or invalidates the CPU caches between cycles, so the device reads stale "
    "memory and the CPU never sees the device's copy"
)
#: The same for a static importer that keeps its mapping while pinned.
KEPT_MAPPING_SKIPS_SYNC = (
    "a finding about kept dma-buf mappings on a noncoherent platform: the pinned importer's "
    "mapping is made once, so its unmap invalidates nothing and the CPU never sees the "
    "device's fill"
)


def _coherent(expect: str, why: str, steps: tuple[int, ...] = (),
              policies: tuple[str, ...] = tuple(POLICIES)) -> tuple[Cell, ...]:  # fmt: skip
    """The same declaration for `policies` on topologies whose devices are all coherent."""
    return tuple(Cell(p, expect, why, steps, on="coherent") for p in policies)


NO_CACHE = "coherent devices have no cache: the skipped maintenance loses nothing"
ONE_OWNER = "EXCLUSIVE changes nothing for one attachment that maps and unmaps in turn"


# ---------------------------------------------------------------------------------------------
# 000: Arnd's 12-step table (two drivers, one buffer, map/unmap as the only ownership API)


async def seed_000(run: Run) -> None:
    p = run.params
    literal = p.get("cpu_steps", True)  # steps 4 and 11
    writes = p.get("both_write", False)
    exclusive = p.get("exclusive", False)
    run.concurrent = exclusive
    flags = ["EXCLUSIVE"] if exclusive else []
    buf = await run.buffer(BUF, 4 * PAGE, exporter="dma0", flags=flags)
    a = await run.attach(buf, "dma0", "device A")
    b = await run.attach(buf, "dma1", "device B")
    model = run.ledger.model

    def copy_effect(dst: int):  # what a coherent machine would hold after COPY page 0 -> dst
        return lambda: {BUF: {dst: model(BUF)[0:PAGE]}}

    await run.cpu(1, "driver A", buf, read=(0, PAGE), write=(0, PAGE, run.pattern_seed(1)))
    await run.cpu(2, "driver B", buf, read=(0, PAGE), write=(3 * PAGE, PAGE, run.pattern_seed(2)))
    await run.map(3, "driver A", a)
    if literal:
        await run.cpu(4, "driver B", buf, read=(0, PAGE), write=(0, PAGE, run.pattern_seed(4)))
    await run.dma(5, "device A", "dma0", [Desc.copy(a.id, a.id, PAGE, dst_off=PAGE)],
                  action="dma (copy page 0 to page 1)", writes=copy_effect(PAGE))  # fmt: skip
    await run.map(6, "driver B", b)
    if writes:
        await run.dma(
            7,
            "device A",
            "dma0",
            [Desc.fill(a.id, PAGE, run.fill_word(0xA7A7), dst_off=3 * PAGE)],
            action="dma (write page 3)",
            writes={BUF: {3 * PAGE: run.fill(0xA7A7, PAGE)}},
        )
        await run.dma(
            8,
            "device B",
            "dma1",
            [Desc.fill(b.id, PAGE, run.fill_word(0xB8B8), dst_off=3 * PAGE)],
            action="dma (write page 3)",
            writes={BUF: {3 * PAGE: run.fill(0xB8B8, PAGE)}},
        )
    else:
        await run.dma(
            7,
            "device A",
            "dma0",
            [Desc.copy(a.id, a.id, PAGE, dst_off=PAGE)],
            action="dma (read page 0)",
            writes=copy_effect(PAGE),
        )
        await run.dma(8, "device B", "dma1", [Desc.copy(b.id, b.id, PAGE, dst_off=2 * PAGE)],
                      action="dma (read page 0)", writes=copy_effect(2 * PAGE))  # fmt: skip
    await run.unmap(9, "driver A", a)
    await run.dma(10, "device B", "dma1", [Desc.copy(b.id, b.id, PAGE, dst_off=2 * PAGE)],
                  action="dma (copy page 0 to page 2)", writes=copy_effect(2 * PAGE))  # fmt: skip
    if literal:
        await run.cpu(11, "driver A", buf, read=(2 * PAGE, PAGE),
                      write=(2 * PAGE, PAGE, run.pattern_seed(11)))  # fmt: skip
    await run.unmap(12, "driver B", b)
    await run.finish()
    last = max(r.step for r in run.records)
    await run.check_bytes(
        last, buf, 0, model(BUF), "the buffer after the table vs. a coherent machine"
    )


SEED_000 = Scenario(
    "000-arnd-table", "000", "Arnd's 12-step two-driver ownership table", seed_000,
    (
        Variant("table", "detected", (4, 11),
                "the table literally: B's CPU access at step 4 (A owns), A's at step 11 (B owns)",
                cells=(
                    Cell("exclusive", "pass", "EXCLUSIVE is the fix: B's access at 4 waits for "
                         "A's unmap, A's at 11 for B's (the `exclusive` variant)"),
                    Cell("cache-sgt", "detected", "CACHE_SGT changes when the IOMMU mapping is "
                         "built, not who owns the buffer at 4 and 11", (4, 11)),
                    Cell("base", "detected", "the ledger flags CPU access while a device owns "
                         "the buffer whatever the device's cache", (4, 11), on="coherent"),
                )),
        Variant("shared-read", "pass", (),
                "steps 4 and 11 left out; both devices only read page 0 at steps 7-8",
                {"cpu_steps": False}),
        Variant("both-write", "detected", (8,),
                "steps 4 and 11 left out; both devices write page 3 at steps 7-8",
                {"cpu_steps": False, "both_write": True},
                cells=(
                    Cell("exclusive", "pass", "EXCLUSIVE serialises the writers: B maps (and "
                         "writes page 3) only after A's unmap"),
                    Cell("cache-sgt", "detected", "CACHE_SGT changes when the IOMMU mapping is "
                         "built, not that both devices own the buffer at 7-8", (8,)),
                    Cell("base", "detected", "the ledger flags two owners writing the same "
                         "bytes whatever the devices' cache", (8,), on="coherent"),
                )),
        Variant("exclusive", "pass", (),
                "the literal table on an EXCLUSIVE buffer: maps and CPU access wait for the owner",
                {"exclusive": True},
                cells=(Cell("exclusive", "n/a", "its buffer is EXCLUSIVE already: the base "
                            "cell"),)),
    ),
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 003: N map/unmap cycles on one attachment, with and without sg_table caching

CYCLES = 4


async def seed_003(run: Run) -> None:
    p = run.params
    flags = p.get("flags", [])
    # What is checked follows the buffer's flags, also when a matrix policy adds CACHE_SGT.
    cached = "CACHE_SGT" in run.buffer_flags(flags)
    buf = await run.buffer(BUF, 2 * PAGE, exporter="dma2", flags=flags)
    a = await run.attach(buf, "dma2", "device A", faults=p.get("faults", []))
    map_steps = []
    for c in range(CYCLES):
        s = 1 + 4 * c
        await run.cpu(s, "driver A", buf, write=(0, PAGE, run.pattern_seed(100 + c)))
        await run.map(s + 1, "driver A", a)
        map_steps.append(s + 1)
        await run.dma(s + 2, "device A", "dma2", [Desc.copy(a.id, a.id, PAGE, dst_off=PAGE)],
                      action="dma (copy page 0 to page 1)",
                      writes={BUF: {PAGE: run.pattern(100 + c, PAGE)}})  # fmt: skip
        await run.unmap(s + 3, "driver A", a)
        await run.check_bytes(s + 3, buf, PAGE, run.pattern(100 + c, PAGE), f"cycle {c + 1} copy")
    events = [run.map_events(s, "dma2") for s in map_steps]
    run.note = f"IOMMU MAP events per map step ({run.map_observer['dma2']}): {events}"
    last = 4 * CYCLES
    if cached:
        run.check(last, events[0] > 0 and events[1:] == [0] * (CYCLES - 1),
                  f"CACHE_SGT: expected MAP events only at the first map, "
                  f"got {events}")  # fmt: skip
    else:
        run.check(last, events[0] > 0 and events == [events[0]] * CYCLES,
                  f"no caching: expected the same MAP events at every map, "
                  f"got {events}")  # fmt: skip


SEED_003 = Scenario(
    "003-sgt-cache", "003", "N map/unmap cycles on one attachment", seed_003,
    (
        Variant("cached", "pass", (), "exporter CACHE_SGT: one IOMMU mapping for all cycles",
                {"flags": ["CACHE_SGT"]},
                cells=(Cell("cache-sgt", "n/a", "its buffer is CACHE_SGT already: the base "
                            "cell"),
                       Cell("base", "detected", CACHED_MAPPING_SKIPS_SYNC, (4,),
                            NONCOHERENT_PLATFORM))),
        Variant("uncached", "pass", (), "no caching: a new IOMMU mapping at every map", {},
                cells=(Cell("cache-sgt", "n/a", "it checks a new IOMMU mapping at every map, "
                            "which CACHE_SGT is there to prevent"),)),
        Variant("skip-invalidate-at-map", "detected", (7,),
                "SKIP_MAP_INVALIDATE (+ SKIP_UNMAP_MAINT keeps the old lines): the second cycle "
                "reads the first cycle's bytes",
                {"faults": ["SKIP_MAP_INVALIDATE", "SKIP_UNMAP_MAINT"]},
                cells=(
                    Cell("cache-sgt", "detected", "with CACHE_SGT the driver still invalidates "
                         "at every map, so skipping it reads stale lines as before", (7,),
                         on="noncoherent"),
                    Cell("exclusive", "detected", ONE_OWNER, (7,), on="noncoherent"),
                    *_coherent("pass", NO_CACHE),
                )),
        Variant("skip-clean-at-unmap", "detected", (4,),
                "SKIP_UNMAP_CLEAN: the unmap drops the device's writes",
                {"faults": ["SKIP_UNMAP_CLEAN"]},
                cells=(
                    Cell("cache-sgt", "detected", "with CACHE_SGT the driver still cleans at "
                         "every unmap, so skipping it loses the copy as before", (4,),
                         on="noncoherent"),
                    Cell("exclusive", "detected", ONE_OWNER, (4,), on="noncoherent"),
                    *_coherent("pass", NO_CACHE),
                )),
    ),
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 004: two devices in one IOMMU domain vs. separate domains


def _pair(run: Run) -> tuple[str, str] | None:
    if run.params.get("shared"):
        return run.shared
    return ("dma0", "dma2")


NOT_EXCLUSIVE_004 = Cell(
    "exclusive", "n/a", "it maps the buffer for two devices at once (steps 2-5), which "
    "EXCLUSIVE forbids: B's map waits for A's unmap",
)  # fmt: skip


def unavailable_004(run: Run) -> str | None:
    if run.params.get("shared") and run.shared is None:
        return f"{run.topology} has no two devices in one IOMMU domain (nothing to reuse)"
    return None


async def seed_004(run: Run) -> None:
    p = run.params
    pair = _pair(run)
    assert pair is not None
    qa, qb = pair
    buf = await run.buffer(BUF, 4 * PAGE, exporter=qa, flags=["SHARE_DOMAIN"])
    a = await run.attach(buf, qa, "device A")
    b = await run.attach(buf, qb, "device B", faults=p.get("faults", []))
    await run.cpu(1, "driver A", buf, write=(0, PAGE, run.pattern_seed(4)))
    await run.map(2, "driver A", a)
    await run.map(3, "driver B", b)
    events = run.map_events(3, qb)
    same = (await run.agent.att_info(a.id)).segs == (await run.agent.att_info(b.id)).segs
    run.note = f"{qa}+{qb}: MAP events at B's map {events} ({run.map_observer[qb]})" + (
        f", same IOVAs {same}" if p.get("shared") else ""
    )
    if p.get("shared"):
        run.check(
            3,
            events == 0 and same,
            f"shared domain: expected the mapping reused "
            f"(0 MAP events, same IOVAs), got {events} events, same IOVAs {same}",
        )
    else:
        run.check(
            3, events > 0, f"separate domains: expected a new mapping, got {events} MAP events"
        )
    await run.dma(
        4,
        "device A",
        qa,
        [Desc.copy(a.id, a.id, PAGE, dst_off=PAGE)],
        action="dma (copy page 0 to page 1)",
        writes={BUF: {PAGE: run.pattern(4, PAGE)}},
    )
    await run.unmap(5, "driver A", a)
    await run.dma(
        6,
        "device B",
        qb,
        [Desc.copy(b.id, b.id, PAGE, src_off=PAGE, dst_off=2 * PAGE)],
        action="dma (copy page 1 to page 2)",
        writes={BUF: {2 * PAGE: run.pattern(4, PAGE)}},
    )
    await run.unmap(7, "driver B", b)
    await run.check_bytes(7, buf, 0, run.ledger.model(BUF), "the buffer vs. a coherent machine")


SEED_004 = Scenario(
    "004-domain-reuse", "004", "two devices behind one IOMMU domain vs. separate ones", seed_004,
    (
        Variant("shared-domain", "pass", (), "SHARE_DOMAIN, the two devices of one domain",
                {"shared": True}, cells=(NOT_EXCLUSIVE_004,)),
        Variant("separate-domains", "pass", (), "SHARE_DOMAIN, devices in two domains", {},
                cells=(NOT_EXCLUSIVE_004,)),
        Variant("skip-clean-at-unmap", "detected", (7,),
                "device B's unmap skips the clean: its copy is lost",
                {"faults": ["SKIP_UNMAP_CLEAN"]},
                cells=(
                    NOT_EXCLUSIVE_004,
                    Cell("cache-sgt", "detected", "with CACHE_SGT the driver still cleans at "
                         "every unmap, so skipping it loses B's copy as before", (7,),
                         on="noncoherent"),
                    *_coherent("pass", NO_CACHE, policies=("base", "cache-sgt")),
                )),
    ),
    unavailable=unavailable_004,
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 001: pinned vs. dynamic importer while the exporter moves the buffer


NOT_CACHED_001 = Cell(
    "cache-sgt", "n/a", "its export is DYNAMIC, and CACHE_SGT excludes DYNAMIC (dma-buf core "
    "rule: the buffer cannot be created)",
)  # fmt: skip


async def seed_001(run: Run) -> None:
    p = run.params
    buf = await run.buffer(BUF, 2 * PAGE, exporter="dma0", flags=["DYNAMIC"])
    if p.get("pinned"):
        b = await run.attach(buf, "dma1", "device B")  # static: mapped and pinned at attach
        old = list(buf.pages)
        await run.action(
            1,
            "exporter",
            "move the buffer",
            lambda: run.agent.buf_move(buf.id),
            expect_error="EBUSY",
        )
        run.check(1, await run.refresh_pages(buf) == old, "a refused move changed the pages")
        await run.map(2, "driver B", b)
        await run.dma(
            3,
            "device B",
            "dma1",
            [Desc.fill(b.id, 2 * PAGE, run.fill_word(0x1111111111111111))],
            action="dma (fill)",
            writes={BUF: {0: run.fill(0x1111111111111111, 2 * PAGE)}},
        )
        await run.unmap(4, "driver B", b)
        await run.check_bytes(4, buf, 0, run.ledger.model(BUF), "the fill")
        return
    b = await run.attach(buf, "dma1", "device B", flags=["DYNAMIC"], faults=p.get("faults", []))
    await run.map(1, "driver B", b)
    await run.dma(
        2,
        "device B",
        "dma1",
        [Desc.fill(b.id, PAGE, run.fill_word(0x2222222222222222))],
        action="dma (fill page 0)",
        writes={BUF: {0: run.fill(0x2222222222222222, PAGE)}},
    )
    old = list(buf.pages)
    await run.action(3, "exporter", "move the buffer", lambda: run.agent.buf_move(buf.id))
    new = await run.refresh_pages(buf)
    run.check(3, not set(old) & set(new), f"the pages did not move: {old} -> {new}")
    late = run.fill(0x3333333333333333, PAGE)
    await run.dma(4, "device B", "dma1",
                  [Desc.fill(b.id, PAGE, run.fill_word(0x3333333333333333), dst_off=PAGE)],
                  action="dma (fill page 1, after move_notify)",
                  writes={BUF: {PAGE: late}})  # fmt: skip
    txs = await run.transactions("dma1", 4)
    pas = {s.pa & ~(PAGE - 1) for t in txs for s in t.segments if s.write}
    run.check(4, pas <= set(new) and bool(pas),
              f"device B's writes went to {len(pas - set(new))} page(s) outside the buffer's "
              f"new pages ({len(pas & set(new))} inside)")  # fmt: skip
    run.note = (
        f"the move changed {len(set(old) - set(new))} of {len(old)} pages; device B's DMA after it "
        f"wrote {len(pas & set(new))} new page(s), {len(pas - set(new))} other(s)"
    )
    run.machine.update(old_pages=[hex(x) for x in old], new_pages=[hex(x) for x in new],
                       written_after_move=sorted(map(hex, pas)))  # fmt: skip
    await run.unmap(5, "driver B", b)
    await run.check_bytes(5, buf, 0, run.ledger.model(BUF), "the new pages")
    run.check(5, all(bytes(run.vm.ram.view(pa, PAGE)) != late for pa in old),
              "bytes of the DMA after the move landed in the old pages")  # fmt: skip


SEED_001 = Scenario(
    "001-move", "001", "pinned vs. dynamic importer while the exporter moves the buffer", seed_001,
    (
        Variant("dynamic", "pass", (), "a dynamic importer re-maps after move_notify", {},
                cells=(NOT_CACHED_001,)),
        Variant("pinned", "pass", (), "a static importer pins the buffer: the move is refused",
                {"pinned": True},
                cells=(NOT_CACHED_001,
                       Cell("base", "detected", KEPT_MAPPING_SKIPS_SYNC, (4,),
                            NONCOHERENT_PLATFORM))),
        Variant("stale-addresses", "detected", (4,),
                "USE_STALE: the importer keeps its pre-move addresses", {"faults": ["USE_STALE"]},
                cells=(
                    NOT_CACHED_001,
                    Cell("exclusive", "detected", "the DMA through the pre-move addresses "
                         "faults in the IOMMU whoever owns the buffer", (4,)),
                    Cell("base", "detected", "the DMA through the pre-move addresses faults in "
                         "the IOMMU whatever the device's cache", (4,), on="coherent"),
                )),
    ),
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 002: revoke


async def seed_002(run: Run) -> None:
    p = run.params
    buf = await run.buffer(BUF, 2 * PAGE, exporter="dma0", faults=p.get("buf_faults", []))
    b = await run.attach(buf, "dma1", "device B", faults=["USE_STALE", *p.get("faults", [])])
    await run.cpu(1, "driver A", buf, write=(0, PAGE, run.pattern_seed(2)))
    await run.map(2, "driver B", b)
    await run.dma(
        3,
        "device B",
        "dma1",
        [Desc.copy(b.id, b.id, PAGE, dst_off=PAGE)],
        action="dma (copy page 0 to page 1)",
        writes={BUF: {PAGE: run.pattern(2, PAGE)}},
    )
    await run.action(4, "exporter", "revoke", lambda: run.agent.buf_revoke(buf.id))
    await run.check_bytes(
        4, buf, 0, run.ledger.model(BUF), "the buffer at revoke (device B's copy cleaned)"
    )
    before = run.host_bytes(buf)
    await run.dma(
        5,
        "device B",
        "dma1",
        [Desc.fill(b.id, 2 * PAGE, run.fill_word(0xDEADDEADDEADDEAD))],
        action="dma after revoke (stale addresses)",
        expect_status="IOMMU_FAULT",
    )
    faults = (
        next(r for r in run.records if r.step == 5)
        .counters.get("dma1", {})
        .get("translation_faults", 0)
    )
    run.check(5, faults > 0, "the DMA after revoke did not fault in the IOMMU")
    run.check(5, run.host_bytes(buf) == before, "bytes landed in the buffer after revoke")
    await run.action(
        6,
        "device B",
        "clean the whole cache",
        lambda: run.agent.cache_op(run.devices["dma1"], "CLEAN", whole=True),
    )
    await run.check_bytes(6, buf, 0, before, "the buffer after device B's cache is cleaned")
    fresh = await run.attach(buf, "dma1", "device B")
    await run.action(
        7,
        "driver B",
        "map after revoke (new attachment)",
        lambda: run.agent.map(fresh.id),
        expect_error="ENODEV",
    )


SEED_002 = Scenario(
    "002-revoke", "002", "revoke: DMA after revoke faults, no byte lands", seed_002,
    (
        Variant("revoke", "pass", (), "revoke cleans and unmaps; stale DMA faults", {}),
        Variant("revoke-without-clean", "detected", (4, 6),
                "SKIP_TEARDOWN_CLEAN: device B's dirty lines outlive the mapping",
                {"buf_faults": ["SKIP_TEARDOWN_CLEAN"], "faults": ["SKIP_UNMAP_MAINT"]},
                cells=(
                    Cell("cache-sgt", "detected", "revoke tears a cached mapping down the same "
                         "way: the skipped clean loses B's copy as before", (4, 6),
                         on="noncoherent"),
                    Cell("exclusive", "detected", "revoke also ends B's ownership; the skipped "
                         "clean loses B's copy as before", (4, 6), on="noncoherent"),
                    *_coherent("pass", NO_CACHE),
                )),
    ),
)  # fmt: skip


SEEDS: tuple[Scenario, ...] = (SEED_000, SEED_003, SEED_004, SEED_001, SEED_002)
