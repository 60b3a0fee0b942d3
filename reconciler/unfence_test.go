package reconciler

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
)

// fenced returns a node in state st whose addresses fence were fenced and
// whose last heartbeat reported reported.
func fenced(id uint64, st replicated.NodeState, fence, reported []string) *replicated.Node {
	n := mkNode(id, st, 4, 4096)
	n.CephAddrs = append(slices.Clone(fence), reported...)
	// Copies: Apply edits the state's lists in place.
	n.Fenced, n.ReportedCephAddrs = slices.Clone(fence), slices.Clone(reported)
	return n
}

func TestNodesToUnfence(t *testing.T) {
	old := []string{"10.0.0.1:0/100", "10.0.0.1:0/101"}
	fresh := []string{"10.0.0.1:0/200"}
	tests := []struct {
		name  string
		nodes map[uint64]*replicated.Node
		want  []Unfence
	}{
		{"a ready node reporting only new clients is unfenced",
			mkNodes(fenced(1, replicated.NodeReady, old, fresh)),
			[]Unfence{{Node: 1, Addrs: old}}},
		{"a down node keeps its fence whatever it reports",
			mkNodes(fenced(1, replicated.NodeDown, old, fresh)), nil},
		{"a ready node still reporting a fenced client keeps its fence",
			mkNodes(fenced(1, replicated.NodeReady, old, []string{"10.0.0.1:0/200", "10.0.0.1:0/101"})), nil},
		{"a ready node that reported nothing since keeps its fence",
			mkNodes(fenced(1, replicated.NodeReady, old, nil)), nil},
		{"a node without a fence is not listed",
			mkNodes(fenced(1, replicated.NodeReady, nil, fresh)), nil},
		{"cordoned and draining nodes that are back are unfenced too",
			mkNodes(fenced(1, replicated.NodeCordoned, old, fresh), fenced(2, replicated.NodeDraining, []string{"10.0.0.2:0/1"}, []string{"10.0.0.2:0/2"})),
			[]Unfence{{Node: 1, Addrs: old}, {Node: 2, Addrs: []string{"10.0.0.2:0/1"}}}},
		{"nodes are listed by id",
			mkNodes(fenced(3, replicated.NodeReady, []string{"c"}, []string{"c2"}), fenced(1, replicated.NodeReady, []string{"a"}, []string{"a2"}),
				fenced(2, replicated.NodeDown, []string{"b"}, []string{"b2"})),
			[]Unfence{{Node: 1, Addrs: []string{"a"}}, {Node: 3, Addrs: []string{"c"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := NodesToUnfence(tt.nodes); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("NodesToUnfence = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// fakeUnfencer stands in for Ceph's blocklist (tests/ceph lifts it for
// real): it records the addresses it was asked to lift.
type fakeUnfencer struct {
	err    error
	lifted map[uint64][]string
}

func (f *fakeUnfencer) Unfence(_ context.Context, n *replicated.Node, addrs []string) error {
	if f.err != nil {
		return f.err
	}
	if f.lifted == nil {
		f.lifted = map[uint64][]string{}
	}
	f.lifted[n.ID] = append(f.lifted[n.ID], addrs...)
	return nil
}

func TestPassLiftsTheFenceOfANodeBackWithNewClients(t *testing.T) {
	ctx := context.Background()
	old := []string{"10.0.0.1:0/100", "10.0.0.1:0/101"}
	for _, tt := range []struct {
		name       string
		unfencer   *fakeUnfencer
		node       *replicated.Node
		wantLifted []string
		wantErr    string
	}{
		{"a ready node reporting a new client has its old fence lifted and recorded",
			&fakeUnfencer{}, fenced(1, replicated.NodeReady, old, []string{"10.0.0.1:0/200"}), old, ""},
		{"a ready node still reporting its fenced client keeps the fence",
			&fakeUnfencer{}, fenced(1, replicated.NodeReady, old, old[:1]), nil, ""},
		{"a failed lift keeps the fence and is retried",
			&fakeUnfencer{err: errors.New("monitor unreachable")}, fenced(1, replicated.NodeReady, old, []string{"10.0.0.1:0/200"}), nil,
			"lifting the fence of its old ones [10.0.0.1:0/100 10.0.0.1:0/101] failed (retrying): monitor unreachable"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			store := testkit.NewStore(&replicated.State{Nodes: mkNodes(tt.node)})
			r := newTestReconciler(t, Options{Store: store, Source: loopSource{}, Evaluator: &countingEval{}, Unfencer: tt.unfencer})
			_, err := r.step(ctx)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || IsTerminal(err) {
					t.Fatalf("err = %v, want a transient error containing %q", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if got := tt.unfencer.lifted[1]; !reflect.DeepEqual(got, tt.wantLifted) {
				t.Fatalf("lifted %v, want %v", got, tt.wantLifted)
			}
			st, _ := store.Read(ctx)
			n := st.Nodes[1]
			if tt.wantLifted == nil {
				if p := store.ProposedOf(replicated.CmdUnfenceNode); len(p) != 0 || !reflect.DeepEqual(n.Fenced, old) {
					t.Fatalf("proposed %+v, fenced %v; want nothing proposed and the fence kept", p, n.Fenced)
				}
				return
			}
			if n.Fenced != nil || len(n.CephAddrs) != 1 || n.CephAddrs[0] != "10.0.0.1:0/200" {
				t.Fatalf("after the lift: fenced %v, ceph %v; want no fence and only the new client", n.Fenced, n.CephAddrs)
			}
			// The next pass (this leader or a new one) reads the record and
			// lifts nothing again.
			if _, err := r.step(ctx); err != nil {
				t.Fatal(err)
			}
			if p := store.ProposedOf(replicated.CmdUnfenceNode); len(p) != 1 || !reflect.DeepEqual(tt.unfencer.lifted[1], old) {
				t.Fatalf("after a second pass: proposed %+v, lifted %v; want one UnfenceNode and one lift", p, tt.unfencer.lifted[1])
			}
		})
	}
}
