/*
 * Direct access to guest RAM by physical address for the duration of one
 * DMA operation: a few mapped windows, so a long transfer costs one
 * address_space_map() per window instead of one lookup per cache line.
 * Anything that is not plain RAM goes through address_space_read/write.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef PHYSWIN_H
#define PHYSWIN_H

#include "exec/memory.h"

#define PHYSWIN_SLOTS 8

typedef struct PhysWinSlot {
    uint64_t pa;
    uint64_t len;        /* 0: free */
    uint64_t dirty_end;  /* bytes from pa written through this slot */
    uint8_t *ptr;
    bool is_write;
} PhysWinSlot;

typedef struct PhysWin {
    AddressSpace *as;
    /* Told of every range before it is accessed (a CPU cache model's hook). */
    void (*observe)(void *opaque, uint64_t pa, uint64_t len, bool is_write);
    void *opaque;
    unsigned next;        /* slot to replace next */
    unsigned last;        /* slot that served the last access */
    PhysWinSlot slot[PHYSWIN_SLOTS];
} PhysWin;

void physwin_init(PhysWin *w, AddressSpace *as);
/*
 * Host pointer to [pa, pa + *len) when it is directly accessible RAM
 * (*len may be shortened), NULL otherwise.  Valid until physwin_release().
 */
uint8_t *physwin_get(PhysWin *w, uint64_t pa, uint64_t *len, bool is_write);
/* physwin_get() for a question, not an access: the observer is not told. */
uint8_t *physwin_peek(PhysWin *w, uint64_t pa, uint64_t *len, bool is_write);
bool physwin_read(PhysWin *w, uint64_t pa, void *buf, uint64_t len);
bool physwin_write(PhysWin *w, uint64_t pa, const void *buf, uint64_t len);
/* Unmap every window, marking what was written dirty. */
void physwin_release(PhysWin *w);

#endif
