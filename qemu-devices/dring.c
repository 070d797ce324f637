/*
 * Descriptor ring (see dring.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "qemu/osdep.h"
#include "qemu/host-utils.h"
#include "hw/pci/pci_device.h"
#include "dring.h"

DescRingCheck dring_check(uint64_t base, uint32_t size, uint32_t entry_size,
                          uint32_t min_entries, uint32_t max_entries)
{
    if (size < min_entries || size > max_entries || !is_power_of_2(size)) {
        return DRING_BAD_SIZE;
    }
    if (base % entry_size || base + (uint64_t)size * entry_size - 1 < base) {
        return DRING_BAD_BASE;
    }
    return DRING_OK;
}

MemTxResult dring_fetch(const DescRing *r, PCIDevice *dev, void *entry)
{
    return pci_dma_read(dev, dring_entry_addr(r, r->head), entry, r->entry_size);
}

MemTxResult dring_writeback(const DescRing *r, PCIDevice *dev, uint32_t offset,
                            const void *buf, uint32_t len)
{
    assert(offset + len <= r->entry_size);
    return pci_dma_write(dev, dring_entry_addr(r, r->head) + offset, buf, len);
}
