package boot

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/voltvmm/volt/vmm/memory"
)

// realKernels lists kernel images on this machine: $VOLT_TEST_KERNELS
// (colon-separated), the host's /boot/vmlinuz-*, images built by
// guest/kernel/build.sh, and the probe guest if it was built.
func realKernels() []string {
	var paths []string
	if env := os.Getenv("VOLT_TEST_KERNELS"); env != "" {
		paths = append(paths, strings.Split(env, ":")...)
	}
	globs := []string{"/boot/vmlinuz-*", "../../build/guest/probe.elf"}
	if home, err := os.UserHomeDir(); err == nil {
		globs = append(globs,
			filepath.Join(home, ".cache/volt/kernel/*/vmlinux"),
			filepath.Join(home, ".cache/volt/kernel/*/bzImage"))
	}
	for _, g := range globs {
		m, _ := filepath.Glob(g)
		paths = append(paths, m...)
	}
	var out []string
	for _, p := range paths {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			out = append(out, p)
		}
	}
	return out
}

func TestLoadRealKernels(t *testing.T) {
	kernels := realKernels()
	if len(kernels) == 0 {
		t.Skip("no kernel images found: set VOLT_TEST_KERNELS or build one with guest/kernel/build.sh")
	}
	for _, path := range kernels {
		t.Run(strings.ReplaceAll(path, "/", "_"), func(t *testing.T) {
			f, err := os.Open(path)
			if err != nil {
				t.Skipf("open: %v", err)
			}
			defer f.Close()
			st, _ := f.Stat()
			m := newMemory(t, 512<<20)
			initrd := pattern(1<<20, 0x33)
			cfg := Config{
				Kernel: f, KernelSize: st.Size(),
				Initrd: bytes.NewReader(initrd), InitrdSize: int64(len(initrd)),
				Cmdline: "console=ttyS0 reboot=k panic=-1", CPUs: 2,
			}
			e, err := Load(m, cfg)
			if err != nil {
				t.Fatalf("Load %s: %v", path, err)
			}
			t.Logf("%s: protocol %v RIP %#x KernelEnd %#x", filepath.Base(path), e.Protocol, e.RIP, uint64(e.KernelEnd))
			checkMPTable(t, m, 2)
			if ef, err := elf.NewFile(f); err == nil {
				checkAgainstDebugELF(t, m, ef, e)
				return
			}
			if e.Protocol != ProtocolLinux64 {
				t.Errorf("bzImage booted with %v", e.Protocol)
			}
			checkLinux64Entry(t, m, e)
			bp := readMem(t, m, ZeroPageAddr, ZeroPageSize)
			checkBootParams(t, m, bp, cfg, 512<<20)
			// The entry must be 0x200 into the protected-mode code as
			// copied from the file.
			hdr := make([]byte, hdrEndMax)
			if _, err := f.ReadAt(hdr, 0); err != nil {
				t.Fatal(err)
			}
			sects := int64(hdr[hdrStart])
			if sects == 0 {
				sects = 4
			}
			want := make([]byte, 64)
			if _, err := f.ReadAt(want, (sects+1)*512+0x200); err != nil {
				t.Fatal(err)
			}
			if got := readMem(t, m, memory.GuestAddr(e.RIP), 64); !bytes.Equal(got, want) {
				t.Error("bytes at RIP are not the 64-bit entry from the file")
			}
		})
	}
}

// checkAgainstDebugELF cross-checks our parser with the standard library's:
// every PT_LOAD in memory at its p_paddr, and the PVH note's value.
func checkAgainstDebugELF(t *testing.T, m *memory.Memory, ef *elf.File, e *Entry) {
	t.Helper()
	var end uint64
	for i, p := range ef.Progs {
		if p.Type != elf.PT_LOAD || p.Memsz == 0 {
			continue
		}
		end = max(end, p.Paddr+p.Memsz)
		n := min(p.Filesz, 4096)
		want := make([]byte, n)
		if _, err := p.ReadAt(want, int64(p.Filesz-n)); err != nil {
			t.Fatalf("read segment %d: %v", i, err)
		}
		if got := readMem(t, m, memory.GuestAddr(p.Paddr+p.Filesz-n), int(n)); !bytes.Equal(got, want) {
			t.Errorf("segment %d tail differs in guest memory", i)
		}
	}
	if uint64(e.KernelEnd) != end {
		t.Errorf("KernelEnd %#x, debug/elf says %#x", uint64(e.KernelEnd), end)
	}
	pvh, found := uint64(0), false
	for _, p := range ef.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			t.Fatal(err)
		}
		for len(b) >= 12 {
			nsz, dsz, typ := binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint32(b[4:]), binary.LittleEndian.Uint32(b[8:])
			if 12+align4(uint64(nsz))+align4(uint64(dsz)) > uint64(len(b)) {
				break
			}
			name := b[12 : 12+nsz]
			desc := b[12+align4(uint64(nsz)):][:dsz]
			if typ == 18 && string(bytes.TrimRight(name, "\x00")) == "Xen" && !found {
				found = true
				pvh = uint64(binary.LittleEndian.Uint32(desc))
			}
			b = b[12+align4(uint64(nsz))+align4(uint64(dsz)):]
		}
	}
	switch {
	case found && (e.Protocol != ProtocolPVH || e.RIP != pvh):
		t.Errorf("PVH note says %#x; Load chose %v at %#x", pvh, e.Protocol, e.RIP)
	case !found && (e.Protocol != ProtocolLinux64 || e.RIP != ef.Entry):
		t.Errorf("no PVH note; want linux64 at e_entry %#x, got %v at %#x", ef.Entry, e.Protocol, e.RIP)
	}
}
