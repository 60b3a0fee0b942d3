package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

const (
	commitA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" // the committed revision
	commitB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb" // web at v2
	commitC = "cccccccccccccccccccccccccccccccccccccccc" // does not evaluate
)

// fakeReconciler counts triggers and answers a fixed status.
type fakeReconciler struct {
	triggers chan struct{}
	status   reconciler.Status
}

func newFakeReconciler() *fakeReconciler {
	return &fakeReconciler{triggers: make(chan struct{}, 1), status: reconciler.Status{Leader: true, FetchCommit: commitA}}
}

func (f *fakeReconciler) Trigger() {
	select {
	case f.triggers <- struct{}{}:
	default:
	}
}
func (f *fakeReconciler) Triggers() chan<- struct{} { return f.triggers }
func (f *fakeReconciler) Status() reconciler.Status { return f.status }

// triggered reports (and consumes) a pending trigger.
func (f *fakeReconciler) triggered() bool {
	select {
	case <-f.triggers:
		return true
	default:
		return false
	}
}

// fakeEvaluator evaluates the commits in specs; others fail like nix.
type fakeEvaluator struct{ specs map[string]*spec.Cluster }

func (f fakeEvaluator) Evaluate(_ context.Context, commit string) (reconciler.Evaluation, error) {
	sp, ok := f.specs[commit]
	if !ok {
		return reconciler.Evaluation{}, fmt.Errorf("error: syntax error, unexpected '}' at /nix/store/x-source/flake.nix:5:3 (commit %s)", commit)
	}
	return reconciler.Evaluation{Spec: sp, Hash: "h-" + commit}, nil
}

// fakeSource counts fetches.
type fakeSource struct{ fetches atomic.Int32 }

func (f *fakeSource) Fetch(context.Context) (reconciler.Fetched, error) {
	f.fetches.Add(1)
	return reconciler.Fetched{Commit: commitA}, nil
}

// fakeLogs holds console logs by VM.
type fakeLogs map[string]string

func (f fakeLogs) Tail(_ context.Context, name string, _ bool, w io.Writer) error {
	s, ok := f[name]
	if !ok {
		return fmt.Errorf("no console log of %s: %w", name, fs.ErrNotExist)
	}
	_, err := io.WriteString(w, s)
	return err
}

// clusterState is two nodes, web on node 1 (running) and db on node 2
// (never observed), huge unschedulable, and both source conditions true.
func clusterState(t *testing.T) *testkit.Store {
	t.Helper()
	st := testkit.NewStore(nil)
	ctx := context.Background()
	plan := autostarted(testkit.Plan(0, commitA, testkit.Assign("web", 1, "v1"), testkit.Assign("db", 2, "v1")))
	plan.CommitPlan.Unschedulable = []replicated.Unschedulable{{VM: "huge", Reason: "needs 999 GiB of memory"}}
	hb := replicated.Command{Type: replicated.CmdNodeHeartbeat, At: testkit.T0, NodeHeartbeat: &replicated.NodeHeartbeat{ID: 1,
		Statuses: []replicated.VMStatus{{VM: "web", Node: 1, Phase: replicated.PhaseRunning, Generation: 3, BootedOut: "/nix/store/web-v1"}}}}
	for _, cmd := range []replicated.Command{testkit.Register(1), testkit.Register(2), plan, hb,
		{Type: replicated.CmdSetCondition, At: testkit.T0, SetCondition: &replicated.SetCondition{Type: replicated.EvalFailed,
			Commit: commitC, Message: "error: syntax error at flake.nix:5:3"}},
		{Type: replicated.CmdSetCondition, At: testkit.T0, SetCondition: &replicated.SetCondition{Type: replicated.FetchFailed,
			Commit: commitA, Message: "fetching file:///srv/cluster.git: repository not found"}},
	} {
		cmd.V = replicated.CommandVersion
		if res, err := st.Propose(ctx, cmd); err != nil || !res.OK() {
			t.Fatalf("setting up %s: %v %+v", cmd.Type, err, res)
		}
	}
	return st
}

// autostarted sets autostart (the flake's default, which testkit.Plan's
// spec leaves false) on every VM of the plan cmd, so they are wanted running.
func autostarted(cmd replicated.Command) replicated.Command {
	for name, vm := range cmd.CommitPlan.Spec.VMs {
		vm.Autostart = true
		cmd.CommitPlan.Spec.VMs[name] = vm
	}
	return cmd
}

