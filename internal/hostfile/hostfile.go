// Package hostfile opens the host files a user names (kernels, initrds,
// snapshot state and memory files, config files) so that a special file at
// such a path is a clear error instead of a hang or a surprise: a FIFO
// opened plainly blocks until a writer appears (ignoring SIGTERM, since the
// Go runtime is stuck in open(2)), a device reads forever, and a symlink or a
// device at a path the VMM is asked to create must never be replaced.
// Every user-supplied path in Volt goes through here.
package hostfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ErrNotRegular is wrapped by every refusal of a non-regular file.
var ErrNotRegular = errors.New("not a regular file")

// Kind names a file type for messages.
func Kind(mode fs.FileMode) string {
	switch mode.Type() {
	case 0:
		return "a regular file"
	case fs.ModeDir:
		return "a directory"
	case fs.ModeSymlink:
		return "a symbolic link"
	case fs.ModeNamedPipe:
		return "a named pipe (FIFO)"
	case fs.ModeSocket:
		return "a socket"
	case fs.ModeDevice:
		return "a block device"
	case fs.ModeDevice | fs.ModeCharDevice:
		return "a character device"
	}
	return "a special file"
}

func kindOfStat(st *unix.Stat_t) string {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "a regular file"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFIFO:
		return "a named pipe (FIFO)"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFBLK:
		return "a block device"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFLNK:
		return "a symbolic link"
	}
	return "a special file"
}

// Open opens path read-only and returns it only if it is a regular file
// (symlinks to one are followed). The open itself is non-blocking, so a FIFO
// or a device at path is refused at once; the returned file is blocking
// again. what names the file in errors ("kernel", "snapshot state").
func Open(what, path string) (*os.File, error) {
	return open(what, path, unix.O_RDONLY)
}

// OpenReadWrite is Open for a file that will be modified in place.
func OpenReadWrite(what, path string) (*os.File, error) {
	return open(what, path, unix.O_RDWR)
}

func open(what, path string, mode int) (*os.File, error) {
	if path == "" {
		return nil, fmt.Errorf("%s: no path given", what)
	}
	fd, err := unix.Open(path, mode|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	switch {
	case errors.Is(err, unix.EISDIR):
		return nil, fmt.Errorf("%s %s is a directory: %w", what, path, ErrNotRegular)
	case err != nil:
		// The bare errno: the path is named once, by us.
		return nil, fmt.Errorf("%s %s: %w", what, path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%s %s: stat: %w", what, path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fmt.Errorf("%s %s is %s: %w", what, path, kindOfStat(&st), ErrNotRegular)
	}
	if err := clearNonblock(fd); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%s %s: %w", what, path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

func clearNonblock(fd int) error {
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return fmt.Errorf("fcntl F_GETFL: %w", err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, flags&^unix.O_NONBLOCK); err != nil {
		return fmt.Errorf("fcntl F_SETFL: %w", err)
	}
	return nil
}

// CheckRegular reports whether path names a regular file (following
// symlinks), without opening it: for validating a request before the file
// is used.
func CheckRegular(what, path string) error {
	if path == "" {
		return fmt.Errorf("%s: no path given", what)
	}
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s %s is %s: %w", what, path, Kind(st.Mode()), ErrNotRegular)
	}
	return nil
}

// CheckCreateTarget accepts a path the caller will create or replace by
// renaming a new file onto it: the path must be absent or a regular file
// (not a symlink, whose target would be left behind while the link is
// replaced, nor a device, FIFO, socket or directory), in an existing
// directory.
func CheckCreateTarget(what, path string) error {
	if path == "" {
		return fmt.Errorf("%s: no path given", what)
	}
	st, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		dir := filepath.Dir(path)
		dst, derr := os.Stat(dir)
		if derr != nil {
			return fmt.Errorf("%s %s: directory %s: %w", what, path, dir, derr)
		}
		if !dst.IsDir() {
			return fmt.Errorf("%s %s: %s is not a directory", what, path, dir)
		}
		return nil
	case err != nil:
		return fmt.Errorf("%s %s: %w", what, path, err)
	case !st.Mode().IsRegular():
		return fmt.Errorf("%s %s exists and is %s; refusing to replace it (remove it or choose another path): %w", what, path, Kind(st.Mode()), ErrNotRegular)
	}
	return nil
}
