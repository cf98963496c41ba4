package vsock

import (
	"bytes"
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"testing"
)

// FuzzDecodeHeader: any bytes decode without panicking, re-encode to the same
// bytes, and classify without panicking.
func FuzzDecodeHeader(f *testing.F) {
	req, _ := hex.DecodeString(requestHex)
	f.Add(req, 0)
	f.Add(make([]byte, 43), 0)
	f.Add(bytes.Repeat([]byte{0xff}, 44), 1<<20)
	f.Fuzz(func(t *testing.T, b []byte, avail int) {
		h, err := DecodeHeader(b)
		if err != nil {
			if len(b) >= HeaderSize {
				t.Fatalf("%d bytes rejected: %v", len(b), err)
			}
			return
		}
		out := make([]byte, HeaderSize)
		h.Encode(out)
		if !bytes.Equal(out, b[:HeaderSize]) {
			t.Fatalf("round trip %x != %x", out, b[:HeaderSize])
		}
		v, _ := CheckTx(h, 3, avail)
		if v == Accept && h.Op != OpRst && (h.Len > MaxPayload || int64(h.Len) > int64(avail)) {
			t.Fatalf("accepted a payload longer than its chain: %v avail %d", h, avail)
		}
	})
}

// FuzzMuxerPackets feeds arbitrary guest packets to a muxer with a live host
// listener behind port 52 and checks that it neither panics nor grows
// without bound (connections, queued packets, buffered bytes), and that
// everything it sends the guest is well formed.
func FuzzMuxerPackets(f *testing.F) {
	seed := func(hs ...Header) []byte {
		var b []byte
		for _, h := range hs {
			var e [HeaderSize]byte
			h.Encode(e[:])
			b = append(b, e[:]...)
			b = append(b, make([]byte, min(h.Len, 64))...)
		}
		return b
	}
	g := func(op Op, sp, dp uint32, n uint32) Header {
		return Header{SrcCID: testCID, DstCID: HostCID, SrcPort: sp, DstPort: dp, Type: TypeStream, Op: op, Len: n, BufAlloc: 4096}
	}
	f.Add(seed(g(OpRequest, 1025, 52, 0), g(OpRW, 1025, 52, 10), g(OpShutdown, 1025, 52, 0), g(OpRst, 1025, 52, 0)))
	f.Add(seed(g(OpRequest, 1025, 53, 0), g(OpCreditRequest, 1, 2, 0), g(OpRW, 1025, 52, 60000)))
	f.Add(seed(g(OpRequest, 1025, 52, 0), g(OpRequest, 1025, 52, 0), g(OpResponse, 1025, 52, 0)))
	f.Fuzz(func(t *testing.T, in []byte) {
		dir, err := os.MkdirTemp("", "vskf")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		path := filepath.Join(dir, "v")
		l, err := net.Listen("unix", path+"_52")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		p := defaultParams()
		p.bufAlloc = 4096
		m, err := newMuxer(testCID, path, muxerOptions{params: p, maxConns: 8})
		if err != nil {
			t.Fatal(err)
		}
		defer m.close()
		buf := make([]byte, 512)
		drain := func() {
			var h Header
			for i := 0; m.recv(&h, sgList{buf}); i++ {
				if i > 10000 {
					t.Fatal("recv never runs dry")
				}
				if h.SrcCID != HostCID || h.DstCID != testCID || h.Type != TypeStream || h.Len > uint32(len(buf)) {
					t.Fatalf("malformed packet to the guest: %v", h)
				}
			}
		}
		for len(in) >= HeaderSize {
			h, _ := DecodeHeader(in)
			in = in[HeaderSize:]
			n := min(int(h.Len), len(in), 64<<10)
			m.send(h, sgList{in[:n]})
			in = in[n:]
			m.poll(0)
			drain()
			if len(m.conns) > 8 || len(m.byFd) > 8 || len(m.rxq)-m.rxHead > 8+maxPendingRsts {
				t.Fatalf("unbounded: %d conns %d fds %d queued", len(m.conns), len(m.byFd), len(m.rxq)-m.rxHead)
			}
			for _, c := range m.conns {
				if c.tx.len() > p.bufAlloc {
					t.Fatalf("buffered %d beyond %d", c.tx.len(), p.bufAlloc)
				}
			}
		}
	})
}
