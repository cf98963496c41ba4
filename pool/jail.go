package pool

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/voltvmm/volt/internal/jailpath"
	"github.com/voltvmm/volt/internal/mountinfo"
	"golang.org/x/sys/unix"
)

// Jailed VMMs (voltpool serve --jail): every VMM, the template boots' as
// the clones', is started through volt-jailer (docs/security.md): a chroot
// of its own under STATE/jail holding only what it needs, bind-mounted
// (read-only but for a template boot's snapshot directory), new mount and
// PID namespaces, and a uid and gid of its own from a range, with no
// capability. What the pool reaches of the VMM, its API and vsock sockets,
// lies inside the chroot.
//
// Network: the jailer itself is started with CLONE_NEWNET, so the jail's
// process inherits a namespace that belongs to these two processes alone
// (the jailer's --netns, which needs a namespace bound to a file, would
// leave that file behind when the daemon dies): as unjailed, it and the
// clone's TAP (created in it before the restore, owned by the VMM's uid so
// that volt-vmm may attach to it without CAP_NET_ADMIN) vanish with the
// VMM however it dies.
//
// CAS memory: a jailed VMM cannot write the store (which holds every
// template's memory), yet restoring from it takes a lease, a file the VMM
// writes into the store. It therefore sees a view of the store: VERSION,
// lock, chunks/ and manifests/ bind-mounted read-only into a /cas of its
// own whose ingest/ and leases/ are directories of the chroot, so its
// lease goes nowhere the garbage collector looks; the pool holds the real
// lease on the VM's manifest for as long as the VMM lives (and takes it
// again when a restarted daemon adopts the VMM). A jailed template boot
// writes a flat snapshot into its snapshot directory, which the pool
// imports into the store (volt-snapshot import).

// JailConfig makes every VMM start through volt-jailer.
type JailConfig struct {
	Jailer string // volt-jailer (absolute)
	// UIDs are the uids given to VMMs, one per live VMM, each with the
	// gid of the same number.
	UIDs UIDRange
	// ChrootBase holds the chroots (default STATE/jail):
	// <ChrootBase>/<volt-vmm's name>/<id>/root.
	ChrootBase string
	// Cgroups are passed as volt-jailer --cgroup FILE=VALUE.
	Cgroups []string
}

// UIDRange is an inclusive range of uids.
type UIDRange struct {
	First, Last uint32
}

// DefaultUIDRange is above the ranges useradd gives subordinate ids
// (100000 to 600100000 by default) and systemd-nspawn's private users
// (524288 to 1879048191), and below 2^31, which some tools read as a
// signed number: a VMM's uid is then no one else's.
var DefaultUIDRange = UIDRange{First: 1900000000, Last: 1900065535}

func (r UIDRange) String() string { return fmt.Sprintf("%d-%d", r.First, r.Last) }

// ParseUIDRange reads "FIRST-LAST".
func ParseUIDRange(s string) (UIDRange, error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return UIDRange{}, fmt.Errorf("uid range %q: FIRST-LAST", s)
	}
	first, err1 := strconv.ParseUint(a, 10, 32)
	last, err2 := strconv.ParseUint(b, 10, 32)
	if err1 != nil || err2 != nil {
		return UIDRange{}, fmt.Errorf("uid range %q: FIRST-LAST, two numbers", s)
	}
	r := UIDRange{First: uint32(first), Last: uint32(last)}
	return r, r.Validate()
}

// Validate refuses uid 0, an empty range and the ids -1 and -2 (nobody,
// "no change" to setresuid).
func (r UIDRange) Validate() error {
	switch {
	case r.First == 0:
		return fmt.Errorf("uid range %v: a VMM never runs as uid 0", r)
	case r.Last < r.First:
		return fmt.Errorf("uid range %v: empty", r)
	case r.Last >= 1<<32-2:
		return fmt.Errorf("uid range %v: up to %d", r, uint32(1<<32-3))
	}
	return nil
}

