package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// volt vm run --jail's flags: bad values are usage errors before anything
// is made, and a missing or non-executable jailer is named.
func TestVMJailFlagErrors(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, []byte("not a kernel"), 0o644)
	notExec := filepath.Join(dir, "volt-jailer")
	os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644)
	st := []string{"--state-dir", filepath.Join(dir, "state"), "--store", filepath.Join(dir, "cas")}
	run := []string{"vm", "run", "v", "--image", "i", "--kernel", kernel, "--vmm", "/bin/true"}
	for _, tc := range []struct {
		name string
		args []string
		rc   int
		want string
	}{
		{"uid without --jail", []string{"--jail-uid", "5"}, exitUsage, "--jail-uid needs --jail"},
		{"jailer without --jail", []string{"--jailer", "/x"}, exitUsage, "--jailer needs --jail"},
		{"chroot base without --jail", []string{"--chroot-base-dir", "/srv/jailer"}, exitUsage, "--chroot-base-dir needs --jail"},
		{"uid 0", []string{"--jail", "--jailer", "/x", "--jail-uid", "0"}, exitUsage, "never runs as root"},
		{"negative gid", []string{"--jail", "--jailer", "/x", "--jail-gid", "-3"}, exitUsage, "--jail-gid -3"},
		{"uid too large", []string{"--jail", "--jailer", "/x", "--jail-uid", "4294967295"}, exitUsage, "--jail-uid 4294967295"},
		{"chroot base /", []string{"--jail", "--jailer", "/x", "--chroot-base-dir", "/"}, exitUsage, "--chroot-base-dir"},
		{"bridge", []string{"--jail", "--jailer", "/x", "--net-bridge", "br0"}, exitUsage, "not supported yet"},
		{"jailer's own flag", []string{"--jail", "--jailer", "/x", "--vmm-flag", "--start-time-us=1"}, exitUsage, "volt-jailer passes"},
		{"missing jailer", []string{"--jail", "--jailer", filepath.Join(dir, "nope")}, exitFailure, "volt-jailer: stat"},
		{"jailer not executable", []string{"--jail", "--jailer", notExec}, exitFailure, "is not executable"},
	} {
		args := append(append(append([]string(nil), run...), tc.args...), st...)
		rc, _, errOut := volt(t, args...)
		if rc != tc.rc || !strings.Contains(errOut, tc.want) {
			t.Errorf("%s: rc %d, stderr %q; want rc %d and %q", tc.name, rc, errOut, tc.rc, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "state", "vms", "v")); !os.IsNotExist(err) {
		t.Errorf("a refused run left an instance: %v", err)
	}
}
