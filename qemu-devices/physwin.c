/*
 * Direct guest RAM windows (see physwin.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qemu/units.h"
#include "exec/memory.h"
#include "physwin.h"

/* Large enough that a physically contiguous buffer needs few maps. */
#define PHYSWIN_MAP_LEN (2 * MiB)

void physwin_init(PhysWin *w, AddressSpace *as)
{
    memset(w, 0, sizeof(*w));
    w->as = as;
}

static void slot_release(PhysWin *w, PhysWinSlot *s)
{
    if (s->len) {
        address_space_unmap(w->as, s->ptr, s->len, s->is_write,
                            s->is_write ? s->dirty_end : 0);
        s->len = 0;
    }
}

static bool is_direct_ram(PhysWin *w, uint64_t pa, bool is_write)
{
    MemoryRegion *mr;
    hwaddr xlat, l = 1;

    RCU_READ_LOCK_GUARD();
    mr = address_space_translate(w->as, pa, &xlat, &l, is_write, MEMTXATTRS_UNSPECIFIED);
    return memory_access_is_direct(mr, is_write, MEMTXATTRS_UNSPECIFIED);
}

uint8_t *physwin_peek(PhysWin *w, uint64_t pa, uint64_t *len, bool is_write)
{
    PhysWinSlot *s;
    hwaddr maplen;
    uint8_t *ptr;
    unsigned i;

    /* Cache lines stream through one window: try the last one used first. */
    s = &w->slot[w->last];
    if (s->len && pa - s->pa < s->len && pa >= s->pa && (s->is_write || !is_write)) {
        goto found;
    }
    for (i = 0; i < PHYSWIN_SLOTS; i++) {
        s = &w->slot[i];
        if (s->len && pa >= s->pa && pa - s->pa < s->len &&
            (s->is_write || !is_write)) {
            w->last = i;
            goto found;
        }
    }
    /* Bounce buffers are not windows: only plain RAM is mapped. */
    if (!is_direct_ram(w, pa, is_write)) {
        return NULL;
    }
    maplen = MAX(*len, PHYSWIN_MAP_LEN);
    ptr = address_space_map(w->as, pa, &maplen, is_write, MEMTXATTRS_UNSPECIFIED);
    if (!ptr || !maplen) {
        return NULL;
    }
    w->last = w->next;
    s = &w->slot[w->next];
    w->next = (w->next + 1) % PHYSWIN_SLOTS;
    slot_release(w, s);
    *s = (PhysWinSlot) { .pa = pa, .len = maplen, .ptr = ptr, .is_write = is_write };
found:
    *len = MIN(*len, s->len - (pa - s->pa));
    if (is_write) {
        s->dirty_end = MAX(s->dirty_end, pa - s->pa + *len);
    }
    return s->ptr + (pa - s->pa);
}

uint8_t *physwin_get(PhysWin *w, uint64_t pa, uint64_t *len, bool is_write)
{
    uint8_t *p = physwin_peek(w, pa, len, is_write);

    if (p && w->observe) {
        w->observe(w->opaque, pa, *len, is_write);
    }
    return p;
}

bool physwin_read(PhysWin *w, uint64_t pa, void *buf, uint64_t len)
{
    uint8_t *out = buf;

    while (len) {
        uint64_t n = len;
        uint8_t *p = physwin_get(w, pa, &n, false);
        if (p) {
            memcpy(out, p, n);
        } else {
            n = MIN(len, 4096 - (pa & 4095));
            if (w->observe) {
                w->observe(w->opaque, pa, n, false);
            }
            if (address_space_read(w->as, pa, MEMTXATTRS_UNSPECIFIED, out, n) != MEMTX_OK) {
                return false;
            }
        }
        pa += n;
        out += n;
        len -= n;
    }
    return true;
}

bool physwin_write(PhysWin *w, uint64_t pa, const void *buf, uint64_t len)
{
    const uint8_t *in = buf;

    while (len) {
        uint64_t n = len;
        uint8_t *p = physwin_get(w, pa, &n, true);
        if (p) {
            memcpy(p, in, n);
        } else {
            n = MIN(len, 4096 - (pa & 4095));
            if (w->observe) {
                w->observe(w->opaque, pa, n, true);
            }
            if (address_space_write(w->as, pa, MEMTXATTRS_UNSPECIFIED, in, n) != MEMTX_OK) {
                return false;
            }
        }
        pa += n;
        in += n;
        len -= n;
    }
    return true;
}

void physwin_release(PhysWin *w)
{
    unsigned i;

    for (i = 0; i < PHYSWIN_SLOTS; i++) {
        slot_release(w, &w->slot[i]);
    }
    w->next = 0;
    w->last = 0;
}
