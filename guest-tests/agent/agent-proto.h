/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * dmalab guest agent protocol: header, operations, request and reply structs.
 * Generated from orchestrator/dmalab/spec/agent.py by `dmalab spec header`: do not edit.
 * Everything is little-endian.
 */
#ifndef DMALAB_AGENT_PROTO_H
#define DMALAB_AGENT_PROTO_H

#include <stdint.h>

#define AGENT_MAGIC 0x67616d64
#define AGENT_VERSION 1
#define AGENT_HEADER_SIZE 24
#define AGENT_MAX_PAYLOAD 0x401000
#define AGENT_PORT_NAME "dmalab.agent"
#define AGENT_PATTERN_MIX 0x9e3779b97f4a7c15ull
#define AGENT_ANY_DEVICE 0xffffffff
#define AGENT_DRIVER_STATS_SLOTS 32
#define AGENT_DEVICE_COUNTERS_MAX 32
#define AGENT_TAIL_NONE 0
#define AGENT_TAIL_BYTES 1
#define AGENT_TAIL_ITEMS 2

#define AGENT_F_REPLY 0x1
#define AGENT_F_ASYNC 0x2

#define AGENT_BUF_NCDMA       0x1
#define AGENT_BUF_UDMABUF     0x2
#define AGENT_BUF_HEAP_SYSTEM 0x3
#define AGENT_BUF_VGEM        0x4
#define AGENT_BUF_LIST(X) X(NCDMA, 1) X(UDMABUF, 2) X(HEAP_SYSTEM, 3) X(VGEM, 4)

#define AGENT_WRITE_PATTERN 0x0
#define AGENT_WRITE_DATA    0x1
#define AGENT_WRITE_BYTE    0x2
#define AGENT_WRITE_LIST(X) X(PATTERN, 0) X(DATA, 1) X(BYTE, 2)

#define AGENT_READ_BYTES 0x0
#define AGENT_READ_CRC32 0x1
#define AGENT_READ_LIST(X) X(BYTES, 0) X(CRC32, 1)

#define AGENT_SYNC_READ  0x1
#define AGENT_SYNC_WRITE 0x2
#define AGENT_SYNC_END   0x4

/* Structs */

struct agent_header {
    uint32_t magic; /* MAGIC */
    uint16_t version; /* VERSION */
    uint16_t op; /* Op code; echoed in the reply */
    uint32_t seq; /* chosen by the host; echoed in the reply */
    uint16_t flags;
    uint16_t reserved; /* zero */
    uint32_t status; /* reply: 0 or a Linux errno number */
    uint32_t length; /* payload bytes after the header */
} __attribute__((packed));

struct agent_desc {
    uint8_t op; /* NCDMA_UOP_* */
    uint8_t flags; /* NCDMA_UDESC_* (WHOLE 1, RAW 2) */
    uint16_t reserved0;
    uint32_t src; /* agent attachment id (COPY), 0 with RAW */
    uint32_t dst; /* agent attachment id, 0 with RAW or WHOLE */
    uint32_t reserved1;
    uint64_t src_off;
    uint64_t dst_off;
    uint64_t len;
    uint64_t pattern;
    uint64_t cookie;
} __attribute__((packed));

struct agent_result {
    uint32_t status; /* NCDMA_ST_*, or 0x100 (ring error) */
    uint32_t pieces; /* device descriptors it became */
    uint64_t done; /* bytes done */
} __attribute__((packed));

struct agent_seg {
    uint64_t addr;
    uint64_t len;
} __attribute__((packed));

struct agent_phys_addr {
    uint64_t pa; /* physical address of the page, 0 if not present */
} __attribute__((packed));

struct agent_hello_reply {
    uint32_t proto_version;
    uint32_t uapi_version; /* NCDMA_UAPI_VERSION the agent was built with */
    uint32_t page_size;
    uint32_t devices; /* ncdma devices present (/dev/ncdma0..N-1) */
} __attribute__((packed));

