package node

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
)

// TestProblemReporterCommitsChangesOnly: a part's problem is committed when
// it changes and not again while it stays; a failed proposal is tried again
// with the newest message; clearing it commits the clear once.
func TestProblemReporterCommitsChangesOnly(t *testing.T) {
	st := testkit.NewStore(nil)
	if res, err := st.Propose(context.Background(), testkit.Register(1)); err != nil || !res.OK() {
		t.Fatalf("register: %v %+v", err, res)
	}
	r := newProblemReporter(1, "network", st.Propose, st.LocalRead)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	problem := func() string {
		s, _ := st.LocalRead()
		return s.Nodes[1].Problems["network"].Message
	}
	proposed := func() int { return len(st.ProposedOf(replicated.CmdSetNodeProblem)) }

	r.set("")
	r.set("conflict: route 10.0.0.0/8 via tun0")
	testkit.WaitFor(t, 10*time.Second, "the problem committed", testkit.Until(func() bool { return problem() == "conflict: route 10.0.0.0/8 via tun0" }))
	n := proposed()
	r.set("conflict: route 10.0.0.0/8 via tun0") // every failed pass says it again
	r.set("")
	testkit.WaitFor(t, 10*time.Second, "the problem cleared", testkit.Until(func() bool { return problem() == "" }))
	if got := proposed(); got != n+1 {
		t.Fatalf("%d proposals after the clear, want %d: the same message again must not be proposed", got, n+1)
	}

	st.FailProposals(errors.New("no quorum"))
	r.set("again")
	time.Sleep(50 * time.Millisecond)
	st.FailProposals(nil)
	r.set("again, later") // the retry proposes the newest
	testkit.WaitFor(t, 3*problemRetry, "the newest message committed after the failure", testkit.Until(func() bool { return problem() == "again, later" }))
}
