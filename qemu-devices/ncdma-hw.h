/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * ncdma hardware interface: PCI identity, BAR0 registers, descriptors, counters.
 * Generated from orchestrator/dmalab/spec/ncdma.py by `dmalab spec header`: do not edit.
 * Everything is little-endian.
 */
#ifndef NCDMA_HW_H
#define NCDMA_HW_H

#ifdef __KERNEL__
#include <linux/types.h>
#else
#include <stdint.h>
#endif

#define NCDMA_PCI_VENDOR_ID 0x1234
#define NCDMA_PCI_DEVICE_ID 0xdca0
#define NCDMA_PCI_REVISION 0x1
#define NCDMA_REGS_BAR 0x0
#define NCDMA_MSIX_BAR 0x1
#define NCDMA_REGS_BAR_SIZE 0x1000
#define NCDMA_MSIX_VECTORS 0x2
#define NCDMA_VEC_COMPLETION 0x0
#define NCDMA_VEC_ERROR 0x1
#define NCDMA_ID_MAGIC 0x6e63646d
#define NCDMA_VERSION 0x10000
#define NCDMA_DESC_SIZE 0x40
#define NCDMA_RING_ALIGN 0x40
#define NCDMA_RING_MIN_ENTRIES 0x2
#define NCDMA_RING_MAX_ENTRIES 0x10000
#define NCDMA_DESC_FLAGS_VALID 0x3
#define NCDMA_COUNTERS_OFFSET 0x100

#define NCDMA_OP_NOP              0x0
#define NCDMA_OP_COPY             0x1
#define NCDMA_OP_FILL             0x2
#define NCDMA_OP_CLEAN            0x3
#define NCDMA_OP_INVALIDATE       0x4
#define NCDMA_OP_CLEAN_INVALIDATE 0x5
#define NCDMA_OP_LIST(X) X(NOP, 0) X(COPY, 1) X(FILL, 2) X(CLEAN, 3) X(INVALIDATE, 4) X(CLEAN_INVALIDATE, 5)

#define NCDMA_DESC_F_IRQ   0x1
#define NCDMA_DESC_F_WHOLE 0x2

#define NCDMA_ST_PENDING     0x0
#define NCDMA_ST_OK          0x1
#define NCDMA_ST_IOMMU_FAULT 0x2
#define NCDMA_ST_BAD_OPCODE  0x3
#define NCDMA_ST_BAD_FLAGS   0x4
#define NCDMA_ST_BAD_LENGTH  0x5
#define NCDMA_ST_BAD_ADDRESS 0x6
#define NCDMA_ST_BUS_ERROR   0x7
#define NCDMA_ST_LIST(X) X(PENDING, 0) X(OK, 1) X(IOMMU_FAULT, 2) X(BAD_OPCODE, 3) X(BAD_FLAGS, 4) X(BAD_LENGTH, 5) X(BAD_ADDRESS, 6) X(BUS_ERROR, 7)

#define NCDMA_CTRL_ENABLE     0x1
#define NCDMA_CTRL_RESET      0x2
#define NCDMA_CTRL_IRQ_ENABLE 0x4

#define NCDMA_STATUS_ENABLED    0x1
#define NCDMA_STATUS_BUSY       0x2
#define NCDMA_STATUS_RING_ERROR 0x4

#define NCDMA_RING_ERR_NONE         0x0
#define NCDMA_RING_ERR_BAD_BASE     0x1
#define NCDMA_RING_ERR_BAD_SIZE     0x2
#define NCDMA_RING_ERR_BAD_TAIL     0x3
#define NCDMA_RING_ERR_FETCH_FAULT  0x4
#define NCDMA_RING_ERR_STATUS_FAULT 0x5
#define NCDMA_RING_ERR_NOT_READY    0x6
#define NCDMA_RING_ERR_LIST(X) X(NONE, 0) X(BAD_BASE, 1) X(BAD_SIZE, 2) X(BAD_TAIL, 3) X(FETCH_FAULT, 4) X(STATUS_FAULT, 5) X(NOT_READY, 6)

#define NCDMA_CAP_CACHE        0x1
#define NCDMA_CAP_IOTLB        0x2
#define NCDMA_CAP_IOMMU        0x4
#define NCDMA_CAP_IOMMU_EVENTS 0x8
#define NCDMA_CAP_DEGRADED     0x10

#define NCDMA_IRQ_COMPLETION 0x1
#define NCDMA_IRQ_ERROR      0x2

#define NCDMA_VIOL_STALE_READ            0x1
#define NCDMA_VIOL_LOST_WRITE            0x2
#define NCDMA_VIOL_CONFLICTING_WRITE     0x3
#define NCDMA_VIOL_WRITEBACK_AFTER_UNMAP 0x4
#define NCDMA_VIOL_LIST(X) X(STALE_READ, 1) X(LOST_WRITE, 2) X(CONFLICTING_WRITE, 3) X(WRITEBACK_AFTER_UNMAP, 4)

