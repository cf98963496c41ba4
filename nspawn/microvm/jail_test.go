package microvm

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/nspawn/instance"
)

func goodJail() *Jail {
	return &Jail{Jailer: "/usr/bin/volt-jailer", UID: 1900065600, GID: 1900065601, ChrootBase: "/var/lib/volt/jail"}
}

// A jailed VM's command line is volt-jailer's, Firecracker's flags, with
// the kernel, the volume and a read-only view of the store bound into the
// chroot, and volt-vmm's arguments naming those paths inside it (no --id:
// the jailer passes its own).
func TestJailerArgvBindsTheVMsFilesIntoTheChroot(t *testing.T) {
	s := goodSpec()
	s.VMM = "/usr/bin/volt-vmm"
	s.Jail = goodJail()
	s.Cmdline = "probe.agent"
	s.VMMFlags = []string{"--vsock=cid=3,uds=/run/v.sock"}
	d, _ := instance.NewDir("/var/lib/volt", instance.VM, "vm1")
	a, err := JailerArgv(&s, d)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/usr/bin/volt-jailer", "--id", "vm1", "--exec-file", "/usr/bin/volt-vmm",
		"--uid", "1900065600", "--gid", "1900065601", "--chroot-base-dir", "/var/lib/volt/jail",
		"--ro-bind", "/boot/vmlinux:/kernel",
		"--rw-bind", "/var/lib/volt/vms/vm1/volume:/volume",
		"--ro-bind", "/var/lib/volt/cas/VERSION:/cas/VERSION",
		"--ro-bind", "/var/lib/volt/cas/lock:/cas/lock",
		"--ro-bind", "/var/lib/volt/cas/chunks:/cas/chunks",
		"--ro-bind", "/var/lib/volt/cas/manifests:/cas/manifests",
		"--",
		"--kernel", "/kernel", "--memory", "256M", "--cpus", "2", "--volume", "/volume", "--cas-store", "/cas",
		"--console", "stdio", "--cmdline", BaseCmdline + " probe.agent", "--api-sock", "/run/api.sock",
		"--vsock=cid=3,uds=/run/v.sock"}
	if !slices.Equal(a, want) {
		t.Errorf("argv\n%q\nwant\n%q", a, want)
	}
	s.Kernel = "/boot/a:b"
	if _, err := JailerArgv(&s, d); err == nil || !strings.Contains(err.Error(), "cannot hold ':'") {
		t.Errorf("a kernel path with ':': %v", err)
	}
	if got := ChrootDir(&s); got != "/var/lib/volt/jail/volt-vmm/vm1/root" {
		t.Errorf("chroot %s", got)
	}
	if got := hostAPISock(&s, d); got != "/var/lib/volt/jail/volt-vmm/vm1/root/run/api.sock" {
		t.Errorf("API socket on the host: %s", got)
	}
}

// pickUID gives each VM of a state root its own uid, skipping ids that
// accounts, subordinate ranges or running processes have, and refuses an
// explicit uid another VM holds.
func TestPickUIDSkipsIDsInUse(t *testing.T) {
	dir := t.TempDir()
	etc := filepath.Join(dir, "etc")
	os.Mkdir(etc, 0o755)
	os.WriteFile(filepath.Join(etc, "passwd"), []byte("root:x:0:0::/root:/bin/sh\n# a comment\nsvc:x:1900200000:1900200000::/:/bin/false\n"), 0o644)
	os.WriteFile(filepath.Join(etc, "group"), []byte("grp:x:1900200001:\n"), 0o644)
	os.WriteFile(filepath.Join(etc, "subuid"), []byte("svc:1900200003:2\nbroken:x:y\n"), 0o644)
	state := filepath.Join(dir, "state")
	r := UIDRange{First: 1900200000, Last: 1900200007}
	// Ids a host process could have are avoided. B+0 passwd, B+1 group,
	// B+3 and B+4 subuid: B+2 is the first free.
	got, err := pickUID(state, 0, r, etc)
	if err != nil || got != 1900200002 {
		t.Fatalf("first pick: %d, %v; want B+2", got, err)
	}
	// A VM's spec holds B+2 now: the next pick skips it.
	writeJailedSpec(t, state, "a", 1900200002)
	if got, err := pickUID(state, 0, r, etc); err != nil || got != 1900200005 {
		t.Errorf("second pick: %d, %v; want B+5", got, err)
	}
	if _, err := pickUID(state, 1900200002, r, etc); err == nil || !strings.Contains(err.Error(), "VM a's") {
		t.Errorf("explicit uid of VM a: %v", err)
	}
	// Running processes' uids are taken: this one's is.
	if pids := processesOf(os.Getuid()); !slices.Contains(pids, os.Getpid()) {
		t.Errorf("processes of uid %d: %v lacks this one", os.Getuid(), pids)
	}
	if !uidOwners()[os.Getuid()] {
		t.Errorf("uid %d not among the processes' uids", os.Getuid())
	}
	if u := os.Getuid(); u != 0 {
		if _, err := pickUID(state, u, r, etc); err == nil || !strings.Contains(err.Error(), "runs as that uid") {
			t.Errorf("explicit uid of a running process: %v", err)
		}
	}
	if got, err := pickUID(state, 4242, r, etc); err != nil || got != 4242 {
		t.Errorf("explicit free uid: %d, %v", got, err)
	}
	writeJailedSpec(t, state, "b", 1900200005)
	writeJailedSpec(t, state, "c", 1900200006)
	writeJailedSpec(t, state, "d", 1900200007)
	if _, err := pickUID(state, 0, r, etc); err == nil || !strings.Contains(err.Error(), "no free uid") {
		t.Errorf("full range: %v", err)
	}
}

