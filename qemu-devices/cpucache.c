/*
 * CPU-side cache model for a noncoherent platform (see cpucache.h and
 * docs/cpu-cache-model.md).
 *
 * Three copies of guest RAM, line by line:
 *   CPU   guest RAM itself: what cacheable CPU accesses and page walks see;
 *   DRAM  what memory holds: Non-cacheable CPU accesses, noncoherent DMA;
 *   SYNC  the CPU's line as of its last clean or invalidate, so that a line
 *         the CPU wrote (CPU != SYNC) is told from one that is only stale.
 * A line DC ZVA zeroed is dirty too, even where it held zeros (the zeroed
 * bitmap): the kernel clears pages that way, then hands some to devices.
 * A clean writes a dirty line back (CPU -> DRAM); an invalidate drops the
 * line (DRAM -> CPU). Both happen under one lock, so a line moves whole
 * with respect to DMA bookkeeping and other vCPUs.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qemu/bitmap.h"
#include "qemu/bswap.h"
#include "qemu/cutils.h"
#include "qemu/lockable.h"
#include "qemu/error-report.h"
#include "qapi/error.h"
#include "qapi/visitor.h"
#include "exec/address-spaces.h"
#include "exec/cputlb.h"
#include "hw/core/cpu.h"
#include "migration/vmstate.h"
#include "system/reset.h"
#include "system/runstate.h"
#include "cpucache.h"

/*
 * The vCPUs reach DRAM and the trapping view through windows far above any
 * physical address a guest can form (the TLB holds the window address; the
 * page walk still checks the guest's own output size).
 */
#define CPUCACHE_DRAM_WINDOW (1ULL << 60)
#define CPUCACHE_TRAP_WINDOW (2ULL << 60)
#define CPUCACHE_PAGE 4096

CpuCache *cpucache;

static const char *const kind_names[CPUCACHE_NKINDS] = {
    [CPUCACHE_DEVICE_READ_STALE] = "DEVICE_READ_STALE",
    [CPUCACHE_CPU_READ_STALE] = "CPU_READ_STALE",
    [CPUCACHE_CPU_WRITE_LOST] = "CPU_WRITE_LOST",
    [CPUCACHE_CPU_CLOBBER] = "CPU_CLOBBER",
};

static inline uint8_t *line_of(uint8_t *base, int64_t l)
{
    return base + l * CPUCACHE_LINE;
}

/* DRAM or SYNC of the line's page is about to change (see cpucache_post_load()). */
static inline void touch(CpuCache *c, int64_t l)
{
    set_bit(l / (CPUCACHE_PAGE / CPUCACHE_LINE), c->touched);
}

static inline bool in_ram(CpuCache *c, hwaddr pa)
{
    return pa - c->ram_base < c->ram_size;
}

static void record(CpuCache *c, CpuCacheKind kind, const CpuCacheOrigin *o,
                   int64_t l, const uint8_t *expected, const uint8_t *actual)
{
    CpuCacheEvent *e;
    uint64_t line_pa = c->ram_base + l * CPUCACHE_LINE;
    unsigned i;

    c->counters[kind]++;
    if (c->log_count == CPUCACHE_LOG_LEN) {
        c->dropped++;
        return;
    }
    e = &c->log[(c->log_head + c->log_count++) % CPUCACHE_LOG_LEN];
    memset(e, 0, sizeof(*e));
    e->seq = ++c->seq;
    e->kind = kind;
    pstrcpy(e->master, sizeof(e->master), o->master);
    e->who = o->who;
    e->pa = line_pa;
    e->iova = UINT64_MAX;
    if (o->iova != UINT64_MAX && line_pa >= o->pa_base) {
        e->iova = o->iova + (line_pa - o->pa_base);
    }
    memcpy(e->expected, expected, CPUCACHE_LINE);
    memcpy(e->actual, actual, CPUCACHE_LINE);
    for (i = 0; i < CPUCACHE_LINE; i++) {
        e->differing += expected[i] != actual[i];
    }
}

/* Writes through the address spaces, so translated code and dirty logs follow. */
static void write_cpu_line(CpuCache *c, int64_t l, const uint8_t *buf)
{
    address_space_write(&address_space_memory, c->ram_base + l * CPUCACHE_LINE,
                        MEMTXATTRS_UNSPECIFIED, buf, CPUCACHE_LINE);
}

static void write_dram_line(CpuCache *c, int64_t l, const uint8_t *buf)
{
    address_space_write(&c->dma_as, c->ram_base + l * CPUCACHE_LINE,
                        MEMTXATTRS_UNSPECIFIED, buf, CPUCACHE_LINE);
}

/*
 * Whether the CPU wrote the line since its last clean or invalidate: its bytes
 * changed, or DC ZVA zeroed it (a store we see, so exactly: over zeros too).
 */
static bool dirty(const uint8_t *cpu, const uint8_t *sync, bool zeroed)
{
    return zeroed || memcmp(cpu, sync, CPUCACHE_LINE);
}

/*
 * Clears the line's DC ZVA mark, returning it. Before the line is copied: a
 * DC ZVA racing on another vCPU then leaves its mark for the next time.
 */
