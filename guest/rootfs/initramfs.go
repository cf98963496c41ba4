package rootfs

import (
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// WriteCPIO writes tree as a newc archive. Every entry is owned by root and
// stamped with modTime, so that the same inputs give the same bytes (and the
// same chunks in a content-addressed store).
func WriteCPIO(w io.Writer, tree Tree, modTime uint32) error {
	cw := NewWriter(w)
	for _, e := range tree {
		h := &Header{Name: e.Path, Mode: modeBits(e.Perm), ModTime: modTime}
		var data io.Reader
		switch e.Kind {
		case Dir:
			h.Mode |= TypeDir
		case Symlink:
			h.Mode |= TypeSymlink
			h.Size = uint32(len(e.Target))
			data = strings.NewReader(e.Target)
		case CharDev:
			h.Mode |= TypeChar
			h.RDevMajor, h.RDevMinor = e.Major, e.Minor
		case File:
			h.Mode |= TypeReg
			f, err := os.Open(e.Source)
			if err != nil {
				return fmt.Errorf("initramfs %s: %w", e.Path, err)
			}
			defer f.Close() // two files per tree; they may wait for the return
			st, err := f.Stat()
			if err != nil {
				return fmt.Errorf("initramfs %s: %w", e.Path, err)
			}
			if st.Size() > 1<<32-1 {
				return fmt.Errorf("initramfs %s: %s is too large for cpio", e.Path, e.Source)
			}
			h.Size = uint32(st.Size())
			data = f
		default:
			return fmt.Errorf("initramfs %s: unknown kind %d", e.Path, e.Kind)
		}
		if err := cw.WriteHeader(h); err != nil {
			return fmt.Errorf("initramfs %s: %w", e.Path, err)
		}
		if data != nil {
			n, err := io.Copy(cw, data)
			if err != nil {
				return fmt.Errorf("initramfs %s: %w", e.Path, err)
			}
			if n != int64(h.Size) {
				return fmt.Errorf("initramfs %s: %s changed size while being read", e.Path, e.Source)
			}
		}
	}
	return cw.Close()
}

// modeBits converts Go's permission and special bits to stat(2)'s.
func modeBits(perm fs.FileMode) uint32 {
	m := uint32(perm.Perm())
	if perm&fs.ModeSetuid != 0 {
		m |= 0o4000
	}
	if perm&fs.ModeSetgid != 0 {
		m |= 0o2000
	}
	if perm&fs.ModeSticky != 0 {
		m |= 0o1000
	}
	return m
}

// WriteInitramfs writes tree to the file out, gzip-compressed when out ends
// in ".gz". The file appears complete or not at all.
func WriteInitramfs(out string, tree Tree, modTime uint32) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(out), ".initramfs-*")
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	var w io.Writer = tmp
	var zw *gzip.Writer
	if strings.HasSuffix(out, ".gz") {
		zw, _ = gzip.NewWriterLevel(tmp, gzip.BestCompression) // the level is valid
		w = zw
	}
	if err := WriteCPIO(w, tree, modTime); err != nil {
		return err
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			return fmt.Errorf("initramfs: gzip: %w", err)
		}
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return nil
}
