// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * ncdma: driver for the dmalab noncoherent DMA engine (PCI 1234:dca0).
 *
 * One misc device /dev/ncdmaN per engine. The engine executes a ring of descriptors through
 * the platform IOMMU and a private write-back cache; this driver uses the real DMA API and
 * dma-buf (as exporter and importer) and issues the cache maintenance that sharing buffers
 * needs, with policies and faulty modes selected per buffer and attachment
 * (docs/driver-uapi.md).
 */
#include <linux/dma-mapping.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/iommu.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "ncdma.h"

static unsigned int ring_entries = 1024;
module_param(ring_entries, uint, 0444);
MODULE_PARM_DESC(ring_entries, "descriptor ring entries, a power of two in [64, 65536]");

static bool use_irq = true;
module_param(use_irq, bool, 0444);
MODULE_PARM_DESC(use_irq, "complete by MSI-X interrupt (0: poll)");

static DEFINE_IDA(ncdma_ida);
static struct pci_driver ncdma_pci_driver;

static_assert(sizeof(struct ncdma_drv_stats) >= NCDMA_NR_STATS * sizeof(__u64));
static_assert(offsetof(struct ncdma_drv_stats, maint_fallbacks) ==
	      ST_MAINT_FALLBACKS * sizeof(__u64));
static_assert(NCDMA_NR_COUNTERS <= NCDMA_DEV_COUNTERS_MAX);
static_assert(NCDMA_UOP_CLEAN_INVALIDATE == NCDMA_OP_CLEAN_INVALIDATE &&
	      NCDMA_UOP_COPY == NCDMA_OP_COPY && NCDMA_UOP_FILL == NCDMA_OP_FILL);
static_assert(NCDMA_DIR_TO_DEVICE == DMA_TO_DEVICE && NCDMA_DIR_FROM_DEVICE == DMA_FROM_DEVICE &&
	      NCDMA_DIR_BIDIRECTIONAL == DMA_BIDIRECTIONAL);
static_assert(sizeof(struct ncdma_desc) == NCDMA_DESC_SIZE);

/* The ncdma device behind dev, if dev is one (and still bound). */
struct ncdma_dev *ncdma_dev_of(struct device *dev)
{
	struct ncdma_dev *nd;

	if (!dev || dev->driver != &ncdma_pci_driver.driver)
		return NULL;
	nd = pci_get_drvdata(to_pci_dev(dev));
	return nd && !READ_ONCE(nd->dead) ? nd : NULL;
}

static void ncdma_dev_free(struct kref *ref)
{
	struct ncdma_dev *nd = container_of(ref, struct ncdma_dev, ref);

	pci_dev_put(nd->pdev);
	kfree(nd);
}

void ncdma_dev_get(struct ncdma_dev *nd)
{
	kref_get(&nd->ref);
}

void ncdma_dev_put(struct ncdma_dev *nd)
{
	kref_put(&nd->ref, ncdma_dev_free);
}

/* File operations */

static int ncdma_open(struct inode *inode, struct file *filp)
{
	struct ncdma_dev *nd = container_of(filp->private_data, struct ncdma_dev, misc);
	struct ncdma_file *nf;

	nf = kzalloc(sizeof(*nf), GFP_KERNEL);
	if (!nf)
		return -ENOMEM;
	mutex_init(&nf->lock);
	idr_init(&nf->objs);
	INIT_LIST_HEAD(&nf->batches);
	mutex_lock(&nd->files_lock);
	if (nd->dead) {
		mutex_unlock(&nd->files_lock);
		kfree(nf);
		return -ENODEV;
	}
	ncdma_dev_get(nd);
	nf->nd = nd;
	list_add(&nf->node, &nd->files);
	mutex_unlock(&nd->files_lock);
	filp->private_data = nf;
	return nonseekable_open(inode, filp);
}

