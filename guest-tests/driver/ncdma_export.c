// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * ncdma as a dma-buf exporter: buffers of our own pages.
 *
 * The exporter knows every attachment and the mapping it handed out, so it drives the device
 * cache maintenance of CPU access (begin/end_cpu_access) for every ncdma device that holds a
 * mapping, and tears mappings down itself on move and revoke. Policies per buffer:
 * DYNAMIC (pin/unpin, movable), CACHE_SGT (the core keeps the first mapping), EXCLUSIVE (one
 * owner at a time) and SHARE_DOMAIN (devices in one IOMMU domain reuse one mapping).
 */
#include <linux/dma-buf.h>
#include <linux/dma-mapping.h>
#include <linux/dma-resv.h>
#include <linux/file.h>
#include <linux/highmem.h>
#include <linux/iommu.h>
#include <linux/mm.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>

#include "ncdma.h"
#include "ncdma_compat.h"

/* A DMA mapping of the pages, shared by the attachments of one IOMMU domain (SHARE_DOMAIN). */
struct ncdma_xmap {
	struct sg_table sgt;
	struct device *dev;              /* the device it was mapped for (held) */
	struct iommu_domain *domain;
	enum dma_data_direction dir;
	u64 generation;
	unsigned int users;
	bool dead;                       /* unmapped by revoke; importers still hold sgt */
};

struct ncdma_xatt {
	struct list_head node;
	struct dma_buf_attachment *attach;
	struct ncdma_xmap *map;
	unsigned int pins;
};

struct ncdma_xbuf {
	struct ncdma_dev *nd;            /* the exporting device (held) */
	struct dma_buf *dmabuf;
	u64 size;
	unsigned long npages;
	struct page **pages;
	u32 flags;
	u32 faults;
	struct mutex lock;		/* atts, maps, pages, pins, revoked */
	struct list_head atts;
	unsigned int pins;
	bool revoked;
	u64 moves;
	u64 generation;
	/* EXCLUSIVE ownership */
	spinlock_t owner_lock;		/* dev_owner, cpu_owners */
	wait_queue_head_t owner_wq;
	void *dev_owner;
	unsigned int cpu_owners;
};

static const struct dma_buf_ops ncdma_xops_static;
static const struct dma_buf_ops ncdma_xops_dynamic;
static const struct dma_buf_ops ncdma_xops_cached;

struct ncdma_xbuf *ncdma_xbuf_of(struct dma_buf *dmabuf)
{
	if (dmabuf->ops == &ncdma_xops_static || dmabuf->ops == &ncdma_xops_dynamic ||
	    dmabuf->ops == &ncdma_xops_cached)
		return dmabuf->priv;
	return NULL;
}

static u32 ncdma_attach_handle(struct dma_buf_attachment *attach)
{
	struct ncdma_att *att = attach->importer_priv;

	return ncdma_dev_of(attach->dev) && att ? att->obj.handle : 0;
}

/* Maintenance on every ncdma device holding a live mapping. Called with xb->lock held. */
static void ncdma_holders_maint(struct ncdma_xbuf *xb, u8 op, u32 reason, bool drain)
{
	struct ncdma_xatt *xa;

	list_for_each_entry(xa, &xb->atts, node) {
		struct ncdma_dev *nd = ncdma_dev_of(xa->attach->dev);

		if (!nd || !xa->map || xa->map->dead)
			continue;
		if (drain)
			ncdma_ring_drain(nd);
		if (op != NCDMA_OP_NOP)
			ncdma_maint_sgt(nd, &xa->map->sgt, op,
					ncdma_cookie(reason, ncdma_attach_handle(xa->attach)));
	}
}

/*
 * The CPU side of a mapping: the streaming DMA API cleans the CPU caches for the device (map,
 * sync_for_device) and invalidates them for the CPU (unmap, sync_for_cpu) when the device is not
 * coherent. The faulty modes skip those syncs or give them the wrong direction: arm64
 * invalidates nothing for DMA_TO_DEVICE.
 */
static enum dma_data_direction ncdma_cpu_dir(struct ncdma_xmap *m, u32 faults)
{
	return faults & NCDMA_FAULT_SYNC_WRONG_DIR ? DMA_TO_DEVICE : m->dir;
}

