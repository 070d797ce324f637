/*
 * ncdma: a noncoherent DMA engine.
 *
 * Executes a ring of descriptors (COPY, FILL, cache maintenance) with every
 * data access going through the platform IOMMU, a device IOTLB and, unless
 * coherent=on, a private write-back cache whose detectors report what the
 * software got wrong.  The register map and descriptor layout are in
 * ncdma-hw.h, generated from the Python spec; docs/ncdma.md explains them.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qemu/log.h"
#include "qemu/units.h"
#include "qemu/bswap.h"
#include "qemu/main-loop.h"
#include "qemu/module.h"
#include "qapi/error.h"
#include "qapi/visitor.h"
#include "hw/pci/pci.h"
#include "hw/pci/pcie.h"
#include "hw/pci/msix.h"
#include "hw/core/cpu.h"
#include "hw/qdev-properties.h"
#include "migration/vmstate.h"
#include "ncdma.h"
#include "cpucache.h"

/* Work done per bottom half before yielding to the main loop. */
#define NCDMA_BUDGET_DESCS 64
#define NCDMA_BUDGET_BYTES (64 * MiB)
/* Largest piece moved between two translations. */
#define NCDMA_CHUNK (64 * KiB)
#define NCDMA_PAGE 4096

static const char *const op_names[] = {
#define X(name, val) [val] = #name,
    NCDMA_OP_LIST(X)
#undef X
};

static const char *const status_names[] = {
#define X(name, val) [val] = #name,
    NCDMA_ST_LIST(X)
#undef X
};

static const char *const viol_names[] = {
#define X(name, val) [val] = #name,
    NCDMA_VIOL_LIST(X)
#undef X
};

static const char *const counter_names[] = {
#define X(name) #name,
    NCDMA_COUNTER_LIST(X)
#undef X
};

static bool ncdma_cached(NcdmaState *s)
{
    return !s->coherent;
}

/* The cache model keeps its own statistics; fold them into the counters. */
static void ncdma_sync_counters(NcdmaState *s)
{
    uint64_t *c = s->counters;

    c[NCDMA_CNT_CACHE_HITS] = s->cstats.hits;
    c[NCDMA_CNT_CACHE_MISSES] = s->cstats.misses;
    c[NCDMA_CNT_CACHE_EVICTIONS] = s->cstats.evictions;
    c[NCDMA_CNT_CACHE_WRITEBACKS] = s->cstats.writebacks;
    c[NCDMA_CNT_CACHE_INVALIDATIONS] = s->cstats.invalidations;
    c[NCDMA_CNT_STALE_READS] = s->cstats.stale_reads;
    c[NCDMA_CNT_LOST_WRITES] = s->cstats.lost_writes;
    c[NCDMA_CNT_CONFLICTING_WRITES] = s->cstats.conflicting_writes;
    c[NCDMA_CNT_WRITEBACKS_AFTER_UNMAP] = s->cstats.writebacks_after_unmap;
}

static void ncdma_load_cache_stats(NcdmaState *s)
{
    uint64_t *c = s->counters;

    s->cstats = (DevCacheStats) {
        .hits = c[NCDMA_CNT_CACHE_HITS],
        .misses = c[NCDMA_CNT_CACHE_MISSES],
        .evictions = c[NCDMA_CNT_CACHE_EVICTIONS],
        .writebacks = c[NCDMA_CNT_CACHE_WRITEBACKS],
        .invalidations = c[NCDMA_CNT_CACHE_INVALIDATIONS],
        .stale_reads = c[NCDMA_CNT_STALE_READS],
        .lost_writes = c[NCDMA_CNT_LOST_WRITES],
        .conflicting_writes = c[NCDMA_CNT_CONFLICTING_WRITES],
        .writebacks_after_unmap = c[NCDMA_CNT_WRITEBACKS_AFTER_UNMAP],
    };
}

static void ncdma_irq(NcdmaState *s, uint32_t cause, unsigned vector)
{
    PCIDevice *pdev = PCI_DEVICE(s);

    s->irq_status |= cause;
    if ((s->ctrl & NCDMA_CTRL_IRQ_ENABLE) && msix_enabled(pdev)) {
        msix_notify(pdev, vector);
        s->counters[NCDMA_CNT_IRQS]++;
    }
}

static void ncdma_ring_error(NcdmaState *s, uint32_t code)
{
    qemu_log_mask(LOG_GUEST_ERROR, "ncdma: ring stopped, error %u\n", code);
    s->ring_error = true;
    s->error = code;
    s->counters[NCDMA_CNT_RING_ERRORS]++;
    ncdma_irq(s, NCDMA_IRQ_ERROR, NCDMA_VEC_ERROR);
}

/* Logs */

static void ncdma_violation(void *opaque, const DevCacheViolation *v)
{
    NcdmaState *s = opaque;
    NcdmaViolation *e;

    /* Keep the first violations: later ones are usually consequences. */
    if (s->vlog_seq >= s->vlog_size) {
        s->counters[NCDMA_CNT_VIOLATIONS_DROPPED]++;
        return;
    }
    e = &s->vlog[s->vlog_seq];
    *e = (NcdmaViolation) {
        .seq = s->vlog_seq++,
        .cookie = s->cur_cookie,
        .iova = v->iova + (v->pa - v->line_pa),
        .pa = v->pa,
        .line_pa = v->line_pa,
        .kind = v->kind,
        .ndiff = v->ndiff,
        .nevidence = v->nevidence,
    };
    memcpy(e->expected, v->expected, v->nevidence);
    memcpy(e->actual, v->actual, v->nevidence);
    s->counters[NCDMA_CNT_VIOLATIONS_LOGGED]++;
}

static NcdmaSegment *ncdma_tx_segs(NcdmaState *s, NcdmaTransaction *tx)
{
    return &s->xsegs[(tx - s->xlog) * (size_t)s->xlog_segs];
}

static NcdmaTransaction *ncdma_tx_begin(NcdmaState *s, const struct ncdma_desc *d)
{
    NcdmaTransaction *tx = &s->xlog[s->xlog_seq % s->xlog_size];

    *tx = (NcdmaTransaction) {
        .seq = s->xlog_seq++,
        .cookie = d->cookie,
        .src = d->src,
        .dst = d->dst,
        .len = d->len,
        .opcode = d->opcode,
        .flags = d->flags,
    };
    return tx;
}

