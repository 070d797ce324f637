/*
 * ncdma: address translation, the device IOTLB, and IOMMU map/unmap
 * accounting through IOMMU notifiers.
 *
 * Notifiers are attached the way vfio does it: a MemoryListener on the
 * device's IOMMU address space registers one per IOMMU section.  A vIOMMU
 * that refuses MAP notifications (intel-iommu without caching-mode, SMMUv3)
 * still gives UNMAP, which is all the IOTLB needs; the device then reports
 * itself degraded because MAP counts mean nothing.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qemu/log.h"
#include "qapi/error.h"
#include "hw/pci/pci.h"
#include "hw/qdev-core.h"
#include "system/runstate.h"
#include "system/system.h"
#include "ncdma.h"

/* Bounds on host memory a guest can make us spend on bookkeeping. */
#define NCDMA_MAX_LIVE  (1u << 20)
#define NCDMA_MAX_SEEN  (1u << 20)

typedef struct LiveMap {
    uint64_t iova;
    uint64_t last;   /* inclusive */
    uint64_t pa;
} LiveMap;

/* Overlapping ranges compare equal, so a lookup finds any overlap. */
static gint live_cmp(gconstpointer a, gconstpointer b, gpointer unused)
{
    const LiveMap *x = a, *y = b;

    if (x->last < y->iova) {
        return -1;
    }
    if (x->iova > y->last) {
        return 1;
    }
    return 0;
}

static void live_remove(NcdmaState *s, uint64_t iova, uint64_t last)
{
    LiveMap probe = { .iova = iova, .last = last };

    s->live_last = NULL;
    while (g_tree_remove(s->live_tree, &probe)) {
        s->live_count--;
    }
}

static void live_clear(NcdmaState *s)
{
    /* g_tree_remove_all() needs glib 2.70; QEMU supports older. */
    s->live_last = NULL;
    g_tree_destroy(s->live_tree);
    s->live_tree = g_tree_new_full(live_cmp, NULL, g_free, NULL);
    s->live_count = 0;
}

static void live_insert(NcdmaState *s, uint64_t iova, uint64_t last, uint64_t pa)
{
    LiveMap probe = { .iova = iova, .last = last };
    LiveMap *m = g_tree_lookup(s->live_tree, &probe);

    if (m && m->iova == iova && m->last == last && m->pa == pa) {
        return;  /* translated again while still mapped: nothing changed */
    }
    if (s->live_count >= NCDMA_MAX_LIVE) {
        return;
    }
    live_remove(s, iova, last);
    m = g_new(LiveMap, 1);
    *m = (LiveMap) { .iova = iova, .last = last, .pa = pa };
    g_tree_insert(s->live_tree, m, m);
    s->live_count++;
}

bool ncdma_still_mapped(void *opaque, uint64_t iova, uint64_t pa)
{
    NcdmaState *s = opaque;
    LiveMap probe = { .iova = iova, .last = iova };
    LiveMap *m = s->live_last;

    /* Write-backs come line after line of the same page: remember the last mapping found. */
    if (!m || iova < m->iova || iova > m->last) {
        m = g_tree_lookup(s->live_tree, &probe);
        s->live_last = m;
    }
    return m && m->pa + (iova - m->iova) == pa;
}

static guint seen_hash(gconstpointer key)
{
    const uint64_t *k = key;

    return g_int64_hash(&k[0]) ^ g_int64_hash(&k[1]);
}

static gboolean seen_equal(gconstpointer a, gconstpointer b)
{
    const uint64_t *x = a, *y = b;

    return x[0] == y[0] && x[1] == y[1];
}

static bool seen_add(NcdmaState *s, uint64_t iova, uint64_t size)
{
    uint64_t probe[2] = { iova, size };
    uint64_t *key;

    if (g_hash_table_contains(s->seen_maps, probe)) {
        return false;
    }
    if (g_hash_table_size(s->seen_maps) < NCDMA_MAX_SEEN) {
        key = g_new(uint64_t, 2);
        key[0] = iova;
        key[1] = size;
        g_hash_table_add(s->seen_maps, key);
    }
    return true;
}

static bool restoring(void)
{
    return runstate_check(RUN_STATE_INMIGRATE) ||
           runstate_check(RUN_STATE_RESTORE_VM);
}