// checkUIDsUnused refuses a range that holds a uid or gid of an account
// (/etc/passwd, /etc/group) or that overlaps a subordinate id range
// (/etc/subuid, /etc/subgid): processes of the same uid may signal and
// trace each other, so a VMM's uid must belong to that VMM alone.
func checkUIDsUnused(r UIDRange, etc string) error {
	in := func(v uint64) bool { return v >= uint64(r.First) && v <= uint64(r.Last) }
	for _, f := range []string{"passwd", "group"} {
		err := eachLine(filepath.Join(etc, f), func(fields []string) error {
			if len(fields) < 3 {
				return nil
			}
			if id, err := strconv.ParseUint(fields[2], 10, 32); err == nil && in(id) {
				return fmt.Errorf("uid range %v holds id %d of %s in %s/%s: choose a range no account uses", r, id, fields[0], etc, f)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	for _, f := range []string{"subuid", "subgid"} {
		err := eachLine(filepath.Join(etc, f), func(fields []string) error {
			if len(fields) < 3 {
				return nil
			}
			start, err1 := strconv.ParseUint(fields[1], 10, 32)
			n, err2 := strconv.ParseUint(fields[2], 10, 32)
			if err1 != nil || err2 != nil || n == 0 {
				return nil
			}
			if start <= uint64(r.Last) && start+n-1 >= uint64(r.First) {
				return fmt.Errorf("uid range %v overlaps %s's subordinate ids %d-%d in %s/%s: choose another --jail-uid-range", r, fields[0], start, start+n-1, etc, f)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// eachLine calls fn with the ':'-separated fields of each line of path; a
// missing file has no lines.
func eachLine(path string, fn func([]string) error) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := fn(strings.Split(line, ":")); err != nil {
			return err
		}
	}
	return sc.Err()
}

// uidPool hands out the uids of a range, each to one live VMM at a time.
// It goes round the range rather than reusing the uid just freed, so that
// a uid stays unused as long as the range allows.
type uidPool struct {
	mu   sync.Mutex
	r    UIDRange
	used map[uint32]bool
	next uint32
}

func newUIDPool(r UIDRange) *uidPool {
	return &uidPool{r: r, used: map[uint32]bool{}, next: r.First}
}

// take returns a free uid.
func (u *uidPool) take() (int, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	size := uint64(u.r.Last) - uint64(u.r.First) + 1
	if uint64(len(u.used)) >= size {
		return 0, errorf(ErrUnavailable, "every uid of the jail range %v is in use: widen --jail-uid-range", u.r)
	}
	for {
		id := u.next
		if u.next == u.r.Last {
			u.next = u.r.First
		} else {
			u.next++
		}
		if !u.used[id] {
			u.used[id] = true
			return int(id), nil
		}
	}
}

// mark claims uid for a VMM adopted from a previous daemon; false if it
// is outside the range or claimed already.
func (u *uidPool) mark(uid int) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if uid < int(u.r.First) || uid > int(u.r.Last) || u.used[uint32(uid)] {
		return false
	}
	u.used[uint32(uid)] = true
	return true
}

// put frees uid.
func (u *uidPool) put(uid int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.used, uint32(uid))
}

// inUse is the number of uids taken.
func (u *uidPool) inUse() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.used)
}

// jailBind is one host path shown in a chroot.
type jailBind struct {
	host, jail string
	writable   bool
}

// jailSpawn is how to jail one VMM.
type jailSpawn struct {
	cfg   *JailConfig
	id    string // the jailer's --id: names the chroot
	uid   int
	binds []jailBind
	// casView makes /cas a view of the CAS store (see above).
	casView string // the store's host directory, or ""
}

// Paths inside a chroot.
const (
	jailSnapshotDir = "/snapshot"
	jailCAS         = "/cas"
	jailAPISock     = "/" + vmAPISock
	jailVsockSock   = "/" + vmVsockSock
)

// prepareChroot makes the chroot of s under dir before the jailer runs:
// with a CAS view, /cas and its private ingest/ and leases/, owned by the
// VM's uid (the jailer reuses an existing chroot and mounts the store's
// files over the names it finds there).
func prepareChroot(dir string, s *jailSpawn) error {
	root := jailpath.Root(dir)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	if s.casView == "" {
		return nil
	}
	cas := filepath.Join(root, strings.TrimPrefix(jailCAS, "/"))
	for _, d := range []string{cas, filepath.Join(cas, "ingest"), filepath.Join(cas, "leases")} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return fmt.Errorf("chroot: %w", err)
		}
		if err := os.Lchown(d, s.uid, s.uid); err != nil {
			return fmt.Errorf("chroot: %w", err)
		}
	}
	return nil
}

// casViewBinds shows a CAS store read-only at /cas, without its ingest/
// and leases/ (see above).
func casViewBinds(store string) []jailBind {
	var bs []jailBind
	for _, n := range []string{"VERSION", "lock", "chunks", "manifests"} {
		bs = append(bs, jailBind{host: filepath.Join(store, n), jail: jailCAS + "/" + n})
	}
	return bs
}

// jailerArgv is the command line that jails vmmBin with vmmArgs.
func jailerArgv(s *jailSpawn, vmmBin string, vmmArgs []string) []string {
	argv := []string{s.cfg.Jailer, "--id", s.id, "--exec-file", vmmBin,
		"--uid", strconv.Itoa(s.uid), "--gid", strconv.Itoa(s.uid), "--chroot-base-dir", s.cfg.ChrootBase}
	for _, c := range s.cfg.Cgroups {
		argv = append(argv, "--cgroup", c)
	}
	for _, b := range s.binds {
		flag := "--ro-bind"
		if b.writable {
			flag = "--rw-bind"
		}
		argv = append(argv, flag, b.host+":"+b.jail)
	}
	return append(append(argv, "--"), vmmArgs...)
}

// waitJailedVMM waits for the supervisor p to write volt-vmm's pid file in
// dir and returns a reference to it (checked to be p's child), or an error
// once p exits or the deadline passes.
func waitJailedVMM(p *process, dir, vmmBin string, deadline time.Time) (*pidRef, error) {
	pidFile := filepath.Join(dir, filepath.Base(vmmBin)+".pid")
	for {
		if b, err := os.ReadFile(pidFile); err == nil {
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err == nil && pid > 0 {
				if r, err := openPidRef(pid, 0); err == nil {
					if pp, err := procPPid(pid); err == nil && pp == p.pid {
						return r, nil
					}
					unix.Close(r.fd)
				}
			}
		}
		if p.hasExited() {
			return nil, fmt.Errorf("volt-jailer %d exited before its VMM started", p.pid)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("volt-jailer %d: no VMM pid in %s in time", p.pid, pidFile)
		}
		time.Sleep(time.Millisecond)
	}
}

// procPPid returns field 4 of /proc/PID/stat.
func procPPid(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	return strconv.Atoi(f[1])
}

// removeJailDir removes a dead VMM's jail directory. Its mounts lived in
// the jail's own mount namespace, gone with it; a directory under which
// the host still sees a mount is left alone, since removing it would
// remove what is mounted there (a CAS store, a template's snapshot).
func removeJailDir(dir string) error {
	if dir == "" {
		return nil
	}
	if err := mountinfo.RemoveAllUnmounted(dir); err != nil {
		return fmt.Errorf("jail %s: %w", dir, err)
	}
	return nil
}

// strayJailers finds volt-jailer supervisors whose --chroot-base-dir is
// base: jailed VMMs a previous daemon started and left without a usable
// record.
func strayJailers(base string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		for i, a := range args {
			if a == "--" {
				break
			}
			if (a == "--chroot-base-dir" && i+1 < len(args) && args[i+1] == base) || a == "--chroot-base-dir="+base {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// childrenOf lists the children of pid's main thread.
func childrenOf(pid int) []int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if c, err := strconv.Atoi(f); err == nil {
			out = append(out, c)
		}
	}
	return out
}
