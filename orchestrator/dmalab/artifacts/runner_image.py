"""The runner image: a container image with dmalab, its QEMU and the guest images, for LAVA's
docker device type and any container CI."""

from __future__ import annotations

REPOSITORY = "localhost/dmalab-runner"


def image_tag() -> str:
    """The checkout's commit (12 hex digits, `-dirty` with uncommitted changes)."""
    from dmalab.provenance import dmalab_commit  # provenance builds on artifacts

    commit = dmalab_commit()
    head, dirty = commit.removesuffix("-dirty"), commit.endswith("-dirty")
    return head[:12] + ("-dirty" if dirty else "")


def image_name() -> str:
    return f"{REPOSITORY}:{image_tag()}"
