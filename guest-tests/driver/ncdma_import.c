// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * ncdma as a dma-buf importer: buffer and attachment handles of an open file, ownership
 * transfers (map/unmap) with the device cache maintenance they need, move_notify, and batches
 * of descriptors resolved through attachments' DMA segments.
 *
 * The importer maintains its own device's cache at its ownership transfers: INVALIDATE when the
 * device takes the buffer (map), CLEAN+INVALIDATE when it gives it back (unmap), whether or not
 * the IOMMU mapping itself is kept across them.
 */
#include <linux/dma-buf.h>
#include <linux/dma-mapping.h>
#include <linux/dma-resv.h>
#include <linux/file.h>
#include <linux/iosys-map.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>

#include "ncdma.h"
#include "ncdma_compat.h"

/* Handles */

static void ncdma_obj_release(struct kref *ref);

static int ncdma_obj_add(struct ncdma_file *nf, struct ncdma_obj *obj, u8 type)
{
	int id;

	kref_init(&obj->ref);
	obj->type = type;
	obj->nf = nf;
	mutex_lock(&nf->lock);
	id = nf->dead ? -ENODEV : idr_alloc(&nf->objs, obj, 1, 0, GFP_KERNEL);
	mutex_unlock(&nf->lock);
	if (id < 0)
		return id;
	obj->handle = id;
	return 0;
}

static struct ncdma_obj *ncdma_obj_get(struct ncdma_file *nf, u32 handle, u8 type)
{
	struct ncdma_obj *obj;

	mutex_lock(&nf->lock);
	obj = idr_find(&nf->objs, handle);
	if (obj && (!type || obj->type == type))
		kref_get(&obj->ref);
	else
		obj = NULL;
	mutex_unlock(&nf->lock);
	return obj;
}

static void ncdma_obj_put(struct ncdma_obj *obj)
{
	kref_put(&obj->ref, ncdma_obj_release);
}

static struct ncdma_bo *ncdma_bo_get(struct ncdma_file *nf, u32 handle)
{
	struct ncdma_obj *obj = ncdma_obj_get(nf, handle, NCDMA_OBJ_BUF);

	return obj ? container_of(obj, struct ncdma_bo, obj) : NULL;
}

static struct ncdma_att *ncdma_att_get(struct ncdma_file *nf, u32 handle)
{
	struct ncdma_obj *obj = ncdma_obj_get(nf, handle, NCDMA_OBJ_ATT);

	return obj ? container_of(obj, struct ncdma_att, obj) : NULL;
}

static void ncdma_att_put(struct ncdma_att *att)
{
	ncdma_obj_put(&att->obj);
}

/* Segments */

static struct ncdma_seg *ncdma_segs_of(struct sg_table *sgt, u32 *nsegs, u64 *bytes)
{
	struct ncdma_seg *segs;
	struct scatterlist *sg;
	u32 n = 0;
	int i;

	*bytes = 0;
	segs = kvmalloc_array(max_t(u32, sgt->nents, 1), sizeof(*segs), GFP_KERNEL);
	if (!segs)
		return NULL;
	for_each_sgtable_dma_sg(sgt, sg, i) {
		dma_addr_t addr = sg_dma_address(sg);
		u32 len = sg_dma_len(sg);

		if (n && segs[n - 1].addr + segs[n - 1].len == addr) {
			segs[n - 1].len += len;
		} else {
			segs[n].addr = addr;
			segs[n++].len = len;
		}
		*bytes += len;
	}
	*nsegs = n;
	return segs;
}

/* The live segments become the stale ones. Called with map_sem held for writing. */
static void ncdma_att_retire_segs(struct ncdma_att *att)
{
	if (!att->segs)
		return;
	kvfree(att->stale);
	att->stale = att->segs;
	att->nstale = att->nsegs;
	att->stale_bytes = att->seg_bytes;
	att->segs = NULL;
	att->nsegs = 0;
	att->seg_bytes = 0;
}

static bool ncdma_att_revoked(struct ncdma_att *att)
{
	return att->bo->xbuf && ncdma_xbuf_revoked(att->bo->xbuf);
}

/* Maintenance of the attachment's current mapping on its own device. */
static int ncdma_att_maint(struct ncdma_att *att, u8 op, u32 reason)
{
	if (!att->segs || op == NCDMA_OP_NOP)
		return 0;
	return ncdma_maint_segs_safe(att->nd, att->segs, att->nsegs, op,
				     ncdma_cookie(reason, att->obj.handle));
}

/*
 * Make sure the attachment holds a mapping (map through the dma-buf core unless one is held).
 * Called with the resv lock held.
 */
static int ncdma_att_hold_sgt(struct ncdma_att *att, enum dma_data_direction dir)
{
	struct ncdma_dev *nd = att->nd;
	struct sg_table *sgt;
	struct ncdma_seg *segs;
	u64 bytes;
	u32 n;

	dma_resv_assert_held(att->dba->dmabuf->resv);
	if (att->sgt)
		return 0;
	if (att->flags & NCDMA_ATT_CACHE_SGT)
		dir = DMA_BIDIRECTIONAL;
	sgt = dma_buf_map_attachment(att->dba, dir);
	if (IS_ERR(sgt))
		return PTR_ERR(sgt);
	ncdma_stat_inc(nd, ST_IMP_MAPS);
	segs = ncdma_segs_of(sgt, &n, &bytes);
	if (!segs) {
		dma_buf_unmap_attachment(att->dba, sgt, dir);
		ncdma_stat_inc(nd, ST_IMP_UNMAPS);
		return -ENOMEM;
	}
	down_write(&nd->map_sem);
	att->sgt = sgt;
	att->sgt_dir = dir;
	att->segs = segs;
	att->nsegs = n;
	att->seg_bytes = bytes;
	att->invalidated = false;
	att->maps++;
	att->generation = att->bo->xbuf ? ncdma_xbuf_generation(att->bo->xbuf) : 0;
	up_write(&nd->map_sem);
	return 0;
}

