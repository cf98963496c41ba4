package vmm_test

// Host-side cost of the virtio devices, measured through the probe guest
// under the real VMM, each beside a host-only floor measured in the same
// run:
//
//	go test -run XXX -bench BenchmarkProbe -count 5 ./vmm/
//
// vsock round trips are timed by the host client per request. Block and
// entropy requests are issued by the guest, one at a time, as
// "repeat N COMMAND": one console command runs b.N requests, so the
// console's round trip (a few milliseconds) is spread over all of them
// (under 1% at the default benchtime) and the figure is the VMM's cost of
// a request as the guest sees it: notify, the device's worker, the host
// syscall, the used ring.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/guest/agent"
	"github.com/voltvmm/volt/guest/probe"
	"github.com/voltvmm/volt/vmm"
)

// vpRepeat runs "repeat b.N cmd" in the guest, timed, and reports the
// guest's own median and 90th percentile request time beside ns/op. The
// guest measures in TSC ticks; their rate is the guest's total over the
// host's wall time for the whole command (the console's few milliseconds
// make that a slight underestimate, well under 1% at the default
// benchtime).
func vpRepeat(b *testing.B, s *session, cmd string) {
	b.Helper()
	b.ResetTimer()
	start := time.Now()
	got := vpAsk(s, fmt.Sprintf("repeat %d %s", b.N, cmd))
	wall := time.Since(start)
	b.StopTimer()
	var n, ok, ticks, min, p50, p90 uint64
	if _, err := fmt.Sscanf(got, "repeat %d ok=%d ticks=%d min=%d p50=%d p90=%d", &n, &ok, &ticks, &min, &p50, &p90); err != nil || n != uint64(b.N) || ok != n {
		b.Fatalf("%q: %q, want %d runs, all ok (%v)", cmd, got, b.N, err)
	}
	perUS := float64(ticks) / float64(wall.Microseconds())
	b.ReportMetric(float64(p50)/perUS, "guest-p50-µs")
	b.ReportMetric(float64(p90)/perUS, "guest-p90-µs")
}

// vpLatencies collects per-request latencies and reports their median and
// 90th percentile beside ns/op (a mean): on a shared machine the median
// says more about the path, the mean about what a caller waits on average.
type vpLat struct {
	b *testing.B
	d []time.Duration
}

func vpLatencies(b *testing.B) *vpLat {
	l := &vpLat{b: b, d: make([]time.Duration, 0, b.N)}
	b.Cleanup(l.report)
	return l
}

func (l *vpLat) add(start time.Time) { l.d = append(l.d, time.Since(start)) }

func (l *vpLat) report() {
	if len(l.d) == 0 {
		return
	}
	slices.Sort(l.d)
	l.b.ReportMetric(float64(l.d[len(l.d)/2].Nanoseconds())/1e3, "p50-µs")
	l.b.ReportMetric(float64(l.d[len(l.d)*9/10].Nanoseconds())/1e3, "p90-µs")
}

// vpEchoServer serves a byte echo on a Unix socket: the host floor of a
// vsock stream round trip.
func vpEchoServer(b *testing.B, path string) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	b.Cleanup(func() {
		ln.Close()
		<-done
	})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
}

// vpLineServer answers each connection's first line with "pong LINE" and
// closes: the host end of "vsock connect".
func vpLineServer(b *testing.B, path string) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	b.Cleanup(func() {
		ln.Close()
		<-done
	})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				l, err := bufio.NewReader(c).ReadString('\n')
				if err == nil {
					io.WriteString(c, "pong "+l)
				}
			}()
		}
	}()
}

// vpHybridAgent is the host floor of the agent's first answer: a Unix
// socket that speaks Firecracker's CONNECT handshake and then the agent
// protocol, answering a request with its arguments, as the probe's echo.
func vpHybridAgent(b *testing.B, path string) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	b.Cleanup(func() {
		cancel()
		ln.Close()
		<-done
	})
	h := agent.HandlerFunc(func(ctx context.Context, req agent.Request, stdout, stderr io.Writer) agent.Status {
		fmt.Fprintln(stdout, strings.Join(req.Args[1:], " "))
		return agent.Status{}
	})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line := make([]byte, 0, 32)
				var one [1]byte
				for len(line) < 32 {
					if _, err := c.Read(one[:]); err != nil {
						return
					}
					if one[0] == '\n' {
						break
					}
					line = append(line, one[0])
				}
				io.WriteString(c, "OK 1073741824\n")
				agent.ServeConn(ctx, c, h)
			}()
		}
	}()
}