static void ncdma_xmap_unmap(struct ncdma_xbuf *xb, struct ncdma_xmap *m)
{
	u32 faults = READ_ONCE(xb->faults);

	dma_unmap_sgtable(m->dev, &m->sgt, ncdma_cpu_dir(m, faults),
			  faults & NCDMA_FAULT_SKIP_SYNC_FOR_CPU ? DMA_ATTR_SKIP_CPU_SYNC : 0);
}

/* CPU access begins (for_cpu) or ends: sync every live mapping. Called with xb->lock held. */
static void ncdma_holders_sync(struct ncdma_xbuf *xb, bool for_cpu)
{
	u32 faults = READ_ONCE(xb->faults);
	u32 skip = for_cpu ? NCDMA_FAULT_SKIP_SYNC_FOR_CPU : NCDMA_FAULT_SKIP_SYNC_FOR_DEVICE;
	struct ncdma_xatt *xa;

	if (faults & (skip | NCDMA_FAULT_CPU_ACCESS_NO_SYNC))
		return;
	list_for_each_entry(xa, &xb->atts, node) {
		struct ncdma_xmap *m = xa->map;

		if (!m || m->dead)
			continue;
		if (for_cpu)
			dma_sync_sgtable_for_cpu(m->dev, &m->sgt, ncdma_cpu_dir(m, faults));
		else
			dma_sync_sgtable_for_device(m->dev, &m->sgt, m->dir);
	}
}

/* EXCLUSIVE ownership */

static bool ncdma_try_claim_device(struct ncdma_xbuf *xb, void *who)
{
	bool ok;

	spin_lock(&xb->owner_lock);
	ok = (!xb->dev_owner || xb->dev_owner == who) && !xb->cpu_owners;
	if (ok)
		xb->dev_owner = who;
	spin_unlock(&xb->owner_lock);
	return ok;
}

static bool ncdma_try_claim_cpu(struct ncdma_xbuf *xb)
{
	bool ok;

	spin_lock(&xb->owner_lock);
	ok = !xb->dev_owner;
	if (ok)
		xb->cpu_owners++;
	spin_unlock(&xb->owner_lock);
	return ok;
}

static bool ncdma_device_owned(struct ncdma_xbuf *xb)
{
	return !!READ_ONCE(xb->dev_owner);
}

typedef bool (*ncdma_claim_fn)(struct ncdma_xbuf *xb, void *who);

static int ncdma_wait_owner(struct ncdma_xbuf *xb, struct ncdma_dev *nd, ncdma_claim_fn try,
			    void *who, unsigned int timeout_ms)
{
	unsigned long timeout = msecs_to_jiffies(timeout_ms ?: NCDMA_DEFAULT_WAIT_MS);
	long ret;

	if (try(xb, who))
		return 0;
	ncdma_stat_inc(nd, ST_OWNER_WAITS);
	ret = wait_event_interruptible_timeout(xb->owner_wq, try(xb, who), timeout);
	if (ret < 0)
		return ret;
	return ret ? 0 : -ETIMEDOUT;
}

static bool ncdma_try_cpu(struct ncdma_xbuf *xb, void *unused)
{
	return ncdma_try_claim_cpu(xb);
}

/*
 * A device takes ownership (NCDMA_IOC_MAP on an EXCLUSIVE buffer): wait for the previous owner
 * to unmap and for CPU access to end, then unmap the buffer from user space so that CPU
 * touches fault and wait until the device gives it back.
 */
int ncdma_xbuf_claim_device(struct ncdma_xbuf *xb, struct ncdma_dev *nd, void *who,
			    unsigned int timeout_ms)
{
	int ret = ncdma_wait_owner(xb, nd, ncdma_try_claim_device, who, timeout_ms);

	if (ret)
		return ret;
	mutex_lock(&xb->lock);
	unmap_mapping_range(xb->dmabuf->file->f_mapping, 0, 0, 1);
	mutex_unlock(&xb->lock);
	return 0;
}

void ncdma_xbuf_release_device(struct ncdma_xbuf *xb, void *who)
{
	spin_lock(&xb->owner_lock);
	if (xb->dev_owner == who)
		xb->dev_owner = NULL;
	spin_unlock(&xb->owner_lock);
	wake_up_all(&xb->owner_wq);
}

bool ncdma_xbuf_exclusive(struct ncdma_xbuf *xb)
{
	return xb->flags & NCDMA_BUF_EXCLUSIVE;
}

