package rootfs

import (
	"errors"
	"fmt"
	"io"
	"strconv"
)

// The "newc" cpio format is the one the kernel unpacks as initramfs
// (Documentation/driver-api/early-userspace/buffer-format.rst): a 110-byte
// ASCII header of a magic and thirteen 8-digit hex fields, the NUL-ended
// name, padding to 4 bytes, the data, padding to 4 bytes; the archive ends
// with an entry named TRAILER!!!.

const (
	cpioMagic     = "070701"
	cpioMagicCRC  = "070702" // same layout with a checksum field; read, never written
	cpioHeaderLen = 110
	cpioTrailer   = "TRAILER!!!"
	// cpioMaxName is PATH_MAX: the kernel rejects longer names, and a
	// reader must bound what it allocates for one.
	cpioMaxName = 4096
)

// File type bits of Header.Mode, as in stat(2).
const (
	TypeMask    = 0o170000
	TypeDir     = 0o040000
	TypeReg     = 0o100000
	TypeSymlink = 0o120000
	TypeChar    = 0o020000
	TypeBlock   = 0o060000
	TypeFIFO    = 0o010000
	TypeSocket  = 0o140000
)

// Header is one newc entry. Names have no leading slash ("bin/sh"); a
// symlink's target is its data.
type Header struct {
	Name                 string
	Mode                 uint32 // Type* bits | permission bits
	UID, GID             uint32
	NLink                uint32
	ModTime              uint32 // seconds since the epoch
	Size                 uint32
	DevMajor, DevMinor   uint32 // device holding the file; only hard links use it
	RDevMajor, RDevMinor uint32 // the device a TypeChar or TypeBlock node stands for
	Ino                  uint32
	Check                uint32 // checksum of 070702 archives; ignored
}

// ErrWriteTooLong is returned when an entry's data exceeds its Header.Size.
var ErrWriteTooLong = errors.New("cpio: write beyond entry size")

// Writer writes a newc archive. Entries get distinct inode numbers unless
// the header sets one, since the kernel links entries that share an inode
// and have more than one link.
type Writer struct {
	w       io.Writer
	written int64  // bytes of the archive so far, for padding
	remain  uint32 // data bytes the current entry still owes
	nextIno uint32
	closed  bool
}

// NewWriter returns a Writer writing to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w, nextIno: 1} }

func (w *Writer) write(p []byte) error {
	n, err := w.w.Write(p)
	w.written += int64(n)
	return err
}

func (w *Writer) pad() error {
	var zero [3]byte
	if n := (4 - w.written%4) % 4; n > 0 {
		return w.write(zero[:n])
	}
	return nil
}

// WriteHeader finishes the previous entry and starts h. The caller then
// writes exactly h.Size bytes of data.
func (w *Writer) WriteHeader(h *Header) error {
	if h.Name == cpioTrailer {
		return fmt.Errorf("cpio: %s is reserved for the end of the archive", cpioTrailer)
	}
	return w.writeHeader(h)
}

func (w *Writer) writeHeader(h *Header) error {
	if w.closed {
		return errors.New("cpio: write after close")
	}
	if w.remain > 0 {
		return fmt.Errorf("cpio: %d bytes of the previous entry missing", w.remain)
	}
	if h.Name == "" || len(h.Name)+1 > cpioMaxName {
		return fmt.Errorf("cpio: name %q: length must be 1 to %d", h.Name, cpioMaxName-1)
	}
	for i := 0; i < len(h.Name); i++ {
		if h.Name[i] == 0 {
			return fmt.Errorf("cpio: name %q contains a NUL byte", h.Name)
		}
	}
	hdr := *h
	if hdr.Ino == 0 && hdr.Name != cpioTrailer {
		hdr.Ino = w.nextIno
		w.nextIno++
	}
	if hdr.NLink == 0 {
		hdr.NLink = 1
		if hdr.Mode&TypeMask == TypeDir {
			hdr.NLink = 2
		}
	}
	if err := w.pad(); err != nil {
		return err
	}
	buf := make([]byte, 0, cpioHeaderLen+len(hdr.Name)+1)
	buf = append(buf, cpioMagic...)
	for _, v := range []uint32{
		hdr.Ino, hdr.Mode, hdr.UID, hdr.GID, hdr.NLink, hdr.ModTime, hdr.Size,
		hdr.DevMajor, hdr.DevMinor, hdr.RDevMajor, hdr.RDevMinor,
		uint32(len(hdr.Name) + 1), 0,
	} {
		buf = fmt.Appendf(buf, "%08x", v)
	}
	buf = append(buf, hdr.Name...)
	buf = append(buf, 0)
	if err := w.write(buf); err != nil {
		return fmt.Errorf("cpio: header of %s: %w", hdr.Name, err)
	}
	w.remain = hdr.Size
	return w.pad()
}

