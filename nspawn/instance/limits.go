package instance

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Limits are an instance's cgroup limits. Zero means unlimited.
type Limits struct {
	MemoryBytes int64   `json:"memory_bytes,omitempty"`
	CPUs        float64 `json:"cpus,omitempty"` // CPU time as a number of CPUs: 0.5 is half of one
}

// MinMemory is the smallest memory limit accepted: below it systemd-nspawn
// and a shell cannot start, and the OOM killer would look like a bug.
const MinMemory = 16 << 20

// Validate checks the limits.
func (l Limits) Validate() error {
	if l.MemoryBytes != 0 && l.MemoryBytes < MinMemory {
		return fmt.Errorf("memory limit %d bytes: want at least %d MiB", l.MemoryBytes, MinMemory>>20)
	}
	if l.CPUs < 0 || math.IsNaN(l.CPUs) || math.IsInf(l.CPUs, 0) || l.CPUs > 1024 {
		return fmt.Errorf("cpus %v: want a number from 0.01 to 1024", l.CPUs)
	}
	if l.CPUs != 0 && l.CPUs < 0.01 {
		return fmt.Errorf("cpus %v: want at least 0.01", l.CPUs)
	}
	return nil
}

// cfsPeriod is the CFS bandwidth period, systemd's default (100 ms).
const cfsPeriod = 100000

// QuotaMicros is the CPU time allowed per cfsPeriod.
func (l Limits) QuotaMicros() int64 { return int64(math.Round(l.CPUs * cfsPeriod)) }

const cgroupRoot = "/sys/fs/cgroup"

// Cgroup is the cgroup a supervisor made for its instance where no systemd
// does it. Leave moves the caller out and removes it.
type Cgroup struct {
	dirs []string // one per hierarchy (v1) or one (v2)
	// parents are where Leave moves the caller back to.
	parents []string
}

// JoinCgroup puts the calling process (and so everything it starts) into a
// new cgroup for the instance with the limits set, under "volt" at the
// root of each hierarchy: the unified one (cgroup v2), or the memory and
// cpu hierarchies of cgroup v1 (hybrid hosts such as ours). With no limits
// it still makes one, so that everything the instance runs is accounted
// and can be found.
func JoinCgroup(d Dir, l Limits) (*Cgroup, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	leaf := fmt.Sprintf("%s-%s", d.Kind, d.Name)
	if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err == nil {
		return joinV2(leaf, l)
	}
	return joinV1(leaf, l)
}

