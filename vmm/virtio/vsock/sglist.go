package vsock

// An sgList is a descriptor chain's buffers as host slices of guest memory,
// in chain order, already bounds-checked by the queue layer. Payloads are
// read from and written to these slices in place: no copy through a VMM
// buffer on the data path.
type sgList [][]byte

// size is the total length of the list.
func (s sgList) size() int {
	n := 0
	for _, b := range s {
		n += len(b)
	}
	return n
}

// gather copies the list's first len(dst) bytes into dst and returns how
// many it copied (fewer when the list is shorter).
func (s sgList) gather(dst []byte) int {
	n := 0
	for _, b := range s {
		if n == len(dst) {
			break
		}
		n += copy(dst[n:], b)
	}
	return n
}

// scatter copies src over the list's first bytes and returns how many it
// copied.
func (s sgList) scatter(src []byte) int {
	n := 0
	for _, b := range s {
		if n == len(src) {
			break
		}
		n += copy(b, src[n:])
	}
	return n
}

// skip returns the list past its first n bytes, reusing dst's backing array
// (so that the hot path does not allocate); the slices alias the original
// memory.
func (s sgList) skip(n int, dst sgList) sgList {
	dst = dst[:0]
	for _, b := range s {
		if n >= len(b) {
			n -= len(b)
			continue
		}
		dst = append(dst, b[n:])
		n = 0
	}
	return dst
}

// limit returns the list cut to its first n bytes, in place.
func (s sgList) limit(n int) sgList {
	for i, b := range s {
		if n <= len(b) {
			s[i] = b[:n]
			return s[:i+1]
		}
		n -= len(b)
	}
	return s
}
