/*
 * Device IOTLB (see devtlb.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "devtlb.h"

void devtlb_init(DevTlb *t, uint32_t nentries)
{
    t->nentries = nentries;
    t->clock = 0;
    t->e = nentries ? g_new0(DevTlbEntry, nentries) : NULL;
}

void devtlb_destroy(DevTlb *t)
{
    g_free(t->e);
    t->e = NULL;
    t->nentries = 0;
}

void devtlb_flush(DevTlb *t)
{
    if (t->nentries) {
        memset(t->e, 0, sizeof(DevTlbEntry) * t->nentries);
    }
    t->clock = 0;
}

bool devtlb_lookup(DevTlb *t, uint64_t iova, uint32_t perm, uint64_t *pa, uint64_t *avail)
{
    uint32_t i;

    for (i = 0; i < t->nentries; i++) {
        DevTlbEntry *e = &t->e[i];
        if (e->valid && (iova & ~e->mask) == e->iova && (e->perm & perm) == perm) {
            e->lru = ++t->clock;
            *pa = e->pa | (iova & e->mask);
            *avail = e->mask - (iova & e->mask) + 1;
            return true;
        }
    }
    return false;
}

void devtlb_insert(DevTlb *t, uint64_t iova, uint64_t mask, uint64_t pa, uint32_t perm)
{
    DevTlbEntry *victim = NULL;
    uint32_t i;

    if (!t->nentries) {
        return;
    }
    iova &= ~mask;
    pa &= ~mask;
    for (i = 0; i < t->nentries; i++) {
        DevTlbEntry *e = &t->e[i];
        if (e->valid && e->iova == iova && e->mask == mask) {
            /* Same page: a new access type proven, or a changed translation. */
            e->perm = e->pa == pa ? e->perm | perm : perm;
            e->pa = pa;
            e->lru = ++t->clock;
            return;
        }
    }
    for (i = 0; i < t->nentries; i++) {
        DevTlbEntry *e = &t->e[i];
        if (!e->valid) {
            victim = e;
            break;
        }
        if (!victim || e->lru < victim->lru) {
            victim = e;
        }
    }
    *victim = (DevTlbEntry) {
        .iova = iova, .mask = mask, .pa = pa, .perm = perm,
        .lru = ++t->clock, .valid = 1,
    };
}

void devtlb_invalidate(DevTlb *t, uint64_t first, uint64_t last)
{
    uint32_t i;

    for (i = 0; i < t->nentries; i++) {
        DevTlbEntry *e = &t->e[i];
        if (e->valid && e->iova <= last && (e->iova | e->mask) >= first) {
            e->valid = 0;
        }
    }
}
