/*
 * Device write-back cache model with violation detectors (see devcache.h).
 *
 * Every line keeps a snapshot of memory as it was when the line was filled
 * or last written back.  Comparing memory with that snapshot is what tells
 * a CPU write that happened behind the device's back, exactly and
 * independently of the accelerator.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qemu/host-utils.h"
#include "devcache.h"

#define PAGE_SIZE_4K 4096

static inline DevCacheLine *line_at(DevCache *c, uint32_t idx)
{
    return &c->lines[idx];
}

static inline bool line_valid(DevCache *c, uint32_t idx)
{
    return c->tags[idx] != DEVCACHE_NO_TAG;
}

static inline uint32_t set_base(DevCache *c, uint64_t tag)
{
    uint64_t n = tag >> c->line_shift;

    return (c->set_mask ? n & c->set_mask : n % c->nsets) * c->ways;
}

static inline uint8_t *line_data(DevCache *c, uint32_t idx)
{
    return c->data + (size_t)idx * c->line_size;
}

static inline uint8_t *line_snap(DevCache *c, uint32_t idx)
{
    return c->snap + (size_t)idx * c->line_size;
}

bool devcache_init(DevCache *c, uint32_t line_size, uint32_t size, uint32_t ways,
                   const DevCacheOps *ops, void *opaque, DevCacheStats *stats,
                   const char **errmsg)
{
    uint32_t nlines;

    memset(c, 0, sizeof(*c));
    if (line_size < 16 || line_size > PAGE_SIZE_4K || !is_power_of_2(line_size)) {
        *errmsg = "line size must be a power of two in [16, 4096]";
        return false;
    }
    if (ways == 0 || ways > 64) {
        *errmsg = "ways must be in [1, 64]";
        return false;
    }
    if (size == 0 || size % ((uint64_t)line_size * ways)) {
        *errmsg = "size must be a non-zero multiple of line size * ways";
        return false;
    }
    nlines = size / line_size;
    c->line_size = line_size;
    c->line_shift = ctz32(line_size);
    c->ways = ways;
    c->nsets = nlines / ways;
    c->set_mask = is_power_of_2(c->nsets) ? c->nsets - 1 : 0;
    c->tags = g_new(uint64_t, nlines);
    c->lru = g_new0(uint64_t, nlines);
    c->lines = g_new0(DevCacheLine, nlines);
    c->data = g_malloc0((size_t)nlines * line_size);
    c->snap = g_malloc0((size_t)nlines * line_size);
    c->scratch = g_malloc0(line_size);
    c->ops = ops;
    c->opaque = opaque;
    c->stats = stats;
    devcache_reset(c);
    return true;
}

void devcache_destroy(DevCache *c)
{
    g_free(c->tags);
    g_free(c->lru);
    g_free(c->lines);
    g_free(c->data);
    g_free(c->snap);
    g_free(c->scratch);
    memset(c, 0, sizeof(*c));
}

void devcache_reset(DevCache *c)
{
    uint32_t i;

    for (i = 0; i < devcache_nlines(c); i++) {
        c->tags[i] = DEVCACHE_NO_TAG;
    }
    memset(c->lru, 0, sizeof(uint64_t) * devcache_nlines(c));
    memset(c->lines, 0, sizeof(DevCacheLine) * devcache_nlines(c));
    c->clock = 0;
}

static void report(DevCache *c, DevCacheViolationKind kind, uint32_t idx,
                   uint32_t from, uint32_t to,
                   const uint8_t *expected, const uint8_t *actual)
{
    DevCacheViolation v = {
        .kind = kind,
        .iova = line_at(c, idx)->iova,
        .line_pa = c->tags[idx],
    };
    uint32_t first = UINT32_MAX;
    uint32_t i;

    for (i = from; i < to; i++) {
        if (expected[i] != actual[i]) {
            v.ndiff++;
            if (first == UINT32_MAX) {
                first = i;
            }
        }
    }
    if (first == UINT32_MAX) {
        first = from;
    }
    v.pa = v.line_pa + first;
    v.nevidence = MIN(DEVCACHE_EVIDENCE, to - first);
    memcpy(v.expected, expected + first, v.nevidence);
    memcpy(v.actual, actual + first, v.nevidence);
    c->ops->violation(c->opaque, &v);
}

/* Bytes in [from, to) where the device's copy was meant to land but memory disagrees. */
static bool lost_bytes(const uint8_t *data, const uint8_t *snap, const uint8_t *mem,
                       uint32_t n)
{
    uint32_t i;

    for (i = 0; i < n; i++) {
        if (data[i] != snap[i] && data[i] != mem[i]) {
            return true;
        }
    }
    return false;
}

static uint8_t *mem_ptr(DevCache *c, uint64_t pa, uint32_t len, bool is_write)
{
    return c->ops->mem_ptr ? c->ops->mem_ptr(c->opaque, pa, len, is_write) : NULL;
}

