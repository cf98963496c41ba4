package voltinit

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func requireLittleEndian(t *testing.T) {
	t.Helper()
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("expected bytes are written for a little-endian host")
	}
}

func TestNetlinkMessages(t *testing.T) {
	requireLittleEndian(t)
	// Creating requests carry NLM_F_REQUEST|NLM_F_ACK|NLM_F_CREATE|NLM_F_REPLACE = 0x0505.
	tests := []struct {
		name string
		got  []byte
		want []byte
	}{
		{
			name: "link up",
			got:  linkUpMessage(7, 2),
			want: []byte{
				32, 0, 0, 0, 16, 0, 5, 0, 7, 0, 0, 0, 0, 0, 0, 0, // len 32, RTM_NEWLINK, REQUEST|ACK, seq 7
				0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, // AF_UNSPEC, index 2, IFF_UP, change IFF_UP
			},
		},
		{
			name: "ipv4 address",
			got:  addrMessage(8, 2, netip.MustParsePrefix("172.16.0.2/24")),
			want: []byte{
				40, 0, 0, 0, 20, 0, 0x05, 0x05, 8, 0, 0, 0, 0, 0, 0, 0,
				2, 24, 0, 0, 2, 0, 0, 0, // AF_INET, /24, flags 0, universe scope, index 2
				8, 0, 2, 0, 172, 16, 0, 2, // IFA_LOCAL
				8, 0, 1, 0, 172, 16, 0, 2, // IFA_ADDRESS
			},
		},
		{
			name: "ipv6 address",
			got:  addrMessage(9, 3, netip.MustParsePrefix("fd00::2/64")),
			want: append([]byte{
				44, 0, 0, 0, 20, 0, 0x05, 0x05, 9, 0, 0, 0, 0, 0, 0, 0,
				10, 64, 0, 0, 3, 0, 0, 0,
				20, 0, 1, 0, // IFA_ADDRESS, 16 bytes
			}, netip.MustParseAddr("fd00::2").AsSlice()...),
		},
		{
			name: "ipv4 default route",
			got:  defaultRouteMessage(10, 2, netip.MustParseAddr("172.16.0.1")),
			want: []byte{
				44, 0, 0, 0, 24, 0, 0x05, 0x05, 10, 0, 0, 0, 0, 0, 0, 0,
				2, 0, 0, 0, 254, 3, 0, 1, // AF_INET, default, main table, RTPROT_BOOT, universe, unicast
				0, 0, 0, 0, // rtm_flags
				8, 0, 5, 0, 172, 16, 0, 1, // RTA_GATEWAY
				8, 0, 4, 0, 2, 0, 0, 0, // RTA_OIF
			},
		},
		{
			name: "v4-mapped address is sent as ipv4",
			got:  addrMessage(8, 2, netip.PrefixFrom(netip.MustParseAddr("::ffff:172.16.0.2"), 24)),
			want: addrMessage(8, 2, netip.MustParsePrefix("172.16.0.2/24")),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !bytes.Equal(tt.got, tt.want) {
				t.Fatalf("message\n got % x\nwant % x", tt.got, tt.want)
			}
			// The kernel's own framing rules, as package syscall decodes them, agree.
			msgs, err := syscall.ParseNetlinkMessage(tt.got)
			if err != nil || len(msgs) != 1 {
				t.Fatalf("ParseNetlinkMessage: %d messages, %v", len(msgs), err)
			}
			if int(msgs[0].Header.Len) != len(tt.got) {
				t.Fatalf("header length %d, message %d bytes", msgs[0].Header.Len, len(tt.got))
			}
			if msgs[0].Header.Type != unix.RTM_NEWLINK {
				if _, err := syscall.ParseNetlinkRouteAttr(&msgs[0]); err != nil {
					t.Fatalf("ParseNetlinkRouteAttr: %v", err)
				}
			}
		})
	}
}

func ackMessage(seq uint32, code int32) []byte {
	body := make([]byte, 4+nlmsgHdrLen)
	nlEndian.PutUint32(body, uint32(code))
	return nlMessage(unix.NLMSG_ERROR, 0, seq, body)
}

func TestParseAck(t *testing.T) {
	other := nlMessage(unix.RTM_NEWLINK, 0, 5, make([]byte, 16))
	tests := []struct {
		name  string
		reply []byte
		want  error
	}{
		{"ack", ackMessage(5, 0), nil},
		{"errno", ackMessage(5, -int32(unix.EEXIST)), unix.EEXIST},
		{"other seq", ackMessage(4, 0), errNoAck},
		{"after another message", append(other, ackMessage(5, -int32(unix.ENODEV))...), unix.ENODEV},
		{"empty", nil, errNoAck},
		{"short header", []byte{1, 2, 3}, errNoAck},
	}
	for _, tt := range tests {
		if got := parseAck(tt.reply, 5); got != tt.want {
			t.Errorf("%s: parseAck = %v, want %v", tt.name, got, tt.want)
		}
	}
	for _, bad := range [][]byte{
		{0xff, 0xff, 0, 0, 2, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0}, // longer than the reply
		{4, 0, 0, 0, 2, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0},       // shorter than a header
		nlMessage(unix.NLMSG_ERROR, 0, 5, []byte{1, 2}),        // truncated error
	} {
		if err := parseAck(bad, 5); err == nil || err == errNoAck {
			t.Errorf("parseAck(% x) = %v, want a framing error", bad, err)
		}
	}
}

func FuzzParseAck(f *testing.F) {
	f.Add(ackMessage(1, 0))
	f.Add(ackMessage(1, -int32(unix.EPERM)))
	f.Add(append(nlMessage(unix.RTM_NEWLINK, 0, 1, make([]byte, 16)), ackMessage(1, 0)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = parseAck(b, 1) // must not panic or loop
	})
}

// TestSetupInterfaceInNetns runs the real netlink path against a fresh
// network namespace, where lo is down and has no address.
func TestSetupInterfaceInNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	errc := make(chan error, 1)
	var addrs []string
	var routes string
	go func() {
		// The thread stays locked and dies with the goroutine, taking the
		// namespace with it.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		if err := setupInterface("lo", netip.MustParsePrefix("10.1.2.3/24"), netip.MustParseAddr("10.1.2.1")); err != nil {
			errc <- err
			return
		}
		ifi, err := net.InterfaceByName("lo")
		if err != nil {
			errc <- err
			return
		}
		if ifi.Flags&net.FlagUp == 0 {
			addrs = append(addrs, "lo is down")
		}
		as, _ := ifi.Addrs()
		for _, a := range as {
			addrs = append(addrs, a.String())
		}
		b, err := os.ReadFile("/proc/thread-self/net/route")
		routes = string(b)
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(addrs, " "), "10.1.2.3/24") || strings.Contains(strings.Join(addrs, " "), "down") {
		t.Errorf("lo addresses %v, want 10.1.2.3/24 and up", addrs)
	}
	// Default route: destination 00000000, gateway 10.1.2.1 as little-endian hex.
	if !strings.Contains(routes, "lo\t00000000\t0102010A") {
		t.Errorf("no default route via 10.1.2.1 in\n%s", routes)
	}
	if err := setupInterface("no-such-if0", netip.Prefix{}, netip.Addr{}); err == nil || !strings.Contains(err.Error(), "no-such-if0") {
		t.Errorf("missing interface: error %v, want one naming it", err)
	}
}
