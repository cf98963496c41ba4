package volume

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/voltvmm/volt/cas"
)

// Map file encoding (little-endian), version 1:
//
//	offset  size
//	0       8    magic "VOLTVMAP"
//	8       2    encoding version (1)
//	10      2    reserved, zero
//	12      4    block size in bytes
//	16      8    volume size in bytes
//	24      32   base manifest digest
//	56      8    generation: incremented by every write of the map
//	64      k    written-block bitmap, k = ceil(blocks / 8); bit b%8 of byte
//	             b/8 set = block b is in the overlay; padding bits zero
//	64+k    32   BLAKE3-256 of all the bytes before it
//
// The map is replaced whole (temp file, fsync, rename, directory fsync), so
// on disk it is always one complete generation; the checksum catches damage.
const (
	mapMagic      = "VOLTVMAP"
	mapVersion    = 1
	mapHeaderSize = 64
	// MaxBlocks bounds a volume to 2^32 blocks: 16 TiB at 4 KiB blocks,
	// a 512 MiB bitmap.
	MaxBlocks = 1 << 32
)

// ErrBadMap is wrapped by every map-file parse error.
var ErrBadMap = errors.New("malformed volume map")

// Map is the persistent state of a volume's overlay: which base it
// overlays, its geometry and which blocks the overlay holds.
type Map struct {
	BlockSize  int64
	Size       int64
	Base       cas.Digest
	Generation uint64
	Written    []uint64 // bitmap, one bit per block
}

func numBlocks(size, blockSize int64) int64 { return (size + blockSize - 1) / blockSize }

// bitmapBytes is the encoded bitmap length for n blocks.
func bitmapBytes(n int64) int64 { return (n + 7) / 8 }

func (m *Map) validate() error {
	if m.BlockSize < cas.MinChunkSize || m.BlockSize > cas.MaxChunkSize || m.BlockSize&(m.BlockSize-1) != 0 {
		return fmt.Errorf("%w: block size %d is not a power of two from 4 KiB to 64 MiB", ErrBadMap, m.BlockSize)
	}
	if m.Size < 0 {
		return fmt.Errorf("%w: negative size", ErrBadMap)
	}
	n := numBlocks(m.Size, m.BlockSize)
	if n > MaxBlocks {
		return fmt.Errorf("%w: %d blocks, more than the limit of %d", ErrBadMap, n, int64(MaxBlocks))
	}
	if int64(len(m.Written)) != (n+63)/64 {
		return fmt.Errorf("%w: bitmap of %d words for %d blocks", ErrBadMap, len(m.Written), n)
	}
	if n%64 != 0 && len(m.Written) > 0 && m.Written[len(m.Written)-1]>>(n%64) != 0 {
		return fmt.Errorf("%w: bits set past the last block", ErrBadMap)
	}
	if m.Base.IsZero() {
		return fmt.Errorf("%w: no base manifest", ErrBadMap)
	}
	return nil
}

// MarshalBinary encodes the map.
func (m *Map) MarshalBinary() ([]byte, error) {
	if err := m.validate(); err != nil {
		return nil, err
	}
	n := numBlocks(m.Size, m.BlockSize)
	k := bitmapBytes(n)
	b := make([]byte, mapHeaderSize+k+cas.DigestSize)
	copy(b, mapMagic)
	binary.LittleEndian.PutUint16(b[8:], mapVersion)
	binary.LittleEndian.PutUint32(b[12:], uint32(m.BlockSize))
	binary.LittleEndian.PutUint64(b[16:], uint64(m.Size))
	copy(b[24:56], m.Base[:])
	binary.LittleEndian.PutUint64(b[56:], m.Generation)
	bm := b[mapHeaderSize : mapHeaderSize+k]
	for i := range bm {
		bm[i] = byte(m.Written[i/8] >> (8 * (i % 8)))
	}
	sum := cas.Sum(b[:mapHeaderSize+k])
	copy(b[mapHeaderSize+k:], sum[:])
	return b, nil
}

// ParseMap decodes a map file, refusing anything but the exact encoding of
// a valid map with a matching checksum.
func ParseMap(b []byte) (*Map, error) {
	if len(b) < mapHeaderSize+cas.DigestSize {
		return nil, fmt.Errorf("%w: %d bytes, too short", ErrBadMap, len(b))
	}
	if string(b[:8]) != mapMagic {
		return nil, fmt.Errorf("%w: bad magic", ErrBadMap)
	}
	if v := binary.LittleEndian.Uint16(b[8:]); v != mapVersion {
		return nil, fmt.Errorf("%w: encoding version %d, this volt reads version %d", ErrBadMap, v, mapVersion)
	}
	if binary.LittleEndian.Uint16(b[10:]) != 0 {
		return nil, fmt.Errorf("%w: reserved bytes not zero", ErrBadMap)
	}
	m := &Map{
		BlockSize:  int64(binary.LittleEndian.Uint32(b[12:])),
		Generation: binary.LittleEndian.Uint64(b[56:]),
	}
	size := binary.LittleEndian.Uint64(b[16:])
	copy(m.Base[:], b[24:56])
	if m.BlockSize < cas.MinChunkSize || m.BlockSize > cas.MaxChunkSize || m.BlockSize&(m.BlockSize-1) != 0 {
		return nil, fmt.Errorf("%w: block size %d", ErrBadMap, m.BlockSize)
	}
	if size > uint64(MaxBlocks)*uint64(m.BlockSize) {
		return nil, fmt.Errorf("%w: size %d too large", ErrBadMap, size)
	}
	m.Size = int64(size)
	n := numBlocks(m.Size, m.BlockSize)
	k := bitmapBytes(n)
	if int64(len(b)) != mapHeaderSize+k+cas.DigestSize {
		return nil, fmt.Errorf("%w: %d bytes, a volume of %d blocks needs %d", ErrBadMap, len(b), n, mapHeaderSize+k+cas.DigestSize)
	}
	if cas.Sum(b[:mapHeaderSize+k]) != cas.Digest(b[mapHeaderSize+k:]) {
		return nil, fmt.Errorf("%w: checksum mismatch (damaged)", ErrBadMap)
	}
	m.Written = make([]uint64, (n+63)/64)
	for i, c := range b[mapHeaderSize : mapHeaderSize+k] {
		m.Written[i/8] |= uint64(c) << (8 * (i % 8))
	}
	if err := m.validate(); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Map) isWritten(b int64) bool { return m.Written[b/64]&(1<<(b%64)) != 0 }
func (m *Map) setWritten(b int64)     { m.Written[b/64] |= 1 << (b % 64) }

// WrittenBlocks counts the blocks the overlay holds.
func (m *Map) WrittenBlocks() int64 {
	var n int64
	for _, w := range m.Written {
		for ; w != 0; w &= w - 1 {
			n++
		}
	}
	return n
}

func (m *Map) clone() *Map {
	c := *m
	c.Written = append([]uint64(nil), m.Written...)
	return &c
}
