package api_test

import (
	"bytes"
	"context"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

const (
	rollC1 = "1111111111111111111111111111111111111111"
	rollC2 = "2222222222222222222222222222222222222222"
)

// rollingState is web (3 replicas, an update block) on node 1 at web-v1 of
// rollC1, and rollC2 committed with web-v2: web rolls, its first wave
// (web-0) started and not ready yet.
func rollingState(t *testing.T) *testkit.Store {
	t.Helper()
	st := testkit.NewStore(nil)
	u := spec.Update{MaxUnavailable: 1, MinHealthySeconds: 10, ProgressDeadline: 5 * time.Minute, AutoRevert: true}
	plan := func(parent uint64, commit, ver string) replicated.Command {
		sp := &spec.Cluster{Name: "t", VMs: map[string]spec.VM{
			"web": {Runner: spec.Runner{Drv: "/nix/store/web-" + ver + ".drv", Out: "/nix/store/web-" + ver}, VCPU: 1, MemMiB: 64, Replicas: 3,
				Autostart: true, Update: u},
			"db": {Runner: spec.Runner{Drv: "/nix/store/db.drv", Out: "/nix/store/db"}, VCPU: 1, MemMiB: 64, Replicas: 1, Autostart: true}}}
		var as []replicated.Assignment
		for _, in := range sp.Instances() {
			as = append(as, replicated.Assignment{VM: in.Name, Declared: in.Declared, Node: 1, Drv: in.Runner.Drv, OutPath: in.Runner.Out,
				VCPU: 1, MemMiB: 64})
		}
		return replicated.Command{Type: replicated.CmdCommitPlan, CommitPlan: &replicated.CommitPlan{Parent: parent, Commit: commit, Spec: sp,
			Assignments: as}}
	}
	ctx := context.Background()
	for _, cmd := range []replicated.Command{testkit.Register(1), plan(0, rollC1, "v1"), plan(2, rollC2, "v2"),
		{Type: replicated.CmdRolloutStep, RolloutStep: &replicated.RolloutStep{VM: "web", Rollout: 3, Action: replicated.RolloutWave,
			Instances: []string{"web-0"}}}} {
		cmd.V, cmd.At = replicated.CommandVersion, testkit.T0
		if res, err := st.Propose(ctx, cmd); err != nil || !res.OK() {
			t.Fatalf("setting up %s: %v %+v", cmd.Type, err, res)
		}
	}
	return st
}

func newRollingServer(t *testing.T) (*testkit.Replica, *fakeReconciler, *httptest.Server) {
	replica := testkit.NewReplica(rollingState(t), 1, 1)
	rec := newFakeReconciler()
	srv := httptest.NewServer(api.NewServer(api.Options{Replica: replica, Reconciler: rec, Insecure: true,
		Now: func() time.Time { return testkit.T0.Add(time.Minute) }}).Handler())
	t.Cleanup(srv.Close)
	return replica, rec, srv
}

func TestRolloutEndpoints(t *testing.T) {
	_, rec, srv := newRollingServer(t)
	tests := []struct {
		name               string
		method, path, body string
		code               int
		check              func(t *testing.T, f *fixture, body []byte)
	}{
		{"every rollout", "GET", "/v1/rollouts", "", 200, func(t *testing.T, _ *fixture, b []byte) {
			v := decodeAs[api.RolloutsView](t, b)
			if !v.Following || v.Revision == nil || v.Revision.Commit != rollC2 || len(v.Rollouts) != 1 {
				t.Fatalf("view %+v", v)
			}
			r := v.Rollouts[0]
			if r.VM != "web" || r.Phase != replicated.RolloutProgressing || r.Updated != 1 || r.Total != 3 || len(r.WaveHealth) != 1 ||
				r.WaveHealth[0].Status != "not reported by node 1 yet" || !strings.HasPrefix(r.Next, "waiting for wave 1 (web-0) to be healthy") ||
				r.Previous != nil {
				t.Errorf("rollout %+v", r)
			}
		}},
		{"one VM's rollout", "GET", "/v1/rollouts/web", "", 200, func(t *testing.T, _ *fixture, b []byte) {
			if v := decodeAs[api.RolloutsView](t, b); len(v.Rollouts) != 1 || v.Rollouts[0].VM != "web" {
				t.Errorf("view %+v", v)
			}
		}},
		{"a VM without a rollout", "GET", "/v1/rollouts/db", "", 404, errorSays("VM db has no rollout: it has no update block")},
		{"an undeclared VM", "GET", "/v1/rollouts/nope", "", 404, errorSays("not a declared VM")},
		{"an invalid name", "GET", "/v1/rollouts/Web", "", 400, errorSays("invalid name")},
		{"the rolling commit converges later", "GET", "/v1/converge?commit=" + rollC2[:8], "", 200, func(t *testing.T, _ *fixture, b []byte) {
			v := decodeAs[api.ConvergeView](t, b)
			if v.State != reconciler.Progressing || v.Commit != rollC2 || !strings.Contains(v.Message, "rolling out web") {
				t.Errorf("converge %+v", v)
			}
		}},
		{"a replaced commit is not applied now", "GET", "/v1/converge?commit=" + rollC1, "", 200, func(t *testing.T, _ *fixture, b []byte) {
			if v := decodeAs[api.ConvergeView](t, b); v.State != reconciler.Progressing || !strings.Contains(v.Message, "ran as revision 2 before") {
				t.Errorf("converge %+v", v)
			}
		}},
		{"the running revision by default", "GET", "/v1/converge", "", 200, func(t *testing.T, _ *fixture, b []byte) {
			if v := decodeAs[api.ConvergeView](t, b); v.Commit != rollC2 {
				t.Errorf("converge %+v", v)
			}
		}},
		{"a commit that is not hex", "GET", "/v1/converge?commit=main", "", 400, errorSays("want one commit")},
		{"an unknown parameter", "GET", "/v1/converge?branch=main", "", 400, errorSays(`unknown query parameter "branch"`)},
		{"suspend takes no fields", "POST", "/v1/suspend", `{"x": 1}`, 400, errorSays("no body, or {}")},
		{"rollback to an unknown revision", "POST", "/v1/rollback", `{"revision": "99"}`, 404, errorSays("revision 99 is not in the history")},
		{"rollback to a commit nobody ran", "POST", "/v1/rollback", `{"revision": "abcdef0"}`, 404, errorSays("no revision of the history")},
		{"rollback with a bad body", "POST", "/v1/rollback", `{"rev": 2}`, 400, errorSays("revision")},
		{"rollouts is read-only", "POST", "/v1/rollouts", "", 405, errorSays("method not allowed")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, body := do(t, srv, tt.method, tt.path, tt.body)
			if code != tt.code {
				t.Fatalf("%s %s: %d, want %d: %s", tt.method, tt.path, code, tt.code, body)
			}
			tt.check(t, nil, body)
		})
	}
	if rec.triggered() {
		t.Error("a refused request triggered a pass")
	}
}