// Write writes data of the current entry.
func (w *Writer) Write(p []byte) (int, error) {
	if uint64(len(p)) > uint64(w.remain) {
		return 0, ErrWriteTooLong
	}
	n, err := w.w.Write(p)
	w.written += int64(n)
	w.remain -= uint32(n)
	return n, err
}

// Close writes the trailer. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return nil
	}
	if err := w.writeHeader(&Header{Name: cpioTrailer}); err != nil {
		return err
	}
	w.closed = true
	return w.pad()
}

// Reader reads a newc archive, which it treats as untrusted: every length
// is checked before use.
type Reader struct {
	r      io.Reader
	read   int64
	remain int64 // data bytes of the current entry not yet read
	done   bool
}

// NewReader returns a Reader reading from r.
func NewReader(r io.Reader) *Reader { return &Reader{r: r} }

func (r *Reader) readFull(p []byte) error {
	n, err := io.ReadFull(r.r, p)
	r.read += int64(n)
	return err
}

func (r *Reader) skip(n int64) error {
	m, err := io.CopyN(io.Discard, r.r, n)
	r.read += m
	return err
}

// Next advances to the next entry and returns io.EOF after the trailer.
func (r *Reader) Next() (*Header, error) {
	if r.done {
		return nil, io.EOF
	}
	if err := r.skip(r.remain + (4-(r.read+r.remain)%4)%4); err != nil {
		return nil, fmt.Errorf("cpio: skip to next entry: %w", unexpected(err))
	}
	r.remain = 0
	start := r.read
	var raw [cpioHeaderLen]byte
	if err := r.readFull(raw[:]); err != nil {
		return nil, fmt.Errorf("cpio: header at offset %d: %w", start, unexpected(err))
	}
	if m := string(raw[:6]); m != cpioMagic && m != cpioMagicCRC {
		return nil, fmt.Errorf("cpio: bad magic %q at offset %d: not a newc archive", m, start)
	}
	var f [13]uint32
	for i := range f {
		field := raw[6+8*i : 14+8*i]
		v, err := strconv.ParseUint(string(field), 16, 32)
		if err != nil {
			return nil, fmt.Errorf("cpio: header at offset %d: field %d %q is not hex", start, i, field)
		}
		f[i] = uint32(v)
	}
	nameSize := f[11]
	if nameSize < 2 || nameSize > cpioMaxName {
		return nil, fmt.Errorf("cpio: header at offset %d: name size %d outside 2..%d", start, nameSize, cpioMaxName)
	}
	name := make([]byte, nameSize)
	if err := r.readFull(name); err != nil {
		return nil, fmt.Errorf("cpio: name at offset %d: %w", start, unexpected(err))
	}
	if name[nameSize-1] != 0 {
		return nil, fmt.Errorf("cpio: name at offset %d is not NUL-terminated", start)
	}
	if err := r.skip((4 - r.read%4) % 4); err != nil {
		return nil, fmt.Errorf("cpio: name padding at offset %d: %w", start, unexpected(err))
	}
	h := &Header{
		Name: string(name[:nameSize-1]), Ino: f[0], Mode: f[1], UID: f[2], GID: f[3],
		NLink: f[4], ModTime: f[5], Size: f[6], DevMajor: f[7], DevMinor: f[8],
		RDevMajor: f[9], RDevMinor: f[10], Check: f[12],
	}
	if h.Name == cpioTrailer {
		r.done = true
		return nil, io.EOF
	}
	r.remain = int64(h.Size)
	return h, nil
}

// Read reads data of the current entry.
func (r *Reader) Read(p []byte) (int, error) {
	if r.remain == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.remain {
		p = p[:r.remain]
	}
	n, err := r.r.Read(p)
	r.read += int64(n)
	r.remain -= int64(n)
	if err == io.EOF && r.remain > 0 {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
