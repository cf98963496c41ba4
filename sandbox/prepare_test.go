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
			e := preparedFor(r, o)
			if err := e.check(); err != nil {
				t.Fatalf("%s: %v", r, err)
			}
			got, err := e.policy.Assemble()
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
// built role costs them now, which LoadFilter then assembles once
// (BenchmarkAssemble).
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
				if e := preparedFor(r, DefaultOptions); e.err != nil {
					b.Fatal(e.err)
				}
			}
		})
	}
}

func BenchmarkAssemble(b *testing.B) {
	for _, r := range []Role{RoleVMM, RoleVCPU} {
		e := preparedFor(r, DefaultOptions)
		if e.err != nil {
			b.Fatal(e.err)
		}
		b.Run(string(r), func(b *testing.B) {
			for b.Loop() {
				if _, err := e.policy.Assemble(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestTablesAreMergedPerRoleOnFirstUse: asking for one role's table merges
// that role's alone, and asking again returns the same table.
func TestTablesAreMergedPerRoleOnFirstUse(t *testing.T) {
	if _, err := TableFor(RoleRNG); err != nil {
		t.Fatal(err)
	}
	merged.mu.Lock()
	_, rng := merged.m[RoleRNG]
	merged.mu.Unlock()
	if !rng {
		t.Fatal("the rng table was not kept")
	}
	a, _ := TableFor(RoleRNG)
	b, _ := TableFor(RoleRNG)
	if &a[0] != &b[0] {
		t.Error("a second TableFor merged the table again")
	}
	if _, err := TableFor(Role("no-such-role")); err == nil {
		t.Error("TableFor of an unknown role succeeded")
	}
}
