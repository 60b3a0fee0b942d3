package api_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// gatewayStats is a node's gateway as the API sees it.
type gatewayStats []api.FunctionLocal

func (g gatewayStats) FunctionStats() []api.FunctionLocal { return g }

// TestFunctionsOfEveryNode: GET /v1/functions?nodes=all on node 1 asks
// node 2's API for its gateway's counts and sums them with its own; a node
// marked down and one that does not answer are named with why.
func TestFunctionsOfEveryNode(t *testing.T) {
	st := clusterState(t)
	st.Update(func(s *replicated.State) {
		s.Desired.Functions = map[string]spec.Function{"hello": {MaxInstances: 4, Concurrency: 2, IdleTimeout: time.Minute,
			HTTP: spec.FunctionHTTP{Host: "fn.test", Path: "/", Port: 8080}}}
		s.Nodes[3] = &replicated.Node{ID: 3, State: replicated.NodeDown, APIAddr: "127.0.0.1:1"}
		s.Nodes[4] = &replicated.Node{ID: 4, State: replicated.NodeReady, APIAddr: "127.0.0.1:1"} // nothing listens there
	})
	node2 := httptest.NewServer(api.NewServer(api.Options{Replica: testkit.NewReplica(st, 2, 1), Insecure: true,
		Functions: gatewayStats{{Function: "hello", Ready: 2, InFlight: 3, Requests: 40, ColdStarts: 2, QueueFull: 1,
			RequestP99: 30 * time.Millisecond}}}).Handler())
	defer node2.Close()
	st.Update(func(s *replicated.State) { s.Nodes[2].APIAddr = strings.TrimPrefix(node2.URL, "http://") })
	node1 := httptest.NewServer(api.NewServer(api.Options{Replica: testkit.NewReplica(st, 1, 1), Insecure: true,
		Functions: gatewayStats{{Function: "hello", Ready: 1, InFlight: 1, Requests: 2, RequestP99: 80 * time.Millisecond}}}).Handler())
	defer node1.Close()

	code, _, body := do(t, node1, "GET", "/v1/functions?nodes=all", "")
	if code != http.StatusOK {
		t.Fatalf("GET /v1/functions?nodes=all: HTTP %d: %s", code, body)
	}
	var v api.FunctionsView
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Functions) != 1 || v.Functions[0].Local == nil || v.Functions[0].Local.Requests != 2 {
		t.Fatalf("functions %+v: want hello with node 1's own counts as Local", v.Functions)
	}
	c := v.Functions[0].Cluster
	if c == nil || c.Requests != 42 || c.InFlight != 4 || c.ColdStarts != 2 || c.QueueFull != 1 || c.Ready != 2 || c.RequestP99 != 80*time.Millisecond {
		t.Fatalf("cluster counts %+v: want 42 requests, 4 in flight, 2 cold starts, 1 queue full, 2 ready, p99 the highest node's 80ms", c)
	}
	errs := map[uint64]string{}
	for _, g := range v.Gateways {
		errs[g.Node] = g.Error
	}
	if len(v.Gateways) != 4 || errs[1] != "" || errs[2] != "" || errs[3] != "marked down" || !strings.Contains(errs[4], "unreachable at 127.0.0.1:1") {
		t.Fatalf("gateways %+v: want nodes 1 and 2 answering, 3 marked down, 4 unreachable", v.Gateways)
	}

	code, _, body = do(t, node1, "GET", "/v1/functions", "")
	var local api.FunctionsView
	if err := json.Unmarshal(body, &local); code != http.StatusOK || err != nil || local.Gateways != nil || local.Functions[0].Cluster != nil {
		t.Fatalf("GET /v1/functions without nodes=all: HTTP %d, %v, %+v: want this node's counts only", code, err, local)
	}
	code, _, body = do(t, node1, "GET", "/v1/functions?nodes=some", "")
	if code != http.StatusBadRequest || !strings.Contains(string(body), "want nodes=all") {
		t.Fatalf("nodes=some: HTTP %d %s, want 400 saying what is accepted", code, body)
	}
}
