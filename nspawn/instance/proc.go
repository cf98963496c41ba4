package instance

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Children returns the pids whose parent is pid, by scanning /proc (which
// works without CONFIG_PROC_CHILDREN and sees every thread group).
func Children(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		if pp, err := parsePPid(b); err == nil && pp == pid {
			out = append(out, p)
		}
	}
	return out
}

// NamespaceInit returns the child of parent that is PID 1 of a PID
// namespace of its own (its NSpid line ends in 1): the init a container
// manager such as systemd-nspawn started. Other children (helpers that
// come and go while it sets up) are skipped; 0 if there is none yet.
func NamespaceInit(parent int) int {
	for _, pid := range Children(parent) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			rest, ok := strings.CutPrefix(line, "NSpid:")
			if !ok {
				continue
			}
			f := strings.Fields(rest)
			if len(f) >= 2 && f[len(f)-1] == "1" {
				return pid
			}
		}
	}
	return 0
}

// parsePPid reads field 4 of /proc/PID/stat (after the command name).
func parsePPid(b []byte) (int, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, errors.New("malformed /proc stat")
	}
	return strconv.Atoi(f[1])
}

// CgroupProcs returns every pid in the cgroup directories and their
// descendants (systemd-nspawn may make sub-cgroups).
func CgroupProcs(dirs []string) []int {
	seen := map[int]bool{}
	var out []int
	for _, dir := range dirs {
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return nil
			}
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
					seen[pid] = true
					out = append(out, pid)
				}
			}
			return nil
		})
	}
	return out
}

// KillCgroup SIGKILLs every process in the cgroups until none is left (a
// fork may race the first pass), for at most timeout.
func KillCgroup(dirs []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		pids := CgroupProcs(dirs)
		if len(pids) == 0 {
			return nil
		}
		for _, p := range pids {
			unix.Kill(p, unix.SIGKILL)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v survive SIGKILL in %v", pids, dirs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cgroupDetail is the Record.Details key listing a supervised instance's
// cgroup directories (comma-separated).
const cgroupDetail = "cgroups"

func cgroupDirs(rec Record) []string {
	v := rec.Details[cgroupDetail]
	if v == "" {
		return nil
	}
	var out []string
	for _, d := range strings.Split(v, ",") {
		// Only our own cgroups: a damaged record must not make us kill
		// someone else's processes.
		if strings.HasPrefix(d, cgroupRoot+"/") && strings.Contains(d, "/volt/") && !strings.Contains(d, "..") {
			out = append(out, d)
		}
	}
	return out
}
