package replicated_test

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
)

// viewBase is three registered nodes, a plan with a on 1, b on 2, c on 3,
// and one heartbeat of each node reporting its instance running.
func viewBase(t testing.TB) (*replicated.State, uint64) {
	t.Helper()
	st := replicated.NewState()
	var idx uint64
	apply := func(cmd replicated.Command) {
		idx++
		if res := st.Apply(idx, cmd); !res.OK() {
			t.Fatalf("applying %s: %s", cmd.Type, res.Message)
		}
	}
	for id := uint64(1); id <= 3; id++ {
		reg := testkit.Register(id)
		reg.RegisterNode.GatewayAddr = fmt.Sprintf("10.0.0.%d:8080", id)
		apply(reg)
	}
	apply(testkit.Plan(0, "c1", testkit.Assign("a", 1, "v1"), testkit.Assign("b", 2, "v1"), testkit.Assign("c", 3, "v1")))
	for id, vm := range map[uint64]string{1: "a", 2: "b", 3: "c"} {
		apply(heartbeat(id, 1, status(vm, id, replicated.PhaseRunning, st.Assignments[vm].Generation)))
	}
	return st, idx
}

func status(vm string, node uint64, phase replicated.Phase, gen uint64) replicated.VMStatus {
	return replicated.VMStatus{VM: vm, Node: node, Phase: phase, Generation: gen, ObservedAt: testkit.T0}
}

// heartbeat is node id's heartbeat number seq (one epoch) at T0+seq s.
func heartbeat(id, seq uint64, sts ...replicated.VMStatus) replicated.Command {
	return replicated.Command{V: replicated.CommandVersion, Type: replicated.CmdNodeHeartbeat, At: testkit.T0.Add(time.Duration(seq) * time.Second),
		NodeHeartbeat: &replicated.NodeHeartbeat{ID: id, Epoch: 7, Seq: seq, Statuses: sts}}
}

func allParts() []replicated.ViewPart {
	return append(replicated.BaseViewParts(), replicated.OptionalViewParts()...)
}

func versions(v *replicated.Views, id uint64) map[replicated.ViewPart]string {
	out := map[replicated.ViewPart]string{}
	for _, p := range allParts() {
		e, ok := v.Part(id, p)
		if ok {
			out[p] = e.Version
		}
	}
	return out
}