bool ncdma_xbuf_revoked(struct ncdma_xbuf *xb)
{
	return READ_ONCE(xb->revoked);
}

u64 ncdma_xbuf_generation(struct ncdma_xbuf *xb)
{
	return READ_ONCE(xb->generation);
}

void ncdma_xbuf_set_faults(struct ncdma_xbuf *xb, u32 faults)
{
	WRITE_ONCE(xb->faults, faults);
}

int ncdma_xbuf_pages(struct ncdma_xbuf *xb, u64 first, u32 count, u64 __user *out)
{
	u64 *pas;
	u32 i;
	int ret = 0;

	if (first > xb->npages || count > xb->npages - first)
		return -ERANGE;
	pas = kvmalloc_array(max_t(u32, count, 1), sizeof(*pas), GFP_KERNEL);
	if (!pas)
		return -ENOMEM;
	mutex_lock(&xb->lock);
	for (i = 0; i < count; i++)
		pas[i] = page_to_phys(xb->pages[first + i]);
	mutex_unlock(&xb->lock);
	if (count && copy_to_user(out, pas, count * sizeof(*pas)))
		ret = -EFAULT;
	kvfree(pas);
	return ret;
}

void ncdma_xbuf_info(struct ncdma_xbuf *xb, struct ncdma_buf_info *info)
{
	struct ncdma_xatt *xa;

	mutex_lock(&xb->lock);
	info->state |= NCDMA_BUF_STATE_NCDMA;
	if (xb->revoked)
		info->state |= NCDMA_BUF_STATE_REVOKED;
	if (ncdma_device_owned(xb))
		info->state |= NCDMA_BUF_STATE_DEVICE_OWNED;
	info->flags = xb->flags;
	info->faults = xb->faults;
	info->pins = xb->pins;
	info->cpu_owners = READ_ONCE(xb->cpu_owners);
	info->moves = xb->moves;
	info->generation = xb->generation;
	list_for_each_entry(xa, &xb->atts, node) {
		info->attachments++;
		if (xa->map)
			info->mappings++;
	}
	mutex_unlock(&xb->lock);
}

/* dma_buf_ops */

static int ncdma_x_attach(struct dma_buf *dmabuf, struct dma_buf_attachment *attach)
{
	struct ncdma_xbuf *xb = dmabuf->priv;
	struct ncdma_xatt *xa = kzalloc(sizeof(*xa), GFP_KERNEL);

	if (!xa)
		return -ENOMEM;
	xa->attach = attach;
	attach->priv = xa;
	mutex_lock(&xb->lock);
	list_add_tail(&xa->node, &xb->atts);
	mutex_unlock(&xb->lock);
	return 0;
}

static void ncdma_x_detach(struct dma_buf *dmabuf, struct dma_buf_attachment *attach)
{
	struct ncdma_xbuf *xb = dmabuf->priv;
	struct ncdma_xatt *xa = attach->priv;

	mutex_lock(&xb->lock);
	list_del(&xa->node);
	WARN_ON(xa->map || xa->pins);
	mutex_unlock(&xb->lock);
	kfree(xa);
}

static struct ncdma_xmap *ncdma_find_shared(struct ncdma_xbuf *xb, struct iommu_domain *domain,
					    enum dma_data_direction dir)
{
	struct ncdma_xatt *xa;

	list_for_each_entry(xa, &xb->atts, node) {
		struct ncdma_xmap *m = xa->map;

		if (m && !m->dead && m->domain == domain && m->generation == xb->generation &&
		    (m->dir == dir || m->dir == DMA_BIDIRECTIONAL))
			return m;
	}
	return NULL;
}

static struct sg_table *ncdma_x_map(struct dma_buf_attachment *attach,
				    enum dma_data_direction dir)
{
	struct ncdma_xbuf *xb = attach->dmabuf->priv;
	struct ncdma_xatt *xa = attach->priv;
	struct iommu_domain *domain = iommu_get_domain_for_dev(attach->dev);
	struct ncdma_xmap *m;
	int ret;

