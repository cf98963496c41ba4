package voltinit

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/voltvmm/volt/guest/marker"
	"golang.org/x/sys/unix"
)

// fakeSystem records calls in order and models children: each has a signal
// it dies of (0: dies at once), and exited ones wait to be reaped.
type fakeSystem struct {
	calls     []string
	files     map[string]string
	exists    map[string]bool
	mounted   map[string]bool
	mountErr  map[string]error
	startErr  error
	sigs      chan os.Signal
	alive     map[int]unix.Signal // pid → signal that kills it
	exited    []int
	nextPID   int
	workloads []int // children to create at Start: their dying signal
}

var _ System = (*fakeSystem)(nil)

func newFake(cmdline string) *fakeSystem {
	return &fakeSystem{
		files: map[string]string{
			"/proc/cmdline":                  cmdline,
			"/proc/meminfo":                  "MemTotal:         500400 kB\n",
			"/sys/devices/system/cpu/online": "0-1\n",
		},
		exists:   map[string]bool{"/sys/firmware/acpi": true},
		mounted:  map[string]bool{},
		mountErr: map[string]error{},
		sigs:     make(chan os.Signal, 16),
		alive:    map[int]unix.Signal{},
		nextPID:  100,
	}
}

func (f *fakeSystem) record(format string, args ...any) {
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

func (f *fakeSystem) Mark(s marker.Stage)        { f.record("mark %s", s) }
func (f *fakeSystem) MkdirAll(path string) error { return nil }
func (f *fakeSystem) Mounted(path string) (bool, error) {
	return f.mounted[path], nil
}
func (f *fakeSystem) Mount(m Mount) error {
	if m.Flags&unix.MS_REMOUNT != 0 {
		f.record("remount %s ro", m.Target)
		return nil
	}
	f.record("mount %s", m.Target)
	return f.mountErr[m.Target]
}
func (f *fakeSystem) Unmount(target string) error { f.record("umount %s", target); return nil }
func (f *fakeSystem) AttachConsole() error        { return nil }
func (f *fakeSystem) ReadFile(path string) ([]byte, error) {
	s, ok := f.files[path]
	if !ok {
		return nil, fs.ErrNotExist
	}
	return []byte(s), nil
}
func (f *fakeSystem) Exists(path string) bool { return f.exists[path] }
func (f *fakeSystem) Sethostname(name string) error {
	f.record("hostname %s", name)
	return nil
}
func (f *fakeSystem) Setdomainname(name string) error {
	f.record("domainname %s", name)
	return nil
}
func (f *fakeSystem) SetupInterface(name string, addr netip.Prefix, gw netip.Addr) error {
	s := "link " + name
	if addr.IsValid() {
		s += " " + addr.String()
	}
	if gw.IsValid() {
		s += " via " + gw.String()
	}
	f.record("%s", s)
	return nil
}
func (f *fakeSystem) Start(argv, env []string) (int, error) {
	f.record("start %s", strings.Join(argv, " "))
	if f.startErr != nil {
		return 0, f.startErr
	}
	first := f.nextPID
	for _, sig := range f.workloads {
		f.alive[f.nextPID] = unix.Signal(sig)
		f.nextPID++
	}
	f.settle()
	return first, nil
}

// settle moves children that die without a signal to the exited list.
func (f *fakeSystem) settle() {
	for pid, sig := range f.alive {
		if sig == 0 {
			delete(f.alive, pid)
			f.exited = append(f.exited, pid)
			f.sigs <- unix.SIGCHLD
		}
	}
}

func (f *fakeSystem) Reap() (int, unix.WaitStatus, error) {
	if len(f.exited) > 0 {
		pid := f.exited[0]
		f.exited = f.exited[1:]
		return pid, unix.WaitStatus(3 << 8), nil // exit status 3
	}
	if len(f.alive) > 0 {
		return 0, 0, nil
	}
	return 0, 0, unix.ECHILD
}

func (f *fakeSystem) Kill(pid int, sig unix.Signal) error {
	f.record("kill %d %s", pid, unix.SignalName(sig))
	for p, dies := range f.alive {
		if dies == sig || sig == unix.SIGKILL {
			f.alive[p] = 0
		}
	}
	f.settle()
	return nil
}
func (f *fakeSystem) Sync() { f.record("sync") }
func (f *fakeSystem) Reboot(cmd int) error {
	switch cmd {
	case unix.LINUX_REBOOT_CMD_CAD_OFF:
		f.record("cad off")
	case unix.LINUX_REBOOT_CMD_POWER_OFF:
		f.record("power off")
	case unix.LINUX_REBOOT_CMD_RESTART:
		f.record("reset")
	default:
		f.record("reboot %#x", cmd)
	}
	return nil
}

var (
	bootCalls = []string{"mount /proc", "mount /sys", "mount /dev", "mount /tmp", "cad off"}
	downCalls = []string{"sync", "umount /tmp", "umount /dev", "umount /sys", "umount /proc", "remount / ro", "sync", "power off"}
)

func seq(parts ...[]string) []string {
	var all []string
	for _, p := range parts {
		all = append(all, p...)
	}
	return all
}

func TestInitSequence(t *testing.T) {
	const (
		exitsAtOnce = 0
		diesOnTerm  = int(unix.SIGTERM)
		stubborn    = int(unix.SIGUSR1) // ignores SIGTERM, so only SIGKILL ends it
	)
	tests := []struct {
		name      string
		cmdline   string
		args      []string
		prepare   func(*fakeSystem)
		wantCalls []string
		wantOut   []string // lines the console must hold
	}{
		{
			name:    "workload exits, a daemon it left gets SIGTERM",
			cmdline: `console=ttyS0 volt.run="sh -c 'exit 3'" volt.ip=10.0.0.2/24 volt.gw=10.0.0.1 volt.hostname=vm1`,
			prepare: func(f *fakeSystem) { f.workloads = []int{exitsAtOnce, diesOnTerm} },
			wantCalls: seq(bootCalls,
				[]string{"hostname vm1", "link lo", "link eth0 10.0.0.2/24 via 10.0.0.1", "mark ready",
					"start sh -c exit 3", "mark workload", "mark shutdown", "kill -1 SIGTERM"},
				downCalls),
			wantOut: []string{"volt-init: ready cpus=2 mem=488", "volt-init: workload exited status=3"},
		},
		{
			name:    "SIGTERM, then SIGKILL for what ignores it",
			cmdline: "volt.run=/app",
			prepare: func(f *fakeSystem) {
				f.workloads = []int{stubborn}
				f.sigs <- unix.SIGTERM
			},
			wantCalls: seq(bootCalls,
				[]string{"link lo", "mark ready", "start /app", "mark workload", "mark shutdown",
					"kill -1 SIGTERM", "kill -1 SIGKILL"},
				downCalls),
			wantOut: []string{"volt-init: terminated: shutting down"},
		},
		{
			name:    "no workload runs the shell",
			prepare: func(f *fakeSystem) { f.exists[DefaultShell] = true; f.workloads = []int{exitsAtOnce} },
			wantCalls: seq(bootCalls,
				[]string{"link lo", "mark ready", "start /bin/sh", "mark workload", "mark shutdown"},
				downCalls),
		},
		{
			name:    "no workload and no shell waits for SIGPWR",
			prepare: func(f *fakeSystem) { f.sigs <- unix.SIGPWR },
			wantCalls: seq(bootCalls,
				[]string{"link lo", "mark ready", "mark shutdown"},
				downCalls),
			wantOut: []string{"volt-init: no volt.run and no /bin/sh: waiting for a shutdown signal"},
		},
		{
			name:    "volt.* arguments from the kernel's argv override the command line",
			cmdline: "volt.run=/a",
			args:    []string{"single", "volt.run=/b", "volt.nope=1"},
			prepare: func(f *fakeSystem) { f.workloads = []int{exitsAtOnce} },
			wantCalls: seq(bootCalls,
				[]string{"link lo", "mark ready", "start /b", "mark workload", "mark shutdown"},
				downCalls),
			wantOut: []string{`volt-init: warning: unknown parameter "volt.nope" ignored`},
		},
		{
			name:    "bad parameter: no ready, no workload, orderly power-off",
			cmdline: "volt.run=/app volt.ip=10.0.0.2",
			wantCalls: seq(bootCalls,
				[]string{"mark shutdown"},
				downCalls),
			wantOut: []string{`volt-init: error: bad volt parameter volt.ip: "10.0.0.2" is not ADDR/PREFIX (e.g. 172.16.0.2/24)`},
		},
		{
			name:    "workload fails to start",
			cmdline: "volt.run=/missing",
			prepare: func(f *fakeSystem) { f.startErr = errors.New("start /missing: no such file or directory") },
			wantCalls: seq(bootCalls,
				[]string{"link lo", "mark ready", "start /missing", "mark shutdown"},
				downCalls),
			wantOut: []string{"volt-init: error: start /missing: no such file or directory"},
		},
		{
			name:    "mounts made before init are left alone",
			cmdline: "volt.run=/app",
			prepare: func(f *fakeSystem) {
				f.mounted["/dev"] = true        // devtmpfs automount
				f.mountErr["/tmp"] = unix.EBUSY // raced by someone else
				f.workloads = []int{exitsAtOnce}
			},
			wantCalls: []string{"mount /proc", "mount /sys", "mount /tmp", "cad off",
				"link lo", "mark ready", "start /app", "mark workload", "mark shutdown",
				"sync", "umount /sys", "umount /proc", "remount / ro", "sync", "power off"},
		},
		{
			name:    "without ACPI the VM stops by reset",
			cmdline: "volt.run=/app",
			prepare: func(f *fakeSystem) {
				delete(f.exists, "/sys/firmware/acpi")
				f.workloads = []int{exitsAtOnce}
			},
			wantCalls: seq(bootCalls,
				[]string{"link lo", "mark ready", "start /app", "mark workload", "mark shutdown"},
				downCalls[:len(downCalls)-1], []string{"reset"}),
		},
		{
			name:    "failed mount unwinds what was mounted",
			cmdline: "volt.run=/app",
			prepare: func(f *fakeSystem) { f.mountErr["/sys"] = unix.EPERM },
			wantCalls: []string{"mount /proc", "mount /sys", "mark shutdown",
				"sync", "umount /proc", "remount / ro", "sync", "power off"},
			wantOut: []string{"volt-init: error: mount sysfs on /sys: operation not permitted"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(tt.cmdline)
			if tt.prepare != nil {
				tt.prepare(f)
			}
			var out bytes.Buffer
			in := &Init{Sys: f, Console: &out, Signals: f.sigs, Grace: 20 * time.Millisecond, Args: tt.args, Environ: []string{"HOME=/", "TERM=linux"}}
			done := make(chan error, 1)
			go func() { done <- in.Run() }()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Run did not return")
			}
			if !reflect.DeepEqual(f.calls, tt.wantCalls) {
				t.Errorf("calls\n got %q\nwant %q", f.calls, tt.wantCalls)
			}
			lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
			for _, want := range tt.wantOut {
				if !contains(lines, want) {
					t.Errorf("console lacks %q:\n%s", want, out.String())
				}
			}
			ready := 0
			for _, l := range lines {
				if strings.HasPrefix(l, "volt-init: ready ") {
					ready++
				}
			}
			if wantReady := contains(f.calls, "mark ready"); (ready == 1) != wantReady || ready > 1 {
				t.Errorf("%d ready lines with ready marker %v:\n%s", ready, wantReady, out.String())
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

func TestWorkloadEnv(t *testing.T) {
	got := WorkloadEnv(
		[]string{"HOME=/", "TERM=linux", "volt.run=x", "BOOT_IMAGE=/vmlinuz", "ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off", "junk"},
		[]string{"A=1", "HOME=/srv", "PATH=/opt/bin", "A=2"},
	)
	want := []string{"HOME=/srv", "TERM=linux", "BOOT_IMAGE=/vmlinuz", "PATH=/opt/bin", "A=2"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("WorkloadEnv = %q, want %q", got, want)
	}
	if got := WorkloadEnv(nil, nil); !reflect.DeepEqual(got, []string{"PATH=" + defaultPath, "HOME=/root", "TERM=linux"}) {
		t.Errorf("WorkloadEnv(nil, nil) = %q", got)
	}
}

func TestCheckPID(t *testing.T) {
	if err := CheckPID(1, false); err != nil {
		t.Errorf("pid 1: %v", err)
	}
	if err := CheckPID(42, true); err != nil {
		t.Errorf("pid 42 dry run: %v", err)
	}
	if err := CheckPID(42, false); err == nil || !strings.Contains(err.Error(), "--dry-run") {
		t.Errorf("pid 42: error %v, want one pointing at --dry-run", err)
	}
}

// runInit runs in to its power-off and fails the test if it hangs.
func runInit(t *testing.T, in *Init) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- in.Run() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
}

// fakeAgent records its start and stop among the system's calls.
type fakeAgent struct {
	f        *fakeSystem
	startErr error
	grace    time.Duration
}

func (a *fakeAgent) Start() error {
	a.f.record("agent start")
	return a.startErr
}

func (a *fakeAgent) Stop(grace time.Duration) {
	a.f.record("agent stop")
	a.grace = grace
}

func TestInitStartsTheAgentBeforeReady(t *testing.T) {
	boot := []string{"link lo"}
	run := []string{"mark ready", "start /app", "mark workload", "mark shutdown"}
	tests := []struct {
		name      string
		cmdline   string
		startErr  error
		wantCalls []string
		wantOut   string
	}{
		{
			name:      "listening before ready, stopped first at power-off",
			cmdline:   "volt.run=/app",
			wantCalls: seq(bootCalls, boot, []string{"agent start"}, run, []string{"agent stop"}, downCalls),
		},
		{
			name:      "volt.agent=off",
			cmdline:   "volt.run=/app volt.agent=off",
			wantCalls: seq(bootCalls, boot, run, downCalls),
			wantOut:   "volt-init: agent off: volt.agent=off",
		},
		{
			name:      "no vsock device",
			cmdline:   "volt.run=/app",
			startErr:  fmt.Errorf("%w: the kernel has no CID for this guest", ErrNoVsock),
			wantCalls: seq(bootCalls, boot, []string{"agent start"}, run, downCalls),
			wantOut:   "volt-init: agent off: no vsock device: the kernel has no CID for this guest",
		},
		{
			name:      "a failing agent is a warning, the workload still runs",
			cmdline:   "volt.run=/app volt.agent=on",
			startErr:  errors.New("agent: bind vsock port 10240: address already in use"),
			wantCalls: seq(bootCalls, boot, []string{"agent start"}, run, downCalls),
			wantOut:   "volt-init: warning: agent: bind vsock port 10240: address already in use",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(tt.cmdline)
			f.workloads = []int{0}
			a := &fakeAgent{f: f, startErr: tt.startErr}
			var out bytes.Buffer
			in := &Init{Sys: f, Console: &out, Signals: f.sigs, Grace: 30 * time.Millisecond, Agent: a}
			runInit(t, in)
			if !reflect.DeepEqual(f.calls, tt.wantCalls) {
				t.Errorf("calls\n got %q\nwant %q", f.calls, tt.wantCalls)
			}
			if tt.wantOut != "" && !strings.Contains(out.String(), tt.wantOut+"\n") {
				t.Errorf("console lacks %q:\n%s", tt.wantOut, out.String())
			}
			if contains(f.calls, "agent stop") && a.grace != 30*time.Millisecond {
				t.Errorf("agent stopped with grace %v, want init's 30ms", a.grace)
			}
		})
	}
}

// fakeTicker fires when the test sends on c and fails once closed.
type fakeTicker struct {
	c      chan struct{}
	closed chan struct{}
	once   sync.Once
}

func newFakeTicker() *fakeTicker {
	return &fakeTicker{c: make(chan struct{}), closed: make(chan struct{})}
}

func (k *fakeTicker) Each(fn func()) error {
	for {
		select {
		case <-k.c:
			fn()
		case <-k.closed:
			return errors.New("closed")
		}
	}
}

func (k *fakeTicker) Close() error { k.once.Do(func() { close(k.closed) }); return nil }

func TestInitPollsTheGenerationID(t *testing.T) {
	tests := []struct {
		name         string
		cmdline      string
		readErr      error
		wantInterval time.Duration // 0: no ticker made
		wantOut      string
	}{
		{name: "default interval", cmdline: "volt.run=/app", wantInterval: GenIDInterval},
		{name: "volt.genid_interval", cmdline: "volt.run=/app volt.genid_interval=1s", wantInterval: time.Second},
		{name: "polling off", cmdline: "volt.run=/app volt.genid_interval=off",
			wantOut: "volt-init: generation ID polling off: checked before each agent request only"},
		{name: "no device", cmdline: "volt.run=/app", readErr: errors.New("no generation-ID device at port 0xf00"),
			wantOut: "volt-init: generation ID unavailable, clone detection off: no generation-ID device at port 0xf00"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(tt.cmdline)
			f.workloads = []int{int(unix.SIGTERM)} // runs until the shutdown signal
			var (
				mu       sync.Mutex
				id       = [GenIDSize]byte{1}
				reseeds  [][]byte
				interval time.Duration
			)
			tick := newFakeTicker()
			var out syncBuffer
			in := &Init{Sys: f, Console: &out, Signals: f.sigs, Grace: 30 * time.Millisecond}
			in.Generation = &GenerationWatcher{
				Read: func() ([GenIDSize]byte, error) {
					mu.Lock()
					defer mu.Unlock()
					return id, tt.readErr
				},
				Reseed: func(b []byte) error {
					mu.Lock()
					defer mu.Unlock()
					reseeds = append(reseeds, bytes.Clone(b))
					return nil
				},
				Logf: in.logf,
			}
			in.NewTicker = func(d time.Duration) (StoppableTicker, error) { interval = d; return tick, nil }
			done := make(chan error, 1)
			go func() { done <- in.Run() }()
			for !strings.Contains(out.String(), "volt-init: ready ") {
				time.Sleep(time.Millisecond) // the baseline is read before ready
			}
			if tt.wantInterval != 0 {
				// A tick with the boot's ID reseeds nothing; one after a
				// "restore" reseeds with the new ID.
				tick.c <- struct{}{}
				mu.Lock()
				id = [GenIDSize]byte{2}
				mu.Unlock()
				tick.c <- struct{}{}
				tick.c <- struct{}{} // the previous tick's check has finished
			}
			// The agent's check works whatever the poll does.
			mu.Lock()
			id = [GenIDSize]byte{3}
			mu.Unlock()
			in.CheckGeneration()
			f.sigs <- unix.SIGTERM
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if interval != tt.wantInterval {
				t.Errorf("ticker interval %v, want %v", interval, tt.wantInterval)
			}
			var want [][]byte
			switch {
			case tt.readErr != nil:
			case tt.wantInterval != 0:
				want = [][]byte{(&[GenIDSize]byte{2})[:], (&[GenIDSize]byte{3})[:]}
			default:
				want = [][]byte{(&[GenIDSize]byte{3})[:]}
			}
			if !reflect.DeepEqual(reseeds, want) {
				t.Errorf("reseeded with %x, want %x", reseeds, want)
			}
			select {
			case <-tick.closed:
			default:
				if tt.wantInterval != 0 {
					t.Error("the ticker was not closed at shutdown")
				}
			}
			if tt.wantOut != "" && !strings.Contains(out.String(), tt.wantOut+"\n") {
				t.Errorf("console lacks %q:\n%s", tt.wantOut, out.String())
			}
			if n := strings.Count(out.String(), "generation changed to "); n != len(want) {
				t.Errorf("%d generation-change lines, want %d:\n%s", n, len(want), out.String())
			}
		})
	}
}

// syncBuffer is a bytes.Buffer that the poll goroutine and the test may
// write and read at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestInitAppliesTheKernelIPParameter(t *testing.T) {
	const ip = "ip=10.0.0.2::10.0.0.1:255.255.255.0:vm2.example:eth1:off"
	tests := []struct {
		name      string
		cmdline   string
		environ   []string
		pnp       bool
		wantCalls []string
	}{
		{
			name:    "from the command line",
			cmdline: "volt.run=/app " + ip,
			wantCalls: []string{"hostname vm2", "domainname example", "link lo", "link eth1 10.0.0.2/24 via 10.0.0.1",
				"mark ready", "start /app", "mark workload", "mark shutdown"},
		},
		{
			name:    "the kernel passes it in the environment too",
			cmdline: "volt.run=/app " + ip,
			environ: []string{ip},
			wantCalls: []string{"hostname vm2", "domainname example", "link lo", "link eth1 10.0.0.2/24 via 10.0.0.1",
				"mark ready", "start /app", "mark workload", "mark shutdown"},
		},
		{
			name:    "volt.* win",
			cmdline: "volt.run=/app volt.ip=10.1.0.2/16 volt.hostname=other " + ip,
			wantCalls: []string{"hostname other", "link lo", "link eth0 10.1.0.2/16",
				"mark ready", "start /app", "mark workload", "mark shutdown"},
		},
		{
			name:      "a kernel with CONFIG_IP_PNP has done it",
			cmdline:   "volt.run=/app " + ip,
			environ:   []string{ip},
			pnp:       true,
			wantCalls: []string{"link lo", "mark ready", "start /app", "mark workload", "mark shutdown"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(tt.cmdline)
			f.exists[kernelIPDoneFile] = tt.pnp
			f.workloads = []int{0}
			var out bytes.Buffer
			in := &Init{Sys: f, Console: &out, Signals: f.sigs, Grace: 20 * time.Millisecond, Environ: tt.environ}
			runInit(t, in)
			if want := seq(bootCalls, tt.wantCalls, downCalls); !reflect.DeepEqual(f.calls, want) {
				t.Errorf("calls\n got %q\nwant %q\nconsole:\n%s", f.calls, want, out.String())
			}
		})
	}
}
