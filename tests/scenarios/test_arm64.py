"""The seed suite on the arm64 topologies, and the two observers of IOMMU mappings.

On arm64-smmuv3 the devices count no MAP events (QEMU's SMMUv3 notifies UNMAP only), so the
guest kernel's iommu/map trace events carry the 003/004 verdicts; where both observers count
(intel-iommu, virtio-iommu on either architecture), they must agree at every step.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from dmalab.scenarios.results import Result
from dmalab.scenarios.runner import Machine, machine
from dmalab.scenarios.seeds import SEED_000, SEED_001, SEED_002, SEED_003, SEED_004

pytestmark = pytest.mark.asyncio(loop_scope="module")

SEEDS = (SEED_000, SEED_001, SEED_002, SEED_003, SEED_004)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def smmuv3() -> AsyncIterator[Machine]:
    async with machine("arm64-smmuv3", accel="tcg") as m:
        yield m


async def _suite(m: Machine) -> dict[tuple[str, str], Result]:
    results = {}
    for scenario in SEEDS:
        for r in await m.run(scenario):
            assert r.ok, (r.scenario, r.variant, r.outcome, r.evidence)
            if r.expectation == "pass":
                assert r.outcome == "pass" and r.evidence == [] and r.detected_steps == []
            results[r.scenario, r.variant] = r
    return results


async def test_seed_suite_on_smmuv3_counts_maps_from_the_guest(smmuv3: Machine) -> None:
    rs = await _suite(smmuv3)
    assert all(
        "iommu_map_events" not in counters
        for r in rs.values()
        for s in r.steps
        for counters in s.counters.values()
    ), "QEMU's SMMUv3 sends no MAP notifications: the devices cannot count any"
    cached = rs["003-sgt-cache", "cached"].note
    uncached = rs["003-sgt-cache", "uncached"].note
    assert cached.startswith("IOMMU MAP events per map step (guest): [")
    assert cached.endswith(", 0, 0, 0]") and "[0," not in cached
    assert "[0" not in uncached and ", 0" not in uncached
    shared = rs["004-domain-reuse", "shared-domain"].note
    assert shared == "dma0+dma1: MAP events at B's map 0 (guest), same IOVAs True"
    separate = rs["004-domain-reuse", "separate-domains"].note
    assert separate.startswith("dma0+dma2: MAP events at B's map ") and "map 0 " not in separate
    # the step detail says what the kernel did: the map step of 003 maps and syncs nothing else
    first_map = next(s for s in rs["003-sgt-cache", "uncached"].steps if s.kernel_events)
    assert first_map.kernel_events.get("dma_map_sg") == 1
    assert any(line.split()[1] == "map:" for line in first_map.kernel)


@pytest.mark.parametrize("topology", ["default", "virtio-iommu", "arm64-virtio-iommu"])
async def test_device_and_guest_observers_agree_at_every_step(topology: str) -> None:
    async with machine(topology, accel="tcg") as m:
        results = [r for sc in (SEED_000, SEED_003, SEED_004) for r in await m.run(sc)]
    mapped = 0
    for r in results:
        assert r.ok, (r.scenario, r.variant, r.outcome, r.evidence)
        for s in r.steps:
            # every device of the mapped domain hears each MAP: the step's count is the largest
            device = max((c.get("iommu_map_events", 0) for c in s.counters.values()), default=0)
            guest = s.kernel_events.get("map", 0)
            assert device == guest, (r.scenario, r.variant, s.step, device, guest)
            mapped += device > 0
    assert mapped >= 10, f"only {mapped} steps mapped anything: nothing was compared"
