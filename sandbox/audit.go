package sandbox

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// SeccompKill is the kernel's audit record of a process that a filter
// killed (type 1326, AUDIT_SECCOMP): the process itself cannot report it,
// so whoever waits for it (volt-jailer, a test, a pool) reads it back.
type SeccompKill struct {
	PID     int
	Comm    string
	Syscall int
	// Name is the system call's x86-64 name.
	Name string
}

func (k SeccompKill) String() string {
	return fmt.Sprintf("seccomp killed pid %d (%s): forbidden system call %s (%d)", k.PID, k.Comm, k.Name, k.Syscall)
}

// ErrNoAuditRecord is returned when the kernel log has no seccomp record
// for the process (audit off, the log not readable, rate limited).
var ErrNoAuditRecord = errors.New("no seccomp audit record in the kernel log")

// FindSeccompKill looks in the kernel log (/dev/kmsg) for the audit
// record of pid's seccomp kill, waiting up to wait for it to arrive
// (kauditd prints records asynchronously). pid is as the caller's PID
// namespace sees it only if that is the initial namespace: the kernel
// logs global PIDs.
func FindSeccompKill(pid int, wait time.Duration) (SeccompKill, error) {
	deadline := time.Now().Add(wait)
	for {
		k, err := scanKmsg(pid)
		if err == nil || !errors.Is(err, ErrNoAuditRecord) || time.Now().After(deadline) {
			return k, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// scanKmsg reads every record /dev/kmsg holds, without blocking.
func scanKmsg(pid int) (SeccompKill, error) {
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return SeccompKill{}, fmt.Errorf("read the kernel log: %w", err)
	}
	f := os.NewFile(uintptr(fd), "/dev/kmsg")
	defer f.Close()
	var found *SeccompKill
	buf := make([]byte, 8192)
	for {
		// /dev/kmsg returns one record per read.
		n, err := unix.Read(fd, buf)
		if err == unix.EPIPE {
			continue // records overwritten while reading: go on with the next
		}
		if err != nil || n == 0 {
			break
		}
		if k, ok := ParseSeccompRecord(string(buf[:n])); ok && k.PID == pid {
			found = &k
		}
	}
	if found == nil {
		return SeccompKill{}, fmt.Errorf("pid %d: %w", pid, ErrNoAuditRecord)
	}
	return *found, nil
}

// ParseSeccompRecord reads one kernel log line; ok is false unless it is
// a seccomp audit record with a pid and a system call number. It never
// fails on malformed input: the log is not ours.
func ParseSeccompRecord(line string) (SeccompKill, bool) {
	i := strings.Index(line, "type=1326")
	if i < 0 {
		return SeccompKill{}, false
	}
	var k SeccompKill
	havePID, haveNr := false, false
	sc := bufio.NewScanner(strings.NewReader(line[i:]))
	sc.Split(bufio.ScanWords)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		switch key {
		case "pid":
			if n, err := strconv.Atoi(val); err == nil && n > 0 {
				k.PID, havePID = n, true
			}
		case "syscall":
			if n, err := strconv.Atoi(val); err == nil && n >= 0 {
				k.Syscall, haveNr = n, true
			}
		case "comm":
			k.Comm = strings.Trim(val, `"`)
		}
	}
	if !havePID || !haveNr {
		return SeccompKill{}, false
	}
	k.Name = SyscallName(k.Syscall)
	return k, true
}
