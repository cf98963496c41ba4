package vsock

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// A REQUEST from guest CID 3 port 0x400 to the host's port 52, as Linux lays
// it out: little-endian, packed, 44 bytes.
const requestHex = "0300000000000000" + "0200000000000000" + // src_cid, dst_cid
	"00040000" + "34000000" + "00000000" + // src_port, dst_port, len
	"0100" + "0100" + "00000000" + // type, op, flags
	"00000400" + "00000000" // buf_alloc 256 KiB, fwd_cnt

func TestDecodeHeaderLayout(t *testing.T) {
	b, _ := hex.DecodeString(requestHex)
	h, err := DecodeHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	want := Header{SrcCID: 3, DstCID: 2, SrcPort: 0x400, DstPort: 52, Type: TypeStream, Op: OpRequest, BufAlloc: 256 << 10}
	if h != want {
		t.Fatalf("decoded %v, want %v", h, want)
	}
	out := make([]byte, HeaderSize)
	h.Encode(out)
	if !bytes.Equal(out, b) {
		t.Fatalf("encoded %x, want %x", out, b)
	}
}

func TestDecodeHeaderShort(t *testing.T) {
	for _, n := range []int{0, 1, 43} {
		if _, err := DecodeHeader(make([]byte, n)); !errors.Is(err, ErrShortHeader) {
			t.Errorf("%d bytes: err %v, want ErrShortHeader", n, err)
		}
	}
	if _, err := DecodeHeader(make([]byte, 100)); err != nil {
		t.Errorf("100 bytes: %v", err)
	}
}

func TestCheckTx(t *testing.T) {
	const cid = 3
	ok := Header{SrcCID: cid, DstCID: HostCID, SrcPort: 1024, DstPort: 52, Type: TypeStream, Op: OpRW, Len: 10}
	with := func(f func(*Header)) Header { h := ok; f(&h); return h }
	tests := []struct {
		name  string
		h     Header
		avail int
		want  Verdict
		why   string
	}{
		{"data", ok, 10, Accept, ""},
		{"data with slack", ok, 4096, Accept, ""},
		{"request", with(func(h *Header) { h.Op, h.Len = OpRequest, 0 }), 0, Accept, ""},
		{"wrong source CID", with(func(h *Header) { h.SrcCID = 4 }), 10, Drop, "source CID"},
		{"upper CID bits", with(func(h *Header) { h.SrcCID = 1<<32 | cid }), 10, Drop, "source CID"},
		{"to another guest", with(func(h *Header) { h.DstCID = 5 }), 10, Drop, "destination CID"},
		{"to itself", with(func(h *Header) { h.DstCID = cid }), 10, Drop, "destination CID"},
		{"seqpacket", with(func(h *Header) { h.Type = 2 }), 10, Reset, "socket type"},
		{"seqpacket rst is not answered", with(func(h *Header) { h.Type, h.Op, h.Len = 2, OpRst, 0 }), 0, Accept, ""},
		{"too long", with(func(h *Header) { h.Len = MaxPayload + 1 }), 1 << 20, Reset, "exceeds 65536"},
		{"huge length", with(func(h *Header) { h.Len = 0xffffffff }), 10, Reset, "exceeds"},
		{"longer than chain", with(func(h *Header) { h.Len = 11 }), 10, Reset, "descriptor chain"},
		{"payload on control", with(func(h *Header) { h.Op = OpCreditUpdate }), 10, Reset, "carries"},
		{"unknown op", with(func(h *Header) { h.Op, h.Len = 9, 0 }), 0, Reset, "unknown operation"},
		{"invalid op", with(func(h *Header) { h.Op, h.Len = OpInvalid, 0 }), 0, Reset, "unknown operation"},
		{"max payload", with(func(h *Header) { h.Len = MaxPayload }), MaxPayload, Accept, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, why := CheckTx(tt.h, cid, tt.avail)
			if v != tt.want || !strings.Contains(why, tt.why) {
				t.Fatalf("CheckTx = %d %q, want %d containing %q", v, why, tt.want, tt.why)
			}
		})
	}
}

