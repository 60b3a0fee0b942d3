package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/pki"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// agentServer serves a TLS API for replica until the test ends and
// returns its address and the server (to call Applied).
func agentServer(t *testing.T, p *testPKI, replica *testkit.Replica) (string, *api.Server) {
	t.Helper()
	return agentServerWith(t, p, replica, nil)
}

// agentServerWith is agentServer with options changed by opts (nil: none).
func agentServerWith(t *testing.T, p *testPKI, replica *testkit.Replica, opts func(*api.Options)) (string, *api.Server) {
	t.Helper()
	o := api.Options{Replica: replica, TLS: p.server(t, "node-1"), Now: func() time.Time { return testkit.T0 }}
	if opts != nil {
		opts(&o)
	}
	srv := api.NewServer(o)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve after cancel: %v", err)
		}
	})
	return ln.Addr().String(), srv
}

// httpsAs is a plain HTTPS client presenting who's certificate ("": none).
func (p *testPKI) httpsAs(t *testing.T, who string) *http.Client {
	t.Helper()
	var cert, key string
	if who != "" {
		cert, key = p.files(who)
	}
	cfg, err := pki.ClientTLS(p.ca, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = cfg
	c := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	t.Cleanup(tr.CloseIdleConnections)
	return c
}

type answer struct {
	code int
	body []byte
}

func call(t *testing.T, c *http.Client, method, u string, body []byte, header http.Header) answer {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, b}
}

func heartbeatOf(id uint64, sts ...replicated.VMStatus) replicated.Command {
	return replicated.Command{V: replicated.CommandVersion, Type: replicated.CmdNodeHeartbeat, At: testkit.T0,
		NodeHeartbeat: &replicated.NodeHeartbeat{ID: id, Statuses: sts}}
}

