package spec

import (
	"fmt"
	"net/netip"
	"strings"
)

// Bounds of network.cidr's prefix length. A /8 is the largest network one
// VXLAN segment sensibly carries; a /28 leaves 13 instance addresses (the
// network, gateway and broadcast addresses are never given out).
const (
	MinCIDRBits = 8
	MaxCIDRBits = 28
)

// NetworkCIDR is the cluster's network: Network.CIDR, or DefaultCIDR for a
// cluster built without one (Decode always fills it in).
func (c *Cluster) NetworkCIDR() netip.Prefix {
	if c == nil || !c.Network.CIDR.IsValid() {
		return netip.MustParsePrefix(DefaultCIDR)
	}
	return c.Network.CIDR
}

// reservedRange returns the range of IPv4 addresses that cannot carry
// instance traffic between hosts (whatever the host's routes) which p
// overlaps, and what it is.
func reservedRange(p netip.Prefix) (netip.Prefix, string, bool) {
	for _, r := range [...]struct{ prefix, what string }{
		{"0.0.0.0/8", "\"this network\""},
		{"127.0.0.0/8", "loopback"},
		{"169.254.0.0/16", "link-local"},
		{"224.0.0.0/4", "multicast"},
		{"240.0.0.0/4", "reserved (class E and broadcast)"},
	} {
		if rp := netip.MustParsePrefix(r.prefix); rp.Overlaps(p) {
			return rp, r.what, true
		}
	}
	return netip.Prefix{}, "", false
}

// ValidCIDR reports whether p may be a cluster's network.cidr, with an error
// that says what to write instead: IPv4, a prefix length between
// MinCIDRBits and MaxCIDRBits, the network address itself (10.100.0.0/16,
// not 10.100.0.5/16), and outside the loopback, link-local, multicast and
// reserved ranges.
func ValidCIDR(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return fmt.Errorf("not a CIDR: write an IPv4 network such as %q", DefaultCIDR)
	case !p.Addr().Is4():
		return fmt.Errorf("%s is not IPv4: the cluster network is an IPv4 network such as %q", p, DefaultCIDR)
	case p.Bits() < MinCIDRBits || p.Bits() > MaxCIDRBits:
		return fmt.Errorf("%s has prefix length /%d: use /%d to /%d (a /%d has %d instance addresses)",
			p, p.Bits(), MinCIDRBits, MaxCIDRBits, MaxCIDRBits, 1<<(32-MaxCIDRBits)-3)
	case p.Masked() != p:
		return fmt.Errorf("%s is not a network address: the network containing it is %s; write that", p, p.Masked())
	}
	if rp, what, ok := reservedRange(p); ok {
		return fmt.Errorf("%s overlaps the %s range %s, which cannot carry instance traffic: use a private range such as %q", p, what, rp, DefaultCIDR)
	}
	return nil
}

// validateNetwork checks network.cidr; the zero value is the default.
func validateNetwork(ps *problems, c *Cluster) {
	if !c.Network.CIDR.IsValid() {
		return
	}
	if err := ValidCIDR(c.Network.CIDR); err != nil {
		ps.addf("network.cidr", "%v", err)
	}
}

