package voltinit

import (
	"strings"
	"testing"
)

func TestParseMemTotal(t *testing.T) {
	tests := []struct {
		in      string
		want    uint64
		wantErr string
	}{
		{"MemTotal:         500400 kB\nMemFree:          480000 kB\n", 488, ""},
		{"MemFree: 1 kB\nMemTotal: 1048576 kB\n", 1024, ""},
		{"MemTotal: 1023 kB\n", 0, ""},
		{"MemFree: 1 kB\n", 0, "no MemTotal"},
		{"", 0, "no MemTotal"},
		{"MemTotal: 12 MB\n", 0, "is not \"N kB\""},
		{"MemTotal: x kB\n", 0, "MemTotal"},
		{"MemTotal:\n", 0, "is not \"N kB\""},
	}
	for _, tt := range tests {
		got, err := ParseMemTotal([]byte(tt.in))
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseMemTotal(%q) error = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseMemTotal(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}

func TestParseCPUList(t *testing.T) {
	tests := []struct {
		in      string
		want    int
		wantErr bool
	}{
		{"0\n", 1, false},
		{"0-3\n", 4, false},
		{"0-3,5,7-8", 7, false},
		{"", 0, true},
		{"3-1", 0, true},
		{"a", 0, true},
		{"0-", 0, true},
		{"0,,1", 0, true},
		{"0-99999", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseCPUList([]byte(tt.in))
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseCPUList(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}