static void ncdma_tx_segment(NcdmaState *s, uint64_t iova, uint64_t pa, uint64_t len,
                             bool is_write)
{
    NcdmaTransaction *tx = s->cur_tx;
    NcdmaSegment *segs = ncdma_tx_segs(s, tx);
    /* Reads and writes interleave piece by piece: extend the last one of the same kind. */
    int32_t *last = &s->cur_last_seg[is_write];

    if (*last >= 0) {
        NcdmaSegment *prev = &segs[*last];
        if (prev->iova + prev->len == iova && prev->pa + prev->len == pa) {
            prev->len += len;
            return;
        }
    }
    if (tx->nsegs == s->xlog_segs) {
        tx->segs_dropped++;
        return;
    }
    *last = tx->nsegs;
    segs[tx->nsegs++] = (NcdmaSegment) {
        .iova = iova, .pa = pa, .len = len, .is_write = is_write,
    };
}

/*
 * On a noncoherent platform (cpucache set) ncdma is a master below the CPU
 * caches: its data and its descriptor ring are read and written in memory,
 * and the model hears of every range first.
 */

void ncdma_cc_note(NcdmaState *s, uint64_t iova, uint64_t pa, uint64_t len)
{
    if (cpucache) {
        s->cc_recent[s->cc_next] = (typeof(s->cc_recent[0])) { iova, pa, len };
        s->cc_next ^= 1;
    }
}

/* @iova is the IOVA of @base, UINT64_MAX when not known. */
static void ncdma_cc_access(NcdmaState *s, uint64_t iova, uint64_t base, uint64_t pa,
                            uint64_t len, bool is_write)
{
    CpuCacheOrigin o = {
        .master = DEVICE(s)->id ?: "ncdma", .who = s->cc_who,
        .iova = iova, .pa_base = base,
    };

    cpucache_dma(cpucache, &o, pa, len, is_write);
}

static void ncdma_cc_observe(void *opaque, uint64_t pa, uint64_t len, bool is_write)
{
    NcdmaState *s = opaque;
    uint64_t iova = UINT64_MAX, base = pa;
    unsigned i;

    for (i = 0; i < ARRAY_SIZE(s->cc_recent); i++) {
        if (pa - s->cc_recent[i].pa < s->cc_recent[i].len) {
            iova = s->cc_recent[i].iova;
            base = s->cc_recent[i].pa;
        }
    }
    ncdma_cc_access(s, iova, base, pa, len, is_write);
}

static MemTxResult ncdma_ring_rw(NcdmaState *s, uint32_t offset, void *buf, uint32_t len,
                                 bool is_write)
{
    uint64_t iova = dring_entry_addr(&s->ring, s->ring.head) + offset;
    IOMMUTLBEntry e;
    uint64_t pa;

    if (!cpucache) {
        return is_write ? dring_writeback(&s->ring, PCI_DEVICE(s), offset, buf, len)
                        : dring_fetch(&s->ring, PCI_DEVICE(s), buf);
    }
    WITH_RCU_READ_LOCK_GUARD() {
        e = address_space_get_iotlb_entry(pci_get_address_space(PCI_DEVICE(s)), iova,
                                          is_write, MEMTXATTRS_UNSPECIFIED);
    }
    if (!e.target_as || (iova & e.addr_mask) + len - 1 > e.addr_mask) {
        return MEMTX_DECODE_ERROR;
    }
    pa = e.translated_addr + (iova & e.addr_mask);
    ncdma_cc_access(s, iova, pa, pa, len, is_write);
    return address_space_rw(cpucache_dma_as(cpucache), pa, MEMTXATTRS_UNSPECIFIED, buf, len,
                            is_write);
}

/* Memory by physical address, for the cache model */

static bool ncdma_mem_read(void *opaque, uint64_t pa, void *buf, uint32_t len)
{
    NcdmaState *s = opaque;

    return physwin_read(&s->win, pa, buf, len);
}

static bool ncdma_mem_write(void *opaque, uint64_t pa, const void *buf, uint32_t len)
{
    NcdmaState *s = opaque;

    return physwin_write(&s->win, pa, buf, len);
}

static uint8_t *ncdma_mem_ptr(void *opaque, uint64_t pa, uint32_t len, bool is_write)
{
    NcdmaState *s = opaque;
    uint64_t n = len;
    uint8_t *p = physwin_get(&s->win, pa, &n, is_write);

    return p && n == len ? p : NULL;
}

static const DevCacheOps ncdma_cache_ops = {
    .mem_read = ncdma_mem_read,
    .mem_write = ncdma_mem_write,
    .mem_ptr = ncdma_mem_ptr,
    .still_mapped = ncdma_still_mapped,
    .violation = ncdma_violation,
};

/* Descriptor execution */

static uint32_t ncdma_xlate_status(NcdmaXlate r)
{
    return r == NCDMA_XLATE_FAULT ? NCDMA_ST_IOMMU_FAULT : NCDMA_ST_BUS_ERROR;
}

static uint32_t ncdma_bus_error(NcdmaState *s)
{
    s->counters[NCDMA_CNT_BUS_ERRORS]++;
    return NCDMA_ST_BUS_ERROR;
}

static void ncdma_pattern(uint8_t *buf, uint64_t n, uint64_t pattern, uint64_t phase)
{
    uint8_t pat[8];
    uint64_t i;

    stq_le_p(pat, pattern);
    for (i = 0; i < n; i++) {
        buf[i] = pat[(phase + i) & 7];
    }
}

/*
 * Is [pa, pa + *len) memory (RAM the device may cache) or not (a device's
 * registers, the interrupt window, nothing at all)?  *len is cut to where
 * the answer changes, exactly: regions need not be page-aligned.
 */
static bool ncdma_is_memory(NcdmaState *s, uint64_t pa, uint64_t *len, bool is_write)
{
    MemoryRegionSection sec;
    uint64_t n = *len;
    bool ram = false;

    /* Windows map exactly RAM: the common case costs a window lookup. */
    if (physwin_peek(&s->win, pa, &n, is_write)) {
        *len = n;
        return true;
    }
    sec = memory_region_find(s->win.as->root, pa, *len);
    if (!sec.mr) {
        return false;
    }
    if (sec.offset_within_address_space > pa) {
        *len = sec.offset_within_address_space - pa;  /* a hole comes first */
    } else {
        ram = memory_access_is_direct(sec.mr, is_write, MEMTXATTRS_UNSPECIFIED);
        *len = MIN(*len, int128_get64(sec.size));
    }
    memory_region_unref(sec.mr);
    return ram;
}

/*
 * What is not memory is never cached: a line fill would read registers the
 * descriptor did not name (reads can have side effects) and a write-back
 * would write whole lines of them.  Such bytes go as one plain DMA at the
 * IOVA, so the vIOMMU's untranslated windows (the MSI window) behave as
 * they do for any device; whatever the target refuses is a bus error.
 */
