package vsock

import "errors"

// errTxBufFull is returned when the guest sends more than the credit it was
// given: a bug or an attack, answered by resetting the connection.
var errTxBufFull = errors.New("vsock: guest overran its credit (connection buffer full)")

// txBuf holds guest-to-host bytes that the host socket did not accept yet.
// Its capacity is the buf_alloc the connection advertises to the guest, so
// an honest guest can never overrun it. The ring is allocated on first use:
// most connections never need it, because the host socket takes the bytes
// at once.
type txBuf struct {
	data  []byte // nil until first needed; len(data) == capacity after
	capa  int
	head  int // index of the oldest byte
	count int
}

func newTxBuf(capacity int) txBuf { return txBuf{capa: capacity} }

func (t *txBuf) len() int    { return t.count }
func (t *txBuf) empty() bool { return t.count == 0 }
func (t *txBuf) free() int   { return t.capa - t.count }

// push appends all of p or nothing.
func (t *txBuf) push(p []byte) error {
	if len(p) > t.free() {
		return errTxBufFull
	}
	if len(p) == 0 {
		return nil
	}
	if t.data == nil {
		t.data = make([]byte, t.capa)
	}
	tail := (t.head + t.count) % t.capa
	n := copy(t.data[tail:], p)
	copy(t.data, p[n:])
	t.count += len(p)
	return nil
}

// segments returns the buffered bytes as at most two slices, oldest first.
func (t *txBuf) segments() (a, b []byte) {
	if t.count == 0 {
		return nil, nil
	}
	end := t.head + t.count
	if end <= t.capa {
		return t.data[t.head:end], nil
	}
	return t.data[t.head:], t.data[:end-t.capa]
}

// consume drops the n oldest bytes (after they were written out).
func (t *txBuf) consume(n int) {
	if n > t.count {
		n = t.count
	}
	t.count -= n
	if t.count == 0 {
		t.head = 0
		return
	}
	t.head = (t.head + n) % t.capa
}

// clear forgets everything buffered (on reset: the bytes are forfeit).
func (t *txBuf) clear() { t.head, t.count = 0, 0 }
