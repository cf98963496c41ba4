package api

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/voltvmm/volt/vmm/api/types"
)

// newLogHandler builds the handler PUT /logger asks for: records at level
// and above, with the level and the source position shown only when asked,
// and, when module is set, only records of that module or below it.
func newLogHandler(w io.Writer, cfg types.Logger) (slog.Handler, error) {
	level := slog.LevelInfo // the swagger's default
	if cfg.Level != "" {
		var err error
		if level, err = types.ParseLevel(cfg.Level); err != nil {
			return nil, err
		}
	}
	opts := &slog.HandlerOptions{
		Level:     level,
		AddSource: cfg.ShowLogOrigin,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.LevelKey && !cfg.ShowLevel {
				return slog.Attr{}
			}
			return a
		},
	}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if cfg.Module != "" {
		h = &moduleFilter{next: h, want: cfg.Module}
	}
	return h, nil
}

// ModuleKey is the attribute that names the part of volt-vmm a record
// comes from ("api", "vmm"), which Logger.module filters on.
const ModuleKey = "module"

// moduleFilter passes only records whose module attribute starts with want.
type moduleFilter struct {
	next   slog.Handler
	want   string
	module string // from WithAttrs
}

func (f *moduleFilter) Enabled(ctx context.Context, l slog.Level) bool {
	return f.next.Enabled(ctx, l)
}

func (f *moduleFilter) Handle(ctx context.Context, r slog.Record) error {
	module := f.module
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == ModuleKey {
			module = a.Value.String()
			return false
		}
		return true
	})
	if !strings.HasPrefix(module, f.want) {
		return nil
	}
	return f.next.Handle(ctx, r)
}

func (f *moduleFilter) WithAttrs(attrs []slog.Attr) slog.Handler {
	g := &moduleFilter{next: f.next.WithAttrs(attrs), want: f.want, module: f.module}
	for _, a := range attrs {
		if a.Key == ModuleKey {
			g.module = a.Value.String()
		}
	}
	return g
}

func (f *moduleFilter) WithGroup(name string) slog.Handler {
	return &moduleFilter{next: f.next.WithGroup(name), want: f.want, module: f.module}
}

// swapHandler forwards to a handler that PUT /logger can replace while
// loggers derived from it are in use on other goroutines.
type swapHandler struct {
	cur   *atomic.Pointer[slog.Handler]
	attrs []slog.Attr
	group string
}

func newSwapHandler(h slog.Handler) *swapHandler {
	p := new(atomic.Pointer[slog.Handler])
	p.Store(&h)
	return &swapHandler{cur: p}
}

func (s *swapHandler) set(h slog.Handler) { s.cur.Store(&h) }

// target applies this view's attributes to the current handler. Derived
// loggers are few and long-lived, so rebuilding per record is cheap enough
// next to formatting it.
func (s *swapHandler) target() slog.Handler {
	h := *s.cur.Load()
	if s.group != "" {
		h = h.WithGroup(s.group)
	}
	if len(s.attrs) > 0 {
		h = h.WithAttrs(s.attrs)
	}
	return h
}

func (s *swapHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return (*s.cur.Load()).Enabled(ctx, l)
}

func (s *swapHandler) Handle(ctx context.Context, r slog.Record) error {
	return s.target().Handle(ctx, r)
}

func (s *swapHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &swapHandler{cur: s.cur, attrs: append(append([]slog.Attr(nil), s.attrs...), attrs...), group: s.group}
}

func (s *swapHandler) WithGroup(name string) slog.Handler {
	// Groups nest attributes added later; one level is all volt uses, and
	// attributes added before the group stay outside it.
	if s.group != "" || len(s.attrs) > 0 {
		return s.target().WithGroup(name)
	}
	return &swapHandler{cur: s.cur, group: name}
}