/* Give the mapping back to the dma-buf core. Called with resv held and map_sem for writing. */
static void ncdma_att_drop_sgt(struct ncdma_att *att)
{
	if (!att->sgt)
		return;
	dma_buf_unmap_attachment(att->dba, att->sgt, att->sgt_dir);
	ncdma_stat_inc(att->nd, ST_IMP_UNMAPS);
	att->sgt = NULL;
	ncdma_att_retire_segs(att);
}

static void ncdma_move_notify(struct dma_buf_attachment *dba)
{
	struct ncdma_att *att = dba->importer_priv;
	struct ncdma_dev *nd = att->nd;

	ncdma_stat_inc(nd, ST_MOVE_NOTIFIES);
	if (!att->sgt)
		return;
	down_write(&nd->map_sem);
	ncdma_ring_drain(nd);
	if (!(att->faults & NCDMA_FAULT_SKIP_TEARDOWN_CLEAN))
		ncdma_att_maint(att, NCDMA_OP_CLEAN_INVALIDATE, NCDMA_REASON_MOVE_NOTIFY);
	ncdma_att_drop_sgt(att);
	if (att->mapped)
		att->invalidated = true;
	up_write(&nd->map_sem);
}

static const struct dma_buf_attach_ops ncdma_importer_ops = {
	.allow_peer2peer = false,
	.move_notify = ncdma_move_notify,
};

/* Ownership transfers */

static int ncdma_att_map(struct ncdma_att *att, u32 udir, u32 timeout_ms, u32 *nsegs)
{
	struct ncdma_xbuf *xb = att->bo->xbuf;
	struct dma_resv *resv = att->dba->dmabuf->resv;
	enum dma_data_direction dir = udir;
	bool claimed = false;
	int ret;

	if (udir > NCDMA_DIR_FROM_DEVICE)
		return -EINVAL;
	if (ncdma_att_revoked(att))
		return -ENODEV;	/* checked again under the lock; here so as not to wait for an owner */
	if (xb && ncdma_xbuf_exclusive(xb)) {
		ret = ncdma_xbuf_claim_device(xb, att->nd, att, timeout_ms);
		if (ret)
			return ret;
		claimed = true;
	}
	ret = dma_resv_lock_interruptible(resv, NULL);
	if (ret)
		goto out_release;
	if (att->mapped) {
		ret = -EBUSY;
	} else if (ncdma_att_revoked(att)) {
		ret = -ENODEV;
	} else {
		ret = ncdma_att_hold_sgt(att, dir);
	}
	if (!ret) {
		if (!(att->faults & NCDMA_FAULT_SKIP_MAP_INVALIDATE))
			ncdma_att_maint(att, NCDMA_OP_INVALIDATE, NCDMA_REASON_MAP);
		down_write(&att->nd->map_sem);
		att->mapped = true;
		att->dir = dir;
		att->owner = claimed;
		up_write(&att->nd->map_sem);
		*nsegs = att->nsegs;
		ncdma_stat_inc(att->nd, ST_OWNER_MAPS);
	}
	dma_resv_unlock(resv);
out_release:
	if (ret && claimed)
		ncdma_xbuf_release_device(xb, att);
	return ret;
}

static u8 ncdma_unmap_op(struct ncdma_att *att)
{
	if (att->faults & NCDMA_FAULT_SKIP_UNMAP_MAINT)
		return NCDMA_OP_NOP;
	if (att->dir == DMA_TO_DEVICE || (att->faults & NCDMA_FAULT_SKIP_UNMAP_CLEAN))
		return NCDMA_OP_INVALIDATE;
	return NCDMA_OP_CLEAN_INVALIDATE;
}

static int ncdma_att_unmap(struct ncdma_att *att)
{
	struct dma_resv *resv = att->dba->dmabuf->resv;
	struct ncdma_dev *nd = att->nd;
	bool owner;

	dma_resv_lock(resv, NULL);
	if (!att->mapped) {
		dma_resv_unlock(resv);
		return -EINVAL;
	}
	down_write(&nd->map_sem);
	ncdma_ring_drain(nd);
	if (!ncdma_att_revoked(att))
		ncdma_att_maint(att, ncdma_unmap_op(att), NCDMA_REASON_UNMAP);
	if (!(att->flags & NCDMA_ATT_CACHE_SGT))
		ncdma_att_drop_sgt(att);
	att->mapped = false;
	att->invalidated = false;
	owner = att->owner;
	att->owner = false;
	up_write(&nd->map_sem);
	ncdma_stat_inc(nd, ST_OWNER_UNMAPS);
	dma_resv_unlock(resv);
	if (owner)
		ncdma_xbuf_release_device(att->bo->xbuf, att);
	return 0;
}

/* A dynamic importer whose mapping move_notify dropped maps again before the next use. */
static int ncdma_att_remap(struct ncdma_att *att)
{
	struct dma_resv *resv = att->dba->dmabuf->resv;
	int ret = 0;

	if (!READ_ONCE(att->invalidated) || (att->faults & NCDMA_FAULT_USE_STALE))
		return 0;
	dma_resv_lock(resv, NULL);
	if (att->invalidated && att->mapped && !ncdma_att_revoked(att)) {
		ret = ncdma_att_hold_sgt(att, att->dir);
		if (!ret) {
			ncdma_stat_inc(att->nd, ST_REMAPS);
			if (!(att->faults & NCDMA_FAULT_SKIP_MAP_INVALIDATE))
				ncdma_att_maint(att, NCDMA_OP_INVALIDATE, NCDMA_REASON_MAP);
		}
	}
	dma_resv_unlock(resv);
	return ret;
}

