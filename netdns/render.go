package netdns

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// LeaseTime is the DHCP lease dnsmasq hands out. Addresses never change
// while an instance exists, so a long lease costs nothing; it lets guests
// keep their address through an agent (and so dnsmasq) outage this long.
const LeaseTime = time.Hour

// Names of the files in Options.Dir.
const (
	ConfigFile    = "dnsmasq.conf"
	DHCPHostsFile = "dhcp-hosts"
	HostsFile     = "hosts"
	LeasesFile    = "leases"
	PIDFile       = "dnsmasq.pid"
)

// Network is what dnsmasq's main configuration is rendered from. dnsmasq
// reads it only when it starts, so a change restarts it.
type Network struct {
	// Bridge is the interface dnsmasq serves: the node's bridge (hostnet's
	// Config.Bridge, "blixard0").
	Bridge string
	// Domain is the cluster's DNS domain, [Domain] of the cluster name.
	Domain string
	// CIDR is the cluster network (an IPv4 prefix).
	CIDR netip.Prefix
	// Gateway is CIDR's first host address, which the bridge carries on
	// every node: dnsmasq listens there and offers it as router and DNS
	// server, so a guest keeps both when it moves to another node.
	Gateway netip.Addr
	// Upstreams receive every query for a name outside Domain and the
	// cluster's reverse zone, in dnsmasq's order (it prefers the fastest).
	// Empty: such names fail (REFUSED).
	Upstreams []netip.AddrPort
	// MTU, when not 0, is offered as DHCP option 26: the overlay MTU
	// (hostnet's bridge MTU), which guests must use.
	MTU int
}

// Instance is one instance's network identity, as committed.
type Instance struct {
	// Name is the instance name ("web-0").
	Name string
	// VM is the declared VM name ("web"); empty means Name (a VM with one
	// instance).
	VM string
	// Address is the instance's committed address in Network.CIDR.
	Address netip.Addr
	// MAC is the guest NIC's address.
	MAC net.HardwareAddr
	// Hostname is the instance's committed hostname, a DNS label.
	Hostname string
}

// Desired is everything dnsmasq serves on this node.
type Desired struct {
	Network Network
	// Local are the instances assigned to this node, started or not: a
	// guest asks for its lease while it boots, before it is reported
	// running. Only they get DHCP leases here.
	Local []Instance
	// Running are the running instances of the whole cluster, this node's
	// included: DNS answers for them.
	Running []Instance
}

// Files are the rendered contents of dnsmasq's files.
type Files struct {
	Config    []byte // ConfigFile
	DHCPHosts []byte // DHCPHostsFile
	Hosts     []byte // HostsFile
	// Skipped says, one sentence each, which entries were left out and
	// why (a hostname that is not a DNS label, a duplicate address…).
	// Everything else is still served.
	Skipped []string
}

// Domain is the DNS domain of the cluster named cluster: "CLUSTER.internal".
// A cluster name may end with '-', which a DNS label may not: such
// trailing dashes are dropped. A cluster without a name (its flake has no
// `cluster` attribute) gets "blixard.internal".
func Domain(cluster string) string {
	c := strings.TrimRight(cluster, "-")
	if c == "" {
		c = "blixard"
	}
	return c + ".internal"
}

// Render is the pure part: the files that make dnsmasq serve d, with its
// state (leases, pid file) in dir. The output depends only on the
// arguments, not on the order of d's lists. It returns an error, and
// nothing, when d.Network is unusable; bad instances are only skipped
// (Files.Skipped), so one broken entry never stops service for the rest.
func Render(dir string, d Desired) (Files, error) {
	n := d.Network
	if err := checkNetwork(dir, n); err != nil {
		return Files{}, err
	}
	var f Files
	skip := func(format string, args ...any) { f.Skipped = append(f.Skipped, fmt.Sprintf(format, args...)) }
	f.Config = renderConfig(dir, n, skip)
	f.DHCPHosts = renderDHCPHosts(n, d.Local, skip)
	f.Hosts = renderHosts(n, d.Running, skip)
	return f, nil
}