func proposal(t *testing.T, cmd replicated.Command) []byte {
	t.Helper()
	b, err := json.Marshal(api.AgentProposal{Command: cmd})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestAgentEndpointsAuthorise: only node certificates, for their own node,
// and only the commands an agent sends; garbage is 400 saying what is
// wrong.
func TestAgentEndpointsAuthorise(t *testing.T) {
	p := newTestPKI(t)
	replica := testkit.NewReplica(clusterState(t), 1, 1)
	addr, _ := agentServer(t, p, replica)
	base := "https://" + addr
	view := func(node string) string { return base + "/v1/agent/view?wait=0s&node=" + node }
	propose := func(node string) string { return base + "/v1/agent/propose?node=" + node }
	scaleIn := replicated.Command{V: 1, Type: replicated.CmdScaleFunction, At: testkit.T0,
		ScaleFunction: &replicated.ScaleFunction{Function: "f", Kind: replicated.ScaleIn, Node: 1}}
	scaleOut := scaleIn
	scaleOut.ScaleFunction = &replicated.ScaleFunction{Function: "f", Kind: replicated.ScaleOut, Want: 1, Node: 2}
	smuggled := heartbeatOf(1)
	smuggled.SetNodeState = &replicated.SetNodeState{ID: 2, State: replicated.NodeDown}
	plan := testkit.Plan(0, "c", testkit.Assign("x", 1, "v"))
	withPlan := scaleIn
	withPlan.ScaleFunction = &replicated.ScaleFunction{Function: "f", Kind: replicated.ScaleOut, Want: 1, Node: 1,
		Plan: plan.CommitPlan, Inputs: 1}
	for _, tc := range []struct {
		name, who, method, url string
		body                   []byte
		header                 http.Header
		want                   int
		says                   string
	}{
		{"own view", "node-1", "GET", view("1"), nil, nil, 200, `"node":1`},
		{"another node's view", "node-1", "GET", view("2"), nil, nil, 403, "node-1's certificate may not act for node 2"},
		{"a user's certificate, even admin", "carol", "GET", view("1"), nil, nil, 403, "node certificate"},
		{"a token", "", "GET", view("1"), nil, http.Header{"Authorization": {"Bearer blx_whatever"}}, 403, "not a bearer token"},
		{"no credentials", "", "GET", view("1"), nil, nil, 401, "no credentials"},
		{"no node", "node-1", "GET", base + "/v1/agent/view", nil, nil, 400, "query parameter node"},
		{"node not a number", "node-1", "GET", view("one"), nil, nil, 400, "not a node id"},
		{"unknown part", "node-1", "GET", view("1") + "&secrets=x", nil, nil, 400, "unknown view part"},
		{"wait too long", "node-1", "GET", base + "/v1/agent/view?node=1&wait=1h", nil, nil, 400, "wait="},
		{"bad optional part", "node-1", "GET", view("1") + "&optional=self", nil, nil, 400, "optional=self"},
		{"own heartbeat", "node-1", "POST", propose("1"), proposal(t, heartbeatOf(1)), nil, 200, `"result"`},
		{"another node's heartbeat", "node-1", "POST", propose("1"), proposal(t, heartbeatOf(2)), nil, 403,
			"node 1 may not propose NodeHeartbeat for node 2"},
		{"a status as another node's", "node-1", "POST", propose("1"),
			proposal(t, heartbeatOf(1, replicated.VMStatus{VM: "db", Node: 2, Phase: replicated.PhaseStopped})), nil, 403, "its own VMs only"},
		{"proposing for another node", "node-1", "POST", propose("2"), proposal(t, heartbeatOf(2)), nil, 403, "may not act for node 2"},
		{"a plan", "node-1", "POST", propose("1"), proposal(t, plan), nil, 403, `not "CommitPlan"`},
		{"a scale-in", "node-1", "POST", propose("1"), proposal(t, scaleIn), nil, 403, "scales out only"},
		{"a scale-out for another node", "node-1", "POST", propose("1"), proposal(t, scaleOut), nil, 403, "for node 2"},
		{"a scale-out carrying a plan", "node-1", "POST", propose("1"), proposal(t, withPlan), nil, 403, "carries no plan"},
		{"its own node's problem", "node-1", "POST", propose("1"), proposal(t, problemOf(1)), nil, 200, `"result"`},
		{"another node's problem", "node-1", "POST", propose("1"), proposal(t, problemOf(2)), nil, 403,
			"node 1 may not propose SetNodeProblem for node 2"},
		{"a second command smuggled along", "node-1", "POST", propose("1"), proposal(t, smuggled), nil, 400, `carries "setNodeState"`},
		{"a heartbeat without its field", "node-1", "POST", propose("1"), []byte(`{"command":{"v":1,"type":"NodeHeartbeat"}}`), nil, 400,
			`without "nodeHeartbeat"`},
		{"garbage", "node-1", "POST", propose("1"), []byte("{not json"), nil, 400, "want an agent proposal"},
		{"unknown field", "node-1", "POST", propose("1"), []byte(`{"command":{},"extra":1}`), nil, 400, "unknown field"},
		{"a user proposing", "carol", "POST", propose("1"), proposal(t, heartbeatOf(1)), nil, 403, "node certificate"},
		{"GET on propose", "node-1", "GET", propose("1"), nil, nil, 405, "method not allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := call(t, p.httpsAs(t, tc.who), tc.method, tc.url, tc.body, tc.header)
			text := string(a.body)
			var e api.ErrorBody
			if a.code != 200 && json.Unmarshal(a.body, &e) == nil {
				text = e.Error
			}
			if a.code != tc.want || !strings.Contains(text, tc.says) {
				t.Errorf("%s %s as %q = %d %s, want %d saying %q", tc.method, tc.url, tc.who, a.code, a.body, tc.want, tc.says)
			}
		})
	}
	// Nothing forbidden reached Raft: the only proposals are the
	// allowed heartbeat's and node 1's own problem.
	for _, c := range replica.Proposed() {
		if c.Type != replicated.CmdNodeHeartbeat && c.Type != replicated.CmdRegisterNode && c.Type != replicated.CmdCommitPlan &&
			c.Type != replicated.CmdSetCondition && (c.Type != replicated.CmdSetNodeProblem || c.SetNodeProblem.ID != 1) {
			t.Errorf("a forbidden command was proposed: %s", testkit.JSON(t, c))
		}
	}
	if n := len(replica.ProposedOf(replicated.CmdNodeHeartbeat)); n != 2 { // clusterState's and the allowed one
		t.Errorf("%d heartbeats proposed, want 2", n)
	}
}

