package mmio

import "fmt"

// KernelParam formats the Linux command-line parameter that declares a
// virtio-mmio device (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES,
// drivers/virtio/virtio_mmio.c): virtio_mmio.device=<size>@<base>:<irq>.
// Linux numbers the devices in the order of these parameters.
func KernelParam(base uint64, irq uint32) string {
	return fmt.Sprintf("virtio_mmio.device=%dK@%#x:%d", Size/1024, base, irq)
}