static bool take_zeroed(CpuCache *c, int64_t l)
{
    unsigned long mask = BIT_MASK(l);

    return qatomic_fetch_and(&c->zeroed[BIT_WORD(l)], ~mask) & mask;
}

static void clean_line(CpuCache *c, int64_t l, const CpuCacheOrigin *o)
{
    uint8_t cpu[CPUCACHE_LINE];
    uint8_t *sync = line_of(c->sync_ptr, l);
    uint8_t *dram = line_of(c->dram_ptr, l);

    bool zeroed = take_zeroed(c, l);

    memcpy(cpu, line_of(c->cpu_ptr, l), CPUCACHE_LINE);
    if (!dirty(cpu, sync, zeroed)) {
        return;     /* not dirty: a clean writes nothing back */
    }
    if (test_bit(l, c->dev_written) && memcmp(dram, sync, CPUCACHE_LINE)) {
        record(c, CPUCACHE_CPU_CLOBBER, o, l, dram, cpu);
    }
    touch(c, l);
    write_dram_line(c, l, cpu);
    memcpy(sync, cpu, CPUCACHE_LINE);
    c->lines_cleaned++;
}

/* Returns true when the line's page no longer holds device-written lines. */
static bool invalidate_line(CpuCache *c, int64_t l, const CpuCacheOrigin *o)
{
    uint8_t cpu[CPUCACHE_LINE], dram[CPUCACHE_LINE];
    uint8_t *sync = line_of(c->sync_ptr, l);
    int64_t page = l / (CPUCACHE_PAGE / CPUCACHE_LINE);

    bool zeroed = take_zeroed(c, l);

    memcpy(cpu, line_of(c->cpu_ptr, l), CPUCACHE_LINE);
    memcpy(dram, line_of(c->dram_ptr, l), CPUCACHE_LINE);
    if (dirty(cpu, sync, zeroed)) {
        record(c, CPUCACHE_CPU_WRITE_LOST, o, l, cpu, dram);
    }
    if (memcmp(cpu, dram, CPUCACHE_LINE)) {
        write_cpu_line(c, l, dram);
    }
    touch(c, l);
    memcpy(sync, dram, CPUCACHE_LINE);
    c->lines_invalidated++;
    clear_bit(l, c->reported);
    if (test_and_clear_bit(l, c->dev_written)) {
        return --c->page_trapped[page] == 0;
    }
    return false;
}

bool cpucache_maintain(CpuCache *c, hwaddr pa, uint64_t len, CpuCacheMaint op,
                       const CpuCacheWho *who)
{
    CpuCacheOrigin o = { .master = "cpu", .who = *who, .iova = UINT64_MAX };
    bool untrapped = false;
    int64_t l, first, last;

    if (!len || !in_ram(c, pa)) {
        return false;
    }
    len = MIN(len, c->ram_size - (pa - c->ram_base));
    first = (pa - c->ram_base) / CPUCACHE_LINE;
    last = (pa - c->ram_base + len - 1) / CPUCACHE_LINE;

    QEMU_LOCK_GUARD(&c->lock);
    if (op & CPUCACHE_CLEAN) {
        c->cleans++;
    }
    if (op & CPUCACHE_INVALIDATE) {
        c->invalidates++;
    }
    for (l = first; l <= last; l++) {
        if (op & CPUCACHE_CLEAN) {
            clean_line(c, l, &o);
        }
        if (op & CPUCACHE_INVALIDATE) {
            untrapped |= invalidate_line(c, l, &o);
        }
    }
    return untrapped;
}

static void flush_work(CPUState *cs, run_on_cpu_data data)
{
    tlb_flush(cs);
}

void cpucache_dma(CpuCache *c, const CpuCacheOrigin *o, hwaddr pa, uint64_t len,
                  bool is_write)
{
    bool newly_trapped = false;
    int64_t l, first, last;
    CPUState *cs;

    if (!len || !in_ram(c, pa)) {
        return;
    }
    len = MIN(len, c->ram_size - (pa - c->ram_base));
    first = (pa - c->ram_base) / CPUCACHE_LINE;
    last = (pa - c->ram_base + len - 1) / CPUCACHE_LINE;

    WITH_QEMU_LOCK_GUARD(&c->lock) {
        if (is_write) {
            c->dma_bytes_written += len;
        } else {
            c->dma_bytes_read += len;
        }
        for (l = first; l <= last; l++) {
            uint8_t *cpu = line_of(c->cpu_ptr, l);

            if (is_write) {
                touch(c, l);
                if (!test_and_set_bit(l, c->dev_written)) {
                    newly_trapped |= c->page_trapped[l / (CPUCACHE_PAGE / CPUCACHE_LINE)]++ == 0;
                }
            } else if (dirty(cpu, line_of(c->sync_ptr, l), test_bit(l, c->zeroed))) {
                record(c, CPUCACHE_DEVICE_READ_STALE, o, l, cpu, line_of(c->dram_ptr, l));
            }
        }
    }
    /*
     * Cacheable reads of the page must now take the trapping view. A vCPU's
     * TLB is its own thread's to flush: the flush is queued work, which runs
     * when the vCPU is kicked out of its translation blocks, before it takes
     * the DMA's interrupt.
     */
    if (newly_trapped) {
        CPU_FOREACH(cs) {
            async_run_on_cpu(cs, flush_work, RUN_ON_CPU_NULL);
        }
    }
}