static bool ncdma_plain_read(NcdmaState *s, uint64_t iova, void *buf, uint64_t n)
{
    return pci_dma_read(PCI_DEVICE(s), iova, buf, n) == MEMTX_OK;
}

static bool ncdma_plain_write(NcdmaState *s, uint64_t iova, const void *buf, uint64_t n)
{
    return pci_dma_write(PCI_DEVICE(s), iova, buf, n) == MEMTX_OK;
}

/* COPY and FILL: move bytes piece by piece, each piece within one translation of src and dst. */
static uint32_t ncdma_move(NcdmaState *s, const struct ncdma_desc *d, uint64_t *done)
{
    bool fill = d->opcode == NCDMA_OP_FILL;
    bool cached = ncdma_cached(s);
    uint8_t *bounce = s->bounce;

    while (*done < d->len) {
        uint64_t n = MIN(d->len - *done, NCDMA_CHUNK);
        uint64_t src = d->src + *done, dst = d->dst + *done;
        uint64_t spa = 0, dpa, avail;
        bool stracked = false, dtracked, smem = true, dmem;
        NcdmaXlate r;

        if (!fill) {
            r = ncdma_translate(s, src, false, &spa, &avail, &stracked);
            if (r != NCDMA_XLATE_OK) {
                return ncdma_xlate_status(r);
            }
            n = MIN(n, avail);
        }
        r = ncdma_translate(s, dst, true, &dpa, &avail, &dtracked);
        if (r != NCDMA_XLATE_OK) {
            return ncdma_xlate_status(r);
        }
        n = MIN(n, avail);
        if (cached) {
            /* The cache model works within one page at a time. */
            n = MIN(n, NCDMA_PAGE - (dpa & (NCDMA_PAGE - 1)));
            if (!fill) {
                n = MIN(n, NCDMA_PAGE - (spa & (NCDMA_PAGE - 1)));
            }
        }
        dmem = ncdma_is_memory(s, dpa, &n, true);
        if (!fill) {
            smem = ncdma_is_memory(s, spa, &n, false);
        }

        if (fill) {
            ncdma_pattern(bounce, n, d->pattern, *done);
        } else if (!smem) {
            if (!ncdma_plain_read(s, src, bounce, n)) {
                return ncdma_bus_error(s);
            }
        } else if (cached) {
            if (!devcache_read(&s->cache, spa, src, bounce, n, stracked)) {
                return ncdma_bus_error(s);
            }
        } else {
            uint64_t sn = n, dn = n;
            uint8_t *sp = physwin_get(&s->win, spa, &sn, false);
            uint8_t *dp = dmem ? physwin_get(&s->win, dpa, &dn, true) : NULL;
            if (sp && dp) {
                /* Plain RAM on both sides: one copy, no bounce. */
                n = MIN(sn, dn);
                memmove(dp, sp, n);
                goto moved;
            }
            if (!physwin_read(&s->win, spa, bounce, n)) {
                return ncdma_bus_error(s);
            }
        }
        if (!dmem) {
            if (!ncdma_plain_write(s, dst, bounce, n)) {
                return ncdma_bus_error(s);
            }
        } else if (cached) {
            if (!devcache_write(&s->cache, dpa, dst, bounce, n, dtracked)) {
                return ncdma_bus_error(s);
            }
        } else if (!physwin_write(&s->win, dpa, bounce, n)) {
            return ncdma_bus_error(s);
        }
moved:
        if (!fill) {
            ncdma_tx_segment(s, src, spa, n, false);
            s->counters[NCDMA_CNT_BYTES_READ] += n;
        }
        ncdma_tx_segment(s, dst, dpa, n, true);
        s->counters[NCDMA_CNT_BYTES_WRITTEN] += n;
        *done += n;
    }
    return NCDMA_ST_OK;
}

static DevCacheMaint ncdma_maint_op(uint8_t opcode)
{
    switch (opcode) {
    case NCDMA_OP_CLEAN:
        return DEVCACHE_CLEAN;
    case NCDMA_OP_INVALIDATE:
        return DEVCACHE_INVALIDATE;
    default:
        return DEVCACHE_CLEAN_INVALIDATE;
    }
}

/* Maintenance by IOVA range: translate each page, then act on its lines. */
static uint32_t ncdma_maint(NcdmaState *s, const struct ncdma_desc *d, uint64_t *done)
{
    DevCacheMaint op = ncdma_maint_op(d->opcode);

    if (!ncdma_cached(s)) {
        *done = d->flags & NCDMA_DESC_F_WHOLE ? 0 : d->len;
        return NCDMA_ST_OK;
    }
    if (d->flags & NCDMA_DESC_F_WHOLE) {
        return devcache_maint_all(&s->cache, op) ? NCDMA_ST_OK : ncdma_bus_error(s);
    }
    while (*done < d->len) {
        uint64_t iova = d->dst + *done;
        uint64_t pa, avail, n;
        NcdmaXlate r = ncdma_translate_any(s, iova, &pa, &avail);

        if (r != NCDMA_XLATE_OK) {
            return ncdma_xlate_status(r);
        }
        n = MIN(MIN(d->len - *done, avail), NCDMA_PAGE - (pa & (NCDMA_PAGE - 1)));
        if (!devcache_maint_range(&s->cache, pa, n, op)) {
            return ncdma_bus_error(s);
        }
        ncdma_tx_segment(s, iova, pa, n, false);
        *done += n;
    }
    return NCDMA_ST_OK;
}

static bool ncdma_wraps(uint64_t addr, uint64_t len)
{
    return addr + len - 1 < addr;
}

static uint32_t ncdma_check(NcdmaState *s, const struct ncdma_desc *d)
{
    bool whole = d->flags & NCDMA_DESC_F_WHOLE;

    if (d->flags & ~NCDMA_DESC_FLAGS_VALID || d->reserved0 || d->reserved1) {
        return NCDMA_ST_BAD_FLAGS;
    }
    switch (d->opcode) {
    case NCDMA_OP_NOP:
        return NCDMA_ST_OK;
    case NCDMA_OP_COPY:
    case NCDMA_OP_FILL:
        if (whole) {
            return NCDMA_ST_BAD_FLAGS;
        }
        break;
    case NCDMA_OP_CLEAN:
    case NCDMA_OP_INVALIDATE:
    case NCDMA_OP_CLEAN_INVALIDATE:
        if (whole) {
            return NCDMA_ST_OK;
        }
        break;
    default:
        return NCDMA_ST_BAD_OPCODE;
    }
    if (d->len == 0 || d->len > s->max_xfer) {
        return NCDMA_ST_BAD_LENGTH;
    }
    if (ncdma_wraps(d->dst, d->len) ||
        (d->opcode == NCDMA_OP_COPY && ncdma_wraps(d->src, d->len))) {
        return NCDMA_ST_BAD_ADDRESS;
    }
    return NCDMA_ST_OK;
}