/* BAR0 register offsets */
#define NCDMA_REG_ID            0x000
#define NCDMA_REG_VERSION       0x004
#define NCDMA_REG_CAPS          0x008
#define NCDMA_REG_CACHE_LINE    0x00c
#define NCDMA_REG_CACHE_SIZE    0x010
#define NCDMA_REG_CACHE_WAYS    0x014
#define NCDMA_REG_IOTLB_ENTRIES 0x018
#define NCDMA_REG_MAX_XFER      0x01c
#define NCDMA_REG_CTRL          0x020
#define NCDMA_REG_STATUS        0x024
#define NCDMA_REG_ERROR         0x028
#define NCDMA_REG_IRQ_STATUS    0x02c
#define NCDMA_REG_RING_BASE_LO  0x030
#define NCDMA_REG_RING_BASE_HI  0x034
#define NCDMA_REG_RING_SIZE     0x038
#define NCDMA_REG_RING_HEAD     0x03c
#define NCDMA_REG_RING_TAIL     0x040
#define NCDMA_REG_COMPLETED     0x044
#define NCDMA_REG_COUNTERS      0x100

/* Descriptor: one ring entry */
#define NCDMA_DESC_OPCODE     0x000
#define NCDMA_DESC_FLAGS      0x001
#define NCDMA_DESC_RESERVED0  0x002
#define NCDMA_DESC_STATUS     0x004
#define NCDMA_DESC_COOKIE     0x008
#define NCDMA_DESC_SRC        0x010
#define NCDMA_DESC_DST        0x018
#define NCDMA_DESC_LEN        0x020
#define NCDMA_DESC_PATTERN    0x028
#define NCDMA_DESC_DONE       0x030
#define NCDMA_DESC_RESERVED1  0x038
struct ncdma_desc {
    uint8_t opcode;
    uint8_t flags;
    uint16_t reserved0; /* must be zero */
    uint32_t status; /* written by the device on completion */
    uint64_t cookie; /* opaque to the device; echoed into logs */
    uint64_t src; /* source IOVA (COPY) */
    uint64_t dst; /* destination IOVA (COPY, FILL, maintenance ranges) */
    uint64_t len; /* bytes */
    uint64_t pattern; /* FILL pattern, little-endian byte order */
    uint64_t done; /* written by the device: bytes transferred before completion or fault */
    uint64_t reserved1; /* must be zero */
} __attribute__((packed));

/* Counters, in this order, at NCDMA_COUNTERS_OFFSET and over QMP */
#define NCDMA_NR_COUNTERS 24
#define NCDMA_CNT_DESC_COMPLETED 0
#define NCDMA_CNT_DESC_ERRORS 1
#define NCDMA_CNT_BYTES_READ 2
#define NCDMA_CNT_BYTES_WRITTEN 3
#define NCDMA_CNT_CACHE_HITS 4
#define NCDMA_CNT_CACHE_MISSES 5
#define NCDMA_CNT_CACHE_EVICTIONS 6
#define NCDMA_CNT_CACHE_WRITEBACKS 7
#define NCDMA_CNT_CACHE_INVALIDATIONS 8
#define NCDMA_CNT_STALE_READS 9
#define NCDMA_CNT_LOST_WRITES 10
#define NCDMA_CNT_CONFLICTING_WRITES 11
#define NCDMA_CNT_WRITEBACKS_AFTER_UNMAP 12
#define NCDMA_CNT_IOTLB_HITS 13
#define NCDMA_CNT_IOTLB_MISSES 14
#define NCDMA_CNT_IOMMU_MAP_EVENTS 15
#define NCDMA_CNT_IOMMU_UNMAP_EVENTS 16
#define NCDMA_CNT_IOMMU_REMAPS 17
#define NCDMA_CNT_TRANSLATION_FAULTS 18
#define NCDMA_CNT_BUS_ERRORS 19
#define NCDMA_CNT_RING_ERRORS 20
#define NCDMA_CNT_IRQS 21
#define NCDMA_CNT_VIOLATIONS_LOGGED 22
#define NCDMA_CNT_VIOLATIONS_DROPPED 23
#define NCDMA_COUNTER_LIST(X) X(desc_completed) X(desc_errors) X(bytes_read) X(bytes_written) X(cache_hits) X(cache_misses) X(cache_evictions) X(cache_writebacks) X(cache_invalidations) X(stale_reads) X(lost_writes) X(conflicting_writes) X(writebacks_after_unmap) X(iotlb_hits) X(iotlb_misses) X(iommu_map_events) X(iommu_unmap_events) X(iommu_remaps) X(translation_faults) X(bus_errors) X(ring_errors) X(irqs) X(violations_logged) X(violations_dropped)

/* -device ncdma properties: X(TYPE, name, field, default, min, max) (QEMU's device) */
#define NCDMA_PROPERTIES(X) \
    X(BOOL, "coherent", coherent, 0x0, 0x0, 0x1) \
    X(UINT32, "line-size", line_size, 0x40, 0x10, 0x1000) \
    X(UINT32, "cache-size", cache_size, 0x40000, 0x1, 0x4000000) \
    X(UINT32, "cache-ways", cache_ways, 0x8, 0x1, 0x40) \
    X(UINT32, "iotlb-entries", iotlb_entries, 0x40, 0x0, 0x1000) \
    X(UINT32, "max-xfer", max_xfer, 0x4000000, 0x1000, 0x40000000) \
    X(UINT32, "vlog-size", vlog_size, 0x100, 0x1, 0x10000) \
    X(UINT32, "xlog-size", xlog_size, 0x40, 0x1, 0x1000) \
    X(UINT32, "xlog-segs", xlog_segs, 0x400, 0x1, 0x10000)

#ifndef __KERNEL__
_Static_assert(sizeof(struct ncdma_desc) == NCDMA_DESC_SIZE, "descriptor size");
#endif

#endif /* NCDMA_HW_H */
