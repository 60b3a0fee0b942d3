package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
)

// The heartbeat reporter with a Proposer the test controls: heartbeats are
// pipelined, so a lost one does not hold back the next, and they are
// answered in any order. The lease runs on a testkit.Clock the test
// advances; the reporter's period and the proposals' timeouts run on the
// real clock.

// holdingProposer commits to a testState at once, except the heartbeats it
// is told to hold: those stay unanswered, as a proposal lost on its way,
// until the test answers them (committed then, after later ones, or lost)
// or their context ends.
type holdingProposer struct {
	st *testState

	mu   sync.Mutex
	hold int     // hold the next hold heartbeats; guarded by mu
	held []*held // guarded by mu
}

type held struct {
	cmd    replicated.Command
	answer chan error // nil: commit now; else the Propose error
}

func (p *holdingProposer) Propose(ctx context.Context, cmd replicated.Command) (replicated.Result, error) {
	p.mu.Lock()
	if cmd.Type != replicated.CmdNodeHeartbeat || p.hold == 0 {
		p.mu.Unlock()
		return p.st.Propose(ctx, cmd)
	}
	p.hold--
	h := &held{cmd: cmd, answer: make(chan error, 1)}
	p.held = append(p.held, h)
	p.mu.Unlock()
	select {
	case <-ctx.Done():
		return replicated.Result{}, ctx.Err()
	case err := <-h.answer:
		if err != nil {
			return replicated.Result{}, err
		}
		return p.st.Propose(ctx, cmd)
	}
}

// holdNext holds the next heartbeat the agent proposes and returns it once
// proposed.
func (p *holdingProposer) holdNext(t *testing.T) *held {
	t.Helper()
	p.mu.Lock()
	p.hold, p.held = 1, nil
	p.mu.Unlock()
	var h *held
	testkit.WaitFor(t, waitTimeout, "a heartbeat to hold", func() error {
		p.mu.Lock()
		defer p.mu.Unlock()
		if len(p.held) == 0 {
			return errors.New("none proposed yet")
		}
		h = p.held[0]
		return nil
	})
	return h
}

// leaseFrom is the send time of the committed heartbeat the lease runs from.
func leaseFrom(a *Agent) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.renewed
}

func TestNixProcessALostHeartbeatDoesNotHoldBackTheNextOnes(t *testing.T) {
	e := newEnv(t)
	r := makeRunner(t, runnerSpec{marker: "m"}).build(t)
	e.state.assign("a", testNode, r)
	clock := testkit.NewClock(testkit.T0)
	// Minutes on the test's clock: only clock.Advance ends the lease, and a
	// heartbeat's timeout (the lease, on the real clock) never comes.
	const lease = 10 * time.Minute
	p := &holdingProposer{st: e.state}
	ra := e.start(func(o *Options) { o.Lease, o.Now, o.Proposer = lease, clock.Now, p })
	e.waitPhase("a", replicated.PhaseRunning, nil)
	pa := e.pid("a")

	// One heartbeat is lost: its Propose does not return.
	lost := p.holdNext(t)
	clock.Advance(6 * time.Minute)
	later := lost.cmd.At.Add(6 * time.Minute)
	testkit.WaitFor(t, waitTimeout, "a heartbeat sent after the lost one renews the lease", func() error {
		if from := leaseFrom(ra.agent); from.Before(later) {
			return fmt.Errorf("the lease runs from %s", from)
		}
		return nil
	})

	// Past the lost heartbeat's lease, within the later one's: a pass at
	// this time keeps the VM running.
	clock.Advance(6 * time.Minute)
	now := clock.Now()
	waitStatus(t, ra.agent, "a", "running in a pass at "+now.Format(time.TimeOnly), func(s replicated.VMStatus) bool {
		return s.Phase == replicated.PhaseRunning && !s.ObservedAt.Before(now)
	})
	if got := e.pid("a"); got != pa {
		t.Errorf("a's runner changed (pid %d → %d): the node fenced itself while a heartbeat was lost", pa.PID, got.PID)
	}
	if hb := e.state.ProposedOf(replicated.CmdNodeHeartbeat); len(hb) == 0 || hb[len(hb)-1].NodeHeartbeat.Seq <= lost.cmd.NodeHeartbeat.Seq {
		t.Errorf("no heartbeat numbered after the lost one (%d) committed", lost.cmd.NodeHeartbeat.Seq)
	}
	lost.answer <- errors.New("lost")
}

