package bench

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The floor helpers of bench/floor, as build.sh names them, and the arms
// that run them. Each is timed by the same eBPF program, from its exec, as
// the VMMs are: the exec floors by their exit alone, floor-kvm by every row
// its few ioctls and port writes reach (see bench/floor/kvm.c).
const (
	FloorExecGo = "floor-exec-go" // an empty static Go binary
	FloorExecC  = "floor-exec-c"  // an empty static C binary
	FloorKVM    = "floor-kvm"     // KVM set-up and a guest that writes the boot rows' markers
	// FloorKVMAnswer is floor-kvm run with "answer": its guest writes one
	// byte to COM1 and no marker, as a restored guest answers.
	FloorKVMAnswer = "floor-kvm-answer"
)

// FloorHelperPath is the path of a helper binary in dir, checked: a missing
// helper says how to build it.
func FloorHelperPath(dir, helper string) (string, error) {
	p := filepath.Join(dir, helper)
	if err := regular(p); err != nil {
		return "", fmt.Errorf("floor helper: %w (build them: bench/floor/build.sh %s)", err, dir)
	}
	return p, nil
}

// ExecFloorArms are the two exec floors: exec → exit of an empty static Go
// binary and of an empty static C one.
func ExecFloorArms(dir string, timeout time.Duration) ([]Arm, error) {
	var arms []Arm
	for _, h := range []string{FloorExecGo, FloorExecC} {
		p, err := FloorHelperPath(dir, h)
		if err != nil {
			return nil, err
		}
		arms = append(arms, Arm{Name: h, Config: Config{VMM: VMMFloor, VMMBin: p, Rows: ExecStages, Timeout: timeout}})
	}
	return arms, nil
}

// KVMFloorArm is floor-kvm with guest memory of the given size ("128M"),
// timed by rows: Stages beside boots, RestoreStages beside the cold boots
// of a restore session (its guest answers after the ready marker, as the
// cold-booted probe does).
func KVMFloorArm(dir, memory string, rows []Stage, timeout time.Duration) (Arm, error) {
	return kvmFloorArm(dir, FloorKVM, "boot", memory, rows, timeout)
}

// KVMAnswerFloorArm is floor-kvm in its answer shape, timed by
// RestoreStages: the floor of a restore.
func KVMAnswerFloorArm(dir, memory string, timeout time.Duration) (Arm, error) {
	return kvmFloorArm(dir, FloorKVMAnswer, "answer", memory, RestoreStages, timeout)
}

func kvmFloorArm(dir, name, shape, memory string, rows []Stage, timeout time.Duration) (Arm, error) {
	p, err := FloorHelperPath(dir, FloorKVM)
	if err != nil {
		return Arm{}, err
	}
	mib, err := MemoryMiB(memory)
	if err != nil {
		return Arm{}, err
	}
	return Arm{Name: name, Config: Config{
		VMM: VMMFloor, VMMBin: p, ExtraArgs: []string{shape, strconv.FormatUint(mib, 10)}, Rows: rows, Timeout: timeout,
	}}, nil
}

// MemoryMiB reads a memory size as voltbench's --memory takes it: a whole
// number with an optional K, M or G suffix (MiB without one), in whole MiB.
func MemoryMiB(s string) (uint64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(t, "IB")
	t = strings.TrimSuffix(t, "B")
	unit := uint64(1 << 20)
	switch {
	case strings.HasSuffix(t, "K"):
		unit, t = 1<<10, t[:len(t)-1]
	case strings.HasSuffix(t, "M"):
		t = t[:len(t)-1]
	case strings.HasSuffix(t, "G"):
		unit, t = 1<<30, t[:len(t)-1]
	}
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil || n == 0 || n > (1<<40)/unit {
		return 0, fmt.Errorf("memory %q: want a size such as 128M or 1G", s)
	}
	bytes := n * unit
	if bytes%(1<<20) != 0 || bytes > 1<<40 {
		return 0, fmt.Errorf("memory %q: want whole MiB, at most 1 TiB", s)
	}
	return bytes >> 20, nil
}
