/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Kernel interfaces ncdma.ko uses that older kernels lack, so the driver also builds against
 * Debian bookworm's 6.1 (the same behaviour, spelled the older way).
 */
#ifndef NCDMA_COMPAT_H
#define NCDMA_COMPAT_H

#include <linux/dma-buf.h>
#include <linux/mm.h>
#include <linux/version.h>

#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 3, 0)
static inline void vm_flags_set(struct vm_area_struct *vma, vm_flags_t flags)
{
	vma->vm_flags |= flags;
}
#endif

#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 5, 0)
/* Before per-VMA locks a fault holds the mmap lock only. */
static inline void release_fault_lock(struct vm_fault *vmf)
{
	mmap_read_unlock(vmf->vma->vm_mm);
}
#endif

#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 2, 0)
/* Before the dma-buf locking rework, dma_buf_vmap took the buffer's own lock. */
static inline int dma_buf_vmap_unlocked(struct dma_buf *dmabuf, struct iosys_map *map)
{
	return dma_buf_vmap(dmabuf, map);
}

static inline void dma_buf_vunmap_unlocked(struct dma_buf *dmabuf, struct iosys_map *map)
{
	dma_buf_vunmap(dmabuf, map);
}
#endif

#endif /* NCDMA_COMPAT_H */
