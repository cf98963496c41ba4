package instance

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// Manager names.
const (
	ManagerSystemd    = "systemd"
	ManagerSupervisor = "supervisor"
)

// EnvManager tells a supervisor which manager started it, so that it knows
// whether to make its own cgroup.
const EnvManager = "VOLT_SUPERVISED_BY"

// Launch is a supervisor process to start for an instance.
type Launch struct {
	Dir         Dir
	Argv        []string // Argv[0] is an absolute path
	Env         []string // added to the environment
	Description string
	Limits      Limits
	// ReadyTimeout bounds the wait for the supervisor's READY=1.
	ReadyTimeout time.Duration
}

func (l *Launch) validate() error {
	if len(l.Argv) == 0 || !strings.HasPrefix(l.Argv[0], "/") {
		return fmt.Errorf("launch: the supervisor's path must be absolute, have %q", l.Argv)
	}
	if l.ReadyTimeout <= 0 {
		l.ReadyTimeout = time.Minute
	}
	return l.Limits.Validate()
}

// Manager starts and stops supervisors. Both managers run the same
// supervisor with the same arguments and state layout; they differ only in
// who is its parent and who applies the cgroup limits.
type Manager interface {
	Name() string
	// Start starts the supervisor and returns once it has said READY=1
	// (the workload runs), or with the error it reported.
	Start(ctx context.Context, l Launch) error
	// Signal sends sig to the supervisor of an instance whose record says
	// it runs.
	Signal(ctx context.Context, d Dir, rec Record, sig Signal) error
	UnitQuerier
	Close()
}

// Signal is a signal a manager can deliver.
type Signal int

const (
	SignalTerm Signal = 15
	SignalKill Signal = 9
)

// Choice values for Detect.
const (
	ChooseAuto       = "auto"
	ChooseSystemd    = ManagerSystemd
	ChooseSupervisor = ManagerSupervisor
)

// SystemdBooted reports whether systemd is the running service manager: it
// creates /run/systemd/system early at boot (sd_booted(3)).
func SystemdBooted() bool {
	fi, err := os.Lstat("/run/systemd/system")
	return err == nil && fi.IsDir()
}

// Detect picks the manager: systemd where it is PID 1 (and reachable on
// D-Bus), the supervisor otherwise. note says which was chosen and why,
// for the user, when it is not systemd.
func Detect(ctx context.Context, choice string) (m Manager, note string, err error) {
	switch choice {
	case "", ChooseAuto:
		if !SystemdBooted() {
			return &Supervisor{}, "systemd is not PID 1 here (no /run/systemd/system): running it as a supervised child, with no daemon", nil
		}
		s, err := NewSystemd(ctx)
		if err != nil {
			return nil, "", fmt.Errorf("systemd is PID 1 but cannot be reached over D-Bus: %w (use --manager supervisor to run without it)", err)
		}
		return s, "", nil
	case ChooseSystemd:
		if !SystemdBooted() {
			return nil, "", errors.New("--manager systemd: systemd is not PID 1 here (no /run/systemd/system)")
		}
		s, err := NewSystemd(ctx)
		if err != nil {
			return nil, "", err
		}
		return s, "", nil
	case ChooseSupervisor:
		return &Supervisor{}, "", nil
	}
	return nil, "", fmt.Errorf("manager %q: want auto, systemd or supervisor", choice)
}

// NotifySocket receives sd_notify(3) datagrams on an abstract unix socket,
// the way systemd does for Type=notify services: the supervisor listens for
// its workload (systemd-nspawn speaks it), and the supervised-child manager
// listens for the supervisor.
type NotifySocket struct {
	conn *net.UnixConn
	addr string
	msgs chan NotifyMessage
	done chan struct{}
}

// ListenNotify opens a socket at a random abstract address and starts
// reading it; Close stops the reader and waits for it.
func ListenNotify() (*NotifySocket, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	addr := "@volt-notify-" + hex.EncodeToString(b[:])
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	n := &NotifySocket{conn: conn, addr: addr, msgs: make(chan NotifyMessage, 16), done: make(chan struct{})}
	go n.read()
	return n, nil
}

// Addr is the value for NOTIFY_SOCKET.
func (n *NotifySocket) Addr() string { return n.addr }

// Messages delivers what arrives; it is closed when the socket is.
func (n *NotifySocket) Messages() <-chan NotifyMessage { return n.msgs }

// NotifyMessage is the part of an sd_notify message we act on.
type NotifyMessage struct {
	Ready  bool
	Status string
	Errno  string
}

// parseNotify decodes one datagram: newline-separated KEY=VALUE.
func parseNotify(b []byte) NotifyMessage {
	var m NotifyMessage
	for _, line := range bytes.Split(b, []byte("\n")) {
		k, v, ok := bytes.Cut(line, []byte("="))
		if !ok {
			continue
		}
		switch string(k) {
		case "READY":
			m.Ready = string(v) == "1"
		case "STATUS":
			m.Status = string(v)
		case "ERRNO":
			m.Errno = string(v)
		}
	}
	return m
}

func (n *NotifySocket) read() {
	defer close(n.done)
	defer close(n.msgs)
	buf := make([]byte, 4096)
	for {
		k, _, err := n.conn.ReadFromUnix(buf)
		if err != nil {
			return
		}
		m := parseNotify(buf[:k])
		select {
		case n.msgs <- m:
		default:
			// Nobody reads fast enough: keep the newest READY rather
			// than block the reader (and Close with it).
			if m.Ready {
				select {
				case <-n.msgs:
				default:
				}
				n.msgs <- m
			}
		}
	}
}

// Close closes the socket and waits for its reader.
func (n *NotifySocket) Close() {
	n.conn.Close()
	<-n.done
}

// failureMessage explains a supervisor that ended before READY=1: its own
// record's error if it wrote one, else the last lines of the log.
func failureMessage(d Dir, last string) string {
	if rec, err := d.ReadRecord(); err == nil && rec.Error != "" {
		return rec.Error
	}
	if last != "" {
		return last
	}
	if tail := logTail(d.LogPath(), 6); tail != "" {
		return "its log ends with:\n" + tail
	}
	return "no message (see its log)"
}

// logTail returns the last n lines of a log file (reading at most 16 KiB).
func logTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(st.Size()-16<<10, 0)
	b := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
