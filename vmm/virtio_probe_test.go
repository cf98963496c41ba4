package vmm_test

// The virtio devices driven by the probe guest's own driver (guest/probe:
// virtio.c, vsock.c) through the real VMM under /dev/kvm: a block device
// read and written from both sides, entropy, frames through a TAP in a
// network namespace, vsock in both directions and across snapshots, the
// guest agent, and malformed descriptor chains that must break only the
// device they were sent to.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/guest/agent"
	"github.com/voltvmm/volt/guest/probe"
	"github.com/voltvmm/volt/vmm"
	"github.com/voltvmm/volt/vmm/kvm/kvmtest"
	"github.com/voltvmm/volt/vmm/netdev/nettest"
	vnet "github.com/voltvmm/volt/vmm/virtio/net"
)

// vpNext returns the probe's next console line, whatever it is.
func vpNext(s *session) string {
	s.t.Helper()
	select {
	case l, ok := <-s.lines:
		if !ok {
			s.t.Fatalf("console closed; output so far:\n%s", s.output())
		}
		return l
	case <-time.After(30 * time.Second):
		s.t.Fatalf("no console line in 30 s; output so far:\n%s", s.output())
	}
	return ""
}

// vpAsk sends one command and returns the line it answers with.
func vpAsk(s *session, cmd string) string {
	s.t.Helper()
	s.send(cmd)
	return vpNext(s)
}

// vpWant sends cmd and fails unless its answer matches re; it returns the
// submatches.
func vpWant(s *session, cmd, re string) []string {
	s.t.Helper()
	got := vpAsk(s, cmd)
	m := regexp.MustCompile("^" + re + "$").FindStringSubmatch(got)
	if m == nil {
		s.t.Fatalf("%q answered %q, want %q", cmd, got, re)
	}
	return m
}

// vpWordHash is the probe's checksum (word_hash in src/probe.c): FNV-1a
// over 64-bit little-endian words, a short tail zero-padded.
func vpWordHash(b []byte) uint64 {
	h := uint64(0xcbf29ce484222325)
	for len(b) > 0 {
		var w [8]byte
		n := copy(w[:], b)
		b = b[n:]
		h = (h ^ binary.LittleEndian.Uint64(w[:])) * 0x100000001b3
	}
	return h
}

// vpPowerOff ends a session the clean way.
func vpPowerOff(t testing.TB, s *session) {
	t.Helper()
	s.send("poweroff")
	if r := s.wait(); r.Reason != vmm.StopPowerOff {
		t.Fatalf("stopped with %s (%v), want poweroff; output:\n%s", r.Reason, r.Err, s.output())
	}
}

// vpLog is a slog destination tests can search.
type vpLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *vpLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *vpLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *vpLog) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// vpUDS is a vsock socket path short enough for sun_path with the
// "_PORT" suffixes of guest-initiated connections.
func vpUDS(t testing.TB, name string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "vp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, name)
}

// vpDial connects to a guest port through the hybrid vsock socket.
func vpDial(t testing.TB, uds string, port uint32) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := agent.DialHybrid(ctx, uds, port)
	if err != nil {
		t.Fatalf("connect to guest port %d: %v", port, err)
	}
	return c
}

// vpEcho sends payload on an echo connection and checks that exactly it
// comes back, reading while writing so that neither side's credit
// window limits the test.
func vpEcho(t testing.TB, c net.Conn, payload []byte) {
	t.Helper()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	defer c.SetDeadline(time.Time{})
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		werr <- err
	}()
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("echo of %d bytes: %v", len(payload), err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write %d bytes: %v", len(payload), err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echo of %d bytes came back different", len(payload))
	}
}