static void ncdma_att_destroy(struct ncdma_att *att)
{
	struct dma_buf *dmabuf = att->dba->dmabuf;

	if (att->mapped)
		ncdma_att_unmap(att);
	dma_resv_lock(dmabuf->resv, NULL);
	down_write(&att->nd->map_sem);
	ncdma_att_drop_sgt(att);
	up_write(&att->nd->map_sem);
	dma_resv_unlock(dmabuf->resv);
	dma_buf_detach(dmabuf, att->dba);
	ncdma_stat_inc(att->nd, ST_DETACHES);
	kvfree(att->segs);
	kvfree(att->stale);
	ncdma_obj_put(&att->bo->obj);
	kfree(att);
}

static void ncdma_obj_release(struct kref *ref)
{
	struct ncdma_obj *obj = container_of(ref, struct ncdma_obj, ref);

	if (obj->type == NCDMA_OBJ_ATT) {
		ncdma_att_destroy(container_of(obj, struct ncdma_att, obj));
	} else {
		struct ncdma_bo *bo = container_of(obj, struct ncdma_bo, obj);

		dma_buf_put(bo->dmabuf);
		kfree(bo);
	}
}

/* Buffer ioctls */

static int ncdma_bo_add(struct ncdma_file *nf, struct dma_buf *dmabuf, u32 *handle)
{
	struct ncdma_bo *bo = kzalloc(sizeof(*bo), GFP_KERNEL);
	int ret;

	if (!bo)
		return -ENOMEM;
	bo->dmabuf = dmabuf;
	bo->xbuf = ncdma_xbuf_of(dmabuf);
	ret = ncdma_obj_add(nf, &bo->obj, NCDMA_OBJ_BUF);
	if (ret) {
		kfree(bo);
		return ret;
	}
	*handle = bo->obj.handle;
	return 0;
}

static int ncdma_ioc_buf_create(struct ncdma_file *nf, void __user *arg)
{
	struct ncdma_buf_create req;
	struct dma_buf *dmabuf;
	int ret, fd;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	ret = ncdma_xbuf_create(nf->nd, req.size, req.flags, req.faults, &dmabuf);
	if (ret)
		return ret;
	get_dma_buf(dmabuf);	/* one reference for the handle, one for the fd */
	ret = ncdma_bo_add(nf, dmabuf, &req.handle);
	if (ret) {
		dma_buf_put(dmabuf);
		dma_buf_put(dmabuf);
		return ret;
	}
	req.size = dmabuf->size;
	fd = dma_buf_fd(dmabuf, O_CLOEXEC);
	if (fd < 0) {
		dma_buf_put(dmabuf);
		ret = fd;
		goto close_handle;
	}
	req.fd = fd;
	if (copy_to_user(arg, &req, sizeof(req))) {
		/* The fd is installed; user space still owns it. */
		return -EFAULT;
	}
	return 0;

close_handle:
	{
		struct ncdma_obj *obj;

		mutex_lock(&nf->lock);
		obj = idr_remove(&nf->objs, req.handle);
		mutex_unlock(&nf->lock);
		if (obj)
			ncdma_obj_put(obj);
	}
	return ret;
}

static int ncdma_ioc_buf_import(struct ncdma_file *nf, void __user *arg)
{
	struct ncdma_buf_import req;
	struct dma_buf *dmabuf;
	int ret;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	dmabuf = dma_buf_get(req.fd);
	if (IS_ERR(dmabuf))
		return PTR_ERR(dmabuf);
	ret = ncdma_bo_add(nf, dmabuf, &req.handle);
	if (ret) {
		dma_buf_put(dmabuf);
		return ret;
	}
	req.size = dmabuf->size;
	return copy_to_user(arg, &req, sizeof(req)) ? -EFAULT : 0;
}

static int ncdma_ioc_close(struct ncdma_file *nf, void __user *arg)
{
	struct ncdma_obj *obj;
	u32 handle;

	if (get_user(handle, (u32 __user *)arg))
		return -EFAULT;
	mutex_lock(&nf->lock);
	obj = idr_find(&nf->objs, handle);
	if (obj && obj->type == NCDMA_OBJ_BUF) {
		/* Attachments hold their buffer: close them first. */
		struct ncdma_obj *other;
		int id;

		idr_for_each_entry(&nf->objs, other, id) {
			if (other->type == NCDMA_OBJ_ATT &&
			    container_of(other, struct ncdma_att, obj)->bo ==
			    container_of(obj, struct ncdma_bo, obj)) {
				mutex_unlock(&nf->lock);
				return -EBUSY;
			}
		}
	}
	if (obj)
		idr_remove(&nf->objs, handle);
	mutex_unlock(&nf->lock);
	if (!obj)
		return -ENOENT;
	ncdma_obj_put(obj);
	return 0;
}

static int ncdma_ioc_buf_info(struct ncdma_file *nf, void __user *arg)
{
	struct ncdma_buf_info info;
	struct ncdma_bo *bo;
	u32 handle;

	if (get_user(handle, (u32 __user *)arg))
		return -EFAULT;
	bo = ncdma_bo_get(nf, handle);
	if (!bo)
		return -ENOENT;
	memset(&info, 0, sizeof(info));
	info.handle = handle;
	info.size = bo->dmabuf->size;
	if (bo->xbuf)
		ncdma_xbuf_info(bo->xbuf, &info);
	ncdma_obj_put(&bo->obj);
	return copy_to_user(arg, &info, sizeof(info)) ? -EFAULT : 0;
}

