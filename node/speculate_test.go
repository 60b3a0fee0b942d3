package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// aheadState is a committed state of three ready nodes running commit c1,
// whose spec has VM db on node 1 and function hello (0–3 instances).
func aheadState(t *testing.T) *replicated.State {
	t.Helper()
	return testkit.FunctionState(t, "hello", spec.Function{
		Runner: spec.Runner{Drv: "/nix/store/fn.drv", Out: "/nix/store/fn"}, VCPU: 1, MemMiB: 256,
		MaxInstances: 3, Concurrency: 4, IdleTimeout: time.Minute, HTTP: spec.FunctionHTTP{Host: "fn.test", Path: "/", Port: 8080}})
}

func applyOK(t *testing.T, st *replicated.State, cmd replicated.Command) {
	t.Helper()
	if res := st.Apply(st.Applied+1, cmd); !res.OK() {
		t.Fatalf("%s: %v", cmd.Type, res.Err())
	}
}

// scaleOutAt is the scale-out node's gateway proposes for hello to want,
// carrying the plan made from st (as functions.Want makes it).
func scaleOutAt(st *replicated.State, node uint64, want int) replicated.Command {
	sf := reconciler.ScaleOutPlan(st, replicated.ScaleFunction{Function: "hello", Kind: replicated.ScaleOut, Want: want,
		Node: node, Reason: "test"})
	return replicated.Command{Type: replicated.CmdScaleFunction, At: testkit.T0.Add(time.Minute), ScaleFunction: &sf}
}

func TestGuessFrom(t *testing.T) {
	st := aheadState(t)
	cmd := scaleOutAt(st, 2, 1)
	if cmd.ScaleFunction.Plan == nil {
		t.Fatal("the scale-out carries no plan")
	}
	g, ok := guessFrom(st, cmd, 2)
	a, placed := g.assignments["fn-hello-0"]
	if !ok || !placed || len(g.assignments) != 1 || a.Node != 2 || a.Function != "hello" {
		t.Fatalf("guess on the receiving node: %v %+v", ok, g)
	}
	if id := g.identities["fn-hello-0"]; !id.Address.IsValid() || id.Tap == "" {
		t.Errorf("the guessed instance has no identity: %+v", g.identities)
	}
	if g.inputs != st.PlanInputs || g.revision != st.Revision.ID {
		t.Errorf("guess made from inputs %d revision %d, the state's are %d and %d", g.inputs, g.revision, st.PlanInputs, st.Revision.ID)
	}
	if _, had := st.Assignments["fn-hello-0"]; had {
		t.Error("guessing changed the state it was made from")
	}
	// The guess is what the commit makes: the same assignment and
	// identity, bar the generation (the entry's index, unknown before).
	committed := st.Clone()
	applyOK(t, committed, func() replicated.Command { c := cmd; c.V = replicated.CommandVersion; return c }())
	got, want := a, committed.Assignments["fn-hello-0"]
	got.Generation, want.Generation = 0, 0
	if got.Node != want.Node || got.OutPath != want.OutPath || got.VCPU != want.VCPU || got.MemMiB != want.MemMiB ||
		g.identities["fn-hello-0"] != committed.Network.Identities["fn-hello-0"] {
		t.Errorf("guess %+v %+v, committed %+v %+v", a, g.identities["fn-hello-0"], want, committed.Network.Identities["fn-hello-0"])
	}

	for _, tc := range []struct {
		name string
		cmd  replicated.Command
		self uint64
	}{
		{"another node's instance", cmd, 1},
		{"no plan carried", replicated.Command{Type: replicated.CmdScaleFunction, ScaleFunction: &replicated.ScaleFunction{
			Function: "hello", Kind: replicated.ScaleOut, Want: 1, Node: 2}}, 2},
		{"refused: unknown function", func() replicated.Command {
			c := scaleOutAt(st, 2, 1)
			sf := *c.ScaleFunction
			sf.Function = "nope"
			c.ScaleFunction = &sf
			return c
		}(), 2},
		{"not a scale-out", testkit.Register(4), 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if g, ok := guessFrom(st, tc.cmd, tc.self); ok {
				t.Errorf("guess %+v", g)
			}
		})
	}
}

