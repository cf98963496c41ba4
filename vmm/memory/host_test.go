package memory

import (
	"strings"
	"testing"
)

func TestParseMeminfo(t *testing.T) {
	tests := []struct {
		name, in string
		want     uint64
		wantErr  string
	}{
		{"ram and swap", "MemTotal:       24000000 kB\nMemFree: 1 kB\nSwapTotal:     1000 kB\n", (24000000 + 1000) << 10, ""},
		{"no swap", "SwapTotal: 0 kB\nMemTotal: 1024 kB\n", 1 << 20, ""},
		{"missing swap", "MemTotal: 1024 kB\n", 0, "no MemTotal and SwapTotal"},
		{"bad unit", "MemTotal: 1024 MB\nSwapTotal: 0 kB\n", 0, "malformed MemTotal line"},
		{"bad number", "MemTotal: x kB\nSwapTotal: 0 kB\n", 0, "malformed MemTotal value"},
		{"absurd number", "MemTotal: 99999999999999999 kB\nSwapTotal: 0 kB\n", 0, "malformed MemTotal value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMeminfo([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("parseMeminfo = %d, %v; want %d", got, err, tt.want)
			}
		})
	}
	if n, err := HostBacking(); err != nil || n < 64<<20 {
		t.Fatalf("HostBacking on this host = %d, %v", n, err)
	}
}

func FuzzParseMeminfo(f *testing.F) {
	f.Add([]byte("MemTotal: 1024 kB\nSwapTotal: 0 kB\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if n, err := parseMeminfo(b); err == nil && n > 2<<60 {
			t.Fatalf("absurd total %d accepted", n)
		}
	})
}