static int ncdma_release(struct inode *inode, struct file *filp)
{
	struct ncdma_file *nf = filp->private_data;
	struct ncdma_dev *nd = nf->nd;

	mutex_lock(&nd->files_lock);
	if (!list_empty(&nf->node)) {
		list_del_init(&nf->node);
		mutex_unlock(&nd->files_lock);
		ncdma_file_teardown(nf);
	} else {
		mutex_unlock(&nd->files_lock);	/* remove tore it down already */
	}
	idr_destroy(&nf->objs);
	kfree(nf);
	ncdma_dev_put(nd);
	return 0;
}

static u32 ncdma_domain_kind(struct device *dev)
{
	struct iommu_domain *domain = iommu_get_domain_for_dev(dev);

	if (!domain)
		return NCDMA_DOMAIN_NONE;
	if (domain->type == IOMMU_DOMAIN_IDENTITY)
		return NCDMA_DOMAIN_IDENTITY;
	if (domain->type & __IOMMU_DOMAIN_DMA_API)
		return NCDMA_DOMAIN_DMA;
	return NCDMA_DOMAIN_OTHER;
}

static int ncdma_ioc_info(struct ncdma_dev *nd, void __user *arg)
{
	struct device *dev = &nd->pdev->dev;
	struct iommu_group *group;
	struct ncdma_info info = {
		.uapi_version = NCDMA_UAPI_VERSION,
		.index = nd->index,
		.hw_id = nd->hw_id,
		.hw_version = nd->hw_version,
		.caps = readl(nd->regs + NCDMA_REG_CAPS),
		.cache_line = nd->cache_line,
		.cache_size = nd->cache_size,
		.cache_ways = nd->cache_ways,
		.iotlb_entries = nd->iotlb_entries,
		.max_xfer = nd->max_xfer,
		.ring_entries = nd->entries,
		.irq_mode = nd->irq_mode ? NCDMA_IRQ_MODE_MSIX : NCDMA_IRQ_MODE_POLL,
		.dma_mask_bits = fls64(dma_get_mask(dev)),
		.iommu_group = -1,
		.iommu_domain = ncdma_domain_kind(dev),
	};

	group = iommu_group_get(dev);
	if (group) {
		info.iommu_group = iommu_group_id(group);
		iommu_group_put(group);
	}
	strscpy(info.pci_name, pci_name(nd->pdev), sizeof(info.pci_name));
	return copy_to_user(arg, &info, sizeof(info)) ? -EFAULT : 0;
}

static int ncdma_ioc_stats(struct ncdma_dev *nd, void __user *arg)
{
	struct ncdma_stats *st;
	u64 *drv;
	u32 flags, i;
	int ret = 0;

	if (get_user(flags, (u32 __user *)(arg + offsetof(struct ncdma_stats, flags))))
		return -EFAULT;
	st = kzalloc(sizeof(*st), GFP_KERNEL);
	if (!st)
		return -ENOMEM;
	drv = (u64 *)&st->driver;
	for (i = 0; i < NCDMA_NR_STATS; i++)
		drv[i] = (flags & NCDMA_STATS_RESET) ? atomic64_xchg(&nd->stats[i], 0)
						     : atomic64_read(&nd->stats[i]);
	st->ndevice = NCDMA_NR_COUNTERS;
	st->flags = flags;
	ncdma_read_counters(nd, st->device);
	if (copy_to_user(arg, st, sizeof(*st)))
		ret = -EFAULT;
	kfree(st);
	return ret;
}

static long ncdma_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	struct ncdma_file *nf = filp->private_data;
	struct ncdma_dev *nd = nf->nd;
	void __user *uarg = (void __user *)arg;

	if (READ_ONCE(nd->dead) || READ_ONCE(nf->dead))
		return -ENODEV;
	switch (cmd) {
	case NCDMA_IOC_INFO:
		return ncdma_ioc_info(nd, uarg);
	case NCDMA_IOC_STATS:
		return ncdma_ioc_stats(nd, uarg);
	default:
		return ncdma_ioctl_objects(nf, cmd, uarg);
	}
}

