package jailer

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// The cgroup files the jailer writes, with what their values must look
// like: the kernel would refuse a bad value too, but only after the cgroup
// was made; these refuse it with nothing made.
var (
	reCount    = regexp.MustCompile(`^(max|[0-9]+)$`)
	reBytes    = regexp.MustCompile(`^(max|[0-9]+[KMG]?)$`)
	reBytesV1  = regexp.MustCompile(`^(-1|[0-9]+[KMG]?)$`)
	reCPUMax   = regexp.MustCompile(`^(max|[0-9]+)( [0-9]+)?$`)
	reCPUList  = regexp.MustCompile(`^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$`)
	reInt      = regexp.MustCompile(`^[0-9]+$`)
	reQuotaV1  = regexp.MustCompile(`^(-1|[0-9]+)$`)
	cgroupKeys = map[int]map[string]*regexp.Regexp{
		2: {
			"cpu.max": reCPUMax, "cpu.weight": reInt,
			"memory.max": reBytes, "memory.high": reBytes, "memory.swap.max": reBytes,
			"pids.max": reCount, "cpuset.cpus": reCPUList, "cpuset.mems": reCPUList,
		},
		1: {
			"cpu.cfs_quota_us": reQuotaV1, "cpu.cfs_period_us": reInt, "cpu.shares": reInt,
			"memory.limit_in_bytes": reBytesV1, "memory.memsw.limit_in_bytes": reBytesV1,
			"pids.max": reCount, "cpuset.cpus": reCPUList, "cpuset.mems": reCPUList,
		},
	}
)

// checkCgroupSetting refuses a file the jailer does not know for the
// version (either version's when it is chosen later) or a malformed value.
func checkCgroupSetting(s CgroupSetting, version int) error {
	versions := []int{version}
	if version == 0 {
		versions = []int{2, 1}
	}
	for _, v := range versions {
		if re, ok := cgroupKeys[v][s.File]; ok {
			if !re.MatchString(s.Value) {
				return fmt.Errorf("--cgroup %s=%s: bad value for cgroup v%d (want %s)", s.File, s.Value, v, re)
			}
			return nil
		}
	}
	var known []string
	for _, v := range versions {
		for k := range cgroupKeys[v] {
			known = append(known, k)
		}
	}
	sort.Strings(known)
	return fmt.Errorf("--cgroup %s: not a file the jailer sets (have %s)", s.File, strings.Join(uniq(known), ", "))
}

func uniq(s []string) []string {
	var out []string
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

func controllerOf(file string) string {
	c, _, _ := strings.Cut(file, ".")
	return c
}

// mount is one cgroup hierarchy from /proc/mounts.
type mount struct {
	path        string
	version     int
	controllers []string // v1: from the mount options; v2: cgroup.controllers
}

// cgroupMounts reads the cgroup hierarchies from mounts (/proc/mounts).
func cgroupMounts(mounts string) ([]mount, error) {
	f, err := os.Open(mounts)
	if err != nil {
		return nil, fmt.Errorf("find the cgroup hierarchies: %w", err)
	}
	defer f.Close()
	var out []mount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 {
			continue
		}
		switch fields[2] {
		case "cgroup2":
			b, err := os.ReadFile(filepath.Join(fields[1], "cgroup.controllers"))
			if err != nil {
				continue
			}
			out = append(out, mount{path: fields[1], version: 2, controllers: strings.Fields(string(b))})
		case "cgroup":
			var cs []string
			for _, o := range strings.Split(fields[3], ",") {
				if o == "cpu" || o == "cpuacct" || o == "memory" || o == "pids" || o == "cpuset" || o == "blkio" || o == "devices" || o == "freezer" || o == "hugetlb" {
					cs = append(cs, o)
				}
			}
			if len(cs) > 0 {
				out = append(out, mount{path: fields[1], version: 1, controllers: cs})
			}
		}
	}
	return out, sc.Err()
}

// cgroupPlan is where each setting goes: one directory per hierarchy.
type cgroupPlan struct {
	version int
	// dirs maps each hierarchy's new cgroup directory to its settings.
	dirs  map[string][]CgroupSetting
	roots map[string]string // dir -> hierarchy root
}