func TestOverlayGuesses(t *testing.T) {
	base := aheadState(t)
	cmd := scaleOutAt(base, 2, 1)
	g, ok := guessFrom(base, cmd, 2)
	if !ok {
		t.Fatal("no guess")
	}
	id := g.identities["fn-hello-0"]
	for _, tc := range []struct {
		name   string
		change func(s *replicated.State)
		want   bool // the guessed instance is in the overlay, with its identity
		same   bool // the overlay is the state itself
	}{
		{name: "the state it was made from", want: true},
		{name: "heartbeats since: still holds", want: true, change: func(s *replicated.State) {
			applyOK(t, s, replicated.Command{V: replicated.CommandVersion, Type: replicated.CmdNodeHeartbeat, At: testkit.T0,
				NodeHeartbeat: &replicated.NodeHeartbeat{ID: 3}})
		}},
		{name: "committed: the replica's own", same: true, change: func(s *replicated.State) {
			c := cmd
			c.V = replicated.CommandVersion
			applyOK(t, s, c)
		}},
		{name: "a planning input moved: still holds", want: true, change: func(s *replicated.State) {
			applyOK(t, s, testkit.Register(4))
		}},
		{name: "another revision", same: true, change: func(s *replicated.State) {
			rev := *s.Revision
			rev.ID++
			s.Revision = &rev
		}},
		{name: "no room left on the node", same: true, change: func(s *replicated.State) {
			s.Nodes[2].Capacity = replicated.Resources{VCPU: 8, MemMiB: 255}
		}},
		{name: "room for it beside what is assigned there", want: true, change: func(s *replicated.State) {
			s.Assignments["other"] = replicated.Assignment{VM: "other", Node: 2, VCPU: 7, MemMiB: 1024}
			s.Nodes[2].Capacity = replicated.Resources{VCPU: 8, MemMiB: 1280}
		}},
		{name: "no room beside what is assigned there", same: true, change: func(s *replicated.State) {
			s.Assignments["other"] = replicated.Assignment{VM: "other", Node: 2, VCPU: 8, MemMiB: 1024}
		}},
		{name: "the name is taken in the state", same: true, change: func(s *replicated.State) {
			s.Assignments["fn-hello-0"] = replicated.Assignment{VM: "fn-hello-0", Node: 3, Function: "hello"}
		}},
		{name: "its address is another instance's", same: true, change: func(s *replicated.State) {
			s.Network.Identities["other"] = replicated.Identity{Address: id.Address, Tap: "other"}
		}},
		{name: "its tap is another instance's", same: true, change: func(s *replicated.State) {
			s.Network.Identities["other"] = replicated.Identity{Address: netip.MustParseAddr("10.1.2.3"), Tap: id.Tap}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := base.Clone()
			if tc.change != nil {
				tc.change(s)
			}
			before := s.Clone()
			out := overlayGuesses(s, 2, []guess{g})
			if (out == s) != tc.same {
				t.Errorf("overlay is the state itself: %v, want %v", out == s, tc.same)
			}
			a, placed := out.Assignments["fn-hello-0"]
			gotID, hasID := out.Network.Identities["fn-hello-0"]
			if tc.want && (!placed || a.Node != 2 || !hasID || gotID != id) {
				t.Errorf("overlay lacks the guess: %+v %v %+v", a, placed, gotID)
			}
			if own, had := before.Assignments["fn-hello-0"]; !tc.want && (placed != had || a.Node != own.Node || a.Generation != own.Generation) {
				t.Errorf("overlay has the guess: %+v, the state's own: %+v", a, own)
			}
			if len(s.Assignments) != len(before.Assignments) || len(s.Network.Identities) != len(before.Network.Identities) {
				t.Error("the overlay changed the state it was given")
			}
		})
	}
	if out := overlayGuesses(base, 2, nil); out != base {
		t.Error("no guesses: not the state itself")
	}
	// Two guesses of the same instance (a notice's and the proposer's
	// own, say): the first counts, once.
	two := overlayGuesses(base, 2, []guess{g, g})
	if a := two.Assignments["fn-hello-0"]; a.Node != 2 || len(two.Assignments) != len(base.Assignments)+1 {
		t.Errorf("two guesses of one instance: %v", two.Assignments)
	}
}