static uint8_t *line_ptr(DevCache *c, uint64_t pa, bool is_write)
{
    return mem_ptr(c, pa, c->line_size, is_write);
}

/* Write a dirty line to memory; `keep`: the line stays valid (maintenance, not eviction). */
static bool writeback(DevCache *c, uint32_t idx, bool keep)
{
    DevCacheLine *l = line_at(c, idx);
    uint64_t tag = c->tags[idx];
    uint8_t *data = line_data(c, idx);
    uint8_t *snap = line_snap(c, idx);
    /* Plain RAM is compared and written in place; anything else through a copy. */
    uint8_t *ram = line_ptr(c, tag, true);
    uint8_t *mem = ram ? ram : c->scratch;

    if (!ram && !c->ops->mem_read(c->opaque, tag, mem, c->line_size)) {
        return false;
    }
    if (memcmp(mem, snap, c->line_size)) {
        c->stats->conflicting_writes++;
        report(c, DEVCACHE_CONFLICTING_WRITE, idx, 0, c->line_size, snap, mem);
    }
    if ((l->flags & DEVCACHE_TRACKED) && c->ops->still_mapped &&
        !c->ops->still_mapped(c->opaque, l->iova, tag)) {
        c->stats->writebacks_after_unmap++;
        report(c, DEVCACHE_WRITEBACK_AFTER_UNMAP, idx, 0, c->line_size, mem, data);
    }
    /* Real hardware writes the whole line, whatever happened underneath. */
    if (ram) {
        memcpy(ram, data, c->line_size);
    } else if (!c->ops->mem_write(c->opaque, tag, data, c->line_size)) {
        return false;
    }
    if (keep) {
        memcpy(snap, data, c->line_size);
    }
    l->flags &= ~DEVCACHE_DIRTY;
    c->stats->writebacks++;
    return true;
}

static bool drop(DevCache *c, uint32_t idx)
{
    DevCacheLine *l = line_at(c, idx);

    if (l->flags & DEVCACHE_DIRTY) {
        uint8_t *mem = c->scratch;

        if (!c->ops->mem_read(c->opaque, c->tags[idx], mem, c->line_size)) {
            return false;
        }
        if (lost_bytes(line_data(c, idx), line_snap(c, idx), mem, c->line_size)) {
            c->stats->lost_writes++;
            report(c, DEVCACHE_LOST_WRITE, idx, 0, c->line_size,
                   line_data(c, idx), mem);
        }
    }
    l->flags = 0;
    c->tags[idx] = DEVCACHE_NO_TAG;
    c->stats->invalidations++;
    return true;
}

static int32_t lookup(DevCache *c, uint64_t tag)
{
    uint32_t base = set_base(c, tag);
    uint32_t w;

    for (w = 0; w < c->ways; w++) {
        if (c->tags[base + w] == tag) {
            return base + w;
        }
    }
    return -1;
}

/*
 * Find the line for tag or allocate one, in one pass over the set.  A miss
 * fills the line from memory.  A clean line's bytes are its snapshot: the
 * data copy is made only when the device first writes the line.
 */
static int32_t get_line(DevCache *c, uint64_t tag, uint64_t iova, bool tracked,
                        uint8_t *ram, bool *hit)
{
    uint32_t base = set_base(c, tag);
    uint32_t w, victim = base;
    uint64_t oldest = UINT64_MAX;
    bool free_way = false;
    uint8_t *snap;

    for (w = base; w < base + c->ways; w++) {
        if (c->tags[w] == tag) {
            *hit = true;
            c->stats->hits++;
            c->lru[w] = ++c->clock;
            return w;
        }
        if (free_way) {
            continue;
        }
        if (c->tags[w] == DEVCACHE_NO_TAG) {
            victim = w;
            free_way = true;
        } else if (c->lru[w] < oldest) {
            oldest = c->lru[w];
            victim = w;
        }
    }
    *hit = false;
    c->stats->misses++;
    if (!free_way) {
        c->stats->evictions++;
        if ((line_at(c, victim)->flags & DEVCACHE_DIRTY) && !writeback(c, victim, false)) {
            return -1;
        }
        c->tags[victim] = DEVCACHE_NO_TAG;
    }
    snap = line_snap(c, victim);
    if (ram) {
        memcpy(snap, ram, c->line_size);
    } else if (!c->ops->mem_read(c->opaque, tag, snap, c->line_size)) {
        return -1;
    }
    c->tags[victim] = tag;
    c->lru[victim] = ++c->clock;
    *line_at(c, victim) = (DevCacheLine) {
        .iova = iova,
        .flags = tracked ? DEVCACHE_TRACKED : 0,
    };
    return victim;
}

