package image

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/voltvmm/volt/guest/rootfs"
	"github.com/voltvmm/volt/internal/hostfile"
)

// Superblock is what we read of an ext2/3/4 superblock to accept a file
// as an image before any kernel mounts it.
type Superblock struct {
	BlockSize   int64
	Blocks      int64
	Label       string
	Compat      uint32
	Incompat    uint32
	ROCompat    uint32
	HasJournal  bool
	Is64Bit     bool
	FSSizeBytes int64
}

const (
	superblockOffset = 1024
	superblockSize   = 1024
	ext4Magic        = 0xEF53

	incompat64Bit   = 0x80
	compatJournal   = 0x4
	incompatJournal = 0x4 // a journal device, not a file system
)

// incompatKnown are the INCOMPAT features of e2fsprogs 1.47 (lib/ext2fs
// ext2_fs.h, EXT4_FEATURE_INCOMPAT_*); a bit outside them is a feature
// this host's tools have never heard of, and such an image is refused.
const incompatKnown = 0x0001 | 0x0002 | 0x0004 | 0x0008 | 0x0010 | 0x0040 | 0x0080 |
	0x0100 | 0x0200 | 0x0400 | 0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000

// ErrNotExt4 is wrapped when a file is not an ext2/3/4 file system.
var ErrNotExt4 = errors.New("not an ext4 file system")

// ParseSuperblock decodes the 1024-byte superblock found at offset 1024.
// The bytes are untrusted: every field is range-checked.
func ParseSuperblock(b []byte) (*Superblock, error) {
	if len(b) < superblockSize {
		return nil, fmt.Errorf("%w: superblock of %d bytes", ErrNotExt4, len(b))
	}
	le := binary.LittleEndian
	if le.Uint16(b[0x38:]) != ext4Magic {
		return nil, fmt.Errorf("%w: no ext2/3/4 magic at offset 1080", ErrNotExt4)
	}
	logBS := le.Uint32(b[0x18:])
	if logBS > 6 { // 1 KiB << 6 = 64 KiB, the largest ext4 block
		return nil, fmt.Errorf("%w: block size 2^(10+%d)", ErrNotExt4, logBS)
	}
	sb := &Superblock{
		BlockSize: 1024 << logBS,
		Compat:    le.Uint32(b[0x5C:]),
		Incompat:  le.Uint32(b[0x60:]),
		ROCompat:  le.Uint32(b[0x64:]),
	}
	sb.HasJournal = sb.Compat&compatJournal != 0
	sb.Is64Bit = sb.Incompat&incompat64Bit != 0
	blocks := uint64(le.Uint32(b[0x04:]))
	if sb.Is64Bit {
		blocks |= uint64(le.Uint32(b[0x150:])) << 32
	}
	if blocks == 0 || blocks > 1<<48 {
		return nil, fmt.Errorf("%w: %d blocks", ErrNotExt4, blocks)
	}
	sb.Blocks = int64(blocks)
	sb.FSSizeBytes = sb.Blocks * sb.BlockSize
	label := b[0x78 : 0x78+16]
	if i := strings.IndexByte(string(label), 0); i >= 0 {
		label = label[:i]
	}
	sb.Label = strings.ToValidUTF8(string(label), "?")
	if sb.Incompat&incompatJournal != 0 {
		return nil, fmt.Errorf("%w: an external journal device", ErrNotExt4)
	}
	if unknown := sb.Incompat &^ incompatKnown; unknown != 0 {
		return nil, fmt.Errorf("%w: unknown incompatible features %#x", ErrNotExt4, unknown)
	}
	return sb, nil
}

// CheckExt4File reads path's superblock and checks that the file holds the
// whole file system, then runs e2fsck read-only over it: a kernel will
// mount this image, and a damaged one is refused here rather than there.
func CheckExt4File(ctx context.Context, path string) (*Superblock, error) {
	f, err := hostfile.Open("ext4 image", path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	b := make([]byte, superblockSize)
	if _, err := f.ReadAt(b, superblockOffset); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: %w: %d bytes, too short for a superblock", path, ErrNotExt4, st.Size())
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	sb, err := ParseSuperblock(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if sb.FSSizeBytes > st.Size() {
		return nil, fmt.Errorf("%s: %w: the file system is %d bytes, the file %d (truncated?)", path, ErrNotExt4, sb.FSSizeBytes, st.Size())
	}
	fsck, err := findTool("e2fsck")
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, fsck, "-f", "-n", path)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s: e2fsck -f -n found problems (%v); repair it with e2fsck -f -y first:\n%s", path, err, lastLines(string(out), 8))
	}
	return sb, nil
}

// findTool looks in PATH and then in the sbin directories, which a
// non-root PATH often lacks.
func findTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found: apt-get install e2fsprogs", name)
}

// treeBytes is what a tree takes in 4 KiB blocks (files and directories),
// the measure rootfs.Ext4Size expects.
func treeBytes(dir string) (int64, error) {
	const block = 4096
	var used int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			used += block
		case d.Type().IsRegular():
			fi, err := d.Info()
			if err != nil {
				return err
			}
			used += (fi.Size() + block - 1) / block * block
		default:
			used += 0 // symlinks and nodes live in inodes
		}
		return nil
	})
	return used, err
}

// BuildExt4 makes an ext4 file system of sizeMiB (0: rootfs.Ext4Size of
// the tree) holding tree at out, with mkfs.ext4 -d, as guest/rootfs does for
// guest images. Ownership and modes come from the tree.
func BuildExt4(ctx context.Context, tree, out string, sizeMiB int64, label string) error {
	mkfs, err := findTool("mkfs.ext4")
	if err != nil {
		return err
	}
	used, err := treeBytes(tree)
	if err != nil {
		return fmt.Errorf("measure %s: %w", tree, err)
	}
	if sizeMiB == 0 {
		sizeMiB = rootfs.Ext4Size(used)
	}
	if sizeMiB<<20 < used {
		return fmt.Errorf("%d MiB cannot hold the %d MiB of %s", sizeMiB, used>>20, tree)
	}
	if label == "" {
		label = rootfs.DefaultLabel
	}
	// -b 4096: mke2fs picks 1 KiB blocks for small file systems, and 4 KiB
	// blocks match the loop device's and the volume's block, so that no
	// write is a partial one. nodiscard: the new file is sparse already;
	// lazy_itable_init=0 and lazy_journal_init=0 zero the tables now, into
	// holes, instead of the kernel doing it later through an instance's
	// overlay.
	cmd := exec.CommandContext(ctx, mkfs, "-q", "-F", "-b", "4096", "-d", tree, "-L", label,
		"-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", out, fmt.Sprintf("%dM", sizeMiB))
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(string(msg)))
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