void cpucache_zeroed(CpuCache *c, void *host, uint64_t len)
{
    /* A Non-cacheable mapping's zeros are in memory already: only the CPU's copy counts. */
    cpucache_zeroed_pa(c, c->ram_base + ((uintptr_t)host - (uintptr_t)c->cpu_ptr), len);
}

void cpucache_zeroed_pa(CpuCache *c, hwaddr pa, uint64_t len)
{
    uint64_t off = pa - c->ram_base, l;

    if (!len || off >= c->ram_size || len > c->ram_size - off) {
        return;
    }
    /* The vCPU's own thread, without the lock: a bit per line, set atomically. */
    for (l = off / CPUCACHE_LINE; l <= (off + len - 1) / CPUCACHE_LINE; l++) {
        if (!test_bit(l, c->zeroed)) {  /* pages are zeroed again and again */
            set_bit_atomic(l, c->zeroed);
        }
    }
}

void cpucache_who(CpuCache *c, CPUState *cs, bool io, CpuCacheWho *who)
{
    memset(who, 0, sizeof(*who));
    who->vcpu = cs ? cs->cpu_index : -1;
    if (cs && c->frames) {
        c->frames(cs, io, who);
    }
}

hwaddr cpucache_tlb_target(CpuCache *c, hwaddr pa, bool cacheable, bool fetch)
{
    if (!in_ram(c, pa)) {
        return pa;
    }
    if (!cacheable) {
        return pa + CPUCACHE_DRAM_WINDOW;
    }
    if (!fetch && qatomic_read(&c->page_trapped[(pa - c->ram_base) / CPUCACHE_PAGE])) {
        return pa + CPUCACHE_TRAP_WINDOW;
    }
    return pa;
}

hwaddr cpucache_guest_pa(CpuCache *c, hwaddr target)
{
    if (target >= CPUCACHE_TRAP_WINDOW) {
        return target - CPUCACHE_TRAP_WINDOW;
    }
    if (target >= CPUCACHE_DRAM_WINDOW) {
        return target - CPUCACHE_DRAM_WINDOW;
    }
    return target;
}

/* Cacheable CPU accesses to pages holding device-written lines. */

static MemTxResult trap_read(void *opaque, hwaddr addr, uint64_t *data,
                             unsigned size, MemTxAttrs attrs)
{
    CpuCache *c = opaque;
    CpuCacheOrigin o = { .master = "cpu", .iova = UINT64_MAX };
    int64_t l;

    if (addr + size > c->ram_size) {
        return MEMTX_DECODE_ERROR;
    }
    cpucache_who(c, current_cpu, true, &o.who);
    WITH_QEMU_LOCK_GUARD(&c->lock) {
        for (l = addr / CPUCACHE_LINE; l <= (addr + size - 1) / CPUCACHE_LINE; l++) {
            uint8_t *cpu = line_of(c->cpu_ptr, l), *dram = line_of(c->dram_ptr, l);

            if (test_bit(l, c->dev_written) && !test_bit(l, c->reported) &&
                memcmp(cpu, dram, CPUCACHE_LINE)) {
                set_bit(l, c->reported);
                record(c, CPUCACHE_CPU_READ_STALE, &o, l, dram, cpu);
            }
        }
    }
    *data = ldn_le_p(c->cpu_ptr + addr, size);
    return MEMTX_OK;
}

static MemTxResult trap_write(void *opaque, hwaddr addr, uint64_t data,
                              unsigned size, MemTxAttrs attrs)
{
    CpuCache *c = opaque;
    uint8_t buf[8];

    if (addr + size > c->ram_size) {
        return MEMTX_DECODE_ERROR;
    }
    stn_le_p(buf, size, data);
    return address_space_write(&address_space_memory, c->ram_base + addr, attrs, buf, size);
}

static const MemoryRegionOps trap_ops = {
    .read_with_attrs = trap_read,
    .write_with_attrs = trap_write,
    .endianness = DEVICE_LITTLE_ENDIAN,
    .valid = { .min_access_size = 1, .max_access_size = 8, .unaligned = true },
    .impl = { .min_access_size = 1, .max_access_size = 8, .unaligned = true },
};

/* Reset: memory starts equal to what QEMU loaded (kernel, DTB, boot code). */

/* A fingerprint of what QEMU loaded: a snapshot's RESET runs need the same. */
static uint64_t page_sum(uint64_t h, uint64_t off, const uint8_t *page)
{
    unsigned i;

    h = (h ^ off) * 0x100000001b3ULL;
    for (i = 0; i < CPUCACHE_PAGE; i += 8) {
        h = (h ^ ldq_le_p(page + i)) * 0x100000001b3ULL;
    }
    return h;
}

/*
 * The first reset also keeps what QEMU loaded (the kernel, initramfs and DTB
 * on otherwise zero RAM): the snapshots' RESET runs refer to it. Later resets
 * find whatever RAM held before; they leave it.
 */
