package rootfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

type cpioEntry struct {
	h    Header
	data string
}

func writeArchive(t testing.TB, entries []cpioEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for _, e := range entries {
		h := e.h
		h.Size = uint32(len(e.data))
		if err := w.WriteHeader(&h); err != nil {
			t.Fatalf("WriteHeader(%s): %v", h.Name, err)
		}
		if _, err := io.WriteString(w, e.data); err != nil {
			t.Fatalf("Write(%s): %v", h.Name, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func readArchive(b []byte) ([]cpioEntry, error) {
	r := NewReader(bytes.NewReader(b))
	var out []cpioEntry
	for {
		h, err := r.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		data, err := io.ReadAll(r)
		if err != nil {
			return out, fmt.Errorf("%s: %w", h.Name, err)
		}
		out = append(out, cpioEntry{*h, string(data)})
	}
}

var sampleEntries = []cpioEntry{
	{Header{Name: "bin", Mode: TypeDir | 0o755}, ""},
	{Header{Name: "bin/empty", Mode: TypeReg | 0o644, ModTime: 1700000000}, ""},
	{Header{Name: "bin/a", Mode: TypeReg | 0o755, UID: 1000, GID: 100}, "x"},
	{Header{Name: "bin/abc", Mode: TypeReg | 0o755}, "abc"},
	{Header{Name: "bin/four", Mode: TypeReg | 0o600}, "four"},
	{Header{Name: "bin/five5", Mode: TypeReg | 0o600}, "five5"},
	{Header{Name: "bin/sh", Mode: TypeSymlink | 0o777}, "/bin/busybox"},
	{Header{Name: "dev/console", Mode: TypeChar | 0o600, RDevMajor: 5, RDevMinor: 1}, ""},
}

func TestCPIORoundTrip(t *testing.T) {
	got, err := readArchive(writeArchive(t, sampleEntries))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(sampleEntries) {
		t.Fatalf("read %d entries, wrote %d", len(got), len(sampleEntries))
	}
	inos := map[uint32]bool{}
	for i, e := range got {
		want := sampleEntries[i]
		want.h.Size = uint32(len(want.data))
		want.h.Ino = e.h.Ino // assigned by the writer; checked below
		want.h.NLink = 1
		if want.h.Mode&TypeMask == TypeDir {
			want.h.NLink = 2
		}
		if !reflect.DeepEqual(e, want) {
			t.Errorf("entry %d:\n got %+v\nwant %+v", i, e, want)
		}
		if e.h.Ino == 0 || inos[e.h.Ino] {
			t.Errorf("%s: inode %d is zero or shared", e.h.Name, e.h.Ino)
		}
		inos[e.h.Ino] = true
	}
}

func TestCPIOHeaderFields(t *testing.T) {
	b := writeArchive(t, []cpioEntry{{Header{Name: "init", Mode: TypeReg | 0o755, ModTime: 0x5f5e100, UID: 0}, "hello"}})
	want := "070701" +
		"00000001" + // ino
		"000081ed" + // mode: regular, 0755
		"00000000" + "00000000" + // uid, gid
		"00000001" + // nlink
		"05f5e100" + // mtime
		"00000005" + // filesize
		"00000000" + "00000000" + "00000000" + "00000000" + // dev, rdev
		"00000005" + // namesize: "init" and its NUL
		"00000000" + // check
		"init\x00" + "\x00" + // 110+5 = 115, padded to 116
		"hello" + "\x00\x00\x00" // 121, padded to 124
	if got := string(b[:len(want)]); got != want {
		t.Fatalf("entry bytes\n got %q\nwant %q", got, want)
	}
	trailer := string(b[len(want):])
	if !strings.HasPrefix(trailer, "070701") || !strings.Contains(trailer, "TRAILER!!!\x00") {
		t.Fatalf("no trailer after the entry: %q", trailer)
	}
	if len(b)%4 != 0 {
		t.Fatalf("archive length %d is not a multiple of 4", len(b))
	}
}

// TestCPIOPadding writes every combination of name and data length modulo 4
// and checks that each header starts 4-aligned, as the kernel requires.
func TestCPIOPadding(t *testing.T) {
	var entries []cpioEntry
	for n := 1; n <= 8; n++ {
		for d := 0; d <= 5; d++ {
			entries = append(entries, cpioEntry{
				Header{Name: strings.Repeat("n", n) + fmt.Sprint(d), Mode: TypeReg | 0o644},
				strings.Repeat("d", d),
			})
		}
	}
	b := writeArchive(t, entries)
	for off := 0; off < len(b); {
		i := bytes.Index(b[off:], []byte("070701"))
		if i < 0 {
			break
		}
		if (off+i)%4 != 0 {
			t.Fatalf("header at offset %d is not 4-aligned", off+i)
		}
		off += i + cpioHeaderLen
	}
	got, err := readArchive(b)
	if err != nil || len(got) != len(entries) {
		t.Fatalf("read back %d entries, %v", len(got), err)
	}
	for i := range got {
		if got[i].h.Name != entries[i].h.Name || got[i].data != entries[i].data {
			t.Errorf("entry %d: got %q %q", i, got[i].h.Name, got[i].data)
		}
	}
}

func TestCPIOWriterErrors(t *testing.T) {
	w := NewWriter(io.Discard)
	if err := w.WriteHeader(&Header{Name: ""}); err == nil {
		t.Error("empty name accepted")
	}
	if err := w.WriteHeader(&Header{Name: "a\x00b"}); err == nil {
		t.Error("NUL in name accepted")
	}
	if err := w.WriteHeader(&Header{Name: strings.Repeat("x", cpioMaxName)}); err == nil {
		t.Error("name longer than PATH_MAX accepted")
	}
	if err := w.WriteHeader(&Header{Name: "f", Mode: TypeReg, Size: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("abc")); !errors.Is(err, ErrWriteTooLong) {
		t.Errorf("overlong write: %v", err)
	}
	if _, err := w.Write([]byte("a")); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteHeader(&Header{Name: "g"}); err == nil || !strings.Contains(err.Error(), "1 bytes of the previous entry missing") {
		t.Errorf("short entry: %v", err)
	}
}

func TestCPIOReaderErrors(t *testing.T) {
	good := writeArchive(t, sampleEntries)
	hugeName := bytes.Clone(good)
	copy(hugeName[6+8*11:], "00100000")
	notHex := bytes.Clone(good)
	copy(notHex[6:], "0000000g")
	noNUL := writeArchive(t, []cpioEntry{{Header{Name: "abc", Mode: TypeReg}, ""}})
	noNUL[cpioHeaderLen+3] = 'x'
	tests := []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "unexpected EOF"},
		{"old binary format", []byte("\xc7\x71" + strings.Repeat("\x00", 200)), "bad magic"},
		{"odc format", []byte("070707" + strings.Repeat("0", 200)), "bad magic"},
		{"truncated header", good[:50], "unexpected EOF"},
		{"truncated data", good[:len(good)-200], "unexpected EOF"},
		{"name size", hugeName, "name size 1048576"},
		{"not hex", notHex, "is not hex"},
		{"name not terminated", noNUL, "not NUL-terminated"},
	}
	for _, tt := range tests {
		_, err := readArchive(tt.b)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want %q", tt.name, err, tt.want)
		}
	}
}

// TestCPIOReadableByGNUCpio checks the archive against another
// implementation: GNU cpio lists and extracts it.
func TestCPIOReadableByGNUCpio(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio not installed")
	}
	entries := sampleEntries
	if os.Geteuid() != 0 {
		entries = entries[:len(entries)-1] // extracting a device node needs root
	}
	b := writeArchive(t, entries)
	cmd := exec.Command("cpio", "-it", "--quiet")
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -it: %v", err)
	}
	var want []string
	for _, e := range entries {
		want = append(want, e.h.Name)
	}
	if got := strings.Fields(string(out)); !reflect.DeepEqual(got, want) {
		t.Fatalf("cpio -it listed %q, want %q", got, want)
	}

	dir := t.TempDir()
	cmd = exec.Command("cpio", "-idm", "--quiet", "--no-absolute-filenames")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(b)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -id: %v: %s", err, out)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "bin/five5")); err != nil || string(got) != "five5" {
		t.Errorf("bin/five5 = %q, %v", got, err)
	}
	if got, err := os.Readlink(filepath.Join(dir, "bin/sh")); err != nil || got != "/bin/busybox" {
		t.Errorf("bin/sh -> %q, %v", got, err)
	}
	if st, err := os.Stat(filepath.Join(dir, "bin/a")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("bin/a mode %v, %v", st.Mode(), err)
	}
	if os.Geteuid() == 0 {
		if st, err := os.Stat(filepath.Join(dir, "dev/console")); err != nil || st.Mode()&os.ModeCharDevice == 0 {
			t.Errorf("dev/console: %v, %v", st, err)
		}
	}
}

func FuzzCPIOReader(f *testing.F) {
	f.Add(writeArchive(f, sampleEntries))
	f.Add(writeArchive(f, nil))
	f.Add([]byte("070702" + strings.Repeat("0", 104)))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = readArchive(b) // must not panic, loop or allocate beyond the input
	})
}

func FuzzCPIORoundTrip(f *testing.F) {
	f.Add("bin/sh", uint32(TypeSymlink|0o777), []byte("/bin/busybox"))
	f.Add("x", uint32(TypeReg), []byte{})
	f.Fuzz(func(t *testing.T, name string, mode uint32, data []byte) {
		var buf bytes.Buffer
		w := NewWriter(&buf)
		if err := w.WriteHeader(&Header{Name: name, Mode: mode, Size: uint32(len(data))}); err != nil {
			return // rejected names are fine; accepted ones must round-trip
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		got, err := readArchive(buf.Bytes())
		if err != nil || len(got) != 1 || got[0].h.Name != name || got[0].h.Mode != mode || got[0].data != string(data) {
			t.Fatalf("round trip of %q: %+v, %v", name, got, err)
		}
	})
}
