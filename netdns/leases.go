package netdns

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"net"
	"net/netip"
	"strings"
)

// Leases of instances this node no longer serves are forgotten (see
// "Leases of instances that left" in the package documentation): the pure
// part is here, the Manager reads the lease file and sends the releases.
// dnsmasq has no other way to drop a lease while it runs: SIGHUP rereads
// dhcp-hosts but keeps every lease.

// Lease is one DHCPv4 lease in dnsmasq's lease file.
type Lease struct {
	MAC     net.HardwareAddr
	Address netip.Addr
	// Hostname is the name the client gave or was given; "" for none.
	Hostname string
	// ClientID is the client identifier (DHCP option 61) the lease is
	// keyed by, nil when the client sent none.
	ClientID []byte
}

// ParseLeases reads dnsmasq's lease file: one DHCPv4 lease per line,
// "EXPIRY MAC ADDRESS HOSTNAME CLIENT-ID" ('*' for an empty field). Lines
// it cannot read are skipped: DHCPv6 ones ("duid …" and IPv6 leases),
// leases of non-Ethernet hardware, a line cut short because dnsmasq was
// rewriting the file.
func ParseLeases(data []byte) []Lease {
	var out []Lease
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if l, ok := parseLease(sc.Text()); ok {
			out = append(out, l)
		}
	}
	return out
}

func parseLease(line string) (Lease, bool) {
	f := strings.Fields(line)
	if len(f) < 4 {
		return Lease{}, false
	}
	mac, err := net.ParseMAC(f[1])
	if err != nil || len(mac) != 6 {
		return Lease{}, false
	}
	addr, err := netip.ParseAddr(f[2])
	if err != nil || !addr.Is4() {
		return Lease{}, false
	}
	l := Lease{MAC: mac, Address: addr}
	if f[3] != "*" {
		l.Hostname = f[3]
	}
	if len(f) > 4 && f[4] != "*" {
		// A client id that does not read as hex bytes is left out: the
		// lease is still found by its MAC.
		if id, err := hex.DecodeString(strings.ReplaceAll(f[4], ":", "")); err == nil && len(id) > 0 && len(id) <= 255 {
			l.ClientID = id
		}
	}
	return l, true
}

// staticLeases reads a rendered dhcp-hosts file: MAC → address.
func staticLeases(dhcpHosts []byte) map[string]netip.Addr {
	out := map[string]netip.Addr{}
	for line := range strings.SplitSeq(string(dhcpHosts), "\n") {
		f := strings.Split(line, ",")
		if len(f) < 2 {
			continue
		}
		mac, err := net.ParseMAC(f[0])
		if err != nil {
			continue
		}
		if a, err := netip.ParseAddr(f[1]); err == nil {
			out[mac.String()] = a
		}
	}
	return out
}

// StaleLeases returns the leases of leaseFile that dhcpHosts (the
// contents of [DHCPHostsFile], as [Render] writes it) does not list: a MAC
// no local instance has, or a MAC with another address than its
// instance's. They belong to instances this node no longer runs.
func StaleLeases(leaseFile, dhcpHosts []byte) []Lease {
	want := staticLeases(dhcpHosts)
	var out []Lease
	for _, l := range ParseLeases(leaseFile) {
		if a, ok := want[l.MAC.String()]; !ok || a != l.Address {
			out = append(out, l)
		}
	}
	return out
}

// PruneLeases returns leaseFile without the lines of its stale leases (see
// [StaleLeases]), and those leases. Every other line is kept as it is,
// lines it cannot read included (they are dnsmasq's business).
func PruneLeases(leaseFile, dhcpHosts []byte) (kept []byte, stale []Lease) {
	want := staticLeases(dhcpHosts)
	var b bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(leaseFile))
	for sc.Scan() {
		line := sc.Text()
		if l, ok := parseLease(line); ok {
			if a, listed := want[l.MAC.String()]; !listed || a != l.Address {
				stale = append(stale, l)
				continue
			}
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.Bytes(), stale
}

// DHCP message fields and options a release needs (RFC 2131, RFC 2132).
const (
	bootRequest     = 1
	htypeEthernet   = 1
	dhcpMinSize     = 300 // BOOTP's minimum message, which servers may expect
	optMessageType  = 53
	optServerID     = 54
	optClientID     = 61
	optEnd          = 255
	msgDHCPRelease  = 7
	dhcpServerPort  = 67
	dhcpMagicOffset = 236
)

// releasePacket is the DHCPRELEASE the client of l would send to the
// server with identifier server. dnsmasq deletes the lease when the server
// identifier is the address it offered as its own (its first address in
// the range on the bridge), the client matches (client id, else MAC) and
// ciaddr is the leased address.
func releasePacket(l Lease, server netip.Addr) []byte {
	b := make([]byte, dhcpMagicOffset, dhcpMinSize)
	b[0], b[1], b[2] = bootRequest, htypeEthernet, 6
	copy(b[4:8], l.MAC[2:6]) // xid: any value; dnsmasq sends no reply to a release
	s := l.Address.As4()
	copy(b[12:16], s[:]) // ciaddr
	copy(b[28:34], l.MAC)
	b = append(b, 99, 130, 83, 99) // the magic cookie
	id := server.As4()
	b = append(b, optMessageType, 1, msgDHCPRelease, optServerID, 4, id[0], id[1], id[2], id[3])
	if n := len(l.ClientID); n > 0 && n <= 255 {
		b = append(b, optClientID, byte(n))
		b = append(b, l.ClientID...)
	}
	b = append(b, optEnd)
	for len(b) < dhcpMinSize {
		b = append(b, 0)
	}
	return b
}
