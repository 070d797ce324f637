/*
 * CPU-side cache model for a noncoherent platform (docs/cpu-cache-model.md).
 *
 * Guest RAM is the CPU's cached view. The model adds what memory holds
 * behind the caches (DRAM) and what the CPU's cache held at its last clean
 * or invalidate of each line (SYNC, to tell dirty lines from stale ones).
 * Cache maintenance to the point of coherency moves lines between the two;
 * Non-cacheable CPU accesses and noncoherent DMA masters see DRAM. The cache
 * never evicts, so a missing clean or invalidate is always visible.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef DMALAB_CPUCACHE_H
#define DMALAB_CPUCACHE_H

#include "exec/memory.h"
#include "hw/resettable.h"
#include "qom/object.h"

#define TYPE_DMALAB_CPUCACHE "dmalab-cpucache"
OBJECT_DECLARE_SIMPLE_TYPE(CpuCache, DMALAB_CPUCACHE)

#define CPUCACHE_LINE 64
#define CPUCACHE_LOG_LEN 256

typedef enum CpuCacheMaint {
    CPUCACHE_CLEAN = 1,
    CPUCACHE_INVALIDATE = 2,
    CPUCACHE_CLEAN_INVALIDATE = 3,
} CpuCacheMaint;

typedef enum CpuCacheKind {
    CPUCACHE_DEVICE_READ_STALE,
    CPUCACHE_CPU_READ_STALE,
    CPUCACHE_CPU_WRITE_LOST,
    CPUCACHE_CPU_CLOBBER,
    CPUCACHE_NKINDS,
} CpuCacheKind;

#define CPUCACHE_FRAMES 8

/* A vCPU and where it was: the guest PC, the link register, then frame records. */
typedef struct CpuCacheWho {
    int32_t vcpu;           /* -1 when unknown */
    uint32_t context;       /* CONTEXTIDR_EL1: the task's PID under Linux */
    uint64_t frames[CPUCACHE_FRAMES];   /* frames[0]: the PC; unused ones 0 */
} CpuCacheWho;

/* Who made an access: a vCPU, or a DMA master on behalf of the vCPU that rang it. */
typedef struct CpuCacheOrigin {
    const char *master;     /* "cpu" or the device's id */
    CpuCacheWho who;
    uint64_t iova;          /* IOVA of @pa_base, UINT64_MAX when none */
    uint64_t pa_base;
} CpuCacheOrigin;

typedef struct CpuCacheEvent {
    uint64_t seq;
    CpuCacheKind kind;
    char master[24];
    CpuCacheWho who;
    uint64_t pa;            /* the line */
    uint64_t iova;
    uint32_t differing;
    uint8_t expected[CPUCACHE_LINE];
    uint8_t actual[CPUCACHE_LINE];
} CpuCacheEvent;

/* Fills @who's frames and context: where @cs is (at the I/O access in progress when @io). */
typedef void (*CpuCacheFrames)(CPUState *cs, bool io, CpuCacheWho *who);

struct CpuCache {
    Object parent_obj;
    ResettableState reset_state;

    MemoryRegion *ram;          /* the CPU copy */
    hwaddr ram_base;
    uint64_t ram_size;
    CpuCacheFrames frames;

    MemoryRegion dram;
    MemoryRegion sync;
    uint8_t *dram_ptr, *sync_ptr, *cpu_ptr;

    MemoryRegion cpu_root;      /* what the vCPUs' page walks and TLB see */
    MemoryRegion cpu_sys;
    MemoryRegion cpu_dram;
    MemoryRegion cpu_trap;
    MemoryRegion dma_root;      /* what noncoherent DMA masters see */
    MemoryRegion dma_sys;
    MemoryRegion dma_dram;
    AddressSpace dma_as;

    QemuMutex lock;
    int32_t nlines;
    unsigned long *dev_written; /* device wrote the line since the CPU's last invalidate */
    unsigned long *zeroed;      /* DC ZVA zeroed it since the CPU's last clean or invalidate */
    unsigned long *reported;    /* CPU_READ_STALE already logged for it */
    uint16_t *page_trapped;     /* per page: lines with dev_written set */

    uint64_t counters[CPUCACHE_NKINDS];
    uint64_t cleans, invalidates, lines_cleaned, lines_invalidated;
    uint64_t dma_bytes_read, dma_bytes_written;
    uint64_t seq, dropped;
    uint32_t log_head, log_count;
    uint8_t *diff;              /* DRAM and SYNC as saved (cpucache_pre_save) */
    uint32_t diff_len;
    bool diff_too_big;
    uint64_t saved_id;          /* the saved state's number */
    uint8_t *reset_ptr;         /* RAM as the first reset found it: what QEMU loaded */
    uint64_t reset_sum;         /* its fingerprint */
    uint64_t saved_reset_sum;   /* that of the machine that saved the state */
    uint64_t synced;            /* the number of the state in memory, 0 when none */
    unsigned long *touched;     /* pages whose DRAM or SYNC changed since */
    uint64_t rebuilt_pages;     /* by the last load */
    bool filled;                /* DRAM and SYNC were written since they were allocated */
    CpuCacheEvent log[CPUCACHE_LOG_LEN];
};

/* The machine's model, NULL when the platform is coherent. */
extern CpuCache *cpucache;

CpuCache *cpucache_create(Object *machine, MemoryRegion *sysmem, MemoryRegion *ram,
                          hwaddr ram_base, Error **errp);
MemoryRegion *cpucache_cpu_memory(CpuCache *c);
AddressSpace *cpucache_dma_as(CpuCache *c);

/* TLB fill: where a vCPU's access to @pa goes. */
hwaddr cpucache_tlb_target(CpuCache *c, hwaddr pa, bool cacheable, bool fetch);
/* The guest physical address behind a TLB target. */
hwaddr cpucache_guest_pa(CpuCache *c, hwaddr target);
/* DC CVAC/CVAP/IVAC/CIVAC on [pa, pa + len). True when a page stopped being trapped. */
bool cpucache_maintain(CpuCache *c, hwaddr pa, uint64_t len, CpuCacheMaint op,
                       const CpuCacheWho *who);
/* A noncoherent DMA master is about to access [pa, pa + len) of DRAM. */
void cpucache_dma(CpuCache *c, const CpuCacheOrigin *o, hwaddr pa, uint64_t len,
                  bool is_write);
/* DC ZVA zeroed [@host, @host + len) of some RAM: dirty lines, if the CPU's copy. */
void cpucache_zeroed(CpuCache *c, void *host, uint64_t len);
/* The same through the trapping view: [@pa, @pa + len) of the CPU's copy. */
void cpucache_zeroed_pa(CpuCache *c, hwaddr pa, uint64_t len);
/* Where @cs is (NULL: no vCPU); with @io, at the I/O access in progress (a doorbell). */
void cpucache_who(CpuCache *c, CPUState *cs, bool io, CpuCacheWho *who);

#endif