static int ncdma_ioc_buf_xop(struct ncdma_file *nf, void __user *arg, bool revoke)
{
	struct ncdma_bo *bo;
	u32 handle;
	int ret;

	if (get_user(handle, (u32 __user *)arg))
		return -EFAULT;
	bo = ncdma_bo_get(nf, handle);
	if (!bo)
		return -ENOENT;
	if (!bo->xbuf)
		ret = -EOPNOTSUPP;	/* only the exporter can move or revoke */
	else
		ret = revoke ? ncdma_xbuf_revoke(bo->xbuf) : ncdma_xbuf_move(bo->xbuf);
	ncdma_obj_put(&bo->obj);
	return ret;
}

/* Pages of another exporter's buffer, through its kernel mapping: no DMA API call involved. */
static int ncdma_dmabuf_pages(struct dma_buf *dmabuf, u64 first, u32 count, u64 __user *out)
{
	u64 npages = dmabuf->size >> PAGE_SHIFT;
	struct iosys_map map;
	u64 *pas;
	u32 i;
	int ret;

	if (first > npages || count > npages - first)
		return -ERANGE;
	ret = dma_buf_vmap_unlocked(dmabuf, &map);
	if (ret)
		return ret;
	pas = map.is_iomem ? NULL : kvmalloc_array(max_t(u32, count, 1), sizeof(*pas), GFP_KERNEL);
	if (!pas) {
		ret = map.is_iomem ? -EOPNOTSUPP : -ENOMEM;
		goto out;
	}
	for (i = 0; i < count; i++) {
		void *va = map.vaddr + (first + i) * PAGE_SIZE;

		pas[i] = page_to_phys(is_vmalloc_addr(va) ? vmalloc_to_page(va) : virt_to_page(va));
	}
	if (count && copy_to_user(out, pas, count * sizeof(*pas)))
		ret = -EFAULT;
	kvfree(pas);
out:
	dma_buf_vunmap_unlocked(dmabuf, &map);
	return ret;
}

static int ncdma_ioc_buf_pages(struct ncdma_file *nf, void __user *arg)
{
	struct ncdma_buf_pages req;
	struct ncdma_bo *bo;
	int ret;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	bo = ncdma_bo_get(nf, req.handle);
	if (!bo)
		return -ENOENT;
	if (bo->xbuf)
		ret = ncdma_xbuf_pages(bo->xbuf, req.first, req.count, u64_to_user_ptr(req.pas_ptr));
	else
		ret = ncdma_dmabuf_pages(bo->dmabuf, req.first, req.count,
					 u64_to_user_ptr(req.pas_ptr));
	ncdma_obj_put(&bo->obj);
	return ret;
}

static int ncdma_ioc_set_faults(struct ncdma_file *nf, void __user *arg)
{
	struct ncdma_set_faults req;
	struct ncdma_obj *obj;
	int ret = 0;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	if (req.faults & ~NCDMA_FAULTS_VALID)
		return -EINVAL;
	obj = ncdma_obj_get(nf, req.handle, 0);
	if (!obj)
		return -ENOENT;
	if (obj->type == NCDMA_OBJ_ATT) {
		struct ncdma_att *att = container_of(obj, struct ncdma_att, obj);

		down_write(&att->nd->map_sem);
		att->faults = req.faults;
		up_write(&att->nd->map_sem);
	} else {
		struct ncdma_bo *bo = container_of(obj, struct ncdma_bo, obj);

		if (bo->xbuf)
			ncdma_xbuf_set_faults(bo->xbuf, req.faults);
		else
			ret = -EOPNOTSUPP;
	}
	ncdma_obj_put(obj);
	return ret;
}

/* Attachment ioctls */

static int ncdma_ioc_attach(struct ncdma_file *nf, void __user *arg)
{
	struct ncdma_attach req;
	struct ncdma_att *att;
	struct ncdma_bo *bo;
	struct device *dev = &nf->nd->pdev->dev;
	int ret;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	if (req.flags & ~NCDMA_ATT_FLAGS_VALID || req.faults & ~NCDMA_FAULTS_VALID)
		return -EINVAL;
	bo = ncdma_bo_get(nf, req.buf);
	if (!bo)
		return -ENOENT;
	att = kzalloc(sizeof(*att), GFP_KERNEL);
	if (!att) {
		ncdma_obj_put(&bo->obj);
		return -ENOMEM;
	}
	att->nd = nf->nd;
	att->bo = bo;
	att->flags = req.flags;
	att->faults = req.faults;
	if (req.flags & NCDMA_ATT_DYNAMIC)
		att->dba = dma_buf_dynamic_attach(bo->dmabuf, dev, &ncdma_importer_ops, att);
	else
		att->dba = dma_buf_attach(bo->dmabuf, dev);
	if (IS_ERR(att->dba)) {
		ret = PTR_ERR(att->dba);
		goto fail;
	}
	/* Lets the exporter name this attachment in maintenance cookies. */
	att->dba->importer_priv = att;
	ncdma_stat_inc(nf->nd, ST_ATTACHES);
	if (req.flags & NCDMA_ATT_CACHE_SGT) {
		dma_resv_lock(bo->dmabuf->resv, NULL);
		ret = ncdma_att_hold_sgt(att, DMA_BIDIRECTIONAL);
		dma_resv_unlock(bo->dmabuf->resv);
		if (ret) {
			dma_buf_detach(bo->dmabuf, att->dba);
			goto fail;
		}
	}
	ret = ncdma_obj_add(nf, &att->obj, NCDMA_OBJ_ATT);
	if (ret) {
		ncdma_att_destroy(att);	/* puts bo */
		return ret;
	}
	req.handle = att->obj.handle;
	return copy_to_user(arg, &req, sizeof(req)) ? -EFAULT : 0;

fail:
	kfree(att);
	ncdma_obj_put(&bo->obj);
	return ret;
}

