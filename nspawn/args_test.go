package nspawn

import (
	"slices"
	"strings"
	"testing"

	"github.com/voltvmm/volt/nspawn/instance"
)

func TestArgsCarryTheSecurityDefaults(t *testing.T) {
	s := &Spec{Name: "web", Command: []string{"/bin/sh", "-c", "echo hi"}, PrivateUsers: UsersPick, Network: Network{Mode: NetNone}}
	a := Args(s, "/var/lib/volt/containers/web/rootfs")
	for _, want := range []string{
		"--keep-unit", "--register=no", "--settings=no", "--as-pid2", "--console=pipe",
		"--directory=/var/lib/volt/containers/web/rootfs", "--machine=web",
		"--private-users=pick", "--private-users-ownership=map", "--private-network",
		"--system-call-filter=~@cpu-emulation @debug @obsolete @raw-io add_key keyctl request_key",
	} {
		if !slices.Contains(a, want) {
			t.Errorf("missing %q in %q", want, a)
		}
	}
	var drop string
	for _, x := range a {
		if v, ok := strings.CutPrefix(x, "--drop-capability="); ok {
			drop = v
		}
	}
	for _, c := range []string{"CAP_SYS_ADMIN", "CAP_NET_RAW", "CAP_SYS_PTRACE", "CAP_NET_ADMIN"} {
		if !strings.Contains(drop, c) {
			t.Errorf("%s not dropped: %q", c, drop)
		}
	}
	if i := slices.Index(a, "--"); i < 0 || !slices.Equal(a[i+1:], s.Command) {
		t.Errorf("the command is not after --: %q", a)
	}
	if slices.Contains(a, "--no-new-privileges=yes") || slices.ContainsFunc(a, func(x string) bool { return strings.HasPrefix(x, "--capability=") }) {
		t.Errorf("defaults grant or restrict more than asked: %q", a)
	}

	s.PrivateUsers = UsersNo
	s.Network = Network{Mode: NetBridge, Bridge: "br0"}
	s.Capabilities = []string{"CAP_NET_RAW"}
	s.NoNewPrivileges = true
	s.Binds = []Bind{{Source: "/srv/data", Target: "/data", ReadOnly: true}, {Source: "/srv/logs", Target: "/logs"}}
	s.Env = []string{"A=1"}
	a = Args(s, "/r")
	for _, want := range []string{"--private-users=no", "--network-bridge=br0", "--capability=CAP_NET_RAW", "--no-new-privileges=yes",
		"--bind-ro=/srv/data:/data", "--bind=/srv/logs:/logs", "--setenv=A=1"} {
		if !slices.Contains(a, want) {
			t.Errorf("missing %q in %q", want, a)
		}
	}
	for _, x := range a {
		if v, ok := strings.CutPrefix(x, "--drop-capability="); ok && strings.Contains(v, "CAP_NET_RAW") {
			t.Errorf("--cap-add CAP_NET_RAW still drops it: %q", v)
		}
	}
	if slices.Contains(a, "--private-users-ownership=map") || slices.Contains(a, "--private-network") {
		t.Errorf("options of other modes leaked: %q", a)
	}
}

func TestParseBindAndNetwork(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Bind
		err  string
	}{
		{"/a:/b", Bind{Source: "/a", Target: "/b"}, ""},
		{"/a/../c:/b/:ro", Bind{Source: "/c", Target: "/b", ReadOnly: true}, ""},
		{"/a:/b:rw", Bind{Source: "/a", Target: "/b"}, ""},
		{"/a", Bind{}, "SOURCE:TARGET"},
		{"/a:/b:ro:x", Bind{}, "SOURCE:TARGET"},
		{"a:/b", Bind{}, "absolute"},
		{"/a:b", Bind{}, "absolute"},
		{"/a:/", Bind{}, "root"},
		{"/a,b:/c", Bind{}, "','"},
		{"/a:/b:noexec", Bind{}, "ro or rw"},
	} {
		b, err := ParseBind(tc.in)
		if tc.err == "" && (err != nil || b != tc.want) {
			t.Errorf("%q: %+v %v", tc.in, b, err)
		}
		if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%q: %v, want %q", tc.in, err, tc.err)
		}
	}
	for in, want := range map[string]Network{"": {Mode: NetNone}, "none": {Mode: NetNone}, "veth": {Mode: NetVeth}, "host": {Mode: NetHost}, "bridge=br0": {Mode: NetBridge, Bridge: "br0"}} {
		if n, err := ParseNetwork(in); err != nil || n != want {
			t.Errorf("%q: %+v %v", in, n, err)
		}
	}
	for _, bad := range []string{"wifi", "bridge=", "bridge=a/b", "bridge=" + strings.Repeat("x", 16)} {
		if _, err := ParseNetwork(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestSpecValidate(t *testing.T) {
	good := func() Spec {
		return Spec{Name: "c", Command: []string{"/bin/true"}, PrivateUsers: UsersPick, Network: Network{Mode: NetNone}}
	}
	for _, tc := range []struct {
		name string
		mod  func(*Spec)
		want string
	}{
		{"no command", func(s *Spec) { s.Command = nil }, "no command"},
		{"empty command", func(s *Spec) { s.Command = []string{""} }, "empty"},
		{"NUL", func(s *Spec) { s.Command = []string{"a\x00b"} }, "NUL"},
		{"users", func(s *Spec) { s.PrivateUsers = "yes" }, "--private-users"},
		{"twice bound", func(s *Spec) { s.Binds = []Bind{{"/a", "/x", false}, {"/b", "/x", true}} }, "twice"},
		{"cap", func(s *Spec) { s.Capabilities = []string{"NET_RAW"} }, "--cap-add"},
		{"env", func(s *Spec) { s.Env = []string{"novalue"} }, "--env"},
		{"memory", func(s *Spec) { s.Limits = instance.Limits{MemoryBytes: 4096} }, "memory limit"},
	} {
		s := good()
		tc.mod(&s)
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	s := good()
	if err := s.Validate(); err != nil {
		t.Error(err)
	}
}

func TestShellQuote(t *testing.T) {
	if got := ShellQuote([]string{"/bin/sh", "-c", "echo it's"}); got != `/bin/sh -c 'echo it'\''s'` {
		t.Errorf("%s", got)
	}
}
