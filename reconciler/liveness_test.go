package reconciler

import (
	"reflect"
	"testing"
	"time"

	"github.com/blixard/blixard/replicated"
)

func TestLiveness(t *testing.T) {
	t0 := time.Unix(1000, 0)
	node := func(id, seq uint64, st replicated.NodeState) *replicated.Node {
		return &replicated.Node{ID: id, State: st, LastHeartbeatSeq: seq}
	}
	const timeout = 10 * time.Second
	tests := []struct {
		name  string
		prev  Heartbeats
		nodes map[uint64]*replicated.Node
		now   time.Time
		stale []uint64
	}{
		{"a new leader gives every node a full timeout of grace",
			nil, mkNodes(node(1, 5, replicated.NodeReady), node(2, 9, replicated.NodeReady)), t0, nil},
		{"a node whose sequence advanced is alive however old its last stamp",
			Heartbeats{1: {Seq: 5, At: t0}}, mkNodes(node(1, 6, replicated.NodeReady)), t0.Add(time.Hour), nil},
		{"a node silent for longer than the timeout is stale",
			Heartbeats{1: {Seq: 5, At: t0}, 2: {Seq: 3, At: t0.Add(5 * time.Second)}},
			mkNodes(node(1, 5, replicated.NodeReady), node(2, 3, replicated.NodeReady)), t0.Add(11 * time.Second), []uint64{1}},
		{"silent exactly the timeout is not stale yet",
			Heartbeats{1: {Seq: 5, At: t0}}, mkNodes(node(1, 5, replicated.NodeReady)), t0.Add(timeout), nil},
		{"cordoned and draining nodes can be stale, down nodes are not listed again",
			Heartbeats{1: {Seq: 1, At: t0}, 2: {Seq: 1, At: t0}, 3: {Seq: 1, At: t0}},
			mkNodes(node(1, 1, replicated.NodeCordoned), node(2, 1, replicated.NodeDraining), node(3, 1, replicated.NodeDown)),
			t0.Add(time.Minute), []uint64{1, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hb := ObserveHeartbeats(tt.prev, tt.nodes, tt.now)
			if got := StaleNodes(hb, tt.nodes, tt.now, timeout); !reflect.DeepEqual(got, tt.stale) {
				t.Fatalf("stale = %v, want %v", got, tt.stale)
			}
		})
	}
}

func TestObserveHeartbeatsDropsUnregisteredNodesAndKeepsPrev(t *testing.T) {
	t0 := time.Unix(1000, 0)
	prev := Heartbeats{1: {Seq: 1, At: t0}, 7: {Seq: 2, At: t0}}
	next := ObserveHeartbeats(prev, mkNodes(&replicated.Node{ID: 1, LastHeartbeatSeq: 1}), t0.Add(time.Second))
	if _, ok := next[7]; ok {
		t.Error("unregistered node 7 kept")
	}
	if next[1].At != t0 {
		t.Errorf("unchanged sequence restamped: %v", next[1].At)
	}
	if len(prev) != 2 {
		t.Error("prev modified")
	}
}

// TestObserveHeartbeatsGivesAReadiedNodeFreshGrace: a node made ready again
// (`blixard node ready`) must not be judged on the silence of its time
// down; without a new stamp it would be marked down again at once.
func TestObserveHeartbeatsGivesAReadiedNodeFreshGrace(t *testing.T) {
	t0 := time.Unix(1000, 0)
	down := &replicated.Node{ID: 1, State: replicated.NodeDown, LastHeartbeatSeq: 7}
	hb := ObserveHeartbeats(nil, map[uint64]*replicated.Node{1: down}, t0)
	hb = ObserveHeartbeats(hb, map[uint64]*replicated.Node{1: down}, t0.Add(time.Minute))
	if hb[1].At != t0 {
		t.Fatalf("a node staying down was re-stamped: %+v", hb[1])
	}
	ready := &replicated.Node{ID: 1, State: replicated.NodeReady, LastHeartbeatSeq: 7}
	readiedAt := t0.Add(2 * time.Minute)
	hb = ObserveHeartbeats(hb, map[uint64]*replicated.Node{1: ready}, readiedAt)
	if hb[1].At != readiedAt || hb[1].Down {
		t.Fatalf("readied node: %+v, want stamped at %s", hb[1], readiedAt)
	}
	if stale := StaleNodes(hb, map[uint64]*replicated.Node{1: ready}, readiedAt.Add(time.Second), 10*time.Second); len(stale) != 0 {
		t.Fatalf("a node readied a second ago is judged silent: %v", stale)
	}
}
