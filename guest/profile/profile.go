// Package profile names guest profiles: the kernel command-line options and
// the CPUID features a VMM adds so that Volt's Linux guest runs on one kind
// of host. A profile is chosen explicitly (volt-vmm --guest-profile, a test,
// voltbench); nothing in the product detects the host and picks one itself.
//
// The options and the reasons for each are documented in guest/README.md,
// sections (c) and (d); the volt_* options come from our kernel patches in
// guest/kernel/patches.
package profile

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Profile is what a VMM adds to a guest for one kind of host.
type Profile struct {
	Name string
	// Cmdline holds kernel parameters to add to the command line, one per
	// entry, in the kernel's syntax.
	Cmdline []string
	// CPUIDMask names CPU features to hide from the guest, as vmm/cpu
	// names them (e.g. kvm_pv_send_ipi).
	CPUIDMask []string
	// Doc says which hosts the profile is for and why.
	Doc string
}

// None adds nothing: the guest runs as on any hardware-assisted KVM host.
const None = "none"

// NestedPVM is for nested, software-assisted KVM hosts (kvm_pvm), where
// guest ring 0 runs in KVM's instruction emulator; the development and CI
// machines are such hosts.
const NestedPVM = "nested-pvm"

// ErrUnknown is wrapped by Lookup's error for a name it does not know.
var ErrUnknown = errors.New("unknown guest profile")

var profiles = map[string]Profile{
	None: {
		Name: None,
		Doc:  "adds nothing: for hardware-assisted KVM hosts",
	},
	NestedPVM: {
		Name: NestedPVM,
		Cmdline: []string{
			// Instructions KVM's emulator cannot run (guest/README.md (c)).
			"noxsave",
			"clearcpuid=smap,smep,pku,popcnt,cx16,rdrand,rdseed,rdtscp,114", // 114: X86_FEATURE_LFENCE_RDTSC
			"nofsgsbase",
			"no_int3_selftest", // patch 0001
			// No TSC recalibration or timer checks, which take minutes when
			// every kernel instruction is emulated.
			"tsc=reliable",
			"no_timer_check",
			"idle=halt",
			// The host leaves SYSCALL at CPL 3 (patch 0003) and cannot
			// emulate FWAIT (patch 0004).
			"volt_syscall_from_pf",
			"volt_no_fwait_on_drop",
			// volt-init's generation-ID poll wakes the guest every 100 ms by
			// default; here each wake-up is ~16,000 emulated instructions,
			// so an idle VM cost 169k instructions/s at 100 ms and 26k at
			// 1 s (guest/README.md (e)). Agent requests check the ID before
			// they run whatever the interval, so a restored clone answers
			// with a reseeded RNG either way.
			"volt.genid_interval=1s",
		},
		// PV IPIs, yields and TLB flushes are hypercalls this host never
		// completes: with two vCPUs the boot hangs when the second starts.
		// Without PV unhalt the guest also keeps PV spinlocks off.
		CPUIDMask: []string{"kvm_pv_send_ipi", "kvm_pv_sched_yield", "kvm_pv_tlb_flush", "kvm_pv_unhalt"},
		Doc: "nested, software-assisted KVM (kvm_pvm; guest ring 0 runs in KVM's " +
			"instruction emulator), e.g. the development and CI machines: hides " +
			"instructions the emulator lacks, completes system calls the host leaves " +
			"at CPL 3, and hides KVM's paravirtual IPI/yield/TLB-flush/unhalt features",
	},
}

// Lookup returns the profile called name. The slices are the caller's own.
func Lookup(name string) (Profile, error) {
	p, ok := profiles[name]
	if !ok {
		return Profile{}, fmt.Errorf("%w %q (known: %s)", ErrUnknown, name, strings.Join(Names(), ", "))
	}
	p.Cmdline = append([]string(nil), p.Cmdline...)
	p.CPUIDMask = append([]string(nil), p.CPUIDMask...)
	return p, nil
}

// Names lists the known profiles, sorted.
func Names() []string {
	names := make([]string, 0, len(profiles))
	for n := range profiles {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Apply returns cmdline with the profile's options added where the kernel
// reads them: before a "--" parameter (everything after it is handed to
// init as arguments), or else at the end. An option that cmdline already
// holds before the "--", spelt the same, is not repeated. A command line
// that ends inside a double quote would swallow the options, so it is an
// error.
func (p Profile) Apply(cmdline string) (string, error) {
	var (
		have       = map[string]bool{}
		names      = map[string]bool{}
		kernelPart = cmdline
		initPart   string
	)
	for i := skipSpaces(cmdline, 0); i < len(cmdline); {
		a := nextArg(cmdline, i)
		if a.param == "--" && !a.hasVal {
			kernelPart, initPart = cmdline[:i], cmdline[i:]
			break
		}
		if a.openQuote {
			return "", fmt.Errorf("kernel command line %q: unterminated double quote", cmdline)
		}
		have[cmdline[i:a.end]] = true
		names[a.param] = true
		i = skipSpaces(cmdline, a.end)
	}
	var add []string
	for _, opt := range p.Cmdline {
		// volt-init takes the last of a repeated volt.* parameter, so a
		// profile default appended after the caller's own would override
		// it: the caller's wins instead.
		if name, _, hasVal := strings.Cut(opt, "="); hasVal && strings.HasPrefix(name, "volt.") && names[name] {
			continue
		}
		if !have[opt] {
			add = append(add, opt)
			have[opt] = true
		}
	}
	if len(add) == 0 {
		return cmdline, nil
	}
	out := kernelPart
	for out != "" && isSpace(out[len(out)-1]) {
		out = out[:len(out)-1]
	}
	if out != "" {
		out += " "
	}
	out += strings.Join(add, " ")
	if initPart != "" {
		out += " " + initPart
	}
	return out, nil
}

// arg is one parameter as the kernel's next_arg (lib/cmdline.c) reads it.
type arg struct {
	param     string // the name: the text before the first '=', quotes removed
	hasVal    bool   // an '=' follows the name
	end       int    // offset just after the parameter
	openQuote bool   // the command line ended inside a double quote
}

// nextArg reads the parameter at s[i:] the way next_arg does: blanks end it
// except inside double quotes, and a quote opening the parameter is dropped
// with the one closing it.
func nextArg(s string, i int) arg {
	start := i
	quoted := s[i] == '"'
	if quoted {
		start++
	}
	inQuote := quoted
	equals := -1
	j := start
	for ; j < len(s); j++ {
		c := s[j]
		if isSpace(c) && !inQuote {
			break
		}
		if equals < 0 && c == '=' && j > start { // next_arg ignores an '=' in the first position
			equals = j
		}
		if c == '"' {
			inQuote = !inQuote
		}
	}
	a := arg{end: j, openQuote: inQuote}
	if equals >= 0 {
		a.param, a.hasVal = s[start:equals], true
		return a
	}
	a.param = s[start:j]
	if quoted && strings.HasSuffix(a.param, `"`) {
		a.param = a.param[:len(a.param)-1]
	}
	return a
}

func skipSpaces(s string, i int) int {
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	return i
}

// isSpace is the kernel's isspace (lib/ctype.c), which also counts 0xa0.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r' || c == 0xa0
}
