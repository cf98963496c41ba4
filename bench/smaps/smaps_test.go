package smaps

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

const rollupHeader = "00400000-7ffd178a8000 ---p 00000000 00:00 0                              [rollup]\n"

func TestParseRollup(t *testing.T) {
	real, err := os.ReadFile("testdata/smaps_rollup-volt-vmm-clone.txt")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		in   string
		want Rollup
		err  bool
	}{
		{name: "volt-vmm clone on Linux 6.18", in: string(real), want: Rollup{
			Rss: 15116, Pss: 15110, SharedClean: 8, PrivateClean: 13572, PrivateDirty: 1536, Anonymous: 1528,
		}},
		{name: "minimal", in: rollupHeader + "Rss: 10 kB\nPss: 4 kB\n", want: Rollup{Rss: 10, Pss: 4}},
		{name: "fields without a size are skipped", in: rollupHeader + "Rss: 10 kB\nPss: 4 kB\nTHPeligible: 0\nVmFlags: rd wr\n", want: Rollup{Rss: 10, Pss: 4}},
		{name: "unknown sized field is accepted", in: rollupHeader + "Rss: 1 kB\nPss: 1 kB\nNew_Thing: 7 kB\n", want: Rollup{Rss: 1, Pss: 1}},
		{name: "no trailing newline", in: rollupHeader + "Rss: 1 kB\nPss: 1 kB", want: Rollup{Rss: 1, Pss: 1}},
		{name: "empty", in: "", err: true},
		{name: "per-mapping smaps, not a rollup", in: "00400000-0070b000 r-xp 00000000 fe:00 1 /bin/x\nRss: 1 kB\nPss: 1 kB\n", err: true},
		{name: "no Pss", in: rollupHeader + "Rss: 1 kB\n", err: true},
		{name: "no Rss", in: rollupHeader + "Pss: 1 kB\n", err: true},
		{name: "repeated field", in: rollupHeader + "Rss: 1 kB\nPss: 1 kB\nRss: 2 kB\n", err: true},
		{name: "negative size", in: rollupHeader + "Rss: -1 kB\nPss: 1 kB\n", err: true},
		{name: "size not a number", in: rollupHeader + "Rss: lots kB\nPss: 1 kB\n", err: true},
		{name: "size overflows", in: rollupHeader + "Rss: 99999999999999999999999 kB\nPss: 1 kB\n", err: true},
		{name: "size past a petabyte", in: rollupHeader + fmt.Sprintf("Rss: %d kB\nPss: 1 kB\n", uint64(1)<<51), err: true},
		{name: "line without a name", in: rollupHeader + "Rss: 1 kB\nPss: 1 kB\ngarbage\n", err: true},
		{name: "name with blanks", in: rollupHeader + "Rss: 1 kB\nPss: 1 kB\nA B: 3 kB\n", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseRollup([]byte(tt.in))
			if tt.err {
				if err == nil {
					t.Fatalf("accepted: %+v", got)
				}
				if !errors.Is(err, ErrMalformed) {
					t.Errorf("error %v does not wrap ErrMalformed", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseOfFileSumsTheMemoryFileMappings(t *testing.T) {
	real, err := os.ReadFile("testdata/smaps-volt-vmm-clone.txt")
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseOfFile(real, "/tmp/vtry/vm.mem")
	if err != nil {
		t.Fatal(err)
	}
	want := Rollup{Rss: 8064, Pss: 8064, PrivateClean: 8048, PrivateDirty: 16, Anonymous: 16}
	if got != want {
		t.Errorf("vm.mem: got %+v, want %+v", got, want)
	}
	// The binary is mapped three times (text, rodata, data): summed.
	bin, err := ParseOfFile(real, "/work/main/bin/volt-vmm")
	if err != nil {
		t.Fatal(err)
	}
	if bin.Rss == 0 || bin.Rss < bin.PrivateClean {
		t.Errorf("volt-vmm binary: %+v", bin)
	}
	none, err := ParseOfFile(real, "/no/such/file")
	if err != nil || none != (Rollup{}) {
		t.Errorf("unmapped file: %+v, %v", none, err)
	}
	two := "1000-2000 rw-p 0 00:00 1 /m\nRss: 4 kB\n3000-5000 rw-p 0 00:00 1 /m\nRss: 8 kB\n6000-7000 rw-p 0 00:00 0\nRss: 100 kB\n"
	if got, err := ParseOfFile([]byte(two), "/m"); err != nil || got.Rss != 12 {
		t.Errorf("two mappings of /m: %+v, %v; want Rss 12", got, err)
	}
	if _, err := ParseOfFile([]byte("1000-2000 rw-p 0 00:00 1 /m\nnonsense\n"), "/m"); !errors.Is(err, ErrMalformed) {
		t.Errorf("malformed line: %v", err)
	}
}

// FuzzParseRollup: no input panics; what is accepted has Rss and Pss
// and survives being written back and parsed again.
func FuzzParseRollup(f *testing.F) {
	for _, p := range []string{"testdata/smaps_rollup-volt-vmm-clone.txt", "/proc/self/smaps_rollup"} {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte(rollupHeader + "Rss: 10 kB\nPss: 4 kB\nVmFlags: rd\n"))
	f.Add([]byte(rollupHeader + "Rss: 1 kB\nRss: 1 kB\n"))
	f.Add([]byte("[rollup]\n:\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseRollup(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		var b strings.Builder
		b.WriteString(rollupHeader)
		for _, name := range []string{"Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty", "Anonymous", "Swap"} {
			fmt.Fprintf(&b, "%s: %d kB\n", name, *r.field(name))
		}
		again, err := ParseRollup([]byte(b.String()))
		if err != nil {
			t.Fatalf("accepted %q as %+v, whose rendering is refused: %v", data, r, err)
		}
		if again != r {
			t.Fatalf("round trip: %+v, then %+v", r, again)
		}
	})
}

// FuzzParseOfFile: no input panics; errors wrap ErrMalformed; and what is
// accepted adds up: the same text twice (the second copy after a mapping of
// another file, so it starts as the first did) gives every figure twice,
// unless doubling passes the size limit, which must then be the error.
func FuzzParseOfFile(f *testing.F) {
	for _, p := range []string{"testdata/smaps-volt-vmm-clone.txt", "/proc/self/smaps"} {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data, "/tmp/vtry/vm.mem")
		}
	}
	f.Add([]byte("1000-2000 rw-p 0 00:00 1 /m\nRss: 4 kB\nPss: 2 kB\nVmFlags: rd wr\n"), "/m")
	f.Add([]byte("1000-2000 rw-p 0 00:00 1 /a b\nRss: 4 kB\n"), "/a b")
	f.Add([]byte("Rss: 4 kB\n1000-2000 rw-p 0 00:00 1 /m\n"), "/m")
	f.Add([]byte(fmt.Sprintf("1-2 r--p 0 0:0 0 /m\nRss: %d kB\n", uint64(1)<<49)), "/m")
	f.Fuzz(func(t *testing.T, data []byte, path string) {
		r, err := ParseOfFile(data, path)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		twice := append([]byte{}, data...)
		if len(twice) > 0 && twice[len(twice)-1] != '\n' {
			twice = append(twice, '\n')
		}
		twice = append(append(twice, "0-1 r--p 0 00:00 0 /not-the-path\x00\n"...), data...)
		r2, err := ParseOfFile(twice, path)
		fields := func(r Rollup) []uint64 {
			return []uint64{r.Rss, r.Pss, r.SharedClean, r.SharedDirty, r.PrivateClean, r.PrivateDirty, r.Anonymous, r.Swap}
		}
		if err != nil {
			for _, v := range fields(r) {
				if 2*v > maxSmapsKB {
					return
				}
			}
			t.Fatalf("accepted once as %+v, refused twice: %v", r, err)
		}
		a, b := fields(r), fields(r2)
		for i := range a {
			if b[i] != 2*a[i] {
				t.Fatalf("once %+v, twice %+v", r, r2)
			}
		}
	})
}
