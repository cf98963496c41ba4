package voltinit

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Raw rtnetlink: init needs three requests (link up, add address, add default
// route), which is less code than the dependency a netlink library would add
// to a binary that every boot loads. The builders are pure so that tests can
// check the bytes; rtnl sends them.

const (
	nlmsgHdrLen  = unix.SizeofNlMsghdr  // 16
	ifinfomsgLen = unix.SizeofIfInfomsg // 16
	ifaddrmsgLen = unix.SizeofIfAddrmsg // 8
	rtmsgLen     = unix.SizeofRtMsg     // 12: eight bytes and rtm_flags
	rtattrHdrLen = unix.SizeofRtAttr    // 4
	nlAlign      = 4

	// Requests replace what exists so that running set-up twice (a
	// restored snapshot, a retry) is not an error.
	nlCreateFlags = unix.NLM_F_REQUEST | unix.NLM_F_ACK | unix.NLM_F_CREATE | unix.NLM_F_REPLACE
)

var nlEndian = binary.NativeEndian

func nlAlignLen(n int) int { return (n + nlAlign - 1) &^ (nlAlign - 1) }

// nlMessage frames body (a fixed header followed by attributes) with an
// nlmsghdr.
func nlMessage(typ, flags uint16, seq uint32, body []byte) []byte {
	b := make([]byte, nlmsgHdrLen, nlmsgHdrLen+len(body))
	nlEndian.PutUint32(b[0:], uint32(nlmsgHdrLen+len(body)))
	nlEndian.PutUint16(b[4:], typ)
	nlEndian.PutUint16(b[6:], flags)
	nlEndian.PutUint32(b[8:], seq)
	// nlmsg_pid stays 0: the kernel addresses us by socket.
	return append(b, body...)
}

// appendAttr appends one rtattr with its data padded to four bytes.
func appendAttr(b []byte, typ uint16, data []byte) []byte {
	var h [rtattrHdrLen]byte
	nlEndian.PutUint16(h[0:], uint16(rtattrHdrLen+len(data)))
	nlEndian.PutUint16(h[2:], typ)
	b = append(b, h[:]...)
	b = append(b, data...)
	for len(b)%nlAlign != 0 {
		b = append(b, 0)
	}
	return b
}

func family(a netip.Addr) uint8 {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// linkUpMessage builds RTM_NEWLINK setting IFF_UP on the interface.
func linkUpMessage(seq uint32, index uint32) []byte {
	body := make([]byte, ifinfomsgLen)
	body[0] = unix.AF_UNSPEC
	nlEndian.PutUint32(body[4:], index)
	nlEndian.PutUint32(body[8:], unix.IFF_UP)  // ifi_flags
	nlEndian.PutUint32(body[12:], unix.IFF_UP) // ifi_change: touch only IFF_UP
	return nlMessage(unix.RTM_NEWLINK, unix.NLM_F_REQUEST|unix.NLM_F_ACK, seq, body)
}

// addrMessage builds RTM_NEWADDR for addr on the interface. IPv4 needs
// IFA_LOCAL (the address itself) as well as IFA_ADDRESS, as ip(8) sends.
func addrMessage(seq uint32, index uint32, addr netip.Prefix) []byte {
	a := addr.Addr().Unmap()
	body := make([]byte, ifaddrmsgLen)
	body[0] = family(a)
	body[1] = uint8(addr.Bits())
	body[3] = unix.RT_SCOPE_UNIVERSE
	nlEndian.PutUint32(body[4:], index)
	raw := a.AsSlice()
	if a.Is4() {
		body = appendAttr(body, unix.IFA_LOCAL, raw)
	}
	body = appendAttr(body, unix.IFA_ADDRESS, raw)
	return nlMessage(unix.RTM_NEWADDR, nlCreateFlags, seq, body)
}

// defaultRouteMessage builds RTM_NEWROUTE for a default route via gw out of
// the interface.
func defaultRouteMessage(seq uint32, index uint32, gw netip.Addr) []byte {
	gw = gw.Unmap()
	body := make([]byte, rtmsgLen)
	body[0] = family(gw)
	// rtm_dst_len, rtm_src_len, rtm_tos stay 0: the default route.
	body[4] = unix.RT_TABLE_MAIN
	body[5] = unix.RTPROT_BOOT
	body[6] = unix.RT_SCOPE_UNIVERSE
	body[7] = unix.RTN_UNICAST
	body = appendAttr(body, unix.RTA_GATEWAY, gw.AsSlice())
	var oif [4]byte
	nlEndian.PutUint32(oif[:], index)
	body = appendAttr(body, unix.RTA_OIF, oif[:])
	return nlMessage(unix.RTM_NEWROUTE, nlCreateFlags, seq, body)
}

// errNoAck means a reply held no acknowledgement for our request.
var errNoAck = errors.New("netlink: no acknowledgement in reply")

// parseAck looks through a netlink reply for the NLMSG_ERROR answering seq
// and returns the error it carries (nil for an ack). The reply is kernel
// input but is still checked, since a short or corrupt buffer must not
// crash PID 1.
func parseAck(b []byte, seq uint32) error {
	for len(b) >= nlmsgHdrLen {
		n := int(nlEndian.Uint32(b[0:]))
		typ := nlEndian.Uint16(b[4:])
		mseq := nlEndian.Uint32(b[8:])
		if n < nlmsgHdrLen || n > len(b) {
			return fmt.Errorf("netlink: message length %d outside reply of %d bytes", n, len(b))
		}
		if typ == unix.NLMSG_ERROR && mseq == seq {
			if n < nlmsgHdrLen+4 {
				return fmt.Errorf("netlink: error message of %d bytes is truncated", n)
			}
			code := int32(nlEndian.Uint32(b[nlmsgHdrLen:]))
			if code == 0 {
				return nil
			}
			return unix.Errno(-code)
		}
		b = b[min(nlAlignLen(n), len(b)):]
	}
	return errNoAck
}

// rtnl is a NETLINK_ROUTE socket that sends one request at a time and waits
// for its acknowledgement.
type rtnl struct {
	fd  int
	seq uint32
}

func openRtnl() (*rtnl, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink bind: %w", err)
	}
	return &rtnl{fd: fd}, nil
}

func (r *rtnl) Close() error { return unix.Close(r.fd) }

func (r *rtnl) nextSeq() uint32 { r.seq++; return r.seq }

// do sends msg, whose sequence number must be seq, and waits for its ack.
func (r *rtnl) do(seq uint32, msg []byte) error {
	if err := unix.Sendto(r.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	buf := make([]byte, 8192)
	for {
		n, _, err := unix.Recvfrom(r.fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		if err := parseAck(buf[:n], seq); err != errNoAck {
			return err
		}
	}
}

// index returns the interface index of name. SIOCGIFINDEX works on any
// socket, so the netlink one serves and the net package stays out of init.
func (r *rtnl) index(name string) (uint32, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, fmt.Errorf("interface %s: %w", name, err)
	}
	if err := unix.IoctlIfreq(r.fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, fmt.Errorf("interface %s: %w", name, err)
	}
	return ifr.Uint32(), nil
}

// setupInterface brings name up and, when given, adds addr and a default
// route via gw.
func setupInterface(name string, addr netip.Prefix, gw netip.Addr) error {
	r, err := openRtnl()
	if err != nil {
		return err
	}
	defer r.Close()
	idx, err := r.index(name)
	if err != nil {
		return err
	}
	seq := r.nextSeq()
	if err := r.do(seq, linkUpMessage(seq, idx)); err != nil {
		return fmt.Errorf("%s up: %w", name, err)
	}
	if addr.IsValid() {
		seq = r.nextSeq()
		if err := r.do(seq, addrMessage(seq, idx, addr)); err != nil {
			return fmt.Errorf("%s address %s: %w", name, addr, err)
		}
	}
	if gw.IsValid() {
		seq = r.nextSeq()
		if err := r.do(seq, defaultRouteMessage(seq, idx, gw)); err != nil {
			return fmt.Errorf("%s default route via %s: %w", name, gw, err)
		}
	}
	return nil
}