	mutex_lock(&xb->lock);
	if (xb->revoked) {
		ret = -ENODEV;
		goto fail;
	}
	if (xa->map) {
		ret = -EBUSY;
		goto fail;
	}
	if ((xb->flags & NCDMA_BUF_SHARE_DOMAIN) && domain) {
		m = ncdma_find_shared(xb, domain, dir);
		if (m) {
			m->users++;
			xa->map = m;
			ncdma_stat_inc(xb->nd, ST_EXP_SHARED_MAPS);
			mutex_unlock(&xb->lock);
			return &m->sgt;
		}
	}
	m = kzalloc(sizeof(*m), GFP_KERNEL);
	if (!m) {
		ret = -ENOMEM;
		goto fail;
	}
	ret = sg_alloc_table_from_pages(&m->sgt, xb->pages, xb->npages, 0, xb->size, GFP_KERNEL);
	if (ret)
		goto fail_free;
	ret = dma_map_sgtable(attach->dev, &m->sgt, dir,
			      READ_ONCE(xb->faults) & NCDMA_FAULT_SKIP_SYNC_FOR_DEVICE ?
			      DMA_ATTR_SKIP_CPU_SYNC : 0);
	if (ret)
		goto fail_table;
	m->dev = get_device(attach->dev);
	m->domain = domain;
	m->dir = dir;
	m->generation = xb->generation;
	m->users = 1;
	xa->map = m;
	ncdma_stat_inc(xb->nd, ST_EXP_MAPS);
	mutex_unlock(&xb->lock);
	return &m->sgt;

fail_table:
	sg_free_table(&m->sgt);
fail_free:
	kfree(m);
fail:
	mutex_unlock(&xb->lock);
	return ERR_PTR(ret);
}

/* Drop one user of a mapping; the last one unmaps it. Called with xb->lock held. */
static void ncdma_xmap_put(struct ncdma_xbuf *xb, struct ncdma_xmap *m)
{
	if (--m->users)
		return;
	if (!m->dead) {
		ncdma_xmap_unmap(xb, m);
		ncdma_stat_inc(xb->nd, ST_EXP_UNMAPS);
	}
	sg_free_table(&m->sgt);
	put_device(m->dev);
	kfree(m);
}

static void ncdma_x_unmap(struct dma_buf_attachment *attach, struct sg_table *sgt,
			  enum dma_data_direction dir)
{
	struct ncdma_xbuf *xb = attach->dmabuf->priv;
	struct ncdma_xatt *xa = attach->priv;

	mutex_lock(&xb->lock);
	if (!WARN_ON(!xa->map || sgt != &xa->map->sgt)) {
		ncdma_xmap_put(xb, xa->map);
		xa->map = NULL;
	}
	mutex_unlock(&xb->lock);
}

static int ncdma_x_pin(struct dma_buf_attachment *attach)
{
	struct ncdma_xbuf *xb = attach->dmabuf->priv;
	struct ncdma_xatt *xa = attach->priv;

	mutex_lock(&xb->lock);
	xa->pins++;
	xb->pins++;
	mutex_unlock(&xb->lock);
	ncdma_stat_inc(xb->nd, ST_PINS);
	return 0;
}

static void ncdma_x_unpin(struct dma_buf_attachment *attach)
{
	struct ncdma_xbuf *xb = attach->dmabuf->priv;
	struct ncdma_xatt *xa = attach->priv;

	mutex_lock(&xb->lock);
	if (!WARN_ON(!xa->pins)) {
		xa->pins--;
		xb->pins--;
	}
	mutex_unlock(&xb->lock);
	ncdma_stat_inc(xb->nd, ST_UNPINS);
}

/*
 * The CPU takes the buffer: every device holding a mapping writes its dirty lines back, so the
 * CPU reads what the devices wrote and its own writes are not overwritten later; then the
 * mappings are synced for the CPU (on a noncoherent platform: its caches are invalidated).
 */
static int ncdma_x_begin_cpu(struct dma_buf *dmabuf, enum dma_data_direction dir)
{
	struct ncdma_xbuf *xb = dmabuf->priv;
	int ret;

	if (xb->flags & NCDMA_BUF_EXCLUSIVE) {
		ret = ncdma_wait_owner(xb, xb->nd, ncdma_try_cpu, NULL, 0);
		if (ret)
			return ret;
	}
	ncdma_stat_inc(xb->nd, ST_CPU_BEGINS);
	mutex_lock(&xb->lock);
	if (!(READ_ONCE(xb->faults) & NCDMA_FAULT_SKIP_CPU_BEGIN))
		ncdma_holders_maint(xb, NCDMA_OP_CLEAN, NCDMA_REASON_CPU_BEGIN, false);
	ncdma_holders_sync(xb, true);
	mutex_unlock(&xb->lock);
	return 0;
}

