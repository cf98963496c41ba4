package voltinit

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// ParamPrefix marks the kernel parameters volt-init reads.
const ParamPrefix = "volt."

// Config is what the volt.* parameters ask of init. The zero value means:
// no network beyond lo, keep the kernel's hostname, run the default shell.
type Config struct {
	Run      []string     // volt.run, split shell-like; nil means the default
	Addr     netip.Prefix // volt.ip, the address of eth0 with its prefix length
	Gateway  netip.Addr   // volt.gw, the default route's next hop
	Hostname string       // volt.hostname
	Env      []string     // volt.env, K=V entries in the order given
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

// ParseParams reads the volt.* entries of params and ignores the rest, which
// belong to the kernel or to other programs. A later volt.run, volt.ip,
// volt.gw or volt.hostname replaces an earlier one, as kernel parameters do;
// volt.env accumulates. Unknown volt.* keys produce a warning rather than an
// error so that an older init still boots a VM configured for a newer one.
// Malformed values are errors wrapping ErrParam.
func ParseParams(params []string) (cfg Config, warnings []string, err error) {
	for _, p := range params {
		if !strings.HasPrefix(p, ParamPrefix) {
			continue
		}
		key, val, hasVal := strings.Cut(p, "=")
		switch key {
		case "volt.run", "volt.ip", "volt.gw", "volt.hostname", "volt.env":
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