func vpRandom(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// vpWaitStatus polls "vsock status" until it matches re.
func vpWaitStatus(t testing.TB, s *session, re string) string {
	t.Helper()
	r := regexp.MustCompile(re)
	deadline := time.Now().Add(5 * time.Second)
	for {
		l := vpAsk(s, "vsock status")
		if r.MatchString(l) {
			return l
		}
		if time.Now().After(deadline) {
			t.Fatalf("vsock status %q never matched %q", l, re)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestProbeListsItsVirtioDevices(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startProbe(t, vmm.Config{
		Cmdline: "probe.spin=1234 probe.agent=4321",
		Drives:  []vmm.DriveConfig{{ID: "disk0", Path: disk}},
		Vsock:   &vmm.VsockConfig{GuestCID: 7, UDSPath: vpUDS(t, "v.sock")},
		Entropy: &vmm.EntropyConfig{},
	})
	vpWant(s, "", `volt-probe: booted cpus=1 mem=6[0-4]`)
	vpWant(s, "", `agent listening 4321`)
	vpWant(s, "", probe.ReadyLine)
	vpWant(s, "vsock spin", `vsock spin 1234`)
	vpWant(s, "virtio", `virtio devices=3`)
	// The slots and GSIs of vmm/virtio.go, found the way Linux finds
	// them: from virtio_mmio.device= on the command line.
	vpWant(s, "", `virtio 0 block@0xd0000000 irq 5 features=0x[0-9a-f]{10}`)
	vpWant(s, "", `virtio 1 vsock@0xd0001000 irq 6 features=0x[0-9a-f]{10}`)
	vpWant(s, "", `virtio 2 entropy@0xd0002000 irq 7 features=0x[0-9a-f]{10}`)
	vpWant(s, "vsock status", `vsock cid=7 listeners=1 conns=0 resets=0 rx=0 tx=0 irq=pic recoveries=0`)
	vpPowerOff(t, s)
}

func TestProbeBlockSectorsBetweenHostAndGuest(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	img := make([]byte, 1<<20)
	host := vpRandom(t, 4096)
	copy(img[8*512:], host) // sectors 8-15, written by the host
	if err := os.WriteFile(disk, img, 0o644); err != nil {
		t.Fatal(err)
	}
	s := startProbe(t, vmm.Config{Drives: []vmm.DriveConfig{{ID: "probe-disk", Path: disk}}})
	s.expect(probe.ReadyLine)
	vpWant(s, "blk info", `blk sectors=2048 ro=0 flush=1`)
	vpWant(s, "blk id", `blk id probe-disk`)
	// A sector the host wrote, read by the guest: one and eight at once.
	m := vpWant(s, "blk read 8", `blk read 8 1 hash=0x([0-9a-f]{16}) head=([0-9a-f]{32})`)
	if want := fmt.Sprintf("%016x", vpWordHash(host[:512])); m[1] != want {
		t.Errorf("guest read sector 8 with hash %s, the host wrote %s", m[1], want)
	}
	if want := fmt.Sprintf("%x", host[:16]); m[2] != want {
		t.Errorf("guest read sector 8 starting %s, the host wrote %s", m[2], want)
	}
	m = vpWant(s, "blk read 8 8", `blk read 8 8 hash=0x([0-9a-f]{16}) head=[0-9a-f]{32}`)
	if want := fmt.Sprintf("%016x", vpWordHash(host)); m[1] != want {
		t.Errorf("guest read sectors 8-15 with hash %s, the host wrote %s", m[1], want)
	}
	// Sectors the guest writes, read by the host once the VM is off.
	vpWant(s, "blk write 100 171", `blk write 100 1 ok`)
	vpWant(s, "blk write 200 7 3", `blk write 200 3 ok`)
	vpWant(s, "blk flush", `blk flush ok`)
	m = vpWant(s, "blk read 100", `blk read 100 1 hash=0x([0-9a-f]{16}) head=(ab){16}`)
	if want := fmt.Sprintf("%016x", vpWordHash(bytes.Repeat([]byte{0xab}, 512))); m[1] != want {
		t.Errorf("guest read back its sector with hash %s, want %s", m[1], want)
	}
	// Past the end of the disk, and bad arguments: errors, not crashes.
	vpWant(s, "blk read 2048", `error: blk read 2048: status IOERR`)
	vpWant(s, "blk read 2047 2", `error: blk read 2047: status IOERR`)
	vpWant(s, "blk read 0 129", `error: sector count must be 1-128`)
	vpWant(s, "blk write 0 256", `error: usage: blk write SECTOR BYTE \[COUNT\] \(BYTE 0-255\)`)
	vpPowerOff(t, s)

	got, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	check := func(first, n int, b byte) {
		t.Helper()
		if want := bytes.Repeat([]byte{b}, n*512); !bytes.Equal(got[first*512:(first+n)*512], want) {
			t.Errorf("sectors %d-%d on the host are not all %#x", first, first+n-1, b)
		}
	}
	check(100, 1, 0xab)
	check(200, 3, 7)
	check(99, 1, 0) // neighbours untouched
	check(101, 1, 0)
	check(199, 1, 0)
	check(203, 1, 0)
	if !bytes.Equal(got[8*512:16*512], host) {
		t.Error("the host's sectors changed")
	}
}

func TestProbeReadOnlyDiskRefusesWrites(t *testing.T) {
	disk := filepath.Join(t.TempDir(), "ro.img")
	img := bytes.Repeat([]byte{0x5a}, 64<<10)
	if err := os.WriteFile(disk, img, 0o644); err != nil {
		t.Fatal(err)
	}
	s := startProbe(t, vmm.Config{Drives: []vmm.DriveConfig{{ID: "ro", Path: disk, ReadOnly: true}}})
	s.expect(probe.ReadyLine)
	vpWant(s, "blk info", `blk sectors=128 ro=1 flush=1`)
	vpWant(s, "blk write 3 1", `error: blk write 3: status IOERR`)
	vpWant(s, "blk read 3", `blk read 3 1 hash=0x[0-9a-f]{16} head=(5a){16}`)
	vpPowerOff(t, s)
	if got, err := os.ReadFile(disk); err != nil || !bytes.Equal(got, img) {
		t.Fatalf("read-only disk changed (err %v)", err)
	}
}

func TestProbeEntropy(t *testing.T) {
	s := startProbe(t, vmm.Config{Entropy: &vmm.EntropyConfig{}})
	s.expect(probe.ReadyLine)
	var hashes []string
	for range 2 {
		m := vpWant(s, "rng 4096", `rng 4096 got=4096 hash=(0x[0-9a-f]{16}) distinct=([0-9]+)`)
		// 4096 random bytes miss one of the 256 values with probability
		// 256*(255/256)^4096, about 1e-5: fewer than 240 is no entropy.
		if d, _ := strconv.Atoi(m[2]); d < 240 {
			t.Errorf("4096 bytes from the entropy device hold %d distinct values", d)
		}
		hashes = append(hashes, m[1])
	}
	if hashes[0] == hashes[1] {
		t.Errorf("two reads of the entropy device gave the same bytes (%s)", hashes[0])
	}
	vpWant(s, "rng 1", `rng 1 got=1 hash=0x[0-9a-f]{16} distinct=1`)
	vpWant(s, "rng 65537", `error: usage: rng N \(1-65536 bytes\)`)
	vpWant(s, "blk read 0", `error: no block device`)
	vpPowerOff(t, s)
}

// vpStartInNS boots the probe with vmm.New called inside ns, so that the
// VMM opens (and creates) its TAP there.
func vpStartInNS(t *testing.T, ns *nettest.NS, cfg vmm.Config) *session {
	t.Helper()
	kvmtest.Require(t)
	cfg.KernelPath = probeELF(t)
	if cfg.MemorySize == 0 {
		cfg.MemorySize = 64 << 20
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 1
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	cfg.Console, cfg.ConsoleInput = outW, inR
	var vm *vmm.VM
	if err := ns.Do(func() error {
		var err error
		vm, err = vmm.New(cfg)
		return err
	}); err != nil {
		t.Fatalf("vmm.New in namespace %s: %v", ns.Name, err)
	}
	return attach(t, vm, inW, outR, outW)
}

// vpPacketSocket is an AF_PACKET socket on ifname inside ns: it sees the
// frames the guest sends and injects frames the guest receives.
func vpPacketSocket(t *testing.T, ns *nettest.NS, ifname string) (fd int, mac net.HardwareAddr) {
	t.Helper()
	fd = -1
	err := ns.Do(func() error {
		ifc, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		mac = ifc.HardwareAddr
		proto := int(htons(unix.ETH_P_ALL))
		s, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return err
		}
		if err := unix.Bind(s, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifc.Index}); err != nil {
			unix.Close(s)
			return err
		}
		tv := unix.Timeval{Sec: 0, Usec: 200_000}
		unix.SetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		fd = s
		return nil
	})
	if err != nil {
		t.Fatalf("packet socket on %s: %v", ifname, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd, mac
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// vpReadFrame waits up to 5 s for a frame on fd that match accepts.
func vpReadFrame(t *testing.T, fd int, match func([]byte) bool) []byte {
	t.Helper()
	buf := make([]byte, 2048)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			t.Fatalf("packet socket: %v", err)
		}
		if match(buf[:n]) {
			return bytes.Clone(buf[:n])
		}
	}
	t.Fatal("no matching frame on the TAP in 5 s")
	return nil
}

func TestProbeFramesThroughATap(t *testing.T) {
	ns := nettest.New(t)
	guestMAC := vnet.MAC{0x02, 0x00, 0x00, 0x00, 0x00, 0x09}
	s := vpStartInNS(t, ns, vmm.Config{
		Nets: []vmm.NetConfig{{Config: vnet.Config{ID: "eth0", MAC: guestMAC}, Backend: vnet.BackendConfig{Kind: vnet.BackendTap, Name: "vtap0"}}},
	})
	ns.IP("addr", "add", "10.0.0.1/24", "dev", "vtap0")
	ns.IP("link", "set", "vtap0", "up")
	fd, tapMAC := vpPacketSocket(t, ns, "vtap0")
	s.expect(probe.ReadyLine)
	vpWant(s, "net mac", `net mac 02:00:00:00:00:09`)

	// Out and back: the guest asks who has 10.0.0.1, the host's kernel
	// (which has it, on the TAP) answers the guest's MAC.
	vpWant(s, "net send arp 10.0.0.1 10.0.0.2", `net send len=42 ethertype=0x0806 src=02:00:00:00:00:09`)
	m := vpWant(s, "net recv 0x0806", `net recv len=([0-9]+) ethertype=0x0806 src=([0-9a-f:]{17}) dst=02:00:00:00:00:09 hash=0x[0-9a-f]{16}`)
	if m[2] != tapMAC.String() {
		t.Errorf("ARP reply from %s, want the TAP's %s", m[2], tapMAC)
	}

	// Guest to host: a raw frame the host sees on the TAP.
	vpWant(s, "net send 0x88b5", `net send len=60 ethertype=0x88b5 src=02:00:00:00:00:09`)
	f := vpReadFrame(t, fd, func(b []byte) bool { return len(b) >= 14 && b[12] == 0x88 && b[13] == 0xb5 })
	if !bytes.Equal(f[6:12], guestMAC[:]) || !bytes.HasPrefix(f[14:], []byte("volt-probe")) || len(f) != 60 {
		t.Errorf("host saw frame % x, want 60 bytes from the guest's MAC with \"volt-probe\"", f)
	}

	// Host to guest: a frame injected on the TAP arrives whole.
	frame := make([]byte, 0, 100)
	frame = append(frame, guestMAC[:]...)
	frame = append(frame, tapMAC...)
	frame = append(frame, 0x88, 0xb6)
	frame = append(frame, vpRandom(t, 86)...)
	if err := unix.Send(fd, frame, 0); err != nil {
		t.Fatalf("inject a frame: %v", err)
	}
	m = vpWant(s, "net recv 0x88b6", `net recv len=100 ethertype=0x88b6 src=([0-9a-f:]{17}) dst=02:00:00:00:00:09 hash=0x([0-9a-f]{16})`)
	if want := fmt.Sprintf("%016x", vpWordHash(frame)); m[2] != want || m[1] != tapMAC.String() {
		t.Errorf("guest received src %s hash %s, the host sent src %s hash %s", m[1], m[2], tapMAC, want)
	}
	vpWant(s, "net recv 0x88b7", `error: net recv: no frame \([0-9]+ others\)`)

	// Malformed transmit chains break the device, which the driver then
	// resets and sets up again; the path works once more each time.
	for _, kind := range []string{"loop", "outside", "order", "indirect", "head", "idx"} {
		vpWant(s, "virtio evil net "+kind, `virtio evil net `+kind+` status=0x4f needs_reset=1 reinit=ok`)
		vpWant(s, "net send arp 10.0.0.1 10.0.0.2", `net send len=42 .*`)
		vpWant(s, "net recv 0x0806", `net recv len=[0-9]+ ethertype=0x0806 src=`+tapMAC.String()+` dst=02:00:00:00:00:09 .*`)
	}
	vpPowerOff(t, s)
}

func TestProbeVsockBothDirections(t *testing.T) {
	uds := vpUDS(t, "v.sock")
	s := startProbe(t, vmm.Config{Vsock: &vmm.VsockConfig{GuestCID: 3, UDSPath: uds}})
	s.expect(probe.ReadyLine)
	vpWant(s, "vsock listen 1234", `vsock listening 1234`)

	// Host-initiated: CONNECT 1234, then an echo of small and large
	// writes. 300 KiB is several times both sides' 64 KiB credit windows,
	// so it flows only if credit updates do.
	c := vpDial(t, uds, 1234)
	vpEcho(t, c, []byte("hello vsock"))
	vpEcho(t, c, vpRandom(t, 300<<10))
	vpWaitStatus(t, s, `conns=1 `)
	c.Close()
	vpWaitStatus(t, s, `conns=0 `) // the host's close ends the guest's side

	// Two at once.
	c1, c2 := vpDial(t, uds, 1234), vpDial(t, uds, 1234)
	vpEcho(t, c2, []byte("second"))
	vpEcho(t, c1, []byte("first"))
	c1.Close()
	c2.Close()

	// Nobody listens on 999: the guest answers the REQUEST with an RST,
	// which the VMM passes on by closing the host socket.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := agent.DialHybrid(ctx, uds, 999); err == nil {
		t.Error("connected to a port the guest does not listen on")
	}

	// Guest-initiated: the VMM connects the guest to <uds>_5000.
	ln, err := net.Listen("unix", uds+"_5000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan string, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			served <- err.Error()
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		line := make([]byte, 0, 64)
		b := make([]byte, 1)
		for {
			if _, err := conn.Read(b); err != nil {
				served <- err.Error()
				return
			}
			if b[0] == '\n' {
				break
			}
			line = append(line, b[0])
		}
		fmt.Fprintf(conn, "pong %s\n", line)
		served <- string(line)
	}()
	vpWant(s, "vsock connect 5000 from-the-guest", `vsock reply pong from-the-guest`)
	if got := <-served; got != "from-the-guest" {
		t.Errorf("host listener got %q", got)
	}
	vpWant(s, "vsock connect 5001 nobody", `error: vsock connect 5001: connection refused \(reset by the host\)`)
	vpWaitStatus(t, s, `conns=0 `)
	vpPowerOff(t, s)
}

// vpAgentRun sends one agent request and returns the result.
func vpAgentRun(t testing.TB, uds string, args ...string) agent.Result {
	t.Helper()
	c := vpDial(t, uds, agent.Port)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := (&agent.Client{}).Run(ctx, c, agent.Request{Args: args})
	if err != nil {
		t.Fatalf("agent %q: %v", args, err)
	}
	return res
}

func TestProbeServesTheGuestAgent(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, bytes.Repeat([]byte{0x42}, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	uds := vpUDS(t, "v.sock")
	// probe.agent on the command line: the agent is up before "ready",
	// with nobody at the console, as the pool boots its templates.
	s := startProbe(t, vmm.Config{
		Cmdline: "probe.agent",
		Drives:  []vmm.DriveConfig{{ID: "d", Path: disk}},
		Vsock:   &vmm.VsockConfig{GuestCID: 3, UDSPath: uds},
	})
	s.expect("agent listening 10240")
	s.expect(probe.ReadyLine)

	c := vpDial(t, uds, agent.Port)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := agent.Ping(ctx, c); err != nil {
		t.Fatalf("agent ping: %v", err)
	}
	c.Close()

	res := vpAgentRun(t, uds, "echo", "hello", "from", "the agent")
	if string(res.Stdout) != "hello from the agent\n" || len(res.Stderr) != 0 || !res.Success() {
		t.Errorf("echo: stdout %q stderr %q status %v", res.Stdout, res.Stderr, res.Status)
	}
	res = vpAgentRun(t, uds, "blk", "read", "1", "2")
	if want := fmt.Sprintf("blk read 1 2 hash=0x%016x head=%s\n", vpWordHash(bytes.Repeat([]byte{0x42}, 1024)), strings.Repeat("42", 16)); string(res.Stdout) != want || !res.Success() {
		t.Errorf("blk read: stdout %q status %v, want %q", res.Stdout, res.Status, want)
	}
	res = vpAgentRun(t, uds, "blk", "read", "999999")
	if res.Status.Kind != agent.Exited || res.Status.Code != 1 || !strings.HasPrefix(string(res.Stderr), "error: blk read 999999: status IOERR") {
		t.Errorf("failing command: stdout %q stderr %q status %v, want exit status 1 and the error on stderr", res.Stdout, res.Stderr, res.Status)
	}
	res = vpAgentRun(t, uds, "frobnicate")
	if res.Status.Kind != agent.Exited || res.Status.Code != 127 || string(res.Stderr) != "error: unknown command\n" {
		t.Errorf("unknown command: stderr %q status %v, want exit status 127", res.Stderr, res.Status)
	}
	res = vpAgentRun(t, uds, "repeat", "50", "blk", "read", "0", "8")
	if !regexp.MustCompile(`^repeat 50 ok=50 ticks=[0-9]+ min=[0-9]+ p50=[0-9]+ p90=[0-9]+\n$`).Match(res.Stdout) || !res.Success() {
		t.Errorf("repeat: stdout %q status %v", res.Stdout, res.Status)
	}

	// A request of another protocol version is answered "not run" with
	// the reason; a frame of the wrong type ends the stream.
	raw := func(payload []byte, typ byte) []byte {
		h := make([]byte, 8, 8+len(payload))
		binary.LittleEndian.PutUint32(h, uint32(len(payload)))
		h[4] = typ
		return append(h, payload...)
	}
	req, err := agent.Request{Args: []string{"echo", "x"}}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(req)
	binary.LittleEndian.PutUint16(bad[4:], 2)
	c = vpDial(t, uds, agent.Port)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write(raw(bad, 0x01))
	answer, _ := io.ReadAll(c)
	c.Close()
	if len(answer) < 16 || answer[4] != 0x12 || answer[8] != byte(agent.NotRun) || !bytes.Contains(answer, []byte("version")) {
		t.Errorf("version 2 request answered % x, want an exit frame \"not run\" naming the version", answer)
	}
	// Malformed requests (a readable header, a payload the agent cannot
	// parse) are answered "not run" and the stream closes.
	le16 := func(v int) []byte { return binary.LittleEndian.AppendUint16(nil, uint16(v)) }
	fixed := func(argc, envc, flags int, timeout, stdin uint32) []byte {
		b := []byte("VAGT")
		b = append(b, le16(1)...)
		b = append(b, le16(argc)...)
		b = append(b, le16(envc)...)
		b = append(b, le16(flags)...)
		b = binary.LittleEndian.AppendUint32(b, timeout)
		return binary.LittleEndian.AppendUint32(b, stdin)
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for _, tc := range []struct {
		name    string
		payload []byte
	}{
		{"short", []byte("VAGT\x01\x00")},
		{"magic", cat([]byte("XAGT"), fixed(0, 0, 0, 0, 0)[4:])},
		{"flags", fixed(0, 0, 1, 0, 0)},
		{"timeout", fixed(0, 0, 0, 86400001, 0)},
		{"argc", fixed(1025, 0, 0, 0, 0)},
		{"string past the end", cat(fixed(1, 0, 0, 0, 0), le16(10), []byte("echo"))},
		{"string length cut", cat(fixed(1, 0, 0, 0, 0), []byte{4})},
		{"NUL in argv", cat(fixed(1, 0, 0, 0, 0), le16(5), []byte("ec\x00ho"))},
		{"empty command", cat(fixed(1, 0, 0, 0, 0), le16(0))},
		{"stdin length", cat(fixed(1, 0, 0, 0, 3), le16(4), []byte("echo"), []byte("ab"))},
		{"line too long", cat(fixed(2, 0, 0, 0, 0), le16(4), []byte("echo"), le16(300), bytes.Repeat([]byte("a"), 300))},
	} {
		c := vpDial(t, uds, agent.Port)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write(raw(tc.payload, 0x01))
		answer, _ := io.ReadAll(c)
		c.Close()
		if len(answer) < 16 || answer[4] != 0x12 || answer[8] != byte(agent.NotRun) || int(binary.LittleEndian.Uint32(answer)) != len(answer)-8 {
			t.Errorf("%s: answered % x, want one exit frame \"not run\"", tc.name, answer)
			continue
		}
		if st, err := agent.DecodeStatus(answer[8:]); err != nil || st.Message == "" {
			t.Errorf("%s: exit frame %+v (%v), want a reason", tc.name, st, err)
		}
	}
	c = vpDial(t, uds, agent.Port)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write(raw(req, 0x10))
	if answer, err := io.ReadAll(c); len(answer) != 0 || err != nil {
		t.Errorf("a stdout frame from the caller got % x (%v), want the stream closed", answer, err)
	}
	c.Close()
	// The agent and the console both still work.
	if res := vpAgentRun(t, uds, "echo", "still here"); string(res.Stdout) != "still here\n" {
		t.Errorf("after bad requests: %q", res.Stdout)
	}
	vpWant(s, "echo console too", `console too`)
	vpPowerOff(t, s)
}

func TestProbeVsockListenerSurvivesRestores(t *testing.T) {
	uds := vpUDS(t, "v.sock")
	s := startProbe(t, vmm.Config{Vsock: &vmm.VsockConfig{GuestCID: 3, UDSPath: uds}})
	s.expect(probe.ReadyLine)
	vpWant(s, "vsock listen 1234", `vsock listening 1234`)
	vpWant(s, "agent", `agent listening 10240`)
	// A connection open while the snapshot is taken: after a restore the
	// transport reset ends it in the guest.
	open := vpDial(t, uds, 1234)
	vpEcho(t, open, []byte("before the snapshot"))
	vpWaitStatus(t, s, `listeners=2 conns=1 resets=0 `)
	if err := s.vm.Pause(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	state, mem := filepath.Join(dir, "vm.state"), filepath.Join(dir, "vm.mem")
	if err := s.vm.CreateSnapshot(context.Background(), vmm.SnapshotParams{StatePath: state, MemPath: mem}); err != nil {
		t.Fatalf("CreateSnapshot: %v", err)
	}
	s.vm.Stop()
	open.Close()

	// Two restores of the one snapshot, each with its own socket
	// (Firecracker's vsock_override), one after the other.
	for i := range 2 {
		moved := vpUDS(t, fmt.Sprintf("clone%d.sock", i))
		inR, inW := io.Pipe()
		outR, outW := io.Pipe()
		vm, err := vmm.Restore(context.Background(), vmm.RestoreConfig{StatePath: state, MemPath: mem, Resume: true,
			Console: outW, ConsoleInput: inR, Overrides: vmm.VirtioOverrides{VsockUDSPath: moved}})
		if err != nil {
			t.Fatalf("restore %d: %v", i, err)
		}
		c := attach(t, vm, inW, outR, outW)
		dialStart := time.Now()
		conn := vpDial(t, moved, 1234)
		// Logged, not asserted (the machine is shared): volt-vmm holds a
		// host connection until the guest re-posts its event buffer after
		// the transport reset, at most 250 ms.
		t.Logf("restore %d: first connection accepted %v after the restore", i, time.Since(dialStart))
		vpEcho(t, conn, []byte(fmt.Sprintf("after restore %d", i)))
		vpEcho(t, conn, vpRandom(t, 100<<10))
		conn.Close()
		if res := vpAgentRun(t, moved, "echo", "agent", "after", "restore"); string(res.Stdout) != "agent after restore\n" || !res.Success() {
			t.Errorf("restore %d: agent answered %q (%v)", i, res.Stdout, res.Status)
		}
		// One transport reset, both listeners kept, the snapshot's
		// connection gone.
		vpWaitStatus(t, c, `listeners=2 conns=0 resets=1 `)
		if _, err := os.Stat(uds); !os.IsNotExist(err) {
			t.Errorf("restore %d: the original socket %s exists (%v): the override was not used", i, uds, err)
		}
		vpPowerOff(t, c)
	}
}

func TestProbeMalformedChainsBreakOnlyTheirDevice(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, bytes.Repeat([]byte{0x11}, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	uds := vpUDS(t, "v.sock")
	var log vpLog
	s := startProbe(t, vmm.Config{
		Drives:  []vmm.DriveConfig{{ID: "d", Path: disk}},
		Vsock:   &vmm.VsockConfig{GuestCID: 3, UDSPath: uds},
		Entropy: &vmm.EntropyConfig{},
		Logger:  log.logger(),
	})
	s.expect(probe.ReadyLine)
	vpWant(s, "vsock listen 1234", `vsock listening 1234`)
	// Each kind, and what the queue's validation (vmm/virtio/chain.go,
	// queue.go) must say about it in the VMM's log.
	kinds := []struct{ kind, reason string }{
		{"loop", `longer than [0-9]+ descriptors \(a loop\?\)`},
		{"outside", `descriptor [0-9]+: `},
		{"order", `device-readable descriptor [0-9]+ follows a device-writable one`},
		{"indirect", `indirect table of 24 bytes is not a whole number of descriptors`},
		{"head", `chain head [0-9]+ is outside the [0-9]+-entry descriptor table`},
		{"idx", `avail.idx [0-9]+ is [0-9]+ entries ahead`},
	}
	broken := 0
	for _, dev := range []string{"block", "entropy", "vsock"} {
		for _, k := range kinds {
			t.Run(dev+"/"+k.kind, func(t *testing.T) {
				before := len(log.String())
				vpWant(s, "virtio evil "+dev+" "+k.kind, `virtio evil `+dev+` `+k.kind+` status=0x4f needs_reset=1 reinit=ok`)
				broken++
				if logged := log.String()[before:]; !regexp.MustCompile(`virtio: device broken, needs reset.*device=virtio-` + dev + `0.*` + k.reason).MatchString(logged) {
					t.Errorf("the VMM's log does not say why %s broke (want %q):\n%s", dev, k.reason, logged)
				}
				// The VMM runs on, every device works, the broken one
				// too, after the driver's reset.
				vpWant(s, "echo alive", `alive`)
				vpWant(s, "blk read 5", `blk read 5 1 hash=0x[0-9a-f]{16} head=(11){16}`)
				vpWant(s, "rng 32", `rng 32 got=32 .*`)
				c := vpDial(t, uds, 1234)
				vpEcho(t, c, []byte(dev+" "+k.kind))
				c.Close()
			})
		}
	}
	// Left broken, vsock comes back by itself: the device's
	// configuration-change interrupt wakes the idle probe, which sees
	// DEVICE_NEEDS_RESET and starts the device over.
	vpWant(s, "virtio evil vsock loop keep", `virtio evil vsock loop status=0x4f needs_reset=1 reinit=no`)
	broken++
	vpWaitStatus(t, s, ` recoveries=1$`)
	c := vpDial(t, uds, 1234)
	vpEcho(t, c, []byte("recovered"))
	c.Close()
	vpPowerOff(t, s)
	if n := strings.Count(log.String(), "virtio: device broken, needs reset"); n != broken {
		t.Errorf("the VMM logged %d broken devices, want %d; log:\n%s", n, broken, log.String())
	}
}
