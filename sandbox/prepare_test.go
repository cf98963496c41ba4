package sandbox

import (
	"os"
	"reflect"
	"sync"
	"testing"
)

// TestPrepareBuildsWhatApplyInstalls: the policy Prepare caches for a role
// assembles to the very program Compile gives for this process, concurrent
// callers share one build, and the errors are the ones Apply would give.
func TestPrepareBuildsWhatApplyInstalls(t *testing.T) {
	for _, o := range []Options{DefaultOptions, {Level: LevelSyscalls, Action: ActionTrap}} {
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				if err := Prepare(o, Roles()...); err != nil {
					t.Errorf("Prepare(%+v): %v", o, err)
				}
			})
		}
		wg.Wait()
		for _, r := range Roles() {
			p, err := preparedFor(r, o)
			if err != nil {
				t.Fatalf("%s: %v", r, err)
			}
			got, err := p.Assemble()
			if err != nil {
				t.Fatalf("%s: assemble the prepared policy: %v", r, err)
			}
			want, err := Compile(r, o, os.Getpid())
			if err != nil {
				t.Fatalf("%s: %v", r, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s %+v: the prepared policy assembles to %d instructions that differ from Compile's %d", r, o, len(got), len(want))
			}
			prepared.mu.Lock()
			n := 0
			for k := range prepared.m {
				if k.role == r && k.opts == o {
					n++
				}
			}
			prepared.mu.Unlock()
			if n != 1 {
				t.Errorf("%s %+v: %d cached policies, want 1", r, o, n)
			}
		}
	}
	if err := Prepare(Options{Level: LevelOff}, RoleVMM); err != nil {
		t.Errorf("Prepare at level 0: %v, want nothing to do", err)
	}
	if err := Prepare(DefaultOptions, Role("no-such-role")); err == nil {
		t.Error("Prepare of an unknown role succeeded")
	}
}

// BenchmarkCompile is what ApplyProcess did twice and ApplyThread once on
// the path to the guest's first instruction; BenchmarkPrepared is what a
// prepared role costs them now (LoadFilter still assembles the policy
// once: BenchmarkAssemble).
func BenchmarkCompile(b *testing.B) {
	for _, r := range []Role{RoleVMM, RoleVCPU} {
		b.Run(string(r), func(b *testing.B) {
			for b.Loop() {
				if _, err := Compile(r, DefaultOptions, os.Getpid()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkPrepared(b *testing.B) {
	for _, r := range []Role{RoleVMM, RoleVCPU} {
		b.Run(string(r), func(b *testing.B) {
			for b.Loop() {
				if _, err := preparedFor(r, DefaultOptions); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkAssemble(b *testing.B) {
	for _, r := range []Role{RoleVMM, RoleVCPU} {
		p, err := preparedFor(r, DefaultOptions)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(string(r), func(b *testing.B) {
			for b.Loop() {
				if _, err := p.Assemble(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