static void fill_from_ram(CpuCache *c)
{
    uint8_t *copies[] = { c->dram_ptr, c->sync_ptr, c->reset_ptr };
    unsigned i, ncopies = c->filled ? 2 : 3;
    uint64_t off, sum = 0xcbf29ce484222325ULL;

    for (off = 0; off < c->ram_size; off += CPUCACHE_PAGE) {
        const uint8_t *src = c->cpu_ptr + off;

        /* Untouched pages stay uncommitted on the host. */
        if (!buffer_is_zero(src, CPUCACHE_PAGE)) {
            for (i = 0; i < ncopies; i++) {
                memcpy(copies[i] + off, src, CPUCACHE_PAGE);
            }
            if (!c->filled) {
                sum = page_sum(sum, off, src);
            }
        } else if (c->filled) {
            for (i = 0; i < ncopies; i++) {
                if (!buffer_is_zero(copies[i] + off, CPUCACHE_PAGE)) {
                    memset(copies[i] + off, 0, CPUCACHE_PAGE);
                }
            }
        }
    }
    if (!c->filled) {
        c->reset_sum = sum;
    }
    c->filled = true;   /* before, all copies were all zero */
}

static ResettableState *cpucache_get_reset_state(Object *obj)
{
    return &DMALAB_CPUCACHE(obj)->reset_state;
}

/* Exit phase: after the ROM loader has written RAM in the hold phase. */
static void cpucache_reset_exit(Object *obj, ResetType type)
{
    CpuCache *c = DMALAB_CPUCACHE(obj);

    if (type == RESET_TYPE_SNAPSHOT_LOAD) {
        return;     /* the snapshot brings all three copies */
    }
    QEMU_LOCK_GUARD(&c->lock);
    fill_from_ram(c);
    c->synced = 0;
    bitmap_zero(c->dev_written, c->nlines);
    bitmap_zero(c->reported, c->nlines);
    bitmap_zero(c->zeroed, c->nlines);
    memset(c->page_trapped, 0, c->ram_size / CPUCACHE_PAGE * sizeof(uint16_t));
    memset(c->counters, 0, sizeof(c->counters));
    c->cleans = c->invalidates = c->lines_cleaned = c->lines_invalidated = 0;
    c->dma_bytes_read = c->dma_bytes_written = 0;
    c->log_head = c->log_count = 0;
    c->dropped = 0;
}

/*
 * Migration. DRAM and SYNC are not RAM blocks of the stream: saved whole
 * they would triple every snapshot, and a snapshot is restored before each
 * test. They are saved as differences instead, DRAM against the CPU copy
 * (lines the CPU wrote and never cleaned), SYNC against DRAM (lines a
 * device or a Non-cacheable access wrote since the CPU's last maintenance),
 * in runs of lines; a run whose lines are all zero carries no bytes, nor
 * does a run of DRAM lines still as QEMU loaded them (the kernel and
 * initramfs the CPU has since overwritten: most of a booted machine's
 * difference), which the model keeps a copy of. RAM is loaded before any
 * device state, so post_load rebuilds both from it (under postcopy the
 * rebuild's reads fetch the pages it needs, one at a time).
 *
 * Each save is numbered. Loading the state this process last saved or
 * loaded rebuilds only the pages whose DRAM or SYNC changed since: those
 * the model wrote (touch()) and those written through the memory API or by
 * translated code (DRAM's dirty log). Any other load rebuilds every page.
 */

enum {
    DIFF_DRAM = 0,          /* run of DRAM lines that differ from CPU */
    DIFF_SYNC = 1,          /* run of SYNC lines that differ from DRAM */
    DIFF_ZERO = 2,          /* ... all zero: no bytes follow */
    DIFF_RESET = 4,         /* ... DRAM as QEMU loaded it: no bytes follow */
    DIFF_HDR = 12,          /* le32 first line, le32 count, le32 flags */
};

/* QEMU migrates a buffer's length as an int32_t. */
#define DIFF_MAX INT32_MAX

static void diff_put_run(CpuCache *c, GByteArray *out, const uint8_t *src, int64_t first,
                         int64_t count, uint32_t flags)
{
    uint64_t bytes = flags & (DIFF_ZERO | DIFF_RESET) ? 0 : count * CPUCACHE_LINE;
    uint8_t hdr[DIFF_HDR];

    if (c->diff_too_big || out->len + DIFF_HDR + bytes > DIFF_MAX) {
        c->diff_too_big = true;
        return;
    }
    stl_le_p(hdr, first);
    stl_le_p(hdr + 4, count);
    stl_le_p(hdr + 8, flags);
    g_byte_array_append(out, hdr, sizeof(hdr));
    if (bytes) {
        g_byte_array_append(out, line_of((uint8_t *)src, first), bytes);
    }
}

/*
 * Appends the runs of lines where @src differs from @base. Runs of DRAM lines
 * as QEMU loaded them only go into snapshots (savevm): a QEMU started for an
 * incoming migration loads nothing at reset, and virt's device tree carries
 * random seeds, so another process may hold another image.
 */
