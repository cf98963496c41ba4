package boot

import (
	"encoding/binary"
	"fmt"

	"github.com/voltvmm/volt/vmm/memory"
)

// MP table per the Intel MultiProcessor Specification 1.4. Without ACPI this
// is how Linux learns the CPUs, the IOAPIC and how ISA IRQs reach it.

// MaxCPUs is the most vCPUs an MP table can describe here: APIC IDs are 8
// bits, 0xff is the broadcast ID, and the IOAPIC takes the ID after the last
// CPU.
const MaxCPUs = 254

const (
	mpFloatingSize   = 16
	mpHeaderSize     = 44
	mpProcessorSize  = 20
	mpSmallEntrySize = 8 // bus, IOAPIC, I/O and local interrupt entries
	mpSpecRev        = 4 // version 1.4

	mpEntryProcessor = 0
	mpEntryBus       = 1
	mpEntryIOAPIC    = 2
	mpEntryIOIntr    = 3
	mpEntryLocalIntr = 4

	mpIntINT    = 0
	mpIntNMI    = 1
	mpIntExtINT = 3

	mpCPUEnabled = 1 << 0
	mpCPUBoot    = 1 << 1
	mpIOAPICOn   = 1 << 0

	lapicVersion  = 0x14 // integrated APIC, as KVM's LAPIC reports
	ioapicVersion = 0x11 // 82093AA, as KVM's IOAPIC reports

	// Family 6, model 0, stepping 0 with FPU and APIC feature bits: Linux
	// only prints these, but a zero signature reads as an 8086.
	mpCPUSignature = 0x600
	mpCPUFeatures  = 1<<0 | 1<<9

	isaBusID = 0

	// ioapicPins is every input of KVM's IOAPIC. Entries for all 24 (not
	// just ISA IRQs 0-15) let devices such as virtio-mmio use IRQs 16-23.
	ioapicPins = 24

	allLAPICs = 0xff
)

var (
	mpOEMID     = [8]byte{'V', 'O', 'L', 'T', ' ', ' ', ' ', ' '}
	mpProductID = [12]byte{'V', 'O', 'L', 'T', ' ', 'M', 'I', 'C', 'R', 'O', 'V', 'M'}
	mpBusISA    = [6]byte{'I', 'S', 'A', ' ', ' ', ' '}
)

// mpConfigSize is the length of the configuration table for cpus CPUs.
func mpConfigSize(cpus int) int {
	return mpHeaderSize + cpus*mpProcessorSize + mpSmallEntrySize*(1+1+ioapicPins+2)
}

// buildMPConfig returns the configuration table (header and entries) for
// cpus CPUs, checksummed.
//
// IRQ n goes to IOAPIC pin n, IRQ 0 included. PCs route the timer to pin 2,
// but KVM's default GSI routing delivers the in-kernel PIT's IRQ 0 to pin 0,
// so a 0->2 override would point Linux at a pin that never fires.
func buildMPConfig(cpus int) []byte {
	b := make([]byte, mpConfigSize(cpus))
	le := binary.LittleEndian
	entries := 0
	off := mpHeaderSize
	for id := range cpus {
		e := b[off : off+mpProcessorSize]
		e[0] = mpEntryProcessor
		e[1] = byte(id)
		e[2] = lapicVersion
		e[3] = mpCPUEnabled
		if id == 0 {
			e[3] |= mpCPUBoot
		}
		le.PutUint32(e[4:], mpCPUSignature)
		le.PutUint32(e[8:], mpCPUFeatures)
		off += mpProcessorSize
		entries++
	}
	small := func(fill func(e []byte)) {
		fill(b[off : off+mpSmallEntrySize])
		off += mpSmallEntrySize
		entries++
	}
	small(func(e []byte) {
		e[0] = mpEntryBus
		e[1] = isaBusID
		copy(e[2:], mpBusISA[:])
	})
	ioapicID := byte(cpus)
	small(func(e []byte) {
		e[0] = mpEntryIOAPIC
		e[1] = ioapicID
		e[2] = ioapicVersion
		e[3] = mpIOAPICOn
		le.PutUint32(e[4:], IOAPICAddr)
	})
	for irq := range ioapicPins {
		small(func(e []byte) {
			e[0] = mpEntryIOIntr
			e[1] = mpIntINT
			// flags 0: polarity and trigger conform to the bus (ISA: edge, high)
			e[4] = isaBusID
			e[5] = byte(irq)
			e[6] = ioapicID
			e[7] = byte(irq)
		})
	}
	// LINT0 in virtual-wire mode carries the PIC (ExtINT) and LINT1 the NMI,
	// as on every PC; Linux sets the LAPICs up from these entries.
	small(func(e []byte) {
		e[0] = mpEntryLocalIntr
		e[1] = mpIntExtINT
		e[4] = isaBusID
		e[6] = allLAPICs
		e[7] = 0
	})
	small(func(e []byte) {
		e[0] = mpEntryLocalIntr
		e[1] = mpIntNMI
		e[4] = isaBusID
		e[6] = allLAPICs
		e[7] = 1
	})

	copy(b[0:4], "PCMP")
	le.PutUint16(b[4:], uint16(len(b)))
	b[6] = mpSpecRev
	copy(b[8:16], mpOEMID[:])
	copy(b[16:28], mpProductID[:])
	le.PutUint16(b[34:], uint16(entries))
	le.PutUint32(b[36:], LAPICAddr)
	b[7] = checksum(b)
	return b
}

// buildMPFloating returns the floating pointer structure leading to a
// configuration table at config.
func buildMPFloating(config memory.GuestAddr) []byte {
	b := make([]byte, mpFloatingSize)
	copy(b[0:4], "_MP_")
	binary.LittleEndian.PutUint32(b[4:], uint32(config))
	b[8] = 1 // length in 16-byte paragraphs
	b[9] = mpSpecRev
	// Feature byte 1 = 0: a configuration table is present (no default
	// configuration). Feature byte 2 bit 7 = 0: virtual-wire mode, no IMCR.
	b[10] = checksum(b)
	return b
}

// checksum returns the byte that makes b sum to zero mod 256 when stored in
// a field that was zero while summing.
func checksum(b []byte) byte {
	var s byte
	for _, v := range b {
		s += v
	}
	return -s
}

// writeMPTable writes the floating pointer into the EBDA, the configuration
// table into the BIOS area, and points the BDA at the EBDA so that Linux's
// search finds it.
func writeMPTable(mem *memory.Memory, cpus int) error {
	if cpus < 1 || cpus > MaxCPUs {
		return fmt.Errorf("MP table: %d CPUs, want 1..%d", cpus, MaxCPUs)
	}
	cfg := buildMPConfig(cpus)
	if len(cfg) > MPConfigAreaSize {
		return fmt.Errorf("MP table: configuration table of %d bytes exceeds its %d-byte area", len(cfg), MPConfigAreaSize)
	}
	if err := mem.Write(MPConfigAddr, cfg); err != nil {
		return fmt.Errorf("MP table: write configuration table: %w", err)
	}
	if err := mem.Write(EBDAAddr, buildMPFloating(MPConfigAddr)); err != nil {
		return fmt.Errorf("MP table: write floating pointer: %w", err)
	}
	if err := mem.WriteUint16(BDAEBDASegment, uint16(EBDAAddr>>4)); err != nil {
		return fmt.Errorf("MP table: write BDA EBDA pointer: %w", err)
	}
	if err := mem.WriteUint16(BDABaseMemKiB, uint16(EBDAAddr>>10)); err != nil {
		return fmt.Errorf("MP table: write BDA base memory size: %w", err)
	}
	return nil
}
