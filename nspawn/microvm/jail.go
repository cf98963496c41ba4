package microvm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/internal/jailpath"
	"github.com/voltvmm/volt/internal/mountinfo"
	"github.com/voltvmm/volt/nspawn/instance"
)

// Jailed VMs (volt vm run --jail): volt-vmm is started through volt-jailer
// (docs/security.md), as Firecracker's jailer starts Firecracker: a chroot
// of its own, new mount and PID namespaces, an unprivileged uid and gid,
// no capability, then exec of volt-vmm, which still confines itself
// (seccomp per thread role, Landlock). The chroot,
// <ChrootBase>/volt-vmm/<NAME>/root, holds only what the VM needs:
//
//	/volt-vmm        the VMM, bind-mounted read-only by the jailer
//	/kernel          the guest kernel, read-only
//	/volume          the instance's cas/volume, writable (its overlay and map)
//	/cas             a view of the CAS store: VERSION, lock, chunks/ and
//	                 manifests/ read-only, and ingest/ and leases/ of the
//	                 chroot's own, so the lease volt-vmm takes on the image
//	                 goes nowhere the store's GC looks (the instance's ref,
//	                 vm:NAME, keeps the image alive)
//	/run/api.sock    volt-vmm's API socket (Firecracker's API)
//	/dev/kvm, /dev/net/tun, /proc   made by the jailer
//
// The volume's files are the VM's uid's while it runs and root's again
// once it has stopped. The VMM stays in the instance's cgroup (the unit's,
// or the supervisor's), which has the limits: the jailer's own cgroups
// would be made at the root of each hierarchy, outside the systemd unit.
// The supervisor removes the jail directory when the VMM has exited; rm
// removes one a dead supervisor left.

// Jail is how a VM's volt-vmm is jailed: spec.json's "jail".
type Jail struct {
	// Jailer is volt-jailer's absolute path.
	Jailer string `json:"jailer"`
	// UID and GID are what volt-vmm runs as. Run picks a free UID from
	// DefaultUIDRange when it is 0, and the GID is the UID's number when
	// it is 0.
	UID int `json:"uid"`
	GID int `json:"gid"`
	// ChrootBase holds the chroot, as volt-jailer's --chroot-base-dir;
	// Run makes "" STATE/jail.
	ChrootBase string `json:"chroot_base"`
}

// Paths inside the chroot.
const (
	jailKernel  = "/kernel"
	jailVolume  = "/volume"
	jailCAS     = "/cas"
	jailRunDir  = "/run"
	jailAPISock = jailRunDir + "/api.sock"
	// ownerFile, in the jail directory beside root/, names the instance
	// directory the jail belongs to: rm removes only its own.
	ownerFile = "volt-instance"
)

// casView are the store's entries shown read-only at /cas.
var casView = []string{"VERSION", "lock", "chunks", "manifests"}

// maxSunPath is the longest Unix socket path (sun_path less its NUL).
const maxSunPath = 107

func (j *Jail) validate() error {
	if !filepath.IsAbs(j.Jailer) {
		return fmt.Errorf("--jailer %q: want an absolute path", j.Jailer)
	}
	if j.UID < 0 || j.UID > maxID {
		return fmt.Errorf("--jail-uid %d: want 1 to %d", j.UID, maxID)
	}
	if j.GID < 0 || j.GID > maxID {
		return fmt.Errorf("--jail-gid %d: want 1 to %d", j.GID, maxID)
	}
	if j.ChrootBase != "" && (!filepath.IsAbs(j.ChrootBase) || filepath.Clean(j.ChrootBase) != j.ChrootBase || j.ChrootBase == "/") {
		return fmt.Errorf("--chroot-base-dir %q: want a clean absolute directory other than /", j.ChrootBase)
	}
	return nil
}

// JailDir is <ChrootBase>/<volt-vmm's name>/<NAME>, volt-jailer's
// directory of the VM (root/ and its pid file).
func JailDir(s *Spec) string { return jailpath.Dir(s.Jail.ChrootBase, s.VMM, s.Name) }

// ChrootDir is the jailed VMM's / on the host.
func ChrootDir(s *Spec) string { return jailpath.Root(JailDir(s)) }

// hostAPISock is where the host reaches the VM's API socket.
func hostAPISock(s *Spec, d instance.Dir) string {
	if s.Jail != nil {
		return filepath.Join(ChrootDir(s), jailAPISock)
	}
	return filepath.Join(d.File("sockets"), "api.sock")
}

// vmmPaths are the instance's files as volt-vmm names them.
func vmmPaths(s *Spec, d instance.Dir) VMMPaths {
	if s.Jail != nil {
		return VMMPaths{Kernel: jailKernel, Volume: jailVolume, Store: jailCAS, APISock: jailAPISock}
	}
	return VMMPaths{Kernel: s.Kernel, Volume: d.VolumePath(), Store: s.Store, APISock: hostAPISock(s, d)}
}

