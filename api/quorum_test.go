package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/raftstore"
	"github.com/blixard/blixard/replicated"
)

// raftNode is one real Dragonboat replica with its API server.
type raftNode struct {
	store *raftstore.Store
	cfg   raftstore.Config
	url   string
}

// startRaftCluster starts n voters on loopback, each with an API server
// as the node assembles it (Health, ReadWait from the Raft timing), and
// closes them when the test ends.
func startRaftCluster(t testing.TB, n int) []*raftNode {
	t.Helper()
	members := map[uint64]string{}
	for i := range n {
		members[uint64(i+1)] = testkit.FreeLoopbackAddr(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nodes := make([]*raftNode, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		id := uint64(i + 1)
		cfg := raftstore.Config{NodeID: id, RaftAddr: members[id], DataDir: filepath.Join(t.TempDir(), fmt.Sprint(id)), Members: members,
			Logger: slog.New(slog.DiscardHandler)}
		nodes[i] = &raftNode{cfg: cfg}
		wg.Add(1)
		go func() {
			defer wg.Done()
			nodes[i].store, errs[i] = raftstore.Start(ctx, cfg)
		}()
	}
	wg.Wait()
	for _, nd := range nodes {
		if nd.store != nil {
			t.Cleanup(func() { nd.store.Close() })
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for _, nd := range nodes {
		// No StalledAfter: a loaded machine may take a while to answer the
		// first fresh read, and progress is tested on its own below.
		srv := httptest.NewServer(api.NewServer(api.Options{Replica: nd.store, Health: nd.store, ReadWait: nd.cfg.ReadWait(),
			StalledAfter: time.Hour, Insecure: true}).Handler())
		t.Cleanup(srv.Close)
		nd.url = srv.URL
	}
	return nodes
}

// get GETs path and decodes the JSON answer into v (nil: not decoded).
func get(t testing.TB, url string, v any) *http.Response {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("GET %s: %d %s: %v", url, resp.StatusCode, b, err)
		}
	}
	return resp
}

// TestTheLastOfThreeNodesAnswersStaleAndUnhealthy runs three real
// replicas with their APIs: with a quorum every node answers fresh status
// and is healthy; after two of them stop, the survivor still answers
// status and the lists from its own replica, marked stale with the reason,
// and /healthz says 503 "no quorum".
func TestTheLastOfThreeNodesAnswersStaleAndUnhealthy(t *testing.T) {
	nodes := startRaftCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, nd := range nodes {
		if res, err := nd.store.Propose(ctx, testkit.Register(nd.store.NodeID())); err != nil || !res.OK() {
			t.Fatalf("register node %d: %v %+v", nd.store.NodeID(), err, res)
		}
	}
	for _, nd := range nodes {
		// Eventually, not at once: on a loaded machine a linearizable read
		// may take longer than ReadWait, and is then answered stale.
		testkit.WaitFor(t, 20*time.Second, fmt.Sprintf("a fresh status from node %d", nd.store.NodeID()), func() error {
			var v api.StatusView
			resp := get(t, nd.url+"/v1/status", &v)
			if resp.StatusCode != http.StatusOK || v.Stale || v.StaleReason != "" || len(v.Nodes) != 3 || v.Leader == 0 ||
				v.AppliedIndex == 0 || resp.Header.Get(api.HeaderStale) != "false" {
				return fmt.Errorf("HTTP %d, %+v, %d nodes, headers %v", resp.StatusCode, v.Freshness, len(v.Nodes), resp.Header)
			}
			return nil
		})
		var cv api.StatusView
		if resp := get(t, nd.url+"/v1/status?consistent", &cv); resp.StatusCode != http.StatusOK || cv.Stale || len(cv.Nodes) != 3 {
			t.Fatalf("node %d status?consistent with a quorum: HTTP %d %+v", nd.store.NodeID(), resp.StatusCode, cv.Freshness)
		}
		var h api.Health
		if resp := get(t, nd.url+"/healthz", &h); resp.StatusCode != http.StatusOK || !h.OK || h.Leader == 0 || h.AppliedIndex == 0 || h.Reason != "" {
			t.Fatalf("node %d healthz with a quorum: HTTP %d %+v", nd.store.NodeID(), resp.StatusCode, h)
		}
	}

	survivor := nodes[0]
	for _, nd := range nodes[1:] {
		nd.store.Close()
	}
	testkit.WaitFor(t, 20*time.Second, "the survivor to know it has no leader", testkit.Until(func() bool {
		id, _ := survivor.store.LeaderSince()
		return id == 0
	}))
	applied, _ := survivor.store.LastApplied()

	var v api.StatusView
	resp := get(t, survivor.url+"/v1/status", &v)
	if resp.StatusCode != http.StatusOK || !v.Stale || !strings.HasPrefix(v.StaleReason, "no leader: election in progress (no Raft leader known for ") ||
		v.AppliedIndex != applied || len(v.Nodes) != 3 || v.Leader != 0 {
		t.Fatalf("status without a quorum: HTTP %d, %+v, leader %d, %d nodes; want stale at index %d with the 3 nodes",
			resp.StatusCode, v.Freshness, v.Leader, len(v.Nodes), applied)
	}
	if f := api.FreshnessOf(resp.Header); f != v.Freshness {
		t.Errorf("status headers say %+v, the body %+v", f, v.Freshness)
	}
	var ns []api.NodeView
	resp = get(t, survivor.url+"/v1/nodes", &ns)
	if f := api.FreshnessOf(resp.Header); resp.StatusCode != http.StatusOK || len(ns) != 3 || !f.Stale || f.AppliedIndex != applied {
		t.Errorf("nodes without a quorum: HTTP %d, %d nodes, %+v", resp.StatusCode, len(ns), f)
	}
	// ?consistent: a linearizable read or nothing.
	var e api.ErrorBody
	resp = get(t, survivor.url+"/v1/status?consistent", &e)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.HasPrefix(e.Error, "no quorum: ?consistent asks for a linearizable read") {
		t.Errorf("status?consistent without a quorum: HTTP %d %+v; want 503 no quorum", resp.StatusCode, e)
	}
	var h api.Health
	resp = get(t, survivor.url+"/healthz", &h)
	if resp.StatusCode != http.StatusServiceUnavailable || h.OK || !strings.HasPrefix(h.Reason, "no quorum: no Raft leader known for ") ||
		h.Node != 1 || h.AppliedIndex != applied {
		t.Fatalf("healthz without a quorum: HTTP %d %+v", resp.StatusCode, h)
	}
}

// unconfirming is a replica whose leader never confirms a linearizable
// read (gone or overloaded, before its followers notice).
type unconfirming struct{ *testkit.Replica }

func (u unconfirming) Read(ctx context.Context) (*replicated.State, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func TestAReadTheLeaderDoesNotConfirmInTimeIsAnsweredStale(t *testing.T) {
	rep := unconfirming{testkit.NewReplica(clusterState(t), 2, 1)}
	srv := httptest.NewServer(api.NewServer(api.Options{Replica: rep, ReadWait: 200 * time.Millisecond, Insecure: true}).Handler())
	defer srv.Close()
	var v api.StatusView
	resp := get(t, srv.URL+"/v1/status", &v)
	st, _ := rep.LocalRead()
	want := "leader node 1 did not confirm a linearizable read within 200ms (it may be gone, cut off or overloaded)"
	if resp.StatusCode != http.StatusOK || !v.Stale || v.StaleReason != want || v.AppliedIndex != st.Applied || v.Revision == nil {
		t.Fatalf("status: HTTP %d %+v revision %+v", resp.StatusCode, v.Freshness, v.Revision)
	}
	// The next reads do not wait for the same leader again for a while.
	var again api.StatusView
	get(t, srv.URL+"/v1/status", &again)
	if !again.Stale || !strings.HasPrefix(again.StaleReason, "leader node 1 did not confirm a linearizable read within 200ms, ") {
		t.Fatalf("the read after: %+v", again.Freshness)
	}
	// The node still knows a leader: healthz is not about reads.
	if resp := get(t, srv.URL+"/healthz", nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz: HTTP %d", resp.StatusCode)
	}
	var b strings.Builder
	if err := api.WriteStatus(&b, v); err != nil {
		t.Fatal(err)
	}
	if first, _, _ := strings.Cut(b.String(), "\n"); !strings.HasPrefix(first, "WARNING: stale answer") || !strings.Contains(first, want) {
		t.Fatalf("status text starts with %q, want the stale warning", first)
	}
}

func TestWithoutALeaderEveryReadAnswersStaleAndHealthzSaysNoQuorum(t *testing.T) {
	rep := testkit.NewReplica(clusterState(t), 2, 0)
	srv := httptest.NewServer(api.NewServer(api.Options{Replica: rep, Insecure: true}).Handler())
	defer srv.Close()
	for _, path := range []string{"/v1/state", "/v1/status", "/v1/nodes", "/v1/history", "/v1/diff", "/v1/events", "/v1/tokens"} {
		resp := get(t, srv.URL+path, nil)
		if f := api.FreshnessOf(resp.Header); resp.StatusCode != http.StatusOK || !f.Stale || f.StaleReason != "no leader: election in progress" || f.AppliedIndex == 0 {
			t.Errorf("GET %s without a leader: HTTP %d %+v", path, resp.StatusCode, f)
		}
	}
	var h api.Health
	if resp := get(t, srv.URL+"/healthz", &h); resp.StatusCode != http.StatusServiceUnavailable || h.Reason != "no quorum: no Raft leader known" {
		t.Fatalf("healthz without a leader: HTTP %d %+v", resp.StatusCode, h)
	}
}

// stalled is a replica that knows leader 1 but applied nothing for a
// minute.
type stalled struct{ now time.Time }

func (s stalled) LeaderSince() (uint64, time.Time) { return 1, s.now.Add(-time.Hour) }
func (s stalled) LastApplied() (uint64, time.Time) { return 42, s.now.Add(-time.Minute) }

func TestAReplicaThatAppliesNothingIsUnhealthy(t *testing.T) {
	now := time.Now()
	o := api.Options{Replica: testkit.NewReplica(nil, 3, 1), Health: stalled{now}, StalledAfter: 10 * time.Second,
		Now: func() time.Time { return now }, Insecure: true}
	srv := httptest.NewServer(api.NewServer(o).Handler())
	defer srv.Close()
	var h api.Health
	resp := get(t, srv.URL+"/healthz", &h)
	if resp.StatusCode != http.StatusServiceUnavailable || h.OK || h.Leader != 1 || h.AppliedIndex != 42 ||
		!strings.HasPrefix(h.Reason, "no progress: leader node 1 is known but this replica applied nothing for 60.0s") {
		t.Fatalf("healthz of a stalled replica: HTTP %d %+v", resp.StatusCode, h)
	}
	o.StalledAfter = 2 * time.Minute
	srv2 := httptest.NewServer(api.NewServer(o).Handler())
	defer srv2.Close()
	if resp := get(t, srv2.URL+"/healthz", &h); resp.StatusCode != http.StatusOK || !h.OK {
		t.Fatalf("healthz within StalledAfter: HTTP %d %+v", resp.StatusCode, h)
	}
}
