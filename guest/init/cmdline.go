package voltinit

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// ParamPrefix marks the kernel parameters volt-init reads.
const ParamPrefix = "volt."

// Config is what the volt.* parameters (and the kernel's ip=) ask of init.
// The zero value means: no network beyond lo, keep the kernel's hostname,
// run the default shell, serve the guest agent when there is a vsock
// device, poll the generation ID every GenIDInterval.
type Config struct {
	Run      []string     // volt.run, split shell-like; nil means the default
	Addr     netip.Prefix // volt.ip, the address of Device with its prefix length
	Gateway  netip.Addr   // volt.gw, the default route's next hop
	Hostname string       // volt.hostname
	// Domain is the NIS domain name, from the host-name field of ip=
	// (what follows its first dot, as the kernel splits it).
	Domain string
	// Device is the interface Addr and Gateway configure: ip='s device
	// field; "" means DefaultDevice.
	Device string
	Env    []string // volt.env, K=V entries in the order given
	// NoAgent is volt.agent=off: no guest agent even with a vsock device.
	NoAgent bool
	// GenIDInterval is volt.genid_interval: how often the generation ID
	// is polled. Zero means GenIDInterval; negative (volt.genid_interval=0
	// or off) means never: the agent still checks it before each request.
	GenIDInterval time.Duration
}

// DefaultDevice is the interface volt.ip configures.
const DefaultDevice = "eth0"

// Limits of volt.genid_interval: below the minimum the poll would cost a
// noticeable share of a vCPU where ring 0 is emulated; above the maximum a
// clone's RNG would stay shared for longer than anyone should want.
const (
	MinGenIDInterval = 10 * time.Millisecond
	MaxGenIDInterval = time.Hour
)

// Interface returns the interface the configuration addresses.
func (c *Config) Interface() string {
	if c.Device == "" {
		return DefaultDevice
	}
	return c.Device
}

// ErrParam is wrapped by every error about a malformed volt.* parameter, so
// that callers can tell bad input from failing system calls.
var ErrParam = errors.New("bad volt parameter")

func paramError(key, format string, args ...any) error {
	return fmt.Errorf("%w %s: %s", ErrParam, key, fmt.Sprintf(format, args...))
}

// SplitKernelCmdline splits a kernel command line (the text of /proc/cmdline)
// into parameters the way the kernel's next_arg does, so that init sees the
// same boundaries the kernel saw: blanks separate parameters except inside
// double quotes, a quote around the whole parameter or around its value is
// removed, and the kernel has no escape character. Parsing stops at "--"
// (also a quoted one, as in the kernel's parse_args) because what follows is
// handed to init as argv, which Parse reads anyway.
func SplitKernelCmdline(s string) []string {
	var params []string
	for {
		s = strings.TrimLeft(s, " \t\n\r\v\f")
		if s == "" {
			return params
		}
		quoted := false
		if s[0] == '"' {
			s = s[1:]
			quoted = true
		}
		inQuote := quoted
		i := 0
		for ; i < len(s); i++ {
			c := s[i]
			if isBlank(c) && !inQuote {
				break
			}
			if c == '"' {
				inQuote = !inQuote
			}
		}
		param := unquoteParam(s[:i], quoted)
		s = s[i:]
		if param == "--" { // quoted or not: next_arg has removed the quotes by then
			return params
		}
		params = append(params, param)
	}
}

