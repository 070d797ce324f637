"""A seeded, reproducible random-operation engine that plays a hostile driver against ncdma.

The engine boots an `ncdma_rig` per configuration and draws *steps* from a weighted mix:

- random register writes (every BAR0 offset, 32- and 64-bit, random or edge values, CTRL,
  RING_*, IRQ_STATUS included),
- descriptor batches (every opcode including invalid ones, flags including reserved bits,
  addresses inside buffers, elsewhere in RAM, beyond RAM, near 2^64, in the device's own BAR,
  in the MSI window, lengths biased small but sometimes huge), on the healthy ring or, now and
  then, on whatever ring the register writes left behind,
- host writes into the buffers,
- with an IOMMU, random map / unmap / remap (with random permissions) of buffer pages,
- rarely, `reset-stats` over QMP.

One operation is one descriptor, one register write, one memory write, one map or unmap, or one
reset-stats. The operation stream depends only on the seed and the configuration name (never on
what the device answers), so `--seed S` with at least the failing operation index replays a
failure exactly.

After every step the device must be quiescent (not BUSY) within `QUIESCE_TIMEOUT` and these
invariants hold, or `CheckFailed` names the seed, configuration, operation index and last ops:

- QEMU answers QMP, and the QMP counters equal the BAR0 counters;
- the read-write registers read back what was written, CTRL and ERROR match a model of the
  documented register semantics (FETCH_FAULT / STATUS_FAULT may appear on their own);
- RING_HEAD and RING_TAIL are below the latched ring size; ERROR is a known RingError, and is
  NONE exactly when STATUS.RING_ERROR is clear;
- every descriptor the device passed has a known, non-PENDING status, `done` <= `len`, the status
  the documented checks predict (BAD_OPCODE/FLAGS/LENGTH/ADDRESS) and `done == len` when OK;
  where the model's address map tells what lies at its addresses, exactly the status and `done`
  that gives (OK, or BUS_ERROR where nothing answers or the target refuses);
- on a cached device, a batch that can reach no memory allocates no cache line;
- counters never decrease (except across reset-stats); on the healthy ring, desc_completed and
  desc_errors grow by exactly the number of OK and failed descriptors.

The package, in the order a step flows through it: `operations` (what a step may do),
`generator` (the seeded operation stream), `model` (the documented register semantics,
descriptor checks and what DMA to each kind of target gives), `engine` (runs steps on a rig),
`checks` (the invariants above).
"""

from dmalab.fuzz.engine import (
    CONFIGS,
    FuzzConfig,
    FuzzItem,
    FuzzResult,
    fuzz,
    fuzz_config,
    fuzz_items,
    plan,
    resolve_configs,
)

__all__ = [
    "CONFIGS",
    "FuzzConfig",
    "FuzzItem",
    "FuzzResult",
    "fuzz",
    "fuzz_config",
    "fuzz_items",
    "plan",
    "resolve_configs",
]