struct agent_read_file_request {
    uint32_t max_len;
    uint32_t reserved;
} __attribute__((packed));

struct agent_write_file_request {
    uint32_t path_len; /* the tail is the path, then the data */
    uint32_t reserved;
} __attribute__((packed));

struct agent_kmsg_mark_reply {
    uint64_t seq; /* sequence number of the newest record */
} __attribute__((packed));

struct agent_kmsg_read_request {
    uint64_t since; /* records with a larger sequence number */
    uint32_t max_len;
    uint32_t reserved;
} __attribute__((packed));

struct agent_kmsg_read_reply {
    uint64_t last_seq;
    uint32_t records;
    uint32_t truncated; /* 1 if records were left out for max_len */
} __attribute__((packed));

struct agent_close_all_reply {
    uint32_t buffers;
    uint32_t attachments;
} __attribute__((packed));

struct agent_dev_request {
    uint32_t dev;
    uint32_t reserved;
} __attribute__((packed));

struct agent_device_info_reply {
    uint32_t uapi_version;
    uint32_t index;
    uint32_t hw_id;
    uint32_t hw_version;
    uint32_t caps;
    uint32_t cache_line;
    uint32_t cache_size;
    uint32_t cache_ways;
    uint32_t iotlb_entries;
    uint32_t max_xfer;
    uint32_t ring_entries;
    uint32_t irq_mode; /* 0 polling, 1 MSI-X */
    uint32_t dma_mask_bits;
    int32_t iommu_group; /* -1: none */
    uint32_t iommu_domain; /* 0 none, 1 identity, 2 DMA (IOVAs), 3 other */
    uint32_t reserved;
    uint8_t pci_name[32]; /* NUL-terminated */
} __attribute__((packed));

struct agent_stats_request {
    uint32_t dev;
    uint32_t flags; /* 1: zero the driver's counters */
} __attribute__((packed));

struct agent_stats_reply {
    uint64_t driver[32]; /* DRIVER_STAT_NAMES, in order */
    uint32_t ndevice; /* device counters present */
    uint32_t flags;
    uint64_t device[32]; /* spec.ncdma.COUNTER_NAMES, in order */
} __attribute__((packed));

struct agent_buf_create_request {
    uint32_t kind;
    uint32_t dev; /* NCDMA: the exporting device */
    uint64_t size;
    uint32_t flags; /* NCDMA: NCDMA_BUF_* */
    uint32_t faults; /* NCDMA: NCDMA_FAULT_* of the exporter */
} __attribute__((packed));

struct agent_buf_create_reply {
    uint32_t buf; /* agent buffer id */
    uint32_t handle; /* NCDMA: the handle on dev */
    uint64_t size;
} __attribute__((packed));

struct agent_buf_request {
    uint32_t buf;
    uint32_t reserved;
} __attribute__((packed));

struct agent_buf_info_request {
    uint32_t buf;
    uint32_t dev; /* ANY_DEVICE or a device index */
} __attribute__((packed));

struct agent_buf_info_reply {
    uint32_t kind;
    uint32_t state; /* NCDMA_BUF_STATE_* */
    uint64_t size;
    uint32_t flags;
    uint32_t faults;
    uint32_t attachments;
    uint32_t mappings;
    uint32_t pins;
    uint32_t cpu_owners;
    uint64_t moves;
    uint64_t generation;
} __attribute__((packed));

struct agent_buf_faults_request {
    uint32_t buf;
    uint32_t faults;
} __attribute__((packed));

struct agent_buf_pages_request {
    uint32_t buf;
    uint32_t count; /* pages, at most 65536 */
    uint64_t first; /* page index */
} __attribute__((packed));

struct agent_count_reply {
    uint32_t count;
    uint32_t reserved;
} __attribute__((packed));