func isBlank(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

// unquoteParam removes the quotes the kernel removes: the one closing a
// quoted parameter and the pair around a value (`k="a b"`).
func unquoteParam(p string, quoted bool) string {
	trailing := strings.HasSuffix(p, `"`)
	if k, v, ok := strings.Cut(p, "="); ok && strings.HasPrefix(v, `"`) {
		v = v[1:]
		if trailing && v != "" {
			v = v[:len(v)-1]
		}
		return k + "=" + v
	}
	if quoted && trailing {
		return p[:len(p)-1]
	}
	return p
}

// ParseCmdline parses the volt.* parameters of a kernel command line. See
// ParseParams for the rules.
func ParseCmdline(cmdline string) (Config, []string, error) {
	return ParseParams(SplitKernelCmdline(cmdline))
}

// ParseParams reads the volt.* entries of params and the kernel's ip=, and
// ignores the rest, which belong to the kernel or to other programs. A later
// parameter replaces an earlier one of the same name, as kernel parameters
// do; volt.env accumulates. Unknown volt.* keys produce a warning rather
// than an error so that an older init still boots a VM configured for a
// newer one. Malformed values are errors wrapping ErrParam.
//
// ip= (see ParseKernelIP) configures the network only where no volt.ip or
// volt.gw is given, and names the host only where no volt.hostname is:
// explicit volt.* parameters win. Callers leave ip= out of params when the
// kernel has acted on it itself (CONFIG_IP_PNP; see Init).
func ParseParams(params []string) (cfg Config, warnings []string, err error) {
	var (
		kip   KernelIP
		hasIP bool
	)
	for _, p := range params {
		if v, ok := strings.CutPrefix(p, KernelIPParam+"="); ok {
			k, w, err := ParseKernelIP(v)
			if err != nil {
				return Config{}, warnings, err
			}
			kip, hasIP, warnings = k, true, append(warnings, w...)
			continue
		}
		if !strings.HasPrefix(p, ParamPrefix) {
			continue
		}
		key, val, hasVal := strings.Cut(p, "=")
		switch key {
		case "volt.run", "volt.ip", "volt.gw", "volt.hostname", "volt.env", "volt.agent", "volt.genid_interval":
		default:
			warnings = append(warnings, fmt.Sprintf("unknown parameter %q ignored", key))
			continue
		}
		if !hasVal {
			return Config{}, warnings, paramError(key, "needs a value (%s=...)", key)
		}
		if err := cfg.set(key, val); err != nil {
			return Config{}, warnings, err
		}
	}
	if hasIP {
		if !cfg.Addr.IsValid() && !cfg.Gateway.IsValid() {
			cfg.Addr, cfg.Gateway, cfg.Device = kip.Addr, kip.Gateway, kip.Device
		} else if kip.Addr.IsValid() {
			warnings = append(warnings, "ip= address ignored: volt.ip/volt.gw are given")
		}
		if cfg.Hostname == "" {
			cfg.Hostname, cfg.Domain = kip.Hostname, kip.Domain
		}
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, warnings, err
	}
	return cfg, warnings, nil
}

func (c *Config) set(key, val string) error {
	switch key {
	case "volt.run":
		if strings.ContainsRune(val, 0) {
			return paramError(key, "contains a NUL byte")
		}
		argv, err := SplitCommand(val)
		if err != nil {
			return paramError(key, "%v", err)
		}
		if len(argv) == 0 {
			return paramError(key, "empty command")
		}
		c.Run = argv
	case "volt.ip":
		pfx, err := netip.ParsePrefix(val)
		if err != nil {
			return paramError(key, "%q is not ADDR/PREFIX (e.g. 172.16.0.2/24)", val)
		}
		c.Addr = pfx
	case "volt.gw":
		addr, err := netip.ParseAddr(val)
		if err != nil {
			return paramError(key, "%q is not an IP address", val)
		}
		c.Gateway = addr
	case "volt.hostname":
		if err := checkHostname(val); err != nil {
			return paramError(key, "%v", err)
		}
		c.Hostname = val
	case "volt.env":
		k, _, ok := strings.Cut(val, "=")
		if !ok || k == "" {
			return paramError(key, "%q is not K=V", val)
		}
		if strings.ContainsRune(val, 0) {
			return paramError(key, "%q contains a NUL byte", val)
		}
		c.Env = append(c.Env, val)
	case "volt.agent":
		switch val {
		case "on":
			c.NoAgent = false
		case "off":
			c.NoAgent = true
		default:
			return paramError(key, "%q is neither on nor off", val)
		}
	case "volt.genid_interval":
		if val == "off" || val == "0" {
			c.GenIDInterval = -1
			return nil
		}
		d, err := time.ParseDuration(val)
		if err != nil || d < MinGenIDInterval || d > MaxGenIDInterval {
			return paramError(key, "%q is not off, 0 or a duration from %v to %v (e.g. 250ms)", val, MinGenIDInterval, MaxGenIDInterval)
		}
		c.GenIDInterval = d
	}
	return nil
}

// Validate checks the relations between parameters that each parse alone.
func (c *Config) Validate() error {
	if c.Gateway.IsValid() && !c.Addr.IsValid() {
		return paramError("volt.gw", "needs volt.ip: there is no address to route from")
	}
	if c.Addr.IsValid() {
		a := c.Addr.Addr()
		if a.Zone() != "" {
			return paramError("volt.ip", "zones are not supported")
		}
		if a.IsUnspecified() || a.IsMulticast() {
			return paramError("volt.ip", "%s cannot be an interface address", a)
		}
		if c.Gateway.IsValid() && c.Gateway.Is4() != a.Is4() {
			return paramError("volt.gw", "%s and volt.ip %s are of different families", c.Gateway, a)
		}
	}
	if c.Device != "" {
		if err := checkIfname(c.Device); err != nil {
			return paramError(KernelIPParam, "device: %v", err)
		}
	}
	if c.Domain != "" {
		if err := checkHostname(c.Domain); err != nil {
			return paramError(KernelIPParam, "domain name: %v", err)
		}
	}
	if c.GenIDInterval > MaxGenIDInterval || c.GenIDInterval > 0 && c.GenIDInterval < MinGenIDInterval {
		return paramError("volt.genid_interval", "%v is outside %v to %v", c.GenIDInterval, MinGenIDInterval, MaxGenIDInterval)
	}
	return nil
}

// checkHostname applies RFC 1123 label rules, which also keep the name
// within the kernel's 64-byte limit.
func checkHostname(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("%q must be 1 to 64 characters", name)
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("%q has an empty label or one that starts or ends with '-'", name)
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("%q may hold only letters, digits, '-' and '.'", name)
			}
		}
	}
	return nil
}

