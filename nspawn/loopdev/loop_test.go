package loopdev

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func requireLoop(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("no loop devices: %v", err)
	}
}

func backingFile(t *testing.T, size int64) *os.File {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(t.TempDir(), "img"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return f
}

func backingOf(n int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/sys/block/loop%d/loop/backing_file", n))
	return strings.TrimSpace(string(b))
}

func TestAttachReadsAndWritesTheFileAndClearsOnClose(t *testing.T) {
	requireLoop(t)
	f := backingFile(t, 4<<20)
	d, err := Attach(f, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := backingOf(d.Number); got != f.Name() {
		t.Fatalf("loop%d backs %q, want %q", d.Number, got, f.Name())
	}
	bs, _ := os.ReadFile(fmt.Sprintf("/sys/block/loop%d/queue/logical_block_size", d.Number))
	if strings.TrimSpace(string(bs)) != "4096" {
		t.Errorf("logical block size %q, want 4096", bs)
	}
	buf := bytes.Repeat([]byte{0x5a}, 4096)
	blk, err := os.OpenFile(d.Path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := blk.WriteAt(buf, 8192); err != nil {
		t.Fatal(err)
	}
	if err := blk.Sync(); err != nil {
		t.Fatal(err)
	}
	blk.Close()
	got := make([]byte, 4096)
	if _, err := f.ReadAt(got, 8192); err != nil || !bytes.Equal(got, buf) {
		t.Fatalf("the backing file does not hold the device's write: %v", err)
	}
	n := d.Number
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	// Autoclear runs when the last opener is gone.
	deadline := time.Now().Add(5 * time.Second)
	for backingOf(n) != "" {
		if time.Now().After(deadline) {
			t.Fatalf("loop%d still bound after its last close", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestReadOnlyDeviceRefusesWrites(t *testing.T) {
	requireLoop(t)
	f := backingFile(t, 1<<20)
	d, err := Attach(f, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ro, _ := os.ReadFile(fmt.Sprintf("/sys/block/loop%d/ro", d.Number))
	if strings.TrimSpace(string(ro)) != "1" {
		t.Errorf("/sys/block/loop%d/ro = %q, want 1", d.Number, ro)
	}
	blk, err := os.OpenFile(d.Path, os.O_RDWR, 0)
	if err != nil {
		return // refused at open: fine too
	}
	defer blk.Close()
	_, err = blk.WriteAt(make([]byte, 4096), 0)
	if err == nil {
		err = blk.Sync()
	}
	if err == nil {
		t.Fatal("a write to a read-only loop device succeeded")
	}
}

func TestNodeMadeWhenDevIsMissingIt(t *testing.T) {
	requireLoop(t)
	want, err := devNumber(0)
	if err != nil {
		t.Fatal(err)
	}
	emptyDev, dir := t.TempDir(), t.TempDir()
	p := filepath.Join(dir, "loop0")
	if err := os.WriteFile(p, nil, 0o600); err != nil { // a wrong file in the way
		t.Fatal(err)
	}
	got, err := node(0, emptyDev, dir)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(got, &st); err != nil || got != p || st.Rdev != want || st.Mode&unix.S_IFMT != unix.S_IFBLK {
		t.Fatalf("node %s: %v, rdev %x want %x", got, err, st.Rdev, want)
	}
	if _, err := node(0, emptyDev, ""); err == nil {
		t.Error("no node and no directory to make one: no error")
	}
	if got, err := node(0, "/dev", dir); err != nil || got != "/dev/loop0" {
		t.Errorf("with /dev/loop0 present: %q, %v", got, err)
	}
}

func TestAttachRejectsBadBlockSize(t *testing.T) {
	for _, bs := range []uint32{100, 8192, 3000} {
		if _, err := Attach(os.Stdin, Options{BlockSize: bs}); err == nil || !strings.Contains(err.Error(), "block size") {
			t.Errorf("block size %d: %v", bs, err)
		}
	}
}
