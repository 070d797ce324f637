/* SPDX-License-Identifier: GPL-2.0-or-later WITH Linux-syscall-note */
/*
 * ncdma driver UAPI: ioctls of /dev/ncdmaN (docs/driver-uapi.md).
 *
 * Objects are named by handles local to one open file of /dev/ncdmaN: buffers (created here and
 * exported as a dma-buf, or imported from a dma-buf fd) and attachments (a buffer attached to
 * this device). Descriptors name attachments and offsets; the driver resolves them to DMA
 * addresses through the attachment's mapping. Every structure is naturally aligned, has no
 * implicit padding and is the same on 32- and 64-bit userspace.
 */
#ifndef NCDMA_UAPI_H
#define NCDMA_UAPI_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define NCDMA_UAPI_VERSION 1
#define NCDMA_IOC_MAGIC 0xDC

/* Directions: the values of the kernel's enum dma_data_direction. */
#define NCDMA_DIR_BIDIRECTIONAL 0
#define NCDMA_DIR_TO_DEVICE     1 /* the device reads the buffer */
#define NCDMA_DIR_FROM_DEVICE   2 /* the device writes the buffer */

/*
 * Buffer policies (exporter side), fixed at NCDMA_IOC_BUF_CREATE. DYNAMIC and CACHE_SGT exclude
 * each other (a dma-buf core rule).
 *   DYNAMIC       pin/unpin: movable while unpinned (seed 001)
 *   CACHE_SGT     dma_buf_ops.cache_sgt_mapping: the core keeps the first mapping until detach
 *                 (seed 003)
 *   EXCLUSIVE     one owner at a time: a device map waits for the previous unmap and for CPU
 *                 access to end, CPU access waits for the device's unmap (seed 000)
 *   SHARE_DOMAIN  a device in the IOMMU domain of an existing mapping reuses it (seed 004)
 */
#define NCDMA_BUF_DYNAMIC      (1u << 0)
#define NCDMA_BUF_CACHE_SGT    (1u << 1)
#define NCDMA_BUF_EXCLUSIVE    (1u << 2)
#define NCDMA_BUF_SHARE_DOMAIN (1u << 3)
#define NCDMA_BUF_FLAGS_VALID  0xfu

/*
 * Attachment policies (importer side), fixed at NCDMA_IOC_ATTACH.
 *   DYNAMIC    dma_buf_dynamic_attach with move_notify (seed 001)
 *   CACHE_SGT  map once at attach and keep the mapping until detach; map and unmap then only
 *              transfer ownership (seed 003)
 */
#define NCDMA_ATT_DYNAMIC      (1u << 0)
#define NCDMA_ATT_CACHE_SGT    (1u << 1)
#define NCDMA_ATT_FLAGS_VALID  0x3u

/*
 * Faulty modes: maintenance steps to skip, so tests can prove the device's detectors fire.
 * Bits 0-2 and 6 act on an attachment (its map and unmap; bits 3-4 on its NCDMA_IOC_ATT_SYNC);
 * bits 3-4 act on an exported buffer (DMA_BUF_IOCTL_SYNC); bit 5 on both (revoke and move of a
 * buffer, move_notify of an attachment).
 *   SKIP_MAP_INVALIDATE  map: no INVALIDATE before the device uses the buffer
 *   SKIP_UNMAP_CLEAN     unmap: INVALIDATE without CLEAN (drops the device's writes)
 *   SKIP_UNMAP_MAINT     unmap: no maintenance at all (dirty lines stay)
 *   SKIP_CPU_BEGIN       begin_cpu_access: no CLEAN of the devices holding the buffer
 *   SKIP_CPU_END         end_cpu_access: no INVALIDATE of the devices holding the buffer
 *   SKIP_TEARDOWN_CLEAN  revoke, move, move_notify: no CLEAN before the IOMMU unmap
 *   USE_STALE            keep using the DMA addresses of a revoked or invalidated mapping
 * Bits 7-10 skip or misdirect the kernel's streaming DMA API syncs, which clean and invalidate
 * the CPU caches for a noncoherent device (on a coherent one they do nothing). On a buffer they
 * act on the exporter's dma_map/unmap_sgtable and begin/end_cpu_access; on an attachment, on
 * its NCDMA_IOC_ATT_SYNC.
 *   SKIP_SYNC_FOR_CPU     unmap with DMA_ATTR_SKIP_CPU_SYNC, no dma_sync_sgtable_for_cpu
 *   SKIP_SYNC_FOR_DEVICE  map with DMA_ATTR_SKIP_CPU_SYNC, no dma_sync_sgtable_for_device
 *   SYNC_WRONG_DIR        unmap and sync for the CPU with DMA_TO_DEVICE (no invalidate)
 *   CPU_ACCESS_NO_SYNC    begin/end_cpu_access call no DMA API sync (buffer only)
 */