// TestAgentViewLongPoll: a poll with the versions the agent holds waits
// until its view changes, and returns only the changed parts; a change of
// another node only does not answer it; a proposal's answer already
// holds the view after the commit.
func TestAgentViewLongPoll(t *testing.T) {
	p := newTestPKI(t)
	replica := testkit.NewReplica(clusterState(t), 1, 1)
	addr, srv := agentServer(t, p, replica)
	c := p.httpsAs(t, "node-1")
	base := "https://" + addr

	a := call(t, c, "GET", base+"/v1/agent/view?node=1&wait=0s", nil, nil)
	var first api.AgentViewAnswer
	if err := json.Unmarshal(a.body, &first); err != nil || a.code != 200 {
		t.Fatalf("first view: %d %s %v", a.code, a.body, err)
	}
	if len(first.Parts) != len(replicated.BaseViewParts()) {
		t.Fatalf("first view has parts %v, want every base part", first.Parts)
	}
	q := url.Values{"node": {"1"}, "wait": {"20s"}}
	for part, e := range first.Parts {
		q.Set(string(part), e.Version)
	}

	type result struct {
		a   answer
		err error
	}
	polled := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest("GET", base+"/v1/agent/view?"+q.Encode(), nil)
		resp, err := c.Do(req)
		if err != nil {
			polled <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		polled <- result{a: answer{resp.StatusCode, b}}
	}()
	// Node 2's heartbeat with the statuses it had: nothing of node 1's
	// view changes. Then node 1's VM is stopped by an operator: its work
	// changes.
	if _, err := replica.Propose(context.Background(), heartbeatOf(2)); err != nil {
		t.Fatal(err)
	}
	srv.Applied()
	select {
	case r := <-polled:
		t.Fatalf("the poll answered on another node's heartbeat: %+v", r)
	case <-time.After(300 * time.Millisecond): // several computation intervals
	}
	if res, err := replica.Propose(context.Background(), replicated.Command{V: 1, Type: replicated.CmdSetVMRunState, At: testkit.T0,
		SetVMRunState: &replicated.SetVMRunState{VM: "web", Want: replicated.RunStateStopped}}); err != nil || !res.OK() {
		t.Fatal(err, res)
	}
	srv.Applied()
	r := <-polled
	if r.err != nil || r.a.code != 200 {
		t.Fatalf("poll: %v %d %s", r.err, r.a.code, r.a.body)
	}
	var changed api.AgentViewAnswer
	if err := json.Unmarshal(r.a.body, &changed); err != nil {
		t.Fatal(err)
	}
	if len(changed.Parts) != 1 || changed.Parts[replicated.ViewWork].Version == "" {
		t.Fatalf("changed parts = %v, want work only", keys(changed.Parts))
	}
	var work replicated.ViewWorkPart
	if err := json.Unmarshal(changed.Parts[replicated.ViewWork].Data, &work); err != nil {
		t.Fatal(err)
	}
	if work.Assignments["web"].Stopped != replicated.StoppedByOperator {
		t.Errorf("web in the new work part = %+v, want stopped by the operator", work.Assignments["web"])
	}

	// A heartbeat's answer holds node 1's record with the new sequence.
	have := map[replicated.ViewPart]string{}
	for part, e := range first.Parts {
		have[part] = e.Version
	}
	have[replicated.ViewWork] = changed.Parts[replicated.ViewWork].Version
	body, _ := json.Marshal(api.AgentProposal{Command: heartbeatOf(1), Have: have})
	a = call(t, c, "POST", base+"/v1/agent/propose?node=1", body, nil)
	var pa api.AgentProposeAnswer
	if err := json.Unmarshal(a.body, &pa); err != nil || a.code != 200 || !pa.Result.OK() {
		t.Fatalf("propose: %d %s %v", a.code, a.body, err)
	}
	var self replicated.Node
	if err := json.Unmarshal(pa.View.Parts[replicated.ViewSelf].Data, &self); err != nil {
		t.Fatalf("the proposal's answer lacks node 1's record: %s", a.body)
	}
	st, _ := replica.LocalRead()
	if self.LastHeartbeatSeq != st.Nodes[1].LastHeartbeatSeq || pa.View.Applied != st.Applied {
		t.Errorf("answer's record seq %d at %d, want %d at %d", self.LastHeartbeatSeq, pa.View.Applied, st.Nodes[1].LastHeartbeatSeq, st.Applied)
	}
}