// planCgroups picks the version and the hierarchy of every setting.
func planCgroups(c *Config, mounts []mount) (*cgroupPlan, error) {
	if len(c.Cgroups) == 0 {
		return &cgroupPlan{}, nil
	}
	need := map[string]bool{}
	for _, s := range c.Cgroups {
		need[controllerOf(s.File)] = true
	}
	version := c.CgroupVersion
	if version == 0 {
		version = 1
		for _, m := range mounts {
			if m.version == 2 && hasAll(m.controllers, need) {
				version = 2
				break
			}
		}
	}
	parent := c.ParentCgroup
	if parent == "" {
		parent = c.ExecName()
	}
	p := &cgroupPlan{version: version, dirs: map[string][]CgroupSetting{}, roots: map[string]string{}}
	for _, s := range c.Cgroups {
		if err := checkCgroupSetting(s, version); err != nil {
			return nil, err
		}
		ctl := controllerOf(s.File)
		var root string
		for _, m := range mounts {
			if m.version == version && contains(m.controllers, ctl) {
				root = m.path
				break
			}
		}
		if root == "" {
			return nil, fmt.Errorf("--cgroup %s: no cgroup v%d hierarchy has the %s controller on this host (see /proc/mounts)", s.File, version, ctl)
		}
		dir := filepath.Join(root, parent, c.ID)
		p.dirs[dir] = append(p.dirs[dir], s)
		p.roots[dir] = root
	}
	return p, nil
}

func hasAll(have []string, need map[string]bool) bool {
	for n := range need {
		if !contains(have, n) {
			return false
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// create makes the cgroups and writes the settings. A cgroup that exists
// already is refused: it belongs to another VM of the same id, or one that
// was not cleaned up, and removing it later would not be ours to do.
func (p *cgroupPlan) create() error {
	for _, dir := range p.sortedDirs() {
		root := p.roots[dir]
		if _, err := os.Stat(dir); err == nil {
			return fmt.Errorf("cgroup %s already exists: another VM with this id runs, or one was not cleaned up", dir)
		}
		if err := p.makeParents(root, filepath.Dir(dir)); err != nil {
			return err
		}
		if err := os.Mkdir(dir, 0o755); err != nil {
			return fmt.Errorf("create cgroup: %w", err)
		}
		if p.version == 1 && hasCpuset(p.dirs[dir]) {
			// A v1 cpuset starts empty and takes no task until both
			// lists are set: copy what the settings do not give.
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				if !hasFile(p.dirs[dir], f) {
					b, err := os.ReadFile(filepath.Join(filepath.Dir(dir), f))
					if err != nil {
						return fmt.Errorf("cgroup: %w", err)
					}
					if err := writeCgroupFile(filepath.Join(dir, f), strings.TrimSpace(string(b))); err != nil {
						return err
					}
				}
			}
		}
		for _, s := range p.dirs[dir] {
			if err := writeCgroupFile(filepath.Join(dir, s.File), s.Value); err != nil {
				return err
			}
		}
	}
	return nil
}

// makeParents creates the parent cgroup (shared by every VM of this exec
// file) and, in v2, enables the needed controllers on the way down.
func (p *cgroupPlan) makeParents(root, parent string) error {
	rel, err := filepath.Rel(root, parent)
	if err != nil {
		return err
	}
	dir := root
	for _, part := range append([]string{""}, strings.Split(rel, string(filepath.Separator))...) {
		if part != "" && part != "." {
			dir = filepath.Join(dir, part)
			if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return fmt.Errorf("create cgroup: %w", err)
			}
		}
		if p.version == 2 {
			var enable []string
			for _, dirs := range p.dirs {
				for _, s := range dirs {
					enable = append(enable, "+"+controllerOf(s.File))
				}
			}
			sort.Strings(enable)
			if err := writeCgroupFile(filepath.Join(dir, "cgroup.subtree_control"), strings.Join(uniq(enable), " ")); err != nil {
				return err
			}
		}
	}
	return nil
}

func hasCpuset(s []CgroupSetting) bool {
	for _, x := range s {
		if controllerOf(x.File) == "cpuset" {
			return true
		}
	}
	return false
}

func hasFile(s []CgroupSetting, f string) bool {
	for _, x := range s {
		if x.File == f {
			return true
		}
	}
	return false
}

func writeCgroupFile(path, value string) error {
	if err := os.WriteFile(path, []byte(value), 0); err != nil {
		return fmt.Errorf("cgroup: write %q to %s: %w", value, path, err)
	}
	return nil
}

// join moves pid into every cgroup of the plan.
func (p *cgroupPlan) join(pid int) error {
	for _, dir := range p.sortedDirs() {
		if err := writeCgroupFile(filepath.Join(dir, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return err
		}
	}
	return nil
}

// remove deletes the cgroups once they are empty (the VMM has exited).
func (p *cgroupPlan) remove() error {
	var errs []error
	for _, dir := range p.sortedDirs() {
		if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove cgroup: %w", err))
		}
	}
	return errors.Join(errs...)
}

func (p *cgroupPlan) sortedDirs() []string {
	var out []string
	for d := range p.dirs {
		out = append(out, d)
	}
	sort.Strings(out)
	return out
}
