package reconciler

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// fakeVerifier trusts the commits in signers, refuses those in refusals
// (with the signer in refusedBy) and fails to check those in broken (a
// temporary error). It counts calls per commit. It models only the
// Verifier contract: gitsync's tests check real signatures.
type fakeVerifier struct {
	mu        sync.Mutex
	signers   map[string]string
	refusals  map[string]string // commit → refusal message
	refusedBy map[string]string // commit → signer of a refused commit
	broken    map[string]bool
	calls     map[string]int
}

type checkFailed struct{ commit string }

func (e checkFailed) Error() string {
	return "gitsync: verify commit " + e.commit + ": object not found"
}
func (e checkFailed) Temporary() bool { return true }

func (v *fakeVerifier) Verify(_ context.Context, commit string) (string, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.calls == nil {
		v.calls = map[string]int{}
	}
	v.calls[commit]++
	switch {
	case v.broken[commit]:
		return "", checkFailed{commit}
	case v.refusals[commit] != "":
		return v.refusedBy[commit], errors.New(v.refusals[commit])
	}
	if s, ok := v.signers[commit]; ok {
		return s, nil
	}
	return "unsigned", errors.New("commit " + commit + " is not trusted: signer unsigned: sign it")
}

func (v *fakeVerifier) count(commit string) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.calls[commit]
}

func (v *fakeVerifier) fix(commit, signer string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.broken, commit)
	v.signers[commit] = signer
}

const alice = "alice@example.org (SSH key SHA256:AAAA)"

// trustFixture: running1 (revision 5 of c1, web on node 1) and a source
// that fetched c2; the evaluator knows c2 and c3.
type trustFixture struct {
	store *testkit.Store
	src   *scriptSource
	ev    *perCommitEval
	ver   *fakeVerifier
	clock *testkit.Clock
	r     *Reconciler
}

func newTrustFixture(t *testing.T, st *replicated.State, ver *fakeVerifier) *trustFixture {
	t.Helper()
	web := func(v string) *spec.Cluster { return mkCluster(map[string]spec.VM{"web": mkVM("web-"+v, 1, 512)}) }
	f := &trustFixture{
		store: testkit.NewStore(st),
		src:   &scriptSource{f: Fetched{Commit: "c2", Previous: "c1"}},
		ev:    &perCommitEval{specs: map[string]*spec.Cluster{"c2": web("v2"), "c3": web("v3")}},
		ver:   ver,
		clock: testkit.NewClock(time.Unix(1000, 0)),
	}
	o := Options{Store: f.store, Source: f.src, Evaluator: f.ev, Ref: "main", Now: f.clock.Now}
	if ver != nil {
		o.Verifier = ver
	}
	f.r = newTestReconciler(t, o)
	return f
}

// pass runs the loop until no evaluation runs, then moves the clock past
// the next poll.
func (f *trustFixture) pass(t *testing.T) error {
	t.Helper()
	_, err := settle(t, context.Background(), f.r)
	f.clock.Advance(time.Hour)
	return err
}

func (f *trustFixture) state() *replicated.State {
	st, _ := f.store.Read(context.Background())
	return st
}