static uint32_t ncdma_execute(NcdmaState *s, const struct ncdma_desc *d, uint64_t *done)
{
    uint32_t status = ncdma_check(s, d);

    *done = 0;
    if (status != NCDMA_ST_OK) {
        return status;
    }
    switch (d->opcode) {
    case NCDMA_OP_COPY:
    case NCDMA_OP_FILL:
        return ncdma_move(s, d, done);
    case NCDMA_OP_CLEAN:
    case NCDMA_OP_INVALIDATE:
    case NCDMA_OP_CLEAN_INVALIDATE:
        return ncdma_maint(s, d, done);
    default:
        return NCDMA_ST_OK;
    }
}

static void ncdma_desc_from_le(struct ncdma_desc *d)
{
    d->reserved0 = le16_to_cpu(d->reserved0);
    d->status = le32_to_cpu(d->status);
    d->cookie = le64_to_cpu(d->cookie);
    d->src = le64_to_cpu(d->src);
    d->dst = le64_to_cpu(d->dst);
    d->len = le64_to_cpu(d->len);
    d->pattern = le64_to_cpu(d->pattern);
    d->reserved1 = le64_to_cpu(d->reserved1);
}

/* Execute the head descriptor; false when the ring had to stop. */
static bool ncdma_step(NcdmaState *s, uint64_t *bytes)
{
    struct ncdma_desc d;
    uint64_t done = 0, done_le;
    uint32_t status, status_le;

    if (ncdma_ring_rw(s, 0, &d, NCDMA_DESC_SIZE, false) != MEMTX_OK) {
        ncdma_ring_error(s, NCDMA_RING_ERR_FETCH_FAULT);
        return false;
    }
    ncdma_desc_from_le(&d);
    s->cur_cookie = d.cookie;
    s->cur_tx = ncdma_tx_begin(s, &d);
    s->cur_last_seg[0] = s->cur_last_seg[1] = -1;
    status = ncdma_execute(s, &d, &done);
    physwin_release(&s->win);
    s->cur_tx->status = status;
    s->cur_tx->done = done;
    s->cur_tx = NULL;
    s->counters[status == NCDMA_ST_OK ? NCDMA_CNT_DESC_COMPLETED : NCDMA_CNT_DESC_ERRORS]++;
    *bytes += done;

    done_le = cpu_to_le64(done);
    status_le = cpu_to_le32(status);
    if (ncdma_ring_rw(s, NCDMA_DESC_DONE, &done_le, sizeof(done_le), true) ||
        ncdma_ring_rw(s, NCDMA_DESC_STATUS, &status_le, sizeof(status_le), true)) {
        ncdma_ring_error(s, NCDMA_RING_ERR_STATUS_FAULT);
        return false;
    }
    dring_advance(&s->ring);
    s->completed++;
    if (d.flags & NCDMA_DESC_F_IRQ) {
        ncdma_irq(s, NCDMA_IRQ_COMPLETION, NCDMA_VEC_COMPLETION);
    }
    return true;
}

static bool ncdma_running(NcdmaState *s)
{
    return (s->ctrl & NCDMA_CTRL_ENABLE) && !s->ring_error;
}

static void ncdma_bh(void *opaque)
{
    NcdmaState *s = opaque;
    uint64_t bytes = 0;
    unsigned n = 0;

    while (ncdma_running(s) && dring_pending(&s->ring)) {
        if (n++ == NCDMA_BUDGET_DESCS || bytes >= NCDMA_BUDGET_BYTES) {
            qemu_bh_schedule(s->bh);
            return;
        }
        if (!ncdma_step(s, &bytes)) {
            return;
        }
    }
}

/* Registers */

static uint32_t ncdma_caps(NcdmaState *s)
{
    uint32_t caps = 0;

    if (ncdma_cached(s)) {
        caps |= NCDMA_CAP_CACHE;
    }
    if (s->iotlb_entries) {
        caps |= NCDMA_CAP_IOTLB;
    }
    if (ncdma_iommu_active(s)) {
        caps |= NCDMA_CAP_IOMMU;
        if (!QLIST_EMPTY(&s->notifiers)) {
            caps |= s->degraded ? NCDMA_CAP_DEGRADED : NCDMA_CAP_IOMMU_EVENTS;
        }
    }
    return caps;
}

static uint32_t ncdma_status(NcdmaState *s)
{
    uint32_t st = 0;

    if (s->ctrl & NCDMA_CTRL_ENABLE) {
        st |= NCDMA_STATUS_ENABLED;
    }
    if (ncdma_running(s) && dring_pending(&s->ring)) {
        st |= NCDMA_STATUS_BUSY;
    }
    if (s->ring_error) {
        st |= NCDMA_STATUS_RING_ERROR;
    }
    return st;
}

static uint32_t ncdma_read32(NcdmaState *s, hwaddr addr)
{
    if (addr >= NCDMA_COUNTERS_OFFSET &&
        addr < NCDMA_COUNTERS_OFFSET + NCDMA_NR_COUNTERS * 8) {
        hwaddr off = addr - NCDMA_COUNTERS_OFFSET;
        ncdma_sync_counters(s);
        return s->counters[off / 8] >> (off & 4 ? 32 : 0);
    }
    switch (addr) {
    case NCDMA_REG_ID:
        return NCDMA_ID_MAGIC;
    case NCDMA_REG_VERSION:
        return NCDMA_VERSION;
    case NCDMA_REG_CAPS:
        return ncdma_caps(s);
    case NCDMA_REG_CACHE_LINE:
        return ncdma_cached(s) ? s->line_size : 0;
    case NCDMA_REG_CACHE_SIZE:
        return ncdma_cached(s) ? s->cache_size : 0;
    case NCDMA_REG_CACHE_WAYS:
        return ncdma_cached(s) ? s->cache_ways : 0;
    case NCDMA_REG_IOTLB_ENTRIES:
        return s->iotlb_entries;
    case NCDMA_REG_MAX_XFER:
        return s->max_xfer;
    case NCDMA_REG_CTRL:
        return s->ctrl;
    case NCDMA_REG_STATUS:
        return ncdma_status(s);
    case NCDMA_REG_ERROR:
        return s->error;
    case NCDMA_REG_IRQ_STATUS:
        return s->irq_status;
    case NCDMA_REG_RING_BASE_LO:
        return s->ring_base;
    case NCDMA_REG_RING_BASE_HI:
        return s->ring_base >> 32;
    case NCDMA_REG_RING_SIZE:
        return s->ring_size;
    case NCDMA_REG_RING_HEAD:
        return s->ring.head;
    case NCDMA_REG_RING_TAIL:
        return s->ring.tail;
    case NCDMA_REG_COMPLETED:
        return s->completed;
    default:
        return 0;
    }
}

