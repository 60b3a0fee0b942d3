package node

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/blixard/blixard/fngateway"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// TestGatewayFunctions: the gateway's view of the replicated state.
func TestGatewayFunctions(t *testing.T) {
	fn := spec.Function{HTTP: spec.FunctionHTTP{Host: "fn.test", Path: "/", Port: 8080}, MinInstances: 0, MaxInstances: 4, Concurrency: 2}
	as := func(name string, node uint64) replicated.Assignment {
		return replicated.Assignment{VM: name, Declared: "hello", Function: "hello", Node: node, Generation: 7}
	}
	obs := func(name string, node uint64, ph replicated.Phase, h replicated.HealthState) replicated.VMStatus {
		return replicated.VMStatus{VM: name, Node: node, Phase: ph, Health: h, Generation: 7, Message: "boom"}
	}
	for _, tc := range []struct {
		name     string
		assigned []replicated.Assignment
		observed []replicated.VMStatus
		want     string // instances "name:ready|starting" …; then "fail" when StartFailure is set
	}{
		{name: "none"},
		{name: "assigned, not reported: starting", assigned: []replicated.Assignment{as("fn-hello-0", 1)}, want: "fn-hello-0:starting"},
		{name: "running and healthy: ready", assigned: []replicated.Assignment{as("fn-hello-0", 1)},
			observed: []replicated.VMStatus{obs("fn-hello-0", 1, replicated.PhaseRunning, replicated.Healthy)}, want: "fn-hello-0:ready"},
		{name: "running, not probed yet: starting", assigned: []replicated.Assignment{as("fn-hello-0", 1)},
			observed: []replicated.VMStatus{obs("fn-hello-0", 1, replicated.PhaseRunning, "")}, want: "fn-hello-0:starting"},
		{name: "reported by the old node during a move: starting", assigned: []replicated.Assignment{as("fn-hello-0", 2)},
			observed: []replicated.VMStatus{obs("fn-hello-0", 1, replicated.PhaseRunning, replicated.Healthy)}, want: "fn-hello-0:starting"},
		{name: "all failed: start failure", assigned: []replicated.Assignment{as("fn-hello-0", 1)},
			observed: []replicated.VMStatus{obs("fn-hello-0", 1, replicated.PhaseFailed, "")}, want: "fail"},
		{name: "one failed, one starting: no failure yet", assigned: []replicated.Assignment{as("fn-hello-0", 1), as("fn-hello-1", 2)},
			observed: []replicated.VMStatus{obs("fn-hello-0", 1, replicated.PhaseFailed, "")}, want: "fn-hello-1:starting"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := &replicated.State{Desired: &spec.Cluster{Functions: map[string]spec.Function{"hello": fn}},
				Assignments: map[string]replicated.Assignment{}, Observed: map[string]replicated.VMStatus{},
				Network: &replicated.Network{Identities: map[string]replicated.Identity{}},
				Nodes:   map[uint64]*replicated.Node{1: {ID: 1, GatewayAddr: "10.9.0.1:8080"}, 2: {ID: 2, GatewayAddr: "10.9.0.2:8080"}}}
			for i, a := range tc.assigned {
				st.Assignments[a.VM] = a
				st.Network.Identities[a.VM] = replicated.Identity{Address: netip.AddrFrom4([4]byte{10, 0, 0, byte(2 + i)})}
			}
			for _, o := range tc.observed {
				st.Observed[o.VM] = o
			}
			fns := gatewayFunctions(st, 1)
			if len(fns) != 1 || fns[0].Name != "hello" || fns[0].Concurrency != 2 || fns[0].MaxInstances != 4 {
				t.Fatalf("functions %+v", fns)
			}
			got := ""
			for _, i := range fns[0].Instances {
				state := "starting"
				if i.Ready {
					state = "ready"
				}
				if got != "" {
					got += " "
				}
				got += i.Name + ":" + state
				if i.Addr.Port() != 8080 || !i.Addr.Addr().IsValid() {
					t.Errorf("%s at %s", i.Name, i.Addr)
				}
				// Node 2's instances through node 2's gateway; node 1's
				// (this gateway's own) straight.
				if want := map[uint64]string{2: "10.9.0.2:8080"}[i.Node]; i.Via != want {
					t.Errorf("%s on node %d via %q, want %q", i.Name, i.Node, i.Via, want)
				}
			}
			if fns[0].StartFailure != "" {
				got += "fail"
			}
			if got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestActiveFunctions(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0.Add(time.Minute)
	stats := []fngateway.Stats{
		{Function: "idle", Requests: 5, LastActive: t0},
		{Function: "moved", Requests: 6, LastActive: t0.Add(time.Second)},
		{Function: "busy", Requests: 1, InFlight: 1, LastActive: t0},
		{Function: "waiting", Queued: 2, LastActive: t0},
		{Function: "never", LastActive: t0}, // the gateway learned of it: not activity
	}
	got := activeFunctions(stats, map[string]uint64{"idle": 5, "moved": 5, "busy": 1}, now)
	want := map[string]time.Time{"moved": t0.Add(time.Second), "busy": now, "waiting": now}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if !got[k].Equal(v) {
			t.Errorf("%s: got %v, want %v", k, got[k], v)
		}
	}
}

// TestGatewayPeers: the addresses other gateways may connect from are the
// nodes' gateway, Raft and overlay addresses that are IP addresses.
func TestGatewayPeers(t *testing.T) {
	st := &replicated.State{
		Nodes: map[uint64]*replicated.Node{
			1: {ID: 1, RaftAddr: "10.0.0.1:7000", GatewayAddr: "10.1.0.1:8080"},
			2: {ID: 2, RaftAddr: "node2.example:7000"}, // a name: not an address to compare with
		},
		Network: &replicated.Network{NodeAddrs: map[uint64]netip.Addr{1: netip.MustParseAddr("10.100.0.2")}},
	}
	got := gatewayPeers(st)
	slices.SortFunc(got, netip.Addr.Compare)
	want := []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("10.100.0.2")}
	if !slices.Equal(got, want) {
		t.Errorf("peers %v, want %v", got, want)
	}
}