static void ncdma_iommu_notify(IOMMUNotifier *n, IOMMUTLBEntry *e)
{
    NcdmaNotifier *nn = container_of(n, NcdmaNotifier, n);
    NcdmaState *s = nn->s;
    uint64_t iova = e->iova + nn->offset;
    /* Inclusive: addr_mask + 1 wraps to 0 for a whole-space UNMAP (SMMUv3). */
    uint64_t last = iova + e->addr_mask;
    uint64_t size = e->addr_mask + 1;
    /* Replayed mappings and the state shuffle of a snapshot load are not guest events. */
    bool count = !s->replaying && !restoring();

    if (e->perm != IOMMU_NONE) {
        if (count) {
            s->counters[NCDMA_CNT_IOMMU_MAP_EVENTS]++;
            if (!seen_add(s, iova, size)) {
                s->counters[NCDMA_CNT_IOMMU_REMAPS]++;
            }
        }
        return;
    }
    if (count) {
        s->counters[NCDMA_CNT_IOMMU_UNMAP_EVENTS]++;
    }
    devtlb_invalidate(&s->tlb, iova, last);
    live_remove(s, iova, last);
}

static void ncdma_region_add(MemoryListener *l, MemoryRegionSection *section)
{
    NcdmaState *s = container_of(l, NcdmaState, listener);
    IOMMUMemoryRegion *mr;
    NcdmaNotifier *nn;
    Error *err = NULL;
    uint64_t last;
    int idx;

    if (!memory_region_is_iommu(section->mr)) {
        return;
    }
    mr = IOMMU_MEMORY_REGION(section->mr);
    s->iommu_sections++;
    nn = g_new0(NcdmaNotifier, 1);
    nn->s = s;
    nn->mr = mr;
    nn->offset = section->offset_within_address_space - section->offset_within_region;
    last = section->offset_within_region + int128_get64(int128_sub(section->size, int128_one()));
    idx = memory_region_iommu_attrs_to_index(mr, MEMTXATTRS_UNSPECIFIED);
    iommu_notifier_init(&nn->n, ncdma_iommu_notify, IOMMU_NOTIFIER_IOTLB_EVENTS,
                        section->offset_within_region, last, idx);
    if (memory_region_register_iommu_notifier(section->mr, &nn->n, &err)) {
        /* Never fatal: this runs inside a guest-triggered memory transaction. */
        error_free(err);
        err = NULL;
        nn->n.notifier_flags = IOMMU_NOTIFIER_UNMAP;
        if (memory_region_register_iommu_notifier(section->mr, &nn->n, &err)) {
            qemu_log_mask(LOG_UNIMP, "ncdma: %s refuses IOMMU notifiers: %s; "
                          "the device IOTLB is off\n",
                          memory_region_name(section->mr), error_get_pretty(err));
            error_free(err);
            g_free(nn);
            return;
        }
        s->degraded = true;
    }
    QLIST_INSERT_HEAD(&s->notifiers, nn, next);
    /*
     * A replay reports existing mappings as MAPs, which an UNMAP-only notifier
     * does not want; and without a replay callback of its own (SMMUv3) QEMU's
     * generic replay walks the whole 64-bit region page by page.
     */
    if (nn->n.notifier_flags & IOMMU_NOTIFIER_MAP) {
        s->replaying = true;
        memory_region_iommu_replay(mr, &nn->n);
        s->replaying = false;
    }
}

static void ncdma_region_del(MemoryListener *l, MemoryRegionSection *section)
{
    NcdmaState *s = container_of(l, NcdmaState, listener);
    NcdmaNotifier *nn, *tmp;

    if (!memory_region_is_iommu(section->mr)) {
        return;
    }
    s->iommu_sections--;
    QLIST_FOREACH_SAFE(nn, &s->notifiers, next, tmp) {
        if (MEMORY_REGION(nn->mr) == section->mr &&
            nn->n.start == section->offset_within_region) {
            memory_region_unregister_iommu_notifier(section->mr, &nn->n);
            QLIST_REMOVE(nn, next);
            g_free(nn);
        }
    }
    /* Translations through a region that is gone can no longer be trusted. */
    devtlb_flush(&s->tlb);
}

static void ncdma_listen(NcdmaState *s)
{
    AddressSpace *as = pci_device_iommu_address_space(PCI_DEVICE(s));

    if (s->listening || as == &address_space_memory) {
        return;
    }
    s->listener = (MemoryListener) {
        .name = "ncdma-iommu",
        .region_add = ncdma_region_add,
        .region_del = ncdma_region_del,
    };
    memory_listener_register(&s->listener, as);
    s->listening = true;
}

static void ncdma_machine_done(Notifier *n, void *unused)
{
    ncdma_listen(container_of(n, NcdmaState, machine_done));
}