// desired is the committed spec with web at version ver.
func desired(ver string) *spec.Cluster {
	return testkit.Plan(0, "", testkit.Assign("web", 1, ver), testkit.Assign("db", 2, "v1")).CommitPlan.Spec
}

type fixture struct {
	replica *testkit.Replica
	rec     *fakeReconciler
	source  *fakeSource
	srv     *httptest.Server
}

// newFixture serves node 1's API (node 1 leads) with every part.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{replica: testkit.NewReplica(clusterState(t), 1, 1), rec: newFakeReconciler(), source: &fakeSource{}}
	f.srv = httptest.NewServer(api.NewServer(api.Options{
		Replica: f.replica, Reconciler: f.rec, Source: f.source,
		Evaluator: fakeEvaluator{map[string]*spec.Cluster{commitA: desired("v1"), commitB: desired("v2")}},
		Logs:      fakeLogs{"web": "booted web v1\n"}, Now: func() time.Time { return testkit.T0 }, Insecure: true,
	}).Handler())
	t.Cleanup(f.srv.Close)
	return f
}

// do sends a request to the fixture's server and returns the answer.
func do(t *testing.T, srv *httptest.Server, method, path, body string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

func decodeAs[T any](t *testing.T, body []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("decoding %T: %v\n%s", v, err, body)
	}
	return v
}

// errorSays checks a JSON error body mentions every want.
func errorSays(want ...string) func(t *testing.T, f *fixture, body []byte) {
	return func(t *testing.T, _ *fixture, body []byte) {
		t.Helper()
		e := decodeAs[api.ErrorBody](t, body)
		for _, w := range want {
			if !strings.Contains(e.Error, w) {
				t.Errorf("error %q should mention %q", e.Error, w)
			}
		}
	}
}

