package voltinit

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseKernelIP(t *testing.T) {
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	tests := []struct {
		name     string
		in       string
		want     KernelIP
		warnings int
		wantErr  string
	}{
		{name: "Firecracker's form", in: "172.16.0.2::172.16.0.1:255.255.255.0::eth0:off",
			want: KernelIP{Addr: pfx("172.16.0.2/24"), Gateway: addr("172.16.0.1"), Device: "eth0"}},
		{name: "every static field", in: "10.1.2.3:10.1.0.9:10.1.0.1:255.255.0.0:vm7.example.org:eth1:none:10.1.0.53:10.1.0.54:10.1.0.123",
			want:     KernelIP{Addr: pfx("10.1.2.3/16"), Gateway: addr("10.1.0.1"), Hostname: "vm7", Domain: "example.org", Device: "eth1"},
			warnings: 1},
		{name: "address alone: class A mask", in: "10.0.0.2", want: KernelIP{Addr: pfx("10.0.0.2/8")}},
		{name: "class B mask", in: "172.16.5.4::172.16.0.1", want: KernelIP{Addr: pfx("172.16.5.4/16"), Gateway: addr("172.16.0.1")}},
		{name: "class C mask", in: "192.168.7.2:::", want: KernelIP{Addr: pfx("192.168.7.2/24")}},
		{name: "0.0.0.0 is not given", in: "10.0.0.2:0.0.0.0:0.0.0.0:0.0.0.0", want: KernelIP{Addr: pfx("10.0.0.2/8")}},
		{name: "a dynamic autoconf with an address is static", in: "10.0.0.2::::::dhcp", want: KernelIP{Addr: pfx("10.0.0.2/8")}},
		{name: "/32", in: "10.0.0.2:::255.255.255.255", want: KernelIP{Addr: pfx("10.0.0.2/32")}},
		{name: "off", in: "off"},
		{name: "none", in: "none"},
		{name: "empty", in: ""},
		{name: "no address, autoconf off: host name only", in: "::::vm1::off", want: KernelIP{Hostname: "vm1"}},
		{name: "fields past the tenth", in: "10.0.0.2::::::::::x:y", want: KernelIP{Addr: pfx("10.0.0.2/8")}, warnings: 1},

		{name: "dhcp", in: "dhcp", wantErr: "no DHCP/BOOTP/RARP client"},
		{name: "on", in: "on", wantErr: "no DHCP/BOOTP/RARP client"},
		{name: "no client address", in: "::10.0.0.1:255.255.255.0::eth0:", wantErr: "no client address"},
		{name: "no client address, dhcp", in: ":::::eth0:dhcp", wantErr: "no client address"},
		{name: "IPv6", in: "fd00::2", wantErr: "not a dotted IPv4 address"},
		{name: "garbage address", in: "10.0.0", wantErr: "client-ip \"10.0.0\": not a dotted IPv4 address"},
		{name: "garbage gateway", in: "10.0.0.2::gw", wantErr: "gw-ip"},
		{name: "gateway elsewhere", in: "10.0.0.2::10.1.0.1:255.255.255.0", wantErr: "gateway 10.1.0.1 is outside 10.0.0.0/24"},
		{name: "holey netmask", in: "10.0.0.2:::255.0.255.0", wantErr: "not contiguous"},
		{name: "netmask not a mask", in: "10.0.0.2:::0.255.255.255", wantErr: "not contiguous"},
		{name: "class D without mask", in: "224.0.0.1", wantErr: "cannot be an interface address"},
		{name: "class E without mask", in: "240.0.0.1", wantErr: "no class to guess"},
		{name: "loopback", in: "127.0.0.2", wantErr: "cannot be an interface address"},
		{name: "bad host name", in: "10.0.0.2::::a_b", wantErr: "hostname"},
		{name: "device too long", in: "10.0.0.2:::::abcdefghijklmnop", wantErr: "1 to 15 bytes"},
		{name: "device slash", in: "10.0.0.2:::::a/b", wantErr: "may not hold"},
		{name: "device dot", in: "10.0.0.2:::::..", wantErr: "not an interface name"},
		{name: "bad name server", in: "10.0.0.2:::::::dns", wantErr: "dns0-ip"},
		{name: "bad server", in: "10.0.0.2:nfs", wantErr: "server-ip"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, warnings, err := ParseKernelIP(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrParam) {
					t.Fatalf("ParseKernelIP(%q) = %+v, %v; want an ErrParam containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want || len(warnings) != tt.warnings {
				t.Errorf("ParseKernelIP(%q) = %+v, warnings %q; want %+v and %d warnings", tt.in, got, warnings, tt.want, tt.warnings)
			}
		})
	}
}