func checkNetwork(dir string, n Network) error {
	var errs []error
	if !filepath.IsAbs(dir) || !safeConfigValue(dir) {
		errs = append(errs, fmt.Errorf("state directory %q must be an absolute path without spaces, quotes, '#', ',' or control characters (dnsmasq's configuration syntax)", dir))
	}
	if !validIfName(n.Bridge) {
		errs = append(errs, fmt.Errorf("bridge %q is not an interface name (1 to 15 characters, no spaces, '/' or ':'); set --bridge", n.Bridge))
	}
	if !validDomain(n.Domain) {
		errs = append(errs, fmt.Errorf("domain %q is not a DNS name of lowercase labels (netdns.Domain of the cluster name makes one)", n.Domain))
	}
	switch {
	case !n.CIDR.IsValid() || !n.CIDR.Addr().Is4():
		errs = append(errs, fmt.Errorf("cluster network %s is not an IPv4 prefix", n.CIDR))
	case n.CIDR.Bits() > 30:
		errs = append(errs, fmt.Errorf("cluster network %s has no room for instances (at most /30)", n.CIDR))
	case n.Gateway != firstHost(n.CIDR):
		errs = append(errs, fmt.Errorf("gateway %s is not the first host address of the cluster network %s (%s)", n.Gateway, n.CIDR, firstHost(n.CIDR)))
	}
	for _, u := range n.Upstreams {
		if !u.IsValid() || u.Port() == 0 || u.Addr().IsUnspecified() || !safeConfigValue(u.Addr().String()) {
			errs = append(errs, fmt.Errorf("upstream resolver %s is not an address and port to forward to", u))
		}
	}
	if n.MTU != 0 && (n.MTU < 576 || n.MTU > 65535) {
		errs = append(errs, fmt.Errorf("mtu %d is outside 576..65535", n.MTU))
	}
	if len(errs) > 0 {
		return fmt.Errorf("dnsmasq configuration: %w", errors.Join(errs...))
	}
	return nil
}

// renderConfig writes the main configuration. Every value in it has been
// checked (checkNetwork), so nothing can inject another option.
func renderConfig(dir string, n Network, skip func(string, ...any)) []byte {
	var b bytes.Buffer
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	line("# Rendered by blixard (package netdns), which rewrites it: do not edit.")
	line("# DHCP and DNS for the instances on %s, cluster network %s, domain %s.", n.Bridge, n.CIDR, n.Domain)
	line("")
	line("# Serve the bridge only. interface= makes dnsmasq bind its DHCP socket to")
	line("# the bridge (SO_BINDTODEVICE), so another DHCP server on this host never")
	line("# takes our clients' packets; DNS listens on the bridge's addresses.")
	line("interface=%s", n.Bridge)
	line("except-interface=lo")
	line("listen-address=%s", n.Gateway)
	line("bind-interfaces")
	line("")
	line("# DNS: the cluster's names from the hosts file; the rest upstream.")
	line("no-hosts")
	line("addn-hosts=%s", filepath.Join(dir, HostsFile))
	line("local=/%s/", n.Domain)
	for _, z := range reverseZones(n.CIDR) {
		line("local=/%s/", z)
	}
	line("domain-needed")
	line("no-resolv")
	seen := map[netip.AddrPort]bool{}
	for _, u := range n.Upstreams {
		u = netip.AddrPortFrom(u.Addr().Unmap(), u.Port())
		switch {
		case u.Addr() == n.Gateway:
			skip("upstream resolver %s is this server (the gateway): forwarding to it would loop", u)
			continue
		case seen[u]:
			continue
		}
		seen[u] = true
		if u.Port() == 53 {
			line("server=%s", u.Addr())
		} else {
			line("server=%s#%d", u.Addr(), u.Port())
		}
	}
	line("")
	line("# DHCP: static leases for this node's instances only; other MACs are ignored.")
	line("dhcp-range=%s,static,%s,%d", n.CIDR.Masked().Addr(), netmask(n.CIDR), int(LeaseTime/time.Second))
	line("dhcp-hostsfile=%s", filepath.Join(dir, DHCPHostsFile))
	line("dhcp-ignore=tag:!known")
	line("# The only DHCP server its clients see (broadcasts stay on this node):")
	line("# acknowledge a renewal of a lease another node gave.")
	line("dhcp-authoritative")
	line("dhcp-option=option:router,%s", n.Gateway)
	line("dhcp-option=option:dns-server,%s", n.Gateway)
	line("# The domain as an option rather than domain=, which would also put every")
	line("# lease's hostname under it: leases outlive the instances they were for.")
	line("dhcp-option=option:domain-name,%s", n.Domain)
	line("dhcp-option=option:domain-search,%s", n.Domain)
	if n.MTU != 0 {
		line("dhcp-option=option:mtu,%d", n.MTU)
	}
	line("dhcp-leasefile=%s", filepath.Join(dir, LeasesFile))
	line("")
	line("pid-file=%s", filepath.Join(dir, PIDFile))
	line("log-facility=-")
	return b.Bytes()
}

