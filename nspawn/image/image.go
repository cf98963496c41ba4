// Package image keeps Volt's workload images in the CAS. An image is one
// ext4 file system stored as a CAS object of kind image, named by the ref
// "image:NAME"; containers and VMs both boot from it, each through its own
// copy-on-write cas/volume, so no instance copies the image.
package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/internal/hostfile"
)

// RefPrefix namespaces image names among the store's refs.
const RefPrefix = "image:"

// DefaultChunkSize for images: 256 KiB chunks dedup an image and a copy of
// it with a few files changed about twice as well as 2 MiB (cas/README.md,
// "Dedup of two images sharing a base": 10.8 MiB stored against 26.0 MiB),
// and a commit of a container's few changed blocks re-stores 256 KiB per
// touched chunk instead of 2 MiB.
const DefaultChunkSize = 256 << 10

// MaxNameLen leaves room in the ref name for the prefix.
const MaxNameLen = 100

// ErrUnknown is wrapped when no image has the name.
var ErrUnknown = errors.New("unknown image")

// ErrExists is wrapped when the name is taken and no force was asked.
var ErrExists = errors.New("image exists")

// ValidateName checks an image name: 1 to 100 letters, digits and
// ". _ - + @", starting with a letter or digit (a CAS ref name without ':').
func ValidateName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("image name %q: want 1 to %d characters", truncate(name), MaxNameLen)
	}
	if strings.Contains(name, ":") {
		return fmt.Errorf("image name %q: ':' is not allowed", truncate(name))
	}
	if err := cas.ValidateRefName(name); err != nil {
		return fmt.Errorf("image name: %w", err)
	}
	return nil
}

// Ref is the CAS ref that names image name.
func Ref(name string) string { return RefPrefix + name }

// Source says where an import reads from: exactly one field is set.
type Source struct {
	Tar  string // a tar archive, plain or gzip
	Dir  string // a directory tree
	Ext4 string // an ext4 file system image, stored as it is
}

func (s Source) validate() error {
	n := 0
	for _, p := range []string{s.Tar, s.Dir, s.Ext4} {
		if p != "" {
			n++
		}
	}
	if n != 1 {
		return errors.New("give exactly one of --tar, --dir, --ext4")
	}
	return nil
}

// ImportOptions tune Import.
type ImportOptions struct {
	// SizeMiB is the file system size built from a tar or a directory; 0
	// leaves half as much again as the files take, plus 32 MiB. It is also
	// the room every instance has to write.
	SizeMiB   int64
	ChunkSize int64 // 0: DefaultChunkSize
	Force     bool  // replace an existing image of that name
	// TempDir holds the tar's staging tree and the built file system
	// ("": os.TempDir()).
	TempDir  string
	Progress func(done int64)
}

// Result describes an import.
type Result struct {
	Name       string
	Digest     cas.Digest
	Size       int64 // the file system's bytes
	DataBytes  int64 // of which not holes
	NewBytes   int64 // chunk bytes the store did not hold
	Chunks     int
	NewChunks  int
	Holes      int
	Superblock *Superblock
	Extract    *ExtractStats // tar imports only
	// Warnings are things the image will not do (boot as a VM).
	Warnings []string
}

// MinVMBlockSize is the smallest file system block a VM can mount from
// its volume disk, whose logical sectors are the volume's 4 KiB blocks.
const MinVMBlockSize = 4096

