/*
 * A descriptor ring in guest memory: geometry checks and index arithmetic.
 * Entries are fetched and completed uncached through the device's DMA
 * address space, as ring accesses are coherent on real engines.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef DRING_H
#define DRING_H

#include "hw/pci/pci_device.h"

typedef struct DescRing {
    uint64_t base;
    uint32_t size;      /* entries; 0: not configured */
    uint32_t head;      /* next entry the device executes */
    uint32_t tail;      /* first entry the driver has not published */
    uint32_t entry_size;
} DescRing;

typedef enum DescRingCheck {
    DRING_OK = 0,
    DRING_BAD_BASE,
    DRING_BAD_SIZE,
} DescRingCheck;

DescRingCheck dring_check(uint64_t base, uint32_t size, uint32_t entry_size,
                          uint32_t min_entries, uint32_t max_entries);
static inline bool dring_pending(const DescRing *r)
{
    return r->size && r->head != r->tail;
}
static inline uint64_t dring_entry_addr(const DescRing *r, uint32_t idx)
{
    return r->base + (uint64_t)idx * r->entry_size;
}
MemTxResult dring_fetch(const DescRing *r, PCIDevice *dev, void *entry);
/* Write len bytes at offset within the head entry. */
MemTxResult dring_writeback(const DescRing *r, PCIDevice *dev, uint32_t offset,
                            const void *buf, uint32_t len);
static inline void dring_advance(DescRing *r)
{
    r->head = (r->head + 1) & (r->size - 1);
}

#endif
