package profile

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestLookup(t *testing.T) {
	tests := []struct {
		name        string
		wantCmdline []string
		wantMask    []string
		wantErr     bool
	}{
		{name: "none"},
		{
			name: "nested-pvm",
			wantCmdline: []string{"noxsave", "clearcpuid=smap,smep,pku,popcnt,cx16,rdrand,rdseed,rdtscp,114",
				"nofsgsbase", "no_int3_selftest", "tsc=reliable", "no_timer_check", "idle=halt",
				"volt_syscall_from_pf", "volt_no_fwait_on_drop", "volt.genid_interval=1s"},
			wantMask: []string{"kvm_pv_send_ipi", "kvm_pv_sched_yield", "kvm_pv_tlb_flush", "kvm_pv_unhalt"},
		},
		{name: "", wantErr: true},
		{name: "Nested-PVM", wantErr: true},
		{name: "default", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Lookup(tt.name)
			if tt.wantErr {
				if !errors.Is(err, ErrUnknown) || !strings.Contains(err.Error(), "known: nested-pvm, none") {
					t.Fatalf("Lookup(%q) error = %v, want ErrUnknown listing the names", tt.name, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Name != tt.name || p.Doc == "" {
				t.Errorf("profile %+v: wrong name or no doc", p)
			}
			if len(p.Cmdline) != 0 || len(tt.wantCmdline) != 0 {
				if !reflect.DeepEqual(p.Cmdline, tt.wantCmdline) {
					t.Errorf("Cmdline = %q, want %q", p.Cmdline, tt.wantCmdline)
				}
			}
			if len(p.CPUIDMask) != 0 || len(tt.wantMask) != 0 {
				if !reflect.DeepEqual(p.CPUIDMask, tt.wantMask) {
					t.Errorf("CPUIDMask = %q, want %q", p.CPUIDMask, tt.wantMask)
				}
			}
		})
	}
}

// A caller that edits its copy must not change the table.
func TestLookupReturnsCopies(t *testing.T) {
	p, err := Lookup(NestedPVM)
	if err != nil {
		t.Fatal(err)
	}
	p.Cmdline[0] = "changed"
	p.CPUIDMask[0] = "changed"
	q, _ := Lookup(NestedPVM)
	if q.Cmdline[0] == "changed" || q.CPUIDMask[0] == "changed" {
		t.Fatal("Lookup handed out the table's own slices")
	}
}

func TestNames(t *testing.T) {
	if got, want := Names(), []string{"nested-pvm", "none"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Names() = %q, want %q", got, want)
	}
	for _, n := range Names() {
		if _, err := Lookup(n); err != nil {
			t.Errorf("Lookup(%q): %v", n, err)
		}
	}
}

// Every option must be one kernel parameter: no blanks, no quotes.
func TestOptionsAreSingleParameters(t *testing.T) {
	for _, n := range Names() {
		p, _ := Lookup(n)
		for _, opt := range p.Cmdline {
			if opt == "" || opt == "--" || strings.ContainsAny(opt, " \t\n\v\f\r\"\xa0") {
				t.Errorf("profile %s: option %q is not a single parameter", n, opt)
			}
		}
		for _, f := range p.CPUIDMask {
			if f == "" || strings.ContainsAny(f, ", ") {
				t.Errorf("profile %s: CPUID feature %q", n, f)
			}
		}
	}
}

func TestApply(t *testing.T) {
	p := Profile{Name: "t", Cmdline: []string{"noxsave", "volt_syscall_from_pf"}}
	tests := []struct {
		name, in, want, wantErr string
	}{
		{name: "empty", in: "", want: "noxsave volt_syscall_from_pf"},
		{name: "appends", in: "console=ttyS0 reboot=k", want: "console=ttyS0 reboot=k noxsave volt_syscall_from_pf"},
		{name: "trailing blanks", in: "console=ttyS0 \t", want: "console=ttyS0 noxsave volt_syscall_from_pf"},
		{name: "already there", in: "noxsave console=ttyS0", want: "noxsave console=ttyS0 volt_syscall_from_pf"},
		{name: "all there", in: "volt_syscall_from_pf  noxsave", want: "volt_syscall_from_pf  noxsave"},
		{name: "not the same spelling", in: "noxsave=1", want: "noxsave=1 noxsave volt_syscall_from_pf"},
		{name: "before init args", in: "console=ttyS0 -- volt.run=x noxsave",
			want: "console=ttyS0 noxsave volt_syscall_from_pf -- volt.run=x noxsave"},
		{name: "only init args", in: "-- a", want: "noxsave volt_syscall_from_pf -- a"},
		// next_arg strips the quotes, so "--" separates too.
		{name: "quoted dashes", in: `a "--" b`, want: `a noxsave volt_syscall_from_pf "--" b`},
		{name: "dashes with value", in: "--=x", want: "--=x noxsave volt_syscall_from_pf"},
		{name: "dashes in a value", in: `volt.run="sh -- x" y`, want: `volt.run="sh -- x" y noxsave volt_syscall_from_pf`},
		{name: "longer dashes", in: "--- x", want: "--- x noxsave volt_syscall_from_pf"},
		{name: "unterminated quote", in: `volt.run="sh -c x`, wantErr: "unterminated double quote"},
		{name: "unterminated quote after dashes", in: `a -- "b`, want: `a noxsave volt_syscall_from_pf -- "b`},
	}
	// The caller's volt.* parameter wins over the profile's default, which
	// volt-init would otherwise read last.
	withInit := Profile{Name: "i", Cmdline: []string{"noxsave", "volt.genid_interval=1s"}}
	for _, tt := range []struct{ in, want string }{
		{"console=ttyS0", "console=ttyS0 noxsave volt.genid_interval=1s"},
		{"volt.genid_interval=off", "volt.genid_interval=off noxsave"},
		{"volt.genid_interval=1s", "volt.genid_interval=1s noxsave"},
		{"volt.genid_intervalx=2s", "volt.genid_intervalx=2s noxsave volt.genid_interval=1s"},
	} {
		if got, err := withInit.Apply(tt.in); err != nil || got != tt.want {
			t.Errorf("Apply(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := p.Apply(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Apply(%q) = %q, %v; want error %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Apply(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
	none, _ := Lookup(None)
	if got, err := none.Apply("console=ttyS0  -- x"); err != nil || got != "console=ttyS0  -- x" {
		t.Errorf("none.Apply changed the command line: %q, %v", got, err)
	}
}

// kernelParams splits s as the kernel does: the raw parameters before "--",
// and the text from the "--" on (init's arguments), if there is one.
func kernelParams(s string) (params []string, initPart string) {
	for i := skipSpaces(s, 0); i < len(s); {
		a := nextArg(s, i)
		if a.param == "--" && !a.hasVal {
			return params, s[i:]
		}
		params = append(params, s[i:a.end])
		i = skipSpaces(s, a.end)
	}
	return params, ""
}

func FuzzApply(f *testing.F) {
	for _, s := range []string{
		"", "console=ttyS0 reboot=k panic=1", `volt.run="sh -c 'echo hi'" -- x`, `a "--" b`,
		`"unterminated`, "noxsave\t\xa0--\xa0y", `k="v" "x y"z -- "`, "=-- --= -",
	} {
		f.Add(s)
	}
	p, err := Lookup(NestedPVM)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := p.Apply(in)
		if err != nil {
			return
		}
		params, _ := kernelParams(out)
		seen := map[string]bool{}
		for _, a := range params {
			seen[a] = true
		}
		for _, opt := range p.Cmdline {
			if !seen[opt] {
				t.Fatalf("Apply(%q) = %q: the kernel does not see %q", in, out, opt)
			}
		}
		// What follows "--" reaches init unchanged.
		if _, want := kernelParams(in); want != "" {
			if _, got := kernelParams(out); got != want {
				t.Fatalf("Apply(%q) = %q changed init's arguments %q to %q", in, out, want, got)
			}
		}
		again, err := p.Apply(out)
		if err != nil || again != out {
			t.Fatalf("Apply is not idempotent: %q -> %q -> %q (%v)", in, out, again, err)
		}
	})
}