static int ncdma_ioc_map(struct ncdma_file *nf, void __user *arg)
{
	struct ncdma_map req;
	struct ncdma_att *att;
	int ret;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	att = ncdma_att_get(nf, req.handle);
	if (!att)
		return -ENOENT;
	ret = ncdma_att_map(att, req.dir, req.timeout_ms, &req.nsegs);
	ncdma_att_put(att);
	if (ret)
		return ret;
	return copy_to_user(arg, &req, sizeof(req)) ? -EFAULT : 0;
}

static int ncdma_ioc_unmap(struct ncdma_file *nf, void __user *arg)
{
	struct ncdma_unmap req;
	struct ncdma_att *att;
	int ret;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	att = ncdma_att_get(nf, req.handle);
	if (!att)
		return -ENOENT;
	ret = ncdma_att_unmap(att);
	ncdma_att_put(att);
	return ret;
}

static int ncdma_ioc_att_info(struct ncdma_file *nf, void __user *arg)
{
	struct ncdma_att_info req;
	struct ncdma_seg *segs;
	struct ncdma_att *att;
	u32 n;
	int ret = 0;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	att = ncdma_att_get(nf, req.handle);
	if (!att)
		return -ENOENT;
	down_read(&att->nd->map_sem);
	req.state = 0;
	if (att->mapped)
		req.state |= NCDMA_ATT_STATE_MAPPED;
	if (att->sgt)
		req.state |= NCDMA_ATT_STATE_HAS_SGT;
	if (att->invalidated)
		req.state |= NCDMA_ATT_STATE_INVALIDATED;
	if (ncdma_att_revoked(att))
		req.state |= NCDMA_ATT_STATE_REVOKED;
	if (att->flags & NCDMA_ATT_DYNAMIC)
		req.state |= NCDMA_ATT_STATE_DYNAMIC;
	if (att->owner)
		req.state |= NCDMA_ATT_STATE_OWNER;
	segs = att->segs;
	req.nsegs = att->nsegs;
	req.size = att->seg_bytes;
	if (!segs && att->stale) {
		req.state |= NCDMA_ATT_STATE_STALE;
		segs = att->stale;
		req.nsegs = att->nstale;
		req.size = att->stale_bytes;
	}
	req.dir = att->dir;
	req.flags = att->flags;
	req.faults = att->faults;
	req.buf = att->bo->obj.handle;
	req.maps = att->maps;
	req.generation = att->generation;
	n = min(req.nsegs, req.max_segs);
	if (n && req.segs_ptr &&
	    copy_to_user(u64_to_user_ptr(req.segs_ptr), segs, n * sizeof(*segs)))
		ret = -EFAULT;
	up_read(&att->nd->map_sem);
	ncdma_att_put(att);
	if (ret)
		return ret;
	return copy_to_user(arg, &req, sizeof(req)) ? -EFAULT : 0;
}

/*
 * A streaming ownership transfer of the mapping the importer holds: the DMA API syncs it for
 * the CPU or for the device (the CPU caches of a noncoherent platform), unless a faulty mode
 * skips the sync or gives it the wrong direction.
 */
static void ncdma_att_sync_cpu_caches(struct ncdma_att *att, bool for_cpu)
{
	struct device *dev = &att->nd->pdev->dev;
	enum dma_data_direction dir = att->sgt_dir;

	if (for_cpu) {
		if (att->faults & NCDMA_FAULT_SKIP_SYNC_FOR_CPU)
			return;
		if (att->faults & NCDMA_FAULT_SYNC_WRONG_DIR)
			dir = DMA_TO_DEVICE;
		dma_sync_sgtable_for_cpu(dev, att->sgt, dir);
	} else if (!(att->faults & NCDMA_FAULT_SKIP_SYNC_FOR_DEVICE)) {
		dma_sync_sgtable_for_device(dev, att->sgt, dir);
	}
}

static int ncdma_ioc_att_sync(struct ncdma_file *nf, void __user *arg)
{
	struct ncdma_att_sync req;
	struct ncdma_att *att;
	int ret;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	if (req.flags != NCDMA_SYNC_FOR_CPU && req.flags != NCDMA_SYNC_FOR_DEVICE)
		return -EINVAL;
	att = ncdma_att_get(nf, req.handle);
	if (!att)
		return -ENOENT;
	down_read(&att->nd->map_sem);
	if (!att->mapped || !att->segs) {
		ret = -EINVAL;
	} else if (req.flags == NCDMA_SYNC_FOR_CPU) {
		ret = att->faults & NCDMA_FAULT_SKIP_CPU_BEGIN ? 0 :
		      ncdma_att_maint(att, NCDMA_OP_CLEAN, NCDMA_REASON_ATT_SYNC);
		ncdma_att_sync_cpu_caches(att, true);
	} else {
		ncdma_att_sync_cpu_caches(att, false);
		ret = att->faults & NCDMA_FAULT_SKIP_CPU_END ? 0 :
		      ncdma_att_maint(att, NCDMA_OP_INVALIDATE, NCDMA_REASON_ATT_SYNC);
	}
	up_read(&att->nd->map_sem);
	ncdma_att_put(att);
	return ret;
}

/* Descriptor resolution */

/* A position in a list of DMA segments, or in one raw address range. */
struct ncdma_cursor {
	const struct ncdma_seg *segs;
	u32 nsegs;
	u32 i;
	u64 in;		/* offset into segs[i] */
	u64 raw;	/* when segs is NULL */
};