func TestEndpoints(t *testing.T) {
	tests := []struct {
		name               string
		method, path, body string
		code               int
		check              func(t *testing.T, f *fixture, body []byte)
	}{
		{"healthz names the node", "GET", "/healthz", "", 200, func(t *testing.T, _ *fixture, b []byte) {
			if h := decodeAs[api.Health](t, b); !h.OK || h.Node != 1 {
				t.Errorf("health %+v", h)
			}
		}},
		{"state is the replicated state", "GET", "/v1/state", "", 200, func(t *testing.T, _ *fixture, b []byte) {
			s := decodeAs[replicated.State](t, b)
			if len(s.Nodes) != 2 || s.Revision == nil || s.Revision.Commit != commitA {
				t.Errorf("state: %d nodes, revision %+v", len(s.Nodes), s.Revision)
			}
		}},
		{"status takes lastError from EvalFailed and fetchError from FetchFailed", "GET", "/v1/status", "", 200,
			func(t *testing.T, _ *fixture, b []byte) {
				v := decodeAs[api.StatusView](t, b)
				if v.Node != 1 || v.Leader != 1 || v.Revision == nil || v.Revision.Commit != commitA {
					t.Errorf("node %d leader %d revision %+v", v.Node, v.Leader, v.Revision)
				}
				if v.LastError == nil || v.LastError.Commit != commitC || !strings.Contains(v.LastError.Message, "flake.nix") {
					t.Errorf("lastError %+v", v.LastError)
				}
				if v.Reconciler == nil || !strings.Contains(v.Reconciler.FetchError, "cluster.git") || v.Reconciler.FetchCommit != commitA {
					t.Errorf("reconciler %+v", v.Reconciler)
				}
				if len(v.Conditions) != 2 || len(v.Unschedulable) != 1 || v.Unschedulable[0].VM != "huge" {
					t.Errorf("conditions %+v unschedulable %+v", v.Conditions, v.Unschedulable)
				}
				if len(v.VMs) != 2 || v.VMs[0].Name != "db" || v.VMs[0].Phase != replicated.PhasePending || v.VMs[1].Phase != replicated.PhaseRunning {
					t.Errorf("vms %+v", v.VMs)
				}
			}},
		{"nodes mark the leader and sum allocations", "GET", "/v1/nodes", "", 200, func(t *testing.T, _ *fixture, b []byte) {
			ns := decodeAs[[]api.NodeView](t, b)
			if len(ns) != 2 || !ns[0].Leader || ns[1].Leader || ns[0].VMs != 1 || ns[0].Allocated.VCPU != 1 {
				t.Errorf("nodes %+v", ns)
			}
		}},
		{"history lists the revision", "GET", "/v1/history", "", 200, func(t *testing.T, _ *fixture, b []byte) {
			if h := decodeAs[[]replicated.Revision](t, b); len(h) != 1 || h[0].Commit != commitA {
				t.Errorf("history %+v", h)
			}
		}},
		{"diff reports the VM no agent observed", "GET", "/v1/diff", "", 200, func(t *testing.T, _ *fixture, b []byte) {
			if d := decodeAs[[]reconciler.Drift](t, b); len(d) != 1 || d[0].VM != "db" {
				t.Errorf("drift %+v", d)
			}
		}},
		{"reconciler is the local loop's status", "GET", "/v1/reconciler", "", 200, func(t *testing.T, _ *fixture, b []byte) {
			if st := decodeAs[reconciler.Status](t, b); !st.Leader || st.FetchCommit != commitA {
				t.Errorf("status %+v", st)
			}
		}},
		{"cordoning a node commits it and triggers a pass", "POST", "/v1/nodes/2/state", `{"state": "cordoned"}`, 200,
			func(t *testing.T, f *fixture, b []byte) {
				if a := decodeAs[api.NodeStateAnswer](t, b); a.Node != 2 || a.State != replicated.NodeCordoned {
					t.Errorf("answer %+v", a)
				}
				s, _ := f.replica.Read(context.Background())
				if s.Nodes[2].State != replicated.NodeCordoned || !f.rec.triggered() {
					t.Errorf("node 2 is %s; triggered: false", s.Nodes[2].State)
				}
			}},
		{"an unknown state is 400", "POST", "/v1/nodes/2/state", `{"state": "drained"}`, 400, errorSays("drained", "ready, cordoned or draining")},
		{"draining an unknown node is 404", "POST", "/v1/nodes/9/state", `{"state": "draining"}`, 404, errorSays("node 9", "not registered")},
		{"a node id that is no number is 400", "POST", "/v1/nodes/x/state", `{"state": "ready"}`, 400, errorSays(`node id "x"`)},
		{"marking a node down by hand is 400", "POST", "/v1/nodes/2/state", `{"state": "down"}`, 400, errorSays(`"down"`)},
		{"adding a member records it and says how to start it", "POST", "/v1/members", `{"id": 4, "raftAddr": "10.0.0.4:7001", "nonVoting": true}`, 200,
			func(t *testing.T, f *fixture, b []byte) {
				a := decodeAs[api.MemberAnswer](t, b)
				if !strings.Contains(a.Next, "--node-id 4 --raft-addr 10.0.0.4:7001 --join --non-voting") {
					t.Errorf("next %q", a.Next)
				}
				if m := f.replica.Added(); len(m) != 1 || m[0] != (testkit.Member{ID: 4, RaftAddr: "10.0.0.4:7001", NonVoting: true}) {
					t.Errorf("added %+v", m)
				}
			}},
		{"a member with id 0 is 400", "POST", "/v1/members", `{"id": 0, "raftAddr": "10.0.0.4:7001"}`, 400, errorSays("id")},
		{"a member without a port is 400", "POST", "/v1/members", `{"id": 4, "raftAddr": "10.0.0.4"}`, 400, errorSays("raftAddr")},
		{"plan of a changed commit fetches first and lists the change", "POST", "/v1/plan", `{"commit": "` + commitB + `"}`, 200,
			func(t *testing.T, f *fixture, b []byte) {
				v := decodeAs[api.PlanView](t, b)
				if !v.HasChanges || v.Commit != commitB || v.Base == 0 || len(v.Plan.Changed) != 1 || v.Plan.Changed[0].VM != "web" {
					t.Errorf("plan %+v", v)
				}
				if f.source.fetches.Load() != 1 {
					t.Errorf("%d fetches before planning, want 1", f.source.fetches.Load())
				}
			}},
		{"plan of the committed commit has no changes", "POST", "/v1/plan", `{"commit": "` + commitA + `"}`, 200,
			func(t *testing.T, _ *fixture, b []byte) {
				if v := decodeAs[api.PlanView](t, b); v.HasChanges {
					t.Errorf("plan %+v", v)
				}
			}},
		{"plan of a commit that does not evaluate is 422 with nix's message", "POST", "/v1/plan", `{"commit": "` + commitC + `"}`, 422,
			errorSays(commitC, "flake.nix:5")},
		{"plan of a short commit is 400", "POST", "/v1/plan", `{"commit": "abc"}`, 400, errorSays("40-digit")},
		{"sync triggers the reconciler", "POST", "/v1/sync", "", 202, func(t *testing.T, f *fixture, b []byte) {
			if a := decodeAs[api.SyncAnswer](t, b); !a.Triggered || a.Leader != 1 || !f.rec.triggered() {
				t.Errorf("sync %+v", a)
			}
		}},
		{"logs of a VM on this node are its console", "GET", "/v1/vms/web/logs", "", 200, func(t *testing.T, _ *fixture, b []byte) {
			if string(b) != "booted web v1\n" {
				t.Errorf("logs %q", b)
			}
		}},
		{"logs of an unknown VM are 404", "GET", "/v1/vms/ghost/logs", "", 404, errorSays("neither assigned nor observed")},
		{"logs of an invalid VM name are 400", "GET", "/v1/vms/Bad_Name/logs", "", 400, errorSays("VM name")},
		{"logs of a local VM without a console log are 404", "GET", "/v1/vms/other/logs?local=1", "", 404, errorSays("no console log", "other")},
		{"metrics count VMs by phase", "GET", "/metrics", "", 200, func(t *testing.T, _ *fixture, b []byte) {
			for _, want := range []string{`blixard_node_is_leader{node="1"} 1`, "blixard_revision 3", `blixard_vms{phase="running"} 1`,
				"blixard_eval_error 1", "blixard_fetch_error 1", `blixard_node_heartbeats{node="1",state="ready"} 1`} {
				if !strings.Contains(string(b), want) {
					t.Errorf("metrics lack %q:\n%s", want, b)
				}
			}
		}},
		{"the webhook triggers the reconciler", "POST", "/v1/webhook", `{"ref": "refs/heads/main"}`, 202, func(t *testing.T, f *fixture, _ []byte) {
			if !f.rec.triggered() {
				t.Error("not triggered")
			}
		}},
		{"an unknown path is a JSON 404", "GET", "/v1/nope", "", 404, errorSays("no such endpoint", "/v1/nope")},
		{"stopping a VM commits it; status and diff show it stopped on purpose", "POST", "/v1/vms/db/stop", "", 200,
			func(t *testing.T, f *fixture, b []byte) {
				if a := decodeAs[api.VMRunStateAnswer](t, b); a.VM != "db" || a.Action != api.VMStop || !strings.Contains(a.Message, "wanted stopped") {
					t.Errorf("answer %+v", a)
				}
				_, _, body := do(t, f.srv, "GET", "/v1/status", "")
				v := decodeAs[api.StatusView](t, body)
				if db := v.VMs[0]; db.Name != "db" || db.Want != replicated.RunStateStopped || db.Stopped != replicated.StoppedByOperator {
					t.Errorf("status of db %+v, want it wanted stopped by the operator", db)
				}
				if web := v.VMs[1]; web.Want != replicated.RunStateRunning || web.Stopped != "" {
					t.Errorf("status of web %+v, want it wanted running", web)
				}
			}},
		{"starting a VM takes {} as its body", "POST", "/v1/vms/web/start", "{}", 200, func(t *testing.T, f *fixture, b []byte) {
			if a := decodeAs[api.VMRunStateAnswer](t, b); a.Action != api.VMStart || !strings.Contains(a.Message, "web: wanted running") {
				t.Errorf("answer %+v", a)
			}
		}},
		{"restarting a running VM commits a restart request", "POST", "/v1/vms/web/restart", "", 200, func(t *testing.T, f *fixture, b []byte) {
			s, _ := f.replica.Read(context.Background())
			if a := s.Assignments["web"]; a.Restart == 0 || a.Stopped != "" {
				t.Errorf("web's assignment %+v, want a restart request", a)
			}
		}},
		{"starting an unknown VM is 404 naming it", "POST", "/v1/vms/ghost/start", "", 404, errorSays(`"ghost"`, "blixard status")},
		{"stopping an invalid VM name is 400", "POST", "/v1/vms/Bad_Name/stop", "", 400, errorSays("VM name")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			code, _, body := do(t, f.srv, tt.method, tt.path, tt.body)
			if code != tt.code {
				t.Fatalf("%s %s: HTTP %d, want %d: %s", tt.method, tt.path, code, tt.code, body)
			}
			if tt.check != nil {
				tt.check(t, f, body)
			}
		})
	}
}

