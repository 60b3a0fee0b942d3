package raftstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
)

// freeAddrs returns n distinct free loopback addresses
// (testkit.FreeLoopbackAddr: not on 127.0.0.1, where the packages tested in
// parallel take ports from the same range between our release and bind).
func freeAddrs(t testing.TB, n int) []string {
	t.Helper()
	var addrs []string
	for range n {
		addrs = append(addrs, testkit.FreeLoopbackAddr(t))
	}
	return addrs
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startCluster starts n voters (ids 1…n) concurrently on loopback and closes
// them when the test ends.
func startCluster(t testing.TB, n int) ([]*Store, map[uint64]string) {
	t.Helper()
	return startClusterTLS(t, n, func(uint64) TLSFiles { return TLSFiles{} })
}

// startClusterTLS is startCluster with each replica's TLS files.
func startClusterTLS(t testing.TB, n int, tlsFor func(id uint64) TLSFiles) ([]*Store, map[uint64]string) {
	t.Helper()
	return startClusterWith(t, n, tlsFor, func(uint64) func(uint64) { return nil })
}

// startClusterWith is startClusterTLS with each replica's OnApply hook.
func startClusterWith(t testing.TB, n int, tlsFor func(id uint64) TLSFiles, onApply func(id uint64) func(uint64)) ([]*Store, map[uint64]string) {
	t.Helper()
	tlsFiles := make([]TLSFiles, n)
	for i := range n {
		tlsFiles[i] = tlsFor(uint64(i + 1)) // here: it may fail the test, which a goroutine may not
	}
	addrs := freeAddrs(t, n)
	if tlsFiles[0].enabled() {
		addrs = freeLocalhostAddrs(t, n) // the test certificates name 127.0.0.1
	}
	members := map[uint64]string{}
	for i, a := range addrs {
		members[uint64(i+1)] = a
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stores := make([]*Store, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := uint64(i + 1)
			stores[i], errs[i] = Start(ctx, Config{
				NodeID: id, RaftAddr: members[id], DataDir: filepath.Join(t.TempDir(), fmt.Sprint(id)),
				Members: members, Logger: quietLogger(), TLS: tlsFiles[i], OnApply: onApply(id),
			})
		}()
	}
	wg.Wait()
	for _, s := range stores {
		if s != nil {
			t.Cleanup(func() { s.Close() })
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return stores, members
}

func leaderOf(t testing.TB, stores []*Store) *Store {
	t.Helper()
	var leader *Store
	testkit.WaitFor(t, 10*time.Second, "a leader", testkit.Until(func() bool {
		for _, s := range stores {
			if s.IsLeader() {
				leader = s
				return true
			}
		}
		return false
	}))
	return leader
}

func mustPropose(t testing.TB, ctx context.Context, s *Store, c replicated.Command, want replicated.ResultCode) replicated.Result {
	t.Helper()
	r, err := s.Propose(ctx, c)
	if err != nil {
		t.Fatalf("propose %s on node %d: %v", c.Type, s.NodeID(), err)
	}
	if r.Code != want {
		t.Fatalf("propose %s on node %d: %s (%s), want %s", c.Type, s.NodeID(), r.Code, r.Message, want)
	}
	return r
}

func TestDragonboatThreeReplicas(t *testing.T) {
	stores, _ := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	for _, s := range stores {
		mustPropose(t, ctx, s, testkit.Register(s.NodeID()), replicated.ResultOK)
	}
	leader := leaderOf(t, stores)
	// A context with less than a Raft tick left ends the proposal as a
	// deadline, not as one of Dragonboat's "timeout too small" errors.
	short, cancelShort := context.WithTimeout(ctx, 3*time.Millisecond)
	_, err := leader.Propose(short, testkit.Register(leader.NodeID()))
	cancelShort()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("propose with 3ms left: %v, want a context deadline", err)
	}
	var follower *Store
	for _, s := range stores {
		if s != leader {
			follower = s
			break
		}
	}

	// A plan proposed through a follower is committed and reads the same everywhere.
	p := testkit.Plan(0, "abc", testkit.Assign("web", 1, "v1"), testkit.Assign("db", 2, "v1"), testkit.Assign("api", 3, "v1"))
	rev := mustPropose(t, ctx, follower, p, replicated.ResultOK).Revision
	var first *replicated.State
	for _, s := range stores {
		st, err := s.Read(ctx)
		if err != nil {
			t.Fatalf("read on node %d: %v", s.NodeID(), err)
		}
		if st.Revision == nil || st.Revision.ID != rev || len(st.Assignments) != 3 {
			t.Fatalf("node %d reads revision %+v with %d assignments, want %d with 3", s.NodeID(), st.Revision, len(st.Assignments), rev)
		}
		if first == nil {
			first = st
		} else if !reflect.DeepEqual(first, st) {
			t.Fatalf("node %d reads another state:\n%s\n%s", s.NodeID(), testkit.JSON(t, first), testkit.JSON(t, st))
		}
	}
	for _, s := range stores {
		testkit.WaitFor(t, 10*time.Second, fmt.Sprintf("node %d's local replica to apply revision %d", s.NodeID(), rev), testkit.Until(func() bool {
			st, err := s.LocalRead()
			return err == nil && st.Revision != nil && st.Revision.ID == rev && reflect.DeepEqual(st.Assignments, first.Assignments)
		}))
	}

	// An undecodable entry is rejected without halting the shard.
	raw, err := leader.nh.SyncPropose(ctx, leader.nh.GetNoOPSession(ShardID), []byte("not a command"))
	if err != nil || replicated.ResultCode(raw.Value) != replicated.ResultUndecodable {
		t.Fatalf("raw garbage entry: value %d, %v; want undecodable", raw.Value, err)
	}

	// Stop the leader: the other two elect a new one and keep the plan.
	// With the default timing they wait at least one election timeout (1 s)
	// of silence, at most two, before they campaign.
	oldLeader := leader.NodeID()
	leader.Close()
	stopped := time.Now()
	var rest []*Store
	for _, s := range stores {
		if s != leader {
			rest = append(rest, s)
		}
	}
	testkit.WaitFor(t, 20*time.Second, "a new leader among the remaining two", testkit.Until(func() bool {
		for _, s := range rest {
			if id, ok := s.Leader(); ok && id != oldLeader && s.IsLeader() {
				return true
			}
		}
		return false
	}))
	took, election := time.Since(stopped), Config{}.ElectionTimeout()
	t.Logf("a new leader %v after the old one stopped (election timeout %v)", took.Round(time.Millisecond), election)
	if took < election/2 {
		t.Errorf("a new leader %v after the old one stopped: the followers did not wait for the election timeout %v", took, election)
	}
	st, err := rest[0].Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Revision == nil || st.Revision.ID != rev || !reflect.DeepEqual(st.Assignments, first.Assignments) {
		t.Fatalf("after the leader change: revision %+v, assignments %v", st.Revision, st.Assignments)
	}

	// The next plan with the right parent succeeds; a stale one is refused.
	rev2 := mustPropose(t, ctx, rest[1], testkit.Plan(rev, "def", testkit.Assign("web", 1, "v2")), replicated.ResultOK).Revision
	if rev2 <= rev {
		t.Fatalf("new revision %d is not after %d", rev2, rev)
	}
	stale := mustPropose(t, ctx, rest[0], testkit.Plan(rev, "ghi", testkit.Assign("web", 2, "v3")), replicated.ResultStaleParent)
	if stale.Revision != rev2 {
		t.Fatalf("stale-parent result names revision %d, want %d", stale.Revision, rev2)
	}
	for _, s := range rest {
		st, err := s.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Revision.ID != rev2 || st.Revision.Commit != "def" || st.Assignments["web"].OutPath != "/nix/store/web-v2" {
			t.Fatalf("node %d: revision %+v assignments %v", s.NodeID(), st.Revision, st.Assignments)
		}
	}

	// A non-voting replica added now catches up through the log or a snapshot.
	addr := freeAddrs(t, 1)[0]
	if err := rest[0].AddReplica(ctx, 4, addr, true); err != nil {
		t.Fatal(err)
	}
	joined, err := Start(ctx, Config{NodeID: 4, RaftAddr: addr, DataDir: t.TempDir(), Join: true, NonVoting: true, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer joined.Close()
	testkit.WaitFor(t, 10*time.Second, "the joined replica to apply the latest revision", testkit.Until(func() bool {
		st, err := joined.LocalRead()
		return err == nil && st.Revision != nil && st.Revision.ID == rev2
	}))
}

func TestStartRefusesBadConfig(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	for name, cfg := range map[string]Config{
		"node id 0 is refused":                 {RaftAddr: "127.0.0.1:1", DataDir: dir, Members: map[uint64]string{1: "127.0.0.1:1"}},
		"an address without port is refused":   {NodeID: 1, RaftAddr: "127.0.0.1", DataDir: dir},
		"an empty data dir is refused":         {NodeID: 1, RaftAddr: "127.0.0.1:1"},
		"members without this node is refused": {NodeID: 1, RaftAddr: "127.0.0.1:1", DataDir: dir, Members: map[uint64]string{2: "127.0.0.1:2"}},
		"a member address mismatch is refused": {NodeID: 1, RaftAddr: "127.0.0.1:1", DataDir: dir, Members: map[uint64]string{1: "127.0.0.1:2"}},
		"join with members is refused":         {NodeID: 1, RaftAddr: "127.0.0.1:1", DataDir: dir, Join: true, Members: map[uint64]string{1: "127.0.0.1:1"}},
		"an unknown log DB size is refused":    {NodeID: 1, RaftAddr: "127.0.0.1:1", DataDir: dir, Members: map[uint64]string{1: "127.0.0.1:1"}, LogDB: "huge"},
		"an election of 9 heartbeats is refused": {NodeID: 1, RaftAddr: "127.0.0.1:1", DataDir: dir, Members: map[uint64]string{1: "127.0.0.1:1"},
			HeartbeatRTT: 10, ElectionRTT: 90},
		"an election timeout below 10 default heartbeats is refused": {NodeID: 1, RaftAddr: "127.0.0.1:1", DataDir: dir,
			Members: map[uint64]string{1: "127.0.0.1:1"}, ElectionRTT: 50},
	} {
		if s, err := Start(ctx, cfg); err == nil {
			s.Close()
			t.Errorf("%s: Start succeeded", name)
		}
	}
}

func TestTimingDefaultsAreForRealHosts(t *testing.T) {
	var cfg Config
	if got := cfg.HeartbeatInterval(); got != 100*time.Millisecond {
		t.Errorf("default heartbeat interval %v, want 100ms", got)
	}
	if got := cfg.ElectionTimeout(); got != time.Second {
		t.Errorf("default election timeout %v, want 1s", got)
	}
	// An attempt outlasts a leader change: up to two election timeouts.
	if got := cfg.attemptTimeout(); got <= 2*cfg.ElectionTimeout() {
		t.Errorf("attempt timeout %v does not exceed an election (up to %v)", got, 2*cfg.ElectionTimeout())
	}
	fast := Config{RTTMillisecond: 1, HeartbeatRTT: 2, ElectionRTT: 20}
	if got := fast.ElectionTimeout(); got != 20*time.Millisecond {
		t.Errorf("election timeout of %+v: %v, want 20ms", fast, got)
	}
	if got := fast.attemptTimeout(); got != minAttemptTimeout {
		t.Errorf("attempt timeout of %+v: %v, want the floor %v", fast, got, minAttemptTimeout)
	}
	slow := Config{RTTMillisecond: 50, HeartbeatRTT: 10, ElectionRTT: 100}
	if got, want := slow.attemptTimeout(), 15*time.Second; got != want {
		t.Errorf("attempt timeout of %+v: %v, want %v", slow, got, want)
	}
	if err := (&Config{HeartbeatRTT: 1, ElectionRTT: 10}).checkTiming(); err != nil {
		t.Errorf("an election of exactly 10 heartbeats is refused: %v", err)
	}
	err := (&Config{HeartbeatRTT: 5, ElectionRTT: 40}).checkTiming()
	if err == nil || !strings.Contains(err.Error(), "at least 50") {
		t.Errorf("an election of 8 heartbeats: %v, want a refusal naming 50 ticks", err)
	}
}
