package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http/httptest"
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
	cliC1 = "1111111111111111111111111111111111111111"
	cliC2 = "2222222222222222222222222222222222222222"
)

// rollingStore holds web (2 replicas, an update block) at web-v1 of cliC1
// running healthy, and cliC2 (web-v2) committed: web's rollout has not
// started its first wave.
func rollingStore(t *testing.T, autoRevert bool) *testkit.Store {
	t.Helper()
	st := testkit.NewStore(nil)
	u := spec.Update{MaxUnavailable: 1, ProgressDeadline: time.Minute, AutoRevert: autoRevert}
	plan := func(parent uint64, commit, ver string) replicated.Command {
		sp := &spec.Cluster{Name: "t", VMs: map[string]spec.VM{
			"web": {Runner: spec.Runner{Drv: "/nix/store/web-" + ver + ".drv", Out: "/nix/store/web-" + ver}, VCPU: 1, MemMiB: 64, Replicas: 2,
				Autostart: true, Update: u}}}
		var as []replicated.Assignment
		for _, in := range sp.Instances() {
			as = append(as, replicated.Assignment{VM: in.Name, Declared: in.Declared, Node: 1, Drv: in.Runner.Drv, OutPath: in.Runner.Out,
				VCPU: 1, MemMiB: 64})
		}
		return replicated.Command{Type: replicated.CmdCommitPlan, CommitPlan: &replicated.CommitPlan{Parent: parent, Commit: commit, Spec: sp,
			Assignments: as}}
	}
	for _, cmd := range []replicated.Command{testkit.Register(1), plan(0, cliC1, "v1"), plan(2, cliC2, "v2")} {
		cmd.V, cmd.At = replicated.CommandVersion, testkit.T0
		if res, err := st.Propose(context.Background(), cmd); err != nil || !res.OK() {
			t.Fatalf("setting up %s: %v %+v", cmd.Type, err, res)
		}
		reportRunning(st)
	}
	return st
}

// reportRunning plays the agents: every assignment runs its runner, healthy.
func reportRunning(st *testkit.Store) {
	st.Update(func(s *replicated.State) {
		for name, a := range s.Assignments {
			s.Observed[name] = replicated.VMStatus{VM: name, Node: a.Node, Phase: replicated.PhaseRunning, BootedOut: a.OutPath,
				Generation: a.Generation, Health: replicated.Healthy}
		}
	})
}

func serveStore(t *testing.T, st *testkit.Store) string {
	srv := httptest.NewServer(api.NewServer(api.Options{Replica: testkit.NewReplica(st, 1, 1), Insecure: true}).Handler())
	t.Cleanup(srv.Close)
	return srv.URL
}