struct agent_cpu_write_request {
    uint32_t buf;
    uint32_t mode;
    uint64_t offset;
    uint64_t len; /* PATTERN, BYTE; DATA: the tail's length */
    uint64_t seed; /* PATTERN: the generator's seed; BYTE: the byte */
} __attribute__((packed));

struct agent_cpu_read_request {
    uint32_t buf;
    uint32_t mode;
    uint64_t offset;
    uint64_t len;
} __attribute__((packed));

struct agent_cpu_read_reply {
    uint32_t crc32; /* zlib's CRC-32 of the range */
    uint32_t reserved;
    uint64_t len;
} __attribute__((packed));

struct agent_cpu_verify_request {
    uint32_t buf;
    uint32_t reserved;
    uint64_t offset;
    uint64_t len;
    uint64_t seed;
} __attribute__((packed));

struct agent_cpu_verify_reply {
    uint64_t mismatches; /* bytes that differ from pattern(seed) */
    uint64_t first; /* offset (from the request's) of the first, or 2^64-1 */
    uint32_t expected;
    uint32_t actual;
} __attribute__((packed));

struct agent_sync_request {
    uint32_t buf;
    uint32_t flags;
} __attribute__((packed));

struct agent_attach_request {
    uint32_t buf;
    uint32_t dev;
    uint32_t flags; /* NCDMA_ATT_* */
    uint32_t faults; /* NCDMA_FAULT_* */
} __attribute__((packed));

struct agent_attach_reply {
    uint32_t att; /* agent attachment id */
    uint32_t handle; /* the driver's handle on dev */
} __attribute__((packed));

struct agent_att_request {
    uint32_t att;
    uint32_t reserved;
} __attribute__((packed));

struct agent_map_request {
    uint32_t att;
    uint32_t dir; /* 0 bidirectional, 1 to device, 2 from device */
    uint32_t timeout_ms;
    uint32_t reserved;
} __attribute__((packed));

struct agent_map_reply {
    uint32_t nsegs;
    uint32_t reserved;
} __attribute__((packed));

struct agent_att_info_request {
    uint32_t att;
    uint32_t max_segs;
} __attribute__((packed));

struct agent_att_info_reply {
    uint32_t state; /* NCDMA_ATT_STATE_* */
    uint32_t dir;
    uint32_t flags;
    uint32_t faults;
    uint32_t nsegs; /* segments of the mapping */
    uint32_t count; /* segments in the tail */
    uint64_t size;
    uint64_t maps;
    uint64_t generation;
} __attribute__((packed));

struct agent_att_sync_request {
    uint32_t att;
    uint32_t flags; /* 1 for CPU, 2 for device */
} __attribute__((packed));

struct agent_att_faults_request {
    uint32_t att;
    uint32_t faults;
} __attribute__((packed));

struct agent_submit_request {
    uint32_t dev;
    uint32_t count;
} __attribute__((packed));

struct agent_submit_reply {
    uint64_t batch;
    uint32_t pieces;
    uint32_t reserved;
} __attribute__((packed));

struct agent_wait_request {
    uint32_t dev;
    uint32_t timeout_ms; /* 0: 30 s */
    uint64_t batch;
    uint32_t count; /* results wanted */
    uint32_t reserved;
} __attribute__((packed));

struct agent_run_request {
    uint32_t dev;
    uint32_t count;
    uint32_t timeout_ms;
    uint32_t reserved;
} __attribute__((packed));

struct agent_run_reply {
    uint64_t batch;
    uint32_t pieces;
    uint32_t count;
} __attribute__((packed));

struct agent_cache_op_request {
    uint32_t dev;
    uint32_t op; /* 3 CLEAN, 4 INVALIDATE, 5 CLEAN_INVALIDATE */
    uint32_t flags; /* WHOLE 1, RAW 2 (offset is a DMA address) */
    uint32_t att;
    uint64_t offset;
    uint64_t len;
} __attribute__((packed));

