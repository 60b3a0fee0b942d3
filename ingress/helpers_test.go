package ingress_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/blixard/blixard/ingress"
	"github.com/blixard/blixard/spec"
)

// listenSamePort listens on 127.0.0.base, 127.0.0.base+1, … (n addresses)
// on one port: instances listen on their entry's port, each at its own
// cluster address, and loopback addresses stand in for those.
func listenSamePort(t testing.TB, base byte, n int) ([]net.Listener, int) {
	t.Helper()
	var last error
	for range 20 {
		first, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:0", base))
		if err != nil {
			t.Fatalf("listening on a loopback address: %v", err)
		}
		port := first.Addr().(*net.TCPAddr).Port
		lns := []net.Listener{first}
		for i := 1; i < n; i++ {
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:%d", int(base)+i, port))
			if err != nil {
				last = err
				break
			}
			lns = append(lns, ln)
		}
		if len(lns) == n {
			return lns, port
		}
		for _, ln := range lns {
			ln.Close()
		}
	}
	t.Fatalf("no port free on %d loopback addresses from 127.0.0.%d: %v", n, base, last)
	return nil, 0
}

// fleet is the instances of one VM: real HTTP servers on loopback.
type fleet struct {
	insts   []ingress.Instance
	servers map[string]*httptest.Server
	port    int
}

// startFleet starts one HTTP server per name, each serving handler(name).
func startFleet(t testing.TB, base byte, names []string, handler func(name string) http.Handler) *fleet {
	t.Helper()
	lns, port := listenSamePort(t, base, len(names))
	f := &fleet{servers: map[string]*httptest.Server{}, port: port}
	for i, name := range names {
		srv := httptest.NewUnstartedServer(handler(name))
		srv.Listener.Close()
		srv.Listener = lns[i]
		srv.Start()
		t.Cleanup(srv.Close)
		f.servers[name] = srv
		f.insts = append(f.insts, ingress.Instance{Name: name, Addr: netip.MustParseAddr(fmt.Sprintf("127.0.0.%d", int(base)+i))})
	}
	return f
}

// table routes host / to the fleet as VM to.
func (f *fleet) table(to string, hosts ...string) *ingress.Table {
	entries := map[string]spec.Ingress{}
	for i, h := range hosts {
		entries["e"+strconv.Itoa(i)] = httpEntry(h, "/", to, f.port)
	}
	return ingress.NewTable(entries, map[string][]ingress.Instance{to: f.insts})
}

// namer answers with the instance's name, what it was asked and the
// forwarding headers it got.
func namer(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Instance", name)
		fmt.Fprintf(w, "%s %s %s host=%s xff=%s xfh=%s xfp=%s body=%s", name, r.Method, r.URL.RequestURI(), r.Host,
			r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Host"), r.Header.Get("X-Forwarded-Proto"), body)
	})
}

// startProxy serves a new ingress server on a loopback port until the test
// ends, and returns it with its base URL.
func startProxy(t testing.TB, o ingress.Options) (*ingress.Server, string) {
	t.Helper()
	s := ingress.New(o)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, "http://" + ln.Addr().String()
}

// client is an HTTP client of the test that reuses connections, as
// browsers and load balancers in front of ingress do.
func client(t testing.TB) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

type answer struct {
	status   int
	instance string
	body     string
}

// send sends method to base+path with Host host and body ("" none).
func send(t testing.TB, c *http.Client, method, base, host, path, body string) answer {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	req.Header.Set("X-Forwarded-For", "203.0.113.66") // a client's lie, which ingress drops
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s (Host %s): %v", method, path, host, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the answer: %v", method, path, err)
	}
	return answer{status: resp.StatusCode, instance: resp.Header.Get("X-Instance"), body: string(b)}
}

// counter counts what each instance answered.
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) add(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[name]++
}

func (c *counter) get(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[name]
}