static void diff_encode(CpuCache *c, GByteArray *out, const uint8_t *src,
                        const uint8_t *base, uint32_t which)
{
    bool reset_runs = which == DIFF_DRAM && runstate_check(RUN_STATE_SAVE_VM);
    const int64_t per_page = CPUCACHE_PAGE / CPUCACHE_LINE;
    int64_t l, first = -1;
    uint32_t flags = 0;

    for (l = 0; l < c->nlines; l++) {
        const uint8_t *s = src + l * CPUCACHE_LINE;
        uint32_t f;

        if (l % per_page == 0 && first < 0 &&
            !memcmp(s, base + l * CPUCACHE_LINE, CPUCACHE_PAGE)) {
            l += per_page - 1;
            continue;
        }
        if (!memcmp(s, base + l * CPUCACHE_LINE, CPUCACHE_LINE)) {
            f = UINT32_MAX;
        } else if (buffer_is_zero(s, CPUCACHE_LINE)) {
            f = which | DIFF_ZERO;
        } else if (reset_runs && !memcmp(s, line_of(c->reset_ptr, l), CPUCACHE_LINE)) {
            f = DIFF_RESET;
        } else {
            f = which;
        }
        if (first >= 0 && f != flags) {
            diff_put_run(c, out, src, first, l - first, flags);
            first = -1;
        }
        if (first < 0 && f != UINT32_MAX) {
            first = l;
            flags = f;
        }
    }
    if (first >= 0) {
        diff_put_run(c, out, src, first, l - first, flags);
    }
}

/* dst = base over [from, to) lines, writing only pages that differ. */
static void diff_copy_gap(uint8_t *dst, const uint8_t *base, int64_t from, int64_t to)
{
    uint64_t off = from * CPUCACHE_LINE, end = to * CPUCACHE_LINE;

    while (off < end) {
        uint64_t n = MIN(end - off, CPUCACHE_PAGE - off % CPUCACHE_PAGE);

        if (memcmp(dst + off, base + off, n)) {
            memcpy(dst + off, base + off, n);
        }
        off += n;
    }
}

/*
 * Rebuilds the @which copy @dst as @base plus its saved runs: every page, or
 * only the pages set in @only.
 */
static int diff_apply(CpuCache *c, uint8_t *dst, const uint8_t *base, uint32_t which,
                      const unsigned long *only)
{
    const int64_t per_page = CPUCACHE_PAGE / CPUCACHE_LINE;
    const int64_t npages = c->nlines / per_page;
    const uint8_t *p = c->diff, *end = c->diff + c->diff_len;
    int64_t next = 0, l, pg;

    if (only) {
        for (pg = find_first_bit(only, npages); pg < npages;
             pg = find_next_bit(only, npages, pg + 1)) {
            memcpy(dst + pg * CPUCACHE_PAGE, base + pg * CPUCACHE_PAGE, CPUCACHE_PAGE);
        }
    }
    while (p < end) {
        uint64_t first, count, bytes;
        uint32_t flags;

        if (end - p < DIFF_HDR) {
            return -EINVAL;
        }
        first = ldl_le_p(p);
        count = ldl_le_p(p + 4);
        flags = ldl_le_p(p + 8);
        p += DIFF_HDR;
        bytes = flags & (DIFF_ZERO | DIFF_RESET) ? 0 : count * CPUCACHE_LINE;
        if (flags & ~(uint32_t)(DIFF_SYNC | DIFF_ZERO | DIFF_RESET) || !count ||
            first + count > c->nlines || bytes > end - p ||
            ((flags & DIFF_RESET) && flags != DIFF_RESET)) {
            return -EINVAL;
        }
        if ((flags & DIFF_RESET) && c->saved_reset_sum != c->reset_sum) {
            error_report("dmalab-cpucache: the snapshot refers to what QEMU loaded at "
                         "start, and this QEMU loaded something else (other files, or "
                         "a device tree with other random seeds: dtb-randomness=off)");
            return -EINVAL;
        }
        if ((flags & DIFF_SYNC) == which) {
            if (first < next) {
                return -EINVAL;
            }
            if (!only) {
                diff_copy_gap(dst, base, next, first);
            }
            for (l = first; l < first + count; l = (l / per_page + 1) * per_page) {
                int64_t n = MIN(first + count, (l / per_page + 1) * per_page) - l;

                if (only && !test_bit(l / per_page, only)) {
                    continue;
                }
                if (bytes) {
                    memcpy(line_of(dst, l), p + (l - first) * CPUCACHE_LINE,
                           n * CPUCACHE_LINE);
                } else if (flags & DIFF_RESET) {
                    memcpy(line_of(dst, l), line_of(c->reset_ptr, l), n * CPUCACHE_LINE);
                } else {
                    memset(line_of(dst, l), 0, n * CPUCACHE_LINE);
                }
            }
            next = first + count;
        }
        p += bytes;
    }
    if (!only) {
        diff_copy_gap(dst, base, next, c->nlines);
    }
    return 0;
}

/* Adds the pages of DRAM written through the memory API or by translated code. */
static void collect_dirty(CpuCache *c)
{
    DirtyBitmapSnapshot *snap;
    uint64_t pg;

    snap = memory_region_snapshot_and_clear_dirty(&c->dram, 0, c->ram_size,
                                                  DIRTY_MEMORY_VGA);
    for (pg = 0; pg < c->ram_size / CPUCACHE_PAGE; pg++) {
        if (memory_region_snapshot_get_dirty(&c->dram, snap, pg * CPUCACHE_PAGE,
                                             CPUCACHE_PAGE)) {
            set_bit(pg, c->touched);
        }
    }
    g_free(snap);
}

