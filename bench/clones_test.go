package bench

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/voltvmm/volt/bench/smaps"
)

func TestCloneSpecValidateAndRestoreArgs(t *testing.T) {
	a := &Snapshot{Dir: "/a", MemFileBytes: 1, TouchPages: 10, CAS: []*CASSnapshot{{Store: "/s", Dir: "/a/cas"}}}
	b := &Snapshot{Dir: "/b", MemFileBytes: 1, TouchPages: 20, CAS: []*CASSnapshot{{Store: "/s", Dir: "/b/cas"}}}
	ok := CloneSpec{VMMBin: "v", Snapshots: []*Snapshot{a, b}, N: 4, Timeout: time.Second}
	for _, arm := range CloneArms {
		s := ok
		s.Arm = arm
		if err := s.Validate(); err != nil {
			t.Errorf("%s: %v", arm, err)
		}
	}
	s := ok
	s.Arm = CloneCAS
	if got, want := s.restoreArgs(b), []string{"--restore", "/b/cas", "--cas-store", "/s", "--console", "stdio"}; !slices.Equal(got, want) {
		t.Errorf("CAS clone args %q, want %q", got, want)
	}
	if m := s.guestFiles(b); !m("/s/chunks/ab/ab12") || m("/s/manifests/ab/ab12") || m("/b/vm.mem") {
		t.Error("CAS guest memory is not the store's chunk files")
	}
	s.Arm = CloneFile
	if got, want := s.restoreArgs(b), []string{"--restore", "/b", "--console", "stdio"}; !slices.Equal(got, want) {
		t.Errorf("file clone args %q, want %q", got, want)
	}
	if m := s.guestFiles(b); !m("/b/vm.mem") || m("/a/vm.mem") {
		t.Error("file guest memory is not the snapshot's own memory file")
	}
	other := &Snapshot{Dir: "/c", MemFileBytes: 1, CAS: []*CASSnapshot{{Store: "/t", Dir: "/c/cas"}}}
	for name, spec := range map[string]CloneSpec{
		"no clones":          {VMMBin: "v", Snapshots: []*Snapshot{a}, N: 0, Arm: CloneFile, Timeout: time.Second},
		"no snapshot":        {VMMBin: "v", N: 1, Arm: CloneFile, Timeout: time.Second},
		"unknown arm":        {VMMBin: "v", Snapshots: []*Snapshot{a}, N: 1, Arm: "shared", Timeout: time.Second},
		"CAS without a copy": {VMMBin: "v", Snapshots: []*Snapshot{{Dir: "/x", MemFileBytes: 1}}, N: 1, Arm: CloneCAS, Timeout: time.Second},
		"two stores":         {VMMBin: "v", Snapshots: []*Snapshot{a, other}, N: 2, Arm: CloneCAS, Timeout: time.Second},
		"file without file":  {VMMBin: "v", Snapshots: []*Snapshot{{Dir: "/x", CAS: a.CAS}}, N: 1, Arm: CloneFile, Timeout: time.Second},
		"private of nothing": {VMMBin: "v", Snapshots: []*Snapshot{{Dir: "/x", MemFileBytes: 1}}, N: 1, Arm: ClonePrivate, Timeout: time.Second},
	} {
		if err := spec.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestWriteCloneArmsSideBySide(t *testing.T) {
	snaps := []*Snapshot{{Memory: "128M", CPUs: 1, TouchPages: 10, Work: "touch 10"}, {Memory: "128M", CPUs: 1, TouchPages: 20}}
	rep := func(arm string, pss, guestPss uint64) *CloneReport {
		r := &CloneReport{Arm: arm, Snapshots: snaps}
		for i := range 4 {
			r.Clones = append(r.Clones, Clone{Snapshot: i % 2, GenID: strings.Repeat(string(rune('a'+i)), 32),
				Total: smaps.Rollup{Rss: 2 * pss, Pss: pss}, Guest: smaps.Rollup{Rss: 2 * guestPss, Pss: guestPss}})
		}
		return r
	}
	var buf bytes.Buffer
	if err := WriteCloneArms(&buf, []*CloneReport{rep(CloneCAS, 1024, 256), rep(CloneFile, 2048, 512), rep(ClonePrivate, 4096, 1024)}); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"snapshot A", "snapshot B", "work after the template: touch 10", "work after the template: none", "total Pss / cas", "2.00×", "4.00×", "generation IDs distinct"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	dup := rep(CloneFile, 1, 1)
	dup.Clones[1].GenID = dup.Clones[0].GenID
	buf.Reset()
	WriteCloneArms(&buf, []*CloneReport{dup})
	if !strings.Contains(buf.String(), "NOT distinct") || strings.Contains(buf.String(), "generation IDs distinct") {
		t.Errorf("repeated generation IDs not called out:\n%s", buf.String())
	}
	if err := WriteCloneArms(&buf, nil); err == nil {
		t.Error("no arms: no error")
	}
}
