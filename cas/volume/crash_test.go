package volume

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/voltvmm/volt/cas"
)

const childEnv = "VOLT_VOLUME_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild())
	}
	code := m.Run()
	if benchDir != "" {
		os.RemoveAll(benchDir)
	}
	os.Exit(code)
}

// runChild opens the volume, writes A and flushes, writes B without
// flushing, then reports and waits to be killed.
func runChild() int {
	ctx := context.Background()
	s, err := cas.Open(os.Getenv("VOLT_STORE"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	v, err := Open(ctx, s, os.Getenv("VOLT_VOLUME"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	offA, _ := strconv.ParseInt(os.Getenv("VOLT_OFF_A"), 10, 64)
	offB, _ := strconv.ParseInt(os.Getenv("VOLT_OFF_B"), 10, 64)
	if _, err := v.WriteAt(bytes.Repeat([]byte{'A'}, 8192), offA); err != nil {
		return 1
	}
	if err := v.Flush(); err != nil {
		return 1
	}
	if _, err := v.WriteAt(bytes.Repeat([]byte{'B'}, 8192), offB); err != nil {
		return 1
	}
	fmt.Println("ready")
	os.Stdin.Read(make([]byte, 1))
	return 0
}

// TestKill9KeepsFlushedWrites kills a process using a volume: what it
// flushed survives, what it did not is gone (reads the base), the volume
// opens again at once (its lock and lease died with the process), and the
// overlay space of the unflushed write is reclaimed.
func TestKill9KeepsFlushedWrites(t *testing.T) {
	const chunk = 64 * kib
	for _, bs := range blockSizes {
		t.Run(bs.name, func(t *testing.T) {
			f := newFixture(t, randomBytes(20, 8*chunk), chunk)
			dir := filepath.Join(t.TempDir(), "vol")
			ctx := context.Background()
			if err := Create(ctx, f.store, dir, f.base, Options{BlockSize: bs.size}); err != nil {
				t.Fatal(err)
			}
			offA, offB := int64(chunk), int64(5*chunk)
			exe, _ := os.Executable()
			cmd := exec.Command(exe, "-test.run=^$")
			cmd.Env = append(os.Environ(), childEnv+"=1", "VOLT_STORE="+f.store.Dir(), "VOLT_VOLUME="+dir,
				fmt.Sprintf("VOLT_OFF_A=%d", offA), fmt.Sprintf("VOLT_OFF_B=%d", offB))
			cmd.Stderr = os.Stderr
			stdinR, stdinW, _ := os.Pipe()
			defer stdinW.Close()
			cmd.Stdin = stdinR
			out, _ := cmd.StdoutPipe()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			stdinR.Close()
			ready := make(chan string, 1)
			go func() {
				sc := bufio.NewScanner(out)
				sc.Scan()
				ready <- sc.Text()
			}()
			select {
			case line := <-ready:
				if line != "ready" {
					t.Fatalf("child said %q", line)
				}
			case <-time.After(2 * time.Minute):
				t.Fatal("child did not get ready")
			}
			info, err := ReadInfo(dir)
			if err != nil || !info.InUse {
				t.Fatalf("info while the child runs: %+v, %v", info, err)
			}
			cmd.Process.Signal(syscall.SIGKILL)
			cmd.Wait()

			v, err := Open(ctx, f.store, dir)
			if err != nil {
				t.Fatalf("reopen after kill -9: %v", err)
			}
			defer v.Close()
			want := append([]byte(nil), f.data...)
			copy(want[offA:], bytes.Repeat([]byte{'A'}, 8192))
			expectContent(t, v, want, "after kill -9")
			if got := overlayDisk(t, dir); got > max(8192, v.BlockSize()) {
				t.Errorf("overlay holds %d bytes after reopen; the unflushed write was not reclaimed", got)
			}
		})
	}
}
