// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * ncdma descriptor ring: queueing device descriptors, reaping completions (by MSI-X or by
 * polling), recovering from ring errors, and the driver's own maintenance operations.
 */
#include <linux/delay.h>
#include <linux/dma-mapping.h>
#include <linux/io.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>

#include "ncdma.h"

static u32 ncdma_rd(struct ncdma_dev *nd, u32 reg)
{
	return readl(nd->regs + reg);
}

static void ncdma_wr(struct ncdma_dev *nd, u32 reg, u32 val)
{
	writel(val, nd->regs + reg);
}

int ncdma_ring_init(struct ncdma_dev *nd)
{
	struct device *dev = &nd->pdev->dev;

	nd->ring = dma_alloc_coherent(dev, (size_t)nd->entries * NCDMA_DESC_SIZE, &nd->ring_dma,
				      GFP_KERNEL);
	if (!nd->ring)
		return -ENOMEM;
	nd->slots = kvcalloc(nd->entries, sizeof(*nd->slots), GFP_KERNEL);
	if (!nd->slots) {
		dma_free_coherent(dev, (size_t)nd->entries * NCDMA_DESC_SIZE, nd->ring,
				  nd->ring_dma);
		nd->ring = NULL;
		return -ENOMEM;
	}
	return 0;
}

/* Program and enable the ring; everything queued before is considered gone. */
void ncdma_ring_start(struct ncdma_dev *nd)
{
	u32 ctrl = NCDMA_CTRL_ENABLE | (nd->irq_mode ? NCDMA_CTRL_IRQ_ENABLE : 0);

	ncdma_wr(nd, NCDMA_REG_CTRL, NCDMA_CTRL_RESET);
	ncdma_wr(nd, NCDMA_REG_RING_BASE_LO, lower_32_bits(nd->ring_dma));
	ncdma_wr(nd, NCDMA_REG_RING_BASE_HI, upper_32_bits(nd->ring_dma));
	ncdma_wr(nd, NCDMA_REG_RING_SIZE, nd->entries);
	ncdma_wr(nd, NCDMA_REG_IRQ_STATUS, NCDMA_IRQ_COMPLETION | NCDMA_IRQ_ERROR);
	nd->ring_seq0 = nd->submitted;
	ncdma_wr(nd, NCDMA_REG_CTRL, ctrl);
}

void ncdma_ring_stop(struct ncdma_dev *nd)
{
	ncdma_wr(nd, NCDMA_REG_CTRL, NCDMA_CTRL_RESET);
}

void ncdma_ring_free(struct ncdma_dev *nd)
{
	if (!nd->ring)
		return;
	dma_free_coherent(&nd->pdev->dev, (size_t)nd->entries * NCDMA_DESC_SIZE, nd->ring,
			  nd->ring_dma);
	nd->ring = NULL;
	kvfree(nd->slots);
	nd->slots = NULL;
}

static u32 ncdma_slot_of(struct ncdma_dev *nd, u64 seq)
{
	return (seq - nd->ring_seq0) & (nd->entries - 1);
}

static void ncdma_account(struct ncdma_slot *slot, u32 status, u64 done)
{
	struct ncdma_result *r;

	if (!slot->batch)
		return;
	r = &slot->batch->res[slot->idx];
	r->done += done;
	if (status != NCDMA_ST_OK && r->status == NCDMA_ST_OK)
		r->status = status;
	slot->batch = NULL;
}

/* Collect what the device completed; true if anything was. Called with ring_lock held. */
static bool ncdma_reap_locked(struct ncdma_dev *nd)
{
	u32 hw, since_reset;
	u64 upto, seq;

	if (nd->reaped == nd->submitted)
		return false;
	hw = ncdma_rd(nd, NCDMA_REG_COMPLETED);
	since_reset = (u32)(nd->reaped - nd->ring_seq0);
	upto = nd->reaped + (u32)(hw - since_reset);
	if (upto > nd->submitted)
		upto = nd->submitted;
	if (upto == nd->reaped)
		return false;
	dma_rmb();
	for (seq = nd->reaped; seq < upto; seq++) {
		u32 i = ncdma_slot_of(nd, seq);
		struct ncdma_desc *d = &nd->ring[i];

		ncdma_account(&nd->slots[i], le32_to_cpu(READ_ONCE(d->status)),
			      le64_to_cpu(READ_ONCE(d->done)));
	}
	nd->reaped = upto;
	return true;
}

