/*
 * A device-private write-back, write-allocate cache, physically tagged, with
 * detectors for the ways software gets noncoherent DMA wrong.
 *
 * The model knows nothing of PCI or QEMU's memory API: the owner supplies
 * memory accessors by physical address and receives violation reports.
 * Replacement is LRU by a private counter, so runs are deterministic.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef DEVCACHE_H
#define DEVCACHE_H

typedef enum DevCacheViolationKind {
    DEVCACHE_STALE_READ = 1,
    DEVCACHE_LOST_WRITE = 2,
    DEVCACHE_CONFLICTING_WRITE = 3,
    DEVCACHE_WRITEBACK_AFTER_UNMAP = 4,
} DevCacheViolationKind;

/* Bytes of evidence kept per violation, starting at the first differing byte. */
#define DEVCACHE_EVIDENCE 32

typedef struct DevCacheViolation {
    DevCacheViolationKind kind;
    uint64_t pa;          /* first differing byte */
    uint64_t iova;        /* IOVA the line was filled through */
    uint64_t line_pa;
    uint32_t ndiff;       /* differing bytes in the line (or the accessed part) */
    uint32_t nevidence;   /* valid bytes in expected/actual */
    uint8_t expected[DEVCACHE_EVIDENCE];
    uint8_t actual[DEVCACHE_EVIDENCE];
} DevCacheViolation;

typedef struct DevCacheOps {
    /* Line-sized, line-aligned accesses by physical address; false on error. */
    bool (*mem_read)(void *opaque, uint64_t pa, void *buf, uint32_t len);
    bool (*mem_write)(void *opaque, uint64_t pa, const void *buf, uint32_t len);
    /* Optional: host pointer to a whole line of plain RAM, or NULL (then the above are used). */
    uint8_t *(*mem_ptr)(void *opaque, uint64_t pa, uint32_t len, bool is_write);
    /* Does the IOMMU still map iova to pa for this device?  NULL: no IOMMU. */
    bool (*still_mapped)(void *opaque, uint64_t iova, uint64_t pa);
    void (*violation)(void *opaque, const DevCacheViolation *v);
} DevCacheOps;

typedef struct DevCacheLine {
    uint64_t iova;        /* IOVA of the line when it was filled or last written */
    uint32_t flags;
    uint32_t pad;
} DevCacheLine;

/* Tag of an empty way: never a line address, as line addresses are aligned. */
#define DEVCACHE_NO_TAG UINT64_MAX

#define DEVCACHE_DIRTY 0x2
#define DEVCACHE_TRACKED 0x4  /* iova is known to the owner's mapping tracker */

typedef struct DevCacheStats {
    uint64_t hits, misses, evictions, writebacks, invalidations;
    uint64_t stale_reads, lost_writes, conflicting_writes, writebacks_after_unmap;
} DevCacheStats;

typedef enum DevCacheMaint {
    DEVCACHE_CLEAN = 1,
    DEVCACHE_INVALIDATE = 2,
    DEVCACHE_CLEAN_INVALIDATE = 3,
} DevCacheMaint;

typedef struct DevCache {
    uint32_t line_size;
    uint32_t line_shift;
    uint32_t nsets;
    uint32_t set_mask;    /* nsets - 1 when nsets is a power of two, else 0 */
    uint32_t ways;
    uint64_t clock;
    /*
     * Per line, set by set.  Tags and LRU stamps have arrays of their own so
     * that a lookup or a victim choice touches one or two host cache lines.
     */
    uint64_t *tags;
    uint64_t *lru;
    DevCacheLine *lines;
    uint8_t *data;        /* the cached bytes of dirty lines */
    uint8_t *snap;        /* memory as it was when the line was filled or written back:
                           * also the cached bytes of clean lines */
    uint8_t *scratch;     /* one line */
    const DevCacheOps *ops;
    void *opaque;
    DevCacheStats *stats;
} DevCache;

/*
 * line_size: power of two in [16, 4096]; size: multiple of line_size * ways.
 * Returns false (and leaves c unusable) on a bad geometry; errmsg says why.
 */
bool devcache_init(DevCache *c, uint32_t line_size, uint32_t size, uint32_t ways,
                   const DevCacheOps *ops, void *opaque, DevCacheStats *stats,
                   const char **errmsg);
void devcache_destroy(DevCache *c);
/* Drop everything without writing back (device reset). */
void devcache_reset(DevCache *c);

/*
 * Data accesses.  [pa, pa + len) must lie within one 4 KiB page and be RAM
 * (the owner sends what is not around the cache); iova is the address the
 * device used (recorded for reports).  false: memory error.
 */
bool devcache_read(DevCache *c, uint64_t pa, uint64_t iova, void *buf,
                   uint32_t len, bool tracked);
bool devcache_write(DevCache *c, uint64_t pa, uint64_t iova, const void *buf,
                    uint32_t len, bool tracked);

/* Maintenance of the lines that hold bytes of [pa, pa + len), or of all lines. */
bool devcache_maint_range(DevCache *c, uint64_t pa, uint64_t len, DevCacheMaint op);
bool devcache_maint_all(DevCache *c, DevCacheMaint op);

/* Sizes of the state arrays, for VMState. */
static inline uint32_t devcache_nlines(const DevCache *c)
{
    return c->nsets * c->ways;
}

#endif