func keys(m map[replicated.ViewPart]replicated.EncodedPart) []replicated.ViewPart {
	var out []replicated.ViewPart
	for k := range m {
		out = append(out, k)
	}
	return out
}

// benchAgentServer serves a TLS API over a state of 1,000 nodes × 10,000
// VMs (every view computation covers all of them) and returns its URL, a
// client with node 1's certificate, the server and its replica.
func benchAgentServer(b *testing.B) (string, *http.Client, *api.Server, *testkit.Replica) {
	dir := b.TempDir()
	if err := pki.InitCA(filepath.Join(dir, "ca")); err != nil {
		b.Fatal(err)
	}
	if _, err := pki.IssueNode(filepath.Join(dir, "ca"), filepath.Join(dir, "certs"), 1, []string{"127.0.0.1"}); err != nil {
		b.Fatal(err)
	}
	ca, cert, key := filepath.Join(dir, "ca", pki.CACertFile), filepath.Join(dir, "certs", "node-1.crt"), filepath.Join(dir, "certs", "node-1.key")
	serverTLS, err := pki.ServerTLSClientCertIfGiven(ca, cert, key)
	if err != nil {
		b.Fatal(err)
	}
	clientTLS, err := pki.ClientTLS(ca, cert, key)
	if err != nil {
		b.Fatal(err)
	}
	st := testkit.NewStore(nil)
	for id := uint64(1); id <= 1000; id++ {
		if _, err := st.Propose(context.Background(), testkit.Register(id)); err != nil {
			b.Fatal(err)
		}
	}
	var as []replicated.Assignment
	for i := range 10000 {
		as = append(as, testkit.Assign(fmt.Sprintf("vm%05d", i), uint64(i%1000)+1, "v1"))
	}
	if res, err := st.Propose(context.Background(), testkit.Plan(0, "c1", as...)); err != nil || !res.OK() {
		b.Fatal(err, res)
	}
	replica := testkit.NewReplica(st, 1, 1)
	srv := api.NewServer(api.Options{Replica: replica, TLS: serverTLS})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = clientTLS
	b.Cleanup(func() { tr.CloseIdleConnections(); cancel(); <-done })
	return "https://" + ln.Addr().String(), &http.Client{Transport: tr}, srv, replica
}

func getView(c *http.Client, base string, q url.Values) (api.AgentViewAnswer, error) {
	resp, err := c.Get(base + "/v1/agent/view?" + q.Encode())
	if err != nil {
		return api.AgentViewAnswer{}, err
	}
	defer resp.Body.Close()
	var a api.AgentViewAnswer
	err = json.NewDecoder(resp.Body).Decode(&a)
	return a, err
}

