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
