package cas

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Kind says what an object is, so that tools can refuse to restore an image
// as guest memory. It does not change how the object is stored.
type Kind uint8

const (
	KindImage  Kind = 1 // a disk or filesystem image
	KindVolume Kind = 2 // a committed copy-on-write volume
	KindMemory Kind = 3 // a guest memory file from a snapshot
)

var kindNames = map[Kind]string{KindImage: "image", KindVolume: "volume", KindMemory: "memory"}

func (k Kind) String() string {
	if n, ok := kindNames[k]; ok {
		return n
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// MarshalText encodes the kind's name, for JSON output.
func (k Kind) MarshalText() ([]byte, error) {
	if _, ok := kindNames[k]; !ok {
		return nil, fmt.Errorf("unknown object kind %d", uint8(k))
	}
	return []byte(k.String()), nil
}

// UnmarshalText parses the kind's name.
func (k *Kind) UnmarshalText(b []byte) error {
	p, err := ParseKind(string(b))
	if err != nil {
		return err
	}
	*k = p
	return nil
}

// ParseKind parses "image", "volume" or "memory".
func ParseKind(s string) (Kind, error) {
	for k, n := range kindNames {
		if n == s {
			return k, nil
		}
	}
	return 0, fmt.Errorf("unknown object kind %q (want image, volume or memory)", truncateForError(s))
}

// Chunk size limits. Chunk sizes are powers of two so that chunks stay
// aligned to guest pages and huge pages: the VMM maps each chunk file at a
// chunk-aligned guest address with MAP_FIXED, which needs page alignment.
const (
	MinChunkSize     = 4 << 10  // one page
	MaxChunkSize     = 64 << 20 // bounds the memory one chunk read needs
	DefaultChunkSize = 2 << 20  // a guest huge page; see README.md for the measurement
	// MaxChunks bounds a manifest to 512 MiB of digests: 1 TiB at 64 KiB
	// chunks, 32 TiB at 2 MiB.
	MaxChunks = 1 << 24
)

// ValidateChunkSize checks that n is a power of two in [MinChunkSize, MaxChunkSize].
func ValidateChunkSize(n int64) error {
	if n < MinChunkSize || n > MaxChunkSize || n&(n-1) != 0 {
		return fmt.Errorf("chunk size %d: want a power of two from %d (4 KiB) to %d (64 MiB)", n, MinChunkSize, MaxChunkSize)
	}
	return nil
}

// Manifest describes one object: its size, its chunk size and the ordered
// digests of its chunks. Chunk i covers bytes [i*ChunkSize, (i+1)*ChunkSize)
// of the object, the last one possibly shorter; a zero digest is a hole (all
// zero bytes, nothing stored). A manifest is itself stored under the digest
// of its canonical encoding (MarshalBinary).
type Manifest struct {
	Kind      Kind
	ChunkSize int64
	Size      int64
	Chunks    []Digest
}

// Manifest encoding (little-endian), version 1:
//
//	offset size
//	0      8    magic "VOLTCASM"
//	8      2    encoding version (1)
//	10     1    kind
//	11     1    reserved, zero
//	12     4    chunk size in bytes
//	16     8    object size in bytes
//	24     32·n chunk digests, n = ceil(size / chunk size); zero = hole
//
// The chunk count is implied by the size, so each manifest has exactly one
// encoding and equal manifests have equal digests.
const (
	manifestMagic      = "VOLTCASM"
	manifestVersion    = 1
	manifestHeaderSize = 24
	// MaxManifestSize is the largest manifest encoding ParseManifest accepts.
	MaxManifestSize = manifestHeaderSize + DigestSize*MaxChunks
)

// ErrBadManifest is wrapped by every manifest parse and validation error.
var ErrBadManifest = errors.New("malformed manifest")

// NumChunks returns how many chunks an object of size bytes has at chunkSize.
func NumChunks(size, chunkSize int64) int64 {
	return (size + chunkSize - 1) / chunkSize
}

// Validate checks the manifest's invariants: a known kind, a valid chunk
// size, a size that fits MaxChunks, and exactly NumChunks digests.
func (m *Manifest) Validate() error {
	if _, ok := kindNames[m.Kind]; !ok {
		return fmt.Errorf("%w: unknown kind %d", ErrBadManifest, uint8(m.Kind))
	}
	if err := ValidateChunkSize(m.ChunkSize); err != nil {
		return fmt.Errorf("%w: %v", ErrBadManifest, err)
	}
	if m.Size < 0 || m.Size > MaxChunks*m.ChunkSize {
		return fmt.Errorf("%w: size %d out of range for chunk size %d", ErrBadManifest, m.Size, m.ChunkSize)
	}
	if n := NumChunks(m.Size, m.ChunkSize); int64(len(m.Chunks)) != n {
		return fmt.Errorf("%w: %d chunks listed, size %d at chunk size %d needs %d", ErrBadManifest, len(m.Chunks), m.Size, m.ChunkSize, n)
	}
	return nil
}

// ChunkLen returns the length in bytes of chunk i: ChunkSize, except for a
// last chunk that the object's size cuts short.
func (m *Manifest) ChunkLen(i int) int64 {
	off := int64(i) * m.ChunkSize
	return min(m.ChunkSize, m.Size-off)
}

// MarshalBinary returns the canonical encoding, whose digest names the manifest.
func (m *Manifest) MarshalBinary() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	b := make([]byte, manifestHeaderSize+DigestSize*len(m.Chunks))
	copy(b, manifestMagic)
	binary.LittleEndian.PutUint16(b[8:], manifestVersion)
	b[10] = byte(m.Kind)
	binary.LittleEndian.PutUint32(b[12:], uint32(m.ChunkSize))
	binary.LittleEndian.PutUint64(b[16:], uint64(m.Size))
	for i, d := range m.Chunks {
		copy(b[manifestHeaderSize+DigestSize*i:], d[:])
	}
	return b, nil
}

// Digest returns the digest of the canonical encoding. It panics on an
// invalid manifest; call Validate first on manifests built by hand.
func (m *Manifest) Digest() Digest {
	b, err := m.MarshalBinary()
	if err != nil {
		panic("cas: Digest of an invalid manifest: " + err.Error())
	}
	return Sum(b)
}

// ParseManifest decodes a manifest encoding, refusing anything that is not
// exactly the canonical encoding of a valid manifest. It does not check the
// digest: ReadManifest does, against the name the manifest was stored under.
func ParseManifest(b []byte) (*Manifest, error) {
	if len(b) < manifestHeaderSize {
		return nil, fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", ErrBadManifest, len(b), manifestHeaderSize)
	}
	if len(b) > MaxManifestSize {
		return nil, fmt.Errorf("%w: %d bytes, more than the limit of %d", ErrBadManifest, len(b), MaxManifestSize)
	}
	if string(b[:8]) != manifestMagic {
		return nil, fmt.Errorf("%w: bad magic %q", ErrBadManifest, b[:8])
	}
	if v := binary.LittleEndian.Uint16(b[8:]); v != manifestVersion {
		return nil, fmt.Errorf("%w: encoding version %d, this volt reads version %d", ErrBadManifest, v, manifestVersion)
	}
	if b[11] != 0 {
		return nil, fmt.Errorf("%w: reserved byte is %#x, want 0", ErrBadManifest, b[11])
	}
	m := &Manifest{
		Kind:      Kind(b[10]),
		ChunkSize: int64(binary.LittleEndian.Uint32(b[12:])),
	}
	size := binary.LittleEndian.Uint64(b[16:])
	if size > uint64(MaxChunks)*MaxChunkSize {
		return nil, fmt.Errorf("%w: object size %d too large", ErrBadManifest, size)
	}
	m.Size = int64(size)
	if err := ValidateChunkSize(m.ChunkSize); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadManifest, err)
	}
	n := NumChunks(m.Size, m.ChunkSize)
	if n > MaxChunks {
		return nil, fmt.Errorf("%w: size %d needs %d chunks, more than the limit of %d", ErrBadManifest, m.Size, n, MaxChunks)
	}
	if want := manifestHeaderSize + DigestSize*n; int64(len(b)) != want {
		return nil, fmt.Errorf("%w: %d bytes, size %d at chunk size %d needs exactly %d", ErrBadManifest, len(b), m.Size, m.ChunkSize, want)
	}
	m.Chunks = make([]Digest, n)
	for i := range m.Chunks {
		copy(m.Chunks[i][:], b[manifestHeaderSize+DigestSize*i:])
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m, nil
}

// Stats summarises a manifest: how many chunks hold data and how many bytes
// they cover (the object's size minus its holes).
func (m *Manifest) Stats() (dataChunks int, dataBytes int64) {
	for i, d := range m.Chunks {
		if !d.IsZero() {
			dataChunks++
			dataBytes += m.ChunkLen(i)
		}
	}
	return dataChunks, dataBytes
}