// JailerArgv is the command line that jails s's volt-vmm in the instance
// directory d.
func JailerArgv(s *Spec, d instance.Dir) ([]string, error) {
	args, err := VMMArgs(s, vmmPaths(s, d))
	if err != nil {
		return nil, err
	}
	j := s.Jail
	binds := []string{s.Kernel, d.VolumePath(), s.Store}
	for _, h := range binds {
		if strings.Contains(h, ":") {
			return nil, fmt.Errorf("%s: a path bound into the jail cannot hold ':' (volt-jailer's binds are HOST:JAIL)", h)
		}
	}
	argv := []string{j.Jailer, "--id", s.Name, "--exec-file", s.VMM,
		"--uid", strconv.Itoa(j.UID), "--gid", strconv.Itoa(j.GID), "--chroot-base-dir", j.ChrootBase,
		"--ro-bind", s.Kernel + ":" + jailKernel,
		"--rw-bind", d.VolumePath() + ":" + jailVolume}
	for _, n := range casView {
		argv = append(argv, "--ro-bind", filepath.Join(s.Store, n)+":"+jailCAS+"/"+n)
	}
	return append(append(argv, "--"), args...), nil
}

// prepareJail makes the jail directory of s before volt-jailer runs (the
// jailer reuses it and mounts over the names it finds): root/ with /run
// and the CAS view's private ingest/ and leases/, owned by the VM's uid;
// and it gives the volume's files to that uid.
func prepareJail(s *Spec, d instance.Dir) error {
	j := s.Jail
	if err := os.Mkdir(j.ChrootBase, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("chroot base: %w", err)
	}
	if err := os.Mkdir(filepath.Dir(JailDir(s)), 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("chroot base: %w", err)
	}
	dir := JailDir(s)
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("jail %s exists already: a VM of another state root has this name, or one was left behind (remove it)", dir)
		}
		return fmt.Errorf("jail: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(d.Path()+"\n"), 0o644); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	root := ChrootDir(s)
	if err := os.Mkdir(root, 0o755); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	for _, p := range []string{jailRunDir, jailCAS, jailCAS + "/ingest", jailCAS + "/leases"} {
		full := filepath.Join(root, p)
		if err := os.Mkdir(full, 0o700); err != nil {
			return fmt.Errorf("jail: %w", err)
		}
		if err := os.Lchown(full, j.UID, j.GID); err != nil {
			return fmt.Errorf("jail: %w", err)
		}
	}
	return chownVolume(d.VolumePath(), j.UID, j.GID)
}

// chownVolume gives the volume directory and its files (lock, map,
// overlay, and any temporary map) to uid:gid. Symlinks are not followed.
func chownVolume(dir string, uid, gid int) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("volume: %w", err)
	}
	for _, e := range ents {
		if err := os.Lchown(filepath.Join(dir, e.Name()), uid, gid); err != nil {
			return fmt.Errorf("volume: %w", err)
		}
	}
	if err := os.Lchown(dir, uid, gid); err != nil {
		return fmt.Errorf("volume: %w", err)
	}
	return nil
}

// releaseJail undoes prepareJail once the VMM has exited: the volume is
// root's again and the jail directory goes.
func releaseJail(s *Spec, d instance.Dir) error {
	err := chownVolume(d.VolumePath(), 0, 0)
	return errors.Join(err, removeJail(s, d))
}

// removeJail removes the jail directory of s if it is d's. Its mounts
// lived in the jail's own mount namespace, gone with its last process; a
// directory under which this namespace still sees a mount is left alone,
// since removing it would remove what is mounted there (the volume, the
// store).
func removeJail(s *Spec, d instance.Dir) error {
	dir := JailDir(s)
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if errors.Is(err, os.ErrNotExist) {
		if _, serr := os.Lstat(dir); errors.Is(serr, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("jail %s has no %s: not removed", dir, ownerFile)
	}
	if err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	if strings.TrimSpace(string(b)) != d.Path() {
		return nil // another instance's since ours went
	}
	if err := mountinfo.RemoveAllUnmounted(dir); err != nil {
		return fmt.Errorf("jail %s: %w", dir, err)
	}
	return nil
}

// checkReadableBy refuses a host file that uid:gid could not read once
// jailed: volt-vmm opens the kernel after dropping to them.
func checkReadableBy(what, path string, uid, gid int) error {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	mode := st.Mode & 0o777
	ok := mode&0o004 != 0 ||
		(int(st.Uid) == uid && mode&0o400 != 0) ||
		(int(st.Gid) == gid && mode&0o040 != 0)
	if !ok {
		return fmt.Errorf("%s %s (mode %04o, owner %d:%d) is not readable by the jail's uid %d: make it world-readable (chmod o+r) or owned by that uid", what, path, mode, st.Uid, st.Gid, uid)
	}
	return nil
}