void ncdma_iommu_realize(NcdmaState *s)
{
    devtlb_init(&s->tlb, s->iotlb_entries);
    s->live_tree = g_tree_new_full(live_cmp, NULL, g_free, NULL);
    s->seen_maps = g_hash_table_new_full(seen_hash, seen_equal, g_free, NULL);
    QLIST_INIT(&s->notifiers);
    /* A vIOMMU realized after us only shows in our address space once the machine is done. */
    if (phase_check(PHASE_MACHINE_READY)) {
        ncdma_listen(s);
    } else {
        s->machine_done.notify = ncdma_machine_done;
        qemu_add_machine_init_done_notifier(&s->machine_done);
    }
}

void ncdma_iommu_unrealize(NcdmaState *s)
{
    if (s->listening) {
        memory_listener_unregister(&s->listener);
        s->listening = false;
    } else if (s->machine_done.notify) {
        qemu_remove_machine_init_done_notifier(&s->machine_done);
    }
    devtlb_destroy(&s->tlb);
    g_tree_destroy(s->live_tree);
    g_hash_table_destroy(s->seen_maps);
}

void ncdma_iommu_reset(NcdmaState *s)
{
    devtlb_flush(&s->tlb);
    live_clear(s);
    g_hash_table_remove_all(s->seen_maps);
}

bool ncdma_iommu_active(NcdmaState *s)
{
    return s->iommu_sections > 0;
}

/*
 * address_space_get_iotlb_entry() for a device behind a vIOMMU, keeping
 * apart what it folds into one failure: the vIOMMU refused (a translation
 * fault), or it translated to an address where nothing is (a bus error,
 * *nothing set).  The vIOMMU is asked once, so it records one fault per
 * refusal.  Called in an RCU critical section.
 */
static IOMMUTLBEntry iommu_entry(NcdmaState *s, uint64_t iova, bool is_write, bool *nothing)
{
    AddressSpace *as = pci_get_address_space(PCI_DEVICE(s));
    MemoryRegionSection sec = memory_region_find(as->root, iova, 1);
    IOMMUAccessFlags need = is_write ? IOMMU_WO : IOMMU_RO;
    IOMMUMemoryRegion *imr;
    IOMMUTLBEntry e;
    uint64_t pa;

    *nothing = !sec.mr;
    if (!sec.mr) {
        return (IOMMUTLBEntry) {};
    }
    imr = memory_region_get_iommu(sec.mr);
    if (!imr) {
        /* Not translated (the MSI window, a bypass): what is there answers. */
        memory_region_unref(sec.mr);
        e = address_space_get_iotlb_entry(as, iova, is_write, MEMTXATTRS_UNSPECIFIED);
        *nothing = !e.target_as;
        return e;
    }
    e = memory_region_get_iommu_class_nocheck(imr)->translate(
            imr, sec.offset_within_region, need,
            memory_region_iommu_attrs_to_index(imr, MEMTXATTRS_UNSPECIFIED));
    memory_region_unref(sec.mr);
    if (!(e.perm & need) || !e.target_as) {
        return (IOMMUTLBEntry) {};
    }
    pa = (e.translated_addr & ~e.addr_mask) | (sec.offset_within_region & e.addr_mask);
    /* Memory or a device answers there (through any IOMMU further on)? */
    if (!address_space_get_iotlb_entry(e.target_as, pa, is_write,
                                       MEMTXATTRS_UNSPECIFIED).target_as) {
        *nothing = true;
        return (IOMMUTLBEntry) {};
    }
    e.iova = iova & ~e.addr_mask;
    e.translated_addr &= ~e.addr_mask;
    return e;
}

