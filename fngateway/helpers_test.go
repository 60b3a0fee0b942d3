package fngateway_test

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/blixard/blixard/fngateway"
)

// startInstance starts a real HTTP server on loopback standing in for a
// function instance, until the test ends.
func startInstance(t testing.TB, name string, node uint64, h http.Handler) fngateway.Instance {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return fngateway.Instance{Name: name, Addr: netip.MustParseAddrPort(srv.Listener.Addr().String()), Node: node, Ready: true}
}

// refusingInstance is a ready instance whose address refuses connections:
// a loopback port that was listened on and closed.
func refusingInstance(t testing.TB, name string) fngateway.Instance {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	return fngateway.Instance{Name: name, Addr: addr, Ready: true}
}

// startGateway serves a new gateway on a loopback port until the test
// ends, and returns it with its base URL.
func startGateway(t testing.TB, o fngateway.Options) (*fngateway.Gateway, string) {
	t.Helper()
	g := fngateway.New(o)
	srv := httptest.NewServer(g)
	t.Cleanup(func() {
		// A test that failed may leave requests held: cut them off
		// first, or Close would wait for them forever.
		srv.CloseClientConnections()
		srv.Close()
		g.CloseIdleConnections()
	})
	return g, srv.URL
}

// client is an HTTP client that reuses connections, as load balancers in
// front of a gateway do.
func client(t testing.TB) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 64, MaxConnsPerHost: 0}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// hello is function hello at fn.example.org/fn/hello.
func hello(concurrency, maxInstances int, insts ...fngateway.Instance) fngateway.Function {
	return fngateway.Function{Name: "hello", Host: "fn.example.org", Path: "/fn/hello", Concurrency: concurrency,
		MaxInstances: maxInstances, Instances: insts}
}

type answer struct {
	status     int
	instance   string
	retryAfter string
	body       string
	err        error
}

// send sends method to base+path with Host host and body ("" none); a
// transport error is in the answer (send runs on test goroutines too).
func send(c *http.Client, method, base, host, path, body string) answer {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		return answer{err: err}
	}
	req.Host = host
	resp, err := c.Do(req)
	if err != nil {
		return answer{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, instance: resp.Header.Get("X-Instance"), retryAfter: resp.Header.Get("Retry-After"),
		body: string(b), err: err}
}

// namer answers with the instance's name, what it was asked and the
// forwarding headers it got.
func namer(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Instance", name)
		io.WriteString(w, name+" "+r.Method+" "+r.URL.RequestURI()+" host="+r.Host+" xff="+r.Header.Get("X-Forwarded-For")+
			" body="+string(body))
	})
}

// gate holds requests until opened; it counts the requests each instance
// holds now and the most it held at once.
type gate struct {
	open chan struct{}
	once sync.Once
	mu   sync.Mutex
	now  map[string]int
	peak map[string]int
}

func newGate() *gate {
	return &gate{open: make(chan struct{}), now: map[string]int{}, peak: map[string]int{}}
}

// release lets every held request and every later one through; tests
// also defer it, so that a failing test leaves nothing held.
func (g *gate) release() { g.once.Do(func() { close(g.open) }) }

func (g *gate) handler(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		g.now[name]++
		g.peak[name] = max(g.peak[name], g.now[name])
		g.mu.Unlock()
		defer func() {
			g.mu.Lock()
			g.now[name]--
			g.mu.Unlock()
		}()
		select {
		case <-g.open:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("X-Instance", name)
		io.WriteString(w, "ok")
	})
}

func (g *gate) counts() (now, peak map[string]int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now, peak = map[string]int{}, map[string]int{}
	for k, v := range g.now {
		now[k] = v
	}
	for k, v := range g.peak {
		peak[k] = v
	}
	return now, peak
}

// wants records the Scaler's calls.
type wants struct {
	mu    sync.Mutex
	calls []fngateway.Demand
	then  func(fn string, d fngateway.Demand) // optional, on its own goroutine
}

func (w *wants) Want(fn string, d fngateway.Demand) {
	w.mu.Lock()
	w.calls = append(w.calls, d)
	then := w.then
	w.mu.Unlock()
	if then != nil {
		go then(fn, d)
	}
}

func (w *wants) last() (fngateway.Demand, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.calls) == 0 {
		return fngateway.Demand{}, 0
	}
	return w.calls[len(w.calls)-1], len(w.calls)
}

// stats returns the gateway's Stats of fn.
func stats(g *fngateway.Gateway, fn string) fngateway.Stats {
	for _, s := range g.Stats() {
		if s.Function == fn {
			return s
		}
	}
	return fngateway.Stats{}
}