func TestWrongMethodIsJSON405WithAllow(t *testing.T) {
	routes := []struct{ method, path string }{
		{"GET", "/healthz"}, {"GET", "/v1/state"}, {"GET", "/v1/status"}, {"GET", "/v1/nodes"}, {"GET", "/v1/history"},
		{"GET", "/v1/diff"}, {"GET", "/v1/events"}, {"GET", "/v1/reconciler"}, {"POST", "/v1/nodes/1/state"}, {"POST", "/v1/members/remove"},
		{"DELETE", "/v1/tokens/ci"},
		{"POST", "/v1/plan"}, {"POST", "/v1/sync"}, {"GET", "/v1/vms/web/logs"}, {"GET", "/metrics"}, {"POST", "/v1/webhook"},
		{"POST", "/v1/vms/web/start"}, {"POST", "/v1/vms/web/stop"}, {"POST", "/v1/vms/web/restart"},
	}
	f := newFixture(t)
	for _, r := range routes {
		wrong := map[string]string{"GET": "DELETE", "POST": "GET", "DELETE": "GET"}[r.method]
		t.Run(wrong+" "+r.path+" is 405 allowing "+r.method, func(t *testing.T) {
			code, h, body := do(t, f.srv, wrong, r.path, "")
			if code != http.StatusMethodNotAllowed || h.Get("Allow") != r.method {
				t.Fatalf("HTTP %d, Allow %q, want 405 and %q: %s", code, h.Get("Allow"), r.method, body)
			}
			errorSays("method not allowed", r.method)(t, f, body)
		})
	}
}