/* The segments descriptors may use for att now (map_sem held). */
static int ncdma_att_usable(struct ncdma_att *att, const struct ncdma_seg **segs, u32 *n,
			    u64 *bytes)
{
	bool stale_ok = att->faults & NCDMA_FAULT_USE_STALE;

	if (ncdma_att_revoked(att) && !stale_ok)
		return -ENODEV;
	if (att->segs && (att->mapped || stale_ok)) {
		*segs = att->segs;
		*n = att->nsegs;
		*bytes = att->seg_bytes;
		return 0;
	}
	if (stale_ok && att->stale) {
		*segs = att->stale;
		*n = att->nstale;
		*bytes = att->stale_bytes;
		return 0;
	}
	if (att->invalidated)
		return -EAGAIN;
	return -ENOTCONN;	/* not mapped: the device does not own the buffer */
}

static int ncdma_cursor_init(struct ncdma_cursor *c, struct ncdma_att *att, u64 off, u64 len)
{
	u64 bytes;
	int ret;

	memset(c, 0, sizeof(*c));
	ret = ncdma_att_usable(att, &c->segs, &c->nsegs, &bytes);
	if (ret)
		return ret;
	if (off > bytes || len > bytes - off)
		return -ERANGE;
	while (c->i < c->nsegs && off >= c->segs[c->i].len) {
		off -= c->segs[c->i].len;
		c->i++;
	}
	c->in = off;
	return 0;
}

static u64 ncdma_cursor_avail(const struct ncdma_cursor *c)
{
	return c->segs ? c->segs[c->i].len - c->in : U64_MAX;
}

static u64 ncdma_cursor_addr(const struct ncdma_cursor *c)
{
	return c->segs ? c->segs[c->i].addr + c->in : c->raw;
}

static void ncdma_cursor_advance(struct ncdma_cursor *c, u64 n)
{
	if (!c->segs) {
		c->raw += n;
		return;
	}
	c->in += n;
	if (c->in == c->segs[c->i].len) {
		c->i++;
		c->in = 0;
	}
}

struct ncdma_build {
	struct ncdma_piece *p;
	u32 n;
	u32 cap;
};

static int ncdma_emit(struct ncdma_build *b, const struct ncdma_udesc *u, u32 idx, u64 src,
		      u64 dst, u64 len, u64 pattern, u8 flags)
{
	struct ncdma_piece *p;

	if (b->n == b->cap) {
		u32 cap = b->cap ? b->cap * 2 : 64;
		struct ncdma_piece *grown;

		if (b->cap >= NCDMA_MAX_PIECES)
			return -E2BIG;
		cap = min_t(u32, cap, NCDMA_MAX_PIECES);
		grown = kvmalloc_array(cap, sizeof(*grown), GFP_KERNEL);
		if (!grown)
			return -ENOMEM;
		if (b->p)
			memcpy(grown, b->p, b->n * sizeof(*grown));
		kvfree(b->p);
		b->p = grown;
		b->cap = cap;
	}
	p = &b->p[b->n++];
	memset(p, 0, sizeof(*p));
	p->idx = idx;
	p->d.opcode = u->op;
	p->d.flags = flags;
	p->d.cookie = cpu_to_le64(u->cookie);
	p->d.src = cpu_to_le64(src);
	p->d.dst = cpu_to_le64(dst);
	p->d.len = cpu_to_le64(len);
	p->d.pattern = cpu_to_le64(pattern);
	return 0;
}

static struct ncdma_att *ncdma_find_att(struct ncdma_att **atts, u32 natts, u32 handle)
{
	u32 i;

	for (i = 0; i < natts; i++)
		if (atts[i]->obj.handle == handle)
			return atts[i];
	return NULL;
}

/* Split one user descriptor into device descriptors. map_sem is held for reading. */
static int ncdma_resolve(struct ncdma_dev *nd, struct ncdma_build *b, const struct ncdma_udesc *u,
			 u32 idx, struct ncdma_att **atts, u32 natts)
{
	struct ncdma_cursor src, dst;
	bool copy = u->op == NCDMA_UOP_COPY, fill = u->op == NCDMA_UOP_FILL;
	u64 left = u->len, done = 0;
	int ret;

	if (u->flags & NCDMA_UDESC_RAW || u->op == NCDMA_UOP_NOP)
		return ncdma_emit(b, u, idx, u->src_off, u->dst_off, u->len, u->pattern,
				  u->flags & NCDMA_UDESC_WHOLE ? NCDMA_DESC_F_WHOLE : 0);
	if (u->flags & NCDMA_UDESC_WHOLE) {
		if (u->op < NCDMA_UOP_CLEAN || u->op > NCDMA_UOP_CLEAN_INVALIDATE)
			return -EINVAL;
		return ncdma_emit(b, u, idx, 0, 0, 0, 0, NCDMA_DESC_F_WHOLE);
	}
	if (!u->len)
		return -EINVAL;
	ret = ncdma_cursor_init(&dst, ncdma_find_att(atts, natts, u->dst), u->dst_off, u->len);
	if (ret)
		return ret;
	if (copy) {
		ret = ncdma_cursor_init(&src, ncdma_find_att(atts, natts, u->src), u->src_off,
					u->len);
		if (ret)
			return ret;
	}
	while (left) {
		u64 n = min3(left, ncdma_cursor_avail(&dst), (u64)nd->max_xfer);
		/* FILL pieces keep the pattern's phase: byte i of the range is byte i % 8. */
		u64 pattern = fill ? ror64(u->pattern, 8 * (done & 7)) : 0;

		if (copy)
			n = min(n, ncdma_cursor_avail(&src));
		ret = ncdma_emit(b, u, idx, copy ? ncdma_cursor_addr(&src) : 0,
				 ncdma_cursor_addr(&dst), n, pattern, 0);
		if (ret)
			return ret;
		ncdma_cursor_advance(&dst, n);
		if (copy)
			ncdma_cursor_advance(&src, n);
		left -= n;
		done += n;
	}
	return 0;
}