func TestPassVerifiesSignaturesBeforeEvaluating(t *testing.T) {
	for _, tt := range []struct {
		name string
		run  func(t *testing.T, f *trustFixture)
	}{
		{"an unsigned commit makes SignatureRefused=True and is never evaluated", func(t *testing.T, f *trustFixture) {
			for range 3 {
				if err := f.pass(t); err != nil {
					t.Fatalf("pass: %v", err)
				}
			}
			st := f.state()
			c, ok := st.Condition(replicated.SignatureRefused)
			if !ok || c.Commit != "c2" || c.Retryable || !strings.Contains(c.Message, "signer unsigned") {
				t.Fatalf("SignatureRefused %+v (set %t), want c2 refused for good with its signer", c, ok)
			}
			if st.Revision.Commit != "c1" {
				t.Errorf("revision of %s, want c1 kept", st.Revision.Commit)
			}
			if n := f.ev.count("c2"); n != 0 {
				t.Errorf("c2 was evaluated %d times, want never", n)
			}
			if n := f.ver.count("c2"); n != 1 {
				t.Errorf("c2 was verified %d times, want once: the recorded refusal decides afterwards", n)
			}
			if n := len(f.store.ProposedOf(replicated.CmdSetCondition)); n != 1 {
				t.Errorf("%d SetCondition proposals, want the refusal once", n)
			}
		}},
		{"a later trusted commit deploys with its signer and clears SignatureRefused", func(t *testing.T, f *trustFixture) {
			if err := f.pass(t); err != nil {
				t.Fatalf("pass: %v", err)
			}
			f.src.set(Fetched{Commit: "c3", Previous: "c2"}, nil)
			f.ver.fix("c3", alice)
			if err := f.pass(t); err != nil {
				t.Fatalf("pass: %v", err)
			}
			st := f.state()
			if st.Revision.Commit != "c3" || st.Revision.Signer != alice {
				t.Fatalf("revision %+v, want c3 signed by %s", st.Revision, alice)
			}
			if h := st.History[len(st.History)-1]; h.Signer != alice {
				t.Errorf("history records signer %q, want %q", h.Signer, alice)
			}
			if c, ok := st.Condition(replicated.SignatureRefused); ok {
				t.Errorf("SignatureRefused %+v still set after a trusted commit deployed", c)
			}
			if f.ev.count("c2") != 0 || f.ev.count("c3") != 1 {
				t.Errorf("evaluations: c2 %d, c3 %d; want 0 and 1", f.ev.count("c2"), f.ev.count("c3"))
			}
		}},
		{"a refusal whose message does not name the signer gets it added", func(t *testing.T, f *trustFixture) {
			f.ver.refusals["c2"] = "commit c2 is not trusted: the key is in no trust file"
			f.ver.refusedBy["c2"] = "SSH key SHA256:BBBB"
			if err := f.pass(t); err != nil {
				t.Fatalf("pass: %v", err)
			}
			c, _ := f.state().Condition(replicated.SignatureRefused)
			if want := "commit c2 is not trusted: the key is in no trust file (signer SSH key SHA256:BBBB)"; c.Message != want {
				t.Fatalf("message %q, want %q", c.Message, want)
			}
		}},
		{"a check that cannot run is a transient error, records nothing and is retried", func(t *testing.T, f *trustFixture) {
			f.ver.broken["c2"] = true
			err := f.pass(t)
			if err == nil || IsTerminal(err) || !strings.Contains(err.Error(), "c2") {
				t.Fatalf("pass: err = %v, want a transient error naming c2", err)
			}
			if got := f.store.Proposed(); len(got) != 0 {
				t.Fatalf("proposed %q after a failed check, want nothing", describe(got))
			}
			if n := f.ev.count("c2"); n != 0 {
				t.Fatalf("c2 evaluated %d times before its signature was checked", n)
			}
			f.ver.fix("c2", alice)
			if err := f.pass(t); err != nil {
				t.Fatalf("pass: %v", err)
			}
			if rev := f.state().Revision; rev.Commit != "c2" || rev.Signer != alice {
				t.Fatalf("revision %+v, want c2 signed by %s", rev, alice)
			}
		}},
		{"a re-plan of the running revision keeps its signer", func(t *testing.T, f *trustFixture) {
			f.src.set(Fetched{Commit: "c1", Previous: "c1"}, nil)
			ctx := context.Background()
			if _, err := f.store.Propose(ctx, replicated.Command{Type: replicated.CmdRegisterNode, At: f.clock.Now(),
				RegisterNode: &replicated.RegisterNode{ID: 2, Capacity: replicated.Resources{VCPU: 4, MemMiB: 4096}}}); err != nil {
				t.Fatal(err)
			}
			if _, err := f.store.Propose(ctx, replicated.Command{Type: replicated.CmdSetNodeState, At: f.clock.Now(),
				SetNodeState: &replicated.SetNodeState{ID: 1, State: replicated.NodeDraining}}); err != nil {
				t.Fatal(err)
			}
			if err := f.pass(t); err != nil {
				t.Fatalf("pass: %v", err)
			}
			plans := f.store.ProposedOf(replicated.CmdCommitPlan)
			if len(plans) != 1 || plans[0].CommitPlan.Commit != "c1" || plans[0].CommitPlan.Signer != alice {
				t.Fatalf("plans %q, want one re-plan of c1 signed by %s", describe(plans), alice)
			}
			if n := f.ver.count("c1"); n != 0 {
				t.Errorf("the running commit was verified again %d times", n)
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st := running1()
			st.Revision.Signer = alice
			tt.run(t, newTrustFixture(t, st, &fakeVerifier{signers: map[string]string{},
				refusals: map[string]string{}, refusedBy: map[string]string{}, broken: map[string]bool{}}))
		})
	}
}

func TestRecordedRefusals(t *testing.T) {
	refused := func(commit string) *replicated.State {
		st := running1()
		st.Conditions = []replicated.Condition{{Type: replicated.SignatureRefused, Commit: commit,
			Message: "commit " + commit + " is not trusted: signer unsigned: sign it"}}
		return st
	}
	for _, tt := range []struct {
		name    string
		state   *replicated.State
		fetched string
		want    []string // proposals
	}{
		{"a new leader does not verify or evaluate a commit the old leader refused", refused("c2"), "c2", nil},
		{"a refusal of a commit the ref no longer points at is cleared", refused("c2"), "c1", []string{"Clear SignatureRefused"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// The verifier would trust c2 now (trust files changed): the
			// recorded refusal still decides.
			ver := &fakeVerifier{signers: map[string]string{"c2": alice}}
			f := newTrustFixture(t, tt.state, ver)
			f.src.set(Fetched{Commit: tt.fetched, Previous: "c1"}, nil)
			if err := f.pass(t); err != nil {
				t.Fatalf("pass: %v", err)
			}
			if got := describe(f.store.Proposed()); strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Fatalf("proposed %q, want %q", got, tt.want)
			}
			if ver.count("c2") != 0 || f.ev.count("c2") != 0 {
				t.Fatalf("c2 verified %d and evaluated %d times, want neither", ver.count("c2"), f.ev.count("c2"))
			}
		})
	}
}

