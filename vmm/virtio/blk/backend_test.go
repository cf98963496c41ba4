package blk

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestOpenFileRefusesSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	if fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0); err == nil {
		unix.Bind(fd, &unix.SockaddrUnix{Name: sock})
		defer unix.Close(fd)
	}
	tests := []struct {
		name, path string
		readOnly   bool
		want       string
	}{
		{"fifo read-write", fifo, false, "named pipe"},
		{"fifo read-only", fifo, true, "named pipe"},
		{"directory", dir, false, "directory"},
		{"directory read-only", dir, true, "directory"},
		{"character device", "/dev/null", false, "character device"},
		{"socket", sock, false, "no such device"},
		{"missing", filepath.Join(dir, "nope"), false, "no such file"},
		{"empty path", "", false, "no path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				f, err := OpenFile(tt.path, FileOptions{ReadOnly: tt.readOnly, NoLock: true})
				if f != nil {
					f.Close()
				}
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("OpenFile(%s) = %v, want an error mentioning %q", tt.path, err, tt.want)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("OpenFile(%s) hung", tt.path)
			}
		})
	}
}

func TestOpenFileLocks(t *testing.T) {
	path := diskImage(t, t.TempDir(), 4096)
	a, err := OpenFile(path, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenFile(path, FileOptions{}); err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Fatalf("second read-write open: %v", err)
	}
	if _, err := OpenFile(path, FileOptions{ReadOnly: true}); err == nil {
		t.Fatal("read-only open of a disk opened read-write succeeded")
	}
	a.Close()
	r1, err := OpenFile(path, FileOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	r2, err := OpenFile(path, FileOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("two read-only opens: %v", err)
	}
	r2.Close()
	if _, err := OpenFile(path, FileOptions{}); err == nil {
		t.Fatal("read-write open of a disk opened read-only succeeded")
	}
	if f, err := OpenFile(path, FileOptions{NoLock: true}); err != nil {
		t.Fatalf("NoLock: %v", err)
	} else {
		f.Close()
	}
}

func TestFileVectoredIO(t *testing.T) {
	path := diskImage(t, t.TempDir(), 64<<10)
	f, err := OpenFile(path, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := bytes.Repeat([]byte{0xab}, 3000)
	if n, err := f.WriteVAt([][]byte{want[:1000], nil, want[1000:]}, 5000); n != 3000 || err != nil {
		t.Fatalf("WriteVAt = %d, %v", n, err)
	}
	got := make([]byte, 3000)
	if n, err := f.ReadVAt([][]byte{got[:7], got[7:]}, 5000); n != 3000 || err != nil || !bytes.Equal(got, want) {
		t.Fatalf("ReadVAt = %d, %v", n, err)
	}
	// Past the end of the file: an error, not a short success.
	if _, err := f.ReadAt(make([]byte, 512), 64<<10); err == nil {
		t.Fatal("read past the end succeeded")
	}
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	ro, err := OpenFile(path, FileOptions{ReadOnly: true, NoLock: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if _, err := ro.WriteAt(make([]byte, 512), 0); err == nil {
		t.Fatal("write to a read-only file succeeded")
	}
}

func TestDirectIO(t *testing.T) {
	if _, err := OpenFile(diskImage(t, tmpfsDir(t), 4096), FileOptions{Direct: true}); err == nil {
		t.Log("O_DIRECT open on tmpfs succeeded (newer kernels support it)")
	} else if !strings.Contains(err.Error(), "O_DIRECT") {
		t.Fatalf("O_DIRECT on tmpfs: %v", err)
	}
	path := diskImage(t, t.TempDir(), 1<<20)
	f, err := OpenFile(path, FileOptions{Direct: true})
	if err != nil {
		t.Skipf("O_DIRECT not usable on %s: %v", filepath.Dir(path), err)
	}
	defer f.Close()
	if f.align == 0 || f.align&(f.align-1) != 0 {
		t.Fatalf("alignment %d", f.align)
	}
	// Unaligned Go buffers, unaligned offsets and lengths: all go through
	// the bounce buffer and still land exactly.
	tests := []struct {
		off, n int64
	}{{0, 4096}, {512, 512}, {4096 + 100, 1000}, {7, 3}, {1<<20 - 512, 512}}
	for _, tt := range tests {
		want := bytes.Repeat([]byte{byte(tt.off)}, int(tt.n))
		if n, err := f.WriteAt(want, tt.off); err != nil || int64(n) != tt.n {
			t.Fatalf("WriteAt(%d, %d) = %d, %v", tt.off, tt.n, n, err)
		}
		got := make([]byte, tt.n)
		if n, err := f.ReadAt(got, tt.off); err != nil || int64(n) != tt.n || !bytes.Equal(got, want) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v (match %v)", tt.off, tt.n, n, err, bytes.Equal(got, want))
		}
	}
	// The neighbours of partial writes are kept (read-modify-write):
	// around [4196, 5196) the image's pattern, around [7, 10) the zeroes
	// of the first write.
	disk, _ := os.ReadFile(path)
	pattern := func(i int) byte { return byte(i/SectorSize) ^ byte(i) }
	if disk[4195] != pattern(4195) || disk[5196] != pattern(5196) || disk[6] != 0 || disk[10] != 0 || disk[7] != 7 {
		t.Fatalf("partial O_DIRECT writes clobbered their neighbours: %#x %#x %#x %#x", disk[4195], disk[5196], disk[6], disk[10])
	}
	if err := f.WriteZeroes(8192, 4096, false); err != nil {
		t.Fatal(err)
	}
	disk, _ = os.ReadFile(path)
	if !bytes.Equal(disk[8192:12288], make([]byte, 4096)) {
		t.Fatal("WriteZeroes on an O_DIRECT file left data")
	}
}

// A loop device exercises the block-device paths (BLKGETSIZE64, discard
// and zeroing through fallocate). It needs root and losetup.
func TestBlockDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: loop devices need root")
	}
	losetup, err := exec.LookPath("losetup")
	if err != nil {
		t.Skip("skipping: no losetup")
	}
	path := diskImage(t, t.TempDir(), 4<<20)
	out, err := exec.Command(losetup, "--find", "--show", path).CombinedOutput()
	if err != nil {
		t.Skipf("skipping: losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	defer exec.Command(losetup, "--detach", dev).Run()
	f, err := OpenFile(dev, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !f.block || f.Size() != 4<<20 {
		t.Fatalf("block %v size %d", f.block, f.Size())
	}
	want := bytes.Repeat([]byte("loop"), 1024)
	if _, err := f.WriteAt(want, 8192); err != nil {
		t.Fatal(err)
	}
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if _, err := f.ReadAt(got, 8192); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back: %v", err)
	}
	if err := f.WriteZeroes(8192, 4096, false); err != nil {
		t.Fatalf("WriteZeroes: %v", err)
	}
	f.ReadAt(got, 8192)
	if !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatal("WriteZeroes on a block device left data")
	}
	if err := f.Discard(0, 4096); err != nil {
		t.Fatalf("Discard: %v", err)
	}
	d, err := New(Config{Backend: f})
	if err != nil || d.Capacity() != 8192 {
		t.Fatalf("device on a block device: capacity %d, %v", d.Capacity(), err)
	}
}
