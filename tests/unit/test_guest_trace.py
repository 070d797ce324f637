"""The guest kernel's trace, parsed and taken step by step (no guest needed)."""

from __future__ import annotations

import asyncio

from dmalab.machine.agent import AgentError
from dmalab.machine.guest_trace import GuestTrace, parse

HEADER = """\
# tracer: nop
#
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
"""
MAP = (
    "    dmalab-agent-107     [000] .....     1.389002: map: IOMMU: iova=0x00000000fffcc000 - "
    "0x00000000fffcd000 paddr=0x0000000044c79000 size=4096"
)
SG = (
    "    dmalab-agent-107     [000] .....     1.390021: dma_map_sg: 0000:01:00.0 "
    "dir=BIDIRECTIONAL nents=4/4 ents=1/1 dma_addrs={0xfffcc000} sizes={0x4000}"
)
UNMAP = (
    "    dmalab-agent-107     [000] .N...     1.394079: unmap: IOMMU: iova=0x00000000fffcc000 "
    "- 0x00000000fffd0000 size=16384 unmapped_size=16384"
)


def test_trace_lines_are_parsed_with_their_device() -> None:
    events = parse(HEADER + "\n".join([MAP, SG, UNMAP]) + "\n")
    assert [e.name for e in events] == ["map", "dma_map_sg", "unmap"]
    assert [e.device for e in events] == [None, "0000:01:00.0", None]
    assert events[0].time == 1.389002 and events[0].text.startswith("IOMMU: iova=")
    assert events[2].line.startswith("1.394079 unmap: IOMMU:")


class FakeAgent:
    """The files GuestTrace touches: events/*/enable (dma missing), buffer_size_kb, trace."""

    def __init__(self) -> None:
        self.trace = HEADER
        self.written: dict[str, str] = {}

    async def write_file(self, path: str, data: str) -> None:
        if "/events/dma/" in path:
            raise AgentError("WRITE_FILE", 2, f"open {path}")
        self.written[path] = data

    async def read_file(self, path: str, max_len: int = 0) -> bytes:
        if "/events/dma/" in path:
            raise AgentError("READ_FILE", 2, f"open {path}")
        if path.endswith("/trace"):
            return self.trace.encode()
        # The kernel rounds the buffer size up to whole pages.
        value = {"4096": "4099"}.get(self.written.get(path, "0"), self.written.get(path, "0"))
        return f"{value}\n".encode()


def test_take_returns_each_event_once_even_at_equal_timestamps() -> None:
    async def scenario() -> None:
        agent = FakeAgent()
        agent.trace += MAP + "\n"  # before start: not any step's
        trace = GuestTrace(agent)
        assert await trace.start() == ["iommu/map", "iommu/unmap"]
        assert agent.written[next(p for p in agent.written if p.endswith("map/enable"))] == "1"
        assert await trace.take() == []
        twin = MAP.replace("1.389002", "1.400000")
        agent.trace += f"{twin}\n{SG.replace('1.390021', '1.400000')}\n"
        assert [e.name for e in await trace.take()] == ["map", "dma_map_sg"]
        later = UNMAP.replace("1.394079", "2.000000")
        agent.trace += f"{twin}\n{later}\n"  # a third event at 1.400000, then a later one
        assert [(e.time, e.name) for e in await trace.take()] == [(1.4, "map"), (2.0, "unmap")]
        assert await trace.take() == []

    asyncio.run(scenario())


def test_a_second_start_finds_everything_on_and_writes_nothing() -> None:
    async def scenario() -> None:
        agent = FakeAgent()
        assert await GuestTrace(agent).start() == ["iommu/map", "iommu/unmap"]
        first = dict(agent.written)
        agent.written = dict(first)
        writes: list[str] = []
        write = agent.write_file

        async def counted(path: str, data: str) -> None:
            writes.append(path)
            await write(path, data)

        agent.write_file = counted  # type: ignore[method-assign]
        assert await GuestTrace(agent).start() == ["iommu/map", "iommu/unmap"]
        assert writes == [] and agent.written == first

    asyncio.run(scenario())