/* quiet: a failure is not counted (the caller has another way to try). */
static NcdmaXlate xlate(NcdmaState *s, uint64_t iova, bool is_write, uint64_t *pa,
                        uint64_t *avail, bool *tracked, bool quiet)
{
    uint32_t perm = is_write ? DEVTLB_WRITE : DEVTLB_READ;
    bool active = ncdma_iommu_active(s);
    /* Without an UNMAP notifier nothing could invalidate what we keep. */
    bool keep = active && !QLIST_EMPTY(&s->notifiers);
    bool nothing = false;
    IOMMUTLBEntry e;
    uint64_t off;

    *tracked = false;
    if (keep && devtlb_lookup(&s->tlb, iova, perm, pa, avail)) {
        s->counters[NCDMA_CNT_IOTLB_HITS]++;
        *tracked = true;
        return NCDMA_XLATE_OK;
    }
    if (active) {
        s->counters[NCDMA_CNT_IOTLB_MISSES]++;
    }
    WITH_RCU_READ_LOCK_GUARD() {
        if (active) {
            e = iommu_entry(s, iova, is_write, &nothing);
        } else {
            e = address_space_get_iotlb_entry(pci_get_address_space(PCI_DEVICE(s)),
                                              iova, is_write, MEMTXATTRS_UNSPECIFIED);
        }
    }
    if (!e.target_as) {
        if (active && !nothing) {
            s->counters[NCDMA_CNT_TRANSLATION_FAULTS] += !quiet;
            return NCDMA_XLATE_FAULT;
        }
        s->counters[NCDMA_CNT_BUS_ERRORS] += !quiet;
        return NCDMA_XLATE_BUS_ERROR;
    }
    off = iova & e.addr_mask;
    *pa = e.translated_addr + off;
    *avail = e.addr_mask - off == UINT64_MAX ? UINT64_MAX : e.addr_mask - off + 1;
    if (keep) {
        devtlb_insert(&s->tlb, iova, e.addr_mask, e.translated_addr, perm);
        live_insert(s, iova & ~e.addr_mask, (iova & ~e.addr_mask) + e.addr_mask,
                    e.translated_addr);
        *tracked = s->live_count < NCDMA_MAX_LIVE;
    }
    return NCDMA_XLATE_OK;
}

NcdmaXlate ncdma_translate(NcdmaState *s, uint64_t iova, bool is_write,
                           uint64_t *pa, uint64_t *avail, bool *tracked)
{
    NcdmaXlate r = xlate(s, iova, is_write, pa, avail, tracked, false);

    if (r == NCDMA_XLATE_OK) {
        ncdma_cc_note(s, iova, *pa, *avail);
    }
    return r;
}

/*
 * Maintenance names a range, not an access: a mapping with any permission will do (a buffer
 * the device writes may be mapped write-only).  What the device translated before and has not
 * seen unmapped answers first, so maintaining a buffer the device used never asks the vIOMMU.
 */
NcdmaXlate ncdma_translate_any(NcdmaState *s, uint64_t iova, uint64_t *pa, uint64_t *avail)
{
    LiveMap probe = { .iova = iova, .last = iova };
    LiveMap *m = ncdma_iommu_active(s) ? g_tree_lookup(s->live_tree, &probe) : NULL;
    bool tracked;

    if (m) {
        *pa = m->pa + (iova - m->iova);
        *avail = m->last - iova == UINT64_MAX ? UINT64_MAX : m->last - iova + 1;
        return NCDMA_XLATE_OK;
    }
    if (xlate(s, iova, true, pa, avail, &tracked, true) == NCDMA_XLATE_OK) {
        return NCDMA_XLATE_OK;
    }
    return xlate(s, iova, false, pa, avail, &tracked, false);
}

typedef struct SaveCtx {
    GArray *words;
} SaveCtx;

static gboolean save_live(gpointer key, gpointer value, gpointer opaque)
{
    LiveMap *m = value;
    SaveCtx *ctx = opaque;

    g_array_append_val(ctx->words, m->iova);
    g_array_append_val(ctx->words, m->last);
    g_array_append_val(ctx->words, m->pa);
    return FALSE;
}

static void save_seen(gpointer key, gpointer value, gpointer opaque)
{
    uint64_t *k = key;
    SaveCtx *ctx = opaque;

    g_array_append_vals(ctx->words, k, 2);
}

uint32_t ncdma_iommu_save(NcdmaState *s, uint64_t **out)
{
    SaveCtx ctx = { .words = g_array_new(FALSE, FALSE, sizeof(uint64_t)) };
    uint64_t n = s->live_count;

    g_array_append_val(ctx.words, n);
    g_tree_foreach(s->live_tree, save_live, &ctx);
    g_hash_table_foreach(s->seen_maps, save_seen, &ctx);
    n = ctx.words->len;
    *out = (uint64_t *)g_array_free(ctx.words, FALSE);
    return n;
}

void ncdma_iommu_load(NcdmaState *s, const uint64_t *buf, uint32_t nwords)
{
    uint64_t nlive, i;

    live_clear(s);
    g_hash_table_remove_all(s->seen_maps);
    if (!nwords) {
        return;
    }
    nlive = MIN(buf[0], (nwords - 1) / 3);
    for (i = 0; i < nlive; i++) {
        const uint64_t *w = &buf[1 + i * 3];
        live_insert(s, w[0], w[1], w[2]);
    }
    for (i = 1 + nlive * 3; i + 1 < nwords; i += 2) {
        seen_add(s, buf[i], buf[i + 1]);
    }
}