func TestParseCmdlineKernelIPAndNewParams(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Config
		wantErr string
	}{
		{name: "ip= configures the network", in: "ip=10.0.0.2::10.0.0.1:255.255.255.0:vm.lan:eth0:off",
			want: Config{Addr: netip.MustParsePrefix("10.0.0.2/24"), Gateway: netip.MustParseAddr("10.0.0.1"), Hostname: "vm", Domain: "lan", Device: "eth0"}},
		{name: "volt.ip wins over ip=", in: "ip=10.0.0.2:::::eth1 volt.ip=10.9.0.2/16",
			want: Config{Addr: netip.MustParsePrefix("10.9.0.2/16")}},
		{name: "volt.hostname wins over ip='s", in: "ip=10.0.0.2::::a.b volt.hostname=c",
			want: Config{Addr: netip.MustParsePrefix("10.0.0.2/8"), Hostname: "c"}},
		{name: "the last ip= wins", in: "ip=10.0.0.2 ip=off", want: Config{}},
		{name: "ip=dhcp is an error", in: "ip=dhcp", wantErr: "no DHCP"},
		{name: "agent off", in: "volt.agent=off", want: Config{NoAgent: true}},
		{name: "agent on again", in: "volt.agent=off volt.agent=on", want: Config{}},
		{name: "agent maybe", in: "volt.agent=maybe", wantErr: `volt.agent: "maybe" is neither on nor off`},
		{name: "genid interval", in: "volt.genid_interval=250ms", want: Config{GenIDInterval: 250 * 1e6}},
		{name: "genid off", in: "volt.genid_interval=off", want: Config{GenIDInterval: -1}},
		{name: "genid 0", in: "volt.genid_interval=0", want: Config{GenIDInterval: -1}},
		{name: "genid too fast", in: "volt.genid_interval=1ms", wantErr: "volt.genid_interval"},
		{name: "genid too slow", in: "volt.genid_interval=2h", wantErr: "volt.genid_interval"},
		{name: "genid garbage", in: "volt.genid_interval=soon", wantErr: "volt.genid_interval"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _, err := ParseCmdline(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrParam) {
					t.Fatalf("error = %v, want an ErrParam containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Addr != tt.want.Addr || got.Gateway != tt.want.Gateway || got.Hostname != tt.want.Hostname ||
				got.Domain != tt.want.Domain || got.Device != tt.want.Device || got.NoAgent != tt.want.NoAgent ||
				got.GenIDInterval != tt.want.GenIDInterval {
				t.Errorf("config = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func FuzzParseKernelIP(f *testing.F) {
	for _, s := range []string{
		"172.16.0.2::172.16.0.1:255.255.255.0::eth0:off",
		"10.1.2.3:10.1.0.9:10.1.0.1:255.255.0.0:vm7.example.org:eth1:none:10.1.0.53:10.1.0.54:10.1.0.123",
		"dhcp", "off", "", "::::vm1::off", "10.0.0.2:::255.0.255.0", "224.0.0.1", "10.0.0.2::::::::::x:y",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, _, err := ParseKernelIP(s)
		if err != nil {
			if !errors.Is(err, ErrParam) {
				t.Fatalf("error %v does not wrap ErrParam", err)
			}
			return
		}
		if k.Addr.IsValid() {
			a := k.Addr.Addr()
			if !a.Is4() || a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || k.Addr.Bits() < 1 {
				t.Fatalf("accepted address %v", k.Addr)
			}
		}
		if k.Gateway.IsValid() && (!k.Addr.IsValid() || !k.Addr.Masked().Contains(k.Gateway)) {
			t.Fatalf("accepted gateway %v for %v", k.Gateway, k.Addr)
		}
		if k.Device != "" && checkIfname(k.Device) != nil {
			t.Fatalf("accepted device %q", k.Device)
		}
		if k.Hostname != "" && checkHostname(k.Hostname) != nil || strings.Contains(k.Hostname, ".") {
			t.Fatalf("accepted host name %q", k.Hostname)
		}
		// What volt-init accepts, ParseParams builds into a valid Config.
		cfg, _, err := ParseParams([]string{KernelIPParam + "=" + s})
		if err != nil {
			t.Fatalf("ParseKernelIP accepted %q, ParseParams refused it: %v", s, err)
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("config from %q fails Validate: %v", s, err)
		}
	})
}
