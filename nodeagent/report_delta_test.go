package nodeagent

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
)

// TestHeartbeatDelta drives the liveness-only decision through the
// sequences of heartbeats and answers that matter: the statuses a
// heartbeat carries are left out only while a result showed the state
// holding a report of the same statuses, and a liveness-only heartbeat
// whose base was not held proves nothing about what Raft shows.
func TestHeartbeatDelta(t *testing.T) {
	at := func(s int) time.Time { return time.Unix(int64(s), 0) }
	running := []replicated.VMStatus{{VM: "web", Phase: replicated.PhaseRunning, ObservedAt: at(1)}}
	// The same statuses observed at a later pass: no change.
	runningLater := []replicated.VMStatus{{VM: "web", Phase: replicated.PhaseRunning, ObservedAt: at(9)}}
	stopped := []replicated.VMStatus{{VM: "web", Phase: replicated.PhaseStopped, ObservedAt: at(2)}}

	type step struct {
		seq  uint64
		snap []replicated.VMStatus
		want uint64 // the base it says unchanged since (0: full)
		// then the answer to this heartbeat, when answer is set: the
		// result's StatusSeq, and whether its statuses are what Raft holds.
		answer    bool
		statusSeq uint64
		taken     bool
		refused   bool // the state machine refused it instead
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"full until a result shows the report held, then liveness-only", []step{
			{seq: 1, snap: running, want: 0},
			{seq: 2, snap: runningLater, want: 0, answer: true, statusSeq: 2, taken: true},
			{seq: 3, snap: runningLater, want: 2, answer: true, statusSeq: 2, taken: true},
			{seq: 4, snap: running, want: 2},
		}},
		{"a change sends in full and waits for its own answer", []step{
			{seq: 1, snap: running, answer: true, statusSeq: 1, taken: true},
			{seq: 2, snap: running, want: 1},
			{seq: 3, snap: stopped, want: 0},
			// An answer of the old run does not count for the new one.
			{seq: 4, snap: stopped, want: 0, answer: true, statusSeq: 1, taken: true},
			{seq: 5, snap: stopped, want: 0, answer: true, statusSeq: 5, taken: true},
			{seq: 6, snap: stopped, want: 5},
		}},
		{"a liveness-only heartbeat whose base is gone is not taken and ends liveness-only", []step{
			{seq: 1, snap: running, answer: true, statusSeq: 1, taken: true},
			{seq: 2, snap: running, want: 1, answer: true, statusSeq: 0, taken: false},
			{seq: 3, snap: running, want: 0},
		}},
		{"a refused liveness-only heartbeat (an older leader cannot decode it) goes back to full", []step{
			{seq: 1, snap: running, answer: true, statusSeq: 1, taken: true},
			{seq: 2, snap: running, want: 1, refused: true},
			{seq: 3, snap: running, want: 0},
		}},
		{"a build that predates the field never answers StatusSeq: always full", []step{
			{seq: 1, snap: running, answer: true, statusSeq: 0, taken: true},
			{seq: 2, snap: running, want: 0, answer: true, statusSeq: 0, taken: true},
			{seq: 3, snap: running, want: 0},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var d heartbeatDelta
			for _, s := range tt.steps {
				got := d.next(s.seq, s.snap)
				if got != s.want {
					t.Fatalf("heartbeat %d: unchanged since %d, want %d", s.seq, got, s.want)
				}
				hb := &replicated.NodeHeartbeat{Seq: s.seq, Unchanged: got}
				if s.refused {
					d.refused(hb)
				}
				if !s.answer {
					continue
				}
				if taken := d.answered(hb, replicated.Result{StatusSeq: s.statusSeq}); taken != s.taken {
					t.Fatalf("heartbeat %d answered with statusSeq %d: taken = %t, want %t", s.seq, s.statusSeq, taken, s.taken)
				}
			}
		})
	}
}

// An agent whose statuses do not change sends them in full until a result
// shows the state holds them, then liveness-only heartbeats; the state
// keeps the statuses and counts every heartbeat.
func TestAgentSendsLivenessOnlyHeartbeatsOnceItsReportIsHeld(t *testing.T) {
	st := newTestState(t)
	a := New(Options{NodeID: testNode, State: st, Proposer: st, ControlPlaneOnly: true, Heartbeat: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Start(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	testkit.WaitFor(t, waitTimeout, "three liveness-only heartbeats", func() error {
		n := 0
		for _, c := range st.ProposedOf(replicated.CmdNodeHeartbeat) {
			if c.NodeHeartbeat.Unchanged != 0 {
				n++
			}
		}
		if n < 3 {
			return fmt.Errorf("%d so far", n)
		}
		return nil
	})
	hbs := st.ProposedOf(replicated.CmdNodeHeartbeat)
	first := hbs[0].NodeHeartbeat
	if first.Unchanged != 0 || first.Seq != 1 {
		t.Errorf("the first heartbeat is %+v, want a full one numbered 1", first)
	}
	for _, c := range hbs {
		hb := c.NodeHeartbeat
		if hb.Unchanged != 0 && (hb.Unchanged != first.Seq || len(hb.Statuses) != 0 || c.V != replicated.HeartbeatDeltaVersion) {
			t.Errorf("liveness-only heartbeat %+v (v%d): want unchanged since %d, no statuses, version %d", hb, c.V, first.Seq, replicated.HeartbeatDeltaVersion)
		}
	}
	s, _ := st.LocalRead()
	n := s.Nodes[testNode]
	if n.StatusSeq != first.Seq || n.ReportSeq <= first.Seq {
		t.Errorf("node %d holds statuses of report %d and report %d, want %d and a later one", testNode, n.StatusSeq, n.ReportSeq, first.Seq)
	}
}
