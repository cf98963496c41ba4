package types

import (
	"fmt"
	"log/slog"
	"math"
	"strings"
)

// LevelOff is above every level a record can have.
const LevelOff = slog.Level(math.MaxInt32)

// LevelTrace is Firecracker's Trace, below slog's Debug.
const LevelTrace = slog.LevelDebug - 4

// ParseLevel reads the swagger Logger.level, case-insensitively as the
// swagger says.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "error":
		return slog.LevelError, nil
	case "warning", "warn":
		return slog.LevelWarn, nil
	case "info":
		return slog.LevelInfo, nil
	case "debug":
		return slog.LevelDebug, nil
	case "trace":
		return LevelTrace, nil
	case "off":
		return LevelOff, nil
	}
	return 0, fmt.Errorf("level must be one of Error, Warning, Info, Debug, Trace, Off (any case), got %q", s)
}