func writeJailedSpec(t *testing.T, root, name string, uid int) {
	t.Helper()
	d, err := instance.NewDir(root, instance.VM, name)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Create(); err != nil {
		t.Fatal(err)
	}
	s := goodSpec()
	s.Name, s.Jail = name, goodJail()
	s.Jail.UID, s.Jail.GID = uid, uid
	if err := instance.WriteJSON(d.SpecPath(), s); err != nil {
		t.Fatal(err)
	}
}

func TestStatusIDs(t *testing.T) {
	status := "Name:\tvolt-vmm\nUid:\t1900065536\t1900065536\t1900065536\t1900065536\nGid:\t5\t5\t5\t5\n"
	if got, err := statusIDs(status, "Uid:"); err != nil || !slices.Equal(got, []int{1900065536, 1900065536, 1900065536, 1900065536}) {
		t.Errorf("Uid: %v %v", got, err)
	}
	for _, bad := range []string{"Name:\tx\n", "Uid:\t1 2 3\n", "Uid:\t1 2 x 4\n"} {
		if got, err := statusIDs(bad, "Uid:"); err == nil {
			t.Errorf("%q: %v accepted", bad, got)
		}
	}
}

// The kernel is opened after the VMM has dropped to the jail's uid: a file
// that uid could not read is refused before anything runs.
func TestCheckReadableBy(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (chown)")
	}
	f := filepath.Join(t.TempDir(), "kernel")
	os.WriteFile(f, []byte("k"), 0o600)
	if err := checkReadableBy("--kernel", f, 4242, 4242); err == nil || !strings.Contains(err.Error(), "chmod o+r") {
		t.Errorf("mode 0600 root's: %v", err)
	}
	os.Chown(f, 4242, 0)
	if err := checkReadableBy("--kernel", f, 4242, 4242); err != nil {
		t.Errorf("mode 0600, the uid's: %v", err)
	}
	os.Chown(f, 0, 4242)
	os.Chmod(f, 0o640)
	if err := checkReadableBy("--kernel", f, 4242, 4242); err != nil {
		t.Errorf("mode 0640, the gid's: %v", err)
	}
	os.Chmod(f, 0o644)
	os.Chown(f, 0, 0)
	if err := checkReadableBy("--kernel", f, 4242, 4242); err != nil {
		t.Errorf("mode 0644: %v", err)
	}
}

// rm removes only a jail directory that names its instance, and none under
// which the host has a mount.
func TestRemoveJailOnlyRemovesItsOwn(t *testing.T) {
	dir := t.TempDir()
	s := goodSpec()
	s.VMM = "/usr/bin/volt-vmm"
	s.Jail = goodJail()
	s.Jail.ChrootBase = filepath.Join(dir, "jail")
	d, _ := instance.NewDir(filepath.Join(dir, "state"), instance.VM, "vm1")
	if err := removeJail(&s, d); err != nil {
		t.Errorf("no jail: %v", err)
	}
	jd := JailDir(&s)
	os.MkdirAll(filepath.Join(jd, "root", "volume"), 0o755)
	if err := removeJail(&s, d); err == nil || !strings.Contains(err.Error(), "not removed") {
		t.Errorf("a jail without its owner file: %v", err)
	}
	os.WriteFile(filepath.Join(jd, ownerFile), []byte("/elsewhere/vms/vm1\n"), 0o644)
	if err := removeJail(&s, d); err != nil {
		t.Errorf("another instance's jail: %v", err)
	}
	if _, err := os.Stat(jd); err != nil {
		t.Fatalf("another instance's jail was removed: %v", err)
	}
	os.WriteFile(filepath.Join(jd, ownerFile), []byte(d.Path()+"\n"), 0o644)
	if os.Geteuid() == 0 {
		// Something mounted in the jail on the host: removing the jail
		// would remove its files.
		mp := filepath.Join(jd, "root", "volume")
		if err := unix.Mount("tmpfs", mp, "tmpfs", 0, "size=1m"); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(mp, "keep"), []byte("x"), 0o644)
		err := removeJail(&s, d)
		_, kept := os.Stat(filepath.Join(mp, "keep"))
		unix.Unmount(mp, 0)
		if err == nil || !strings.Contains(err.Error(), "is mounted here") || kept != nil {
			t.Errorf("a jail with a host mount: %v (the mount's file: %v)", err, kept)
		}
	}
	if err := removeJail(&s, d); err != nil {
		t.Errorf("its own jail: %v", err)
	}
	if _, err := os.Stat(jd); !os.IsNotExist(err) {
		t.Errorf("its own jail is still there: %v", err)
	}
}
