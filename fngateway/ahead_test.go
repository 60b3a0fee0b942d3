package fngateway_test

import (
	"context"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/fngateway"
)

// TestAheadNotice: a peer's notice reaches Options.Ahead (sent with
// SendAhead, gateway to gateway); from anyone else, or without Ahead, the
// path has no route; a malformed notice is refused and reaches nothing.
func TestAheadNotice(t *testing.T) {
	got := make(chan fngateway.AheadNotice, 8)
	g1, url1 := startGateway(t, fngateway.Options{Node: 1, Ahead: func(_ context.Context, n fngateway.AheadNotice) { got <- n }})
	g1.Update([]fngateway.Function{hello(2, 3)})
	g3, _ := startGateway(t, fngateway.Options{Node: 3})
	via1 := strings.TrimPrefix(url1, "http://")
	noticed := func() (fngateway.AheadNotice, bool) {
		select {
		case n := <-got:
			return n, true
		case <-time.After(200 * time.Millisecond):
			return fngateway.AheadNotice{}, false
		}
	}

	// Not a peer yet: no route, nothing noticed.
	if err := g3.SendAhead(context.Background(), via1, fngateway.AheadNotice{Function: "hello", Want: 2, From: 3}); err == nil ||
		!strings.Contains(err.Error(), "404") {
		t.Errorf("notice from a stranger: %v, want 404", err)
	}
	if n, ok := noticed(); ok {
		t.Errorf("a stranger's notice was taken: %+v", n)
	}

	g1.SetPeers([]netip.Addr{netip.MustParseAddr("127.0.0.1")})
	want := fngateway.AheadNotice{Function: "hello", Want: 2, From: 3}
	if err := g3.SendAhead(context.Background(), via1, want); err != nil {
		t.Fatalf("notice from a peer: %v", err)
	}
	if n, ok := noticed(); !ok || n != want {
		t.Errorf("noticed %+v %v, want %+v", n, ok, want)
	}

	c := client(t)
	for _, tc := range []struct {
		name, method, query string
		status              int
	}{
		{"no function", "POST", "?want=2&from=3", http.StatusBadRequest},
		{"unknown function", "POST", "?function=nope&want=2&from=3", http.StatusBadRequest},
		{"want not a number", "POST", "?function=hello&want=x&from=3", http.StatusBadRequest},
		{"want zero", "POST", "?function=hello&want=0&from=3", http.StatusBadRequest},
		{"no node", "POST", "?function=hello&want=2", http.StatusBadRequest},
		{"GET", "GET", "?function=hello&want=2&from=3", http.StatusMethodNotAllowed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := send(c, tc.method, url1, "any.example.org", fngateway.AheadPath+tc.query, "")
			if a.err != nil || a.status != tc.status {
				t.Errorf("%s %s: %d %q %v, want %d", tc.method, tc.query, a.status, a.body, a.err, tc.status)
			}
			if n, ok := noticed(); ok {
				t.Errorf("noticed %+v", n)
			}
		})
	}

	// A gateway without Ahead: no route, from peers too.
	g2, url2 := startGateway(t, fngateway.Options{Node: 2})
	g2.SetPeers([]netip.Addr{netip.MustParseAddr("127.0.0.1")})
	g2.Update([]fngateway.Function{hello(2, 3)})
	if err := g3.SendAhead(context.Background(), strings.TrimPrefix(url2, "http://"), want); err == nil {
		t.Error("a gateway without Ahead took a notice")
	}
}

// TestAheadNoticeAnsweredOnceTaken: SendAhead returns only once the
// receiver's Ahead returned (the sender proposes after its notices were
// answered, so that the receiver's start has the CPUs to itself).
func TestAheadNoticeAnsweredOnceTaken(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	g1, url1 := startGateway(t, fngateway.Options{Node: 1, Ahead: func(context.Context, fngateway.AheadNotice) {
		close(entered)
		<-release
	}})
	g1.Update([]fngateway.Function{hello(2, 3)})
	g1.SetPeers([]netip.Addr{netip.MustParseAddr("127.0.0.1")})
	g3, _ := startGateway(t, fngateway.Options{Node: 3})
	sent := make(chan error, 1)
	go func() {
		sent <- g3.SendAhead(context.Background(), strings.TrimPrefix(url1, "http://"), fngateway.AheadNotice{Function: "hello", Want: 1, From: 3})
	}()
	<-entered
	select {
	case err := <-sent:
		t.Fatalf("SendAhead returned (%v) while the receiver's Ahead had not", err)
	case <-time.After(50 * time.Millisecond): // an answer sent at once would be here by now
	}
	close(release)
	if err := <-sent; err != nil {
		t.Fatalf("SendAhead: %v", err)
	}
}