static void ncdma_ring_reset(NcdmaState *s)
{
    s->ctrl = 0;
    s->error = NCDMA_RING_ERR_NONE;
    s->ring_error = false;
    s->completed = 0;
    s->ring = (DescRing) { .entry_size = NCDMA_DESC_SIZE };
}

static void ncdma_write_ctrl(NcdmaState *s, uint32_t val)
{
    bool was_enabled = s->ctrl & NCDMA_CTRL_ENABLE;

    if (val & NCDMA_CTRL_RESET) {
        ncdma_ring_reset(s);
        return;
    }
    s->ctrl = val & (NCDMA_CTRL_ENABLE | NCDMA_CTRL_IRQ_ENABLE);
    if ((val & NCDMA_CTRL_ENABLE) && !was_enabled && !s->ring_error) {
        switch (dring_check(s->ring_base, s->ring_size, NCDMA_DESC_SIZE,
                            NCDMA_RING_MIN_ENTRIES, NCDMA_RING_MAX_ENTRIES)) {
        case DRING_BAD_SIZE:
            ncdma_ring_error(s, NCDMA_RING_ERR_BAD_SIZE);
            return;
        case DRING_BAD_BASE:
            ncdma_ring_error(s, NCDMA_RING_ERR_BAD_BASE);
            return;
        case DRING_OK:
            break;
        }
        s->ring = (DescRing) {
            .base = s->ring_base,
            .size = s->ring_size,
            .entry_size = NCDMA_DESC_SIZE,
        };
    }
}

static void ncdma_write32(NcdmaState *s, hwaddr addr, uint32_t val)
{
    switch (addr) {
    case NCDMA_REG_CTRL:
        ncdma_write_ctrl(s, val);
        break;
    case NCDMA_REG_IRQ_STATUS:
        s->irq_status &= ~val;
        break;
    case NCDMA_REG_RING_BASE_LO:
        s->ring_base = deposit64(s->ring_base, 0, 32, val);
        break;
    case NCDMA_REG_RING_BASE_HI:
        s->ring_base = deposit64(s->ring_base, 32, 32, val);
        break;
    case NCDMA_REG_RING_SIZE:
        s->ring_size = val;
        break;
    case NCDMA_REG_RING_TAIL:
        if (s->ring_error) {
            break;
        }
        if (!(s->ctrl & NCDMA_CTRL_ENABLE) || !s->ring.size) {
            ncdma_ring_error(s, NCDMA_RING_ERR_NOT_READY);
        } else if (val >= s->ring.size) {
            ncdma_ring_error(s, NCDMA_RING_ERR_BAD_TAIL);
        } else {
            s->ring.tail = val;
            if (cpucache) {
                cpucache_who(cpucache, current_cpu, true, &s->cc_who);
            }
            qemu_bh_schedule(s->bh);
        }
        break;
    default:
        qemu_log_mask(LOG_GUEST_ERROR, "ncdma: write 0x%x to read-only or unknown "
                      "register 0x%" HWADDR_PRIx "\n", val, addr);
        break;
    }
}

static uint64_t ncdma_mmio_read(void *opaque, hwaddr addr, unsigned size)
{
    NcdmaState *s = opaque;
    uint64_t val = ncdma_read32(s, addr);

    if (size == 8) {
        val |= (uint64_t)ncdma_read32(s, addr + 4) << 32;
    }
    return val;
}

static void ncdma_mmio_write(void *opaque, hwaddr addr, uint64_t val, unsigned size)
{
    NcdmaState *s = opaque;

    ncdma_write32(s, addr, val);
    if (size == 8) {
        ncdma_write32(s, addr + 4, val >> 32);
    }
}

static const MemoryRegionOps ncdma_mmio_ops = {
    .read = ncdma_mmio_read,
    .write = ncdma_mmio_write,
    .endianness = DEVICE_LITTLE_ENDIAN,
    .valid = {
        .min_access_size = 4,
        .max_access_size = 8,
    },
    .impl = {
        .min_access_size = 4,
        .max_access_size = 8,
    },
};

/* QOM: counters and logs for the host, as JSON through qom-get */

static void ncdma_get_counters(Object *obj, Visitor *v, const char *name,
                               void *opaque, Error **errp)
{
    NcdmaState *s = NCDMA(obj);
    unsigned i;

    ncdma_sync_counters(s);
    if (!visit_start_struct(v, name, NULL, 0, errp)) {
        return;
    }
    for (i = 0; i < NCDMA_NR_COUNTERS; i++) {
        if (!visit_type_uint64(v, counter_names[i], &s->counters[i], errp)) {
            break;
        }
    }
    if (i == NCDMA_NR_COUNTERS) {
        visit_check_struct(v, errp);
    }
    visit_end_struct(v, NULL);
}

static bool visit_u64(Visitor *v, const char *name, uint64_t val, Error **errp)
{
    return visit_type_uint64(v, name, &val, errp);
}

static bool visit_name(Visitor *v, const char *name, const char *const *names,
                       size_t nnames, uint32_t val, Error **errp)
{
    g_autofree char *str = val < nnames && names[val] ? g_strdup(names[val])
                                                     : g_strdup_printf("%u", val);
    return visit_type_str(v, name, &str, errp);
}

static bool visit_hex(Visitor *v, const char *name, const uint8_t *buf, size_t len,
                      Error **errp)
{
    g_autofree char *str = g_malloc(len * 2 + 1);
    size_t i;

    for (i = 0; i < len; i++) {
        snprintf(str + i * 2, 3, "%02x", buf[i]);
    }
    str[len * 2] = 0;
    return visit_type_str(v, name, &str, errp);
}

static bool visit_violation(Visitor *v, const NcdmaViolation *e, Error **errp)
{
    bool ok;

    if (!visit_start_struct(v, NULL, NULL, 0, errp)) {
        return false;
    }
    ok = visit_u64(v, "seq", e->seq, errp) &&
         visit_name(v, "kind", viol_names, ARRAY_SIZE(viol_names), e->kind, errp) &&
         visit_u64(v, "cookie", e->cookie, errp) &&
         visit_u64(v, "iova", e->iova, errp) &&
         visit_u64(v, "pa", e->pa, errp) &&
         visit_u64(v, "line-pa", e->line_pa, errp) &&
         visit_u64(v, "differing", e->ndiff, errp) &&
         visit_hex(v, "expected", e->expected, e->nevidence, errp) &&
         visit_hex(v, "actual", e->actual, e->nevidence, errp) &&
         visit_check_struct(v, errp);
    visit_end_struct(v, NULL);
    return ok;
}