// vpVoltVMM returns $VOLT_VMM, or volt-vmm built from this tree into a
// directory removed when b ends.
func vpVoltVMM(b *testing.B) string {
	if p := os.Getenv("VOLT_VMM"); p != "" {
		return p
	}
	path := filepath.Join(b.TempDir(), "volt-vmm")
	cmd := exec.Command("go", "build", "-trimpath", "-o", path, "./cmd/volt-vmm")
	cmd.Dir = ".." // the module root, from this package's directory
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build volt-vmm: %v\n%s", err, out)
	}
	return path
}

// vpProcess runs the probe in a volt-vmm process of its own, as the pool
// runs its VMs, with the probe's console on pipes; it returns once the
// probe answered every command in cmds.
func vpProcess(b *testing.B, uds string, cmds ...string) {
	cmd := exec.Command(vpVoltVMM(b), "--kernel", probeELF(b), "--memory", "64M", "--vsock", "cid=3,uds="+uds)
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	b.Cleanup(func() {
		io.WriteString(in, "poweroff\n")
		select {
		case err := <-done:
			if err != nil {
				b.Errorf("volt-vmm: %v", err)
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			b.Error("volt-vmm did not power off")
		}
	})
	sc := bufio.NewScanner(out)
	lines := make(chan string, 16)
	go func() {
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		done <- cmd.Wait()
	}()
	next := func() string {
		select {
		case l := <-lines:
			return l
		case <-time.After(30 * time.Second):
			b.Fatal("volt-vmm: no console line in 30 s")
		}
		return ""
	}
	for next() != probe.ReadyLine {
	}
	for _, c := range cmds {
		io.WriteString(in, c+"\n")
		if l := next(); strings.HasPrefix(l, "error") {
			b.Fatalf("%q: %s", c, l)
		}
	}
	go func() {
		for range lines {
		}
	}()
}

func BenchmarkProbeVsock(b *testing.B) {
	uds := vpUDS(b, "v.sock")
	s := startProbe(b, vmm.Config{Vsock: &vmm.VsockConfig{GuestCID: 3, UDSPath: uds}})
	s.expect(probe.ReadyLine)
	vpWant(s, "vsock listen 1234", `vsock listening 1234`)
	vpWant(s, "agent", `agent listening 10240`)
	defaultSpin := strings.TrimPrefix(vpAsk(s, "vsock spin"), "vsock spin ")
	floorDir, err := os.MkdirTemp("", "vpf")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(floorDir) })

	// A 64-byte request and its echo on an open stream.
	roundTrip := func(b *testing.B, c net.Conn) {
		msg := make([]byte, 64)
		buf := make([]byte, 64)
		lat := vpLatencies(b)
		b.ResetTimer()
		for range b.N {
			t := time.Now()
			if _, err := c.Write(msg); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				b.Fatal(err)
			}
			lat.add(t)
		}
	}
	// The probe spins on its rings for a while after each packet before
	// it sleeps until the vsock interrupt: the default, never, and long.
	for _, spin := range []string{"default", "0", "3000000"} {
		b.Run("round-trip/probe-spin="+spin, func(b *testing.B) {
			if spin != "default" {
				vpWant(s, "vsock spin "+spin, `vsock spin `+spin)
				defer vpWant(s, "vsock spin "+defaultSpin, `vsock spin `+defaultSpin)
			}
			c := vpDial(b, uds, 1234)
			defer c.Close()
			roundTrip(b, c)
		})
	}
	b.Run("round-trip/host-floor", func(b *testing.B) {
		path := filepath.Join(floorDir, "echo.sock")
		vpEchoServer(b, path)
		c, err := net.Dial("unix", path)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		roundTrip(b, c)
	})

	// The pool's first answer: connect to the socket, CONNECT 10240,
	// one agent request ("echo hi"), its answer, close.
	firstAnswer := func(b *testing.B, path string) {
		ctx := context.Background()
		lat := vpLatencies(b)
		b.ResetTimer()
		for range b.N {
			t := time.Now()
			c, err := agent.DialHybrid(ctx, path, agent.Port)
			if err != nil {
				b.Fatal(err)
			}
			res, err := (&agent.Client{}).Run(ctx, c, agent.Request{Args: []string{"echo", "hi"}})
			c.Close()
			if err != nil || string(res.Stdout) != "hi\n" || !res.Success() {
				b.Fatalf("agent: %q %v %v", res.Stdout, res.Status, err)
			}
			lat.add(t)
		}
	}
	b.Run("first-answer/probe", func(b *testing.B) { firstAnswer(b, uds) })

	// The same against a volt-vmm process of its own, where the client
	// does not share the VMM's Go runtime, as the pool does not.
	procUDS := filepath.Join(floorDir, "proc.sock")
	vpProcess(b, procUDS, "vsock listen 1234", "agent")
	b.Run("round-trip/process", func(b *testing.B) {
		c := vpDial(b, procUDS, 1234)
		defer c.Close()
		roundTrip(b, c)
	})
	b.Run("first-answer/process", func(b *testing.B) { firstAnswer(b, procUDS) })
	b.Run("first-answer/host-floor", func(b *testing.B) {
		path := filepath.Join(floorDir, "agent.sock")
		vpHybridAgent(b, path)
		firstAnswer(b, path)
	})

	// Guest-initiated: connect to <uds>_5000, a line and its answer,
	// close; the floor is the same exchange between two host sockets.
	b.Run("guest-connect/probe", func(b *testing.B) {
		vpLineServer(b, uds+"_5000")
		vpRepeat(b, s, "vsock connect 5000 x")
	})
	b.Run("guest-connect/host-floor", func(b *testing.B) {
		path := filepath.Join(floorDir, "line.sock")
		vpLineServer(b, path)
		buf := make([]byte, 16)
		b.ResetTimer()
		for range b.N {
			c, err := net.Dial("unix", path)
			if err != nil {
				b.Fatal(err)
			}
			io.WriteString(c, "x\n")
			if _, err := io.ReadFull(c, buf[:7]); err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	})
	b.StopTimer()
	vpPowerOff(b, s)
}

