package cas

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// Every parser of store files is fuzzed: what it accepts must re-encode to
// the same bytes (one encoding per value), and nothing may panic.

func FuzzParseManifest(f *testing.F) {
	for _, m := range []*Manifest{
		{Kind: KindImage, ChunkSize: DefaultChunkSize},
		{Kind: KindMemory, ChunkSize: MinChunkSize, Size: 3*MinChunkSize - 1, Chunks: []Digest{Sum([]byte("a")), {}, Sum([]byte("b"))}},
		{Kind: KindVolume, ChunkSize: 64 << 10, Size: 1, Chunks: []Digest{Sum([]byte{1})}},
	} {
		b, err := m.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("VOLTCASM"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest(b)
		if err != nil {
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("parsed an invalid manifest: %v", err)
		}
		again, err := m.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, b) {
			t.Fatal("accepted a non-canonical encoding")
		}
		for i := range m.Chunks {
			if n := m.ChunkLen(i); n <= 0 || n > m.ChunkSize {
				t.Fatalf("chunk %d length %d", i, n)
			}
		}
	})
}

func FuzzParseRef(f *testing.F) {
	f.Add(EncodeRef(Sum([]byte("x"))))
	f.Add([]byte(strings.Repeat("0", 64) + "\n"))
	f.Add([]byte(strings.Repeat("A", 64) + "\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseRef(b)
		if err != nil {
			return
		}
		if !bytes.Equal(EncodeRef(d), b) {
			t.Fatal("accepted a non-canonical ref file")
		}
	})
}

func FuzzParseVersion(f *testing.F) {
	f.Add(EncodeVersion(StoreVersion))
	f.Add(EncodeVersion(123456789))
	f.Add([]byte("volt-cas-store 01\n"))
	f.Add([]byte("volt-cas-store -1\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := ParseVersion(b)
		if err != nil {
			return
		}
		if v <= 0 || !bytes.Equal(EncodeVersion(v), b) {
			t.Fatalf("accepted %q as version %d", b, v)
		}
	})
}

func FuzzParseLease(f *testing.F) {
	for _, r := range []LeaseRecord{
		{PID: 1, Manifests: []Digest{Sum([]byte("m"))}},
		{PID: 4194304, Expires: time.Unix(1900000000, 0), Manifests: []Digest{Sum([]byte("a")), Sum([]byte("b"))}},
	} {
		b, err := EncodeLease(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("volt-cas-lease 1\npid 01\nexpires 0\nmanifest x\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseLease(b)
		if err != nil {
			return
		}
		again, err := EncodeLease(r)
		if err != nil {
			t.Fatalf("parsed lease does not encode: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("accepted a non-canonical lease file %q", b)
		}
	})
}

func FuzzValidateRefName(f *testing.F) {
	for _, s := range []string{"alpine", "alpine:3.19", "../x", "a/b", ".", "a..b", "x\x00", strings.Repeat("a", 200)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if ValidateRefName(name) != nil {
			return
		}
		if strings.ContainsAny(name, "/\x00\\\n") || strings.Contains(name, "..") || name[0] == '.' || len(name) > MaxRefNameLen {
			t.Fatalf("accepted %q", name)
		}
	})
}

func FuzzParseDigest(f *testing.F) {
	f.Add(Sum(nil).String())
	f.Add(strings.ToUpper(Sum(nil).String()))
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDigest(s)
		if err != nil {
			return
		}
		if d.String() != s {
			t.Fatalf("accepted %q, which prints as %q", s, d)
		}
	})
}
