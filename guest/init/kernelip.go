package voltinit

import (
	"fmt"
	"math/bits"
	"net/netip"
	"strings"
)

// KernelIPParam is the kernel's own network parameter, which volt-init
// applies when the kernel does not (our kernel is built without
// CONFIG_IP_PNP, which would cost boot time for DHCP/BOOTP code a microVM
// does not use; Firecracker and its tools pass the static form).
const KernelIPParam = "ip"

// KernelIP is the static configuration of an ip= parameter
// (Documentation/admin-guide/nfs/nfsroot.rst in the kernel):
//
//	ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>:<dns0-ip>:<dns1-ip>:<ntp0-ip>
//
// as Firecracker writes it: ip=172.16.0.2::172.16.0.1:255.255.255.0::eth0:off.
type KernelIP struct {
	Addr     netip.Prefix // client-ip with the netmask's length; invalid: none
	Gateway  netip.Addr   // gw-ip; invalid: no default route
	Hostname string       // hostname up to its first dot
	Domain   string       // what follows that dot, the NIS domain name
	Device   string       // "" leaves the choice to the caller (eth0)
}

// dynamicAutoconf are the autoconf values that ask the kernel for DHCP,
// BOOTP or RARP (ic_proto_name in net/ipv4/ipconfig.c).
var dynamicAutoconf = map[string]bool{"on": true, "any": true, "dhcp": true, "bootp": true, "rarp": true, "both": true}

// kernelIPFields names the fields of ip= in order, for messages.
var kernelIPFields = []string{"client-ip", "server-ip", "gw-ip", "netmask", "hostname", "device", "autoconf", "dns0-ip", "dns1-ip", "ntp0-ip"}

// ParseKernelIP reads the value of an ip= parameter the way the kernel's
// ip_auto_config_setup does, with stricter checks: addresses must be
// dotted IPv4 quads (0.0.0.0 counts as not given, as in the kernel), a
// netmask must be contiguous, and a missing one is the address's classful
// mask (the kernel's ic_defaults). "off", "none" and "" configure nothing.
// A configuration the kernel would complete with DHCP, BOOTP or RARP (no
// client address, or the whole value naming a protocol) is an error:
// volt-init has no DHCP client. Fields volt-init does not act on
// (server-ip, the name and NTP servers, fields past the tenth) are
// returned as warnings. Errors wrap ErrParam.
func ParseKernelIP(val string) (KernelIP, []string, error) {
	var k KernelIP
	if val == "" || val == "off" || val == "none" {
		return k, nil, nil
	}
	if dynamicAutoconf[val] {
		return k, nil, paramError(KernelIPParam, "%q asks for dynamic configuration, and volt-init has no DHCP/BOOTP/RARP client: give ip=<client-ip>::<gw-ip>:<netmask>::<device>:off", val)
	}
	fields := strings.Split(val, ":")
	var (
		warnings []string
		client   netip.Addr
		mask     netip.Addr
		ignored  []string
	)
	for i, f := range fields {
		if f == "" {
			continue
		}
		var err error
		switch i {
		case 0:
			client, err = parseQuad(f)
		case 2:
			k.Gateway, err = parseQuad(f)
		case 3:
			mask, err = parseQuad(f)
		case 4:
			if err = checkHostname(f); err == nil {
				k.Hostname, k.Domain, _ = strings.Cut(f, ".")
			}
		case 5:
			err = checkIfname(f)
			k.Device = f
		case 6:
			// Without a client address the kernel would configure
			// dynamically whatever this says (off: not at all); with
			// one, it assigns it statically, as here.
		case 1, 7, 8, 9:
			var a netip.Addr
			if a, err = parseQuad(f); err == nil && a.IsValid() {
				ignored = append(ignored, kernelIPFields[i])
			}
		default:
			ignored = append(ignored, fmt.Sprintf("field %d", i+1))
		}
		if err != nil {
			return KernelIP{}, nil, paramError(KernelIPParam, "%s %q: %v", kernelIPFields[min(i, len(kernelIPFields)-1)], f, err)
		}
	}
	if len(ignored) > 0 {
		warnings = append(warnings, fmt.Sprintf("ip=: %s ignored: volt-init sets only the address, gateway, host name and device", strings.Join(ignored, ", ")))
	}
	if !client.IsValid() {
		if len(fields) > 6 && (fields[6] == "off" || fields[6] == "none") {
			return KernelIP{Hostname: k.Hostname, Domain: k.Domain}, warnings, nil // the kernel too configures no address
		}
		return KernelIP{}, nil, paramError(KernelIPParam, "%q has no client address, which asks for dynamic configuration; volt-init has no DHCP/BOOTP/RARP client", val)
	}
	ones, err := prefixLen(client, mask)
	if err != nil {
		return KernelIP{}, nil, paramError(KernelIPParam, "%v", err)
	}
	k.Addr = netip.PrefixFrom(client, ones)
	if k.Gateway.IsValid() && !k.Addr.Masked().Contains(k.Gateway) {
		// The kernel adds the route regardless and fails; say why here.
		return KernelIP{}, nil, paramError(KernelIPParam, "gateway %s is outside %s", k.Gateway, k.Addr.Masked())
	}
	return k, warnings, nil
}

// parseQuad parses a dotted IPv4 address; 0.0.0.0 is "not given".
func parseQuad(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Errorf("not a dotted IPv4 address")
	}
	if a.IsUnspecified() {
		return netip.Addr{}, nil
	}
	return a, nil
}

// prefixLen turns a netmask into a prefix length; an absent mask is the
// client address's class A, B or C mask, as the kernel guesses it.
func prefixLen(client, mask netip.Addr) (int, error) {
	if client.IsMulticast() || client.IsLoopback() {
		return 0, fmt.Errorf("client-ip %s cannot be an interface address", client)
	}
	if !mask.IsValid() {
		switch b := client.As4()[0]; {
		case b < 128:
			return 8, nil
		case b < 192:
			return 16, nil
		case b < 224:
			return 24, nil
		}
		return 0, fmt.Errorf("no netmask, and %s has no class to guess one from", client)
	}
	m := mask.As4()
	v := uint32(m[0])<<24 | uint32(m[1])<<16 | uint32(m[2])<<8 | uint32(m[3])
	ones := bits.LeadingZeros32(^v)
	if v<<ones != 0 || ones == 0 {
		return 0, fmt.Errorf("netmask %s is not contiguous", mask)
	}
	return ones, nil
}

// checkIfname applies the kernel's dev_valid_name: 1 to 15 bytes, not "."
// or "..", no '/', ':' or white space.
func checkIfname(name string) error {
	if name == "" || len(name) > 15 {
		return fmt.Errorf("%q must be 1 to 15 bytes", name)
	}
	if name == "." || name == ".." {
		return fmt.Errorf("%q is not an interface name", name)
	}
	for _, c := range []byte(name) {
		if c == '/' || c == ':' || c <= ' ' || c == 0x7f {
			return fmt.Errorf("%q may not hold '/', ':', blanks or control characters", name)
		}
	}
	return nil
}
