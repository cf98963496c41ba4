package mountinfo

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const sample = `22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /srv/jail/volt-vmm/a/root/proc rw - proc proc rw
31 22 254:0 /work /srv/jail/volt-vmm/b\040two/root/kernel ro - ext4 /dev/vda rw
bad line
32 22 0:27 / /srv/jailers rw - tmpfs tmpfs rw
`

func TestMountedUnder(t *testing.T) {
	for _, tc := range []struct{ dir, want string }{
		{"/srv/jail/volt-vmm/a", "/srv/jail/volt-vmm/a/root/proc"},
		{"/srv/jail/volt-vmm/a/", "/srv/jail/volt-vmm/a/root/proc"},
		{"/srv/jail/volt-vmm/b two", "/srv/jail/volt-vmm/b two/root/kernel"},
		{"/srv/jail/volt-vmm/c", ""},
		{"/srv/jail", "/srv/jail/volt-vmm/a/root/proc"},
		{"/srv/jailers", "/srv/jailers"},
		{"/srv/jaile", ""}, // a prefix of a name is not a parent
	} {
		got, err := mountedUnder(strings.NewReader(sample), tc.dir)
		if err != nil || got != tc.want {
			t.Errorf("mountedUnder(%q) = %q, %v; want %q", tc.dir, got, err, tc.want)
		}
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/a\040b`: "/a b", `/tab\011x`: "/tab\tx", `/back\134slash`: `/back\slash`,
		`/plain`: "/plain", `/short\04`: `/short\04`, `/not\09x`: `/not\09x`,
		`/end\134`: `/end\`, `/bad\999x`: `/bad\999x`,
	} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMountedUnderReadsThisNamespace(t *testing.T) {
	if got, err := MountedUnder("/proc"); err != nil || got != "/proc" {
		t.Fatalf("MountedUnder(/proc) = %q, %v", got, err)
	}
}

func TestRemoveAllUnmountedLeavesWhatIsMountedInside(t *testing.T) {
	dir := t.TempDir()
	jail := filepath.Join(dir, "jail")
	target := filepath.Join(jail, "root", "cas")
	if err := os.MkdirAll(target, 0o755); err != nil {
		t.Fatal(err)
	}
	precious := t.TempDir()
	if err := os.WriteFile(filepath.Join(precious, "chunk"), []byte("x"), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(precious, target, "", unix.MS_BIND, ""); err != nil {
		t.Skipf("skipping: bind mount (needs root): %v", err)
	}
	err := RemoveAllUnmounted(jail)
	unix.Unmount(target, unix.MNT_DETACH)
	if err == nil || !strings.Contains(err.Error(), target+" is mounted here: not removed") {
		t.Errorf("over a mount: %v, want it refused", err)
	}
	if _, err := os.Stat(filepath.Join(precious, "chunk")); err != nil {
		t.Errorf("the mounted directory's file: %v", err)
	}
	if err := RemoveAllUnmounted(jail); err != nil {
		t.Fatalf("after the unmount: %v", err)
	}
	if _, err := os.Lstat(jail); !os.IsNotExist(err) {
		t.Errorf("the jail is still there: %v", err)
	}
}