func joinV2(leaf string, l Limits) (*Cgroup, error) {
	parent := filepath.Join(cgroupRoot, "volt")
	if err := os.Mkdir(parent, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	// Controllers have to be enabled down the path to the leaf.
	for _, dir := range []string{cgroupRoot, parent} {
		if err := writeFile(filepath.Join(dir, "cgroup.subtree_control"), "+memory +cpu"); err != nil {
			return nil, fmt.Errorf("cgroup: enable memory and cpu in %s: %w", dir, err)
		}
	}
	dir := filepath.Join(parent, leaf)
	if err := mkCgroup(dir); err != nil {
		return nil, err
	}
	cg := &Cgroup{dirs: []string{dir}, parents: []string{cgroupRoot}}
	if l.MemoryBytes > 0 {
		if err := writeFile(filepath.Join(dir, "memory.max"), strconv.FormatInt(l.MemoryBytes, 10)); err != nil {
			cg.remove()
			return nil, fmt.Errorf("cgroup: memory.max: %w", err)
		}
		// No swap beyond the limit: the limit means what it says.
		writeFile(filepath.Join(dir, "memory.swap.max"), "0")
	}
	if l.CPUs > 0 {
		if err := writeFile(filepath.Join(dir, "cpu.max"), fmt.Sprintf("%d %d", l.QuotaMicros(), cfsPeriod)); err != nil {
			cg.remove()
			return nil, fmt.Errorf("cgroup: cpu.max: %w", err)
		}
	}
	if err := writeFile(filepath.Join(dir, "cgroup.procs"), strconv.Itoa(os.Getpid())); err != nil {
		cg.remove()
		return nil, fmt.Errorf("cgroup: join %s: %w", dir, err)
	}
	return cg, nil
}

func joinV1(leaf string, l Limits) (*Cgroup, error) {
	cg := &Cgroup{}
	type setting struct{ file, value string }
	hier := []struct {
		name string
		set  []setting
	}{
		{"memory", nil},
		{"cpu", nil},
	}
	if l.MemoryBytes > 0 {
		hier[0].set = append(hier[0].set, setting{"memory.limit_in_bytes", strconv.FormatInt(l.MemoryBytes, 10)})
		// memsw exists only with swap accounting; where it does, the limit
		// covers swap too.
		hier[0].set = append(hier[0].set, setting{"?memory.memsw.limit_in_bytes", strconv.FormatInt(l.MemoryBytes, 10)})
	}
	if l.CPUs > 0 {
		hier[1].set = append(hier[1].set, setting{"cpu.cfs_period_us", strconv.Itoa(cfsPeriod)}, setting{"cpu.cfs_quota_us", strconv.FormatInt(l.QuotaMicros(), 10)})
	}
	for _, h := range hier {
		root := filepath.Join(cgroupRoot, h.name)
		if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil {
			if len(h.set) == 0 {
				continue // not mounted and not needed
			}
			cg.remove()
			return nil, fmt.Errorf("cgroup: no %s hierarchy at %s to set a limit in", h.name, root)
		}
		parent := filepath.Join(root, "volt")
		if err := os.Mkdir(parent, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			cg.remove()
			return nil, fmt.Errorf("cgroup: %w", err)
		}
		dir := filepath.Join(parent, leaf)
		if err := mkCgroup(dir); err != nil {
			cg.remove()
			return nil, err
		}
		cg.dirs = append(cg.dirs, dir)
		cg.parents = append(cg.parents, root)
		for _, s := range h.set {
			file, optional := strings.CutPrefix(s.file, "?")
			err := writeFile(filepath.Join(dir, file), s.value)
			if err != nil && !(optional && errors.Is(err, os.ErrNotExist)) {
				cg.remove()
				return nil, fmt.Errorf("cgroup: %s: %w", file, err)
			}
		}
		if err := writeFile(filepath.Join(dir, "cgroup.procs"), strconv.Itoa(os.Getpid())); err != nil {
			cg.remove()
			return nil, fmt.Errorf("cgroup: join %s: %w", dir, err)
		}
	}
	return cg, nil
}

// mkCgroup makes dir; one left behind by a supervisor that crashed is
// reused if it is empty.
func mkCgroup(dir string) error {
	err := os.Mkdir(dir, 0o755)
	if err == nil {
		return nil
	}
	if !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("cgroup: %w", err)
	}
	b, rerr := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if rerr != nil {
		return fmt.Errorf("cgroup: %w", rerr)
	}
	if len(strings.TrimSpace(string(b))) != 0 {
		return fmt.Errorf("cgroup %s still has processes (pids %s): is the instance running unsupervised?", dir, strings.Join(strings.Fields(string(b)), ","))
	}
	return nil
}

// Dirs returns the cgroup directories, for tests and ls.
func (c *Cgroup) Dirs() []string { return append([]string(nil), c.dirs...) }

// Leave moves the caller back to the hierarchies' roots and removes the
// instance's cgroups, which must be empty by then (the workload ended).
func (c *Cgroup) Leave() error {
	if c == nil {
		return nil
	}
	var first error
	for i, dir := range c.dirs {
		if err := writeFile(filepath.Join(c.parents[i], "cgroup.procs"), strconv.Itoa(os.Getpid())); err != nil && first == nil {
			first = fmt.Errorf("cgroup: leave %s: %w", dir, err)
		}
	}
	if err := c.remove(); err != nil && first == nil {
		first = err
	}
	return first
}

func (c *Cgroup) remove() error {
	var first error
	for _, dir := range c.dirs {
		// rmdir can fail with EBUSY for a moment after the last process
		// left, while the kernel finishes with it.
		var err error
		for i := 0; i < 50; i++ {
			if err = os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
				err = nil
				break
			}
			sleep(20)
		}
		if err != nil && first == nil {
			first = fmt.Errorf("cgroup: %w", err)
		}
	}
	c.dirs = nil
	return first
}

func writeFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// leaveDelegatedRoot moves the calling process from the root of its
// delegated unit cgroup into a "volt-supervisor" child, on the unified
// hierarchy only (cgroup v1 and hybrid hosts have no such rule, and there
// systemd-nspawn shares the unit's root with us).
func leaveDelegatedRoot() error {
	if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err != nil {
		return nil
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return fmt.Errorf("cgroup: %w", err)
	}
	var own string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			own = p
		}
	}
	if own == "" || own == "/" || strings.Contains(own, "..") {
		return nil
	}
	leaf := filepath.Join(cgroupRoot, own, "volt-supervisor")
	if err := os.Mkdir(leaf, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("cgroup: %w", err)
	}
	if err := writeFile(filepath.Join(leaf, "cgroup.procs"), strconv.Itoa(os.Getpid())); err != nil {
		return fmt.Errorf("cgroup: move into %s: %w", leaf, err)
	}
	return nil
}