static void ncdma_get_violations(Object *obj, Visitor *v, const char *name,
                                 void *opaque, Error **errp)
{
    NcdmaState *s = NCDMA(obj);
    uint64_t i;

    if (!visit_start_list(v, name, NULL, 0, errp)) {
        return;
    }
    for (i = 0; i < s->vlog_seq && i < s->vlog_size; i++) {
        if (!visit_violation(v, &s->vlog[i], errp)) {
            break;
        }
    }
    visit_end_list(v, NULL);
}

static bool visit_segments(Visitor *v, NcdmaState *s, NcdmaTransaction *tx, Error **errp)
{
    NcdmaSegment *segs = ncdma_tx_segs(s, tx);
    bool ok = true;
    uint32_t i;

    if (!visit_start_list(v, "segments", NULL, 0, errp)) {
        return false;
    }
    for (i = 0; ok && i < tx->nsegs; i++) {
        bool is_write = segs[i].is_write;
        ok = visit_start_struct(v, NULL, NULL, 0, errp);
        if (!ok) {
            break;
        }
        ok = visit_u64(v, "iova", segs[i].iova, errp) &&
             visit_u64(v, "pa", segs[i].pa, errp) &&
             visit_u64(v, "len", segs[i].len, errp) &&
             visit_type_bool(v, "write", &is_write, errp) &&
             visit_check_struct(v, errp);
        visit_end_struct(v, NULL);
    }
    visit_end_list(v, NULL);
    return ok;
}

static bool visit_transaction(Visitor *v, NcdmaState *s, NcdmaTransaction *tx,
                              Error **errp)
{
    bool ok;

    if (!visit_start_struct(v, NULL, NULL, 0, errp)) {
        return false;
    }
    ok = visit_u64(v, "seq", tx->seq, errp) &&
         visit_u64(v, "cookie", tx->cookie, errp) &&
         visit_name(v, "opcode", op_names, ARRAY_SIZE(op_names), tx->opcode, errp) &&
         visit_u64(v, "flags", tx->flags, errp) &&
         visit_name(v, "status", status_names, ARRAY_SIZE(status_names), tx->status,
                    errp) &&
         visit_u64(v, "src", tx->src, errp) &&
         visit_u64(v, "dst", tx->dst, errp) &&
         visit_u64(v, "len", tx->len, errp) &&
         visit_u64(v, "done", tx->done, errp) &&
         visit_segments(v, s, tx, errp) &&
         visit_u64(v, "segments-dropped", tx->segs_dropped, errp) &&
         visit_check_struct(v, errp);
    visit_end_struct(v, NULL);
    return ok;
}

static void ncdma_get_transactions(Object *obj, Visitor *v, const char *name,
                                   void *opaque, Error **errp)
{
    NcdmaState *s = NCDMA(obj);
    uint64_t first = s->xlog_seq > s->xlog_size ? s->xlog_seq - s->xlog_size : 0;
    uint64_t seq;

    if (!visit_start_list(v, name, NULL, 0, errp)) {
        return;
    }
    for (seq = first; seq < s->xlog_seq; seq++) {
        if (!visit_transaction(v, s, &s->xlog[seq % s->xlog_size], errp)) {
            break;
        }
    }
    visit_end_list(v, NULL);
}

static void ncdma_get_iommu(Object *obj, Visitor *v, const char *name,
                            void *opaque, Error **errp)
{
    NcdmaState *s = NCDMA(obj);
    bool active = ncdma_iommu_active(s);
    bool events = active && !QLIST_EMPTY(&s->notifiers);
    bool degraded = events && s->degraded;

    if (!visit_start_struct(v, name, NULL, 0, errp)) {
        return;
    }
    if (visit_type_bool(v, "active", &active, errp) &&
        visit_type_bool(v, "events", &events, errp) &&
        visit_type_bool(v, "degraded", &degraded, errp) &&
        visit_u64(v, "tracked-mappings", s->live_count, errp) &&
        visit_u64(v, "transactions-logged", s->xlog_seq, errp)) {
        visit_check_struct(v, errp);
    }
    visit_end_struct(v, NULL);
}

static void ncdma_clear_stats(NcdmaState *s)
{
    memset(s->counters, 0, sizeof(s->counters));
    s->cstats = (DevCacheStats) {};
    s->vlog_seq = 0;
    s->xlog_seq = 0;
}

/* Writing true zeroes counters and logs, so a host can measure one step at a time. */
static void ncdma_set_reset_stats(Object *obj, bool value, Error **errp)
{
    if (value) {
        ncdma_clear_stats(NCDMA(obj));
    }
}

/* VMState: cache lines, IOTLB, logs and trackers travel as one blob. */

typedef struct NcdmaBlobHeader {
    uint32_t nlines, line_size, ntlb, vlog_size, xlog_size, xlog_segs, iommu_words, pad;
} NcdmaBlobHeader;

static size_t ncdma_blob_fixed(NcdmaState *s)
{
    return sizeof(NcdmaBlobHeader) +
           (sizeof(DevCacheLine) + 2 * sizeof(uint64_t)) *
               (ncdma_cached(s) ? devcache_nlines(&s->cache) : 0) +
           sizeof(DevTlbEntry) * s->tlb.nentries +
           sizeof(NcdmaViolation) * s->vlog_size +
           sizeof(NcdmaTransaction) * s->xlog_size +
           sizeof(NcdmaSegment) * (size_t)s->xlog_size * s->xlog_segs;
}

static void blob_put(uint8_t **p, const void *src, size_t len)
{
    if (len) {
        memcpy(*p, src, len);
        *p += len;
    }
}

static void blob_get(const uint8_t **p, void *dst, size_t len)
{
    if (len) {
        memcpy(dst, *p, len);
        *p += len;
    }
}

static NcdmaBlobHeader ncdma_blob_header(NcdmaState *s, uint32_t iommu_words)
{
    return (NcdmaBlobHeader) {
        .nlines = ncdma_cached(s) ? devcache_nlines(&s->cache) : 0,
        .line_size = ncdma_cached(s) ? s->line_size : 0,
        .ntlb = s->tlb.nentries,
        .vlog_size = s->vlog_size,
        .xlog_size = s->xlog_size,
        .xlog_segs = s->xlog_segs,
        .iommu_words = iommu_words,
    };
}