/*
 * The CPU gives the buffer back: the mappings are synced for their devices (the CPU caches
 * cleaned), and after a CPU write the devices drop their (now stale) lines.
 */
static int ncdma_x_end_cpu(struct dma_buf *dmabuf, enum dma_data_direction dir)
{
	struct ncdma_xbuf *xb = dmabuf->priv;

	ncdma_stat_inc(xb->nd, ST_CPU_ENDS);
	mutex_lock(&xb->lock);
	ncdma_holders_sync(xb, false);
	if (dir != DMA_FROM_DEVICE && !(READ_ONCE(xb->faults) & NCDMA_FAULT_SKIP_CPU_END))
		ncdma_holders_maint(xb, NCDMA_OP_INVALIDATE, NCDMA_REASON_CPU_END, false);
	mutex_unlock(&xb->lock);
	if (xb->flags & NCDMA_BUF_EXCLUSIVE) {
		spin_lock(&xb->owner_lock);
		if (xb->cpu_owners)
			xb->cpu_owners--;
		spin_unlock(&xb->owner_lock);
		wake_up_all(&xb->owner_wq);
	}
	return 0;
}

/*
 * CPU access through the mapping. While a device owns an EXCLUSIVE buffer the fault waits for
 * the unmap, without the mmap lock (the owner's own work may need it), and is then retried.
 */
static vm_fault_t ncdma_x_fault(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;
	struct ncdma_xbuf *xb = vma->vm_private_data;
	vm_fault_t ret;

	mutex_lock(&xb->lock);
	while ((xb->flags & NCDMA_BUF_EXCLUSIVE) && ncdma_device_owned(xb)) {
		mutex_unlock(&xb->lock);
		ncdma_stat_inc(xb->nd, ST_OWNER_WAITS);
		if (fault_flag_allow_retry_first(vmf->flags)) {
			struct file *file;

			if (vmf->flags & FAULT_FLAG_RETRY_NOWAIT)
				return VM_FAULT_RETRY;
			/* The file keeps xb alive once the lock no longer keeps the VMA. */
			file = get_file(vma->vm_file);
			release_fault_lock(vmf);
			wait_event_killable(xb->owner_wq, !ncdma_device_owned(xb));
			fput(file);
			return VM_FAULT_RETRY;
		}
		if (wait_event_killable(xb->owner_wq, !ncdma_device_owned(xb)))
			return VM_FAULT_SIGBUS;
		mutex_lock(&xb->lock);
	}
	if (vmf->pgoff >= xb->npages)
		ret = VM_FAULT_SIGBUS;
	else
		ret = vmf_insert_pfn(vma, vmf->address, page_to_pfn(xb->pages[vmf->pgoff]));
	mutex_unlock(&xb->lock);
	return ret;
}

static const struct vm_operations_struct ncdma_x_vm_ops = {
	.fault = ncdma_x_fault,
};

static int ncdma_x_mmap(struct dma_buf *dmabuf, struct vm_area_struct *vma)
{
	if ((vma->vm_flags & (VM_SHARED | VM_MAYSHARE)) == 0)
		return -EINVAL;
	vm_flags_set(vma, VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP);
	vma->vm_ops = &ncdma_x_vm_ops;
	vma->vm_private_data = dmabuf->priv;
	return 0;
}

static void ncdma_free_pages(struct page **pages, unsigned long n)
{
	unsigned long i;

	for (i = 0; i < n; i++)
		if (pages[i])
			__free_page(pages[i]);
	kvfree(pages);
}

static void ncdma_x_release(struct dma_buf *dmabuf)
{
	struct ncdma_xbuf *xb = dmabuf->priv;

	WARN_ON(!list_empty(&xb->atts));
	ncdma_free_pages(xb->pages, xb->npages);
	ncdma_dev_put(xb->nd);
	kfree(xb);
}

#define NCDMA_XOPS_COMMON					\
	.attach = ncdma_x_attach,				\
	.detach = ncdma_x_detach,				\
	.map_dma_buf = ncdma_x_map,				\
	.unmap_dma_buf = ncdma_x_unmap,				\
	.begin_cpu_access = ncdma_x_begin_cpu,			\
	.end_cpu_access = ncdma_x_end_cpu,			\
	.mmap = ncdma_x_mmap,					\
	.release = ncdma_x_release

