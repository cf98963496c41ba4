package bench

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/bench/report"
	"github.com/voltvmm/volt/bench/results"
)

// WriteResults saves runs to path (`--json`) with the machine and the
// command that produced them. The file is written beside path and renamed
// into place, so a failed write never leaves half a baseline.
func WriteResults(path string, runs []*results.Run, command []string) error {
	res := &results.Results{Created: time.Now().UTC(), Runs: runs, Command: strings.Join(command, " ")}
	res.Host, _ = os.Hostname()
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		res.KernelRelease = unix.ByteSliceToString(u.Release[:])
	}
	data, err := res.Marshal()
	if err != nil {
		return err
	}
	return writeFileAtomic(path, data)
}

// maxResultsFile bounds what ReadResults reads; results.ParseResults
// refuses anything near it anyway.
const maxResultsFile = 32 << 20

// ReadResults reads and checks a results file. A path that is not a
// regular file (a FIFO, a device) is refused without blocking on it.
func ReadResults(path string) (*results.Results, error) {
	data, err := readRegular(path, maxResultsFile)
	if err != nil {
		return nil, err
	}
	res, err := results.ParseResults(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return res, nil
}

// readRegular reads a regular file of at most limit bytes. It opens
// without blocking (O_NONBLOCK: a FIFO without a writer would otherwise
// hang the open) and checks the opened file itself, so that nothing
// swapped in between a check and the open is read.
func readRegular(path string, limit int64) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (%s)", path, fi.Mode().Type())
	}
	if fi.Size() > limit {
		return nil, fmt.Errorf("%s: %d bytes, at most %d", path, fi.Size(), limit)
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: more than %d bytes", path, limit)
	}
	return data, nil
}

// writeFileAtomic writes data to a temporary file in path's directory and
// renames it over path. An existing path must be a regular file: a
// device or a FIFO there is the user's, not ours to replace.
func writeFileAtomic(path string, data []byte) error {
	if fi, err := os.Lstat(path); err == nil && !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: not a regular file (%s); refusing to replace it", path, fi.Mode().Type())
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// WritePlot draws the runs' stage CDFs (report.CDFFigure) into an SVG
// file at path, atomically like WriteResults.
func WritePlot(path, title string, rows []string, runs []*results.Run) error {
	var b strings.Builder
	if err := report.WriteCDF(&b, report.CDFFigure(title, rows, runs)); err != nil {
		return err
	}
	return writeFileAtomic(path, []byte(b.String()))
}
