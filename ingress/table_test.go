package ingress_test

import (
	"errors"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/blixard/blixard/ingress"
	"github.com/blixard/blixard/spec"
)

func httpEntry(host, path, to string, port int) spec.Ingress {
	return spec.Ingress{Host: host, Path: path, To: to, Port: port, Protocol: spec.IngressHTTP}
}

func inst(name, addr string) ingress.Instance {
	return ingress.Instance{Name: name, Addr: netip.MustParseAddr(addr)}
}

func TestTableMatch(t *testing.T) {
	entries := map[string]spec.Ingress{
		"site":    httpEntry("web.example.org", "/", "web", 8080),
		"api":     httpEntry("web.example.org", "/api", "api", 9000),
		"api-v2":  httpEntry("web.example.org", "/api/v2/", "api2", 9002),
		"assets":  httpEntry("Static.Example.ORG", "/assets", "web", 8080),
		"down":    httpEntry("down.example.org", "/", "idle", 80),
		"db":      {To: "db", Port: 5432, Protocol: spec.IngressTCP, ListenPort: 15432, Path: "/"},
		"unknown": {Host: "x.example.org", Path: "/", To: "web", Port: 1, Protocol: "udp"},
	}
	running := map[string][]ingress.Instance{
		"web":  {inst("web-1", "10.100.0.3"), inst("web-0", "10.100.0.2")},
		"api":  {inst("api", "10.100.0.4")},
		"api2": {inst("api2", "10.100.0.5"), {Name: "api2-no-address"}},
		"db":   {inst("db", "10.100.0.6")},
	}
	tab := ingress.NewTable(entries, running)

	for _, tc := range []struct {
		name, host, path string
		entry            string // "" when the match fails
		backends         []string
		kind             ingress.Kind
		status           int
		body             string
	}{
		{name: "root path routes every path of its host", host: "web.example.org", path: "/index.html", entry: "site",
			backends: []string{"web-0 10.100.0.2:8080", "web-1 10.100.0.3:8080"}},
		{name: "longer prefix wins over the root", host: "web.example.org", path: "/api/users", entry: "api",
			backends: []string{"api 10.100.0.4:9000"}},
		{name: "prefix matches the path itself", host: "web.example.org", path: "/api", entry: "api"},
		{name: "longest prefix wins over a shorter one", host: "web.example.org", path: "/api/v2/users", entry: "api-v2",
			backends: []string{"api2 10.100.0.5:9002"}},
		{name: "prefix ending in a slash does not match the path without it", host: "web.example.org", path: "/api/v2", entry: "api"},
		{name: "prefix matches whole segments only", host: "web.example.org", path: "/apiary", entry: "site"},
		{name: "host matches in any case with a port", host: "WEB.Example.org:8443", path: "/", entry: "site"},
		{name: "host matches with a trailing dot", host: "web.example.org.", path: "/", entry: "site"},
		{name: "entry host in upper case matches", host: "static.example.org", path: "/assets/app.js", entry: "assets"},
		{name: "unknown host is NoRoute 404", host: "other.example.org", path: "/", kind: ingress.NoRoute,
			status: http.StatusNotFound, body: `no ingress route for host "other.example.org" and path "/"`},
		{name: "known host without a matching path is NoRoute 404", host: "static.example.org", path: "/", kind: ingress.NoRoute,
			status: http.StatusNotFound, body: "add an ingress entry"},
		{name: "VM without running instance is NoInstance 503", host: "down.example.org", path: "/x", entry: "down",
			kind: ingress.NoInstance, status: http.StatusServiceUnavailable, body: "no running instance of idle"},
		{name: "TCP entry is not an HTTP route", host: "", path: "/", kind: ingress.NoRoute, status: http.StatusNotFound},
		{name: "entry of an unknown protocol is left out", host: "x.example.org", path: "/", kind: ingress.NoRoute, status: http.StatusNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := tab.Match(tc.host, tc.path)
			if r.Entry != tc.entry {
				t.Errorf("Match(%q, %q) = entry %q, want %q", tc.host, tc.path, r.Entry, tc.entry)
			}
			if tc.backends != nil {
				var got []string
				for _, b := range r.Backends {
					got = append(got, b.Instance+" "+b.Addr.String())
				}
				if !slices.Equal(got, tc.backends) {
					t.Errorf("backends = %q, want %q", got, tc.backends)
				}
			}
			if tc.kind == "" {
				if err != nil {
					t.Fatalf("Match: %v", err)
				}
				return
			}
			var ie *ingress.Error
			if !errors.As(err, &ie) {
				t.Fatalf("Match error = %v, want an *ingress.Error of kind %s", err, tc.kind)
			}
			if ie.Kind != tc.kind || ie.Status() != tc.status {
				t.Errorf("error kind %s status %d, want %s %d", ie.Kind, ie.Status(), tc.kind, tc.status)
			}
			if !strings.Contains(err.Error(), tc.body) {
				t.Errorf("error %q does not say %q", err, tc.body)
			}
		})
	}

	t.Run("TCP entries are listed by port with their backends", func(t *testing.T) {
		tcp := tab.TCP()
		if len(tcp) != 1 || tcp[0].Entry != "db" || tcp[0].ListenPort != 15432 ||
			len(tcp[0].Backends) != 1 || tcp[0].Backends[0].Addr != netip.MustParseAddrPort("10.100.0.6:5432") {
			t.Fatalf("TCP() = %+v, want db on 15432 to 10.100.0.6:5432", tcp)
		}
		if _, ok := tab.TCPRoute(15433); ok {
			t.Error("TCPRoute(15433) found a route no entry has")
		}
	})
	t.Run("routes are listed by host, longest path first", func(t *testing.T) {
		var got []string
		for _, r := range tab.Routes() {
			got = append(got, r.Host+r.Path)
		}
		want := []string{"down.example.org/", "static.example.org/assets", "web.example.org/api/v2/", "web.example.org/api", "web.example.org/"}
		if !slices.Equal(got, want) {
			t.Fatalf("Routes() = %q, want %q", got, want)
		}
	})
	t.Run("an empty table routes nothing", func(t *testing.T) {
		for _, empty := range []*ingress.Table{nil, ingress.NewTable(nil, nil)} {
			if _, err := empty.Match("web.example.org", "/"); err == nil {
				t.Error("an empty table matched a request")
			}
		}
	})
}