static const struct dma_buf_ops ncdma_xops_static = {
	NCDMA_XOPS_COMMON,
};

static const struct dma_buf_ops ncdma_xops_dynamic = {
	NCDMA_XOPS_COMMON,
	.pin = ncdma_x_pin,
	.unpin = ncdma_x_unpin,
};

static const struct dma_buf_ops ncdma_xops_cached = {
	NCDMA_XOPS_COMMON,
	.cache_sgt_mapping = true,
};

static void ncdma_free_page_list(struct list_head *list)
{
	struct page *p, *tmp;

	list_for_each_entry_safe(p, tmp, list, lru) {
		list_del(&p->lru);
		__free_page(p);
	}
}

/*
 * No page directly follows the one before it: adjacent pages would merge into one sg segment
 * and one IOMMU mapping, so segment and MAP counts would depend on where the page allocator
 * happened to put a buffer on this boot. A page that follows its predecessor is set aside
 * (at most about one per page) and freed once the buffer is complete.
 */
static struct page **ncdma_alloc_pages(unsigned long n)
{
	struct page **pages = kvcalloc(n, sizeof(*pages), GFP_KERNEL);
	LIST_HEAD(spare);
	unsigned long i = 0;
	struct page *p;

	if (!pages)
		return NULL;
	while (i < n) {
		p = alloc_page(GFP_KERNEL | __GFP_ZERO);
		if (!p) {
			ncdma_free_page_list(&spare);
			ncdma_free_pages(pages, n);
			return NULL;
		}
		if (i && page_to_pfn(p) == page_to_pfn(pages[i - 1]) + 1)
			list_add(&p->lru, &spare);
		else
			pages[i++] = p;
	}
	ncdma_free_page_list(&spare);
	return pages;
}

int ncdma_xbuf_create(struct ncdma_dev *nd, u64 size, u32 flags, u32 faults,
		      struct dma_buf **out)
{
	DEFINE_DMA_BUF_EXPORT_INFO(exp);
	struct ncdma_xbuf *xb;
	struct dma_buf *dmabuf;

	if (!size || size > NCDMA_MAX_BUF_SIZE || flags & ~NCDMA_BUF_FLAGS_VALID ||
	    faults & ~NCDMA_FAULTS_VALID)
		return -EINVAL;
	if ((flags & NCDMA_BUF_DYNAMIC) && (flags & NCDMA_BUF_CACHE_SGT))
		return -EINVAL;
	xb = kzalloc(sizeof(*xb), GFP_KERNEL);
	if (!xb)
		return -ENOMEM;
	xb->size = PAGE_ALIGN(size);
	xb->npages = xb->size >> PAGE_SHIFT;
	xb->flags = flags;
	xb->faults = faults;
	mutex_init(&xb->lock);
	INIT_LIST_HEAD(&xb->atts);
	spin_lock_init(&xb->owner_lock);
	init_waitqueue_head(&xb->owner_wq);
	xb->pages = ncdma_alloc_pages(xb->npages);
	if (!xb->pages) {
		kfree(xb);
		return -ENOMEM;
	}
	if (flags & NCDMA_BUF_DYNAMIC)
		exp.ops = &ncdma_xops_dynamic;
	else if (flags & NCDMA_BUF_CACHE_SGT)
		exp.ops = &ncdma_xops_cached;
	else
		exp.ops = &ncdma_xops_static;
	exp.size = xb->size;
	exp.flags = O_RDWR;
	exp.priv = xb;
	ncdma_dev_get(nd);
	xb->nd = nd;
	dmabuf = dma_buf_export(&exp);
	if (IS_ERR(dmabuf)) {
		ncdma_dev_put(nd);
		ncdma_free_pages(xb->pages, xb->npages);
		kfree(xb);
		return PTR_ERR(dmabuf);
	}
	xb->dmabuf = dmabuf;
	*out = dmabuf;
	return 0;
}

/* Is any attachment pinned by an importer that cannot let go (a static one)? */
static bool ncdma_pinned_static(struct ncdma_xbuf *xb)
{
	struct ncdma_xatt *xa;

	list_for_each_entry(xa, &xb->atts, node)
		if (xa->pins && !xa->attach->importer_ops)
			return true;
	return false;
}