func runCLI(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestRolloutStatusSuspendRollbackResume(t *testing.T) {
	st := rollingStore(t, true)
	url := serveStore(t, st)
	for _, tt := range []struct {
		args []string
		code int
		out  []string // in stdout
		err  string   // in stderr
	}{
		{[]string{"rollout", "status"}, 0, []string{"Following: the tracked ref", "web: PROGRESSING, commit 111111111111 → 222222222222, 0 of 2 instances updated",
			"policy: waves of 1, healthy for 0s within 1m0s, auto-revert", "next: starting wave 1: web-0"}, ""},
		{[]string{"rollout", "status", "web"}, 0, []string{"web: PROGRESSING"}, ""},
		{[]string{"rollout", "status", "nope"}, 1, nil, "VM nope has no rollout: it is not a declared VM"},
		{[]string{"suspend"}, 0, []string{"following the tracked ref suspended"}, ""},
		{[]string{"rollout", "status"}, 0, []string{"Following: SUSPENDED since", "by anonymous"}, ""},
		{[]string{"rollback"}, 0, []string{"rollback to revision 2 (commit " + cliC1 + ")"}, ""},
		{[]string{"rollout", "status"}, 0, []string{"rolled back to revision 2 (commit 111111111111)"}, ""},
		{[]string{"rollback", "99"}, 1, nil, "rollback: revision 99 is not in the history"},
		{[]string{"resume"}, 0, []string{"following the tracked ref again; the rollback to revision 2"}, ""},
		{[]string{"resume"}, 0, []string{"already following the tracked ref"}, ""},
	} {
		code, out, errOut := runCLI(append(tt.args, "--server", url)...)
		if code != tt.code || !strings.Contains(errOut, tt.err) {
			t.Fatalf("%v: exit %d, stderr %q; want %d and %q\n%s", tt.args, code, errOut, tt.code, tt.err, out)
		}
		for _, want := range tt.out {
			if !strings.Contains(out, want) {
				t.Errorf("%v: stdout lacks %q:\n%s", tt.args, want, out)
			}
		}
	}
	code, out, _ := runCLI("rollout", "status", "--json", "--server", url)
	var v api.RolloutsView
	if err := json.Unmarshal([]byte(out), &v); code != 0 || err != nil || len(v.Rollouts) != 1 || !v.Following {
		t.Fatalf("rollout status --json: exit %d, %v\n%s", code, err, out)
	}
	code, out, _ = runCLI("suspend", "--json", "--server", url)
	var ans api.FollowingAnswer
	if err := json.Unmarshal([]byte(out), &ans); code != 0 || err != nil || ans.Following {
		t.Fatalf("suspend --json: exit %d, %v\n%s", code, err, out)
	}
}

// TestWaitExitCodes: wait exits 0 once the commit converged (the rollout
// moves on while it waits), 1 when its rollout was reverted, when it
// times out and for a commit it cannot name.
func TestWaitExitCodes(t *testing.T) {
	t.Run("converges while it waits", func(t *testing.T) {
		st := rollingStore(t, true)
		url := serveStore(t, st)
		// The leader and the agents: one step per moment, driven by the
		// real decision, until the rollout succeeded.
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				s, _ := st.Read(context.Background())
				d := reconciler.NextRolloutStep(s, "web", time.Now())
				if d.Step != nil {
					st.Propose(context.Background(), replicated.Command{V: replicated.CommandVersion, Type: replicated.CmdRolloutStep,
						At: time.Now(), RolloutStep: d.Step})
					reportRunning(st)
				}
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
		defer func() { close(stop); <-done }()
		code, out, errOut := runCLI("wait", "--commit", cliC2[:10], "--poll", "10ms", "--timeout", "1m", "--server", url)
		if code != 0 || !strings.Contains(out, "commit 222222222222: converged: revision 3: every instance (2) runs its assignment and is healthy") {
			t.Fatalf("wait: exit %d\n%s\n%s", code, out, errOut)
		}
		if !strings.Contains(errOut, "commit 222222222222: progressing: rolling out web") {
			t.Errorf("no progress on stderr:\n%s", errOut)
		}
	})
	t.Run("a reverted rollout fails at once", func(t *testing.T) {
		st := rollingStore(t, true)
		for _, step := range []replicated.RolloutStep{{Action: replicated.RolloutWave, Instances: []string{"web-0"}},
			{Step: 1, Action: replicated.RolloutRevert, Error: "wave 1 (web-0) crash-loops"}} {
			step.VM, step.Rollout = "web", 3
			if res, err := st.Propose(context.Background(), replicated.Command{V: replicated.CommandVersion, Type: replicated.CmdRolloutStep,
				At: testkit.T0, RolloutStep: &step}); err != nil || !res.OK() {
				t.Fatal(err, res)
			}
		}
		url := serveStore(t, st)
		code, out, _ := runCLI("wait", "--commit", cliC2, "--timeout", "1m", "--server", url)
		if code != 1 || !strings.Contains(out, "failed: the rollout of web reverted: wave 1 (web-0) crash-loops") {
			t.Fatalf("wait: exit %d\n%s", code, out)
		}
		code, out, _ = runCLI("wait", "--commit", cliC2, "--json", "--server", url)
		var res waitResult
		if err := json.Unmarshal([]byte(out), &res); code != 1 || err != nil || res.State != reconciler.Failed || res.TimedOut {
			t.Fatalf("wait --json: exit %d, %+v, %v\n%s", code, res, err, out)
		}
	})
	t.Run("a rollout that does not move times out", func(t *testing.T) {
		url := serveStore(t, rollingStore(t, true))
		code, out, errOut := runCLI("wait", "--timeout", "200ms", "--poll", "20ms", "--json", "--server", url)
		var res waitResult
		if err := json.Unmarshal([]byte(out), &res); code != 1 || err != nil || !res.TimedOut || res.State != reconciler.Progressing ||
			res.Commit != cliC2 {
			t.Fatalf("wait: exit %d, %+v, %v\n%s\n%s", code, res, err, out, errOut)
		}
	})
	t.Run("an unreachable cluster is retried until the timeout", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close() // nothing listens there now
		code, out, errOut := runCLI("wait", "--timeout", "150ms", "--poll", "20ms", "--server", addr)
		if code != 1 || !strings.Contains(out, "timed out after 150ms") || strings.Count(errOut, "asking the cluster failed") != 1 {
			t.Fatalf("wait: exit %d\n%s\n%s", code, out, errOut)
		}
	})
	t.Run("a commit that is not a SHA", func(t *testing.T) {
		code, _, errOut := runCLI("wait", "--commit", "main", "--server", "127.0.0.1:1")
		if code != 1 || !strings.Contains(errOut, `--commit "main": want a commit SHA`) {
			t.Fatalf("wait: exit %d, %s", code, errOut)
		}
	})
}