// BenchmarkAgentLongPollRoundTrip: a view change (an operator's stop or
// start of a VM of node 1) to node 1's waiting poll answering, over TLS
// with a node certificate, at 1,000 nodes × 10,000 VMs.
func BenchmarkAgentLongPollRoundTrip(b *testing.B) {
	base, c, srv, replica := benchAgentServer(b)
	q := url.Values{"node": {"1"}, "wait": {"0s"}}
	a, err := getView(c, base, q)
	if err != nil {
		b.Fatal(err)
	}
	for part, e := range a.Parts {
		q.Set(string(part), e.Version)
	}
	q.Set("wait", "20s")
	want := replicated.RunStateStopped
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		type got struct {
			a   api.AgentViewAnswer
			err error
		}
		answered := make(chan got, 1)
		go func() {
			a, err := getView(c, base, q)
			answered <- got{a, err}
		}()
		time.Sleep(100 * time.Millisecond) // the poll waits at the server
		b.StartTimer()
		if res, err := replica.Propose(context.Background(), replicated.Command{V: 1, Type: replicated.CmdSetVMRunState, At: testkit.T0,
			SetVMRunState: &replicated.SetVMRunState{VM: "vm00000", Want: want}}); err != nil || !res.OK() {
			b.Fatal(err, res)
		}
		srv.Applied()
		g := <-answered
		b.StopTimer()
		if g.err != nil || len(g.a.Parts) == 0 {
			b.Fatalf("the poll answered %+v, %v; want the change", g.a, g.err)
		}
		for part, e := range g.a.Parts {
			q.Set(string(part), e.Version)
		}
		if want == replicated.RunStateStopped {
			want = replicated.RunStateRunning
		} else {
			want = replicated.RunStateStopped
		}
		b.StartTimer()
	}
}

