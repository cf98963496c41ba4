package vsock

import (
	"bytes"
	"encoding/hex"
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