static int ncdma_check_udesc(const struct ncdma_udesc *u)
{
	if (u->reserved0 || u->reserved1 || u->flags & ~(NCDMA_UDESC_WHOLE | NCDMA_UDESC_RAW))
		return -EINVAL;
	if (u->flags & NCDMA_UDESC_RAW)
		return 0;	/* the device judges it */
	if (u->op > NCDMA_UOP_CLEAN_INVALIDATE)
		return -EINVAL;
	if ((u->flags & NCDMA_UDESC_WHOLE) && u->op < NCDMA_UOP_CLEAN)
		return -EINVAL;
	return 0;
}

/* Collect references to the attachments the descriptors name (deduplicated). */
static int ncdma_collect_atts(struct ncdma_file *nf, const struct ncdma_udesc *u, u32 count,
			      struct ncdma_att ***out, u32 *nout)
{
	struct ncdma_att **atts;
	u32 i, k, n = 0;

	atts = kvmalloc_array(2 * count, sizeof(*atts), GFP_KERNEL);
	if (!atts)
		return -ENOMEM;
	for (i = 0; i < count; i++) {
		u32 handles[2] = { u[i].dst, u[i].src };
		u32 used = 0;

		if (u[i].flags & (NCDMA_UDESC_RAW | NCDMA_UDESC_WHOLE) || u[i].op == NCDMA_UOP_NOP)
			continue;
		used = u[i].op == NCDMA_UOP_COPY ? 2 : 1;
		for (k = 0; k < used; k++) {
			struct ncdma_att *att;

			if (ncdma_find_att(atts, n, handles[k]))
				continue;
			att = ncdma_att_get(nf, handles[k]);
			if (!att) {
				while (n)
					ncdma_att_put(atts[--n]);
				kvfree(atts);
				return -ENOENT;
			}
			atts[n++] = att;
		}
	}
	*out = atts;
	*nout = n;
	return 0;
}

static int ncdma_ioc_submit(struct ncdma_file *nf, void __user *arg)
{
	struct ncdma_dev *nd = nf->nd;
	struct ncdma_build build = {};
	struct ncdma_submit req;
	struct ncdma_udesc *u;
	struct ncdma_batch *b = NULL;
	struct ncdma_att **atts = NULL;
	u32 i, natts = 0, tries = 0;
	int ret;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	if (!req.count || req.count > NCDMA_MAX_BATCH || req.flags)
		return -EINVAL;
	u = vmemdup_array_user(u64_to_user_ptr(req.descs_ptr), req.count, sizeof(*u));
	if (IS_ERR(u))
		return PTR_ERR(u);
	for (i = 0; i < req.count; i++) {
		ret = ncdma_check_udesc(&u[i]);
		if (ret)
			goto out;
	}
	ret = ncdma_collect_atts(nf, u, req.count, &atts, &natts);
	if (ret)
		goto out;
	b = ncdma_batch_alloc(req.count);
	if (!b) {
		ret = -ENOMEM;
		goto out;
	}
retry:
	for (i = 0; i < natts; i++) {
		ret = ncdma_att_remap(atts[i]);
		if (ret)
			goto out;
	}
	down_read(&nd->map_sem);
	build.n = 0;
	for (i = 0; i < req.count; i++) {
		u32 first = build.n;

		ret = ncdma_resolve(nd, &build, &u[i], i, atts, natts);
		if (ret)
			break;
		b->res[i].pieces = build.n - first;
	}
	if (ret == -EAGAIN && ++tries < 4) {
		up_read(&nd->map_sem);
		goto retry;
	}
	if (!ret)
		ret = ncdma_ring_queue(nd, build.p, build.n, b);
	up_read(&nd->map_sem);
	if (ret)
		goto out;

	ncdma_stat_inc(nd, ST_SUBMITS);
	ncdma_stat_add(nd, ST_DESCS, req.count);
	ncdma_stat_add(nd, ST_PIECES, build.n);
	mutex_lock(&nf->lock);
	b->id = ++nf->next_batch;
	list_add_tail(&b->node, &nf->batches);
	mutex_unlock(&nf->lock);
	req.batch = b->id;
	req.pieces = build.n;
	b = NULL;
	if (copy_to_user(arg, &req, sizeof(req)))
		ret = -EFAULT;
out:
	if (b)
		kvfree(b);
	kvfree(build.p);
	while (natts)
		ncdma_att_put(atts[--natts]);
	kvfree(atts);
	kvfree(u);
	return ret;
}

static int ncdma_ioc_wait(struct ncdma_file *nf, void __user *arg)
{
	struct ncdma_dev *nd = nf->nd;
	struct ncdma_batch *b = NULL, *it;
	struct ncdma_wait req;
	int ret;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	mutex_lock(&nf->lock);
	list_for_each_entry(it, &nf->batches, node) {
		if (it->id == req.batch) {
			b = it;
			/* Taken off the list while waited for: one waiter per batch. */
			list_del_init(&b->node);
			break;
		}
	}
	mutex_unlock(&nf->lock);
	if (!b)
		return -ENOENT;
	ncdma_stat_inc(nd, ST_WAITS);
	ret = ncdma_batch_wait(nd, b, msecs_to_jiffies(req.timeout_ms ?: NCDMA_DEFAULT_WAIT_MS),
			       true);
	if (ret) {
		if (ret == -ETIMEDOUT)
			ncdma_stat_inc(nd, ST_WAIT_TIMEOUTS);
		mutex_lock(&nf->lock);
		list_add(&b->node, &nf->batches);
		mutex_unlock(&nf->lock);
		return ret;
	}
	if (req.results_ptr &&
	    copy_to_user(u64_to_user_ptr(req.results_ptr), b->res,
			 min(req.count, b->count) * sizeof(b->res[0])))
		ret = -EFAULT;
	kvfree(b);
	return ret;
}

