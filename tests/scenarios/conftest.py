"""One booted default topology per module, restored from its snapshot before every variant."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from dmalab.scenarios.runner import Machine, machine


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def default_machine() -> AsyncIterator[Machine]:
    async with machine("default", accel="tcg") as m:
        yield m