// BenchmarkAgentProposeHeartbeat: node 1's heartbeat through POST
// /v1/agent/propose until its answer (the commit and the view after it),
// at 1,000 nodes × 10,000 VMs, one at a time.
func BenchmarkAgentProposeHeartbeat(b *testing.B) {
	base, c, _, _ := benchAgentServer(b)
	have := map[replicated.ViewPart]string{}
	for range b.N {
		body, err := json.Marshal(api.AgentProposal{Command: heartbeatOf(1), Have: have})
		if err != nil {
			b.Fatal(err)
		}
		resp, err := c.Post(base+"/v1/agent/propose?node=1", "application/json", bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		var a api.AgentProposeAnswer
		err = json.NewDecoder(resp.Body).Decode(&a)
		resp.Body.Close()
		if err != nil || !a.Result.OK() {
			b.Fatalf("%v %+v", err, a.Result)
		}
		for part, e := range a.View.Parts {
			have[part] = e.Version
		}
	}
}

// TestAgentOnlyNodeFunctions: an agent-only node's API answers GET
// /v1/functions with its own gateway's counts (from its view, marked
// stale), so a server's GET /v1/functions?nodes=all sums its gateway with
// the others; nodes=all itself is the servers'.
func TestAgentOnlyNodeFunctions(t *testing.T) {
	st := clusterState(t)
	st.Update(func(s *replicated.State) {
		s.Desired.Functions = map[string]spec.Function{"hello": {MaxInstances: 4, Concurrency: 2, IdleTimeout: time.Minute,
			HTTP: spec.FunctionHTTP{Host: "fn.test", Path: "/", Port: 8080}}}
		s.Nodes[4] = &replicated.Node{ID: 4, State: replicated.NodeReady}
	})
	agentOnly := httptest.NewServer(api.NewServer(api.Options{Replica: testkit.NewReplica(st, 4, 0), Insecure: true, AgentOnly: true,
		Functions: gatewayStats{{Function: "hello", Requests: 7, ColdStarts: 1}}}).Handler())
	defer agentOnly.Close()
	st.Update(func(s *replicated.State) { s.Nodes[4].APIAddr = strings.TrimPrefix(agentOnly.URL, "http://") })

	code, hdr, body := do(t, agentOnly, "GET", "/v1/functions", "")
	var own api.FunctionsView
	if err := json.Unmarshal(body, &own); code != http.StatusOK || err != nil || len(own.Functions) != 1 || own.Functions[0].Local == nil ||
		own.Functions[0].Local.Requests != 7 || !own.Stale || hdr.Get(api.HeaderStale) != "true" || !strings.Contains(own.StaleReason, "agent-only node 4") {
		t.Fatalf("GET /v1/functions on the agent-only node: HTTP %d, %v, %s: want its gateway's counts, marked stale", code, err, body)
	}
	if code, _, body := do(t, agentOnly, "GET", "/v1/functions?nodes=all", ""); code != http.StatusBadRequest || !strings.Contains(string(body), "ask a server") {
		t.Errorf("nodes=all on the agent-only node: HTTP %d %s, want 400 pointing to the servers", code, body)
	}
	if code, _, body := do(t, agentOnly, "GET", "/v1/status", ""); code != http.StatusNotFound || !strings.Contains(string(body), "agent-only node") {
		t.Errorf("GET /v1/status on the agent-only node: HTTP %d %s, want 404 naming the servers", code, body)
	}

	server := httptest.NewServer(api.NewServer(api.Options{Replica: testkit.NewReplica(st, 1, 1), Insecure: true,
		Functions: gatewayStats{{Function: "hello", Requests: 2}}}).Handler())
	defer server.Close()
	code, _, body = do(t, server, "GET", "/v1/functions?nodes=all", "")
	var all api.FunctionsView
	if err := json.Unmarshal(body, &all); code != http.StatusOK || err != nil {
		t.Fatalf("GET /v1/functions?nodes=all on a server: HTTP %d, %v: %s", code, err, body)
	}
	for _, g := range all.Gateways {
		if g.Node == 4 && (g.Error != "" || len(g.Functions) != 1 || g.Functions[0].Requests != 7) {
			t.Errorf("the agent-only node's gateway in nodes=all: %+v, want its 7 requests", g)
		}
	}
	if c := all.Functions[0].Cluster; c == nil || c.Requests < 9 {
		t.Errorf("cluster counts %+v: want node 1's 2 requests and node 4's 7 at least", c)
	}
}

func problemOf(node uint64) replicated.Command {
	return replicated.Command{V: 1, Type: replicated.CmdSetNodeProblem, At: testkit.T0,
		SetNodeProblem: &replicated.SetNodeProblem{ID: node, Part: "network", Message: "route 10.0.0.0/8 overlaps the overlay"}}
}

// helloReplica is node 1's replica of two registered nodes running web on
// node 2, whose spec declares function hello (0–2 instances).
func helloReplica(t *testing.T) *testkit.Replica {
	t.Helper()
	store := testkit.NewStore(nil)
	plan := autostarted(testkit.Plan(0, commitA, testkit.Assign("web", 2, "v1")))
	plan.CommitPlan.Spec.Functions = map[string]spec.Function{"hello": {Runner: spec.Runner{Drv: "/nix/store/fn.drv", Out: "/nix/store/fn"},
		VCPU: 1, MemMiB: 256, MaxInstances: 2, Concurrency: 4, IdleTimeout: time.Minute,
		HTTP: spec.FunctionHTTP{Host: "fn.test", Path: "/", Port: 8080}}}
	for _, cmd := range []replicated.Command{testkit.Register(1), testkit.Register(2), plan} {
		if res, err := store.Propose(context.Background(), cmd); err != nil || !res.OK() {
			t.Fatalf("setting up %s: %v %+v", cmd.Type, err, res)
		}
	}
	return testkit.NewReplica(store, 1, 1)
}

// TestAgentScaleOutGetsTheServersPlan: an agent-only node's scale-out
// carries no plan; the server attaches the one it makes from its replica,
// so the instance is placed in the entry that scaled the function.
func TestAgentScaleOutGetsTheServersPlan(t *testing.T) {
	p := newTestPKI(t)
	replica := helloReplica(t)
	addr, _ := agentServer(t, p, replica)
	out := replicated.Command{V: replicated.CommandVersion, Type: replicated.CmdScaleFunction, At: testkit.T0,
		ScaleFunction: &replicated.ScaleFunction{Function: "hello", Kind: replicated.ScaleOut, Want: 1, Node: 1}}
	a := call(t, p.httpsAs(t, "node-1"), "POST", "https://"+addr+"/v1/agent/propose?node=1", proposal(t, out), nil)
	var answer api.AgentProposeAnswer
	if a.code != 200 || json.Unmarshal(a.body, &answer) != nil {
		t.Fatalf("propose: %d %s", a.code, a.body)
	}
	if !answer.Result.OK() || !strings.Contains(answer.Result.Message, "placed them in the same entry") {
		t.Errorf("result %+v, want the instance placed with the scale", answer.Result)
	}
	sent := replica.ProposedOf(replicated.CmdScaleFunction)
	if len(sent) != 1 || sent[0].ScaleFunction.Plan == nil {
		t.Fatalf("proposed %s; want one scale-out with the server's plan", testkit.JSON(t, sent))
	}
	st, err := replica.LocalRead()
	if err != nil {
		t.Fatal(err)
	}
	if a, ok := st.Assignments["fn-hello-0"]; !ok || a.Node != 1 {
		t.Errorf("fn-hello-0: %+v (assigned %v); want it on node 1, whose gateway asked", a, ok)
	}
}

// recordingScaleOuts stands in for the node's function component (its
// plan and starts ahead are node's tests): it records the scale-outs it
// is given and proposes them through the replica as they are.
type recordingScaleOuts struct {
	replica *testkit.Replica
	mu      sync.Mutex
	got     []replicated.Command
}

func (r *recordingScaleOuts) ProposeScaleOut(ctx context.Context, cmd replicated.Command) (replicated.Result, error) {
	r.mu.Lock()
	r.got = append(r.got, cmd)
	r.mu.Unlock()
	return r.replica.Propose(ctx, cmd)
}

// TestAgentScaleOutGoesThroughTheNodesScaleOuts: with a ScaleOuts (a
// server running a gateway), an agent-only node's scale-out is handed to
// it as the agent sent it (the caller named as its actor, no plan
// attached by the API), and the answer carries the committed result and
// the agent's view after it. Other commands are proposed as before.
func TestAgentScaleOutGoesThroughTheNodesScaleOuts(t *testing.T) {
	p := newTestPKI(t)
	replica := helloReplica(t)
	so := &recordingScaleOuts{replica: replica}
	addr, _ := agentServerWith(t, p, replica, func(o *api.Options) { o.ScaleOuts = so })
	out := replicated.Command{V: replicated.CommandVersion, Type: replicated.CmdScaleFunction, At: testkit.T0,
		ScaleFunction: &replicated.ScaleFunction{Function: "hello", Kind: replicated.ScaleOut, Want: 1, Node: 2}}
	a := call(t, p.httpsAs(t, "node-2"), "POST", "https://"+addr+"/v1/agent/propose?node=2", proposal(t, out), nil)
	var answer api.AgentProposeAnswer
	if a.code != 200 || json.Unmarshal(a.body, &answer) != nil {
		t.Fatalf("propose: %d %s", a.code, a.body)
	}
	if !answer.Result.OK() || answer.View.Node != 2 || answer.View.Applied == 0 {
		t.Errorf("answer %+v; want the committed result and node 2's view after it", answer)
	}
	so.mu.Lock()
	got := so.got
	so.mu.Unlock()
	if len(got) != 1 || got[0].ScaleFunction.Plan != nil || got[0].ScaleFunction.Node != 2 || got[0].Actor != "node-2" {
		t.Fatalf("ScaleOuts was given %s; want node 2's scale-out, without a plan, with node-2 as its actor", testkit.JSON(t, got))
	}
	// A heartbeat is not a scale-out: proposed as it is.
	hb := replicated.Command{V: replicated.CommandVersion, Type: replicated.CmdNodeHeartbeat, At: testkit.T0,
		NodeHeartbeat: &replicated.NodeHeartbeat{ID: 2, Seq: 1}}
	if a := call(t, p.httpsAs(t, "node-2"), "POST", "https://"+addr+"/v1/agent/propose?node=2", proposal(t, hb), nil); a.code != 200 {
		t.Fatalf("heartbeat: %d %s", a.code, a.body)
	}
	if n := len(so.got); n != 1 {
		t.Errorf("ScaleOuts was given %d commands after a heartbeat; want still 1", n)
	}
}

// fakeAhead lends node 1's view one instance started ahead once set.
type fakeAhead struct {
	mu  sync.Mutex
	set bool
}

func (f *fakeAhead) Ahead(st *replicated.State) map[uint64]api.AheadInstances {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.set {
		return nil
	}
	with := st.Clone()
	with.Assignments["fn-hello-0"] = replicated.Assignment{VM: "fn-hello-0", Declared: "fn-hello-0", Function: "hello", Node: 1,
		Drv: "/nix/store/fn.drv", OutPath: "/nix/store/fn", VCPU: 1, MemMiB: 64}
	return map[uint64]api.AheadInstances{1: {State: with, Instances: []string{"fn-hello-0"}}}
}

// TestAgentViewLendsTheInstancesAhead: once AgentAhead holds an instance,
// a waiting view poll answers, without an applied entry, with the work
// part that has it (marked Ahead); the state is not changed. (That
// WakeAgentViews computes at once rather than at the 1 s fallback tick is
// timing, not asserted: docs/benchmarks.md measures it.)
func TestAgentViewLendsTheInstancesAhead(t *testing.T) {
	p := newTestPKI(t)
	replica := testkit.NewReplica(clusterState(t), 1, 1)
	ahead := &fakeAhead{}
	addr, srv := agentServerWith(t, p, replica, func(o *api.Options) { o.AgentAhead = ahead })
	c := p.httpsAs(t, "node-1")
	base := "https://" + addr
	a := call(t, c, "GET", base+"/v1/agent/view?node=1&wait=0s", nil, nil)
	var first api.AgentViewAnswer
	if err := json.Unmarshal(a.body, &first); err != nil || a.code != 200 {
		t.Fatalf("first view: %d %s %v", a.code, a.body, err)
	}
	q := url.Values{"node": {"1"}, "wait": {"20s"}}
	for part, e := range first.Parts {
		q.Set(string(part), e.Version)
	}
	polled := make(chan answer, 1)
	go func() {
		var a answer
		req, _ := http.NewRequest("GET", base+"/v1/agent/view?"+q.Encode(), nil)
		if resp, err := c.Do(req); err == nil {
			a.code = resp.StatusCode
			a.body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		polled <- a
	}()
	time.Sleep(100 * time.Millisecond) // the poll waits (its answer would say otherwise)
	ahead.mu.Lock()
	ahead.set = true
	ahead.mu.Unlock()
	srv.WakeAgentViews()
	var r answer
	select {
	case r = <-polled:
	case <-time.After(15 * time.Second): // a hang guard, not a timing assertion
		t.Fatal("the poll did not answer after WakeAgentViews")
	}
	var changed api.AgentViewAnswer
	if err := json.Unmarshal(r.body, &changed); err != nil || r.code != 200 {
		t.Fatalf("poll: %d %s %v", r.code, r.body, err)
	}
	var work replicated.ViewWorkPart
	if len(changed.Parts) != 1 || json.Unmarshal(changed.Parts[replicated.ViewWork].Data, &work) != nil {
		t.Fatalf("changed parts %v, want the work part only", keys(changed.Parts))
	}
	if _, ok := work.Assignments["fn-hello-0"]; !ok || !slices.Equal(work.Ahead, []string{"fn-hello-0"}) {
		t.Errorf("work part %+v; want fn-hello-0 assigned and marked ahead", work)
	}
	st, _ := replica.LocalRead()
	if _, ok := st.Assignments["fn-hello-0"]; ok {
		t.Error("the replica's state has the instance lent to the view")
	}
}
