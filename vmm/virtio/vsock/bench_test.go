//go:build !race

package vsock

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// cpuTime is the process's user+system CPU time: on a shared, loaded
// machine wall-clock latency mostly measures the scheduler, CPU time per
// operation measures the work (client, device and simulated guest together).
func cpuTime() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportPerOp(b *testing.B, cpu0 time.Duration, unit string) {
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/"+unit)
	b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/"+unit)
}

// echoServer is the guest's agent for the benchmarks: it listens on port
// 52 and writes back whatever each connection sends, until stop closes. It
// runs on its own goroutine, the simulated guest's vCPU.
func (g *simGuest) echoServer(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	g.listen(52)
	var conns []*gconn
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-g.irq.ch:
		case <-tick.C:
		}
		g.step(false)
		conns = append(conns, g.backlog...)
		g.backlog = g.backlog[:0]
		live := conns[:0]
		for _, c := range conns {
			if len(c.data) > 0 {
				b := c.data
				c.data = nil
				c.fwdCnt += uint32(len(b))
				if c.write(b) != nil {
					continue
				}
			}
			if !c.closed {
				live = append(live, c)
			}
		}
		conns = live
	}
}

func startEcho(b *testing.B) (*Device, string) {
	d, g, path := newSimDevice(b)
	startDevice(b, d)
	stop, done := make(chan struct{}), make(chan struct{})
	go g.echoServer(stop, done)
	b.Cleanup(func() {
		close(stop)
		<-done
	})
	return d, path
}

// BenchmarkRoundTrip: one request and its answer (64 bytes each) on an
// established connection: host client → Unix socket → device → guest rx
// queue → guest agent → guest tx queue → device → Unix socket → client.
func BenchmarkRoundTrip(b *testing.B) {
	_, path := startEcho(b)
	c, err := net.Dial("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("CONNECT 52\n"))
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "OK ") {
		b.Fatalf("handshake: %q %v", line, err)
	}
	req := []byte(strings.Repeat("q", 64))
	ans := make([]byte, 64)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(r, ans); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	reportPerOp(b, cpu0, "roundtrip")
}

// BenchmarkFirstAnswer is the pool's first-answer path: connect to the
// Unix socket, "CONNECT 52\n" with the request right behind it, read
// "OK <port>\n" and the answer, close.
func BenchmarkFirstAnswer(b *testing.B) {
	_, path := startEcho(b)
	req := []byte("CONNECT 52\n" + strings.Repeat("q", 64))
	ans := make([]byte, 64)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for i := 0; i < b.N; i++ {
		c, err := net.Dial("unix", path)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		r := bufio.NewReader(c)
		if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "OK ") {
			b.Fatalf("handshake: %q %v", line, err)
		}
		if _, err := io.ReadFull(r, ans); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	b.StopTimer()
	reportPerOp(b, cpu0, "answer")
}
