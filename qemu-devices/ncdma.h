/*
 * ncdma: a noncoherent DMA engine (PCIe endpoint, MSI-X) with a device
 * write-back cache, a device IOTLB and IOMMU map/unmap accounting.
 * docs/ncdma.md describes the programming model.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef NCDMA_H
#define NCDMA_H

#include "hw/pci/pci_device.h"
#include "exec/memory.h"
#include "qom/object.h"
#include "ncdma-hw.h"
#include "devcache.h"
#include "cpucache.h"
#include "devtlb.h"
#include "dring.h"
#include "physwin.h"

#define TYPE_NCDMA "ncdma"
OBJECT_DECLARE_SIMPLE_TYPE(NcdmaState, NCDMA)

typedef struct NcdmaViolation {
    uint64_t seq;
    uint64_t cookie;
    uint64_t iova;
    uint64_t pa;
    uint64_t line_pa;
    uint32_t kind;
    uint32_t ndiff;
    uint32_t nevidence;
    uint32_t pad;
    uint8_t expected[DEVCACHE_EVIDENCE];
    uint8_t actual[DEVCACHE_EVIDENCE];
} NcdmaViolation;

typedef struct NcdmaSegment {
    uint64_t iova;
    uint64_t pa;
    uint64_t len;
    uint32_t is_write;
    uint32_t pad;
} NcdmaSegment;

typedef struct NcdmaTransaction {
    uint64_t seq;
    uint64_t cookie;
    uint64_t src;
    uint64_t dst;
    uint64_t len;
    uint64_t done;
    uint32_t opcode;
    uint32_t flags;
    uint32_t status;
    uint32_t nsegs;
    uint32_t segs_dropped;
    uint32_t pad;
} NcdmaTransaction;

typedef struct NcdmaNotifier {
    IOMMUNotifier n;
    struct NcdmaState *s;
    IOMMUMemoryRegion *mr;
    hwaddr offset;   /* IOVA of the region's offset 0 in the device's address space */
    QLIST_ENTRY(NcdmaNotifier) next;
} NcdmaNotifier;

struct NcdmaState {
    PCIDevice parent_obj;

    MemoryRegion mmio;
    QEMUBH *bh;

    /* Properties */
    bool coherent;
    uint32_t line_size;
    uint32_t cache_size;
    uint32_t cache_ways;
    uint32_t iotlb_entries;
    uint32_t max_xfer;
    uint32_t vlog_size;
    uint32_t xlog_size;
    uint32_t xlog_segs;

    /* Registers */
    uint32_t ctrl;
    uint32_t error;
    uint32_t irq_status;
    uint64_t ring_base;
    uint32_t ring_size;
    uint32_t completed;
    bool ring_error;
    DescRing ring;  /* latched from the registers at ENABLE */

    uint64_t counters[NCDMA_NR_COUNTERS];
    DevCacheStats cstats;
    DevCache cache;
    uint32_t cache_bytes;     /* size of cache.data and cache.snap, for VMState */
    DevTlb tlb;
    PhysWin win;

    /* IOMMU accounting */
    MemoryListener listener;
    bool listening;
    Notifier machine_done;
    QLIST_HEAD(, NcdmaNotifier) notifiers;
    uint32_t iommu_sections;  /* IOMMU regions seen in our address space */
    bool degraded;            /* a notifier could only get UNMAP */
    bool replaying;
    GTree *live_tree;         /* translations used and not unmapped since */
    void *live_last;          /* the entry of live_tree found last; NULL when it changed */
    uint32_t live_count;
    GHashTable *seen_maps;    /* (iova, size) of every MAP, for remap counting */

    /* Logs, rings of fixed size; *_seq counts everything ever logged */
    NcdmaViolation *vlog;
    uint64_t vlog_seq;
    NcdmaTransaction *xlog;
    NcdmaSegment *xsegs;
    uint64_t xlog_seq;

    uint8_t *bounce;          /* one NCDMA_CHUNK, for pieces that are not plain RAM */
    uint8_t *blob;            /* VMState of what has no fixed layout, see ncdma_pre_save */
    uint32_t blob_len;

    /* The descriptor being executed */
    uint64_t cur_cookie;
    NcdmaTransaction *cur_tx;
    int32_t cur_last_seg[2];  /* index of the last read and write segment of cur_tx */

    /* For the CPU cache model's reports: who rang the doorbell, recent translations */
    CpuCacheWho cc_who;
    struct { uint64_t iova, pa, len; } cc_recent[2];
    unsigned cc_next;
};

/* ncdma-iommu.c */
typedef enum NcdmaXlate {
    NCDMA_XLATE_OK,
    NCDMA_XLATE_FAULT,
    NCDMA_XLATE_BUS_ERROR,
} NcdmaXlate;

void ncdma_iommu_realize(NcdmaState *s);
void ncdma_iommu_unrealize(NcdmaState *s);
void ncdma_iommu_reset(NcdmaState *s);
bool ncdma_iommu_active(NcdmaState *s);
NcdmaXlate ncdma_translate(NcdmaState *s, uint64_t iova, bool is_write,
                           uint64_t *pa, uint64_t *avail, bool *tracked);
/* For cache maintenance: any permission will do. */
NcdmaXlate ncdma_translate_any(NcdmaState *s, uint64_t iova, uint64_t *pa, uint64_t *avail);
bool ncdma_still_mapped(void *opaque, uint64_t iova, uint64_t pa);
void ncdma_cc_note(NcdmaState *s, uint64_t iova, uint64_t pa, uint64_t len);
/* Flatten/restore the mapping trackers for VMState. */
uint32_t ncdma_iommu_save(NcdmaState *s, uint64_t **out);
void ncdma_iommu_load(NcdmaState *s, const uint64_t *buf, uint32_t nwords);

#endif