static bool ncdma_reap(struct ncdma_dev *nd)
{
	unsigned long flags;
	bool progress;

	spin_lock_irqsave(&nd->ring_lock, flags);
	progress = ncdma_reap_locked(nd);
	spin_unlock_irqrestore(&nd->ring_lock, flags);
	if (progress)
		wake_up_all(&nd->wq);
	return progress;
}

irqreturn_t ncdma_irq_completion(int irq, void *data)
{
	struct ncdma_dev *nd = data;

	ncdma_wr(nd, NCDMA_REG_IRQ_STATUS, NCDMA_IRQ_COMPLETION);
	ncdma_stat_inc(nd, ST_IRQS);
	ncdma_reap(nd);
	wake_up_all(&nd->wq);
	return IRQ_HANDLED;
}

irqreturn_t ncdma_irq_error(int irq, void *data)
{
	struct ncdma_dev *nd = data;

	ncdma_wr(nd, NCDMA_REG_IRQ_STATUS, NCDMA_IRQ_ERROR);
	ncdma_stat_inc(nd, ST_IRQS);
	schedule_work(&nd->err_work);
	return IRQ_HANDLED;
}

/*
 * The device stopped its ring (bad fetch or write-back): fail what it did not complete and
 * start the ring again. Submitters are held off by submit_mutex.
 */
static void ncdma_ring_recover_locked(struct ncdma_dev *nd)
{
	unsigned long flags;
	u32 error;
	u64 seq;

	lockdep_assert_held(&nd->submit_mutex);
	if (!(ncdma_rd(nd, NCDMA_REG_STATUS) & NCDMA_STATUS_RING_ERROR))
		return;
	error = ncdma_rd(nd, NCDMA_REG_ERROR);
	ncdma_stat_inc(nd, ST_RING_ERRORS);
	spin_lock_irqsave(&nd->ring_lock, flags);
	ncdma_reap_locked(nd);
	dev_err(&nd->pdev->dev, "ring stopped (error %u): %llu descriptors failed, restarting\n",
		error, nd->submitted - nd->reaped);
	for (seq = nd->reaped; seq < nd->submitted; seq++)
		ncdma_account(&nd->slots[ncdma_slot_of(nd, seq)], NCDMA_RESULT_RING_ERROR, 0);
	nd->reaped = nd->submitted;
	ncdma_ring_start(nd);
	spin_unlock_irqrestore(&nd->ring_lock, flags);
	wake_up_all(&nd->wq);
}

static void ncdma_ring_recover(struct ncdma_dev *nd)
{
	mutex_lock(&nd->submit_mutex);
	ncdma_ring_recover_locked(nd);
	mutex_unlock(&nd->submit_mutex);
}

void ncdma_err_work(struct work_struct *work)
{
	ncdma_ring_recover(container_of(work, struct ncdma_dev, err_work));
}

struct ncdma_batch *ncdma_batch_alloc(u32 count)
{
	struct ncdma_batch *b = kvzalloc(struct_size(b, res, count), GFP_KERNEL);
	u32 i;

	if (!b)
		return NULL;
	b->count = count;
	for (i = 0; i < count; i++)
		b->res[i].status = NCDMA_ST_OK;
	INIT_LIST_HEAD(&b->node);
	return b;
}

static u32 ncdma_ring_space(struct ncdma_dev *nd)
{
	return nd->entries - 1 - (u32)(nd->submitted - nd->reaped);
}

static void ncdma_doorbell(struct ncdma_dev *nd)
{
	wmb();	/* descriptors before the tail that exposes them */
	ncdma_wr(nd, NCDMA_REG_RING_TAIL, (u32)(nd->submitted - nd->ring_seq0) & (nd->entries - 1));
}

/*
 * Queue n pieces of batch b (which must have room for their idx), waiting for ring space as
 * needed. The last piece asks for an interrupt. b->last_seq is set before returning.
 */
