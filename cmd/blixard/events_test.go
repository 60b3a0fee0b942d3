package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
)

// syncBuffer is a bytes.Buffer safe to read while a command writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestEventsFollowPrintsNewEventsUntilInterrupted runs `events -f` (text
// and --json) against a server on an in-memory state: it prints the log,
// then the event committed next, and exits 0 when interrupted.
func TestEventsFollowPrintsNewEventsUntilInterrupted(t *testing.T) {
	st := testkit.NewStore(nil)
	st.Propose(context.Background(), testkit.Register(1))
	srv := api.NewServer(api.Options{Replica: testkit.NewReplica(st, 1, 1), Insecure: true})
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	state := replicated.NodeCordoned
	for _, mode := range []string{"text", "json"} {
		t.Run(mode, func(t *testing.T) {
			args := []string{"events", "-f", "--server", hs.URL}
			if mode == "json" {
				args = append(args, "--json")
			}
			var out, errb syncBuffer
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			code := make(chan int, 1)
			go func() { code <- run(ctx, args, &out, &errb) }()
			testkit.WaitFor(t, 10*time.Second, "the log printed", testkit.Until(func() bool { return strings.Contains(out.String(), "NodeRegistered") }))

			res, _ := st.Propose(context.Background(), replicated.Command{Type: replicated.CmdSetNodeState, At: testkit.T0,
				SetNodeState: &replicated.SetNodeState{ID: 1, State: state}})
			srv.Applied()
			want := "node 1: "
			testkit.WaitFor(t, 10*time.Second, "the new event printed", testkit.Detail(func() (bool, string) {
				return strings.Contains(out.String(), res.Message), out.String() + errb.String()
			}))
			cancel()
			if c := <-code; c != 0 {
				t.Fatalf("events -f after Ctrl-C: exit %d\n%s", c, errb.String())
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			switch mode {
			case "text":
				if !strings.HasPrefix(lines[0], "INDEX") || !strings.Contains(lines[len(lines)-1], want) {
					t.Errorf("text output:\n%s", out.String())
				}
			case "json":
				for _, l := range lines {
					var e replicated.Event
					if err := json.Unmarshal([]byte(l), &e); err != nil || e.Index == 0 {
						t.Errorf("line %q is not an event: %v", l, err)
					}
				}
			}
			// Each event once.
			if n := strings.Count(out.String(), res.Message); n != 1 {
				t.Errorf("the new event printed %d times:\n%s", n, out.String())
			}
			state = replicated.NodeReady
		})
	}
}

// fakeAgent plays node 1's agent on an in-memory state: it carries out
// each restart request (an assignment's restart newer than its reported
// one) by reporting the instance running with that restart, and records the
// most requests it ever found outstanding at once.
type fakeAgent struct {
	st *testkit.Store

	mu         sync.Mutex
	maxPending int
	carriedOut []string
	seq        uint64
}

func (f *fakeAgent) pass() {
	s, _ := f.st.Read(context.Background())
	var pending []replicated.VMStatus
	for name, a := range s.Assignments {
		if a.Restart > s.Observed[name].Restart {
			pending = append(pending, replicated.VMStatus{VM: name, Node: a.Node, Phase: replicated.PhaseRunning, Restart: a.Restart})
		}
	}
	if len(pending) == 0 {
		return
	}
	f.mu.Lock()
	f.maxPending = max(f.maxPending, len(pending))
	f.seq++
	seq := f.seq
	for _, p := range pending {
		f.carriedOut = append(f.carriedOut, p.VM)
	}
	f.mu.Unlock()
	var all []replicated.VMStatus
	for name, o := range s.Observed {
		if !containsVM(pending, name) {
			all = append(all, o)
		}
	}
	f.st.Propose(context.Background(), replicated.Command{Type: replicated.CmdNodeHeartbeat, At: testkit.T0,
		NodeHeartbeat: &replicated.NodeHeartbeat{ID: 1, Epoch: 1, Seq: seq, Statuses: append(all, pending...)}})
}

func containsVM(ss []replicated.VMStatus, name string) bool {
	for _, s := range ss {
		if s.VM == name {
			return true
		}
	}
	return false
}

// replicaState is web with three instances on node 1, all running.
func replicaState(t *testing.T) *testkit.Store {
	st := testkit.NewStore(nil)
	var as []replicated.Assignment
	var statuses []replicated.VMStatus
	for _, name := range []string{"web-1", "web-2", "web-10"} {
		a := testkit.Assign(name, 1, "v1")
		a.Declared = "web"
		as = append(as, a)
		statuses = append(statuses, replicated.VMStatus{VM: name, Node: 1, Phase: replicated.PhaseRunning})
	}
	plan := testkit.Plan(0, "c1", as...)
	for name, vm := range plan.CommitPlan.Spec.VMs {
		vm.Autostart = true
		plan.CommitPlan.Spec.VMs[name] = vm
	}
	for _, cmd := range []replicated.Command{testkit.Register(1), plan, {Type: replicated.CmdNodeHeartbeat, At: testkit.T0,
		NodeHeartbeat: &replicated.NodeHeartbeat{ID: 1, Statuses: statuses}}} {
		if res, err := st.Propose(context.Background(), cmd); err != nil || !res.OK() {
			t.Fatalf("%s: %v %+v", cmd.Type, err, res)
		}
	}
	return st
}

// TestVMRestartRollsOneInstanceAtATime: `vm restart web` restarts web-1,
// web-2 and web-10 in that order, never asking for the next before the
// previous runs again; --all-at-once asks for all three at once.
func TestVMRestartRollsOneInstanceAtATime(t *testing.T) {
	for _, tt := range []struct {
		args        []string
		wantPending int
		wantOrder   string
	}{
		{[]string{"vm", "restart", "web", "--json"}, 1, "web-1 web-2 web-10"},
		{[]string{"vm", "restart", "web", "--all-at-once"}, 3, ""},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			st := replicaState(t)
			srv := api.NewServer(api.Options{Replica: testkit.NewReplica(st, 1, 1), Insecure: true})
			hs := httptest.NewServer(srv.Handler())
			defer hs.Close()
			agent := &fakeAgent{st: st}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() {
				for ctx.Err() == nil {
					agent.pass()
					time.Sleep(5 * time.Millisecond)
				}
			}()
			var out, errb bytes.Buffer
			if code := run(context.Background(), append(tt.args, "--server", hs.URL), &out, &errb); code != 0 {
				t.Fatalf("exit %d\n%s%s", code, out.String(), errb.String())
			}
			testkit.WaitFor(t, 10*time.Second, "every restart carried out", testkit.Until(func() bool {
				agent.mu.Lock()
				defer agent.mu.Unlock()
				return len(agent.carriedOut) == 3
			}))
			cancel()
			agent.mu.Lock()
			defer agent.mu.Unlock()
			if agent.maxPending != tt.wantPending {
				t.Errorf("at most %d restarts were outstanding at once, want %d", agent.maxPending, tt.wantPending)
			}
			if tt.wantOrder == "" {
				return
			}
			if got := strings.Join(agent.carriedOut, " "); got != tt.wantOrder {
				t.Errorf("restarted in the order %s, want %s", got, tt.wantOrder)
			}
			var res api.RollingRestart
			if err := json.Unmarshal(out.Bytes(), &res); err != nil || !res.Done || len(res.Instances) != 3 {
				t.Fatalf("--json: %+v %v\n%s", res, err, out.String())
			}
			for i, s := range res.Instances {
				if s.Status != api.RestartRestarted || s.Restart == 0 || (i > 0 && s.Restart <= res.Instances[i-1].Restart) {
					t.Errorf("instance %d: %+v", i, s)
				}
			}
			for i, name := range []string{"web-1", "web-2", "web-10"} {
				if want := fmt.Sprintf("[%d/3] %s runs again on node 1", i+1, name); !strings.Contains(errb.String(), want) {
					t.Errorf("progress lacks %q:\n%s", want, errb.String())
				}
			}
		})
	}
}

