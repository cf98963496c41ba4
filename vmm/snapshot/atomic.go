package snapshot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/internal/hostfile"
)

// pending is a file being written that appears under its final name only
// once complete. It is created with O_TMPFILE where the file system allows,
// so that a writer killed half-way leaves nothing behind at all; elsewhere it
// is a named temporary file beside the target. Either way the writer holds an
// exclusive flock on it for its whole life, which is how a later writer
// tells a leftover of a dead one (unlocked) from a file still being written.
type pending struct {
	f     *os.File
	final string
	// named is the temporary name when the file has one (the fallback
	// path, or an O_TMPFILE file once linked for the rename).
	named string
}

// tempPrefix is what temporary names start with: ".vm.mem.tmp-" for vm.mem.
func tempPrefix(final string) string { return "." + filepath.Base(final) + ".tmp-" }

// createPending checks that final may be replaced (absent or a regular file,
// never a symlink or device), removes what dead writers left for it, and
// opens a pending file in its directory.
func createPending(what, final string) (*pending, error) {
	if err := hostfile.CheckCreateTarget(what, final); err != nil {
		return nil, err
	}
	removeStale(final)
	dir := filepath.Dir(final)
	p := &pending{final: final}
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err == nil {
		p.f = os.NewFile(uintptr(fd), final)
	} else {
		// No O_TMPFILE here (EOPNOTSUPP, EISDIR on old kernels): a named
		// temporary file. A cleaner could see it unlocked for the instant
		// before the flock below; the worst outcome is that this write's
		// rename fails with an error, never a corrupt file.
		f, err := os.CreateTemp(dir, tempPrefix(final))
		if err != nil {
			return nil, fmt.Errorf("%s %s: create: %w", what, final, err)
		}
		p.f, p.named = f, f.Name()
	}
	if err := unix.Flock(int(p.f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		p.discard()
		return nil, fmt.Errorf("%s %s: lock: %w", what, final, err)
	}
	return p, nil
}

// sync makes the contents durable.
func (p *pending) sync() error {
	if err := p.f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", p.final, err)
	}
	return nil
}

// install renames the file onto its final name. The directory is synced by
// the caller once every file of the snapshot is in place.
func (p *pending) install() error {
	if p.named == "" {
		// Give the O_TMPFILE inode a temporary name: linkat(2) cannot
		// replace an existing name, rename(2) can. The link goes through
		// /proc/self/fd, which needs no capability (AT_EMPTY_PATH would
		// need CAP_DAC_READ_SEARCH).
		name := filepath.Join(filepath.Dir(p.final), tempPrefix(p.final)+strconv.FormatInt(time.Now().UnixNano(), 36))
		src := "/proc/self/fd/" + strconv.Itoa(int(p.f.Fd()))
		if err := unix.Linkat(unix.AT_FDCWD, src, unix.AT_FDCWD, name, unix.AT_SYMLINK_FOLLOW); err != nil {
			return fmt.Errorf("link %s: %w", p.final, err)
		}
		p.named = name
	}
	if err := os.Rename(p.named, p.final); err != nil {
		return fmt.Errorf("rename onto %s: %w", p.final, err)
	}
	p.named = ""
	return nil
}

// discard drops an uninstalled file (or only closes an installed one).
func (p *pending) discard() {
	if p.named != "" {
		os.Remove(p.named)
	}
	p.f.Close()
}

// removeStale deletes temporary files of final that no live writer holds:
// the ones a writer killed between linking and renaming left behind.
func removeStale(final string) {
	matches, _ := filepath.Glob(filepath.Join(filepath.Dir(final), globEscape(tempPrefix(final))+"*"))
	for _, m := range matches {
		fd, err := unix.Open(m, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB) == nil {
			os.Remove(m)
		}
		unix.Close(fd)
	}
}

func globEscape(s string) string {
	var out []byte
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', '\\':
			out = append(out, '\\')
		}
		out = append(out, s[i])
	}
	return string(out)
}

// syncDir makes renames in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// writeAtomic writes one file through a pending file: complete under its
// name, or not there at all.
func writeAtomic(what, path string, fill func(*os.File) error) error {
	p, err := createPending(what, path)
	if err != nil {
		return err
	}
	defer p.discard()
	if err := fill(p.f); err != nil {
		return fmt.Errorf("write %s %s: %w", what, path, err)
	}
	if err := p.sync(); err != nil {
		return err
	}
	if err := p.install(); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}