// TestSpeculationPropose: while the scale-out is proposed, the node's
// state shows its instance and the agent was woken; once committed it
// stays (until the replica has it, or aheadHold), once refused, or
// failed, it shows it no more and the agent is woken to stop it.
func TestSpeculationPropose(t *testing.T) {
	st := aheadState(t)
	for _, tc := range []struct {
		name      string
		res       replicated.Result
		err       error
		kept      bool // still read after the proposal returned
		wakesLeft int  // wakes after the proposal returned
	}{
		{name: "committed", res: replicated.Result{Code: replicated.ResultOK}, kept: true},
		{name: "refused", res: replicated.Result{Code: replicated.ResultInvalid, Message: "no"}, wakesLeft: 1},
		{name: "outcome unknown", err: errors.New("timeout"), wakesLeft: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sp := newSpeculation(2, slog.New(slog.DiscardHandler))
			var wakes atomic.Int32
			sp.setWake(func() { wakes.Add(1) })
			read := speculativeState{nodeState: fixedState{st}, sp: sp}
			var during *replicated.State
			_, ahead, err := sp.propose(context.Background(), st, scaleOutAt(st, 2, 1),
				func(context.Context, replicated.Command) (replicated.Result, error) {
					during, _ = read.LocalRead()
					if n := wakes.Load(); n != 1 {
						t.Errorf("agent woken %d times before the proposal", n)
					}
					return tc.res, tc.err
				})
			if !ahead || !errors.Is(err, tc.err) {
				t.Fatalf("ahead %v, err %v", ahead, err)
			}
			if a, ok := during.Assignments["fn-hello-0"]; !ok || a.Node != 2 {
				t.Errorf("while proposing, the node's state lacks the instance: %v", during.Assignments)
			}
			after, _ := read.LocalRead()
			if _, ok := after.Assignments["fn-hello-0"]; ok != tc.kept {
				t.Errorf("after the proposal the guess is read: %v, want %v", ok, tc.kept)
			}
			if n := wakes.Load(); n != int32(1+tc.wakesLeft) {
				t.Errorf("agent woken %d times, want %d", n, 1+tc.wakesLeft)
			}
		})
	}
	t.Run("nothing placed here: proposed as it is", func(t *testing.T) {
		sp := newSpeculation(1, slog.New(slog.DiscardHandler))
		called := false
		_, ahead, err := sp.propose(context.Background(), st, scaleOutAt(st, 2, 1),
			func(context.Context, replicated.Command) (replicated.Result, error) {
				called = true
				return replicated.Result{}, nil
			})
		if ahead || err != nil || !called {
			t.Errorf("ahead %v, err %v, proposed %v", ahead, err, called)
		}
	})
}

// fixedState is a nodeState that reads st and proposes nothing.
type fixedState struct{ st *replicated.State }

func (f fixedState) LocalRead() (*replicated.State, error) { return f.st, nil }
func (f fixedState) Propose(context.Context, replicated.Command) (replicated.Result, error) {
	return replicated.Result{}, errors.New("fixedState proposes nothing")
}

func TestAheadTargets(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(s *replicated.State)
		want   map[uint64]string
	}{
		{name: "placed on the receiving node: none", want: map[uint64]string{}},
		{name: "the receiving node is full: the least loaded other's gateway", change: func(s *replicated.State) {
			s.Nodes[3].Capacity = replicated.Resources{}
		}, want: map[uint64]string{2: "10.0.0.2:8080"}},
		{name: "that node has no gateway: none", change: func(s *replicated.State) {
			s.Nodes[3].Capacity = replicated.Resources{}
			s.Nodes[2].GatewayAddr = ""
		}, want: map[uint64]string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := aheadState(t)
			for id, n := range st.Nodes {
				n.GatewayAddr = fmt.Sprintf("10.0.0.%d:8080", id)
			}
			if tc.change != nil {
				tc.change(st)
			}
			cmd := scaleOutAt(st, 3, 1)
			if got := aheadTargets(st, *cmd.ScaleFunction, 3); !maps.Equal(got, tc.want) {
				t.Errorf("targets %v, want %v (plan %+v)", got, tc.want, cmd.ScaleFunction.Plan)
			}
		})
	}
	st := aheadState(t)
	if got := aheadTargets(st, replicated.ScaleFunction{Function: "hello", Want: 1, Node: 3}, 3); len(got) != 0 {
		t.Errorf("no plan: targets %v", got)
	}
}