// renderDHCPHosts writes one "MAC,address,hostname" line per local
// instance, by instance name. The first instance (by name) keeps a MAC or
// an address two claim.
func renderDHCPHosts(n Network, local []Instance, skip func(string, ...any)) []byte {
	var b bytes.Buffer
	macs := make(map[string]string, len(local))
	addrs := make(map[netip.Addr]string, len(local))
	for _, in := range sortedInstances(local) {
		mac := in.MAC.String()
		switch {
		case len(in.MAC) != 6 || in.MAC[0]&1 != 0:
			skip("local instance %q: MAC %q is not a unicast Ethernet address: no DHCP lease", in.Name, mac)
			continue
		case !isInstanceAddr(n.CIDR, in.Address):
			skip("local instance %q: address %s is not an instance address of %s: no DHCP lease", in.Name, in.Address, n.CIDR)
			continue
		case macs[mac] != "":
			skip("local instance %q: MAC %s is also instance %q's: no DHCP lease", in.Name, mac, macs[mac])
			continue
		case addrs[in.Address] != "":
			skip("local instance %q: address %s is also instance %q's: no DHCP lease", in.Name, in.Address, addrs[in.Address])
			continue
		}
		macs[mac], addrs[in.Address] = in.Name, in.Name
		if !isLabel(in.Hostname) {
			skip("local instance %q: hostname %q is not a DNS label: its lease carries no hostname", in.Name, in.Hostname)
			fmt.Fprintf(&b, "%s,%s\n", mac, in.Address)
			continue
		}
		fmt.Fprintf(&b, "%s,%s,%s\n", mac, in.Address, in.Hostname)
	}
	return b.Bytes()
}

// renderHosts writes one line per running instance, by hostname:
// "ADDRESS HOSTNAME.DOMAIN [VM.DOMAIN]". The first name is the one
// dnsmasq answers reverse lookups with; a VM name on several lines
// resolves to all their addresses.
func renderHosts(n Network, running []Instance, skip func(string, ...any)) []byte {
	type entry struct {
		addr  netip.Addr
		names []string
	}
	entries := make([]entry, 0, len(running))
	addrs := make(map[netip.Addr]string, len(running))
	hosts := make(map[string]string, len(running))
	prev := "" // sorted by name: a duplicate follows its first
	for i, in := range sortedInstances(running) {
		vm := cmp.Or(in.VM, in.Name)
		switch {
		case i > 0 && in.Name == prev:
			skip("running instance %q is listed twice: the first is served", in.Name)
			continue
		case !isInstanceAddr(n.CIDR, in.Address):
			skip("running instance %q: address %s is not an instance address of %s: no DNS names", in.Name, in.Address, n.CIDR)
			continue
		case addrs[in.Address] != "":
			skip("running instance %q: address %s is also instance %q's: no DNS names", in.Name, in.Address, addrs[in.Address])
			continue
		}
		prev, addrs[in.Address] = in.Name, in.Name
		e := entry{addr: in.Address}
		switch {
		case !isLabel(in.Hostname):
			skip("running instance %q: hostname %q is not a DNS label: no %s name", in.Name, in.Hostname, n.Domain)
		case hosts[in.Hostname] != "":
			skip("running instance %q: hostname %q is also instance %q's: no name of its own", in.Name, in.Hostname, hosts[in.Hostname])
		default:
			hosts[in.Hostname] = in.Name
			e.names = append(e.names, in.Hostname+"."+n.Domain)
		}
		switch {
		case !isLabel(vm):
			skip("running instance %q: VM name %q is not a DNS label: no %s name for the VM", in.Name, vm, n.Domain)
		case vm != in.Hostname:
			e.names = append(e.names, vm+"."+n.Domain)
		}
		if len(e.names) > 0 {
			entries = append(entries, e)
		}
	}
	// By first name, so the file reads like a directory; the order of
	// lines changes no answer.
	slices.SortStableFunc(entries, func(a, b entry) int { return strings.Compare(a.names[0], b.names[0]) })
	var b bytes.Buffer
	for _, e := range entries {
		fmt.Fprintf(&b, "%s %s\n", e.addr, strings.Join(e.names, " "))
	}
	return b.Bytes()
}

