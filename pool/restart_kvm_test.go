package pool

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pc "github.com/voltvmm/volt/pool/client"
	"github.com/voltvmm/volt/vmm/api/client"
)

// daemon is voltpool serve as a separate process, to be killed.
type poolDaemon struct {
	cmd    *exec.Cmd
	log    *os.File
	client *pc.Client
}

func startDaemon(t *testing.T, voltpool, vmm, socket, state string, extra ...string) *poolDaemon {
	t.Helper()
	log, err := os.OpenFile(filepath.Join(filepath.Dir(socket), "daemon.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"serve", "--socket", socket, "--state-dir", state, "--vmm", vmm, "--drain-timeout", "0s"}, extra...)
	cmd := exec.Command(voltpool, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &poolDaemon{cmd: cmd, log: log, client: pc.New(socket)}
	waitFor(t, "the daemon to answer", func() bool {
		_, err := d.client.Status(context.Background())
		return err == nil
	})
	return d
}

func (d *poolDaemon) kill(t *testing.T) {
	t.Helper()
	d.cmd.Process.Kill()
	d.cmd.Wait()
	d.client.Close()
	d.log.Close()
}

func TestDaemonKilledAndRestartedKeepsLiveLeases(t *testing.T) {
	vmm, kernel, voltpool := fixture(t)
	dir := shortDir(t)
	socket, state := filepath.Join(dir, "pool.sock"), filepath.Join(dir, "s")
	ctx := context.Background()

	d := startDaemon(t, voltpool, vmm, socket, state)
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			d.cmd.Process.Signal(os.Interrupt)
			d.cmd.Wait()
		}
		assertNoVMMs(t, state)
	})
	if _, err := d.client.CreateTemplate(ctx, pc.TemplateSpec{Name: "probe", Kernel: kernel, MemoryMiB: 64, Warm: 2}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "2 warm", func() bool {
		st, err := d.client.Status(ctx)
		return err == nil && len(st.Templates) == 1 && st.Templates[0].Warm == 2
	})
	long, err := d.client.Acquire(ctx, "probe", 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	short, err := d.client.Acquire(ctx, "probe", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "2 warm again", func() bool {
		st, err := d.client.Status(ctx)
		return err == nil && st.Templates[0].Warm == 2 && st.Templates[0].Starting == 0
	})
	var oldWarm []int
	vms := vmmsUnder(state)
	for _, pid := range vms {
		if pid != long.PID && pid != short.PID {
			oldWarm = append(oldWarm, pid)
		}
	}
	if len(oldWarm) != 2 {
		t.Fatalf("VMMs %v: want 2 warm beside the leases %d, %d", vms, long.PID, short.PID)
	}

	d.kill(t)
	// The VMMs outlive their daemon (a lease must survive a restart).
	if !alive(long.PID) || !alive(oldWarm[0]) {
		t.Fatal("the VMMs died with the daemon")
	}
	// The short lease expires while no daemon runs.
	time.Sleep(1500 * time.Millisecond)

	d = startDaemon(t, voltpool, vmm, socket, state)
	got, err := d.client.Lease(ctx, long.ID)
	if err != nil {
		t.Fatalf("live lease after restart: %v", err)
	}
	if got.PID != long.PID || !got.ExpiresAt.Equal(long.ExpiresAt) || got.VsockUDS != long.VsockUDS || got.APISock != long.APISock {
		t.Errorf("lease after restart %+v, before %+v", got, long)
	}
	info, err := client.New(long.APISock).Describe(ctx)
	if err != nil || info.State != "Running" {
		t.Errorf("the leased VMM after restart: %+v %v", info, err)
	}
	_, err = d.client.Lease(ctx, short.ID)
	if statusCode(err) != http.StatusGone || !strings.Contains(err.Error(), "expired") {
		t.Errorf("lease that expired meanwhile: %v, want 410 saying expired", err)
	}
	for _, pid := range append(oldWarm, short.PID) {
		waitFor(t, "the old daemon's warm and expired VMMs to be killed", func() bool { return !alive(pid) })
	}
	if _, err := os.Stat(filepath.Dir(short.APISock)); !os.IsNotExist(err) {
		t.Errorf("directory of the expired lease: %v", err)
	}
	// The template survived; the new daemon warms its own.
	waitFor(t, "2 warm under the new daemon", func() bool {
		st, err := d.client.Status(ctx)
		return err == nil && len(st.Templates) == 1 && st.Templates[0].Warm == 2 && st.Templates[0].Leased == 1
	})
	// The adopted lease is watched: its VMM's death is noticed.
	if err := d.client.Release(ctx, long.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the adopted VMM to stop", func() bool { return !alive(long.PID) })
	if st, _ := d.client.Status(ctx); st.Templates[0].Leased != 0 {
		t.Errorf("status after release %+v", st)
	}
}

// A daemon killed while it had VMMs without records (between start and
// record) or in a template boot leaves them to the next, which kills them.
func TestRestartKillsStrayVMMs(t *testing.T) {
	vmm, _, voltpool := fixture(t)
	dir := shortDir(t)
	socket, state := filepath.Join(dir, "pool.sock"), filepath.Join(dir, "s")
	stray := filepath.Join(state, "vms", "0000000000000000")
	if err := os.MkdirAll(stray, 0o750); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(vmm, "--api-sock", filepath.Join(stray, "api.sock"), "--console", "none")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	waitFor(t, "the stray VMM's socket", func() bool {
		_, err := os.Stat(filepath.Join(stray, "api.sock"))
		return err == nil
	})
	d := startDaemon(t, voltpool, vmm, socket, state)
	defer func() {
		d.cmd.Process.Signal(os.Interrupt)
		d.cmd.Wait()
	}()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the stray VMM was not killed")
	}
	if _, err := os.Stat(stray); !os.IsNotExist(err) {
		t.Errorf("stray directory: %v", err)
	}
}