/* What is in memory now is the state numbered @id. */
static void synced_to(CpuCache *c, uint64_t id)
{
    collect_dirty(c);
    bitmap_zero(c->touched, c->ram_size / CPUCACHE_PAGE);
    c->synced = id;
}

static int cpucache_pre_save(void *opaque)
{
    CpuCache *c = opaque;
    GByteArray *out = g_byte_array_new();

    QEMU_LOCK_GUARD(&c->lock);
    c->diff_too_big = false;
    diff_encode(c, out, c->dram_ptr, c->cpu_ptr, DIFF_DRAM);
    diff_encode(c, out, c->sync_ptr, c->dram_ptr, DIFF_SYNC);
    if (c->diff_too_big) {
        g_byte_array_free(out, true);
        error_report("dmalab-cpucache: too many dirty lines to save");
        return -EFBIG;
    }
    c->diff_len = out->len;
    c->diff = g_byte_array_free(out, false);
    c->saved_reset_sum = c->reset_sum;
    c->saved_id = ((uint64_t)g_random_int() << 32 | g_random_int()) | 1;
    synced_to(c, c->saved_id);
    return 0;
}

static int cpucache_post_save(void *opaque)
{
    CpuCache *c = opaque;

    g_clear_pointer(&c->diff, g_free);
    c->diff_len = 0;
    return 0;
}

/* A load that failed before post_load leaves its buffer. */
static int cpucache_pre_load(void *opaque)
{
    return cpucache_post_save(opaque);
}

static bool diff_len_valid(void *opaque, int version_id)
{
    CpuCache *c = opaque;

    return c->diff_len <= MIN(DIFF_MAX, 2 * (uint64_t)c->nlines * (CPUCACHE_LINE + DIFF_HDR));
}

static int cpucache_post_load(void *opaque, int version_id)
{
    CpuCache *c = opaque;
    const unsigned long *only = NULL;
    int64_t l;
    int ret;

    QEMU_LOCK_GUARD(&c->lock);
    c->rebuilt_pages = c->ram_size / CPUCACHE_PAGE;
    if (c->saved_id && c->saved_id == c->synced) {
        collect_dirty(c);
        only = c->touched;
        c->rebuilt_pages = bitmap_count_one(only, c->rebuilt_pages);
    }
    c->filled = true;
    ret = diff_apply(c, c->dram_ptr, c->cpu_ptr, DIFF_DRAM, only);
    if (!ret) {
        ret = diff_apply(c, c->sync_ptr, c->dram_ptr, DIFF_SYNC, only);
    }
    cpucache_post_save(c);
    /* the rebuild's own writes do not count */
    synced_to(c, ret ? 0 : c->saved_id);
    if (ret) {
        error_report("dmalab-cpucache: malformed migration state");
        return ret;
    }
    memset(c->page_trapped, 0, c->ram_size / CPUCACHE_PAGE * sizeof(uint16_t));
    for (l = find_first_bit(c->dev_written, c->nlines); l < c->nlines;
         l = find_next_bit(c->dev_written, c->nlines, l + 1)) {
        c->page_trapped[l / (CPUCACHE_PAGE / CPUCACHE_LINE)]++;
    }
    /* Events stay with the run that saw them; the sequence goes on. */
    c->log_head = c->log_count = 0;
    return 0;
}

static const VMStateDescription vmstate_cpucache = {
    .name = "dmalab-cpucache",
    .version_id = 4,
    .minimum_version_id = 4,
    .pre_save = cpucache_pre_save,
    .post_save = cpucache_post_save,
    .pre_load = cpucache_pre_load,
    .post_load = cpucache_post_load,
    .fields = (const VMStateField[]) {
        VMSTATE_INT32_EQUAL(nlines, CpuCache, NULL),
        VMSTATE_BITMAP(dev_written, CpuCache, 0, nlines),
        VMSTATE_BITMAP(reported, CpuCache, 0, nlines),
        VMSTATE_BITMAP(zeroed, CpuCache, 0, nlines),
        VMSTATE_UINT64_ARRAY(counters, CpuCache, CPUCACHE_NKINDS),
        VMSTATE_UINT64(seq, CpuCache),
        VMSTATE_UINT64(dropped, CpuCache),
        VMSTATE_UINT64(saved_id, CpuCache),
        VMSTATE_UINT64(saved_reset_sum, CpuCache),
        VMSTATE_UINT32(diff_len, CpuCache),
        VMSTATE_VALIDATE("diff_len", diff_len_valid),
        VMSTATE_VBUFFER_ALLOC_UINT32(diff, CpuCache, 0, NULL, diff_len),
        VMSTATE_END_OF_LIST()
    },
};

/* QMP readout: qom-get /machine/cpucache counters | log */

