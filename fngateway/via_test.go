package fngateway_test

import (
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/fngateway"
	"github.com/blixard/blixard/internal/testkit"
)

// TestConcurrencyHoldsAcrossGateways: two nodes' gateways send requests
// for one instance (concurrency 2) on node 1. Node 3's gateway passes its
// requests to node 1's (Instance.Via), which counts every request the
// instance has: the instance never holds more than 2, though each gateway
// alone would send it 2 (node 3 passes on 2 and queues the rest); the
// requests passed on wait in node 1's queue and are answered once the
// instance frees up; the client's address
// reaches the instance first in X-Forwarded-For; node 3 counts its
// requests in Requests and in flight, node 1 does not count them again; a client that
// names the instance itself gets nothing of it.
func TestConcurrencyHoldsAcrossGateways(t *testing.T) {
	gt := newGate()
	defer gt.release()
	inst := startInstance(t, "hello-0", 1, gt.handler("hello-0"))
	g1, url1 := startGateway(t, fngateway.Options{Node: 1})
	g3, url3 := startGateway(t, fngateway.Options{Node: 3})
	g1.SetPeers([]netip.Addr{netip.MustParseAddr("127.0.0.1")}) // node 3's gateway connects from there
	g1.Update([]fngateway.Function{hello(2, 1, inst)})
	viaNode1 := inst
	viaNode1.Via = strings.TrimPrefix(url1, "http://")
	g3.Update([]fngateway.Function{hello(2, 1, viaNode1)})

	c := client(t)
	const each = 4
	answers := make(chan answer, 2*each)
	var wg sync.WaitGroup
	for _, base := range []string{url1, url3} {
		for range each {
			wg.Go(func() { answers <- send(c, "GET", base, "fn.example.org", "/fn/hello", "") })
		}
	}
	testkit.WaitFor(t, 10*time.Second, "both gateways' requests arrived, the instance holding 2", func() error {
		s1, s3 := stats(g1, "hello"), stats(g3, "hello")
		// Node 3 passes on 2 (its own count of the instance) and queues
		// the rest; node 1 holds its own 4 and node 3's 2, and shows its
		// own (node 3's are node 3's to show).
		if s3.InFlight != 2 || s3.Queued != each-2 || s1.InFlight+s1.Queued != each {
			return fmt.Errorf("node 1: %d in flight, %d queued; node 3: %d in flight, %d queued", s1.InFlight, s1.Queued, s3.InFlight, s3.Queued)
		}
		if now, _ := gt.counts(); now["hello-0"] != 2 {
			return fmt.Errorf("the instance holds %d", now["hello-0"])
		}
		return nil
	})
	gt.release()
	wg.Wait()
	close(answers)
	for a := range answers {
		if a.err != nil || a.status != http.StatusOK || a.instance != "hello-0" {
			t.Errorf("answer %+v, want 200 from hello-0", a)
		}
	}
	if _, peak := gt.counts(); peak["hello-0"] != 2 {
		t.Errorf("the instance held %d requests at once, want the function's concurrency 2", peak["hello-0"])
	}
	if s1, s3 := stats(g1, "hello"), stats(g3, "hello"); s1.Requests != each || s3.Requests != each {
		t.Errorf("Requests: node 1 %d, node 3 %d; want %d each (the passed-on ones count at node 3 only)", s1.Requests, s3.Requests, each)
	}

	// The client's address stays first.
	xff := startInstance(t, "hello-0", 1, namer("hello-0"))
	g1.Update([]fngateway.Function{hello(2, 1, xff)})
	xff.Via = strings.TrimPrefix(url1, "http://")
	g3.Update([]fngateway.Function{hello(2, 1, xff)})
	req, err := http.NewRequest("GET", url3+"/fn/hello", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "fn.example.org"
	req.Header.Set("X-Forwarded-For", "192.0.2.7")
	// A client naming the instance itself is routed like any client (node
	// 3 does not take it for a peer's): passed on, its headers dropped.
	req.Header.Set(fngateway.HeaderInstance, "hello-0")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	// Node 3's gateway trusts no X-Forwarded-For of a client (as before);
	// node 1's keeps node 3's entry (the client) and appends node 3.
	if got := string(body); !strings.Contains(got, "xff=127.0.0.1, 127.0.0.1 ") || strings.Contains(got, "192.0.2.7") {
		t.Errorf("the instance got %q; want X-Forwarded-For: the client's address, then node 3's gateway's", got)
	}
}

// TestPassedOnRequestIsNeverPassedOnAgain: a request another gateway
// passed on for an instance this gateway does not know as its own node's
// (the two views of the placement differ for a moment) goes straight to
// an instance, never to a third gateway; one waiting for its instance
// takes another when that instance goes away.
func TestPassedOnRequestIsNeverPassedOnAgain(t *testing.T) {
	elsewhere := startInstance(t, "hello-1", 2, namer("hello-1"))
	elsewhere.Via = refusingInstance(t, "gateway-of-node-2").Addr.String() // would fail if used
	w := &wants{}
	g1, url1 := startGateway(t, fngateway.Options{Node: 1, DownFor: time.Minute, Scaler: w})
	g1.SetPeers([]netip.Addr{netip.MustParseAddr("127.0.0.1")})
	g1.Update([]fngateway.Function{hello(1, 2, elsewhere)})
	c := client(t)
	req := func(pin string) answer { return passedOn(t, c, url1, pin) }
	if a := req("hello-0"); a.err != nil || a.status != http.StatusOK || a.instance != "hello-1" {
		t.Fatalf("a request passed on for an instance node 1 does not run: %+v; want hello-1's answer, straight", a)
	}

	// Waiting for its instance, which then goes away.
	gt := newGate()
	defer gt.release()
	mine := startInstance(t, "hello-0", 1, gt.handler("hello-0"))
	g1.Update([]fngateway.Function{hello(1, 2, mine)})
	held := holdHello0(t, c, url1, gt)
	pinned := make(chan answer, 1)
	go func() { pinned <- req("hello-0") }()
	testkit.WaitFor(t, 10*time.Second, "the passed-on request queued for hello-0", func() error {
		// Queued here, shown by the gateway that passed it on (Stats
		// leaves it out), asked for here (the Demand counts it).
		if s := stats(g1, "hello"); s.Queued != 0 {
			return fmt.Errorf("Stats shows %d queued", s.Queued)
		}
		if d, _ := w.last(); d.Queued != 1 {
			return fmt.Errorf("the last Demand has %d queued", d.Queued)
		}
		return nil
	})
	other := startInstance(t, "hello-1", 1, namer("hello-1"))
	g1.Update([]fngateway.Function{hello(1, 2, other)}) // hello-0 is gone
	if a := <-pinned; a.err != nil || a.status != http.StatusOK || a.instance != "hello-1" {
		t.Errorf("the request waiting for hello-0, gone: %+v; want hello-1's answer", a)
	}
	gt.release()
	if a := <-held; a.err != nil || a.status != http.StatusOK {
		t.Errorf("the request in flight at hello-0 when it went: %+v; want it finished", a)
	}
}

// TestPassedOnRequestTakesAnotherInstanceOfTheNode: a request passed on
// for an instance of this node that is busy (the gateway that passed it on
// counted only its own requests there) is served at once by another of
// this node's instances with room, never by another node's.
func TestPassedOnRequestTakesAnotherInstanceOfTheNode(t *testing.T) {
	gt := newGate()
	defer gt.release()
	busy := startInstance(t, "hello-0", 1, gt.handler("hello-0"))
	free := startInstance(t, "hello-1", 1, namer("hello-1"))
	remote := startInstance(t, "hello-2", 2, namer("hello-2"))
	remote.Via = refusingInstance(t, "gateway-of-node-2").Addr.String() // would fail if used
	w := &wants{}
	g1, url1 := startGateway(t, fngateway.Options{Node: 1, DownFor: time.Minute, Scaler: w})
	g1.SetPeers([]netip.Addr{netip.MustParseAddr("127.0.0.1")})
	c := client(t)
	pinnedTo := func(pin string) answer { return passedOn(t, c, url1, pin) }

	// Only hello-0 at first: node 1's own request keeps it busy
	// (concurrency 1).
	g1.Update([]fngateway.Function{hello(1, 3, busy)})
	held := holdHello0(t, c, url1, gt)
	g1.Update([]fngateway.Function{hello(1, 3, busy, free, remote)})
	for range 3 {
		if a := pinnedTo("hello-0"); a.err != nil || a.status != http.StatusOK || a.instance != "hello-1" {
			t.Fatalf("a request passed on for busy hello-0 while hello-1 (same node) is free: %+v; want hello-1's answer at once", a)
		}
	}
	// With hello-1 gone too, it waits for hello-0 rather than go to node
	// 2's hello-2 (through a gateway that refuses), and is served once the
	// request holding hello-0 ends.
	g1.Update([]fngateway.Function{hello(1, 3, busy, remote)})
	pinned := make(chan answer, 1)
	go func() { pinned <- pinnedTo("hello-0") }()
	testkit.WaitFor(t, 10*time.Second, "the passed-on request queued for this node's instances", func() error {
		select {
		case a := <-pinned:
			t.Fatalf("the passed-on request did not wait for this node's busy instance: %+v", a)
		default:
		}
		if d, _ := w.last(); d.Queued != 1 {
			return fmt.Errorf("the last Demand has %d queued", d.Queued)
		}
		return nil
	})
	gt.release()
	if a := <-held; a.err != nil || a.status != http.StatusOK {
		t.Errorf("the request holding hello-0: %+v; want it finished", a)
	}
	if a := <-pinned; a.err != nil || a.status != http.StatusOK || a.instance != "hello-0" {
		t.Errorf("the passed-on request after hello-0 freed: %+v; want hello-0's answer", a)
	}
}

// passedOn sends GET /fn/hello to the gateway at url as another node's
// gateway passing it on for instance pin (HeaderInstance).
func passedOn(t *testing.T, c *http.Client, url, pin string) answer {
	t.Helper()
	r, err := http.NewRequest("GET", url+"/fn/hello", nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Host = "fn.example.org"
	r.Header.Set(fngateway.HeaderInstance, pin)
	resp, err := c.Do(r)
	if err != nil {
		return answer{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, instance: resp.Header.Get("X-Instance"), body: string(b), err: err}
}

// holdHello0 sends a client's request to the gateway at url and returns
// once it is in flight at hello-0 (gated by gt); its answer comes on the
// channel when gt releases it.
func holdHello0(t *testing.T, c *http.Client, url string, gt *gate) <-chan answer {
	t.Helper()
	held := make(chan answer, 1)
	go func() { held <- send(c, "GET", url, "fn.example.org", "/fn/hello", "") }()
	testkit.WaitFor(t, 10*time.Second, "hello-0 busy", func() error {
		if now, _ := gt.counts(); now["hello-0"] != 1 {
			return fmt.Errorf("hello-0 holds %d", now["hello-0"])
		}
		return nil
	})
	return held
}