func TestOutOfOrderHeartbeatAnswersNeverMoveTheLeaseBack(t *testing.T) {
	clock := testkit.NewClock(testkit.T0)
	const lease = 3 * time.Second
	st := newTestState(t)
	a := New(Options{NodeID: testNode, State: st, Proposer: st, Lease: lease, Now: clock.Now, ControlPlaneOnly: true})
	a.startLease() // from T0: the node has sent none
	ctx := context.Background()

	older := a.nextHeartbeat()
	clock.Advance(2 * time.Second)
	newer := a.nextHeartbeat()
	if o, n := older.cmd.NodeHeartbeat, newer.cmd.NodeHeartbeat; o.Epoch == 0 || o.Epoch != n.Epoch || o.Seq != 1 || n.Seq != 2 {
		t.Fatalf("heartbeat order (epoch, seq): (%d, %d) then (%d, %d); want one non-zero epoch, seq 1 then 2", o.Epoch, o.Seq, n.Epoch, n.Seq)
	}
	a.sendHeartbeat(ctx, newer, lease)
	a.sendHeartbeat(ctx, older, lease) // answered after the newer one

	if from := leaseFrom(a); !from.Equal(newer.cmd.At) {
		t.Errorf("the lease runs from %s, want the newer heartbeat's send time %s", from, newer.cmd.At)
	}
	clock.Advance(2 * time.Second) // 4s after the older one, 2s after the newer
	if why := a.leaseState(clock.Now()); why != "" {
		t.Errorf("fenced 2s after a committed heartbeat (lease %s): %s", lease, why)
	}
	s, err := st.LocalRead()
	if err != nil {
		t.Fatal(err)
	}
	n := s.Nodes[testNode]
	if n.LastHeartbeatSeq != 2 || n.ReportSeq != 2 || !n.LastHeartbeatAt.Equal(newer.cmd.At) {
		t.Errorf("node: %d heartbeats, report %d at %s; want 2 heartbeats (both count), report 2 at %s (the older one's statuses ignored)",
			n.LastHeartbeatSeq, n.ReportSeq, n.LastHeartbeatAt, newer.cmd.At)
	}

	// A heartbeat whose outcome is unknown renews nothing.
	st.FailProposals(errNoQuorum)
	a.sendHeartbeat(ctx, a.nextHeartbeat(), lease)
	if from := leaseFrom(a); !from.Equal(newer.cmd.At) {
		t.Errorf("the lease runs from %s after a heartbeat that did not commit, want still %s", from, newer.cmd.At)
	}
	clock.Advance(1500 * time.Millisecond)
	if why := a.leaseState(clock.Now()); why == "" {
		t.Errorf("not fenced 3.5s after the last committed heartbeat (lease %s)", lease)
	}
}

func TestAVMGoneFromThisNodeIsForgottenOnlyOnceRaftShowsItStopped(t *testing.T) {
	clock := testkit.NewClock(testkit.T0)
	st := newTestState(t)
	a := New(Options{NodeID: testNode, State: st, Proposer: st, Now: clock.Now, ControlPlaneOnly: true})
	ctx := context.Background()
	status := func(phase replicated.Phase, gone bool) {
		a.set(VMDecision{VM: "x", Status: &replicated.VMStatus{VM: "x", Node: testNode, Phase: phase}, Forget: gone})
	}
	// observed is what Raft holds of x ("": nothing); kept, whether the
	// agent still reports it.
	check := func(step string, observed replicated.Phase, kept bool) {
		t.Helper()
		s, err := st.LocalRead()
		if err != nil {
			t.Fatal(err)
		}
		if got := s.Observed["x"].Phase; got != observed {
			t.Errorf("%s: Raft shows x %q, want %q", step, got, observed)
		}
		a.mu.Lock()
		_, ok := a.statuses["x"]
		a.mu.Unlock()
		if ok != kept {
			t.Errorf("%s: the agent keeps x's status: %t, want %t", step, ok, kept)
		}
	}

	status(replicated.PhaseStopped, true) // x moved away and stopped here
	first := a.nextHeartbeat()            // carries x stopped
	status(replicated.PhasePending, false)
	back := a.nextHeartbeat() // x assigned here again: pending
	status(replicated.PhaseStopped, true)

	a.sendHeartbeat(ctx, back, time.Second)
	check("the heartbeat with x pending committed", replicated.PhasePending, true)
	// The first heartbeat commits late: Apply ignores its statuses, so
	// Raft still shows x pending, and x must not be dropped yet (dropping
	// it would take it from pending to nothing, never saying stopped).
	a.sendHeartbeat(ctx, first, time.Second)
	check("the older heartbeat with x stopped committed after it", replicated.PhasePending, true)

	a.sendHeartbeat(ctx, a.nextHeartbeat(), time.Second)
	check("a heartbeat with x stopped again committed", replicated.PhaseStopped, false)
	a.sendHeartbeat(ctx, a.nextHeartbeat(), time.Second)
	check("the next heartbeat committed", "", false)
}