struct agent_cache_op_reply {
    uint32_t status; /* NCDMA_ST_* */
    uint32_t reserved;
} __attribute__((packed));

/* Operations: X(NAME, code, request size, request tail, tail item size, offset of the
 * request's item count (0 without items)) */
#define AGENT_OP_HELLO          0x01 /* protocol and driver versions, page size, device count; tail: uname -r */
#define AGENT_OP_ECHO           0x02 /* the request's tail, back */
#define AGENT_OP_READ_FILE      0x03 /* up to max_len bytes of the file named by the tail */
#define AGENT_OP_WRITE_FILE     0x04 /* write data to a file (sysfs, procfs); tail: path then data */
#define AGENT_OP_KMSG_MARK      0x05 /* the newest kernel log sequence number */
#define AGENT_OP_KMSG_READ      0x06 /* kernel log records after a mark; tail: /dev/kmsg records */
#define AGENT_OP_MODULE_UNLOAD  0x07 /* delete_module; tail: the module name */
#define AGENT_OP_MODULE_LOAD    0x08 /* finit_module; tail: path, NUL, parameters */
#define AGENT_OP_CLOSE_ALL      0x09 /* forget every buffer and attachment, close the devices */
#define AGENT_OP_DEVICE_INFO    0x10 /* NCDMA_IOC_INFO of /dev/ncdma<dev> */
#define AGENT_OP_STATS          0x11 /* driver and device counters (NCDMA_IOC_STATS) */
#define AGENT_OP_BUF_CREATE     0x20 /* a buffer: an ncdma export, a udmabuf, a system dma-heap or a vgem buffer */
#define AGENT_OP_BUF_FREE       0x21 /* detach and forget a buffer */
#define AGENT_OP_BUF_INFO       0x22 /* NCDMA_IOC_BUF_INFO */
#define AGENT_OP_BUF_MOVE       0x23 /* the exporter moves the backing pages */
#define AGENT_OP_BUF_REVOKE     0x24 /* the exporter revokes every mapping */
#define AGENT_OP_BUF_SET_FAULTS 0x25 /* faulty mode of the exporter */
#define AGENT_OP_BUF_PAGES      0x26 /* physical addresses of pages of the buffer (its CPU mapping) */
#define AGENT_OP_CPU_WRITE      0x30 /* CPU writes through the buffer's mapping (no sync) */
#define AGENT_OP_CPU_READ       0x31 /* CPU reads a range: bytes or their CRC-32 */
#define AGENT_OP_CPU_VERIFY     0x32 /* compare a range with pattern(seed) */
#define AGENT_OP_SYNC           0x33 /* DMA_BUF_IOCTL_SYNC on the buffer */
#define AGENT_OP_ATTACH         0x40 /* attach a buffer to a device (imports it there first if needed) */
#define AGENT_OP_DETACH         0x41 /* detach (unmaps first) */
#define AGENT_OP_MAP            0x42 /* the device takes ownership (NCDMA_IOC_MAP) */
#define AGENT_OP_UNMAP          0x43 /* the device gives ownership back */
#define AGENT_OP_ATT_INFO       0x44 /* state and DMA segments of an attachment */
#define AGENT_OP_ATT_SYNC       0x45 /* streaming sync without unmapping */
#define AGENT_OP_ATT_SET_FAULTS 0x46 /* faulty mode of an attachment */
#define AGENT_OP_SUBMIT         0x50 /* queue a batch of descriptors */
#define AGENT_OP_WAIT           0x51 /* wait for a batch; its per-descriptor results */
#define AGENT_OP_RUN            0x52 /* SUBMIT then WAIT in one round trip */
#define AGENT_OP_CACHE_OP       0x53 /* one device cache maintenance operation */
#define AGENT_OP_LIST(X) \
    X(HELLO, 0x01, 0, AGENT_TAIL_NONE, 0, 0) \
    X(ECHO, 0x02, 0, AGENT_TAIL_BYTES, 0, 0) \
    X(READ_FILE, 0x03, 8, AGENT_TAIL_BYTES, 0, 0) \
    X(WRITE_FILE, 0x04, 8, AGENT_TAIL_BYTES, 0, 0) \
    X(KMSG_MARK, 0x05, 0, AGENT_TAIL_NONE, 0, 0) \
    X(KMSG_READ, 0x06, 16, AGENT_TAIL_NONE, 0, 0) \
    X(MODULE_UNLOAD, 0x07, 0, AGENT_TAIL_BYTES, 0, 0) \
    X(MODULE_LOAD, 0x08, 0, AGENT_TAIL_BYTES, 0, 0) \
    X(CLOSE_ALL, 0x09, 0, AGENT_TAIL_NONE, 0, 0) \
    X(DEVICE_INFO, 0x10, 8, AGENT_TAIL_NONE, 0, 0) \
    X(STATS, 0x11, 8, AGENT_TAIL_NONE, 0, 0) \
    X(BUF_CREATE, 0x20, 24, AGENT_TAIL_NONE, 0, 0) \
    X(BUF_FREE, 0x21, 8, AGENT_TAIL_NONE, 0, 0) \
    X(BUF_INFO, 0x22, 8, AGENT_TAIL_NONE, 0, 0) \
    X(BUF_MOVE, 0x23, 8, AGENT_TAIL_NONE, 0, 0) \
    X(BUF_REVOKE, 0x24, 8, AGENT_TAIL_NONE, 0, 0) \
    X(BUF_SET_FAULTS, 0x25, 8, AGENT_TAIL_NONE, 0, 0) \
    X(BUF_PAGES, 0x26, 16, AGENT_TAIL_NONE, 0, 0) \
    X(CPU_WRITE, 0x30, 32, AGENT_TAIL_BYTES, 0, 0) \
    X(CPU_READ, 0x31, 24, AGENT_TAIL_NONE, 0, 0) \
    X(CPU_VERIFY, 0x32, 32, AGENT_TAIL_NONE, 0, 0) \
    X(SYNC, 0x33, 8, AGENT_TAIL_NONE, 0, 0) \
    X(ATTACH, 0x40, 16, AGENT_TAIL_NONE, 0, 0) \
    X(DETACH, 0x41, 8, AGENT_TAIL_NONE, 0, 0) \
    X(MAP, 0x42, 16, AGENT_TAIL_NONE, 0, 0) \
    X(UNMAP, 0x43, 8, AGENT_TAIL_NONE, 0, 0) \
    X(ATT_INFO, 0x44, 8, AGENT_TAIL_NONE, 0, 0) \
    X(ATT_SYNC, 0x45, 8, AGENT_TAIL_NONE, 0, 0) \
    X(ATT_SET_FAULTS, 0x46, 8, AGENT_TAIL_NONE, 0, 0) \
    X(SUBMIT, 0x50, 8, AGENT_TAIL_ITEMS, 56, 4) \
    X(WAIT, 0x51, 24, AGENT_TAIL_NONE, 0, 0) \
    X(RUN, 0x52, 16, AGENT_TAIL_ITEMS, 56, 4) \
    X(CACHE_OP, 0x53, 32, AGENT_TAIL_NONE, 0, 0)

