"""Fixtures for the guest tests: the image, and one booted guest per vIOMMU per module
(guest_machine.py says what the guest looks like)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from guest_machine import TOPOLOGIES, Guest, boot

from dmalab.artifacts.image import ImageBuild
from dmalab.artifacts.qemu import QemuBuild


@pytest.fixture(scope="module", params=list(TOPOLOGIES))
def iommu(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def booted(
    qemu_build: QemuBuild,
    guest_image: ImageBuild,
    iommu: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Guest]:
    async with boot(qemu_build, guest_image, iommu, tmp_path_factory.mktemp(iommu)) as guest:
        yield guest


@pytest_asyncio.fixture(loop_scope="module")
async def guest(booted: Guest) -> AsyncIterator[Guest]:
    """The module's guest with nothing allocated and every counter at zero."""
    await booted.agent.close_all()
    await booted.reset_stats()
    yield booted
