"""The JSON Schema of topology files (docs/schemas/topology.schema.json, docs/schemas.md), made
from the field lists, ranges and choices `topology.parse_topology` checks with: a field the
parser reads and the schema lacks fails here (a KeyError), so the two cannot drift apart.
Rules across fields (per-architecture choices, multiples, slots, memory, files) are the
checker's alone."""

from __future__ import annotations

from typing import Any

from dmalab.machine import topology as t
from dmalab.spec import ncdma as ncdma_spec
from dmalab.spec.tables import (
    DRAFT,
    s_bool,
    s_choice,
    s_id,
    s_integer,
    s_list,
    s_string,
    s_table,
)


def _fields(keys: tuple[str, ...], known: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {key: known[key] for key in keys}


def _device() -> dict[str, Any]:
    known = {
        "id": s_id("its QOM id: /machine/peripheral/ID"),
        "kind": s_choice(("ncdma",), "the only kind today", "ncdma"),
        "bus": s_string(
            f'"{t.OWN_ROOT_PORT}" (a root port of its own), "{t.ROOT_COMPLEX}" (pcie.0) or '
            "a bridge id"
        ),
        "iommu": s_choice(("yes", t.BYPASS), "behind the vIOMMU, or bypassing it", "yes"),
    }
    for p in ncdma_spec.PROPERTIES:
        if p.boolean:
            known[p.name] = s_bool(p.doc, bool(p.default))
        else:
            known[p.name] = s_integer(p.lo, p.hi, p.doc, p.default)
    return s_table(_fields(t.DEVICE_KEYS, known), "one ncdma", ("id",))


def schema() -> dict[str, Any]:
    cpus = [c for arch in t.ARCHES for c in t.CPUS[arch] if c]
    machine = {
        "arch": s_choice(t.ARCHES, "the guest architecture", "x86_64"),
        "cpu": s_choice(cpus, "aarch64 only"),
        "memory": s_integer(*t.MEMORY_MIB, "guest RAM in MiB", 512),
        "smp": s_integer(*t.SMP, "CPUs", 1),
        "accel": s_choice(t.ACCELS, "auto: KVM only if a probe boot works", "auto"),
        "coherency": s_choice(
            t.COHERENCIES, "aarch64: noncoherent PCIe DMA below modelled CPU caches", "coherent"
        ),
    }
    iommu = {
        "kind": s_choice(t.IOMMU_KINDS, "the vIOMMU"),
        "caching-mode": s_bool("intel-iommu only", True),
        "intremap": s_bool("intel-iommu only", True),
        "aw-bits": s_choice(t.AW_BITS, "intel-iommu only", 48),
    }
    bridge = {
        "id": s_id("the bus name devices give as bus"),
        "kind": s_choice(t.BRIDGE_KINDS, "one IOMMU group: aliasing or functions", "pci-bridge"),
    }
    kernel = {
        "kernel": s_string("your own kernel file (relative to the topology file)"),
        "modules": s_string("its lib/modules/<release> tree (needs kernel)"),
        "args": s_list(
            {"type": "string", "pattern": "^[!#-~]+$"}, "extra kernel command-line words"
        ),
    }
    top = {
        "name": s_id("default: the file name without .toml"),
        "description": s_string("one line"),
        "machine": s_table(_fields(t.MACHINE_KEYS, machine), "memory, CPUs, accelerator"),
        "iommu": s_table(_fields(t.IOMMU_KEYS, iommu), "omit for no vIOMMU", ("kind",)),
        "bridge": s_list(s_table(_fields(t.BRIDGE_KEYS, bridge), required=("id",))),
        "device": s_list(_device()),
        "kernel": s_table(_fields(t.KERNEL_KEYS, kernel), "the guest kernel"),
    }
    return {
        "$schema": DRAFT,
        "title": "dmalab topology file (docs/topology.md)",
        **s_table(_fields(t.TOP_KEYS, top)),
    }
