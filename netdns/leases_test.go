package netdns

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"testing"
)

// leaseFile is a lease file as dnsmasq 2.90 writes it: web-0's lease with
// udhcpc's client id, web-1's without one, a DHCPv6 section (skipped) and
// a line cut short by a rewrite in progress.
const leaseFile = `1767225600 02:00:00:00:00:02 10.100.0.2 web-0 01:02:00:00:00:00:02
1767225601 02:00:00:00:00:03 10.100.0.3 * *
duid 00:01:00:01:2c:5e:8a:11:02:00:00:00:00:09
1767225602 1234 fd00::5 * 00:01:00:01
1767225603 06-02:00:00:00:00:07 10.100.0.7 * *
1767225604 02:00:00:00:00:08 10.1
`

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func TestParseLeases(t *testing.T) {
	got := ParseLeases([]byte(leaseFile))
	want := []Lease{
		{MAC: mustMAC("02:00:00:00:00:02"), Address: netip.MustParseAddr("10.100.0.2"), Hostname: "web-0", ClientID: []byte{1, 2, 0, 0, 0, 0, 2}},
		{MAC: mustMAC("02:00:00:00:00:03"), Address: netip.MustParseAddr("10.100.0.3")},
	}
	if !slices.EqualFunc(got, want, sameLease) {
		t.Fatalf("ParseLeases = %+v\nwant %+v", got, want)
	}
}

func sameLease(a, b Lease) bool {
	return bytes.Equal(a.MAC, b.MAC) && a.Address == b.Address && a.Hostname == b.Hostname && bytes.Equal(a.ClientID, b.ClientID)
}

func TestStaleAndPruneLeases(t *testing.T) {
	tests := []struct {
		name      string
		dhcpHosts string
		stale     []string // MAC ADDRESS
		kept      string
	}{
		{
			name:      "every lease listed with its address is kept",
			dhcpHosts: "02:00:00:00:00:02,10.100.0.2,web-0\n02:00:00:00:00:03,10.100.0.3,web-1\n",
			kept:      leaseFile,
		},
		{
			name:      "an instance that moved away loses its lease; lines dnsmasq owns stay",
			dhcpHosts: "02:00:00:00:00:03,10.100.0.3,web-1\n",
			stale:     []string{"02:00:00:00:00:02 10.100.0.2"},
			kept: `1767225601 02:00:00:00:00:03 10.100.0.3 * *
duid 00:01:00:01:2c:5e:8a:11:02:00:00:00:00:09
1767225602 1234 fd00::5 * 00:01:00:01
1767225603 06-02:00:00:00:00:07 10.100.0.7 * *
1767225604 02:00:00:00:00:08 10.1
`,
		},
		{
			name:      "a MAC listed with another address loses the old one's lease",
			dhcpHosts: "02:00:00:00:00:02,10.100.0.9,web-0\n02:00:00:00:00:03,10.100.0.3\n",
			stale:     []string{"02:00:00:00:00:02 10.100.0.2"},
		},
		{
			name:      "no local instances: every lease goes",
			dhcpHosts: "",
			stale:     []string{"02:00:00:00:00:02 10.100.0.2", "02:00:00:00:00:03 10.100.0.3"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stale := describeLeases(StaleLeases([]byte(leaseFile), []byte(tt.dhcpHosts)))
			if !slices.Equal(stale, tt.stale) && (len(stale) > 0 || len(tt.stale) > 0) {
				t.Fatalf("StaleLeases = %q, want %q", stale, tt.stale)
			}
			kept, pruned := PruneLeases([]byte(leaseFile), []byte(tt.dhcpHosts))
			if got := describeLeases(pruned); !slices.Equal(got, stale) {
				t.Fatalf("PruneLeases removed %q, StaleLeases found %q", got, stale)
			}
			if tt.kept != "" && string(kept) != tt.kept {
				t.Fatalf("PruneLeases kept:\n%s\nwant:\n%s", kept, tt.kept)
			}
			// What is kept has no stale lease left.
			if again := StaleLeases(kept, []byte(tt.dhcpHosts)); len(again) != 0 {
				t.Fatalf("pruned file still has stale leases %q", describeLeases(again))
			}
		})
	}
}

func TestReleasePacket(t *testing.T) {
	l := Lease{MAC: mustMAC("02:00:00:00:00:02"), Address: netip.MustParseAddr("10.100.0.2"), ClientID: []byte{1, 2, 0, 0, 0, 0, 2}}
	b := releasePacket(l, netip.MustParseAddr("10.100.0.5"))
	if len(b) != 300 {
		t.Fatalf("length %d, want BOOTP's 300", len(b))
	}
	if b[0] != 1 || b[1] != 1 || b[2] != 6 || b[3] != 0 {
		t.Errorf("op/htype/hlen/hops = %v, want a BOOTREQUEST for a 6-byte Ethernet address", b[:4])
	}
	if got := netip.AddrFrom4([4]byte(b[12:16])); got != l.Address {
		t.Errorf("ciaddr = %s, want the leased %s", got, l.Address)
	}
	for off := 16; off < 28; off++ { // yiaddr, siaddr, giaddr: zero (no relay)
		if b[off] != 0 {
			t.Fatalf("byte %d = %d, want 0", off, b[off])
		}
	}
	if !bytes.Equal(b[28:34], l.MAC) || !allZero(b[34:236]) {
		t.Errorf("chaddr/sname/file = %x, want the MAC then zeros", b[28:236])
	}
	if binary.BigEndian.Uint32(b[236:240]) != 0x63825363 {
		t.Errorf("magic cookie %x", b[236:240])
	}
	want := []byte{53, 1, 7, 54, 4, 10, 100, 0, 5, 61, 7, 1, 2, 0, 0, 0, 0, 2, 255}
	if got := b[240 : 240+len(want)]; !bytes.Equal(got, want) || !allZero(b[240+len(want):]) {
		t.Errorf("options %v, want %v then padding", b[240:], want)
	}
	// Without a client id dnsmasq finds the lease by its MAC.
	b = releasePacket(Lease{MAC: l.MAC, Address: l.Address}, netip.MustParseAddr("10.100.0.1"))
	if want := []byte{53, 1, 7, 54, 4, 10, 100, 0, 1, 255}; !bytes.Equal(b[240:250], want) {
		t.Errorf("options without a client id %v, want %v", b[240:250], want)
	}
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