static const struct file_operations ncdma_fops = {
	.owner = THIS_MODULE,
	.open = ncdma_open,
	.release = ncdma_release,
	.unlocked_ioctl = ncdma_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

/* PCI */

static void ncdma_read_identity(struct ncdma_dev *nd)
{
	nd->hw_id = readl(nd->regs + NCDMA_REG_ID);
	nd->hw_version = readl(nd->regs + NCDMA_REG_VERSION);
	nd->cache_line = readl(nd->regs + NCDMA_REG_CACHE_LINE);
	nd->cache_size = readl(nd->regs + NCDMA_REG_CACHE_SIZE);
	nd->cache_ways = readl(nd->regs + NCDMA_REG_CACHE_WAYS);
	nd->iotlb_entries = readl(nd->regs + NCDMA_REG_IOTLB_ENTRIES);
	nd->max_xfer = readl(nd->regs + NCDMA_REG_MAX_XFER);
}

static int ncdma_setup_irqs(struct ncdma_dev *nd)
{
	struct pci_dev *pdev = nd->pdev;
	int ret;

	if (!use_irq)
		return 0;
	ret = pci_alloc_irq_vectors(pdev, NCDMA_MSIX_VECTORS, NCDMA_MSIX_VECTORS, PCI_IRQ_MSIX);
	if (ret < 0) {
		dev_warn(&pdev->dev, "no MSI-X (%d): completing by polling\n", ret);
		return 0;
	}
	ret = request_irq(pci_irq_vector(pdev, NCDMA_VEC_COMPLETION), ncdma_irq_completion, 0,
			  nd->name, nd);
	if (ret)
		goto free_vectors;
	ret = request_irq(pci_irq_vector(pdev, NCDMA_VEC_ERROR), ncdma_irq_error, 0, nd->name, nd);
	if (ret)
		goto free_completion;
	nd->irq_mode = true;
	return 0;

free_completion:
	free_irq(pci_irq_vector(pdev, NCDMA_VEC_COMPLETION), nd);
free_vectors:
	pci_free_irq_vectors(pdev);
	dev_warn(&pdev->dev, "cannot request interrupts (%d): completing by polling\n", ret);
	return 0;
}

static void ncdma_free_irqs(struct ncdma_dev *nd)
{
	if (!nd->irq_mode)
		return;
	free_irq(pci_irq_vector(nd->pdev, NCDMA_VEC_ERROR), nd);
	free_irq(pci_irq_vector(nd->pdev, NCDMA_VEC_COMPLETION), nd);
	pci_free_irq_vectors(nd->pdev);
	nd->irq_mode = false;
}

static int ncdma_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct ncdma_dev *nd;
	int ret, i;

	if (ring_entries < 64 || ring_entries > NCDMA_RING_MAX_ENTRIES ||
	    !is_power_of_2(ring_entries))
		return -EINVAL;
	nd = kzalloc(sizeof(*nd), GFP_KERNEL);
	if (!nd)
		return -ENOMEM;
	kref_init(&nd->ref);
	nd->pdev = pci_dev_get(pdev);
	nd->entries = ring_entries;
	spin_lock_init(&nd->ring_lock);
	mutex_init(&nd->submit_mutex);
	init_waitqueue_head(&nd->wq);
	INIT_WORK(&nd->err_work, ncdma_err_work);
	init_rwsem(&nd->map_sem);
	mutex_init(&nd->files_lock);
	INIT_LIST_HEAD(&nd->files);
	for (i = 0; i < NCDMA_NR_STATS; i++)
		atomic64_set(&nd->stats[i], 0);
	ret = ida_alloc(&ncdma_ida, GFP_KERNEL);
	if (ret < 0) {
		pci_dev_put(pdev);
		kfree(nd);
		return ret;
	}
	nd->index = ret;
	snprintf(nd->name, sizeof(nd->name), "ncdma%d", nd->index);

	ret = pci_enable_device(pdev);
	if (ret)
		goto err_put;
	ret = pci_request_regions(pdev, KBUILD_MODNAME);
	if (ret)
		goto err_disable;
	nd->regs = pci_iomap(pdev, NCDMA_REGS_BAR, NCDMA_REGS_BAR_SIZE);
	if (!nd->regs) {
		ret = -ENOMEM;
		goto err_regions;
	}
	ncdma_read_identity(nd);
	if (nd->hw_id != NCDMA_ID_MAGIC || nd->hw_version >> 16 != NCDMA_VERSION >> 16) {
		dev_err(&pdev->dev, "not an ncdma 1.x (id %#x version %#x)\n", nd->hw_id,
			nd->hw_version);
		ret = -ENODEV;
		goto err_unmap;
	}
	if (nd->max_xfer < PAGE_SIZE) {
		ret = -ENODEV;
		goto err_unmap;
	}
	ret = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(64));
	if (ret)
		goto err_unmap;
	pci_set_master(pdev);
	ret = ncdma_ring_init(nd);
	if (ret)
		goto err_master;
	pci_set_drvdata(pdev, nd);
	ncdma_setup_irqs(nd);
	ncdma_ring_start(nd);

	nd->misc.minor = MISC_DYNAMIC_MINOR;
	nd->misc.name = nd->name;
	nd->misc.fops = &ncdma_fops;
	nd->misc.parent = &pdev->dev;
	nd->misc.mode = 0600;
	ret = misc_register(&nd->misc);
	if (ret)
		goto err_ring;
	dev_info(&pdev->dev, "%s: cache %u B/%u-way/%u B lines, iotlb %u, %s, ring %u at %pad\n",
		 nd->name, nd->cache_size, nd->cache_ways, nd->cache_line, nd->iotlb_entries,
		 nd->irq_mode ? "msi-x" : "polling", nd->entries, &nd->ring_dma);
	return 0;