func BenchmarkProbeBlock(b *testing.B) {
	dir := b.TempDir()
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, make([]byte, 16<<20), 0o644); err != nil {
		b.Fatal(err)
	}
	s := startProbe(b, vmm.Config{Drives: []vmm.DriveConfig{{ID: "bench", Path: disk}}})
	s.expect(probe.ReadyLine)
	vpWant(s, "blk read 0 8", `blk read 0 8 .*`)
	b.Run("read-4k/probe", func(b *testing.B) { vpRepeat(b, s, "blk read 8 8") })
	b.Run("write-4k/probe", func(b *testing.B) { vpRepeat(b, s, "blk write 16 90 8") })
	b.Run("console/probe", func(b *testing.B) {
		// The guest's own loop and the console round trip, for scale.
		vpRepeat(b, s, "echo x")
	})
	f, err := os.OpenFile(filepath.Join(dir, "floor.img"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(16 << 20); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 4096)
	b.Run("read-4k/host-floor", func(b *testing.B) {
		for range b.N {
			if _, err := unix.Pread(int(f.Fd()), buf, 4096); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("write-4k/host-floor", func(b *testing.B) {
		for range b.N {
			if _, err := unix.Pwrite(int(f.Fd()), buf, 8192); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.StopTimer()
	vpPowerOff(b, s)
}

func BenchmarkProbeEntropy(b *testing.B) {
	s := startProbe(b, vmm.Config{Entropy: &vmm.EntropyConfig{}})
	s.expect(probe.ReadyLine)
	vpWant(s, "rng 16", `rng 16 got=16 .*`)
	b.Run("16B/probe", func(b *testing.B) { vpRepeat(b, s, "rng 16") })
	b.Run("16B/host-floor", func(b *testing.B) {
		buf := make([]byte, 16)
		for range b.N {
			if _, err := unix.Getrandom(buf, 0); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.StopTimer()
	vpPowerOff(b, s)
}

// The console's own latency, to read the figures above against: one
// command and its answer line.
func BenchmarkProbeConsoleRoundTrip(b *testing.B) {
	s := startProbe(b, vmm.Config{})
	s.expect(probe.ReadyLine)
	b.ResetTimer()
	for range b.N {
		if l := vpAsk(s, "echo x"); l != "x" {
			b.Fatalf("echo answered %q", l)
		}
	}
	b.StopTimer()
	vpPowerOff(b, s)
}