func TestBadBodiesAreRefusedWithWhatToSend(t *testing.T) {
	huge := `{"commit": "` + strings.Repeat("a", api.MaxRequestBody) + `"}`
	tests := []struct {
		name, path, body string
		code             int
		want             []string
	}{
		{"garbage plan body is 400", "/v1/plan", "{commit", 400, []string{"request body", `{"commit"`}},
		{"plan body with an unknown field is 400", "/v1/plan", `{"commit": "` + commitA + `", "x": 1}`, 400, []string{"unknown field", `"x"`}},
		{"empty plan body is 400", "/v1/plan", "", 400, []string{"request body"}},
		{"two JSON values are 400", "/v1/plan", `{"commit": "` + commitA + `"} {}`, 400, []string{"more than one"}},
		{"a stray closing brace after the value is 400", "/v1/plan", `{"commit": "` + commitA + `"}}`, 400, []string{"data after it"}},
		{"trailing garbage after the value is 400", "/v1/nodes/1/state", `{"state": "ready"} x`, 400, []string{"data after it"}},
		{"an oversized tail after a valid value is 413", "/v1/nodes/1/state", `{"state": "ready"}` + strings.Repeat(" ", api.MaxRequestBody), 413, []string{"larger than"}},
		{"a token body with an unknown field is 400", "/v1/tokens", `{"name": "ci", "role": "read", "secret": "x"}`, 400, []string{"unknown field"}},
		{"oversized plan body is 413", "/v1/plan", huge, 413, []string{"larger than"}},
		{"garbage node state body is 400", "/v1/nodes/1/state", "[]", 400, []string{"ready|cordoned|draining"}},
		{"node state body with an unknown field is 400", "/v1/nodes/1/state", `{"state": "ready", "why": "x"}`, 400, []string{"unknown field"}},
		{"member body with a string id is 400", "/v1/members", `{"id": "4", "raftAddr": "h:1"}`, 400, []string{"raftAddr"}},
		{"garbage VM stop body is 400", "/v1/vms/web/stop", "{x", 400, []string{"request body", "no body, or {}"}},
		{"VM start body with a field is 400", "/v1/vms/web/start", `{"now": true}`, 400, []string{"unknown field"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			code, _, body := do(t, f.srv, "POST", tt.path, tt.body)
			if code != tt.code {
				t.Fatalf("HTTP %d, want %d: %s", code, tt.code, body)
			}
			errorSays(append(tt.want, tt.path)...)(t, f, body)
			if n := f.source.fetches.Load(); n != 0 {
				t.Errorf("a refused plan fetched %d times", n)
			}
			if len(f.replica.Proposed()) != 6 {
				t.Errorf("a refused request proposed: %d commands", len(f.replica.Proposed()))
			}
		})
	}
}

