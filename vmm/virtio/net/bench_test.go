package net

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/voltvmm/volt/vmm/memory"
	"github.com/voltvmm/volt/vmm/netdev"
	"github.com/voltvmm/volt/vmm/netdev/nettest"
	"golang.org/x/sys/unix"
)

// Benchmarks of the host-side cost per frame, through the device to a
// real TAP in a network namespace and back. The simulated guest's work
// (writing descriptors, reaping the used ring) is in the figures too; it
// is small next to the system calls. Each reports ns/op per frame and
// MB/s of frame bytes. Run:
//
//	go test -run '^$' -bench . -benchtime 20000x -count 5 ./vmm/virtio/net
//
// BenchmarkTapWritevBaseline is the floor for TX: the same frames written
// to the same kind of TAP with one writev each, without the device.

var benchSizes = []struct {
	name string
	len  int
	tso  bool
}{
	{"64B", 64, false},
	{"1514B", 1514, false},
	{"64KiB-TSO", 65000, true},
}

// benchFrame is an Ethernet/IPv4/TCP frame of n bytes to a MAC the host
// does not own (the kernel drops it at once, as it would traffic for
// another host), with the header for it.
func benchFrame(n int, tso bool) (Header, []byte) {
	f := ethFrame(n, 0)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	f[14] = 0x45
	binary.BigEndian.PutUint16(f[16:], uint16(min(n-14, 0xffff)))
	f[14+9] = 6
	f[14+20+12] = 5 << 4
	if !tso {
		return Header{}, f
	}
	return Header{Flags: HdrFNeedsCsum, GSOType: GSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}, f
}

func benchTapGuest(b *testing.B) (*simGuest, *nettest.NS) {
	ns := nettest.New(b)
	g := tapDevice(b, ns, BackendConfig{Kind: BackendTap, Name: "btap0"},
		Config{MAC: testMAC, Log: slog.New(slog.DiscardHandler)})
	// No IPv6 on the TAP: its neighbour discovery would mix frames of the
	// kernel's own into the receive figures.
	if err := ns.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/btap0/disable_ipv6", []byte("1"), 0)
	}); err != nil {
		b.Logf("disable IPv6 on btap0: %v", err)
	}
	if err := g.probe(wantAll); err != nil {
		b.Fatal(err)
	}
	return g, ns
}

// BenchmarkTxToTap: the guest queues batch frames, notifies once and waits
// for them all to be used.
func BenchmarkTxToTap(b *testing.B) {
	for _, size := range benchSizes {
		for _, batch := range []int{1, 32} {
			b.Run(fmt.Sprintf("%s/batch%d", size.name, batch), func(b *testing.B) {
				g, _ := benchTapGuest(b)
				hdr, frame := benchFrame(size.len, size.tso)
				r := g.rings[txQueue]
				// Every transmit slot holds the frame already: the guest's
				// per-frame work is its descriptors.
				var h [HeaderSize]byte
				hdr.Encode(h[:])
				for i := range simQueue {
					slot := memory.GuestAddr(simTxBase + i*simTxSlot)
					g.mem.Write(slot, h[:])
					g.mem.Write(slot+HeaderSize, frame)
				}
				b.SetBytes(int64(len(frame)))
				b.ResetTimer()
				for sent := 0; sent < b.N; {
					n := min(batch, b.N-sent)
					for range n {
						slot := memory.GuestAddr(simTxBase + int(r.free[0])*simTxSlot)
						r.add([]simDesc{{addr: slot, len: HeaderSize}, {addr: slot + HeaderSize, len: uint32(len(frame))}})
					}
					g.tr.Notify(txQueue)
					for done := 0; done < n; {
						got := len(r.reap())
						done += got
						if got == 0 {
							g.waitIRQ(time.Second)
						}
					}
					sent += n
				}
				b.StopTimer()
				if m := g.dev.Metrics(); m.TxFrames != uint64(b.N) {
					b.Fatalf("sent %d of %d frames (metrics %+v)", m.TxFrames, b.N, m)
				}
			})
		}
	}
}