func TestSuspendRollbackResumeThroughTheClient(t *testing.T) {
	replica, rec, srv := newRollingServer(t)
	c, err := api.NewClient(srv.URL, api.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ans, err := c.Suspend(ctx)
	if err != nil || ans.Following || !strings.Contains(ans.Message, "suspended") || !rec.triggered() {
		t.Fatalf("suspend: %+v, %v", ans, err)
	}
	v, err := c.Rollouts(ctx, "")
	if err != nil || v.Following || v.Suspended == nil || v.Suspended.By != api.Anonymous {
		t.Fatalf("rollouts while suspended: %+v, %v", v, err)
	}
	// The previous revision: rollC1's (revision 2).
	ans, err = c.Rollback(ctx, "")
	if err != nil || ans.Following || ans.Rollback == nil || ans.Rollback.Revision != 2 || ans.Rollback.Commit != rollC1 {
		t.Fatalf("rollback: %+v, %v", ans, err)
	}
	ans, err = c.Rollback(ctx, rollC2[:7])
	if err != nil || ans.Rollback == nil || ans.Rollback.Revision != 3 {
		t.Fatalf("rollback to a commit: %+v, %v", ans, err)
	}
	ans, err = c.Resume(ctx)
	if err != nil || !ans.Following || !strings.Contains(ans.Message, "rollback to revision 3") {
		t.Fatalf("resume: %+v, %v", ans, err)
	}
	var kinds []string
	for _, e := range replica.Proposed() {
		if e.SetFollowing != nil {
			kinds = append(kinds, strconv.FormatBool(e.SetFollowing.Suspended)+"/"+strconv.FormatUint(e.SetFollowing.Rollback, 10)+"/"+e.Actor)
		}
	}
	if got := strings.Join(kinds, " "); got != "true/0/anonymous true/2/anonymous true/3/anonymous false/0/anonymous" {
		t.Errorf("proposed %s", got)
	}
	cv, err := c.Converge(ctx, rollC2)
	if err != nil || cv.State != reconciler.Progressing {
		t.Errorf("converge: %+v, %v", cv, err)
	}
}

func TestResolveRollback(t *testing.T) {
	hist := []replicated.Revision{{ID: 2, Commit: "aaaaaaa1"}, {ID: 3, Commit: "bbbbbbb2"}, {ID: 5, Commit: "bbbbbbb2"},
		{ID: 7, Commit: "ccccccc3"}, {ID: 9, Commit: "1234567a"}, {ID: 11, Commit: "1234567b"}}
	tests := []struct {
		name     string
		hist     []replicated.Revision
		rollback uint64 // the running rollback's revision (0: none)
		arg      string
		want     uint64
		err      string
	}{
		{"previous: the newest revision of another commit", hist[:4], 0, "", 5, ""},
		{"previous skips re-plans of the running commit", hist[:3], 0, "", 2, ""},
		{"again while rolled back: further back", hist[:4], 5, "", 2, ""},
		{"a revision number", hist, 0, "3", 3, ""},
		{"a commit: its newest revision", hist, 0, "bbbbbbb2", 5, ""},
		{"a commit prefix", hist, 0, "ccccccc", 7, ""},
		{"digits that are a revision", hist, 0, "9", 9, ""},
		{"digits that are a commit prefix", hist, 0, "1234567a", 9, ""},
		{"an ambiguous prefix", hist, 0, "1234567", 0, "ambiguous"},
		{"nothing before", hist[:1], 0, "", 0, "no revision before revision 2"},
		{"an unknown revision", hist, 0, "4", 0, "revision 4 is not in the history"},
		{"a short prefix", hist, 0, "abc", 0, "neither a revision number nor a commit"},
		{"not hex", hist, 0, "main", 0, "neither a revision number nor a commit"},
		{"an unknown commit", hist, 0, "ddddddd", 0, "no revision of the history"},
		{"no history", nil, 0, "", 0, "nothing to roll back to"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := &replicated.State{History: tt.hist}
			if tt.rollback != 0 {
				st.Suspended = &replicated.Suspension{Rollback: &replicated.RollbackTarget{Revision: tt.rollback}}
			}
			got, err := api.ResolveRollback(st, tt.arg)
			switch {
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Fatalf("ResolveRollback(%q) = %+v, %v; want an error with %q", tt.arg, got, err, tt.err)
			case tt.err == "" && (err != nil || got.ID != tt.want):
				t.Fatalf("ResolveRollback(%q) = %+v, %v; want revision %d", tt.arg, got, err, tt.want)
			}
		})
	}
}