#define NCDMA_FAULT_SKIP_MAP_INVALIDATE (1u << 0)
#define NCDMA_FAULT_SKIP_UNMAP_CLEAN    (1u << 1)
#define NCDMA_FAULT_SKIP_UNMAP_MAINT    (1u << 2)
#define NCDMA_FAULT_SKIP_CPU_BEGIN      (1u << 3)
#define NCDMA_FAULT_SKIP_CPU_END        (1u << 4)
#define NCDMA_FAULT_SKIP_TEARDOWN_CLEAN (1u << 5)
#define NCDMA_FAULT_USE_STALE           (1u << 6)
#define NCDMA_FAULT_SKIP_SYNC_FOR_CPU   (1u << 7)
#define NCDMA_FAULT_SKIP_SYNC_FOR_DEVICE (1u << 8)
#define NCDMA_FAULT_SYNC_WRONG_DIR      (1u << 9)
#define NCDMA_FAULT_CPU_ACCESS_NO_SYNC  (1u << 10)
#define NCDMA_FAULTS_VALID              0x7ffu

/* NCDMA_IOC_INFO */
struct ncdma_info {
	__u32 uapi_version;   /* NCDMA_UAPI_VERSION */
	__u32 index;          /* N of /dev/ncdmaN */
	__u32 hw_id;          /* registers ID .. MAX_XFER, as read at probe */
	__u32 hw_version;
	__u32 caps;           /* read now: IOMMU bits change once the guest enables the IOMMU */
	__u32 cache_line;
	__u32 cache_size;
	__u32 cache_ways;
	__u32 iotlb_entries;
	__u32 max_xfer;
	__u32 ring_entries;
	__u32 irq_mode;       /* NCDMA_IRQ_MODE_* */
	__u32 dma_mask_bits;
	__s32 iommu_group;    /* -1: none */
	__u32 iommu_domain;   /* NCDMA_DOMAIN_* */
	__u32 reserved;
	char pci_name[32];    /* e.g. "0000:00:03.0", NUL-terminated */
};

#define NCDMA_IRQ_MODE_POLL 0
#define NCDMA_IRQ_MODE_MSIX 1

#define NCDMA_DOMAIN_NONE     0 /* no IOMMU: DMA addresses are physical */
#define NCDMA_DOMAIN_IDENTITY 1
#define NCDMA_DOMAIN_DMA      2 /* translated: DMA addresses are IOVAs */
#define NCDMA_DOMAIN_OTHER    3

/* NCDMA_IOC_BUF_CREATE: a buffer of our own pages, exported as a dma-buf. */
struct ncdma_buf_create {
	__u64 size;    /* in: bytes, rounded up to whole pages */
	__u32 flags;   /* in: NCDMA_BUF_* */
	__u32 faults;  /* in: NCDMA_FAULT_* for the exporter */
	__u32 handle;  /* out */
	__s32 fd;      /* out: the dma-buf (O_RDWR | O_CLOEXEC); the caller closes it */
};

/* NCDMA_IOC_BUF_IMPORT: any dma-buf (udmabuf, a dma-heap, another ncdma's export). */
struct ncdma_buf_import {
	__s32 fd;      /* in */
	__u32 handle;  /* out */
	__u64 size;    /* out */
};

/* NCDMA_IOC_BUF_INFO */
struct ncdma_buf_info {
	__u32 handle;       /* in */
	__u32 state;        /* out: NCDMA_BUF_STATE_* */
	__u64 size;
	__u32 flags;        /* the exporter's NCDMA_BUF_* (0 if foreign) */
	__u32 faults;
	__u32 attachments;  /* attachments of the dma-buf known to an ncdma exporter */
	__u32 mappings;     /* of which mapped now */
	__u32 pins;
	__u32 cpu_owners;   /* EXCLUSIVE: CPU accesses in progress */
	__u64 moves;        /* times the backing pages moved */
	__u64 generation;   /* changes whenever the backing pages change */
};