func TestSGList(t *testing.T) {
	a, b, c := []byte("hello "), []byte("vsock "), []byte("world")
	s := sgList{a, b, c}
	if s.size() != 17 {
		t.Fatalf("size %d", s.size())
	}
	got := make([]byte, 8)
	if n := s.gather(got); n != 8 || string(got) != "hello vs" {
		t.Fatalf("gather %d %q", n, got)
	}
	rest := s.skip(8, nil)
	var all []byte
	for _, r := range rest {
		all = append(all, r...)
	}
	if string(all) != "ock world" {
		t.Fatalf("skip: %q", all)
	}
	if n := rest.limit(5).size(); n != 5 {
		t.Fatalf("limit: %d", n)
	}
	dst := sgList{make([]byte, 3), make([]byte, 10)}
	if n := dst.scatter([]byte("abcdef")); n != 6 || string(dst[0]) != "abc" || string(dst[1][:3]) != "def" {
		t.Fatalf("scatter %d %q %q", n, dst[0], dst[1])
	}
	if len(s.skip(100, nil)) != 0 {
		t.Fatal("skip past the end is not empty")
	}
}

func TestParseConnect(t *testing.T) {
	tests := []struct {
		line string
		port uint32
		ok   bool
	}{
		{"CONNECT 52", 52, true},
		{"connect 52", 52, true},
		{"Connect 4294967295", 0xffffffff, true},
		{"CONNECT 52\r", 52, true},
		{"CONNECT  52 ", 52, true},
		{"CONNECT 4294967296", 0, false},
		{"CONNECT -1", 0, false},
		{"CONNECT", 0, false},
		{"CONNECT ", 0, false},
		{"CONNEC 52", 0, false},
		{"OK 52", 0, false},
		{"CONNECT 0x34", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		port, err := parseConnect([]byte(tt.line))
		if (err == nil) != tt.ok || port != tt.port {
			t.Errorf("parseConnect(%q) = %d, %v; want %d ok=%v", tt.line, port, err, tt.port, tt.ok)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	long := "/" + strings.Repeat("a", 106)
	tests := []struct {
		name string
		cfg  Config
		err  string
	}{
		{"ok", Config{GuestCID: 3, UDSPath: "/tmp/v.sock"}, ""},
		{"relative", Config{GuestCID: 3, UDSPath: "./v.sock"}, ""},
		{"max cid", Config{GuestCID: 0xfffffffe, UDSPath: "v"}, ""},
		{"longest path", Config{GuestCID: 3, UDSPath: long}, ""},
		{"cid 2", Config{GuestCID: 2, UDSPath: "v"}, "out of range"},
		{"cid 0", Config{GuestCID: 0, UDSPath: "v"}, "out of range"},
		{"cid any", Config{GuestCID: 0xffffffff, UDSPath: "v"}, "out of range"},
		{"64-bit cid", Config{GuestCID: 1 << 32, UDSPath: "v"}, "out of range"},
		{"no path", Config{GuestCID: 3}, "empty"},
		{"too long", Config{GuestCID: 3, UDSPath: long + "a"}, "at most 107"},
		{"nul", Config{GuestCID: 3, UDSPath: "a\x00b"}, "NUL"},
		{"abstract", Config{GuestCID: 3, UDSPath: "@v"}, "abstract"},
		{"directory", Config{GuestCID: 3, UDSPath: "/tmp/"}, "directory"},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("%s: Validate() = %v, want %q", tt.name, err, tt.err)
		}
	}
	if (Config{GuestCID: 3, UDSPath: long}).GuestPortPathsFit() {
		t.Error("a 107-byte path leaves room for port suffixes")
	}
	if !(Config{GuestCID: 3, UDSPath: "/run/v.sock"}).GuestPortPathsFit() {
		t.Error("a short path has no room for port suffixes")
	}
}

func TestTxBuf(t *testing.T) {
	b := newTxBuf(8)
	if b.data != nil {
		t.Fatal("buffer allocated before use")
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(b.push([]byte("abcde")))
	b.consume(3)
	must(b.push([]byte("fghijk"))) // wraps: "de" + "fghijk" = 8 bytes
	if b.len() != 8 || b.free() != 0 {
		t.Fatalf("len %d free %d", b.len(), b.free())
	}
	if err := b.push([]byte("x")); !errors.Is(err, errTxBufFull) {
		t.Fatalf("push into a full buffer: %v", err)
	}
	x, y := b.segments()
	if got := string(x) + string(y); got != "defghijk" {
		t.Fatalf("segments %q", got)
	}
	b.consume(100)
	if !b.empty() {
		t.Fatal("not empty after consuming everything")
	}
	if err := b.push(make([]byte, 9)); !errors.Is(err, errTxBufFull) {
		t.Fatal("a push larger than the buffer was taken")
	}
}
