package pool

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/cas"
)

func mountBind(src, dst string) error { return unix.Mount(src, dst, "", unix.MS_BIND, "") }

func unmount(dst string) { unix.Unmount(dst, unix.MNT_DETACH) }

const infoCAS = `format 2.0, full snapshot: 1 vCPUs, 64 MiB memory, memory ID 0123456789abcdef0123456789abcdef, generation 00112233445566778899aabbccddeeff
memory in a CAS store: manifest ` + "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" + `
`

func TestParseStateInfo(t *testing.T) {
	manifest, _ := cas.ParseDigest(strings.Repeat("a", 64))
	for _, tc := range []struct {
		name, out string
		want      stateInfo
		err       string
	}{
		{"CAS", infoCAS, stateInfo{MemoryID: "0123456789abcdef0123456789abcdef", Manifest: manifest}, ""},
		{"file", "format 2.0, full snapshot: 2 vCPUs, 128 MiB memory, memory ID ffffffffffffffffffffffffffffffff, generation x\n",
			stateInfo{MemoryID: strings.Repeat("f", 32)}, ""},
		{"diff", "format 2.0, diff snapshot: 1 vCPUs, 64 MiB memory, memory ID ffffffffffffffffffffffffffffffff, generation x\ndiff against memory 00\n",
			stateInfo{MemoryID: strings.Repeat("f", 32), Diff: true}, ""},
		{"empty", "", stateInfo{}, "0 summary lines"},
		{"other tool", "volt-snapshot 9 says hello\n", stateInfo{}, "0 summary lines"},
		{"two heads", infoCAS + infoCAS, stateInfo{}, "2 summary lines"},
		{"short id", "format 2.0, full snapshot: 1 vCPUs, 64 MiB memory, memory ID 0123, generation x\n", stateInfo{}, "0 summary lines"},
		{"upper-case manifest", strings.ToUpper(infoCAS), stateInfo{}, "0 summary lines"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStateInfo([]byte(tc.out))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v %v, want %+v", got, err, tc.want)
			}
		})
	}
}

// volt-snapshot's output is read as untrusted: nothing panics, and a
// result is only ever what a well-formed summary line said.
func FuzzParseStateInfo(f *testing.F) {
	f.Add([]byte(infoCAS))
	f.Add([]byte("format 2.0, diff snapshot: 1 vCPUs, 64 MiB memory, memory ID ffffffffffffffffffffffffffffffff, generation x\n"))
	f.Add([]byte("memory in a CAS store: manifest 00\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		si, err := parseStateInfo(b)
		if err != nil {
			return
		}
		if len(si.MemoryID) != 32 || strings.Trim(si.MemoryID, "0123456789abcdef") != "" {
			t.Fatalf("memory ID %q from %q", si.MemoryID, b)
		}
		if !si.Manifest.IsZero() && !strings.Contains(string(b), si.Manifest.String()) {
			t.Fatalf("manifest %s not in %q", si.Manifest, b)
		}
	})
}

func TestParseUIDRange(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want UIDRange
		err  string
	}{
		{"100000-165535", UIDRange{100000, 165535}, ""},
		{"5-5", UIDRange{5, 5}, ""},
		{"0-10", UIDRange{}, "uid 0"},
		{"10-5", UIDRange{}, "empty"},
		{"10", UIDRange{}, "FIRST-LAST"},
		{"a-b", UIDRange{}, "two numbers"},
		{"1-4294967295", UIDRange{}, "up to"},
		{"1-4294967296", UIDRange{}, "two numbers"},
		{"-1-5", UIDRange{}, "two numbers"},
	} {
		got, err := ParseUIDRange(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %v %v", tc.in, got, err)
		}
	}
	if err := DefaultUIDRange.Validate(); err != nil {
		t.Error(err)
	}
}

func TestUIDPoolGivesEachUIDOnceAndGoesRound(t *testing.T) {
	u := newUIDPool(UIDRange{10, 12})
	var got []int
	for range 3 {
		id, err := u.take()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, id)
	}
	if got[0] != 10 || got[1] != 11 || got[2] != 12 {
		t.Fatalf("took %v", got)
	}
	if _, err := u.take(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("a full range: %v, want ErrUnavailable", err)
	}
	u.put(10)
	u.put(11)
	// Round the range: 10 (the oldest freed) before 11, never a taken one.
	if id, _ := u.take(); id != 10 {
		t.Errorf("after freeing 10 and 11: took %d, want 10", id)
	}
	if u.mark(12) {
		t.Error("mark of a taken uid succeeded")
	}
	if u.mark(9) || u.mark(13) {
		t.Error("mark outside the range succeeded")
	}
	if !u.mark(11) || u.inUse() != 3 {
		t.Errorf("mark of a free uid: in use %d", u.inUse())
	}
}

func TestUIDRangeMustBeNoOnesIDs(t *testing.T) {
	etc := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("passwd", "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n# comment\n\nbroken\n")
	write("group", "root:x:0:\nvms:x:200500:\n")
	write("subuid", "alice:100000:65536\n")
	for _, tc := range []struct {
		r   UIDRange
		err string
	}{
		{UIDRange{1900000000, 1900065535}, ""},
		{UIDRange{500, 999}, ""},
		{UIDRange{1000, 1000}, "alice"},
		{UIDRange{200000, 200600}, "vms"},
		{UIDRange{165535, 170000}, "subordinate ids 100000-165535"},
		{UIDRange{90000, 100000}, "subordinate"},
		{UIDRange{165536, 170000}, ""},
	} {
		err := checkUIDsUnused(tc.r, etc)
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%v: %v, want %q", tc.r, err, tc.err)
		}
	}
}

// A jail directory under which the host sees a mount is never removed:
// removing it would remove what is mounted there.
func TestRemoveJailDirRefusesMountedDirectories(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: mounting needs root")
	}
	dir := t.TempDir()
	target := filepath.Join(dir, "root", "cas")
	if err := os.MkdirAll(target, 0o755); err != nil {
		t.Fatal(err)
	}
	precious := t.TempDir()
	if err := os.WriteFile(filepath.Join(precious, "chunk"), []byte("x"), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := mountBind(precious, target); err != nil {
		t.Skipf("skipping: bind mount: %v", err)
	}
	err := removeJailDir(dir)
	unmount(target)
	if err == nil || !strings.Contains(err.Error(), "mounted") {
		t.Errorf("removeJailDir over a mount: %v", err)
	}
	if _, err := os.Stat(filepath.Join(precious, "chunk")); err != nil {
		t.Errorf("the mounted directory's file: %v", err)
	}
	if err := removeJailDir(dir); err != nil {
		t.Errorf("after the unmount: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("jail directory: %v", err)
	}
}
