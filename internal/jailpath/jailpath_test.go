package jailpath

import "testing"

func TestLayout(t *testing.T) {
	for _, tc := range []struct{ base, exec, id, dir string }{
		{"/srv/jailer", "/usr/bin/volt-vmm", "vm-1", "/srv/jailer/volt-vmm/vm-1"},
		{"/srv/jailer/", "volt-vmm", "a", "/srv/jailer/volt-vmm/a"},
		{"/j", "/opt/fc/firecracker", "551e7604", "/j/firecracker/551e7604"},
	} {
		if got := Dir(tc.base, tc.exec, tc.id); got != tc.dir {
			t.Errorf("Dir(%q, %q, %q) = %q, want %q", tc.base, tc.exec, tc.id, got, tc.dir)
		}
		if got, want := Root(tc.dir), tc.dir+"/root"; got != want {
			t.Errorf("Root(%q) = %q, want %q", tc.dir, got, want)
		}
	}
}