// Import builds (for a tar or a directory) or checks (for an ext4 file) a
// file system and stores it as image name.
func Import(ctx context.Context, store *cas.Store, name string, src Source, opts ImportOptions) (*Result, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if err := src.validate(); err != nil {
		return nil, err
	}
	chunk := opts.ChunkSize
	if chunk == 0 {
		chunk = DefaultChunkSize
	}
	if err := cas.ValidateChunkSize(chunk); err != nil {
		return nil, err
	}
	if opts.SizeMiB < 0 || opts.SizeMiB > 1<<24 {
		return nil, fmt.Errorf("size %d MiB: want 1 MiB to 16 TiB", opts.SizeMiB)
	}
	if !opts.Force {
		if err := checkFree(store, name); err != nil {
			return nil, err
		}
	}
	res := &Result{Name: name}
	file := src.Ext4
	switch {
	case src.Ext4 != "":
		if opts.SizeMiB != 0 {
			return nil, errors.New("--size applies to --tar and --dir, not to an existing ext4 image")
		}
	default:
		tmp, err := os.MkdirTemp(opts.TempDir, "volt-image-*")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		tree := src.Dir
		if src.Tar != "" {
			f, err := hostfile.Open("tar archive", src.Tar)
			if err != nil {
				return nil, err
			}
			tree = filepath.Join(tmp, "tree")
			if err := os.Mkdir(tree, 0o755); err != nil {
				f.Close()
				return nil, err
			}
			st, err := Extract(f, tree)
			f.Close()
			if err != nil {
				return nil, fmt.Errorf("extract %s: %w", src.Tar, err)
			}
			res.Extract = &st
		} else {
			fi, err := os.Stat(tree)
			if err != nil {
				return nil, err
			}
			if !fi.IsDir() {
				return nil, fmt.Errorf("--dir %s: %s, want a directory", tree, hostfile.Kind(fi.Mode()))
			}
		}
		file = filepath.Join(tmp, "image.ext4")
		if err := BuildExt4(ctx, tree, file, opts.SizeMiB, ""); err != nil {
			return nil, err
		}
	}
	sb, err := CheckExt4File(ctx, file)
	if err != nil {
		return nil, err
	}
	res.Superblock = sb
	if sb.BlockSize < MinVMBlockSize {
		res.Warnings = append(res.Warnings, fmt.Sprintf("the file system has %d-byte blocks: containers can run it, VMs cannot mount it from a volume disk (4 KiB sectors); rebuild it with mkfs.ext4 -b 4096 or import the tree with --dir", sb.BlockSize))
	}

	ss, err := store.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer ss.Close()
	ir, err := ss.ImportFile(ctx, file, cas.ImportOptions{ChunkSize: chunk, Kind: cas.KindImage, Progress: opts.Progress})
	if err != nil {
		return nil, err
	}
	if !opts.Force {
		// Someone may have taken the name while we built.
		if err := checkFree(store, name); err != nil {
			return nil, err
		}
	}
	if err := ss.SetRef(Ref(name), ir.Digest); err != nil {
		return nil, err
	}
	if err := ss.Close(); err != nil {
		return nil, err
	}
	m := ir.Manifest
	_, data := m.Stats()
	res.Digest, res.Size, res.DataBytes = ir.Digest, m.Size, data
	res.Chunks, res.NewChunks, res.NewBytes, res.Holes = len(m.Chunks), ir.NewChunks, ir.NewBytes, ir.Holes
	return res, nil
}

func checkFree(store *cas.Store, name string) error {
	d, err := store.Ref(Ref(name))
	if err == nil {
		return fmt.Errorf("%w: %q is manifest %s; use --force to replace it", ErrExists, name, d.Short())
	}
	if errors.Is(err, cas.ErrNotFound) {
		return nil
	}
	return err
}

// Resolve returns image name's manifest. An unknown name is ErrUnknown.
func Resolve(ctx context.Context, store *cas.Store, name string) (cas.Digest, *cas.Manifest, error) {
	if err := ValidateName(name); err != nil {
		return cas.Digest{}, nil, err
	}
	d, m, err := store.Resolve(ctx, Ref(name))
	if errors.Is(err, cas.ErrNotFound) {
		if _, rerr := store.Ref(Ref(name)); errors.Is(rerr, cas.ErrNotFound) {
			return cas.Digest{}, nil, fmt.Errorf("%w %q (volt image ls lists them)", ErrUnknown, name)
		}
	}
	if err != nil {
		return cas.Digest{}, nil, fmt.Errorf("image %s: %w", name, err)
	}
	return d, m, nil
}

// Info describes an image.
type Info struct {
	Name      string     `json:"name"`
	Digest    cas.Digest `json:"digest"`
	Size      int64      `json:"size"`
	DataBytes int64      `json:"data_bytes"`
	ChunkSize int64      `json:"chunk_size"`
	Error     string     `json:"error,omitempty"`
}

// List returns every image in the store, by name.
func List(ctx context.Context, store *cas.Store) ([]Info, error) {
	objs, err := store.List(ctx)
	if err != nil {
		return nil, err
	}
	var out []Info
	for _, o := range objs {
		name, ok := strings.CutPrefix(o.Name, RefPrefix)
		if !ok {
			continue
		}
		out = append(out, Info{Name: name, Digest: o.Digest, Size: o.Size, DataBytes: o.DataBytes, ChunkSize: o.ChunkSize, Error: o.Error})
	}
	return out, nil
}

// Remove removes image name's ref. Its chunks stay while an instance or
// another name uses them; cas gc frees the rest.
func Remove(store *cas.Store, name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	if _, err := store.Ref(Ref(name)); errors.Is(err, cas.ErrNotFound) {
		return fmt.Errorf("%w %q", ErrUnknown, name)
	}
	return store.RemoveRef(Ref(name))
}

// ReadSuperblock reads an image's superblock from the store.
func ReadSuperblock(ctx context.Context, store *cas.Store, name string) (*Superblock, error) {
	d, m, err := Resolve(ctx, store, name)
	if err != nil {
		return nil, err
	}
	r, err := cas.NewObjectReader(ctx, store, m, d.String(), 2)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	b := make([]byte, superblockSize)
	if _, err := r.ReadAt(b, superblockOffset); err != nil {
		return nil, fmt.Errorf("image %s: read its superblock: %w", name, err)
	}
	sb, err := ParseSuperblock(b)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", name, err)
	}
	return sb, nil
}