static bool ncdma_any_mapping(struct ncdma_xbuf *xb)
{
	struct ncdma_xatt *xa;

	list_for_each_entry(xa, &xb->atts, node)
		if (xa->map)
			return true;
	return false;
}

/*
 * Move the backing storage to new pages (seed 001). Static importers pin: refused. Dynamic
 * importers get move_notify and must drop their mappings (with CONFIG_DMABUF_MOVE_NOTIFY unset
 * the core pins at their map; dropping the mapping drops that pin too).
 */
int ncdma_xbuf_move(struct ncdma_xbuf *xb)
{
	struct dma_buf *dmabuf = xb->dmabuf;
	struct page **old, **fresh;
	unsigned long i;
	int ret = 0;

	if (!(xb->flags & NCDMA_BUF_DYNAMIC))
		return -EOPNOTSUPP;
	fresh = ncdma_alloc_pages(xb->npages);
	if (!fresh)
		return -ENOMEM;
	ret = dma_resv_lock_interruptible(dmabuf->resv, NULL);
	if (ret)
		goto out_free;
	mutex_lock(&xb->lock);
	if (xb->revoked) {
		ret = -ENODEV;
	} else if (ncdma_pinned_static(xb)) {
		ncdma_stat_inc(xb->nd, ST_MOVES_REFUSED);
		ret = -EBUSY;
	} else {
		u8 op = xb->faults & NCDMA_FAULT_SKIP_TEARDOWN_CLEAN ? NCDMA_OP_NOP
								   : NCDMA_OP_CLEAN_INVALIDATE;

		ncdma_holders_maint(xb, op, NCDMA_REASON_MOVE, true);
	}
	mutex_unlock(&xb->lock);
	if (ret)
		goto out_unlock;

	dma_buf_move_notify(dmabuf);

	mutex_lock(&xb->lock);
	if (xb->pins || ncdma_any_mapping(xb)) {
		/* An importer kept its mapping: the pages stay. */
		ncdma_stat_inc(xb->nd, ST_MOVES_REFUSED);
		ret = -EBUSY;
	} else {
		unmap_mapping_range(dmabuf->file->f_mapping, 0, 0, 1);
		for (i = 0; i < xb->npages; i++)
			copy_highpage(fresh[i], xb->pages[i]);
		old = xb->pages;
		xb->pages = fresh;
		fresh = old;
		xb->moves++;
		xb->generation++;
		ncdma_stat_inc(xb->nd, ST_MOVES);
	}
	mutex_unlock(&xb->lock);
out_unlock:
	dma_resv_unlock(dmabuf->resv);
out_free:
	ncdma_free_pages(fresh, xb->npages);
	return ret;
}

/*
 * Revoke (seed 002): the exporter tears every mapping down now. Holders' in-flight DMA is
 * drained and their dirty lines written back first; afterwards DMA through the old addresses
 * faults in the IOMMU, and new maps fail with -ENODEV.
 */
int ncdma_xbuf_revoke(struct ncdma_xbuf *xb)
{
	struct dma_buf *dmabuf = xb->dmabuf;
	struct ncdma_xatt *xa;
	int ret;

	ret = dma_resv_lock_interruptible(dmabuf->resv, NULL);
	if (ret)
		return ret;
	mutex_lock(&xb->lock);
	if (!xb->revoked) {
		u8 op = xb->faults & NCDMA_FAULT_SKIP_TEARDOWN_CLEAN ? NCDMA_OP_NOP
								   : NCDMA_OP_CLEAN_INVALIDATE;

		xb->revoked = true;
		ncdma_holders_maint(xb, op, NCDMA_REASON_REVOKE, true);
		/* No device owns a revoked buffer: waiting maps and CPU faults go on at once. */
		spin_lock(&xb->owner_lock);
		xb->dev_owner = NULL;
		spin_unlock(&xb->owner_lock);
		list_for_each_entry(xa, &xb->atts, node) {
			struct ncdma_xmap *m = xa->map;

			if (m && !m->dead) {
				ncdma_xmap_unmap(xb, m);
				m->dead = true;
				ncdma_stat_inc(xb->nd, ST_EXP_UNMAPS);
			}
		}
		ncdma_stat_inc(xb->nd, ST_REVOKES);
	}
	mutex_unlock(&xb->lock);
	wake_up_all(&xb->owner_wq);
	dma_buf_move_notify(dmabuf);
	dma_resv_unlock(dmabuf->resv);
	return 0;
}