// SplitCommand splits a command the way a POSIX shell splits words, without
// expansions: blanks separate words; single quotes keep everything literal;
// double quotes keep blanks and let a backslash escape \ " $ and `; outside
// quotes a backslash escapes any character. Since the kernel command line
// reserves double quotes for grouping a parameter, single quotes are the
// ones a volt.run value will usually contain:
// volt.run="sh -c 'echo hi; sleep 1'".
func SplitCommand(s string) ([]string, error) {
	var (
		words []string
		cur   strings.Builder
		inArg bool
	)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\':
			if i+1 == len(s) {
				return nil, errors.New("trailing backslash")
			}
			i++
			cur.WriteByte(s[i])
			inArg = true
		case c == '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return nil, fmt.Errorf("unterminated single quote at offset %d", i)
			}
			cur.WriteString(s[i+1 : i+1+end])
			i += end + 1
			inArg = true
		case c == '"':
			j := i + 1
			for ; j < len(s) && s[j] != '"'; j++ {
				if s[j] == '\\' && j+1 < len(s) && strings.IndexByte("\\\"$`", s[j+1]) >= 0 {
					j++
				}
				cur.WriteByte(s[j])
			}
			if j == len(s) {
				return nil, fmt.Errorf("unterminated double quote at offset %d", i)
			}
			i = j
			inArg = true
		case isBlank(c):
			if inArg {
				words = append(words, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(c)
			inArg = true
		}
	}
	if inArg {
		words = append(words, cur.String())
	}
	return words, nil
}