func TestFollowerAndLeaderAnswerFromTheSameState(t *testing.T) {
	for _, tt := range []struct {
		name           string
		self, leader   uint64
		wantLeaderFlag bool
	}{
		{"the leader says it leads", 1, 1, true},
		{"a follower names the leader", 1, 2, false},
		{"a node that knows no leader says 0", 1, 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st := clusterState(t)
			srv := httptest.NewServer(api.NewServer(api.Options{Replica: testkit.NewReplica(st, tt.self, tt.leader), Insecure: true}).Handler())
			defer srv.Close()
			_, _, body := do(t, srv, "GET", "/v1/status", "")
			v := decodeAs[api.StatusView](t, body)
			if v.Node != tt.self || v.Leader != tt.leader || v.Nodes[0].Leader != tt.wantLeaderFlag {
				t.Errorf("status: node %d leader %d, node 1 leader flag %v", v.Node, v.Leader, v.Nodes[0].Leader)
			}
			// A node without a reconciler still shows the cluster's fetch failure.
			if v.Reconciler == nil || !strings.Contains(v.Reconciler.FetchError, "cluster.git") || v.LastError == nil {
				t.Errorf("reconciler %+v, lastError %+v", v.Reconciler, v.LastError)
			}
			_, _, metrics := do(t, srv, "GET", "/metrics", "")
			want := fmt.Sprintf(`blixard_node_is_leader{node="1"} %d`, map[bool]int{true: 1}[tt.wantLeaderFlag])
			if !strings.Contains(string(metrics), want) {
				t.Errorf("metrics lack %q", want)
			}
		})
	}
}

func TestNodeWithoutSourceOrBackendSaysWhatItLacks(t *testing.T) {
	srv := httptest.NewServer(api.NewServer(api.Options{Replica: testkit.NewReplica(clusterState(t), 1, 1), Insecure: true}).Handler())
	defer srv.Close()
	for _, tt := range []struct {
		name, method, path, body string
		code                     int
		want                     string
	}{
		{"sync is 409", "POST", "/v1/sync", "", 409, "--repo"},
		{"reconciler is 409", "GET", "/v1/reconciler", "", 409, "--repo"},
		{"plan is 409", "POST", "/v1/plan", `{"commit": "` + commitA + `"}`, 409, "--repo"},
		{"webhook has no route", "POST", "/v1/webhook", "{}", 404, "no such endpoint"},
		{"logs of its VM are 404", "GET", "/v1/vms/web/logs", "", 404, "runs no VMs"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, _, body := do(t, srv, tt.method, tt.path, tt.body)
			if code != tt.code {
				t.Fatalf("HTTP %d, want %d: %s", code, tt.code, body)
			}
			errorSays(tt.want)(t, nil, body)
		})
	}
}

// internalErr is what a replica's error may say: a host path. Answers must
// not repeat it.
const internalErr = "open /var/lib/blixard/raft/node-1/LOCK: no quorum"

// saysNothingInternal checks an error body names what failed and the log
// reference, but not the internal error.
func saysNothingInternal(t *testing.T, body []byte, want ...string) {
	t.Helper()
	if strings.Contains(string(body), "/var/lib") || strings.Contains(string(body), "LOCK") {
		t.Errorf("the answer leaks the internal error: %s", body)
	}
	errorSays(append(want, "node 1", "ref ")...)(t, nil, body)
}

func TestReadsWithoutQuorumAre503(t *testing.T) {
	f := newFixture(t)
	f.replica.FailReads(errors.New(internalErr))
	for _, path := range []string{"/v1/state", "/v1/status", "/v1/nodes", "/v1/history", "/v1/diff", "/v1/events", "/metrics", "/v1/vms/web/logs"} {
		code, _, body := do(t, f.srv, "GET", path, "")
		if code != http.StatusServiceUnavailable {
			t.Errorf("GET %s: HTTP %d, want 503: %s", path, code, body)
			continue
		}
		saysNothingInternal(t, body, "failed")
	}
	code, _, body := do(t, f.srv, "POST", "/v1/plan", `{"commit": "`+commitB+`"}`)
	if code != http.StatusServiceUnavailable {
		t.Errorf("plan without quorum: HTTP %d, want 503: %s", code, body)
	}
}