func TestRolloutControlsNeedTheOperateRole(t *testing.T) {
	p := newTestPKI(t)
	addr := serveTLS(t, api.Options{Replica: testkit.NewReplica(rollingState(t), 1, 1), Reconciler: newFakeReconciler(),
		TLS: p.server(t, "node-1"), Now: func() time.Time { return testkit.T0 }})
	ctx := context.Background()
	read, operate := p.client(t, addr, "alice", ""), p.client(t, addr, "bob", "")
	for _, tt := range []struct {
		name string
		call func() error
		code int
	}{
		{"read: rollout status", func() error { _, err := read.Rollouts(ctx, ""); return err }, 200},
		{"read: converge", func() error { _, err := read.Converge(ctx, ""); return err }, 200},
		{"read: no suspend", func() error { _, err := read.Suspend(ctx); return err }, 403},
		{"read: no resume", func() error { _, err := read.Resume(ctx); return err }, 403},
		{"read: no rollback", func() error { _, err := read.Rollback(ctx, ""); return err }, 403},
		{"operate: suspend", func() error { _, err := operate.Suspend(ctx); return err }, 200},
		{"operate: rollback", func() error { _, err := operate.Rollback(ctx, ""); return err }, 200},
		{"operate: resume", func() error { _, err := operate.Resume(ctx); return err }, 200},
	} {
		if err := tt.call(); apiCode(err) != tt.code {
			t.Errorf("%s: %v (HTTP %d), want HTTP %d", tt.name, err, apiCode(err), tt.code)
		}
	}
}

func TestWriteRollouts(t *testing.T) {
	_, _, srv := newRollingServer(t)
	c, err := api.NewClient(srv.URL, api.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v, err := c.Rollouts(context.Background(), "web")
	if err != nil {
		t.Fatal(err)
	}
	v.Following = false
	v.Suspended = &replicated.Suspension{Since: testkit.T0, By: "alice", Pending: rollC1, PendingAt: testkit.T0,
		Rollback: &replicated.RollbackTarget{Revision: 2, Commit: rollC1}}
	var b bytes.Buffer
	if err := api.WriteRollouts(&b, v, testkit.T0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"Revision: 3  commit 222222222222",
		"Following: SUSPENDED since",
		"by alice (`blixard resume` follows the tracked ref again)",
		"rolled back to revision 2 (commit 111111111111)",
		"pending: commit 111111111111",
		"web: PROGRESSING, commit 111111111111 → 222222222222, 1 of 3 instances updated, wave 1",
		"policy: waves of 1, healthy for 10s within 5m0s, auto-revert",
		"deadline in 4m0s",
		"web-0  node 1  not reported by node 1 yet",
		"next: waiting for wave 1 (web-0) to be healthy",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	b.Reset()
	if err := api.WriteConvergence(&b, reconciler.Convergence{Commit: rollC2, State: reconciler.Progressing, Message: "1 of 3 instances not ready",
		Waiting: []reconciler.InstanceHealth{{VM: "web-0", Status: "starting"}}}); err != nil {
		t.Fatal(err)
	}
	if got, want := b.String(), "commit 222222222222: progressing: 1 of 3 instances not ready\n  web-0: starting\n"; got != want {
		t.Errorf("WriteConvergence:\n%q\nwant\n%q", got, want)
	}
}
