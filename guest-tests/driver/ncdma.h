/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * ncdma driver internals shared by the PCI/ring core, the dma-buf exporter and the importer.
 *
 * Lock order, outermost first:
 *   dma_buf resv  ->  ncdma_dev.map_sem  ->  ncdma_xbuf.lock  ->  ncdma_dev.submit_mutex
 *   ->  ncdma_dev.ring_lock
 * ncdma_file.lock only guards handle tables and batch lists and nests inside nothing else.
 * Exclusive-ownership waits and batch waits happen with no lock held.
 */
#ifndef NCDMA_H
#define NCDMA_H

#include <linux/dma-buf.h>
#include <linux/idr.h>
#include <linux/kref.h>
#include <linux/miscdevice.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/rwsem.h>
#include <linux/sizes.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "ncdma-hw.h"
#include "ncdma-uapi.h"

#define NCDMA_MAX_PIECES    65536          /* device descriptors per batch */
#define NCDMA_MAX_BUF_SIZE  SZ_1G
#define NCDMA_DEFAULT_WAIT_MS 30000

/* Index into the driver's counters: struct ncdma_drv_stats, field by field. */
enum ncdma_stat {
	ST_IMP_MAPS, ST_IMP_UNMAPS, ST_EXP_MAPS, ST_EXP_UNMAPS, ST_EXP_SHARED_MAPS,
	ST_OWNER_MAPS, ST_OWNER_UNMAPS, ST_SYNCS, ST_MAINT_DESCS, ST_CPU_BEGINS, ST_CPU_ENDS,
	ST_MOVES, ST_MOVES_REFUSED, ST_MOVE_NOTIFIES, ST_REMAPS, ST_REVOKES, ST_PINS, ST_UNPINS,
	ST_OWNER_WAITS, ST_SUBMITS, ST_DESCS, ST_PIECES, ST_WAITS, ST_WAIT_TIMEOUTS, ST_IRQS,
	ST_POLLS, ST_RING_ERRORS, ST_ATTACHES, ST_DETACHES, ST_MAINT_FALLBACKS,
	NCDMA_NR_STATS
};

/* A batch of device descriptors; complete once the ring reaped past last_seq. */
struct ncdma_batch {
	struct list_head node;  /* in ncdma_file.batches (user batches only) */
	u64 id;
	u64 last_seq;
	u32 count;
	struct ncdma_result res[] __counted_by(count);
};

struct ncdma_slot {
	struct ncdma_batch *batch;
	u32 idx;
};

/* One device descriptor to queue and the batch result it counts towards. */
struct ncdma_piece {
	struct ncdma_desc d;
	u32 idx;
};

struct ncdma_dev {
	struct kref ref;
	struct pci_dev *pdev;
	void __iomem *regs;
	int index;
	char name[16];
	struct miscdevice misc;
	u32 hw_id, hw_version, max_xfer, cache_line, cache_size, cache_ways, iotlb_entries;

	/* Ring: the device executes slots [reaped, submitted). */
	struct ncdma_desc *ring;
	dma_addr_t ring_dma;
	u32 entries;
	struct ncdma_slot *slots;
	spinlock_t ring_lock;		/* submitted, reaped, slots, ring memory */
	struct mutex submit_mutex;	/* one submitter (or ring recovery) at a time */
	u64 submitted;
	u64 reaped;
	u64 ring_seq0;          /* seq of slot 0 since the last ring reset */
	wait_queue_head_t wq;
	bool irq_mode;
	struct work_struct err_work;

	/* Writers change attachments' DMA segments; submitters resolve descriptors as readers. */
	struct rw_semaphore map_sem;

	struct mutex files_lock;	/* files */
	struct list_head files;
	bool dead;              /* removed: files fail with -ENODEV */

	atomic64_t stats[NCDMA_NR_STATS];
};

static inline void ncdma_stat_inc(struct ncdma_dev *nd, enum ncdma_stat s)
{
	atomic64_inc(&nd->stats[s]);
}

static inline void ncdma_stat_add(struct ncdma_dev *nd, enum ncdma_stat s, u64 n)
{
	atomic64_add(n, &nd->stats[s]);
}

/* One open file of /dev/ncdmaN. */
struct ncdma_file {
	struct ncdma_dev *nd;
	struct list_head node;  /* in ncdma_dev.files */
	struct mutex lock;		/* objs, batches, next_batch, dead */
	struct idr objs;
	struct list_head batches;
	u64 next_batch;
	bool dead;
};

enum ncdma_obj_type { NCDMA_OBJ_BUF = 1, NCDMA_OBJ_ATT = 2 };

struct ncdma_obj {
	struct kref ref;
	u32 handle;
	u8 type;
	struct ncdma_file *nf;
};

/* A buffer handle: a dma-buf this file can attach. */
struct ncdma_bo {
	struct ncdma_obj obj;
	struct dma_buf *dmabuf;
	struct ncdma_xbuf *xbuf;  /* set when an ncdma device exported it */
};

