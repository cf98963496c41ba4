package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, exitUsage, "Usage: voltpool"},
		{[]string{"frobnicate"}, exitUsage, `unknown command "frobnicate"`},
		{[]string{"acquire"}, exitUsage, "want TEMPLATE"},
		{[]string{"acquire", "a", "b"}, exitUsage, "want TEMPLATE"},
		{[]string{"release"}, exitUsage, "want ID"},
		{[]string{"renew", "x"}, exitUsage, "--ttl is required"},
		{[]string{"template"}, exitUsage, "want create"},
		{[]string{"template", "bake"}, exitUsage, `unknown subcommand "bake"`},
		{[]string{"template", "create"}, exitUsage, "want NAME"},
		{[]string{"template", "create", "x", "--memory", "12Q"}, exitUsage, "--memory"},
		{[]string{"template", "create", "x", "--from-snapshot", "/s", "--memory", "64M"}, exitUsage, "come from the snapshot"},
		{[]string{"template", "warm", "x", "many"}, exitUsage, "not a number"},
		{[]string{"run", "tpl"}, exitUsage, "want TEMPLATE -- CMD"},
		{[]string{"run", "tpl", "echo", "hi"}, exitUsage, "want TEMPLATE -- CMD"},
		{[]string{"run", "--socket", "/nonexistent/p.sock", "tpl", "--", "echo", "-n"}, exitError, "no such file"},
		{[]string{"run", "tpl", "--socket", "/nonexistent/p.sock", "--", "ls", "--socket"}, exitError, "no such file"},
		{[]string{"run", "tpl", "--"}, exitUsage, "no command after --"},
		{[]string{"serve", "extra"}, exitUsage, "no arguments"},
		{[]string{"serve", "--vmm", "/nonexistent/volt-vmm"}, exitError, "not an executable"},
		{[]string{"serve", "--vmm", "/bin/true", "--jailer", "/bin/true"}, exitUsage, "need --jail"},
		{[]string{"serve", "--vmm", "/bin/true", "--volt-snapshot", "/bin/true", "--jail", "--jailer", "/bin/true", "--jail-uid-range", "0-5"}, exitUsage, "uid 0"},
		{[]string{"serve", "--vmm", "/bin/true", "--volt-snapshot", "/bin/true", "--jail", "--jailer", "/bin/true", "--jail-uid-range", "5"}, exitUsage, "FIRST-LAST"},
		{[]string{"serve", "--vmm", "/bin/true", "--volt-snapshot", "/etc/passwd", "--store", "/tmp/x"}, exitError, "--volt-snapshot /etc/passwd: not an executable"},
		{[]string{"serve", "--vmm", "/bin/true", "--vsock-connect-timeout", "0s"}, exitUsage, "--vsock-connect-timeout 0s: more than 0"},
		{[]string{"serve", "--vmm", "/bin/true", "--vsock-connect-timeout", "2h"}, exitUsage, "at most 1h0m0s"},
		{[]string{"serve", "--vmm", "/bin/true", "--vsock-connect-timeout", "later"}, exitUsage, "invalid argument"},
		{[]string{"acquire", "--ttl", "soon", "x"}, exitUsage, "invalid argument"},
		{[]string{"status", "--socket", "/nonexistent/pool.sock"}, exitError, "no such file"},
	} {
		var out, errb bytes.Buffer
		code := run(context.Background(), tc.args, &out, &errb)
		if code != tc.code || !strings.Contains(out.String()+errb.String(), tc.want) {
			t.Errorf("%q: exit %d, output %q; want %d with %q", tc.args, code, out.String()+errb.String(), tc.code, tc.want)
		}
	}
}

func TestParseMiB(t *testing.T) {
	for in, want := range map[string]int64{"128M": 128, "128": 128, "1G": 1024, "2048K": 2, "1000K": -1, "0": -1, "-5M": -1, "M": -1, "1T": -1} {
		got, err := parseMiB(in)
		if want < 0 {
			if err == nil {
				t.Errorf("%q: %d, want an error", in, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%q: %d %v, want %d", in, got, err, want)
		}
	}
}