// TestVMRestartGivesUpOnAnInstanceThatDoesNotComeBack: nobody carries out
// the restart; the command stops at the first instance after
// --instance-timeout, exit 1, naming the instances it did not restart.
func TestVMRestartGivesUpOnAnInstanceThatDoesNotComeBack(t *testing.T) {
	st := replicaState(t)
	hs := httptest.NewServer(api.NewServer(api.Options{Replica: testkit.NewReplica(st, 1, 1), Insecure: true}).Handler())
	defer hs.Close()
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"vm", "restart", "web", "--instance-timeout", "300ms", "--json", "--server", hs.URL}, &out, &errb)
	if code != 1 || !strings.Contains(errb.String(), "web-1 did not run again within 300ms (node 1 has not carried out the restart yet") ||
		!strings.Contains(errb.String(), "not restarted: web-2, web-10") {
		t.Fatalf("exit %d\n%s%s", code, out.String(), errb.String())
	}
	var res api.RollingRestart
	if err := json.Unmarshal(out.Bytes(), &res); err != nil || res.Done || res.Instances[0].Status != api.RestartFailed ||
		res.Instances[1].Status != api.RestartPending || res.Instances[2].Status != api.RestartPending {
		t.Fatalf("--json: %+v %v", res, err)
	}
	if n := len(st.ProposedOf(replicated.CmdSetVMRunState)); n != 1 {
		t.Errorf("%d restart requests made, want 1 (web-1 only)", n)
	}
}