err_ring:
	ncdma_ring_stop(nd);
	ncdma_free_irqs(nd);
	cancel_work_sync(&nd->err_work);
	pci_set_drvdata(pdev, NULL);
	ncdma_ring_free(nd);
err_master:
	pci_clear_master(pdev);
err_unmap:
	pci_iounmap(pdev, nd->regs);
err_regions:
	pci_release_regions(pdev);
err_disable:
	pci_disable_device(pdev);
err_put:
	ida_free(&ncdma_ida, nd->index);
	ncdma_dev_put(nd);
	return ret;
}

static void ncdma_remove(struct pci_dev *pdev)
{
	struct ncdma_dev *nd = pci_get_drvdata(pdev);
	struct ncdma_file *nf, *tmp;

	misc_deregister(&nd->misc);
	/*
	 * Files still open lose their objects now and their ioctls fail from here on. files_lock
	 * is held throughout, so a concurrent release waits until its file is torn down.
	 */
	mutex_lock(&nd->files_lock);
	list_for_each_entry_safe(nf, tmp, &nd->files, node) {
		list_del_init(&nf->node);
		ncdma_file_teardown(nf);
	}
	mutex_unlock(&nd->files_lock);
	ncdma_ring_drain(nd);
	mutex_lock(&nd->submit_mutex);
	WRITE_ONCE(nd->dead, true);
	mutex_unlock(&nd->submit_mutex);
	ncdma_ring_stop(nd);
	ncdma_free_irqs(nd);
	cancel_work_sync(&nd->err_work);
	ncdma_ring_free(nd);
	pci_clear_master(pdev);
	pci_iounmap(pdev, nd->regs);
	pci_release_regions(pdev);
	pci_disable_device(pdev);
	/* The name is free again: a device bound next gets it even while old files linger. */
	ida_free(&ncdma_ida, nd->index);
	ncdma_dev_put(nd);
}

static const struct pci_device_id ncdma_ids[] = {
	{ PCI_DEVICE(NCDMA_PCI_VENDOR_ID, NCDMA_PCI_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, ncdma_ids);

static struct pci_driver ncdma_pci_driver = {
	.name = KBUILD_MODNAME,
	.id_table = ncdma_ids,
	.probe = ncdma_probe,
	.remove = ncdma_remove,
};
module_pci_driver(ncdma_pci_driver);

MODULE_DESCRIPTION("dmalab noncoherent DMA engine: DMA API and dma-buf exporter/importer");
MODULE_LICENSE("GPL");
MODULE_IMPORT_NS(DMA_BUF);
