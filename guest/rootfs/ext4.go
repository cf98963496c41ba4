package rootfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// DefaultLabel is the ext4 volume label, so the guest can say root=LABEL=.
const DefaultLabel = "volt-root"

// Ext4Options tunes BuildExt4.
type Ext4Options struct {
	SizeMiB int64  // 0 picks a size with headroom (see Ext4Size)
	Label   string // "" means DefaultLabel
}

// ErrNoMkfs means e2fsprogs is missing.
var ErrNoMkfs = errors.New("mkfs.ext4 not found: apt-get install e2fsprogs")

// Ext4Size returns an image size in MiB for contents of used bytes: half as
// much again for the guest to write, plus 32 MiB for the journal, inode
// tables and small files, rounded up to whole MiB.
func Ext4Size(used int64) int64 {
	const mib = 1 << 20
	total := used + used/2 + 32*mib
	return (total + mib - 1) / mib
}

// findMkfs looks in PATH and then in the sbin directories, which a
// non-root PATH often lacks.
func findMkfs() (string, error) {
	if p, err := exec.LookPath("mkfs.ext4"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", ErrNoMkfs
}

// BuildExt4 writes tree as an ext4 image at out by staging it in a
// temporary directory and letting mkfs.ext4 -d copy it in. The image
// appears complete or not at all. Staged files belong to the caller, so
// building as root gives a root-owned guest tree.
func BuildExt4(ctx context.Context, out string, tree Tree, opts Ext4Options) (err error) {
	mkfs, err := findMkfs()
	if err != nil {
		return err
	}
	stage, err := os.MkdirTemp("", "volt-rootfs-*")
	if err != nil {
		return fmt.Errorf("ext4: %w", err)
	}
	defer os.RemoveAll(stage)
	used, err := Stage(stage, tree)
	if err != nil {
		return fmt.Errorf("ext4: %w", err)
	}
	size := opts.SizeMiB
	if size == 0 {
		size = Ext4Size(used)
	}
	if size<<20 < used {
		return fmt.Errorf("ext4: %d MiB cannot hold %d bytes of files", size, used)
	}
	label := opts.Label
	if label == "" {
		label = DefaultLabel
	}

	tmp, err := os.CreateTemp(filepath.Dir(out), ".rootfs-*.ext4")
	if err != nil {
		return fmt.Errorf("ext4: %w", err)
	}
	tmp.Close()
	defer func() {
		if err != nil {
			os.Remove(tmp.Name())
		}
	}()
	// 4 KiB blocks: mkfs picks 1 KiB for images this small, and volt vm
	// run refuses those as a VM's root over a CAS volume (nspawn/image).
	cmd := exec.CommandContext(ctx, mkfs, "-q", "-F", "-b", "4096", "-d", stage, "-L", label, tmp.Name(), fmt.Sprintf("%dM", size))
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ext4: %s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(string(msg)))
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("ext4: %w", err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("ext4: %w", err)
	}
	return nil
}

// Stage materialises tree under dir and returns the bytes its files and
// directories take in 4 KiB blocks. Device nodes need root; without it they
// are left out, since the guest's devtmpfs provides them.
func Stage(dir string, tree Tree) (used int64, err error) {
	const block = 4096
	root := os.Geteuid() == 0
	for _, e := range tree {
		p := filepath.Join(dir, filepath.FromSlash(e.Path))
		switch e.Kind {
		case Dir:
			if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
				return 0, fmt.Errorf("stage %s: %w", e.Path, err)
			}
			used += block
		case File:
			n, err := copyFile(p, e.Source)
			if err != nil {
				return 0, fmt.Errorf("stage %s: %w", e.Path, err)
			}
			used += (n + block - 1) / block * block
		case Symlink:
			if err := os.Symlink(e.Target, p); err != nil {
				return 0, fmt.Errorf("stage %s: %w", e.Path, err)
			}
			continue // symlinks have no mode to set
		case CharDev:
			if !root {
				continue
			}
			if err := unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(e.Major, e.Minor))); err != nil {
				return 0, fmt.Errorf("stage %s: mknod: %w", e.Path, err)
			}
		default:
			return 0, fmt.Errorf("stage %s: unknown kind %d", e.Path, e.Kind)
		}
		// Chmod, not the create mode, so the umask cannot strip bits.
		if err := os.Chmod(p, e.Perm); err != nil {
			return 0, fmt.Errorf("stage %s: %w", e.Path, err)
		}
	}
	return used, nil
}

func copyFile(dst, src string) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}