int ncdma_ring_queue(struct ncdma_dev *nd, struct ncdma_piece *p, u32 n, struct ncdma_batch *b)
{
	unsigned long flags;
	u32 i = 0;

	if (!n)
		return -EINVAL;
	mutex_lock(&nd->submit_mutex);
	if (nd->dead) {
		mutex_unlock(&nd->submit_mutex);
		return -ENODEV;
	}
	while (i < n) {
		u32 room, k;

		spin_lock_irqsave(&nd->ring_lock, flags);
		ncdma_reap_locked(nd);
		room = ncdma_ring_space(nd);
		for (k = 0; k < room && i < n; k++, i++) {
			u64 seq = nd->submitted++;
			u32 s = ncdma_slot_of(nd, seq);
			struct ncdma_desc *d = &nd->ring[s];

			*d = p[i].d;
			if (i == n - 1 && nd->irq_mode)
				d->flags |= NCDMA_DESC_F_IRQ;
			d->status = cpu_to_le32(NCDMA_ST_PENDING);
			d->done = 0;
			nd->slots[s].batch = b;
			nd->slots[s].idx = p[i].idx;
			b->last_seq = seq;
		}
		if (k)
			ncdma_doorbell(nd);
		spin_unlock_irqrestore(&nd->ring_lock, flags);
		if (i < n) {
			/* Full: let the device make room. */
			wait_event_timeout(nd->wq, ncdma_ring_space(nd) > 0, msecs_to_jiffies(2));
			if ((!nd->irq_mode || !ncdma_ring_space(nd)) && !ncdma_reap(nd))
				ncdma_ring_recover_locked(nd);
		}
	}
	mutex_unlock(&nd->submit_mutex);
	return 0;
}

bool ncdma_batch_done(struct ncdma_dev *nd, struct ncdma_batch *b)
{
	unsigned long flags;
	bool done;

	spin_lock_irqsave(&nd->ring_lock, flags);
	done = nd->reaped > b->last_seq;
	spin_unlock_irqrestore(&nd->ring_lock, flags);
	return done;
}

static void ncdma_check_ring_error(struct ncdma_dev *nd)
{
	if (ncdma_rd(nd, NCDMA_REG_STATUS) & NCDMA_STATUS_RING_ERROR)
		ncdma_ring_recover(nd);
}

/*
 * Wait until the device completed batch b, or timeout jiffies passed (-ETIMEDOUT). Interrupts
 * wake the waiter; polling catches anything an interrupt did not report.
 */
int ncdma_batch_wait(struct ncdma_dev *nd, struct ncdma_batch *b, unsigned long timeout,
		     bool interruptible)
{
	unsigned long deadline = jiffies + timeout;
	unsigned int idle = 0;

	for (;;) {
		if (ncdma_batch_done(nd, b))
			return 0;
		if (ncdma_reap(nd)) {
			ncdma_stat_inc(nd, ST_POLLS);
			idle = 0;
			continue;
		}
		if (time_after(jiffies, deadline))
			return -ETIMEDOUT;
		if (interruptible && signal_pending(current))
			return -ERESTARTSYS;
		if (++idle % 16 == 0)
			ncdma_check_ring_error(nd);
		if (nd->irq_mode)
			wait_event_timeout(nd->wq, ncdma_batch_done(nd, b), msecs_to_jiffies(5));
		else
			usleep_range(20, 100);
	}
}

/* Wait until everything queued so far completed. */
void ncdma_ring_drain(struct ncdma_dev *nd)
{
	struct ncdma_batch marker = {};
	unsigned long flags;

	spin_lock_irqsave(&nd->ring_lock, flags);
	if (nd->submitted == nd->reaped) {
		spin_unlock_irqrestore(&nd->ring_lock, flags);
		return;
	}
	marker.last_seq = nd->submitted - 1;
	spin_unlock_irqrestore(&nd->ring_lock, flags);
	while (ncdma_batch_wait(nd, &marker, 10 * HZ, false) == -ETIMEDOUT)
		dev_warn(&nd->pdev->dev, "ring does not drain\n");
}

/*
 * Run maintenance pieces synchronously. Returns 0, a negative errno if they could not run, or
 * the device's NCDMA_ST_* (positive) of the first piece that failed.
 */
static int ncdma_run(struct ncdma_dev *nd, struct ncdma_piece *p, u32 n)
{
	struct ncdma_batch *b;
	int ret;

	b = ncdma_batch_alloc(1);
	if (!b)
		return -ENOMEM;
	ret = ncdma_ring_queue(nd, p, n, b);
	if (!ret) {
		while (ncdma_batch_wait(nd, b, 10 * HZ, false) == -ETIMEDOUT)
			dev_warn(&nd->pdev->dev, "maintenance does not complete\n");
		if (b->res[0].status != NCDMA_ST_OK) {
			dev_dbg(&nd->pdev->dev, "maintenance failed: status %u\n",
				b->res[0].status);
			ret = b->res[0].status;
		}
		ncdma_stat_inc(nd, ST_SYNCS);
		ncdma_stat_add(nd, ST_MAINT_DESCS, n);
	}
	kvfree(b);
	return ret;
}

