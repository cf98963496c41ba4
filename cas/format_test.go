package cas

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestValidateRefName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"alpine", true},
		{"alpine:3.19", true},
		{"user@host+vm_1-a.b", true},
		{"7", true},
		{strings.Repeat("a", MaxRefNameLen), true},
		{strings.Repeat("a", MaxRefNameLen+1), false},
		{"", false},
		{".", false},
		{"..", false},
		{".hidden", false},
		{"a/b", false},
		{"../etc/passwd", false},
		{"a..b", false},
		{"-flag", false},
		{"a b", false},
		{"a\x00b", false},
		{"a\nb", false},
		{"ünicode", false},
		{"a\\b", false},
	}
	for _, tt := range tests {
		err := ValidateRefName(tt.name)
		if (err == nil) != tt.ok {
			t.Errorf("ValidateRefName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrBadRefName) {
			t.Errorf("error %v does not wrap ErrBadRefName", err)
		}
	}
}

func TestManifestEncoding(t *testing.T) {
	a, b := Sum([]byte("a")), Sum([]byte("b"))
	tests := []struct {
		name string
		m    Manifest
		ok   bool
	}{
		{"empty", Manifest{Kind: KindImage, ChunkSize: DefaultChunkSize}, true},
		{"short last chunk", Manifest{Kind: KindMemory, ChunkSize: 4096, Size: 4097, Chunks: []Digest{a, b}}, true},
		{"holes", Manifest{Kind: KindVolume, ChunkSize: 4096, Size: 3 * 4096, Chunks: []Digest{{}, a, {}}}, true},
		{"too few chunks", Manifest{Kind: KindImage, ChunkSize: 4096, Size: 4097, Chunks: []Digest{a}}, false},
		{"too many chunks", Manifest{Kind: KindImage, ChunkSize: 4096, Size: 4096, Chunks: []Digest{a, b}}, false},
		{"chunk size not a power of two", Manifest{Kind: KindImage, ChunkSize: 3 << 20}, false},
		{"chunk size too small", Manifest{Kind: KindImage, ChunkSize: 2048}, false},
		{"unknown kind", Manifest{Kind: 9, ChunkSize: 4096}, false},
		{"negative size", Manifest{Kind: KindImage, ChunkSize: 4096, Size: -1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			enc, err := tt.m.MarshalBinary()
			if (err == nil) != tt.ok {
				t.Fatalf("MarshalBinary: %v, want ok=%v", err, tt.ok)
			}
			if !tt.ok {
				return
			}
			got, err := ParseManifest(enc)
			if err != nil {
				t.Fatal(err)
			}
			if got.Kind != tt.m.Kind || got.Size != tt.m.Size || got.ChunkSize != tt.m.ChunkSize || len(got.Chunks) != len(tt.m.Chunks) {
				t.Fatalf("round trip: %+v, want %+v", got, tt.m)
			}
			if got.Digest() != tt.m.Digest() {
				t.Fatal("digest changed in a round trip")
			}
			// Every single-byte change of the header is refused or yields a
			// different manifest, and trailing bytes are refused.
			if _, err := ParseManifest(append(enc, 0)); err == nil {
				t.Error("accepted a trailing byte")
			}
			if _, err := ParseManifest(enc[:len(enc)-1]); err == nil {
				t.Error("accepted a truncated manifest")
			}
		})
	}
}

func TestLeaseEncoding(t *testing.T) {
	a := Sum([]byte("a"))
	tests := []struct {
		name string
		r    LeaseRecord
		ok   bool
	}{
		{"one manifest", LeaseRecord{PID: 42, Manifests: []Digest{a}}, true},
		{"with expiry", LeaseRecord{PID: 42, Expires: time.Unix(2000000000, 0), Manifests: []Digest{a, Sum([]byte("b"))}}, true},
		{"no manifest", LeaseRecord{PID: 42}, false},
		{"repeated manifest", LeaseRecord{PID: 42, Manifests: []Digest{a, a}}, false},
		{"zero digest", LeaseRecord{PID: 42, Manifests: []Digest{{}}}, false},
	}
	for _, tt := range tests {
		b, err := EncodeLease(tt.r)
		if (err == nil) != tt.ok {
			t.Errorf("%s: EncodeLease: %v", tt.name, err)
			continue
		}
		if !tt.ok {
			continue
		}
		got, err := ParseLease(b)
		if err != nil {
			t.Errorf("%s: ParseLease: %v", tt.name, err)
			continue
		}
		if got.PID != tt.r.PID || !got.Expires.Equal(tt.r.Expires) || len(got.Manifests) != len(tt.r.Manifests) {
			t.Errorf("%s: round trip %+v", tt.name, got)
		}
	}
	for _, bad := range []string{
		"", "volt-cas-lease 1\n", "volt-cas-lease 2\npid 1\nexpires 0\nmanifest " + a.String() + "\n",
		"volt-cas-lease 1\npid -1\nexpires 0\nmanifest " + a.String() + "\n",
		"volt-cas-lease 1\npid 1\nexpires 0\nmanifest " + a.String(),
		"volt-cas-lease 1\npid 1\nexpires 0\nmanifest " + a.String() + "\n\n",
	} {
		if _, err := ParseLease([]byte(bad)); !errors.Is(err, ErrBadLease) {
			t.Errorf("ParseLease(%q) = %v, want ErrBadLease", bad, err)
		}
	}
}
