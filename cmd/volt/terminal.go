package main

import (
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/sys/unix"
)

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// progress draws a byte-count progress bar on stderr, or nothing.
type progress struct {
	bar *progressbar.ProgressBar
}

// newProgress returns a bar for total bytes when stderr is a terminal or
// force is set; otherwise one that draws nothing.
func newProgress(w io.Writer, show bool, total int64, what string) *progress {
	if !show || total <= 0 {
		return &progress{}
	}
	return &progress{bar: progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(what),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowTotalBytes(true),
		progressbar.OptionUseIECUnits(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionClearOnFinish(),
	)}
}

// set moves the bar to done bytes.
func (p *progress) set(done int64) {
	if p.bar != nil {
		p.bar.Set64(done)
	}
}

// done removes the bar from the terminal.
func (p *progress) done() {
	if p.bar != nil {
		p.bar.Finish()
		p.bar.Clear()
	}
}