static void ncdma_fill(struct ncdma_piece *p, u8 op, u8 flags, u64 dst, u64 len, u64 cookie)
{
	memset(p, 0, sizeof(*p));
	p->d.opcode = op;
	p->d.flags = flags;
	p->d.dst = cpu_to_le64(dst);
	p->d.len = cpu_to_le64(len);
	p->d.cookie = cpu_to_le64(cookie);
}

static u32 ncdma_pieces_for(struct ncdma_dev *nd, u64 len)
{
	return DIV_ROUND_UP_ULL(len, nd->max_xfer);
}

int ncdma_maint_segs(struct ncdma_dev *nd, const struct ncdma_seg *segs, u32 nsegs, u8 op,
		     u64 cookie)
{
	struct ncdma_piece *p;
	u32 i, n = 0, total = 0;
	int ret;

	for (i = 0; i < nsegs; i++)
		total += ncdma_pieces_for(nd, segs[i].len);
	if (!total)
		return 0;
	p = kvmalloc_array(total, sizeof(*p), GFP_KERNEL);
	if (!p)
		return -ENOMEM;
	for (i = 0; i < nsegs; i++) {
		u64 off;

		for (off = 0; off < segs[i].len; off += nd->max_xfer)
			ncdma_fill(&p[n++], op, 0, segs[i].addr + off,
				   min_t(u64, nd->max_xfer, segs[i].len - off), cookie);
	}
	ret = ncdma_run(nd, p, n);
	kvfree(p);
	return ret;
}

/*
 * The driver's own maintenance of a range. If the device cannot translate it (it translates
 * maintenance for reading, and a DMA_FROM_DEVICE mapping may be write-only, as virtio-iommu
 * makes it), the range's lines are cleaned and dropped with the rest of the cache instead:
 * never losing the device's writes matters more than the other buffers' cached lines.
 */
int ncdma_maint_segs_safe(struct ncdma_dev *nd, const struct ncdma_seg *segs, u32 nsegs, u8 op,
			  u64 cookie)
{
	int ret = ncdma_maint_segs(nd, segs, nsegs, op, cookie);

	if (ret != NCDMA_ST_IOMMU_FAULT)
		return ret;
	dev_warn_once(&nd->pdev->dev,
		      "a range could not be translated for maintenance: maintaining the whole cache\n");
	ncdma_stat_inc(nd, ST_MAINT_FALLBACKS);
	return ncdma_maint_whole(nd, NCDMA_OP_CLEAN_INVALIDATE, cookie);
}

int ncdma_maint_sgt(struct ncdma_dev *nd, struct sg_table *sgt, u8 op, u64 cookie)
{
	struct ncdma_seg *segs;
	struct scatterlist *sg;
	u32 n = 0;
	int i, ret;

	segs = kvmalloc_array(max_t(u32, sgt->nents, 1), sizeof(*segs), GFP_KERNEL);
	if (!segs)
		return -ENOMEM;
	for_each_sgtable_dma_sg(sgt, sg, i) {
		dma_addr_t addr = sg_dma_address(sg);
		u32 len = sg_dma_len(sg);

		if (n && segs[n - 1].addr + segs[n - 1].len == addr) {
			segs[n - 1].len += len;
		} else {
			segs[n].addr = addr;
			segs[n++].len = len;
		}
	}
	ret = ncdma_maint_segs_safe(nd, segs, n, op, cookie);
	kvfree(segs);
	return ret;
}

int ncdma_maint_whole(struct ncdma_dev *nd, u8 op, u64 cookie)
{
	struct ncdma_piece p;

	ncdma_fill(&p, op, NCDMA_DESC_F_WHOLE, 0, 0, cookie);
	return ncdma_run(nd, &p, 1);
}

void ncdma_read_counters(struct ncdma_dev *nd, u64 *out)
{
	u32 i;

	for (i = 0; i < NCDMA_NR_COUNTERS; i++)
		out[i] = readq(nd->regs + NCDMA_COUNTERS_OFFSET + 8 * i);
}
