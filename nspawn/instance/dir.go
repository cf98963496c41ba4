// Package instance is what containers and VMs share: names, the state
// directory of each instance, the records written into it atomically, how
// an instance's status is observed (from systemd, or from the supervisor's
// lock and process identities), and the two ways a workload is started
// without a daemon: a transient systemd unit over D-Bus where systemd is
// PID 1, a detached supervised child where it is not.
//
// Layout, under the state root (default /var/lib/volt):
//
//	containers/NAME/   or   vms/NAME/
//	  spec.json        what was asked for; written once by run
//	  state.json       the supervisor's record (phase, pids, exit); replaced atomically
//	  lock             flocked by the supervisor for as long as it lives
//	  ops.lock         flocked by run, stop, rm and commit, one at a time
//	  volume/          the instance's cas/volume: its writes over the image
//	  log              the workload's output and the supervisor's messages
//	  (kind-specific mount points and sockets)
package instance

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Kind is a workload kind.
type Kind string

const (
	Container Kind = "container"
	VM        Kind = "vm"
)

// DefaultRoot is the state root; VOLT_STATE_DIR or --state-dir override it.
const DefaultRoot = "/var/lib/volt"

// MaxNameLen is a host name label's limit: nspawn makes the name the
// container's host name, and unit names and veth names derive from it.
const MaxNameLen = 63

// ErrBadName is wrapped by every name validation error.
var ErrBadName = errors.New("invalid instance name")

// ValidateName checks an instance name: 1 to 63 ASCII letters, digits and
// '-', starting and ending with a letter or digit (a valid host name label,
// a valid unit-name part and a valid CAS ref part at once).
func ValidateName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("%w %q: want 1 to %d characters", ErrBadName, trunc(name), MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		if !alnum && (c != '-' || i == 0 || i == len(name)-1) {
			return fmt.Errorf("%w %q: use letters, digits and '-' (not first or last)", ErrBadName, trunc(name))
		}
	}
	return nil
}

func trunc(s string) string {
	if len(s) > 70 {
		return s[:67] + "..."
	}
	return s
}

// Dir is one instance's state directory.
type Dir struct {
	Root string // the state root
	Kind Kind
	Name string
}

// NewDir validates name and returns its directory (which may not exist).
func NewDir(root string, kind Kind, name string) (Dir, error) {
	if err := ValidateName(name); err != nil {
		return Dir{}, err
	}
	if !filepath.IsAbs(root) {
		abs, err := filepath.Abs(root)
		if err != nil {
			return Dir{}, err
		}
		root = abs
	}
	return Dir{Root: root, Kind: kind, Name: name}, nil
}

// KindDir holds every instance of a kind.
func KindDir(root string, kind Kind) string { return filepath.Join(root, string(kind)+"s") }

func (d Dir) Path() string            { return filepath.Join(KindDir(d.Root, d.Kind), d.Name) }
func (d Dir) File(name string) string { return filepath.Join(d.Path(), name) }
func (d Dir) SpecPath() string        { return d.File("spec.json") }
func (d Dir) StatePath() string       { return d.File("state.json") }
func (d Dir) LockPath() string        { return d.File("lock") }
func (d Dir) OpsLockPath() string     { return d.File("ops.lock") }
func (d Dir) VolumePath() string      { return d.File("volume") }
func (d Dir) LogPath() string         { return d.File("log") }

// Unit is the systemd unit an instance runs as.
func (d Dir) Unit() string { return fmt.Sprintf("volt-%s-%s.service", d.Kind, d.Name) }

// CASRef is the ref that keeps the instance's base manifest alive while
// its volume is closed (a stopped instance holds no lease).
func (d Dir) CASRef() string { return string(d.Kind) + ":" + d.Name }

// ErrExists is wrapped when an instance of that name exists already.
var ErrExists = errors.New("instance exists")

// ErrNotFound is wrapped when no instance has the name.
var ErrNotFound = errors.New("no such instance")

// Create makes the instance directory; an existing one is ErrExists. mkdir
// is atomic, so two runs of one name cannot both succeed.
func (d Dir) Create() error {
	if err := os.MkdirAll(KindDir(d.Root, d.Kind), 0o700); err != nil {
		return err
	}
	if err := os.Mkdir(d.Path(), 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%w: %s %s", ErrExists, d.Kind, d.Name)
		}
		return err
	}
	return syncDir(KindDir(d.Root, d.Kind))
}

// Exists reports whether the instance directory exists.
func (d Dir) Exists() (bool, error) {
	fi, err := os.Lstat(d.Path())
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !fi.IsDir() {
		return false, fmt.Errorf("%s is %s, not an instance directory", d.Path(), fi.Mode().Type())
	}
	return true, nil
}

// List returns the names of every instance of kind, sorted.
func List(root string, kind Kind) ([]string, error) {
	ents, err := os.ReadDir(KindDir(root, kind))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if e.IsDir() && ValidateName(e.Name()) == nil {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// OpsLock serialises the commands that change an instance (run, stop, rm,
// commit). It waits for another holder only briefly: such commands are
// short, and a user running two at once wants to know.
func (d Dir) OpsLock() (unlock func(), err error) {
	f, err := os.OpenFile(d.OpsLockPath(), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	for i := 0; ; i++ {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) || i == 100 {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("%s %s: another volt command is working on it", d.Kind, d.Name)
			}
			return nil, err
		}
		sleep(50)
	}
}

// Remove deletes the instance directory and everything in it.
func (d Dir) Remove() error {
	if err := os.RemoveAll(d.Path()); err != nil {
		return err
	}
	return syncDir(KindDir(d.Root, d.Kind))
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// hasPrefixDir reports whether p is dir or inside it.
func hasPrefixDir(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+string(filepath.Separator))
}