func TestProposalsWithUnknownOutcomeAre503(t *testing.T) {
	f := newFixture(t)
	f.replica.FailProposals(fmt.Errorf("%s: %w", internalErr, context.DeadlineExceeded))
	code, _, body := do(t, f.srv, "POST", "/v1/nodes/2/state", `{"state": "draining"}`)
	if code != http.StatusServiceUnavailable {
		t.Fatalf("HTTP %d, want 503: %s", code, body)
	}
	saysNothingInternal(t, body, "quorum", "outcome is unknown", "timed out")
	if code, _, body = do(t, f.srv, "POST", "/v1/vms/web/stop", ""); code != http.StatusServiceUnavailable {
		t.Fatalf("stopping a VM without quorum: HTTP %d, want 503: %s", code, body)
	}
	saysNothingInternal(t, body, "stop VM web", "quorum")
	if code, _, body = do(t, f.srv, "POST", "/v1/tokens", `{"name": "ci", "role": "read"}`); code != http.StatusServiceUnavailable {
		t.Fatalf("creating a token without quorum: HTTP %d, want 503: %s", code, body)
	}
	saysNothingInternal(t, body, "token ci", "token list")
	f.replica.FailAddReplica(errors.New(internalErr))
	if code, _, body = do(t, f.srv, "POST", "/v1/members", `{"id": 4, "raftAddr": "h:1"}`); code != http.StatusConflict {
		t.Fatalf("failed AddReplica: HTTP %d, want 409: %s", code, body)
	}
	saysNothingInternal(t, body, "adding node 4")
}

func TestLogsOfAVMOnAnotherNodeComeFromThatNode(t *testing.T) {
	// Node 2 serves db's log; node 1 proxies to it.
	st := clusterState(t)
	node2 := httptest.NewServer(api.NewServer(api.Options{Replica: testkit.NewReplica(st, 2, 1), Logs: fakeLogs{"db": "booted db v1\n"}, Insecure: true}).Handler())
	defer node2.Close()
	st.Update(func(s *replicated.State) { s.Nodes[2].APIAddr = strings.TrimPrefix(node2.URL, "http://") })
	node1 := httptest.NewServer(api.NewServer(api.Options{Replica: testkit.NewReplica(st, 1, 1), Logs: fakeLogs{}, Insecure: true}).Handler())
	defer node1.Close()
	var out bytes.Buffer
	if err := newClient(t, node1.URL).Logs(context.Background(), "db", false, &out); err != nil || out.String() != "booted db v1\n" {
		t.Fatalf("logs of db through node 1: %q, %v", out.String(), err)
	}
	st.Update(func(s *replicated.State) { s.Nodes[2].APIAddr = "" })
	code, _, body := do(t, node1, "GET", "/v1/vms/db/logs", "")
	if code != http.StatusBadGateway {
		t.Fatalf("node 2 without an API address: HTTP %d, want 502: %s", code, body)
	}
	errorSays("node 2")(t, nil, body)
}

func TestVMRunStateSequence(t *testing.T) {
	f := newFixture(t)
	c := newClient(t, f.srv.URL)
	ctx := context.Background()
	if _, err := c.SetVMRunState(ctx, "web", api.VMStop); err != nil {
		t.Fatal(err)
	}
	// Restarting a VM kept stopped would start it behind the operator's back.
	_, err := c.SetVMRunState(ctx, "web", api.VMRestart)
	var e *api.Error
	if !errors.As(err, &e) || e.Code != http.StatusConflict || !strings.Contains(e.Message, "blixard vm start web") {
		t.Fatalf("restart of a stopped VM: %v, want 409 saying to start it", err)
	}
	if _, err := c.SetVMRunState(ctx, "web", api.VMStart); err != nil {
		t.Fatal(err)
	}
	a, err := c.SetVMRunState(ctx, "web", api.VMRestart)
	if err != nil || !strings.Contains(a.Message, "restarted") {
		t.Fatalf("restart of a running VM: %+v, %v", a, err)
	}
	d, err := c.Diff(ctx)
	if err != nil || len(d) != 1 || d[0].VM != "db" {
		t.Errorf("diff %+v, %v: want only db, never reported", d, err)
	}
}
