package boot

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/voltvmm/volt/vmm/memory"
)

func sum(b []byte) byte {
	var s byte
	for _, v := range b {
		s += v
	}
	return s
}

// checkMPTable finds the MP table the way Linux does (BDA -> EBDA ->
// "_MP_" -> physptr) and checks checksums and entries.
func checkMPTable(t *testing.T, m *memory.Memory, cpus int) {
	t.Helper()
	le := binary.LittleEndian
	seg, err := m.ReadUint16(BDAEBDASegment)
	if err != nil {
		t.Fatal(err)
	}
	ebda := memory.GuestAddr(seg) << 4
	if ebda != EBDAAddr {
		t.Fatalf("BDA points at EBDA %#x, want %#x", uint64(ebda), uint64(EBDAAddr))
	}
	if kib, _ := m.ReadUint16(BDABaseMemKiB); kib != 639 {
		t.Errorf("BDA base memory %d KiB, want 639", kib)
	}
	fp := readMem(t, m, ebda, mpFloatingSize)
	if string(fp[:4]) != "_MP_" || fp[8] != 1 || fp[9] != 4 {
		t.Fatalf("floating pointer %q len %d rev %d", fp[:4], fp[8], fp[9])
	}
	if s := sum(fp); s != 0 {
		t.Errorf("floating pointer sums to %#x", s)
	}
	cfgAddr := memory.GuestAddr(le.Uint32(fp[4:]))
	hdr := readMem(t, m, cfgAddr, mpHeaderSize)
	if string(hdr[:4]) != "PCMP" || hdr[6] != 4 || string(hdr[8:16]) != "VOLT    " {
		t.Fatalf("config header %q rev %d OEM %q", hdr[:4], hdr[6], hdr[8:16])
	}
	if le.Uint32(hdr[36:]) != LAPICAddr || le.Uint16(hdr[40:]) != 0 {
		t.Errorf("LAPIC address %#x, extended length %d", le.Uint32(hdr[36:]), le.Uint16(hdr[40:]))
	}
	length := int(le.Uint16(hdr[4:]))
	tbl := readMem(t, m, cfgAddr, length)
	if s := sum(tbl); s != 0 {
		t.Errorf("config table sums to %#x", s)
	}
	count := int(le.Uint16(hdr[34:]))
	var procs, bsps, buses, ioapics, ioints, lints int
	ioapicID := -1
	off := mpHeaderSize
	for i := 0; i < count; i++ {
		if off >= len(tbl) {
			t.Fatalf("entry %d starts past the table end %d", i, len(tbl))
		}
		e := tbl[off:]
		switch e[0] {
		case mpEntryProcessor:
			if int(e[1]) != procs || e[2] != 0x14 || e[3]&mpCPUEnabled == 0 {
				t.Errorf("processor entry %d: id %d version %#x flags %#x", procs, e[1], e[2], e[3])
			}
			if e[3]&mpCPUBoot != 0 {
				bsps++
				if e[1] != 0 {
					t.Errorf("BSP flag on CPU %d", e[1])
				}
			}
			procs++
			off += mpProcessorSize
			continue
		case mpEntryBus:
			if string(e[2:8]) != "ISA   " {
				t.Errorf("bus type %q", e[2:8])
			}
			buses++
		case mpEntryIOAPIC:
			ioapicID = int(e[1])
			if e[2] != 0x11 || e[3] != 1 || le.Uint32(e[4:]) != IOAPICAddr {
				t.Errorf("IOAPIC entry % x", e[:8])
			}
			ioapics++
		case mpEntryIOIntr:
			if e[1] != mpIntINT || e[5] != e[7] || int(e[6]) != ioapicID || int(e[5]) != ioints {
				t.Errorf("I/O interrupt entry % x", e[:8])
			}
			ioints++
		case mpEntryLocalIntr:
			want := [2]byte{mpIntExtINT, mpIntNMI}[lints]
			if e[1] != want || int(e[7]) != lints {
				t.Errorf("local interrupt entry % x", e[:8])
			}
			lints++
		default:
			t.Fatalf("unknown entry type %d at offset %d", e[0], off)
		}
		off += mpSmallEntrySize
	}
	if off != length {
		t.Errorf("entries end at %d, table length %d", off, length)
	}
	if procs != cpus || bsps != 1 || buses != 1 || ioapics != 1 || ioints != ioapicPins || lints != 2 {
		t.Errorf("got %d CPUs (%d BSP), %d buses, %d IOAPICs, %d I/O ints, %d local ints; want %d, 1, 1, 1, %d, 2",
			procs, bsps, buses, ioapics, ioints, lints, cpus, ioapicPins)
	}
	if ioapicID != cpus {
		t.Errorf("IOAPIC id %d, want %d (after the last LAPIC)", ioapicID, cpus)
	}
}

func TestMPTable(t *testing.T) {
	for _, cpus := range []int{1, 2, 8, MaxCPUs} {
		t.Run(fmt.Sprint(cpus), func(t *testing.T) {
			m := newMemory(t, 16<<20)
			if err := writeMPTable(m, cpus); err != nil {
				t.Fatal(err)
			}
			checkMPTable(t, m, cpus)
		})
	}
}

func TestMPTableRejectsCPUCount(t *testing.T) {
	m := newMemory(t, 16<<20)
	for _, cpus := range []int{0, -1, MaxCPUs + 1} {
		if err := writeMPTable(m, cpus); err == nil {
			t.Errorf("writeMPTable(%d) succeeded", cpus)
		}
	}
}