#define NCDMA_BUF_STATE_NCDMA   (1u << 0) /* exported by an ncdma device (flags are known) */
#define NCDMA_BUF_STATE_REVOKED (1u << 1)
#define NCDMA_BUF_STATE_DEVICE_OWNED (1u << 2) /* EXCLUSIVE: a device owns it now */

/*
 * NCDMA_IOC_BUF_PAGES: physical addresses of an ncdma export's pages (they change on a move), or
 * of another exporter's buffer, through its kernel mapping.
 */
struct ncdma_buf_pages {
	__u32 handle;
	__u32 count;       /* in: entries at pas_ptr */
	__u64 first;       /* in: page index */
	__u64 pas_ptr;     /* in: __u64[count], out: physical addresses */
};

/* NCDMA_IOC_SET_FAULTS: faulty mode of a buffer (exporter) or attachment handle. */
struct ncdma_set_faults {
	__u32 handle;
	__u32 faults;
};

/* NCDMA_IOC_ATTACH */
struct ncdma_attach {
	__u32 buf;     /* in: buffer handle */
	__u32 flags;   /* in: NCDMA_ATT_* */
	__u32 faults;  /* in: NCDMA_FAULT_* */
	__u32 handle;  /* out */
};

/* NCDMA_IOC_MAP: the device takes ownership (maps unless the mapping is kept). */
struct ncdma_map {
	__u32 handle;
	__u32 dir;         /* NCDMA_DIR_* */
	__u32 timeout_ms;  /* EXCLUSIVE: how long to wait for the owner (0: 30 s) */
	__u32 nsegs;       /* out: DMA segments of the mapping */
};

/* NCDMA_IOC_UNMAP: the device gives ownership back (unmaps unless the mapping is kept). */
struct ncdma_unmap {
	__u32 handle;
	__u32 reserved;
};

/* One contiguous range of DMA addresses. */
struct ncdma_seg {
	__u64 addr;
	__u64 len;
};

/* NCDMA_IOC_ATT_INFO: state and DMA segments of an attachment. */
struct ncdma_att_info {
	__u32 handle;     /* in */
	__u32 max_segs;   /* in: room at segs_ptr */
	__u64 segs_ptr;   /* in: struct ncdma_seg[max_segs], or 0 */
	__u32 state;      /* out: NCDMA_ATT_STATE_* */
	__u32 dir;        /* out: direction of the current ownership */
	__u32 flags;      /* out */
	__u32 faults;     /* out */
	__u32 nsegs;      /* out: segments of the mapping (stale ones when only STALE is set) */
	__u32 buf;        /* out: buffer handle */
	__u64 size;       /* out: bytes covered by the segments */
	__u64 maps;       /* out: times this attachment mapped through the dma-buf core */
	__u64 generation; /* out: buffer generation the mapping was made for */
};

#define NCDMA_ATT_STATE_MAPPED      (1u << 0) /* owned by the device (between map and unmap) */
#define NCDMA_ATT_STATE_HAS_SGT     (1u << 1) /* a live sg_table is held */
#define NCDMA_ATT_STATE_INVALIDATED (1u << 2) /* move_notify dropped the mapping */
#define NCDMA_ATT_STATE_REVOKED     (1u << 3) /* the exporter revoked the buffer */
#define NCDMA_ATT_STATE_STALE       (1u << 4) /* segs are the addresses of a gone mapping */
#define NCDMA_ATT_STATE_DYNAMIC     (1u << 5)
#define NCDMA_ATT_STATE_OWNER       (1u << 6) /* EXCLUSIVE: holds the buffer's ownership */

/* NCDMA_IOC_ATT_SYNC: streaming-DMA ownership transfer without unmapping. */
struct ncdma_att_sync {
	__u32 handle;
	__u32 flags;  /* NCDMA_SYNC_FOR_CPU (CLEAN) or NCDMA_SYNC_FOR_DEVICE (INVALIDATE) */
};

#define NCDMA_SYNC_FOR_CPU    1
#define NCDMA_SYNC_FOR_DEVICE 2

/* Descriptor opcodes: the device's (NCDMA_OP_* in ncdma-hw.h). */
#define NCDMA_UOP_NOP              0
#define NCDMA_UOP_COPY             1
#define NCDMA_UOP_FILL             2
#define NCDMA_UOP_CLEAN            3
#define NCDMA_UOP_INVALIDATE       4
#define NCDMA_UOP_CLEAN_INVALIDATE 5