// TestSpeculationHold: a notice's guess is read until it expires, then
// the agent is woken to stop what nothing committed; the same notice
// again meanwhile adds nothing.
func TestSpeculationHold(t *testing.T) {
	st, g := noticeGuess(t, nil, 1)
	sp := newSpeculation(2, slog.New(slog.DiscardHandler))
	var wakes atomic.Int32
	sp.setWake(func() { wakes.Add(1) })
	read := speculativeState{nodeState: fixedState{st}, sp: sp}
	if !sp.hold(g, 300*time.Millisecond) {
		t.Fatal("the first notice's guess was not held")
	}
	if sp.hold(g, time.Minute) {
		t.Error("a second guess for the same function from the same inputs was held")
	}
	if s, _ := read.LocalRead(); s.Assignments["fn-hello-0"].Node != 2 {
		t.Errorf("while held, node 2 reads %v", s.Assignments)
	}
	testkit.WaitFor(t, 5*time.Second, "the guess expired", func() error {
		if s, _ := read.LocalRead(); s != st {
			return errors.New("still read")
		}
		return nil
	})
	testkit.WaitFor(t, 5*time.Second, "the agent woken at the expiry", func() error {
		if n := wakes.Load(); n != 2 {
			return fmt.Errorf("woken %d times", n)
		}
		return nil
	})
}

// TestSpeculationHoldReplacesOlder: a burst's next notice, once the first
// scale-out committed, is held in place of the first notice's guess; a
// guess of this node's own proposal stays.
func TestSpeculationHoldReplacesOlder(t *testing.T) {
	st, g := noticeGuess(t, nil, 1)
	sp := newSpeculation(2, slog.New(slog.DiscardHandler))
	if !sp.hold(g, time.Minute) {
		t.Fatal("the first guess was not held")
	}
	own := sp.add(g) // as this node's own proposal of the same function adds it
	first := scaleOutAt(st, 3, 1)
	first.V = replicated.CommandVersion
	next, g2 := noticeGuess(t, func(s *replicated.State) { applyOK(t, s, first) }, 2)
	if !sp.hold(g2, time.Minute) {
		t.Fatal("the next scale-out's guess was not held")
	}
	sp.mu.Lock()
	held := len(sp.guesses)
	_, kept := sp.guesses[own]
	sp.mu.Unlock()
	if held != 2 || !kept {
		t.Errorf("%d guesses held (own proposal's kept: %v), want the newer notice's and the own proposal's", held, kept)
	}
	if s := sp.overlay(next); s.Assignments["fn-hello-1"].Node != 2 || s.Assignments["fn-hello-0"].Node != 2 {
		t.Errorf("the committed instance and the newer guess are not both read: %v", s.Assignments)
	}
}

// noticeGuess is node 2's guess for node 3's scale-out of hello to want
// (node 3 has no room, node 1 room for db alone), from aheadState
// changed by change.
func noticeGuess(t *testing.T, change func(*replicated.State), want int) (*replicated.State, guess) {
	t.Helper()
	st := aheadState(t)
	st.Nodes[3].Capacity = replicated.Resources{}
	st.Nodes[1].Capacity = replicated.Resources{VCPU: 1, MemMiB: 256}
	if change != nil {
		change(st)
	}
	g, ok := guessFrom(st, scaleOutAt(st, 3, want), 2)
	if !ok {
		t.Fatalf("node 2 guesses nothing for node 3's scale-out to %d", want)
	}
	return st, g
}

// TestSpeculationProposeWaitsForTheStart: a scale-out that starts an
// instance ahead here is proposed once the agent ran it, or, when the
// agent does not, after aheadLead all the same.
func TestSpeculationProposeWaitsForTheStart(t *testing.T) {
	st := aheadState(t)
	for _, agentRuns := range []bool{true, false} {
		sp := newSpeculation(2, slog.New(slog.DiscardHandler))
		var ran atomic.Bool
		sp.setWake(func() {
			if agentRuns && !ran.Load() {
				go func() {
					sp.phase("fn-hello-0", replicated.PhaseStarting) // not yet
					ran.Store(true)
					sp.phase("fn-hello-0", replicated.PhaseRunning)
				}()
			}
		})
		proposed := false
		_, ahead, err := sp.propose(context.Background(), st, scaleOutAt(st, 2, 1),
			func(context.Context, replicated.Command) (replicated.Result, error) {
				proposed = true
				if agentRuns && !ran.Load() {
					t.Error("proposed before the agent ran the instance")
				}
				return replicated.Result{Code: replicated.ResultOK}, nil
			})
		if !ahead || err != nil || !proposed {
			t.Errorf("agent runs it %v: ahead %v, err %v, proposed %v", agentRuns, ahead, err, proposed)
		}
		sp.mu.Lock()
		if len(sp.waiting) != 0 {
			t.Errorf("agent runs it %v: still waiting for %v", agentRuns, slices.Collect(maps.Keys(sp.waiting)))
		}
		sp.mu.Unlock()
	}
}