/* One maintenance operation, synchronously (device cache ops). */
static int ncdma_ioc_cache(struct ncdma_file *nf, void __user *arg)
{
	struct ncdma_dev *nd = nf->nd;
	struct ncdma_cache_op req;
	struct ncdma_att *att = NULL;
	u64 cookie;
	int ret;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	if (req.op < NCDMA_UOP_CLEAN || req.op > NCDMA_UOP_CLEAN_INVALIDATE ||
	    req.flags & ~(NCDMA_UDESC_WHOLE | NCDMA_UDESC_RAW))
		return -EINVAL;
	cookie = ncdma_cookie(NCDMA_REASON_CACHE_OP, req.handle);
	if (req.flags & NCDMA_UDESC_WHOLE) {
		ret = ncdma_maint_whole(nd, req.op, cookie);
	} else if (req.flags & NCDMA_UDESC_RAW) {
		struct ncdma_seg seg = { .addr = req.offset, .len = req.len };

		ret = req.len ? ncdma_maint_segs(nd, &seg, 1, req.op, cookie) : -EINVAL;
	} else {
		struct ncdma_cursor c;
		struct ncdma_seg *segs;
		u32 n = 0;

		att = ncdma_att_get(nf, req.handle);
		if (!att)
			return -ENOENT;
		down_read(&nd->map_sem);
		ret = req.len ? ncdma_cursor_init(&c, att, req.offset, req.len) : -EINVAL;
		segs = ret ? NULL : kvmalloc_array(c.nsegs, sizeof(*segs), GFP_KERNEL);
		if (!ret && !segs)
			ret = -ENOMEM;
		if (!ret) {
			u64 left = req.len;

			while (left) {
				u64 k = min(left, ncdma_cursor_avail(&c));

				segs[n].addr = ncdma_cursor_addr(&c);
				segs[n++].len = k;
				ncdma_cursor_advance(&c, k);
				left -= k;
			}
			ret = ncdma_maint_segs(nd, segs, n, req.op, cookie);
		}
		up_read(&nd->map_sem);
		kvfree(segs);
		ncdma_att_put(att);
	}
	if (ret < 0)
		return ret;
	req.status = ret ?: NCDMA_ST_OK;	/* the device's answer */
	return copy_to_user(arg, &req, sizeof(req)) ? -EFAULT : 0;
}

long ncdma_ioctl_objects(struct ncdma_file *nf, unsigned int cmd, void __user *arg)
{
	switch (cmd) {
	case NCDMA_IOC_BUF_CREATE:
		return ncdma_ioc_buf_create(nf, arg);
	case NCDMA_IOC_BUF_IMPORT:
		return ncdma_ioc_buf_import(nf, arg);
	case NCDMA_IOC_CLOSE:
		return ncdma_ioc_close(nf, arg);
	case NCDMA_IOC_BUF_INFO:
		return ncdma_ioc_buf_info(nf, arg);
	case NCDMA_IOC_BUF_MOVE:
		return ncdma_ioc_buf_xop(nf, arg, false);
	case NCDMA_IOC_BUF_REVOKE:
		return ncdma_ioc_buf_xop(nf, arg, true);
	case NCDMA_IOC_SET_FAULTS:
		return ncdma_ioc_set_faults(nf, arg);
	case NCDMA_IOC_BUF_PAGES:
		return ncdma_ioc_buf_pages(nf, arg);
	case NCDMA_IOC_ATTACH:
		return ncdma_ioc_attach(nf, arg);
	case NCDMA_IOC_MAP:
		return ncdma_ioc_map(nf, arg);
	case NCDMA_IOC_UNMAP:
		return ncdma_ioc_unmap(nf, arg);
	case NCDMA_IOC_ATT_INFO:
		return ncdma_ioc_att_info(nf, arg);
	case NCDMA_IOC_ATT_SYNC:
		return ncdma_ioc_att_sync(nf, arg);
	case NCDMA_IOC_SUBMIT:
		return ncdma_ioc_submit(nf, arg);
	case NCDMA_IOC_WAIT:
		return ncdma_ioc_wait(nf, arg);
	case NCDMA_IOC_CACHE:
		return ncdma_ioc_cache(nf, arg);
	default:
		return -ENOTTY;
	}
}

/*
 * The file is closing (or the device going away): forget every handle, detaching in order
 * (attachments before buffers), after the device finished the file's batches.
 */
void ncdma_file_teardown(struct ncdma_file *nf)
{
	struct ncdma_batch *b, *tmp;
	struct ncdma_obj *obj;
	LIST_HEAD(batches);
	int id, pass;

	mutex_lock(&nf->lock);
	nf->dead = true;
	list_splice_init(&nf->batches, &batches);
	mutex_unlock(&nf->lock);
	ncdma_ring_drain(nf->nd);
	list_for_each_entry_safe(b, tmp, &batches, node)
		kvfree(b);
	for (pass = NCDMA_OBJ_ATT; pass >= NCDMA_OBJ_BUF; pass--) {
		mutex_lock(&nf->lock);
		idr_for_each_entry(&nf->objs, obj, id) {
			if (obj->type != pass)
				continue;
			idr_remove(&nf->objs, id);
			mutex_unlock(&nf->lock);
			ncdma_obj_put(obj);
			mutex_lock(&nf->lock);
		}
		mutex_unlock(&nf->lock);
	}
}
