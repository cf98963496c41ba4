package microvm

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/voltvmm/volt/nspawn/instance"
)

// A jailed VM's uid and gid: each VM's own, so that no two VMMs (nor a VMM
// and anything else on the host) share the identity the kernel checks
// when one process signals, traces or opens the files of another.

// UIDRange is an inclusive range of uids.
type UIDRange struct{ First, Last int }

// DefaultUIDRange is where Run picks a jailed VM's uid and gid: the 64 Ki
// ids after voltpool's default jail range (1900000000-1900065535), above
// useradd's subordinate ids and systemd-nspawn's private users, below
// 2^31. A uid is picked only if no account, subordinate range, process or
// other VM of the state root has it.
var DefaultUIDRange = UIDRange{First: 1900065536, Last: 1900131071}

// maxID is the largest uid or gid a VMM may get: -1 and -2 (as unsigned
// 32-bit numbers) mean "no change" and nobody.
const maxID = 1<<32 - 3

// pickUID chooses the uid of a new jailed VM under the state root: the
// given one after checking that no other VM of the root has it, or the
// first id of r that nobody has (see DefaultUIDRange). The caller holds
// the state root's uid lock until the VM's spec is written.
func pickUID(stateRoot string, want int, r UIDRange, etc string) (int, error) {
	taken, err := vmUIDs(stateRoot)
	if err != nil {
		return 0, err
	}
	if want != 0 {
		if name, ok := taken[want]; ok {
			return 0, fmt.Errorf("--jail-uid %d is VM %s's already: a VMM's uid must be its own (volt vm rm %s, or pick another)", want, name, name)
		}
		if pids := processesOf(want); len(pids) > 0 {
			return 0, fmt.Errorf("--jail-uid %d: process %d runs as that uid already: a VMM's uid must be its own", want, pids[0])
		}
		return want, nil
	}
	accounts, err := accountIDs(etc)
	if err != nil {
		return 0, err
	}
	owners := uidOwners()
	for id := r.First; id <= r.Last; id++ {
		if _, ok := taken[id]; ok || accounts.has(id) || owners[id] {
			continue
		}
		return id, nil
	}
	return 0, fmt.Errorf("no free uid in %d-%d for a jailed VM (remove stopped VMs, or give --jail-uid)", r.First, r.Last)
}

// lockUIDs serialises pickUID and the spec write that follows among volt
// commands of one state root.
func lockUIDs(stateRoot string) (unlock func(), err error) {
	dir := instance.KindDir(stateRoot, instance.VM)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, ".jail-uids.lock"), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("jail uid lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("jail uid lock: %w", err)
	}
	return func() { f.Close() }, nil
}

// vmUIDs maps the uids of the state root's jailed VMs, running or not, to
// their names (a VM keeps its uid until rm).
func vmUIDs(stateRoot string) (map[int]string, error) {
	names, err := instance.List(stateRoot, instance.VM)
	if err != nil {
		return nil, err
	}
	out := map[int]string{}
	for _, n := range names {
		d, err := instance.NewDir(stateRoot, instance.VM, n)
		if err != nil {
			continue
		}
		var s Spec
		if instance.ReadJSON(d.SpecPath(), &s) == nil && s.Jail != nil && s.Jail.UID > 0 {
			out[s.Jail.UID] = n
		}
	}
	return out, nil
}

// idSet is the ids accounts use: single ids and subordinate ranges.
type idSet struct {
	ids    map[int]bool
	ranges [][2]int // first, last
}

func (s idSet) has(id int) bool {
	if s.ids[id] {
		return true
	}
	for _, r := range s.ranges {
		if id >= r[0] && id <= r[1] {
			return true
		}
	}
	return false
}

// accountIDs reads the uids and gids of etc/passwd and etc/group and the
// subordinate ranges of etc/subuid and etc/subgid; missing files have none.
func accountIDs(etc string) (idSet, error) {
	s := idSet{ids: map[int]bool{}}
	for _, name := range []string{"passwd", "group", "subuid", "subgid"} {
		f, err := os.Open(filepath.Join(etc, name))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return s, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Split(strings.TrimSpace(sc.Text()), ":")
			if len(fields) < 3 || strings.HasPrefix(fields[0], "#") {
				continue
			}
			if strings.HasPrefix(name, "sub") {
				first, err1 := strconv.Atoi(fields[1])
				n, err2 := strconv.Atoi(fields[2])
				if err1 == nil && err2 == nil && n > 0 {
					s.ranges = append(s.ranges, [2]int{first, first + n - 1})
				}
			} else if id, err := strconv.Atoi(fields[2]); err == nil {
				s.ids[id] = true
			}
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return s, fmt.Errorf("%s/%s: %w", etc, name, err)
		}
	}
	return s, nil
}

// uidOwners is the set of uids some process runs as (real, effective,
// saved or file-system uid, from /proc/PID/status).
func uidOwners() map[int]bool {
	out := map[int]bool{}
	eachProcessUIDs(func(_ int, uids []int) bool {
		for _, u := range uids {
			out[u] = true
		}
		return true
	})
	return out
}

// processesOf lists processes running as uid.
func processesOf(uid int) []int {
	var pids []int
	eachProcessUIDs(func(pid int, uids []int) bool {
		for _, u := range uids {
			if u == uid {
				pids = append(pids, pid)
				break
			}
		}
		return true
	})
	return pids
}

func eachProcessUIDs(fn func(pid int, uids []int) bool) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		uids, err := procUIDs(pid)
		if err != nil {
			continue
		}
		if !fn(pid, uids) {
			return
		}
	}
}

// procUIDs reads the Uid: line of /proc/PID/status (real, effective,
// saved, file system).
func procUIDs(pid int) ([]int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return nil, err
	}
	return statusIDs(string(b), "Uid:")
}

// statusIDs parses a Uid: or Gid: line of a /proc/PID/status text.
func statusIDs(status, key string) ([]int, error) {
	for _, line := range strings.Split(status, "\n") {
		rest, ok := strings.CutPrefix(line, key)
		if !ok {
			continue
		}
		var out []int
		for _, f := range strings.Fields(rest) {
			id, err := strconv.Atoi(f)
			if err != nil {
				return nil, fmt.Errorf("%s %q", key, rest)
			}
			out = append(out, id)
		}
		if len(out) != 4 {
			return nil, fmt.Errorf("%s %q: want 4 ids", key, rest)
		}
		return out, nil
	}
	return nil, fmt.Errorf("no %s line", key)
}
