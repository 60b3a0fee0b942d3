package ingress

import (
	"cmp"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/blixard/blixard/spec"
)

// Instance is one running instance of a declared VM: where ingress can
// reach it on the cluster network.
type Instance struct {
	// Name is the instance name (web-0 for the first replica of web).
	Name string
	// Addr is its cluster address (replicated.Identity.Address).
	Addr netip.Addr
}

// Backend is one instance as the target of an entry: its address and the
// entry's port.
type Backend struct {
	Instance string
	Addr     netip.AddrPort
}

// Route is one HTTP entry with the backends it routes to now.
type Route struct {
	// Entry is the ingress entry's name (ingress.NAME in the flake).
	Entry string
	// Host is the entry's host, lower case; Path its path prefix.
	Host, Path string
	// To is the declared VM name the entry routes to.
	To string
	// Backends are To's running instances at the entry's port, sorted by
	// instance name; empty when none runs.
	Backends []Backend
}

// TCPRoute is one TCP entry: connections to ListenPort on every node are
// passed through to one of Backends.
type TCPRoute struct {
	Entry      string
	ListenPort int
	To         string
	Backends   []Backend
}

// Table is the routing table of one moment: what every HTTP entry and TCP
// entry routes to. It is immutable once built, so a proxy may swap tables
// under requests that still use the old one.
type Table struct {
	// hosts holds the HTTP routes by lower-case host, longest path first
	// (equal paths, which spec validation refuses, by entry name).
	hosts map[string][]Route
	// tcp holds the TCP routes by listen port.
	tcp map[int]TCPRoute
}

// NewTable builds the table of ingress entries (by entry name, as
// spec.Cluster.Ingress holds them) given the running instances of every
// declared VM (by declared name). It is pure: entries of an unknown
// protocol are left out (spec validation refuses them), and an entry whose
// VM has no running instance is kept with no backends, so requests for it
// get [NoInstance] rather than [NoRoute].
func NewTable(entries map[string]spec.Ingress, running map[string][]Instance) *Table {
	t := &Table{hosts: map[string][]Route{}, tcp: map[int]TCPRoute{}}
	for name, in := range entries {
		var backends []Backend
		for _, inst := range running[in.To] {
			if !inst.Addr.IsValid() {
				continue
			}
			backends = append(backends, Backend{Instance: inst.Name, Addr: netip.AddrPortFrom(inst.Addr, uint16(in.Port))})
		}
		slices.SortFunc(backends, func(a, b Backend) int { return cmp.Compare(a.Instance, b.Instance) })
		switch in.Protocol {
		case spec.IngressHTTP, "":
			host := canonicalHost(in.Host)
			path := in.Path
			if path == "" {
				path = spec.DefaultIngressPath
			}
			t.hosts[host] = append(t.hosts[host], Route{Entry: name, Host: host, Path: path, To: in.To, Backends: backends})
		case spec.IngressTCP:
			if prev, dup := t.tcp[in.ListenPort]; dup && prev.Entry < name {
				continue // validation refuses two entries on one port; keep one deterministically
			}
			t.tcp[in.ListenPort] = TCPRoute{Entry: name, ListenPort: in.ListenPort, To: in.To, Backends: backends}
		}
	}
	for _, routes := range t.hosts {
		slices.SortFunc(routes, func(a, b Route) int {
			if c := cmp.Compare(len(b.Path), len(a.Path)); c != 0 {
				return c
			}
			return cmp.Compare(a.Entry, b.Entry)
		})
	}
	return t
}

// Match returns the route of a request for host (a Host header: any case,
// with or without a port) and path (the URL path): the entry of that host
// whose path is the longest prefix of path. A prefix matches whole path
// segments: "/api" matches "/api" and "/api/v1" but not "/apiary"; "/"
// matches every path. It fails with a [*Error] of kind [NoRoute] when no
// entry matches, and of kind [NoInstance] (with the route) when the
// entry's VM has no running instance.
func (t *Table) Match(host, path string) (Route, error) {
	h := canonicalHost(host)
	if t != nil {
		for _, r := range t.hosts[h] {
			if !pathHasPrefix(path, r.Path) {
				continue
			}
			if len(r.Backends) == 0 {
				return r, &Error{Kind: NoInstance, Host: h, Path: path, Entry: r.Entry, To: r.To}
			}
			return r, nil
		}
	}
	return Route{}, &Error{Kind: NoRoute, Host: h, Path: path}
}

// Routes returns every HTTP route, sorted by host, then longest path first.
func (t *Table) Routes() []Route {
	if t == nil {
		return nil
	}
	var out []Route
	for _, h := range slices.Sorted(maps.Keys(t.hosts)) {
		out = append(out, t.hosts[h]...)
	}
	return out
}

// TCP returns every TCP route, sorted by listen port.
func (t *Table) TCP() []TCPRoute {
	if t == nil {
		return nil
	}
	out := make([]TCPRoute, 0, len(t.tcp))
	for _, p := range slices.Sorted(maps.Keys(t.tcp)) {
		out = append(out, t.tcp[p])
	}
	return out
}

// TCPRoute returns the TCP route listening on port, if there is one.
func (t *Table) TCPRoute(port int) (TCPRoute, bool) {
	if t == nil {
		return TCPRoute{}, false
	}
	r, ok := t.tcp[port]
	return r, ok
}

// canonicalHost is the host of a Host header as routes are keyed: lower
// case, without a port, brackets or a trailing dot ("Web.Example.org.:8080"
// is "web.example.org").
func canonicalHost(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	return strings.ToLower(strings.TrimSuffix(h, "."))
}

// pathHasPrefix reports whether path lies under prefix, segment-wise.
func pathHasPrefix(path, prefix string) bool {
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	return len(path) == len(prefix) || strings.HasSuffix(prefix, "/") || path[len(prefix)] == '/'
}
