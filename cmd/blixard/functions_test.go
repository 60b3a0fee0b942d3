package main

import (
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/api"
)

func TestWriteFunctions(t *testing.T) {
	var b strings.Builder
	if err := writeFunctions(&b, api.FunctionsView{}); err != nil || !strings.Contains(b.String(), "no functions") {
		t.Fatalf("empty: %q %v", b.String(), err)
	}
	b.Reset()
	v := api.FunctionsView{Node: 3, Functions: []api.FunctionView{{
		Name: "hello", Route: "fn.test/ → :8080", Want: 2, Min: 0, Max: 8, Reason: "20 queued", ScaledAt: time.Unix(0, 0).UTC(),
		Instances: []api.FunctionInstance{{Name: "fn-hello-0", Node: 1, Phase: "running", Health: "healthy", Address: "10.0.0.2"},
			{Name: "fn-hello-1", Node: 2, Phase: "starting"}},
		Local: &api.FunctionLocal{Function: "hello", InFlight: 3, Queued: 1, Requests: 40, ColdStarts: 5, TimedOut: 1,
			ColdStartP50: 1500 * time.Millisecond, ColdStartP99: 2 * time.Second, RequestP50: 3 * time.Millisecond, RequestP99: 2100 * time.Millisecond},
	}}}
	if err := writeFunctions(&b, v); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"hello", "2 (1 ready)", "0/8", "1.5s/2s", "3ms/2.1s", "scaled to 2", "20 queued",
		"1 timed out (504)", "fn-hello-0  node 1  running healthy  10.0.0.2", "node 3's gateway only"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestWriteFunctionsOfEveryNode(t *testing.T) {
	v := api.FunctionsView{Node: 1, Functions: []api.FunctionView{{
		Name: "hello", Route: "fn.test/ → :8080", Want: 1, Max: 8,
		Local:   &api.FunctionLocal{Function: "hello", Requests: 2},
		Cluster: &api.FunctionLocal{Function: "hello", Requests: 42, QueueFull: 1},
	}}, Gateways: []api.NodeGateway{{Node: 1}, {Node: 2}, {Node: 3, Error: "marked down"}}}
	var b strings.Builder
	if err := writeFunctions(&b, v); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"  42  ", "1 queue full (503)", "summed over the gateways of nodes 1, 2", "not counted: node 3: marked down"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "gateway only") {
		t.Errorf("a cluster-wide view says it is one node's:\n%s", out)
	}
}