// validateIngress checks every ingress entry: a valid name, a host name,
// a path, a declared VM, ports, the protocol and its fields, and that no
// two HTTP entries route the same host and path and no two TCP entries
// listen on the same port.
func validateIngress(ps *problems, c *Cluster) {
	routes := map[string]string{} // lower-case host + " " + path → entry name
	listens := map[int]string{}   // TCP listenPort → entry name
	for _, name := range sortedKeys(c.Ingress) {
		path := attrPath("ingress", name)
		in := c.Ingress[name]
		if err := ValidName(name); err != nil {
			ps.addf(path, "%v", err)
		}
		if err := validHost(in.Host); err != nil {
			ps.addf(attrPath(path, "host"), "%v", err)
		}
		if err := validURLPath(in.Path); err != nil {
			ps.addf(attrPath(path, "path"), "%v", err)
		}
		validateIngressTarget(ps, c, attrPath(path, "to"), in.To)
		if in.Port < 1 || in.Port > 65535 {
			ps.addf(attrPath(path, "port"), "must be a port between 1 and 65535 (the VM's port), got %d", in.Port)
		}
		switch in.Protocol {
		case IngressHTTP:
			if in.ListenPort != 0 {
				ps.addf(attrPath(path, "listenPort"), "applies to protocol = %q only: HTTP entries are served on every node's ingress address (serve --ingress-addr); remove it or set protocol = %q", IngressTCP, IngressTCP)
			}
			key := strings.ToLower(in.Host) + " " + in.Path
			if prev, dup := routes[key]; dup {
				ps.addf(path, "host %q and path %q are also routed by %s; give each entry its own host or path", in.Host, in.Path, attrPath("ingress", prev))
			} else if in.Host != "" {
				routes[key] = name
			}
		case IngressTCP:
			lp := attrPath(path, "listenPort")
			switch {
			case in.ListenPort == 0:
				ps.addf(lp, "protocol = %q needs listenPort, the port every node listens on for this entry (1–65535)", IngressTCP)
			case in.ListenPort < 1 || in.ListenPort > 65535:
				ps.addf(lp, "must be a port between 1 and 65535, got %d", in.ListenPort)
			default:
				if prev, dup := listens[in.ListenPort]; dup {
					ps.addf(lp, "port %d is also the listenPort of %s; give each TCP entry its own port", in.ListenPort, attrPath("ingress", prev))
				} else {
					listens[in.ListenPort] = name
				}
			}
			if in.Path != DefaultIngressPath {
				ps.addf(attrPath(path, "path"), "applies to protocol = %q only: a TCP entry passes whole connections through; remove it", IngressHTTP)
			}
		default:
			ps.addf(attrPath(path, "protocol"), "must be %q or %q, got %q", IngressHTTP, IngressTCP, in.Protocol)
		}
	}
}

// validateIngressTarget checks that to names a declared VM.
func validateIngressTarget(ps *problems, c *Cluster, path, to string) {
	if _, ok := c.VMs[to]; ok {
		return
	}
	hint := ""
	if i := strings.LastIndexByte(to, '-'); i > 0 {
		if vm, ok := c.VMs[to[:i]]; ok && vm.Replicas > 1 {
			hint = fmt.Sprintf("; ingress routes to every replica of a declared VM: write %q", to[:i])
		}
	}
	if _, ok := c.Functions[to]; ok {
		hint = "; it is a function, and ingress routes to VMs"
	}
	ps.addf(path, "%q is not a VM declared in vms%s", to, hint)
}

// validHost checks a DNS host name: dot-separated labels of letters,
// digits and '-' (not at either end of a label), at most 63 characters
// each and 253 in all.
func validHost(h string) error {
	if h == "" {
		return fmt.Errorf("must be a host name such as \"web.example.org\", got \"\"")
	}
	if len(h) > 253 {
		return fmt.Errorf("host name %q has %d characters, at most 253 are allowed", h, len(h))
	}
	for _, label := range strings.Split(h, ".") {
		if !IsDNSLabel(strings.ToLower(label)) {
			return fmt.Errorf("%q is not a host name: each dot-separated part must be 1–63 letters, digits or '-', not starting or ending with '-' (no port, scheme or path: those go in port and path)", h)
		}
	}
	return nil
}

// IsDNSLabel reports whether s is a lower-case RFC 1123 host name label:
// 1–63 of [a-z0-9-], not starting or ending with '-'. Every instance name
// is one unless it ends with '-' (NameRule allows that).
func IsDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// validURLPath checks an ingress path: it starts with "/" and holds no
// spaces, control characters, query or fragment.
func validURLPath(p string) error {
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("must start with \"/\", got %q", p)
	}
	for _, r := range p {
		if r <= ' ' || r == 0x7f || r == '?' || r == '#' {
			return fmt.Errorf("%q holds %q: a path has no spaces, control characters, query (?) or fragment (#)", p, r)
		}
	}
	return nil
}