// TestViewChanges: which parts of node 1's view change on which command.
// The point of the parts: a heartbeat of another node that changes no
// status node 1 sees changes nothing node 1 holds (except the opt-in
// running part when a phase changed).
func TestViewChanges(t *testing.T) {
	const (
		self     = replicated.ViewSelf
		work     = replicated.ViewWork
		statuses = replicated.ViewStatuses
		nodes    = replicated.ViewNodes
		network  = replicated.ViewNetwork
		place    = replicated.ViewPlacement
		running  = replicated.ViewRunning
	)
	gen := func(st *replicated.State, vm string) uint64 { return st.Assignments[vm].Generation }
	for _, tc := range []struct {
		name string
		prep func(st *replicated.State) replicated.Command // applied before the views compared
		cmd  func(st *replicated.State) replicated.Command
		want []replicated.ViewPart
	}{
		{"another node's heartbeat, statuses unchanged", nil,
			func(st *replicated.State) replicated.Command {
				return heartbeat(2, 2, status("b", 2, replicated.PhaseRunning, gen(st, "b")))
			}, nil},
		{"another node's heartbeat, its phase changed", nil,
			func(st *replicated.State) replicated.Command {
				return heartbeat(2, 2, status("b", 2, replicated.PhaseFailed, gen(st, "b")))
			}, []replicated.ViewPart{running}},
		{"another node's heartbeat, only times changed", nil,
			func(st *replicated.State) replicated.Command {
				s := status("b", 2, replicated.PhaseRunning, gen(st, "b"))
				s.ObservedAt = s.ObservedAt.Add(time.Hour)
				return heartbeat(2, 2, s)
			}, nil},
		{"own heartbeat, statuses unchanged", nil,
			func(st *replicated.State) replicated.Command {
				return heartbeat(1, 2, status("a", 1, replicated.PhaseRunning, gen(st, "a")))
			}, []replicated.ViewPart{self}},
		{"own heartbeat, a status changed", nil,
			func(st *replicated.State) replicated.Command {
				return heartbeat(1, 2, status("a", 1, replicated.PhaseStopping, gen(st, "a")))
			}, []replicated.ViewPart{self, statuses, running}},
		{"the old node reports an instance moved here stopped",
			func(st *replicated.State) replicated.Command {
				return testkit.Plan(st.Revision.ID, "c2", testkit.Assign("a", 1, "v1"), testkit.Assign("b", 1, "v1"), testkit.Assign("c", 3, "v1"))
			},
			func(st *replicated.State) replicated.Command {
				return heartbeat(2, 2, status("b", 2, replicated.PhaseStopped, 0))
			}, []replicated.ViewPart{statuses, running}},
		{"a plan moves an instance here", nil,
			func(st *replicated.State) replicated.Command {
				return testkit.Plan(st.Revision.ID, "c2", testkit.Assign("a", 1, "v1"), testkit.Assign("b", 1, "v1"), testkit.Assign("c", 3, "v1"))
			}, []replicated.ViewPart{work, statuses, place}},
		{"a plan changes only another node's instance", nil,
			func(st *replicated.State) replicated.Command {
				return testkit.Plan(st.Revision.ID, "c2", testkit.Assign("a", 1, "v1"), testkit.Assign("b", 2, "v2"), testkit.Assign("c", 3, "v1"))
			}, []replicated.ViewPart{work, place}}, // work: the revision moved
		{"another node cordoned", nil,
			func(*replicated.State) replicated.Command {
				return replicated.Command{V: 1, Type: replicated.CmdSetNodeState, At: testkit.T0,
					SetNodeState: &replicated.SetNodeState{ID: 2, State: replicated.NodeCordoned}}
			}, []replicated.ViewPart{nodes}},
		{"this node cordoned", nil,
			func(*replicated.State) replicated.Command {
				return replicated.Command{V: 1, Type: replicated.CmdSetNodeState, At: testkit.T0,
					SetNodeState: &replicated.SetNodeState{ID: 1, State: replicated.NodeCordoned}}
			}, []replicated.ViewPart{self, nodes}},
		{"an instance here stopped by an operator", nil,
			func(*replicated.State) replicated.Command {
				return replicated.Command{V: 1, Type: replicated.CmdSetVMRunState, At: testkit.T0,
					SetVMRunState: &replicated.SetVMRunState{VM: "a", Want: replicated.RunStateStopped}}
			}, []replicated.ViewPart{work, place}},
		{"another node's instance stopped by an operator", nil,
			func(*replicated.State) replicated.Command {
				return replicated.Command{V: 1, Type: replicated.CmdSetVMRunState, At: testkit.T0,
					SetVMRunState: &replicated.SetVMRunState{VM: "b", Want: replicated.RunStateStopped}}
			}, []replicated.ViewPart{place}}, // ingress and DNS drop it at once
		{"another node re-registers with other labels and capacity", nil,
			func(*replicated.State) replicated.Command {
				c := testkit.Register(2)
				c.RegisterNode.Labels = map[string]string{"zone": "b"}
				c.RegisterNode.Capacity.VCPU = 99
				c.RegisterNode.GatewayAddr = "10.0.0.2:8080" // as before
				return c
			}, nil},
		{"a new node registers", nil,
			func(*replicated.State) replicated.Command { return testkit.Register(4) },
			[]replicated.ViewPart{nodes}}, // its overlay address comes with the next plan
		{"a sync request", nil,
			func(*replicated.State) replicated.Command {
				return replicated.Command{V: 1, Type: replicated.CmdRequestSync, At: testkit.T0, RequestSync: &replicated.RequestSync{}}
			}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, idx := viewBase(t)
			if tc.prep != nil {
				idx++
				if res := st.Apply(idx, tc.prep(st)); !res.OK() {
					t.Fatalf("prep: %s", res.Message)
				}
			}
			prev := replicated.ComputeViews(st, replicated.OptionalViewParts(), nil)
			before := versions(prev, 1)
			cmd := tc.cmd(st)
			if res := st.Apply(idx+1, cmd); !res.OK() {
				t.Fatalf("applying %s: %s", cmd.Type, res.Message)
			}
			after := replicated.ComputeViews(st, replicated.OptionalViewParts(), prev)
			// Reusing the previous encodings must give what encoding
			// everything again gives.
			if fresh := versions(replicated.ComputeViews(st, replicated.OptionalViewParts(), nil), 1); !maps.Equal(fresh, versions(after, 1)) {
				t.Errorf("versions computed from the previous views %v differ from those computed afresh %v", versions(after, 1), fresh)
			}
			if after.Applied != idx+1 {
				t.Errorf("Applied = %d, want %d", after.Applied, idx+1)
			}
			got := after.Changed(1, allParts(), before)
			if !slices.Equal(got, tc.want) {
				t.Errorf("changed parts of node 1's view = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestViewState: the state rebuilt from node 1's view has, for every
// field the agent, the cache sharing and the network component read,
// what the full state has.
func TestViewState(t *testing.T) {
	st, idx := viewBase(t)
	// b moves to node 1; node 2 still reports it running.
	if res := st.Apply(idx+1, testkit.Plan(st.Revision.ID, "c2", testkit.Assign("a", 1, "v1"), testkit.Assign("b", 1, "v1"),
		testkit.Assign("c", 3, "v1"))); !res.OK() {
		t.Fatal(res.Message)
	}
	if res := st.Apply(idx+2, replicated.Command{V: 1, Type: replicated.CmdSetVMRunState, At: testkit.T0,
		SetVMRunState: &replicated.SetVMRunState{VM: "a", Restart: true}}); !res.OK() {
		t.Fatal(res.Message)
	}
	// c (node 3's, running) is kept stopped by an operator: ingress and
	// DNS on other nodes leave it out before node 3 stops it.
	if res := st.Apply(idx+3, replicated.Command{V: 1, Type: replicated.CmdSetVMRunState, At: testkit.T0,
		SetVMRunState: &replicated.SetVMRunState{VM: "c", Want: replicated.RunStateStopped}}); !res.OK() {
		t.Fatal(res.Message)
	}
	if st.Assignments["c"].Stopped == "" {
		t.Fatalf("c is not kept stopped after vm stop: %+v", st.Assignments["c"])
	}
	for _, tc := range []struct {
		name     string
		optional []replicated.ViewPart
	}{{"base parts", nil}, {"with placement and running", replicated.OptionalViewParts()}} {
		t.Run(tc.name, func(t *testing.T) {
			views := replicated.ComputeViews(st, tc.optional, nil)
			parts := map[replicated.ViewPart]replicated.EncodedPart{}
			for _, p := range append(replicated.BaseViewParts(), tc.optional...) {
				e, ok := views.Part(1, p)
				if !ok {
					t.Fatalf("part %s missing", p)
				}
				parts[p] = e
			}
			av, err := (&replicated.AgentView{}).Merge(views.Applied, parts)
			if err != nil {
				t.Fatal(err)
			}
			got := av.State(1)
			if got.Applied != st.Applied {
				t.Errorf("Applied = %d, want %d", got.Applied, st.Applied)
			}
			if !reflect.DeepEqual(got.Nodes[1], st.Nodes[1]) {
				t.Errorf("own node = %s\nwant %s", testkit.JSON(t, got.Nodes[1]), testkit.JSON(t, st.Nodes[1]))
			}
			for id, n := range st.Nodes {
				g := got.Nodes[id]
				if g == nil || g.State != n.State || g.RaftAddr != n.RaftAddr || g.CacheURL != n.CacheURL || g.CacheKey != n.CacheKey ||
					g.GatewayAddr != n.GatewayAddr {
					t.Errorf("node %d = %+v, want the slow fields of %+v", id, g, n)
				}
			}
			if !reflect.DeepEqual(got.Revision, st.Revision) {
				t.Errorf("revision = %+v, want %+v", got.Revision, st.Revision)
			}
			if got.Network == nil || got.Network.CIDR != st.Network.CIDR || got.Network.Gateway != st.Network.Gateway ||
				!maps.Equal(got.Network.NodeAddrs, st.Network.NodeAddrs) {
				t.Fatalf("network = %+v, want %+v", got.Network, st.Network)
			}
			wantIDs := map[string]replicated.Identity{}
			for name, id := range st.Network.Identities {
				if st.Assignments[name].Node == 1 || tc.optional != nil {
					wantIDs[name] = id
				}
			}
			if len(wantIDs) == 0 || !maps.Equal(got.Network.Identities, wantIDs) {
				t.Errorf("identities = %v, want %v", got.Network.Identities, wantIDs)
			}
			if got.Desired == nil || got.Desired.Name != st.Desired.Name {
				t.Errorf("desired = %+v, want the cluster's name %q", got.Desired, st.Desired.Name)
			}
			for name, a := range st.Assignments {
				if a.Node == 1 && !reflect.DeepEqual(got.Assignments[name], a) {
					t.Errorf("assignment %s = %+v, want %+v", name, got.Assignments[name], a)
				}
				if o, ok := st.Observed[name]; ok && a.Node == 1 && !reflect.DeepEqual(got.Observed[name], o) {
					t.Errorf("status of %s (assigned here) = %+v, want %+v", name, got.Observed[name], o)
				}
			}
			if got.Observed["b"].Node != 2 {
				t.Errorf("b's status (the old node's report, for the hand-over) = %+v, want node 2's", got.Observed["b"])
			}
			// Run controls of the node's own instances (the others' show
			// as their assignments' Stopped).
			wantRC := maps.Clone(st.RunControls)
			maps.DeleteFunc(wantRC, func(name string, _ replicated.RunControl) bool { return st.Assignments[name].Node != 1 })
			if !maps.Equal(got.RunControls, wantRC) {
				t.Errorf("run controls = %v, want %v", got.RunControls, wantRC)
			}
			_, hasC := got.Assignments["c"]
			if hasC != (tc.optional != nil) {
				t.Errorf("c (node 3's) in the rebuilt assignments: %v, want %v", hasC, tc.optional != nil)
			}
			if tc.optional != nil {
				if c := got.Assignments["c"]; c.Node != 3 || c.OutPath != st.Assignments["c"].OutPath || c.Stopped != st.Assignments["c"].Stopped {
					t.Errorf("c = %+v", got.Assignments["c"])
				}
				if got.Observed["c"].Phase != replicated.PhaseRunning || got.Observed["c"].Node != 3 {
					t.Errorf("c's status = %+v", got.Observed["c"])
				}
			}
		})
	}
}

// TestViewUnknownNode: a node the state does not know gets empty parts.
func TestViewUnknownNode(t *testing.T) {
	st, _ := viewBase(t)
	v := replicated.ComputeViews(st, nil, nil)
	parts := map[replicated.ViewPart]replicated.EncodedPart{}
	for _, p := range replicated.BaseViewParts() {
		e, ok := v.Part(9, p)
		if !ok {
			t.Fatalf("part %s missing", p)
		}
		parts[p] = e
	}
	if _, ok := v.Part(9, replicated.ViewRunning); ok {
		t.Errorf("running part present although not asked for")
	}
	av, err := (&replicated.AgentView{}).Merge(v.Applied, parts)
	if err != nil {
		t.Fatal(err)
	}
	got := av.State(9)
	if got.Nodes[9] != nil || len(got.Observed) != 0 {
		t.Errorf("unknown node's state has its record or statuses: %s", testkit.JSON(t, got))
	}
	if len(got.Assignments) != 0 {
		t.Errorf("assignments = %v, want none", got.Assignments)
	}
	if _, err := (&replicated.AgentView{}).Merge(1, map[replicated.ViewPart]replicated.EncodedPart{"self": {Data: []byte("{")}}); err == nil {
		t.Errorf("a broken part merged without an error")
	}
}

// viewScale is nodes nodes with vms instances spread over them, each
// reported running.
func viewScale(b testing.TB, nodes, vms int) *replicated.State {
	st := replicated.NewState()
	var idx uint64
	for id := uint64(1); id <= uint64(nodes); id++ {
		idx++
		st.Apply(idx, testkit.Register(id))
	}
	as := make([]replicated.Assignment, 0, vms)
	for i := range vms {
		as = append(as, testkit.Assign(fmt.Sprintf("vm%05d", i), uint64(i%nodes)+1, "v1"))
	}
	idx++
	if res := st.Apply(idx, testkit.Plan(0, "c1", as...)); !res.OK() {
		b.Fatal(res.Message)
	}
	byNode := map[uint64][]replicated.VMStatus{}
	for name, a := range st.Assignments {
		byNode[a.Node] = append(byNode[a.Node], status(name, a.Node, replicated.PhaseRunning, a.Generation))
	}
	for id, sts := range byNode {
		idx++
		st.Apply(idx, heartbeat(id, 1, sts...))
	}
	return st
}

// BenchmarkComputeViews: one coalesced computation of every node's view
// at 1,000 nodes × 10,000 VMs, with and without the opt-in parts: from
// scratch (a server's first), and after 50 heartbeats (what ~100 ms of
// 1,000 nodes heartbeating brings), one of them with a changed status;
// it reports the bytes of one node's base parts and of the opt-in parts.
func BenchmarkComputeViews(b *testing.B) {
	st := viewScale(b, 1000, 10000)
	for _, tc := range []struct {
		name        string
		optional    []replicated.ViewPart
		incremental bool
	}{{"base/scratch", nil, false}, {"base/incremental", nil, true},
		{"with-placement-running/scratch", replicated.OptionalViewParts(), false},
		{"with-placement-running/incremental", replicated.OptionalViewParts(), true}} {
		b.Run(tc.name, func(b *testing.B) {
			var v *replicated.Views
			prev := replicated.ComputeViews(st, tc.optional, nil)
			seq := uint64(1)
			for b.Loop() {
				if !tc.incremental {
					v = replicated.ComputeViews(st, tc.optional, nil)
					continue
				}
				b.StopTimer()
				seq++
				for id := uint64(1); id <= 50; id++ {
					var sts []replicated.VMStatus
					for name, a := range st.Assignments {
						if a.Node == id {
							phase := replicated.PhaseRunning
							if id == 1 && seq%2 == 0 {
								phase = replicated.PhaseStopping
							}
							sts = append(sts, status(name, id, phase, a.Generation))
						}
					}
					st.Apply(st.Applied+1, heartbeat(id, seq, sts...))
				}
				b.StartTimer()
				v = replicated.ComputeViews(st, tc.optional, prev)
				prev = v
			}
			size := 0
			for _, p := range replicated.BaseViewParts() {
				e, _ := v.Part(500, p)
				size += len(e.Data)
			}
			b.ReportMetric(float64(size), "base-bytes/node")
			opt := 0
			for _, p := range tc.optional {
				e, _ := v.Part(500, p)
				opt += len(e.Data)
			}
			b.ReportMetric(float64(opt), "optional-bytes")
		})
	}
}

// BenchmarkAgentViewState: an agent-only node's state rebuilt from its
// view at 1,000 nodes × 10,000 VMs (after every merge a state is read)
// and the deep copy LocalRead makes of it.
func BenchmarkAgentViewState(b *testing.B) {
	views := replicated.ComputeViews(viewScale(b, 1000, 10000), nil, nil)
	parts := map[replicated.ViewPart]replicated.EncodedPart{}
	for _, p := range replicated.BaseViewParts() {
		parts[p], _ = views.Part(500, p)
	}
	v, err := (&replicated.AgentView{}).Merge(views.Applied, parts)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("state", func(b *testing.B) {
		for b.Loop() {
			if st := v.State(500); len(st.Nodes) != 1000 {
				b.Fatalf("%d nodes", len(st.Nodes))
			}
		}
	})
	b.Run("clone", func(b *testing.B) {
		st := v.State(500)
		for b.Loop() {
			st.Clone()
		}
	})
}

// TestViewWithAhead: an instance a server started ahead of its commit on
// node 1 changes node 1's work part only; node 1's agent and network
// (StateAhead) see it assigned with its identity, its gateway (State)
// does not; once the state holds it, the plain computation gives node 1
// the same assignment without the Ahead mark.
func TestViewWithAhead(t *testing.T) {
	st, _ := viewBase(t)
	views := replicated.ComputeViews(st, replicated.OptionalViewParts(), nil)
	guessed := st.Clone()
	guessed.Assignments["fn-hello-0"] = replicated.Assignment{VM: "fn-hello-0", Declared: "fn-hello-0", Function: "hello", Node: 1,
		Drv: "/nix/store/fn.drv", OutPath: "/nix/store/fn", VCPU: 1, MemMiB: 256}
	if guessed.Network == nil {
		guessed.Network = &replicated.Network{}
	}
	guessed.Network.Identities = maps.Clone(guessed.Network.Identities)
	if guessed.Network.Identities == nil {
		guessed.Network.Identities = map[string]replicated.Identity{}
	}
	guessed.Network.Identities["fn-hello-0"] = replicated.Identity{Tap: "bx-fnhello0"}

	if same := views.WithAhead(1, guessed, nil); same != views {
		t.Error("WithAhead with nothing ahead made new views")
	}
	ahead := views.WithAhead(1, guessed, []string{"fn-hello-0"})
	before, after := versions(views, 1), versions(ahead, 1)
	for _, p := range allParts() {
		if changed := before[p] != after[p]; changed != (p == replicated.ViewWork) {
			t.Errorf("node 1's part %s changed: %v; want only the work part changed", p, changed)
		}
	}
	for id := uint64(2); id <= 3; id++ {
		if !maps.Equal(versions(views, id), versions(ahead, id)) {
			t.Errorf("node %d's view changed; the instance ahead is node 1's business only", id)
		}
	}
	if !maps.Equal(versions(views, 1), before) {
		t.Error("WithAhead changed the views it was given")
	}

	parts := map[replicated.ViewPart]replicated.EncodedPart{}
	for _, p := range allParts() {
		parts[p], _ = ahead.Part(1, p)
	}
	av, err := (&replicated.AgentView{}).Merge(ahead.Applied, parts)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(av.Work.Ahead, []string{"fn-hello-0"}) {
		t.Errorf("work part's Ahead %v, want [fn-hello-0]", av.Work.Ahead)
	}
	withAhead, plain := av.StateAhead(1), av.State(1)
	if a, ok := withAhead.Assignments["fn-hello-0"]; !ok || a.Node != 1 || withAhead.Network.Identities["fn-hello-0"].Tap != "bx-fnhello0" {
		t.Errorf("StateAhead: fn-hello-0 %+v (assigned %v), identity %+v; want it on node 1 with its identity",
			a, ok, withAhead.Network.Identities["fn-hello-0"])
	}
	if _, ok := plain.Assignments["fn-hello-0"]; ok {
		t.Error("State assigns the instance started ahead: the gateway would dispatch to an instance nothing committed")
	}
	if _, ok := plain.Network.Identities["fn-hello-0"]; ok {
		t.Error("State has the identity of the instance started ahead")
	}
	if _, ok := plain.Assignments["a"]; !ok {
		t.Error("State lost node 1's committed instance a")
	}

	// Committed (a scale-out moves PlanInputs): the plain computation, no
	// Ahead mark, the same assignment.
	guessed.PlanInputs++
	committed := replicated.ComputeViews(guessed, replicated.OptionalViewParts(), views)
	e, _ := committed.Part(1, replicated.ViewWork)
	av2, err := (&replicated.AgentView{}).Merge(committed.Applied, map[replicated.ViewPart]replicated.EncodedPart{replicated.ViewWork: e})
	if err != nil {
		t.Fatal(err)
	}
	if len(av2.Work.Ahead) != 0 || !reflect.DeepEqual(av2.Work.Assignments["fn-hello-0"], av.Work.Assignments["fn-hello-0"]) {
		t.Errorf("committed work part %+v; want fn-hello-0 as it was ahead, without the Ahead mark", av2.Work)
	}
}