static int ncdma_pre_save(void *opaque)
{
    NcdmaState *s = opaque;
    g_autofree uint64_t *words = NULL;
    uint32_t nwords = ncdma_iommu_save(s, &words);
    NcdmaBlobHeader h = ncdma_blob_header(s, nwords);
    uint8_t *p;

    ncdma_sync_counters(s);
    g_free(s->blob);
    s->blob_len = ncdma_blob_fixed(s) + nwords * sizeof(uint64_t);
    s->blob = g_malloc(s->blob_len);
    p = s->blob;
    blob_put(&p, &h, sizeof(h));
    blob_put(&p, s->cache.tags, sizeof(uint64_t) * h.nlines);
    blob_put(&p, s->cache.lru, sizeof(uint64_t) * h.nlines);
    blob_put(&p, s->cache.lines, sizeof(DevCacheLine) * h.nlines);
    blob_put(&p, s->tlb.e, sizeof(DevTlbEntry) * h.ntlb);
    blob_put(&p, s->vlog, sizeof(NcdmaViolation) * h.vlog_size);
    blob_put(&p, s->xlog, sizeof(NcdmaTransaction) * h.xlog_size);
    blob_put(&p, s->xsegs, sizeof(NcdmaSegment) * (size_t)h.xlog_size * h.xlog_segs);
    blob_put(&p, words, nwords * sizeof(uint64_t));
    return 0;
}

static int ncdma_post_save(void *opaque)
{
    NcdmaState *s = opaque;

    g_free(s->blob);
    s->blob = NULL;
    s->blob_len = 0;
    return 0;
}

static int ncdma_post_load(void *opaque, int version_id)
{
    NcdmaState *s = opaque;
    NcdmaBlobHeader want = ncdma_blob_header(s, 0), h;
    const uint8_t *p = s->blob;
    size_t fixed = ncdma_blob_fixed(s);
    int ret = -EINVAL;

    if (s->blob_len < fixed) {
        goto out;
    }
    blob_get(&p, &h, sizeof(h));
    want.iommu_words = h.iommu_words;
    if (memcmp(&h, &want, sizeof(h)) ||
        s->blob_len != fixed + (size_t)h.iommu_words * sizeof(uint64_t)) {
        goto out;
    }
    blob_get(&p, s->cache.tags, sizeof(uint64_t) * h.nlines);
    blob_get(&p, s->cache.lru, sizeof(uint64_t) * h.nlines);
    blob_get(&p, s->cache.lines, sizeof(DevCacheLine) * h.nlines);
    blob_get(&p, s->tlb.e, sizeof(DevTlbEntry) * h.ntlb);
    blob_get(&p, s->vlog, sizeof(NcdmaViolation) * h.vlog_size);
    blob_get(&p, s->xlog, sizeof(NcdmaTransaction) * h.xlog_size);
    blob_get(&p, s->xsegs, sizeof(NcdmaSegment) * (size_t)h.xlog_size * h.xlog_segs);
    ncdma_iommu_load(s, (const uint64_t *)p, h.iommu_words);
    ncdma_load_cache_stats(s);
    if (s->ring.size && dring_check(s->ring.base, s->ring.size, NCDMA_DESC_SIZE,
                                    NCDMA_RING_MIN_ENTRIES, NCDMA_RING_MAX_ENTRIES)) {
        goto out;
    }
    if (s->ring.size && (s->ring.head >= s->ring.size || s->ring.tail >= s->ring.size)) {
        goto out;
    }
    s->ring.entry_size = NCDMA_DESC_SIZE;
    if (ncdma_running(s) && dring_pending(&s->ring)) {
        qemu_bh_schedule(s->bh);
    }
    ret = 0;
out:
    g_free(s->blob);
    s->blob = NULL;
    s->blob_len = 0;
    return ret;
}

static const VMStateDescription vmstate_ncdma = {
    .name = TYPE_NCDMA,
    .version_id = 1,
    .minimum_version_id = 1,
    .pre_save = ncdma_pre_save,
    .post_save = ncdma_post_save,
    .post_load = ncdma_post_load,
    .fields = (const VMStateField[]) {
        VMSTATE_PCI_DEVICE(parent_obj, NcdmaState),
        VMSTATE_MSIX(parent_obj, NcdmaState),
        VMSTATE_UINT32(ctrl, NcdmaState),
        VMSTATE_UINT32(error, NcdmaState),
        VMSTATE_UINT32(irq_status, NcdmaState),
        VMSTATE_UINT64(ring_base, NcdmaState),
        VMSTATE_UINT32(ring_size, NcdmaState),
        VMSTATE_UINT32(completed, NcdmaState),
        VMSTATE_BOOL(ring_error, NcdmaState),
        VMSTATE_UINT64(ring.base, NcdmaState),
        VMSTATE_UINT32(ring.size, NcdmaState),
        VMSTATE_UINT32(ring.head, NcdmaState),
        VMSTATE_UINT32(ring.tail, NcdmaState),
        VMSTATE_UINT64_ARRAY(counters, NcdmaState, NCDMA_NR_COUNTERS),
        VMSTATE_UINT64(vlog_seq, NcdmaState),
        VMSTATE_UINT64(xlog_seq, NcdmaState),
        VMSTATE_UINT64(cache.clock, NcdmaState),
        VMSTATE_UINT64(tlb.clock, NcdmaState),
        VMSTATE_UINT32_EQUAL(cache_bytes, NcdmaState, NULL),
        VMSTATE_VBUFFER_UINT32(cache.data, NcdmaState, 1, NULL, cache_bytes),
        VMSTATE_VBUFFER_UINT32(cache.snap, NcdmaState, 1, NULL, cache_bytes),
        VMSTATE_UINT32(blob_len, NcdmaState),
        VMSTATE_VBUFFER_ALLOC_UINT32(blob, NcdmaState, 1, NULL, blob_len),
        VMSTATE_END_OF_LIST()
    },
};

/* Lifecycle */

static void ncdma_reset(DeviceState *dev)
{
    NcdmaState *s = NCDMA(dev);

    ncdma_ring_reset(s);
    s->irq_status = 0;
    s->ring_base = 0;
    s->ring_size = 0;
    if (ncdma_cached(s)) {
        devcache_reset(&s->cache);
    }
    ncdma_iommu_reset(s);
    ncdma_clear_stats(s);
}

static bool in_range(uint64_t value, uint64_t lo, uint64_t hi)
{
    return value >= lo && value <= hi;
}

/* Every property in the range of the spec's table (ncdma-hw.h), as topology checks do. */
static bool ncdma_check_properties(NcdmaState *s, Error **errp)
{
#define NCDMA_CHECK(type, name, field, def, lo, hi)                          \
    if (!in_range(s->field, lo, hi)) {                                       \
        error_setg(errp, "%s must be in [%llu, %llu], not %llu", name,       \
                   (unsigned long long)(lo), (unsigned long long)(hi),       \
                   (unsigned long long)s->field);                            \
        return false;                                                        \
    }
    NCDMA_PROPERTIES(NCDMA_CHECK)
#undef NCDMA_CHECK
    return true;
}

