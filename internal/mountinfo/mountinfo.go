// Package mountinfo answers whether anything is mounted at or under a
// directory, from /proc/self/mountinfo: a jail's directory is removed only
// when nothing of the host is mounted inside it, or RemoveAll would delete
// through the mount.
package mountinfo

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// RemoveAllUnmounted removes dir and everything in it, unless this mount
// namespace sees a mount at or under it: RemoveAll would then delete what
// is mounted there (a CAS store, a volume, a snapshot) through the mount.
// A jail's own mounts live in its mount namespace and are gone with it.
func RemoveAllUnmounted(dir string) error {
	m, err := MountedUnder(dir)
	if err != nil {
		return err
	}
	if m != "" {
		return fmt.Errorf("%s is mounted here: not removed", m)
	}
	return os.RemoveAll(dir)
}

// MountedUnder returns a mount point of this mount namespace at or under
// dir, or "" when there is none.
func MountedUnder(dir string) (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	return mountedUnder(f, dir)
}

func mountedUnder(r io.Reader, dir string) (string, error) {
	dir = strings.TrimSuffix(dir, "/")
	prefix := dir + "/"
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// ID parent major:minor root mount-point options ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		if mp := Unescape(fields[4]); mp == dir || strings.HasPrefix(mp, prefix) {
			return mp, nil
		}
	}
	return "", sc.Err()
}

// Unescape undoes mountinfo's octal escapes of a path (\040 is a space,
// \134 a backslash).
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