/*
 * WHOLE: maintenance of the whole cache. RAW: one device descriptor exactly as given: src_off
 * and dst_off are DMA addresses, nothing is split or checked (attachment handles are 0).
 */
#define NCDMA_UDESC_WHOLE 0x1
#define NCDMA_UDESC_RAW   0x2

/*
 * One descriptor of a batch. src and dst name attachments mapped on this device (0 with
 * NCDMA_UDESC_RAW); offsets are bytes into the buffer. The driver splits it into device
 * descriptors at DMA segment boundaries (and at the device's MAX_XFER).
 */
struct ncdma_udesc {
	__u8 op;       /* NCDMA_UOP_* */
	__u8 flags;    /* NCDMA_UDESC_* */
	__u16 reserved0;
	__u32 src;     /* attachment handle (COPY) */
	__u32 dst;     /* attachment handle (COPY, FILL, ranged maintenance) */
	__u32 reserved1;
	__u64 src_off;
	__u64 dst_off;
	__u64 len;
	__u64 pattern; /* FILL */
	__u64 cookie;  /* copied to every device descriptor; shows in the device's logs */
};

/*
 * Driver-issued maintenance descriptors carry cookies NCDMA_COOKIE_DRIVER | reason << 32 | handle
 * (the attachment's handle in its own file, or 0).
 */
#define NCDMA_COOKIE_DRIVER (1ull << 63)
#define NCDMA_COOKIE_REASON_SHIFT 32
#define NCDMA_REASON_MAP         1
#define NCDMA_REASON_UNMAP       2
#define NCDMA_REASON_CPU_BEGIN   3
#define NCDMA_REASON_CPU_END     4
#define NCDMA_REASON_MOVE        5
#define NCDMA_REASON_REVOKE      6
#define NCDMA_REASON_MOVE_NOTIFY 7
#define NCDMA_REASON_ATT_SYNC    8
#define NCDMA_REASON_CACHE_OP    9

#define NCDMA_MAX_BATCH 4096

/* NCDMA_IOC_SUBMIT */
struct ncdma_submit {
	__u64 descs_ptr;  /* in: struct ncdma_udesc[count] */
	__u32 count;      /* in: 1..NCDMA_MAX_BATCH */
	__u32 flags;      /* in: 0 */
	__u64 batch;      /* out: for NCDMA_IOC_WAIT */
	__u32 pieces;     /* out: device descriptors queued */
	__u32 reserved;
};

/*
 * Per descriptor result of a batch. status: NCDMA_ST_* of the device (OK, or the status of the
 * first piece that failed), or NCDMA_RESULT_RING_ERROR if the ring stopped under it.
 */
struct ncdma_result {
	__u32 status;
	__u32 pieces;  /* device descriptors it became */
	__u64 done;    /* bytes the device reported done, summed over the pieces */
};

#define NCDMA_RESULT_RING_ERROR 0x100

/* NCDMA_IOC_WAIT: wait for a batch; on completion copy its results and forget it. */
struct ncdma_wait {
	__u64 batch;
	__u64 results_ptr; /* out: struct ncdma_result[count], or 0 */
	__u32 count;
	__u32 timeout_ms;  /* 0: 30 s; -ETIMEDOUT keeps the batch */
};

/* NCDMA_IOC_CACHE: one maintenance operation, synchronously. */
struct ncdma_cache_op {
	__u32 op;      /* NCDMA_UOP_CLEAN, _INVALIDATE or _CLEAN_INVALIDATE */
	__u32 flags;   /* NCDMA_UDESC_WHOLE, or NCDMA_UDESC_RAW (offset is a DMA address) */
	__u32 handle;  /* attachment (ranged, not RAW) */
	__u32 status;  /* out: NCDMA_ST_* of the first failing piece, or OK */
	__u64 offset;
	__u64 len;
};

