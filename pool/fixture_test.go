package pool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/voltvmm/volt/guest/probe"
	pc "github.com/voltvmm/volt/pool/client"
	"github.com/voltvmm/volt/vmm/kvm/kvmtest"
)

var (
	fixtureOnce          sync.Once
	fixtureVMM, fixtureK string
	fixturePool          string // bin: voltpool built from this tree
	fixtureErr           error
	fixtureDir           string

	toolsOnce                      sync.Once
	fixtureSnapTool, fixtureJailer string // volt-snapshot, volt-jailer built from this tree
	toolsErr                       error
)

func TestMain(m *testing.M) {
	if h := os.Getenv(helperEnv); h != "" {
		os.Exit(runHelper(h))
	}
	code := m.Run()
	if fixtureDir != "" {
		os.RemoveAll(fixtureDir)
	}
	os.Exit(code)
}

func repoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// fixture returns volt-vmm (built from this tree, or $VOLT_VMM), the probe
// guest and voltpool (built from this tree); it needs /dev/kvm.
func fixture(t testing.TB) (vmmBin, kernel, voltpool string) {
	t.Helper()
	kvmtest.Require(t)
	fixtureOnce.Do(func() {
		root, err := repoRoot()
		if err != nil {
			fixtureErr = err
			return
		}
		if fixtureDir, err = os.MkdirTemp("", "voltpool-test-"); err != nil {
			fixtureErr = err
			return
		}
		build := func(out, pkg string) error {
			cmd := exec.Command("go", "build", "-o", out, pkg)
			cmd.Dir = root
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if b, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("build %s: %v\n%s", pkg, err, b)
			}
			return nil
		}
		if env := os.Getenv("VOLT_VMM"); env != "" {
			fixtureVMM = env
		} else {
			fixtureVMM = filepath.Join(fixtureDir, "volt-vmm")
			if fixtureErr = build(fixtureVMM, "./cmd/volt-vmm"); fixtureErr != nil {
				return
			}
		}
		fixturePool = filepath.Join(fixtureDir, "voltpool")
		if fixtureErr = build(fixturePool, "./cmd/voltpool"); fixtureErr != nil {
			return
		}
		fixtureK = filepath.Join(root, "build", "guest", "probe.elf")
		if env := os.Getenv(probe.EnvProbe); env != "" {
			fixtureK = env
		} else if _, err := os.Stat(fixtureK); err != nil {
			fixtureK, fixtureErr = probe.Path(context.Background(), fixtureDir)
		}
	})
	if fixtureErr != nil {
		t.Fatal(fixtureErr)
	}
	return fixtureVMM, fixtureK, fixturePool
}

// tools returns volt-snapshot and volt-jailer, built from this tree beside
// volt-vmm (the CAS store and the jail need them).
func tools(t testing.TB) (snapTool, jailer string) {
	t.Helper()
	fixture(t)
	toolsOnce.Do(func() {
		root, err := repoRoot()
		if err != nil {
			toolsErr = err
			return
		}
		for _, b := range []struct {
			out *string
			pkg string
		}{{&fixtureSnapTool, "./cmd/volt-snapshot"}, {&fixtureJailer, "./cmd/volt-jailer"}} {
			*b.out = filepath.Join(fixtureDir, filepath.Base(b.pkg))
			cmd := exec.Command("go", "build", "-o", *b.out, b.pkg)
			cmd.Dir = root
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				toolsErr = fmt.Errorf("build %s: %v\n%s", b.pkg, err, out)
				return
			}
		}
	})
	if toolsErr != nil {
		t.Fatal(toolsErr)
	}
	return fixtureSnapTool, fixtureJailer
}

// shortDir returns a fresh directory with a short path (socket paths are
// bounded to 107 bytes) that the test removes.
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "vp")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(d, 0o755)
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// served is a pool serving its API on a socket, in this process.
type served struct {
	pool   *Pool
	client *pc.Client
	socket string
	state  string
	stop   func() error
}

// serve starts a pool (cfg's StateDir and VMMBin filled in when empty) and
// its API; the test stops it.
func serve(t testing.TB, cfg Config) *served {
	t.Helper()
	vmmBin, _, _ := fixture(t)
	dir := shortDir(t)
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join(dir, "s")
	}
	if cfg.VMMBin == "" {
		cfg.VMMBin = vmmBin
	}
	s := &served{socket: filepath.Join(dir, "pool.sock"), state: cfg.StateDir}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan *Pool, 1)
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, cfg, ServerConfig{Socket: s.socket, Drain: 0, Ready: func(p *Pool) { ready <- p }})
	}()
	select {
	case s.pool = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("serve: %v", err)
	}
	s.client = pc.New(s.socket)
	var once sync.Once
	var stopErr error
	s.stop = func() error {
		once.Do(func() {
			cancel()
			stopErr = <-done
			s.client.Close()
		})
		return stopErr
	}
	t.Cleanup(func() {
		if err := s.stop(); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		assertNoVMMs(t, cfg.StateDir)
	})
	return s
}

// probeTemplate creates a template that boots the probe guest.
func (s *served) probeTemplate(t testing.TB, name string, warm int) pc.Template {
	t.Helper()
	_, kernel, _ := fixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tpl, err := s.client.CreateTemplate(ctx, pc.TemplateSpec{Name: name, Kernel: kernel, MemoryMiB: 64, CPUs: 1, Warm: warm})
	if err != nil {
		t.Fatalf("create template: %v", err)
	}
	return tpl
}

// waitFor polls cond until it holds or 30 s pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *served) status(t testing.TB, name string) pc.TemplateStatus {
	t.Helper()
	st, err := s.client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, ts := range st.Templates {
		if ts.Template == name {
			return ts
		}
	}
	t.Fatalf("no template %s in status %+v", name, st)
	return pc.TemplateStatus{}
}

func (s *served) waitWarm(t testing.TB, name string, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d warm VMs of %s", n, name), func() bool {
		ts := s.status(t, name)
		return ts.Warm == n && ts.Starting == 0
	})
}

// vmmsUnder lists the pids of volt-vmm processes whose API socket lies
// under dir.
func vmmsUnder(dir string) []int { return strayVMMs(dir) }

func assertNoVMMs(t testing.TB, stateDir string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids := vmmsUnder(stateDir)
		ents, _ := os.ReadDir(filepath.Join(stateDir, "vms"))
		if len(pids) == 0 && len(ents) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("left behind: VMMs %v, VM directories %d", pids, len(ents))
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func alive(pid int) bool {
	_, err := procStartTime(pid)
	if err != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie (Z) has exited.
	i := strings.LastIndexByte(string(b), ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z'
}

// reaped reports whether pid is gone from /proc: all its threads have
// exited and its parent has collected it.
func reaped(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return errors.Is(err, os.ErrNotExist)
}

func statusCode(err error) int { return pc.StatusOf(err) }

var errNoVM = errors.New("no VM")