static bool access_lines(DevCache *c, uint64_t pa, uint64_t iova, uint8_t *buf,
                         uint32_t len, bool is_write, bool tracked)
{
    uint64_t mask = c->line_size - 1;
    uint64_t page_pa = pa & ~(uint64_t)(PAGE_SIZE_4K - 1);
    /* The whole access lies in one page: one pointer serves every line of it. */
    uint8_t *page = mem_ptr(c, page_pa, PAGE_SIZE_4K, is_write);

    while (len) {
        uint64_t tag = pa & ~mask;
        uint32_t off = pa & mask;
        uint32_t n = MIN(len, c->line_size - off);
        uint8_t *ram = page ? page + (tag - page_pa) : NULL;
        uint32_t next = set_base(c, tag + c->line_size);
        bool hit;

        /* Streams walk the sets in order: fetch the next set's tags and ages early. */
        __builtin_prefetch(&c->tags[next]);
        __builtin_prefetch(&c->lru[next]);
        __builtin_prefetch(&c->lines[next]);
        __builtin_prefetch(&c->lines[next + c->ways - 1]);
        int32_t idx = get_line(c, tag, iova - off, tracked, ram, &hit);
        DevCacheLine *l;
        uint8_t *data;

        if (idx < 0) {
            return false;
        }
        l = line_at(c, idx);
        data = l->flags & DEVCACHE_DIRTY ? line_data(c, idx) : line_snap(c, idx);
        if (hit && !is_write) {
            /* Only a hit can be stale: a fill reads memory as it is now. */
            uint8_t *mem = ram;
            if (!mem) {
                mem = c->scratch;
                if (!c->ops->mem_read(c->opaque, tag, mem, c->line_size)) {
                    return false;
                }
            }
            if (memcmp(mem + off, line_snap(c, idx) + off, n)) {
                c->stats->stale_reads++;
                report(c, DEVCACHE_STALE_READ, idx, off, off + n, mem, data);
            }
        }
        if (is_write) {
            if (!(l->flags & DEVCACHE_DIRTY) && n != c->line_size) {
                memcpy(line_data(c, idx), data, c->line_size);
            }
            data = line_data(c, idx);
            memcpy(data + off, buf, n);
            l->iova = iova - off;
            l->flags = DEVCACHE_DIRTY | (tracked ? DEVCACHE_TRACKED : 0);
        } else {
            memcpy(buf, data + off, n);
        }
        pa += n;
        iova += n;
        buf += n;
        len -= n;
    }
    return true;
}

bool devcache_read(DevCache *c, uint64_t pa, uint64_t iova, void *buf,
                   uint32_t len, bool tracked)
{
    return access_lines(c, pa, iova, buf, len, false, tracked);
}

bool devcache_write(DevCache *c, uint64_t pa, uint64_t iova, const void *buf,
                    uint32_t len, bool tracked)
{
    return access_lines(c, pa, iova, (uint8_t *)buf, len, true, tracked);
}

static bool maint_line(DevCache *c, uint32_t idx, DevCacheMaint op)
{
    DevCacheLine *l = line_at(c, idx);

    if (!line_valid(c, idx)) {
        return true;
    }
    if ((op & DEVCACHE_CLEAN) && (l->flags & DEVCACHE_DIRTY) &&
        !writeback(c, idx, !(op & DEVCACHE_INVALIDATE))) {
        return false;
    }
    if (op & DEVCACHE_INVALIDATE) {
        return drop(c, idx);
    }
    return true;
}

bool devcache_maint_range(DevCache *c, uint64_t pa, uint64_t len, DevCacheMaint op)
{
    uint64_t mask = c->line_size - 1;
    uint64_t tag, end;

    if (!len) {
        return true;
    }
    end = pa + len - 1;
    if (end < pa) {
        end = UINT64_MAX;
    }
    /* A range larger than the cache is cheaper to handle line by line of the cache. */
    if ((len >> c->line_shift) > devcache_nlines(c)) {
        uint32_t i;
        for (i = 0; i < devcache_nlines(c); i++) {
            uint64_t t = c->tags[i];
            if (t != DEVCACHE_NO_TAG && t + mask >= pa && t <= end &&
                !maint_line(c, i, op)) {
                return false;
            }
        }
        return true;
    }
    for (tag = pa & ~mask; tag <= end; tag += c->line_size) {
        int32_t idx = lookup(c, tag);
        if (idx >= 0 && !maint_line(c, idx, op)) {
            return false;
        }
        if (tag + c->line_size < tag) {
            break;
        }
    }
    return true;
}

bool devcache_maint_all(DevCache *c, DevCacheMaint op)
{
    uint32_t i;

    for (i = 0; i < devcache_nlines(c); i++) {
        if (!maint_line(c, i, op)) {
            return false;
        }
    }
    return true;
}
