package nspawn

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/voltvmm/volt/cas"
	"github.com/voltvmm/volt/nspawn/instance"
)

// Spec is a container as asked for: spec.json in its state directory.
type Spec struct {
	Name        string     `json:"name"`
	Image       string     `json:"image"`
	ImageDigest cas.Digest `json:"image_digest"` // the manifest the volume was made over
	Store       string     `json:"store"`        // the CAS store directory
	Command     []string   `json:"command"`
	// PrivateUsers is nspawn's --private-users: "pick" (the default: a
	// free 64 Ki range of host UIDs, root inside is unprivileged outside),
	// "identity" (a user namespace mapping 0:0, which still drops
	// privileges over the host's) or "no".
	PrivateUsers string          `json:"private_users"`
	Network      Network         `json:"network"`
	Binds        []Bind          `json:"binds,omitempty"`
	Limits       instance.Limits `json:"limits,omitzero"`
	Capabilities []string        `json:"capabilities,omitempty"` // granted back beyond DroppedCapabilities
	Env          []string        `json:"env,omitempty"`
	CreatedAt    time.Time       `json:"created_at"`
	// NoNewPrivileges sets PR_SET_NO_NEW_PRIVS for the payload (setuid
	// binaries then do not raise privileges).
	NoNewPrivileges bool `json:"no_new_privileges,omitempty"`
}

// Network modes.
const (
	NetNone   = "none"   // a private network namespace with only lo (the default)
	NetVeth   = "veth"   // a veth pair: host0 inside, ve-NAME on the host
	NetBridge = "bridge" // a veth pair whose host side joins an existing bridge
	NetHost   = "host"   // the host's network (no namespace)
)

// Network is the container's network.
type Network struct {
	Mode   string `json:"mode"`
	Bridge string `json:"bridge,omitempty"`
}

// ParseNetwork parses --network: none, veth, host or bridge=BR.
func ParseNetwork(s string) (Network, error) {
	switch s {
	case "", NetNone:
		return Network{Mode: NetNone}, nil
	case NetVeth:
		return Network{Mode: NetVeth}, nil
	case NetHost:
		return Network{Mode: NetHost}, nil
	}
	if br, ok := strings.CutPrefix(s, "bridge="); ok {
		if err := checkIfName(br); err != nil {
			return Network{}, fmt.Errorf("--network %s: %w", s, err)
		}
		return Network{Mode: NetBridge, Bridge: br}, nil
	}
	return Network{}, fmt.Errorf("--network %q: want none, veth, host or bridge=BRIDGE", s)
}

func (n Network) String() string {
	if n.Mode == NetBridge {
		return "bridge=" + n.Bridge
	}
	return n.Mode
}

// checkIfName checks a Linux interface name (IFNAMSIZ is 16 with the NUL).
func checkIfName(s string) error {
	if s == "" || len(s) > 15 || s == "." || s == ".." {
		return fmt.Errorf("interface name %q: want 1 to 15 characters", s)
	}
	for _, c := range s {
		if c <= ' ' || c == '/' || c == ':' || c > '~' {
			return fmt.Errorf("interface name %q: character %q is not allowed", s, c)
		}
	}
	return nil
}

// Bind is a host path made visible inside the container.
type Bind struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// ParseBind parses --bind SRC:DST[:ro|rw]. Both paths are absolute;
// nspawn's own syntax separates with ':' and ',', so paths holding either
// are refused rather than escaped.
func ParseBind(s string) (Bind, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return Bind{}, fmt.Errorf("--bind %q: want SOURCE:TARGET[:ro]", s)
	}
	b := Bind{Source: parts[0], Target: parts[1]}
	if len(parts) == 3 {
		switch parts[2] {
		case "ro":
			b.ReadOnly = true
		case "rw":
		default:
			return Bind{}, fmt.Errorf("--bind %q: option %q: want ro or rw", s, parts[2])
		}
	}
	for _, p := range []string{b.Source, b.Target} {
		if !filepath.IsAbs(p) {
			return Bind{}, fmt.Errorf("--bind %q: %q is not an absolute path", s, p)
		}
		if strings.ContainsAny(p, ",\\\x00\n") {
			return Bind{}, fmt.Errorf("--bind %q: paths with ',', '\\' or control characters are not supported", s)
		}
	}
	b.Source, b.Target = filepath.Clean(b.Source), filepath.Clean(b.Target)
	if b.Target == "/" {
		return Bind{}, fmt.Errorf("--bind %q: cannot bind over the container's root", s)
	}
	return b, nil
}

// Check verifies that the source exists now (nspawn would fail later with
// a less clear message) and is a directory or a regular file.
func (b Bind) Check() error {
	fi, err := os.Stat(b.Source)
	if err != nil {
		return fmt.Errorf("--bind %s:%s: %w", b.Source, b.Target, err)
	}
	if !fi.IsDir() && !fi.Mode().IsRegular() {
		return fmt.Errorf("--bind %s:%s: the source is %s; bind a directory or a regular file", b.Source, b.Target, describe(fi.Mode()))
	}
	return nil
}

func describe(m os.FileMode) string {
	switch {
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeDevice != 0:
		return "a device"
	}
	return "not a file or directory"
}

// PrivateUsers values.
const (
	UsersPick     = "pick"
	UsersIdentity = "identity"
	UsersNo       = "no"
)

// Validate checks everything that can be checked without the image.
func (s *Spec) Validate() error {
	if err := instance.ValidateName(s.Name); err != nil {
		return err
	}
	if len(s.Command) == 0 {
		return errors.New("no command: give it after --, e.g. -- /bin/sh -c 'echo hello'")
	}
	if s.Command[0] == "" {
		return errors.New("the command is empty")
	}
	for _, a := range s.Command {
		if strings.IndexByte(a, 0) >= 0 {
			return errors.New("the command holds a NUL byte")
		}
	}
	switch s.PrivateUsers {
	case UsersPick, UsersIdentity, UsersNo:
	default:
		return fmt.Errorf("--private-users %q: want pick, identity or no", s.PrivateUsers)
	}
	switch s.Network.Mode {
	case NetNone, NetVeth, NetHost:
	case NetBridge:
		if err := checkIfName(s.Network.Bridge); err != nil {
			return err
		}
	default:
		return fmt.Errorf("network mode %q", s.Network.Mode)
	}
	seen := map[string]bool{}
	for _, b := range s.Binds {
		if seen[b.Target] {
			return fmt.Errorf("--bind: %s is bound twice", b.Target)
		}
		seen[b.Target] = true
	}
	for _, c := range s.Capabilities {
		if !validCapName(c) {
			return fmt.Errorf("--cap-add %q: want a capability name such as CAP_NET_RAW", c)
		}
	}
	for _, e := range s.Env {
		k, _, ok := strings.Cut(e, "=")
		if !ok || k == "" || strings.ContainsAny(k, " \t\n\x00") {
			return fmt.Errorf("--env %q: want NAME=VALUE", e)
		}
	}
	return s.Limits.Validate()
}

func validCapName(c string) bool {
	rest, ok := strings.CutPrefix(c, "CAP_")
	if !ok || rest == "" || len(rest) > 32 {
		return false
	}
	for _, r := range rest {
		if !(r >= 'A' && r <= 'Z' || r == '_') {
			return false
		}
	}
	return true
}
