package node_test

import (
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/stats"
)

// TestFunctionsConcurrencyAcrossGateways: a function with concurrency 1
// and one instance, its requests arriving at all three nodes' gateways at
// once. Each gateway alone would send the instance one request at a time,
// so two or three would be inside it together; the gateways on the other
// nodes pass theirs to the instance's node's gateway (its address is in
// the node's registration), which holds every request to the one slot.
// The handler reports whether another request was inside it meanwhile.
func TestFunctionsConcurrencyAcrossGateways(t *testing.T) {
	l := newFnLabWith(t, `      functions.one = { inherit runner; vcpu = 1; memMiB = 32; http = { host = "one.lab.test"; path = "/"; port = 8080; };
        maxInstances = 1; concurrency = 1; idleTimeout = "60s"; };
`, func(i int) int {
		if i == 3 {
			return 0
		}
		return 4
	})
	l.startAll(3, 3*time.Minute)
	if code, body, err := l.fnGet(3, "one.lab.test", "/", 60*time.Second); err != nil || code != http.StatusOK {
		t.Fatalf("warm-up: %d %q %v", code, body, err)
	}
	v, err := l.functions(1)
	if err != nil {
		t.Fatal(err)
	}
	insts := fnView(v, "one").Instances
	if len(insts) != 1 {
		t.Fatalf("instances of one: %+v", insts)
	}
	const each = 2
	type result struct {
		node int
		code int
		body string
		err  error
		took time.Duration
	}
	results := make(chan result, 3*each)
	start := time.Now()
	var wg sync.WaitGroup
	for node := 1; node <= 3; node++ {
		for range each {
			wg.Go(func() {
				s := time.Now()
				code, body, err := l.fnGet(node, "one.lab.test", "/cgi-bin/one", 60*time.Second)
				results <- result{node, code, body, err, time.Since(s)}
			})
		}
	}
	wg.Wait()
	close(results)
	took := time.Since(start)
	for r := range results {
		if r.err != nil || r.code != http.StatusOK || r.body != "alone from fn-one-0" {
			t.Errorf("through node %d: %d %q %v; want 200 %q (the instance serves one request at a time)",
				r.node, r.code, r.body, r.err, "alone from fn-one-0")
		}
	}
	// The instance's node took the others' requests as passed on by
	// peers (pinned to its instance, not counted again): its gateway
	// counts only the requests sent to it.
	home := int(insts[0].Node)
	if v, err := l.functions(home); err != nil {
		t.Error(err)
	} else if local := fnView(v, "one").Local; local == nil || local.Requests != each {
		t.Errorf("node %d's gateway counted %+v; want the %d requests sent to it, not the ones passed on", home, local, each)
	}
	t.Logf("%d requests of 0.5 s through nodes 1, 2 and 3 at once, instance on node %d: all answered after %s (one at a time: ≥ %s)",
		3*each, insts[0].Node, took.Round(time.Millisecond), time.Duration(3*each)*500*time.Millisecond)

	// What the second gateway costs a warm request: from node 3's
	// namespace, through node 3's gateway (which passes it on) and through
	// the instance's node's gateway, interleaved.
	var own, passed []time.Duration
	for range 4 {
		own = append(own, l.curlTimes(t, 3, "one.lab.test", fmt.Sprintf("http://%s:8080/", l.net.Addr(home)), 50)...)
		passed = append(passed, l.curlTimes(t, 3, "one.lab.test", fmt.Sprintf("http://%s:8080/", l.net.Addr(3)), 50)...)
	}
	t.Logf("warm GET / from node 3's namespace, 200 each: through the instance's node's gateway p50 %s p99 %s; "+
		"through node 3's gateway, passed on to it, p50 %s p99 %s", stats.Quantile(own, 0.5).Round(time.Microsecond), stats.Quantile(own, 0.99).Round(time.Microsecond), stats.Quantile(passed, 0.5).Round(time.Microsecond), stats.Quantile(passed, 0.99).Round(time.Microsecond))
}