// BenchmarkTapWritevBaseline writes the same frames to a TAP directly.
func BenchmarkTapWritevBaseline(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(size.name, func(b *testing.B) {
			ns := nettest.New(b)
			var tap *netdev.Tap
			if err := ns.Do(func() error {
				var err error
				tap, err = netdev.OpenTap("btap0")
				if err == nil {
					err = tap.SetOffload(0)
				}
				return err
			}); err != nil {
				b.Fatal(err)
			}
			defer tap.Close()
			hdr, frame := benchFrame(size.len, size.tso)
			h := make([]byte, HeaderSize)
			hdr.Encode(h)
			iov := [][]byte{h, frame}
			b.SetBytes(int64(len(frame)))
			b.ResetTimer()
			for range b.N {
				if _, err := tap.Writev(iov); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// packetSocket opens a packet socket on ifname inside ns: what it sends
// leaves through the TAP towards its reader.
func packetSocket(b *testing.B, ns *nettest.NS, ifname string) int {
	var sock int
	if err := ns.Do(func() error {
		idx, err := netdev.LinkIndex(ifname)
		if err != nil {
			return err
		}
		sock, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		return unix.Bind(sock, &unix.SockaddrLinklayer{Protocol: 0, Ifindex: idx})
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { unix.Close(sock) })
	return sock
}

// rxSizes are the receive benchmarks' frames (a packet socket cannot send
// a TSO super-frame).
var rxSizes = []struct {
	name string
	len  int
}{{"64B", 64}, {"1514B", 1514}}

// BenchmarkTapReadBaseline is the floor for RX: the same frames sent the
// same way, read from the TAP by a goroutine of its own waiting in the
// poller (as the device's receive worker does), without the device.
func BenchmarkTapReadBaseline(b *testing.B) {
	for _, size := range rxSizes {
		b.Run(size.name, func(b *testing.B) {
			ns := nettest.New(b)
			var tap *netdev.Tap
			if err := ns.Do(func() error {
				var err error
				if tap, err = netdev.OpenTap("btap0"); err != nil {
					return err
				}
				return os.WriteFile("/proc/sys/net/ipv6/conf/btap0/disable_ipv6", []byte("1"), 0)
			}); err != nil {
				b.Fatal(err)
			}
			defer tap.Close()
			sock := packetSocket(b, ns, "btap0")
			_, frame := benchFrame(size.len, false)
			const batch = 32
			rc, err := tap.SyscallConn()
			if err != nil {
				b.Fatal(err)
			}
			batches := make(chan struct{}, 1)
			readErr := make(chan error, 1)
			go func() {
				buf := make([]byte, MaxPacketLen)
				count := 0
				for count < b.N {
					var rerr error
					var k int
					if err := rc.Read(func(uintptr) bool {
						k, rerr = tap.Read(buf)
						return rerr != unix.EAGAIN
					}); err != nil || rerr != nil {
						readErr <- errors.Join(err, rerr)
						return
					}
					if k != HeaderSize+len(frame) {
						continue
					}
					count++
					if count%batch == 0 || count == b.N {
						batches <- struct{}{}
					}
				}
				readErr <- nil
			}()
			b.SetBytes(int64(len(frame)))
			b.ResetTimer()
			for got := 0; got < b.N; {
				n := min(batch, b.N-got)
				for range n {
					if err := unix.Send(sock, frame, 0); err != nil {
						b.Fatal(err)
					}
				}
				select {
				case <-batches:
				case <-time.After(10 * time.Second):
					b.Fatal("frames lost")
				}
				got += n
			}
			b.StopTimer()
			if err := <-readErr; err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkRxFromTap: the host sends batch frames out of the TAP (a packet
// socket on it), the guest waits for them all, re-posting each buffer.
func BenchmarkRxFromTap(b *testing.B) {
	for _, size := range rxSizes {
		b.Run(size.name, func(b *testing.B) {
			g, ns := benchTapGuest(b)
			sock := packetSocket(b, ns, "btap0")
			_, frame := benchFrame(size.len, false)
			copy(frame, testMAC[:])
			copy(frame[6:], net.HardwareAddr{2, 0, 0, 0, 0, 0x77})
			r := g.rings[rxQueue]
			g.postRx(simQueue)
			const batch = 32
			b.SetBytes(int64(len(frame)))
			b.ResetTimer()
			for got := 0; got < b.N; {
				n := min(batch, b.N-got)
				for range n {
					if err := unix.Send(sock, frame, 0); err != nil {
						b.Fatal(err)
					}
				}
				for done := 0; done < n; {
					used := r.reap()
					for _, u := range used {
						if u.len != uint32(HeaderSize+len(frame)) {
							// A frame of the kernel's own (IPv6 neighbour
							// discovery) slipped in: not ours.
							done--
						}
					}
					done += len(used)
					if len(used) > 0 {
						g.postRx(len(used))
					} else {
						g.waitIRQ(time.Second)
					}
				}
				got += n
			}
			b.StopTimer()
			if m := g.dev.Metrics(); m.RxDroppedTooBig+m.RxDroppedOffload+m.RxDroppedMalformed != 0 {
				b.Fatalf("drops: %+v", m)
			}
		})
	}
}

// BenchmarkDevicePair runs the same loops over a socket pair instead of a
// TAP: the device's own cost per frame (and its allocations, with
// -benchmem), with the kernel's network stack out of the picture.
func BenchmarkDevicePair(b *testing.B) {
	for _, dir := range []string{"tx", "rx"} {
		b.Run(dir+"/1514B", func(b *testing.B) {
			g, _, peer := pairDevice(b, fullOffload, Config{Log: slog.New(slog.DiscardHandler)})
			if err := g.probe(wantAll); err != nil {
				b.Fatal(err)
			}
			_, frame := benchFrame(1514, false)
			pkt := packet(Header{}, frame)
			const batch = 32
			b.SetBytes(int64(len(frame)))
			switch dir {
			case "tx":
				// The peer is drained by a goroutine of its own; a frame the
				// device finds no room for in the socket is dropped and
				// counted, as it would be on a TAP.
				var read atomic.Int64
				drained := make(chan struct{})
				go func() {
					defer close(drained)
					buf := make([]byte, MaxPacketLen)
					for {
						if _, err := peer.Read(buf); err != nil {
							return
						}
						read.Add(1)
					}
				}()
				r := g.rings[txQueue]
				var h [HeaderSize]byte
				for i := range simQueue {
					slot := memory.GuestAddr(simTxBase + i*simTxSlot)
					g.mem.Write(slot, h[:])
					g.mem.Write(slot+HeaderSize, frame)
				}
				b.ResetTimer()
				for sent := 0; sent < b.N; {
					n := min(batch, b.N-sent)
					for range n {
						slot := memory.GuestAddr(simTxBase + int(r.free[0])*simTxSlot)
						r.add([]simDesc{{addr: slot, len: HeaderSize}, {addr: slot + HeaderSize, len: uint32(len(frame))}})
					}
					g.tr.Notify(txQueue)
					for done := 0; done < n; {
						got := len(r.reap())
						done += got
						if got == 0 {
							g.waitIRQ(time.Second)
						}
					}
					sent += n
				}
				b.StopTimer()
				m := g.dev.Metrics()
				for deadline := time.Now().Add(wait); read.Load() < int64(m.TxFrames) && time.Now().Before(deadline); {
					time.Sleep(time.Millisecond)
				}
				peer.SetReadDeadline(time.Unix(1, 0))
				<-drained
				if read.Load() != int64(m.TxFrames) || m.TxFrames+m.TxDroppedBackend != uint64(b.N) {
					b.Fatalf("peer read %d frames, device sent %d and dropped %d of %d", read.Load(), m.TxFrames, m.TxDroppedBackend, b.N)
				}
				b.ReportMetric(float64(m.TxDroppedBackend)/float64(b.N), "drops/frame")
			case "rx":
				r := g.rings[rxQueue]
				g.postRx(simQueue)
				b.ResetTimer()
				for got := 0; got < b.N; {
					n := min(batch, b.N-got)
					for range n {
						if _, err := peer.Write(pkt); err != nil {
							b.Fatal(err)
						}
					}
					for done := 0; done < n; {
						used := r.reap()
						done += len(used)
						if len(used) > 0 {
							g.postRx(len(used))
						} else {
							g.waitIRQ(time.Second)
						}
					}
					got += n
				}
			}
		})
	}
}