static void get_counters(Object *obj, Visitor *v, const char *name, void *opaque,
                         Error **errp)
{
    CpuCache *c = DMALAB_CPUCACHE(obj);
    uint64_t trapped = 0, vals[CPUCACHE_NKINDS + 10];
    static const char *const names[CPUCACHE_NKINDS + 10] = {
        "device-read-stale", "cpu-read-stale", "cpu-write-lost", "cpu-clobber",
        "cleans", "invalidates", "lines-cleaned", "lines-invalidated",
        "dma-bytes-read", "dma-bytes-written", "log-dropped", "trapped-pages",
        "line-size", "rebuilt-pages",
    };
    unsigned i;

    QEMU_LOCK_GUARD(&c->lock);
    for (i = 0; i < c->ram_size / CPUCACHE_PAGE; i++) {
        trapped += c->page_trapped[i] != 0;
    }
    memcpy(vals, c->counters, sizeof(c->counters));
    i = CPUCACHE_NKINDS;
    vals[i++] = c->cleans;
    vals[i++] = c->invalidates;
    vals[i++] = c->lines_cleaned;
    vals[i++] = c->lines_invalidated;
    vals[i++] = c->dma_bytes_read;
    vals[i++] = c->dma_bytes_written;
    vals[i++] = c->dropped;
    vals[i++] = trapped;
    vals[i++] = CPUCACHE_LINE;
    vals[i++] = c->rebuilt_pages;
    if (!visit_start_struct(v, name, NULL, 0, errp)) {
        return;
    }
    for (i = 0; i < ARRAY_SIZE(vals); i++) {
        if (!visit_type_uint64(v, names[i], &vals[i], errp)) {
            break;
        }
    }
    if (i == ARRAY_SIZE(vals)) {
        visit_check_struct(v, errp);
    }
    visit_end_struct(v, NULL);
}

static bool visit_hex(Visitor *v, const char *name, const uint8_t *buf, Error **errp)
{
    g_autofree char *str = g_malloc(CPUCACHE_LINE * 2 + 1);
    unsigned i;

    for (i = 0; i < CPUCACHE_LINE; i++) {
        sprintf(str + 2 * i, "%02x", buf[i]);
    }
    return visit_type_str(v, name, &str, errp);
}

static bool visit_frames(Visitor *v, CpuCacheWho *who, Error **errp)
{
    unsigned i;
    bool ok = true;

    if (!visit_start_list(v, "frames", NULL, 0, errp)) {
        return false;
    }
    for (i = 0; ok && i < CPUCACHE_FRAMES && who->frames[i]; i++) {
        ok = visit_type_uint64(v, NULL, &who->frames[i], errp);
    }
    if (ok) {
        ok = visit_check_list(v, errp);
    }
    visit_end_list(v, NULL);
    return ok;
}

static bool visit_event(Visitor *v, CpuCacheEvent *e, Error **errp)
{
    char *kind = (char *)kind_names[e->kind], *master = e->master;
    int64_t vcpu = e->who.vcpu, iova = e->iova == UINT64_MAX ? -1 : (int64_t)e->iova;
    uint64_t differing = e->differing;
    bool ok;

    if (!visit_start_struct(v, NULL, NULL, 0, errp)) {
        return false;
    }
    ok = visit_type_uint64(v, "seq", &e->seq, errp) &&
         visit_type_str(v, "kind", &kind, errp) &&
         visit_type_str(v, "master", &master, errp) &&
         visit_type_int(v, "vcpu", &vcpu, errp) &&
         visit_type_uint32(v, "context", &e->who.context, errp) &&
         visit_type_uint64(v, "pc", &e->who.frames[0], errp) &&
         visit_frames(v, &e->who, errp) &&
         visit_type_uint64(v, "pa", &e->pa, errp) &&
         visit_type_int(v, "iova", &iova, errp) &&
         visit_type_uint64(v, "differing", &differing, errp) &&
         visit_hex(v, "expected", e->expected, errp) &&
         visit_hex(v, "actual", e->actual, errp) &&
         visit_check_struct(v, errp);
    visit_end_struct(v, NULL);
    return ok;
}

static void get_log(Object *obj, Visitor *v, const char *name, void *opaque, Error **errp)
{
    CpuCache *c = DMALAB_CPUCACHE(obj);
    uint32_t i;

    QEMU_LOCK_GUARD(&c->lock);
    if (!visit_start_list(v, name, NULL, 0, errp)) {
        return;
    }
    for (i = 0; i < c->log_count; i++) {
        if (!visit_event(v, &c->log[(c->log_head + i) % CPUCACHE_LOG_LEN], errp)) {
            break;
        }
    }
    if (i == c->log_count) {
        visit_check_list(v, errp);
    }
    visit_end_list(v, NULL);
}

/* Reading the log drains it, so a caller sees each event once. */
static void set_log_read(Object *obj, Visitor *v, const char *name, void *opaque,
                         Error **errp)
{
    CpuCache *c = DMALAB_CPUCACHE(obj);
    uint64_t upto;

    if (!visit_type_uint64(v, name, &upto, errp)) {
        return;
    }
    QEMU_LOCK_GUARD(&c->lock);
    while (c->log_count && c->log[c->log_head].seq <= upto) {
        c->log_head = (c->log_head + 1) % CPUCACHE_LOG_LEN;
        c->log_count--;
    }
}