/*
 * A buffer attached to this device. Mapping state is guarded by the dma-buf's resv lock and the
 * DMA segments additionally by the device's map_sem.
 */
struct ncdma_att {
	struct ncdma_obj obj;
	struct ncdma_dev *nd;
	struct ncdma_bo *bo;
	struct dma_buf_attachment *dba;
	u32 flags;
	u32 faults;
	struct sg_table *sgt;          /* held mapping, or NULL */
	enum dma_data_direction sgt_dir;
	bool mapped;                   /* between NCDMA_IOC_MAP and NCDMA_IOC_UNMAP */
	enum dma_data_direction dir;   /* direction of that ownership */
	bool invalidated;              /* move_notify dropped the mapping while mapped */
	bool owner;                    /* holds an EXCLUSIVE buffer's ownership */
	struct ncdma_seg *segs;        /* DMA segments of sgt (merged) */
	u32 nsegs;
	u64 seg_bytes;
	struct ncdma_seg *stale;       /* segments of the last mapping that went away */
	u32 nstale;
	u64 stale_bytes;
	u64 maps;
	u64 generation;
};

/* Exporter side (ncdma_export.c) */
struct ncdma_xbuf;
int ncdma_xbuf_create(struct ncdma_dev *nd, u64 size, u32 flags, u32 faults,
		      struct dma_buf **out);
struct ncdma_xbuf *ncdma_xbuf_of(struct dma_buf *dmabuf);
int ncdma_xbuf_move(struct ncdma_xbuf *xb);
int ncdma_xbuf_revoke(struct ncdma_xbuf *xb);
void ncdma_xbuf_set_faults(struct ncdma_xbuf *xb, u32 faults);
void ncdma_xbuf_info(struct ncdma_xbuf *xb, struct ncdma_buf_info *info);
bool ncdma_xbuf_revoked(struct ncdma_xbuf *xb);
int ncdma_xbuf_pages(struct ncdma_xbuf *xb, u64 first, u32 count, u64 __user *out);
u64 ncdma_xbuf_generation(struct ncdma_xbuf *xb);
bool ncdma_xbuf_exclusive(struct ncdma_xbuf *xb);
int ncdma_xbuf_claim_device(struct ncdma_xbuf *xb, struct ncdma_dev *nd, void *who,
			    unsigned int timeout_ms);
void ncdma_xbuf_release_device(struct ncdma_xbuf *xb, void *who);

/* Importer side (ncdma_import.c) */
long ncdma_ioctl_objects(struct ncdma_file *nf, unsigned int cmd, void __user *arg);
void ncdma_file_teardown(struct ncdma_file *nf);

/* Ring and device (ncdma_ring.c) */
int ncdma_ring_init(struct ncdma_dev *nd);
void ncdma_ring_start(struct ncdma_dev *nd);
void ncdma_ring_stop(struct ncdma_dev *nd);
void ncdma_ring_free(struct ncdma_dev *nd);
irqreturn_t ncdma_irq_completion(int irq, void *data);
irqreturn_t ncdma_irq_error(int irq, void *data);
void ncdma_err_work(struct work_struct *work);
struct ncdma_batch *ncdma_batch_alloc(u32 count);
int ncdma_ring_queue(struct ncdma_dev *nd, struct ncdma_piece *p, u32 n,
		     struct ncdma_batch *b);
bool ncdma_batch_done(struct ncdma_dev *nd, struct ncdma_batch *b);
int ncdma_batch_wait(struct ncdma_dev *nd, struct ncdma_batch *b, unsigned long timeout,
		     bool interruptible);
void ncdma_ring_drain(struct ncdma_dev *nd);
int ncdma_maint_segs(struct ncdma_dev *nd, const struct ncdma_seg *segs, u32 nsegs, u8 op,
		     u64 cookie);
int ncdma_maint_segs_safe(struct ncdma_dev *nd, const struct ncdma_seg *segs, u32 nsegs, u8 op,
			  u64 cookie);
int ncdma_maint_sgt(struct ncdma_dev *nd, struct sg_table *sgt, u8 op, u64 cookie);
int ncdma_maint_whole(struct ncdma_dev *nd, u8 op, u64 cookie);
void ncdma_read_counters(struct ncdma_dev *nd, u64 *out);

/* Core (ncdma_main.c) */
struct ncdma_dev *ncdma_dev_of(struct device *dev);
void ncdma_dev_put(struct ncdma_dev *nd);
void ncdma_dev_get(struct ncdma_dev *nd);

static inline u64 ncdma_cookie(u32 reason, u32 handle)
{
	return NCDMA_COOKIE_DRIVER | ((u64)reason << NCDMA_COOKIE_REASON_SHIFT) | handle;
}

#endif /* NCDMA_H */