static void ncdma_realize(PCIDevice *pdev, Error **errp)
{
    NcdmaState *s = NCDMA(pdev);
    const char *why;
    unsigned i;

    if (!ncdma_check_properties(s, errp)) {
        return;
    }
    if (ncdma_cached(s)) {
        if (!devcache_init(&s->cache, s->line_size, s->cache_size, s->cache_ways,
                           &ncdma_cache_ops, s, &s->cstats, &why)) {
            error_setg(errp, "ncdma cache: %s", why);
            return;
        }
        s->cache_bytes = s->cache_size;
    }

    pci_config_set_interrupt_pin(pdev->config, 1);
    memory_region_init_io(&s->mmio, OBJECT(s), &ncdma_mmio_ops, s, "ncdma-regs",
                          NCDMA_REGS_BAR_SIZE);
    pci_register_bar(pdev, NCDMA_REGS_BAR, PCI_BASE_ADDRESS_SPACE_MEMORY, &s->mmio);
    if (msix_init_exclusive_bar(pdev, NCDMA_MSIX_VECTORS, NCDMA_MSIX_BAR, errp)) {
        goto fail;
    }
    for (i = 0; i < NCDMA_MSIX_VECTORS; i++) {
        msix_vector_use(pdev, i);
    }
    /* Express only on an express bus: behind a PCIe-to-PCI bridge we are conventional. */
    if (pci_is_express(pdev) && pcie_endpoint_cap_init(pdev, 0) < 0) {
        error_setg(errp, "ncdma: cannot add the PCIe capability");
        goto fail_msix;
    }

    s->bounce = g_malloc(NCDMA_CHUNK);
    s->vlog = g_new0(NcdmaViolation, s->vlog_size);
    s->xlog = g_new0(NcdmaTransaction, s->xlog_size);
    s->xsegs = g_new0(NcdmaSegment, (size_t)s->xlog_size * s->xlog_segs);
    if (cpucache) {
        physwin_init(&s->win, cpucache_dma_as(cpucache));
        s->win.observe = ncdma_cc_observe;
        s->win.opaque = s;
    } else {
        physwin_init(&s->win, &address_space_memory);
    }
    s->ring.entry_size = NCDMA_DESC_SIZE;
    s->bh = qemu_bh_new_guarded(ncdma_bh, s, &DEVICE(pdev)->mem_reentrancy_guard);
    ncdma_iommu_realize(s);
    return;

fail_msix:
    msix_uninit_exclusive_bar(pdev);
fail:
    if (ncdma_cached(s)) {
        devcache_destroy(&s->cache);
    }
}

static void ncdma_exit(PCIDevice *pdev)
{
    NcdmaState *s = NCDMA(pdev);

    ncdma_iommu_unrealize(s);
    qemu_bh_delete(s->bh);
    msix_uninit_exclusive_bar(pdev);
    if (ncdma_cached(s)) {
        devcache_destroy(&s->cache);
    }
    g_free(s->bounce);
    g_free(s->vlog);
    g_free(s->xlog);
    g_free(s->xsegs);
    g_free(s->blob);
}

static void ncdma_instance_init(Object *obj)
{
    object_property_add(obj, "counters", "NcdmaCounters", ncdma_get_counters,
                        NULL, NULL, NULL);
    object_property_add(obj, "violations", "NcdmaViolationList", ncdma_get_violations,
                        NULL, NULL, NULL);
    object_property_add(obj, "transactions", "NcdmaTransactionList",
                        ncdma_get_transactions, NULL, NULL, NULL);
    object_property_add(obj, "iommu", "NcdmaIommu", ncdma_get_iommu, NULL, NULL, NULL);
    object_property_add_bool(obj, "reset-stats", NULL, ncdma_set_reset_stats);
}

/* Defaults and names from the spec's table, the one the topology files use too. */
#define NCDMA_PROP(type, name, field, def, lo, hi) \
    DEFINE_PROP_##type(name, NcdmaState, field, def),
static const Property ncdma_properties[] = {
    NCDMA_PROPERTIES(NCDMA_PROP)
};
#undef NCDMA_PROP

static void ncdma_class_init(ObjectClass *klass, void *data)
{
    DeviceClass *dc = DEVICE_CLASS(klass);
    PCIDeviceClass *k = PCI_DEVICE_CLASS(klass);

    k->realize = ncdma_realize;
    k->exit = ncdma_exit;
    k->vendor_id = NCDMA_PCI_VENDOR_ID;
    k->device_id = NCDMA_PCI_DEVICE_ID;
    k->revision = NCDMA_PCI_REVISION;
    k->class_id = PCI_CLASS_SYSTEM_OTHER;
    dc->desc = "Noncoherent DMA engine with a device cache and IOTLB (dmalab)";
    dc->vmsd = &vmstate_ncdma;
    device_class_set_legacy_reset(dc, ncdma_reset);
    device_class_set_props(dc, ncdma_properties);
    set_bit(DEVICE_CATEGORY_MISC, dc->categories);

    object_class_property_set_description(klass, "coherent",
        "on: no device cache (the coherent baseline)");
    object_class_property_set_description(klass, "line-size",
        "cache line size in bytes, a power of two in [16, 4096]");
    object_class_property_set_description(klass, "cache-size",
        "cache capacity in bytes, a multiple of line-size * cache-ways");
    object_class_property_set_description(klass, "cache-ways",
        "associativity; replacement is LRU, deterministic");
    object_class_property_set_description(klass, "iotlb-entries",
        "device IOTLB entries, 0 for none");
    object_class_property_set_description(klass, "max-xfer",
        "largest len accepted in one descriptor");
    object_class_property_set_description(klass, "vlog-size",
        "violations kept in the log (the first ones; later ones are counted)");
    object_class_property_set_description(klass, "xlog-size",
        "transactions kept in the log (the latest ones)");
    object_class_property_set_description(klass, "xlog-segs",
        "IOVA->PA segments kept per logged transaction");
}

static const TypeInfo ncdma_info = {
    .name = TYPE_NCDMA,
    .parent = TYPE_PCI_DEVICE,
    .instance_size = sizeof(NcdmaState),
    .instance_init = ncdma_instance_init,
    .class_init = ncdma_class_init,
    .interfaces = (InterfaceInfo[]) {
        { INTERFACE_PCIE_DEVICE },
        { INTERFACE_CONVENTIONAL_PCI_DEVICE },
        { },
    },
};

static void ncdma_register_types(void)
{
    type_register_static(&ncdma_info);
}

type_init(ncdma_register_types)