// TestSpeculationExpect: what waits for instances to start is released
// when every one of them runs or failed, not by other phases; when it
// gives up (its lead passed, its context ended) it leaves nothing behind.
func TestSpeculationExpect(t *testing.T) {
	sp := newSpeculation(1, slog.New(slog.DiscardHandler))
	wait := sp.expect([]string{"a", "b"})
	sp.phase("a", replicated.PhaseRunning)
	sp.phase("b", replicated.PhasePending)
	sp.phase("b", replicated.PhaseStarting)
	if wait(context.Background(), 10*time.Millisecond) {
		t.Error("released while b was only starting")
	}
	sp.mu.Lock()
	if len(sp.waiting) != 0 {
		t.Errorf("left waiting after giving up: %v", slices.Collect(maps.Keys(sp.waiting)))
	}
	sp.mu.Unlock()

	wait = sp.expect([]string{"a", "b"})
	sp.phase("b", replicated.PhaseFailed)
	sp.phase("a", replicated.PhaseRunning)
	if !wait(context.Background(), time.Minute) {
		t.Error("not released once a ran and b failed")
	}

	// Two waiting for the same instance are both released.
	w1, w2 := sp.expect([]string{"c"}), sp.expect([]string{"c"})
	sp.phase("c", replicated.PhaseRunning)
	if !w1(context.Background(), time.Minute) || !w2(context.Background(), time.Minute) {
		t.Error("a second wait for the same instance was not released")
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if sp.expect([]string{"d"})(ctx, time.Minute) {
		t.Error("released by an ended context")
	}
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if len(sp.waiting) != 0 {
		t.Errorf("left waiting: %v", slices.Collect(maps.Keys(sp.waiting)))
	}
}

// proposeRecorder is a store that reads st and records what is proposed,
// reading read at that moment (the node's speculative state).
type proposeRecorder struct {
	st       *replicated.State
	read     nodeState
	proposed []replicated.Command
	during   *replicated.State
}

func (p *proposeRecorder) LocalRead() (*replicated.State, error) { return p.st, nil }
func (p *proposeRecorder) Propose(_ context.Context, cmd replicated.Command) (replicated.Result, error) {
	p.proposed = append(p.proposed, cmd)
	p.during, _ = p.read.LocalRead()
	return replicated.Result{Code: replicated.ResultOK}, nil
}

// TestProposeScaleOutForAnAgentOnlyNode: a scale-out that an agent-only
// node's gateway sent this server (api.ScaleOuts) is proposed with the
// plan made from this replica, for the node that asked, with its actor;
// the instance it places on this server runs ahead of the commit, as for
// the server's own gateway.
func TestProposeScaleOutForAnAgentOnlyNode(t *testing.T) {
	st := aheadState(t)
	// Node 4, agent-only, asks; a function instance does not fit on it.
	applyOK(t, st, replicated.Command{V: replicated.CommandVersion, Type: replicated.CmdRegisterNode, At: testkit.T0,
		RegisterNode: &replicated.RegisterNode{ID: 4, RaftAddr: "127.0.0.1:7004", Capacity: replicated.Resources{VCPU: 1, MemMiB: 128}}})
	sf := replicated.ScaleFunction{Function: "hello", Kind: replicated.ScaleOut, Want: 1, Node: 4, Reason: "1 in flight at node 4's gateway"}
	planned := reconciler.ScaleOutPlan(st, sf)
	if planned.Plan == nil || len(planned.Plan.Assignments) == 0 {
		t.Fatalf("no plan for node 4's scale-out: %+v", planned)
	}
	var self uint64
	for _, a := range planned.Plan.Assignments {
		if _, had := st.Assignments[a.VM]; !had {
			self = a.Node
		}
	}
	if self == 0 || self == 4 {
		t.Fatalf("the plan places the instance on node %d; the test wants a server", self)
	}
	log := slog.New(slog.DiscardHandler)
	store := &proposeRecorder{st: st}
	f := newFunctions(self, store, nil, log)
	f.carryPlan, f.ahead = true, newSpeculation(self, log)
	store.read = speculativeState{nodeState: store, sp: f.ahead}
	cmd := replicated.Command{Type: replicated.CmdScaleFunction, At: testkit.T0.Add(time.Minute), Actor: "node-4", ScaleFunction: &sf}
	res, err := f.ProposeScaleOut(context.Background(), cmd)
	if err != nil || !res.OK() {
		t.Fatalf("ProposeScaleOut: %+v, %v", res, err)
	}
	if len(store.proposed) != 1 {
		t.Fatalf("proposed %d commands, want 1", len(store.proposed))
	}
	got := store.proposed[0]
	if got.Actor != "node-4" || got.ScaleFunction.Node != 4 || got.ScaleFunction.Plan == nil {
		t.Errorf("proposed %s; want node 4's scale-out, its actor kept, with this server's plan", testkit.JSON(t, got))
	}
	if cmd.ScaleFunction.Plan != nil {
		t.Error("the caller's command was changed")
	}
	placed := 0
	for name, a := range store.during.Assignments {
		if _, had := st.Assignments[name]; !had && a.Node == self {
			placed++
		}
	}
	if placed != 1 {
		t.Errorf("while proposing, this node's state has %d new instances on it, want 1 (started ahead): %v", placed, store.during.Assignments)
	}
}

// outcomeStore is a store that reads st and answers every proposal with
// res and err, calling during first.
type outcomeStore struct {
	st     *replicated.State
	res    replicated.Result
	err    error
	during func()
}

func (o *outcomeStore) LocalRead() (*replicated.State, error) { return o.st, nil }
func (o *outcomeStore) Propose(context.Context, replicated.Command) (replicated.Result, error) {
	o.during()
	return o.res, o.err
}

// TestProposeScaleOutLendsTheAgentOnlyNodeItsInstance: when the plan of an
// agent-only node's scale-out places the instance on that node (it fits:
// locality), the server lends it to the node's view (api.AgentAhead) while
// the proposal commits, waking the views' computation; the guess stays
// after a commit (aheadHold) and goes at once with a failed proposal.
func TestProposeScaleOutLendsTheAgentOnlyNodeItsInstance(t *testing.T) {
	for _, tc := range []struct {
		name string
		res  replicated.Result
		err  error
		kept bool
	}{
		{name: "committed", res: replicated.Result{Code: replicated.ResultOK}, kept: true},
		{name: "refused", res: replicated.Result{Code: replicated.ResultInvalid, Message: "no"}},
		{name: "outcome unknown", err: errors.New("timeout")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := aheadState(t)
			applyOK(t, st, testkit.Register(4)) // agent-only, room for the instance
			log := slog.New(slog.DiscardHandler)
			var during map[uint64]api.AheadInstances
			store := &outcomeStore{st: st, res: tc.res, err: tc.err}
			f := newFunctions(1, store, nil, log)
			f.carryPlan, f.ahead, f.agents = true, newSpeculation(1, log), newAgentGuesses()
			var wakes atomic.Int32
			f.agents.setWake(func() { wakes.Add(1) })
			store.during = func() { during = f.agents.Ahead(st) }
			sf := replicated.ScaleFunction{Function: "hello", Kind: replicated.ScaleOut, Want: 1, Node: 4, Reason: "test"}
			out, err := f.proposeScaleOut(context.Background(), replicated.Command{Type: replicated.CmdScaleFunction,
				At: testkit.T0.Add(time.Minute), ScaleFunction: &sf})
			if !errors.Is(err, tc.err) || !out.ahead {
				t.Fatalf("proposeScaleOut: %+v, %v; want ahead", out, err)
			}
			in, ok := during[4]
			if !ok || !slices.Equal(in.Instances, []string{"fn-hello-0"}) || in.State.Assignments["fn-hello-0"].Node != 4 || len(during) != 1 {
				t.Fatalf("while proposing, lent to the agents' views: %+v; want fn-hello-0 on node 4 only", during)
			}
			if _, ok := st.Assignments["fn-hello-0"]; ok {
				t.Error("the replica's state was changed")
			}
			if _, kept := f.agents.Ahead(st)[4]; kept != tc.kept {
				t.Errorf("after the proposal the guess is lent: %v, want %v", kept, tc.kept)
			}
			wantWakes := int32(1) // lent
			if !tc.kept {
				wantWakes = 2 // lent, dropped
			}
			if n := wakes.Load(); n != wantWakes {
				t.Errorf("views woken %d times, want %d", n, wantWakes)
			}
		})
	}
}