static void cpucache_instance_init(Object *obj)
{
    CpuCache *c = DMALAB_CPUCACHE(obj);

    qemu_mutex_init(&c->lock);
    object_property_add(obj, "counters", "CpuCacheCounters", get_counters, NULL, NULL, NULL);
    object_property_add(obj, "log", "CpuCacheLog", get_log, NULL, NULL, NULL);
    object_property_add(obj, "log-read", "uint64", NULL, set_log_read, NULL, NULL);
}

static void cpucache_class_init(ObjectClass *oc, void *data)
{
    ResettableClass *rc = RESETTABLE_CLASS(oc);

    rc->get_state = cpucache_get_reset_state;
    rc->phases.exit = cpucache_reset_exit;
}

static const TypeInfo cpucache_info = {
    .name = TYPE_DMALAB_CPUCACHE,
    .parent = TYPE_OBJECT,
    .instance_size = sizeof(CpuCache),
    .instance_init = cpucache_instance_init,
    .class_init = cpucache_class_init,
    .interfaces = (InterfaceInfo[]) {
        { TYPE_RESETTABLE_INTERFACE },
        { }
    },
};

static void cpucache_register_types(void)
{
    type_register_static(&cpucache_info);
}

type_init(cpucache_register_types)

CpuCache *cpucache_create(Object *machine, MemoryRegion *sysmem, MemoryRegion *ram,
                          hwaddr ram_base, Error **errp)
{
    CpuCache *c;
    uint64_t size = memory_region_size(ram);

    if (size % CPUCACHE_PAGE || size / CPUCACHE_LINE > INT32_MAX) {
        error_setg(errp, "cpu cache model: RAM size %" PRIu64 " is not supported", size);
        return NULL;
    }
    c = DMALAB_CPUCACHE(object_new(TYPE_DMALAB_CPUCACHE));
    object_property_add_child(machine, "cpucache", OBJECT(c));
    object_unref(OBJECT(c));
    c->ram = ram;
    c->ram_base = ram_base;
    c->ram_size = size;
    c->nlines = size / CPUCACHE_LINE;

    /* Not in the migration stream as RAM: see cpucache_pre_save(). */
    if (!memory_region_init_ram_nomigrate(&c->dram, OBJECT(c), "dmalab-cpucache.dram",
                                          size, errp) ||
        !memory_region_init_ram_nomigrate(&c->sync, OBJECT(c), "dmalab-cpucache.sync",
                                          size, errp)) {
        return NULL;
    }
    c->cpu_ptr = memory_region_get_ram_ptr(ram);
    c->dram_ptr = memory_region_get_ram_ptr(&c->dram);
    c->sync_ptr = memory_region_get_ram_ptr(&c->sync);
    c->dev_written = bitmap_new(c->nlines);
    c->reported = bitmap_new(c->nlines);
    c->zeroed = bitmap_new(c->nlines);
    /* Host memory, not guest RAM: committed only where reset loads something. */
    c->reset_ptr = g_malloc0(size);
    c->page_trapped = g_new0(uint16_t, size / CPUCACHE_PAGE);
    c->touched = bitmap_new(size / CPUCACHE_PAGE);
    memory_region_set_log(&c->dram, true, DIRTY_MEMORY_VGA);

    memory_region_init(&c->dma_root, OBJECT(c), "cpucache-dma", UINT64_MAX);
    memory_region_init_alias(&c->dma_sys, OBJECT(c), "cpucache-dma-sys", sysmem, 0,
                             UINT64_MAX);
    memory_region_add_subregion_overlap(&c->dma_root, 0, &c->dma_sys, 0);
    memory_region_init_alias(&c->dma_dram, OBJECT(c), "cpucache-dma-dram", &c->dram, 0,
                             size);
    memory_region_add_subregion_overlap(&c->dma_root, ram_base, &c->dma_dram, 1);
    address_space_init(&c->dma_as, &c->dma_root, "cpucache-dma");

    memory_region_init(&c->cpu_root, OBJECT(c), "cpucache-cpu", UINT64_MAX);
    memory_region_init_alias(&c->cpu_sys, OBJECT(c), "cpucache-cpu-sys", sysmem, 0,
                             CPUCACHE_DRAM_WINDOW);
    memory_region_add_subregion(&c->cpu_root, 0, &c->cpu_sys);
    memory_region_init_alias(&c->cpu_dram, OBJECT(c), "cpucache-cpu-dram", &c->dram, 0,
                             size);
    memory_region_add_subregion(&c->cpu_root, CPUCACHE_DRAM_WINDOW + ram_base, &c->cpu_dram);
    memory_region_init_io(&c->cpu_trap, OBJECT(c), &trap_ops, c, "cpucache-cpu-trap", size);
    memory_region_add_subregion(&c->cpu_root, CPUCACHE_TRAP_WINDOW + ram_base, &c->cpu_trap);

    vmstate_register(NULL, VMSTATE_INSTANCE_ID_ANY, &vmstate_cpucache, c);
    qemu_register_resettable(OBJECT(c));
    cpucache = c;
    return c;
}

MemoryRegion *cpucache_cpu_memory(CpuCache *c)
{
    return &c->cpu_root;
}

AddressSpace *cpucache_dma_as(CpuCache *c)
{
    return &c->dma_as;
}
