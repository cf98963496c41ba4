package bench

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// Progress draws a one-line bar on a terminal. A nil *Progress draws
// nothing, so callers need no conditionals.
type Progress struct {
	w          io.Writer
	total, n   int
	failures   int
	start      time.Time
	lastLength int
}

// NewProgress draws on w (normally stderr, and only when it is a terminal
// or the user asked).
func NewProgress(w io.Writer) *Progress { return &Progress{w: w} }

// Start resets the bar for total steps.
func (p *Progress) Start(total int) {
	if p == nil {
		return
	}
	p.total, p.n, p.failures, p.start = total, 0, 0, time.Now()
	p.draw()
}

// Step counts one finished boot.
func (p *Progress) Step(failures int) {
	if p == nil {
		return
	}
	p.n++
	p.failures = failures
	p.draw()
}

// Clear erases the bar so that a log line can be printed cleanly; the next
// Step draws it again.
func (p *Progress) Clear() {
	if p == nil || p.lastLength == 0 {
		return
	}
	fmt.Fprintf(p.w, "\r%s\r", strings.Repeat(" ", p.lastLength))
	p.lastLength = 0
}

// Done erases the bar for good.
func (p *Progress) Done() { p.Clear() }

const barWidth = 30

func (p *Progress) draw() {
	if p.total <= 0 {
		return
	}
	filled := barWidth * p.n / p.total
	line := fmt.Sprintf("[%s%s] %d/%d boots", strings.Repeat("#", filled), strings.Repeat(".", barWidth-filled), p.n, p.total)
	if p.failures > 0 {
		line += fmt.Sprintf(", %d failed", p.failures)
	}
	if p.n > 0 && p.n < p.total {
		left := time.Duration(float64(time.Since(p.start)) / float64(p.n) * float64(p.total-p.n))
		line += fmt.Sprintf(", ~%v left", left.Round(100*time.Millisecond))
	}
	pad := ""
	if d := p.lastLength - len(line); d > 0 {
		pad = strings.Repeat(" ", d)
	}
	fmt.Fprintf(p.w, "\r%s%s", line, pad)
	p.lastLength = len(line)
}