// sortedInstances returns ins by name (then address, MAC…), so the first
// of two conflicting entries is the same whatever the order in which the
// caller listed them. It sorts pointers: moving whole Instances made up
// most of Render's time.
func sortedInstances(ins []Instance) []*Instance {
	out := make([]*Instance, len(ins))
	for i := range ins {
		out[i] = &ins[i]
	}
	slices.SortFunc(out, func(a, b *Instance) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return cmp.Or(a.Address.Compare(b.Address), bytes.Compare(a.MAC, b.MAC),
			strings.Compare(a.Hostname, b.Hostname), strings.Compare(a.VM, b.VM))
	})
	return out
}

// reverseZones are the in-addr.arpa names that cover exactly the
// addresses of p: whole-octet zones when p ends on an octet boundary,
// else the zones of the next boundary inside p (at most 128 of them: p is
// between /1 and /30 and the count is 2^(boundary−bits) < 2^8).
func reverseZones(p netip.Prefix) []string {
	bits := p.Bits()
	boundary := min((bits+7)/8*8, 32)
	octets := boundary / 8
	count := 1 << (boundary - bits)
	base := p.Masked().Addr().As4()
	start := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	step := uint32(1) << (32 - boundary)
	zones := make([]string, 0, count)
	for i := range count {
		a := start + uint32(i)*step
		o := [4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}
		labels := make([]string, 0, octets+2)
		for j := octets - 1; j >= 0; j-- {
			labels = append(labels, strconv.Itoa(int(o[j])))
		}
		zones = append(zones, strings.Join(append(labels, "in-addr", "arpa"), "."))
	}
	return zones
}

func netmask(p netip.Prefix) netip.Addr {
	m := net.CIDRMask(p.Bits(), 32)
	return netip.AddrFrom4([4]byte(m))
}

// firstHost is the address after p's network address (the gateway).
func firstHost(p netip.Prefix) netip.Addr {
	if !p.IsValid() {
		return netip.Addr{}
	}
	return p.Masked().Addr().Next()
}

// isInstanceAddr reports whether a is an address of p that an instance
// may have: not the network, gateway or broadcast address.
func isInstanceAddr(p netip.Prefix, a netip.Addr) bool {
	if !a.Is4() || !p.Contains(a) || a == p.Masked().Addr() || a == firstHost(p) {
		return false
	}
	b := a.As4()
	host := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	mask := uint32(1)<<(32-p.Bits()) - 1
	return host&mask != mask
}

// isLabel reports whether s is a DNS label as RFC 1123 hostnames use
// them, in lowercase (dnsmasq matches names case-insensitively, and the
// committed names are lowercase).
func isLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func validDomain(d string) bool {
	if d == "" || len(d) > 200 { // room left for a 63-character label in front
		return false
	}
	for l := range strings.SplitSeq(d, ".") {
		if !isLabel(l) {
			return false
		}
	}
	return true
}

func validIfName(s string) bool {
	return s != "" && len(s) <= 15 && s != "." && s != ".." && !strings.ContainsAny(s, "/: ") && safeConfigValue(s)
}

// safeConfigValue reports whether s can stand as a value in dnsmasq's
// configuration file without being read as something else.
func safeConfigValue(s string) bool {
	for _, r := range s {
		if r <= ' ' || r == 0x7f || strings.ContainsRune("\"'#,\\", r) {
			return false
		}
	}
	return true
}