/* Sizes */
_Static_assert(sizeof(struct agent_header) == 24, "agent_header");
_Static_assert(sizeof(struct agent_desc) == 56, "agent_desc");
_Static_assert(sizeof(struct agent_result) == 16, "agent_result");
_Static_assert(sizeof(struct agent_seg) == 16, "agent_seg");
_Static_assert(sizeof(struct agent_phys_addr) == 8, "agent_phys_addr");
_Static_assert(sizeof(struct agent_hello_reply) == 16, "agent_hello_reply");
_Static_assert(sizeof(struct agent_read_file_request) == 8, "agent_read_file_request");
_Static_assert(sizeof(struct agent_write_file_request) == 8, "agent_write_file_request");
_Static_assert(sizeof(struct agent_kmsg_mark_reply) == 8, "agent_kmsg_mark_reply");
_Static_assert(sizeof(struct agent_kmsg_read_request) == 16, "agent_kmsg_read_request");
_Static_assert(sizeof(struct agent_kmsg_read_reply) == 16, "agent_kmsg_read_reply");
_Static_assert(sizeof(struct agent_close_all_reply) == 8, "agent_close_all_reply");
_Static_assert(sizeof(struct agent_dev_request) == 8, "agent_dev_request");
_Static_assert(sizeof(struct agent_device_info_reply) == 96, "agent_device_info_reply");
_Static_assert(sizeof(struct agent_stats_request) == 8, "agent_stats_request");
_Static_assert(sizeof(struct agent_stats_reply) == 520, "agent_stats_reply");
_Static_assert(sizeof(struct agent_buf_create_request) == 24, "agent_buf_create_request");
_Static_assert(sizeof(struct agent_buf_create_reply) == 16, "agent_buf_create_reply");
_Static_assert(sizeof(struct agent_buf_request) == 8, "agent_buf_request");
_Static_assert(sizeof(struct agent_buf_info_request) == 8, "agent_buf_info_request");
_Static_assert(sizeof(struct agent_buf_info_reply) == 56, "agent_buf_info_reply");
_Static_assert(sizeof(struct agent_buf_faults_request) == 8, "agent_buf_faults_request");
_Static_assert(sizeof(struct agent_buf_pages_request) == 16, "agent_buf_pages_request");
_Static_assert(sizeof(struct agent_count_reply) == 8, "agent_count_reply");
_Static_assert(sizeof(struct agent_cpu_write_request) == 32, "agent_cpu_write_request");
_Static_assert(sizeof(struct agent_cpu_read_request) == 24, "agent_cpu_read_request");
_Static_assert(sizeof(struct agent_cpu_read_reply) == 16, "agent_cpu_read_reply");
_Static_assert(sizeof(struct agent_cpu_verify_request) == 32, "agent_cpu_verify_request");
_Static_assert(sizeof(struct agent_cpu_verify_reply) == 24, "agent_cpu_verify_reply");
_Static_assert(sizeof(struct agent_sync_request) == 8, "agent_sync_request");
_Static_assert(sizeof(struct agent_attach_request) == 16, "agent_attach_request");
_Static_assert(sizeof(struct agent_attach_reply) == 8, "agent_attach_reply");
_Static_assert(sizeof(struct agent_att_request) == 8, "agent_att_request");
_Static_assert(sizeof(struct agent_map_request) == 16, "agent_map_request");
_Static_assert(sizeof(struct agent_map_reply) == 8, "agent_map_reply");
_Static_assert(sizeof(struct agent_att_info_request) == 8, "agent_att_info_request");
_Static_assert(sizeof(struct agent_att_info_reply) == 48, "agent_att_info_reply");
_Static_assert(sizeof(struct agent_att_sync_request) == 8, "agent_att_sync_request");
_Static_assert(sizeof(struct agent_att_faults_request) == 8, "agent_att_faults_request");
_Static_assert(sizeof(struct agent_submit_request) == 8, "agent_submit_request");
_Static_assert(sizeof(struct agent_submit_reply) == 16, "agent_submit_reply");
_Static_assert(sizeof(struct agent_wait_request) == 24, "agent_wait_request");
_Static_assert(sizeof(struct agent_run_request) == 16, "agent_run_request");
_Static_assert(sizeof(struct agent_run_reply) == 16, "agent_run_reply");
_Static_assert(sizeof(struct agent_cache_op_request) == 32, "agent_cache_op_request");
_Static_assert(sizeof(struct agent_cache_op_reply) == 8, "agent_cache_op_reply");

#endif /* DMALAB_AGENT_PROTO_H */