// startGuard is a ProcessBackend whose Start of a VM fails the test while
// a condition says it must not start.
type startGuard struct {
	*ProcessBackend
	t       *testing.T
	refused func(name string) string // why name must not start now; "": it may
}

func (g *startGuard) Start(ctx context.Context, name string) error {
	if why := g.refused(name); why != "" {
		g.t.Errorf("%s started %s", name, why)
	}
	return g.ProcessBackend.Start(ctx, name)
}

func TestNixProcessAfterAFenceAVMStartsOnlyOnceRaftShowsItStarting(t *testing.T) {
	e := newEnv(t)
	r := makeRunner(t, runnerSpec{marker: "m"}).build(t)
	e.state.assign("a", testNode, r)
	clock := testkit.NewClock(testkit.T0)
	const lease = 3 * time.Second
	var mu sync.Mutex
	armed := false // set once the fence killed a
	// A start after the fence must follow a committed report of this node
	// saying a is not stopped: a plan moving a elsewhere may have committed,
	// and the node taking it over waits only for a report that is not
	// stopped.
	guard := &startGuard{t: t, refused: func(name string) string {
		mu.Lock()
		defer mu.Unlock()
		st, err := e.state.LocalRead()
		if !armed || err != nil {
			return ""
		}
		if o, ok := st.Observed[name]; !ok || o.Node != testNode || o.Phase == replicated.PhaseStopped {
			return fmt.Sprintf("while Raft shows this node's report of it as %+v", o)
		}
		return ""
	}}
	ra := e.start(func(o *Options) {
		o.Lease, o.Now = lease, clock.Now
		guard.ProcessBackend = NewProcessBackend(ProcessOptions{StateDir: e.dir})
		o.Backend = guard
	})
	e.waitPhase("a", replicated.PhaseRunning, nil)
	pa := e.pid("a")

	// Cut off until the lease runs out: a is killed.
	e.state.FailProposals(errNoQuorum)
	clock.Advance(lease + 100*time.Millisecond)
	e.waitGone(pa)
	waitStatus(t, ra.agent, "a", "reported fenced", fencedFor("3.1s (lease 3s)"))
	mu.Lock()
	armed = true
	mu.Unlock()
	e.since = len(e.state.ProposedOf(replicated.CmdNodeHeartbeat))

	// Back: the heartbeat that ends the fence says a stopped; a starts only
	// after a later one saying it is starting committed.
	e.state.FailProposals(nil)
	e.waitPhase("a", replicated.PhaseRunning, nil)
	if e.pid("a") == pa {
		t.Errorf("a's old runner survived the fence")
	}
	if !e.ever("a", replicated.PhaseStarting) {
		t.Errorf("no committed heartbeat said a is starting")
	}
}

func TestReadyWait(t *testing.T) {
	now := time.Unix(1000, 0)
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	ago := func(d ...time.Duration) []time.Time {
		var out []time.Time
		for _, x := range d {
			out = append(out, now.Add(-x))
		}
		return out
	}
	for _, tc := range []struct {
		name      string
		last      time.Time
		early     []time.Time
		minGap    time.Duration
		wait      time.Duration
		wantEarly bool
	}{
		{"long after the last heartbeat: at once", now.Add(-ms(5000)), nil, time.Second, 0, true},
		{"right after the last heartbeat: not the regular gap", now.Add(-ms(50)), nil, time.Second, 0, true},
		{"within readyGap of the last: shares the moment", now.Add(-ms(4)), nil, time.Second, ms(6), true},
		{"three early ones in the last second: still early", now.Add(-ms(50)), ago(ms(100), ms(300), ms(900)), time.Second, 0, true},
		{"four early ones in the last second: the regular gap", now.Add(-ms(50)), ago(ms(100), ms(300), ms(500), ms(900)), time.Second, ms(950), false},
		{"early ones older than a second do not count", now.Add(-ms(50)), ago(ms(1000), ms(1200), ms(1500), ms(3000)), time.Second, 0, true},
		{"the regular gap, when due, is no later", now.Add(-ms(2000)), ago(ms(100), ms(200), ms(300), ms(400)), time.Second, 0, false},
		{"a regular gap below readyGap is kept", now.Add(-ms(1)), nil, ms(5), ms(4), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wait, isEarly := readyWait(now, tc.last, tc.early, tc.minGap)
			if wait != tc.wait || isEarly != tc.wantEarly {
				t.Errorf("readyWait = %s, early %t; want %s, %t", wait, isEarly, tc.wait, tc.wantEarly)
			}
		})
	}
}