func TestWithoutAVerifierCommitsDeployUnsigned(t *testing.T) {
	f := newTrustFixture(t, running1(), nil)
	if err := f.pass(t); err != nil {
		t.Fatalf("pass: %v", err)
	}
	if rev := f.state().Revision; rev.Commit != "c2" || rev.Signer != "" {
		t.Fatalf("revision %+v, want c2 without a signer", rev)
	}
}

func TestVerifyFirstKeepsPreviewsOffUntrustedCommits(t *testing.T) {
	ver := &fakeVerifier{signers: map[string]string{"c3": alice}}
	ev := &perCommitEval{specs: map[string]*spec.Cluster{"c2": running1().Desired, "c3": running1().Desired}}
	pv := VerifyFirst(ver, ev)
	if _, err := PlanCommit(context.Background(), pv, "c2", running1()); err == nil || !strings.Contains(err.Error(), "not evaluated") {
		t.Fatalf("preview of an unsigned commit: err = %v, want a refusal", err)
	}
	if _, err := PlanCommit(context.Background(), pv, "c3", running1()); err != nil {
		t.Fatalf("preview of a trusted commit: %v", err)
	}
	if ev.count("c2") != 0 || ev.count("c3") != 1 {
		t.Fatalf("evaluations: c2 %d, c3 %d; want 0 and 1", ev.count("c2"), ev.count("c3"))
	}
	if VerifyFirst(nil, ev) != Evaluator(ev) {
		t.Error("VerifyFirst without a verifier does not return the evaluator itself")
	}
}
