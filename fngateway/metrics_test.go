package fngateway_test

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/fngateway"
	"github.com/blixard/blixard/ingress"
	"github.com/blixard/blixard/internal/testkit"
)

// observed records what a gateway reports to its Metrics.
type observed struct {
	mu             sync.Mutex
	waits, request map[string][]time.Duration
}

func (o *observed) ObserveQueueWait(fn string, d time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.waits[fn] = append(o.waits[fn], d)
}

func (o *observed) ObserveRequest(fn string, d time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.request[fn] = append(o.request[fn], d)
}

func (o *observed) counts(fn string) (waits, requests int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.waits[fn]), len(o.request[fn])
}

// TestMetricsSeeQueueWaitsAndRequests: through the node's front, every
// function request is observed once with its whole latency, and a request
// that waited for an instance also with its wait (which the latency
// includes); ingress requests are not.
func TestMetricsSeeQueueWaitsAndRequests(t *testing.T) {
	obs := &observed{waits: map[string][]time.Duration{}, request: map[string][]time.Duration{}}
	g := fngateway.New(fngateway.Options{Metrics: obs})
	front := fngateway.NewFront(ingress.New(ingress.Options{}), g)
	srv := httptest.NewServer(front)
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		g.CloseIdleConnections()
	})
	c := client(t)

	g.Update([]fngateway.Function{hello(1, 2)})
	cold := make(chan answer, 1)
	go func() { cold <- send(c, http.MethodGet, srv.URL, "fn.example.org", "/fn/hello", "") }()
	testkit.WaitFor(t, waitLong, "the request queued", testkit.Until(func() bool { return stats(g, "hello").Queued == 1 }))
	time.Sleep(20 * time.Millisecond) // a wait long enough to tell from none
	g.Update([]fngateway.Function{hello(1, 2, startInstance(t, "hello-0", 0, namer("hello-0")))})
	if a := <-cold; a.err != nil || a.status != http.StatusOK {
		t.Fatalf("cold request: %d %v %q", a.status, a.err, a.body)
	}
	if a := send(c, http.MethodGet, srv.URL, "fn.example.org", "/fn/hello", ""); a.err != nil || a.status != http.StatusOK {
		t.Fatalf("warm request: %d %v %q", a.status, a.err, a.body)
	}
	if a := send(c, http.MethodGet, srv.URL, "nothing.example.org", "/", ""); a.status != http.StatusNotFound {
		t.Fatalf("a request no route matches: %d, want 404", a.status)
	}
	testkit.WaitFor(t, waitLong, "both requests observed", testkit.Until(func() bool {
		_, r := obs.counts("hello")
		return r == 2
	}))
	waits, requests := obs.counts("hello")
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if waits != 1 || requests != 2 || len(obs.request) != 1 {
		t.Fatalf("observed %d waits and %d requests of hello (%d functions); want the cold start's wait and both requests", waits, requests, len(obs.request))
	}
	if w, r := obs.waits["hello"][0], obs.request["hello"][0]; w < 20*time.Millisecond || r < w {
		t.Fatalf("the cold request waited %s and took %s: want a wait of at least the 20ms it was held, within its latency", w, r)
	}
}