/* NCDMA_IOC_STATS: the driver's counters for this device and the device's own. */
struct ncdma_drv_stats {
	__u64 imp_maps;        /* dma_buf_map_attachment by this device (importer) */
	__u64 imp_unmaps;      /* dma_buf_unmap_attachment by this device */
	__u64 exp_maps;        /* dma_map_sgtable done as exporter of this device's buffers */
	__u64 exp_unmaps;      /* dma_unmap_sgtable done as exporter */
	__u64 exp_shared_maps; /* exporter map requests served by reusing a domain's mapping */
	__u64 owner_maps;      /* NCDMA_IOC_MAP calls (ownership to the device) */
	__u64 owner_unmaps;    /* NCDMA_IOC_UNMAP calls */
	__u64 syncs;           /* maintenance operations run (each one batch) */
	__u64 maint_descs;     /* device descriptors of those */
	__u64 cpu_begins;      /* begin_cpu_access on this device's exports */
	__u64 cpu_ends;
	__u64 moves;           /* backing pages moved (exporter) */
	__u64 moves_refused;   /* move requests refused because pinned */
	__u64 move_notifies;   /* move_notify received (importer) */
	__u64 remaps;          /* re-maps after move_notify (importer) */
	__u64 revokes;         /* buffers revoked (exporter) */
	__u64 pins;
	__u64 unpins;
	__u64 owner_waits;     /* EXCLUSIVE: maps or CPU accesses that had to wait */
	__u64 submits;
	__u64 descs;           /* user descriptors */
	__u64 pieces;          /* device descriptors from user descriptors */
	__u64 waits;
	__u64 wait_timeouts;
	__u64 irqs;
	__u64 polls;           /* completions found by polling */
	__u64 ring_errors;
	__u64 attaches;
	__u64 detaches;
	/* Driver maintenance of a range the device could not translate (a write-only mapping),
	 * done on the whole cache instead.
	 */
	__u64 maint_fallbacks;
	__u64 reserved[2];
};

#define NCDMA_DEV_COUNTERS_MAX 32

struct ncdma_stats {
	struct ncdma_drv_stats driver;
	__u32 ndevice;       /* counters present in device[] (NCDMA_NR_COUNTERS) */
	__u32 flags;         /* in: NCDMA_STATS_RESET zeroes the driver's counters after reading */
	__u64 device[NCDMA_DEV_COUNTERS_MAX]; /* BAR0 counters, in the device's order */
};

#define NCDMA_STATS_RESET 1

#define NCDMA_IOC_INFO        _IOR(NCDMA_IOC_MAGIC, 0x00, struct ncdma_info)
#define NCDMA_IOC_BUF_CREATE  _IOWR(NCDMA_IOC_MAGIC, 0x01, struct ncdma_buf_create)
#define NCDMA_IOC_BUF_IMPORT  _IOWR(NCDMA_IOC_MAGIC, 0x02, struct ncdma_buf_import)
#define NCDMA_IOC_CLOSE       _IOW(NCDMA_IOC_MAGIC, 0x03, __u32)  /* buffer or attachment */
#define NCDMA_IOC_BUF_INFO    _IOWR(NCDMA_IOC_MAGIC, 0x04, struct ncdma_buf_info)
#define NCDMA_IOC_BUF_MOVE    _IOW(NCDMA_IOC_MAGIC, 0x05, __u32)  /* ncdma exports */
#define NCDMA_IOC_BUF_REVOKE  _IOW(NCDMA_IOC_MAGIC, 0x06, __u32)  /* ncdma exports */
#define NCDMA_IOC_SET_FAULTS  _IOW(NCDMA_IOC_MAGIC, 0x07, struct ncdma_set_faults)
#define NCDMA_IOC_BUF_PAGES   _IOW(NCDMA_IOC_MAGIC, 0x08, struct ncdma_buf_pages)
#define NCDMA_IOC_ATTACH      _IOWR(NCDMA_IOC_MAGIC, 0x10, struct ncdma_attach)
#define NCDMA_IOC_MAP         _IOWR(NCDMA_IOC_MAGIC, 0x11, struct ncdma_map)
#define NCDMA_IOC_UNMAP       _IOW(NCDMA_IOC_MAGIC, 0x12, struct ncdma_unmap)
#define NCDMA_IOC_ATT_INFO    _IOWR(NCDMA_IOC_MAGIC, 0x13, struct ncdma_att_info)
#define NCDMA_IOC_ATT_SYNC    _IOW(NCDMA_IOC_MAGIC, 0x14, struct ncdma_att_sync)
#define NCDMA_IOC_SUBMIT      _IOWR(NCDMA_IOC_MAGIC, 0x20, struct ncdma_submit)
#define NCDMA_IOC_WAIT        _IOW(NCDMA_IOC_MAGIC, 0x21, struct ncdma_wait)
#define NCDMA_IOC_CACHE       _IOWR(NCDMA_IOC_MAGIC, 0x22, struct ncdma_cache_op)
#define NCDMA_IOC_STATS       _IOWR(NCDMA_IOC_MAGIC, 0x30, struct ncdma_stats)

#endif /* NCDMA_UAPI_H */
