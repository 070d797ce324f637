/*
 * A device-side IOTLB (address translation cache): a small, fully
 * associative, LRU table of IOVA -> physical translations with their
 * permissions.  Whoever fills it must invalidate it on IOMMU UNMAP.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef DEVTLB_H
#define DEVTLB_H

#define DEVTLB_READ  0x1
#define DEVTLB_WRITE 0x2

typedef struct DevTlbEntry {
    uint64_t iova;   /* aligned to mask + 1 */
    uint64_t mask;   /* page size - 1 */
    uint64_t pa;
    uint64_t lru;
    uint32_t perm;   /* DEVTLB_READ | DEVTLB_WRITE: accesses proven to translate */
    uint32_t valid;
} DevTlbEntry;

typedef struct DevTlb {
    uint32_t nentries;
    uint64_t clock;
    DevTlbEntry *e;
} DevTlb;

void devtlb_init(DevTlb *t, uint32_t nentries);
void devtlb_destroy(DevTlb *t);
void devtlb_flush(DevTlb *t);
/* On a hit, *pa is the translation of iova and *avail the bytes left in its page. */
bool devtlb_lookup(DevTlb *t, uint64_t iova, uint32_t perm, uint64_t *pa, uint64_t *avail);
void devtlb_insert(DevTlb *t, uint64_t iova, uint64_t mask, uint64_t pa, uint32_t perm);
/*
 * Drop every entry overlapping [first, last]. Inclusive bounds: a whole-space
 * invalidation (SMMUv3's TLBI by ASID or of everything) has no size that fits.
 */
void devtlb_invalidate(DevTlb *t, uint64_t first, uint64_t last);

#endif
