package api_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
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

// shard is a real three-voter Raft shard on loopback whose nodes
// heartbeat through Raft, as their agents do.
type shard struct {
	stores map[uint64]*raftstore.Store
	stop   map[uint64]context.CancelFunc
	wg     sync.WaitGroup
}

func startShard(t *testing.T, n int) *shard {
	t.Helper()
	members := map[uint64]string{}
	for id := uint64(1); id <= uint64(n); id++ {
		members[id] = testkit.FreeLoopbackAddr(t)
	}
	sh := &shard{stores: map[uint64]*raftstore.Store{}, stop: map[uint64]context.CancelFunc{}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	dir := t.TempDir()
	for id, addr := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := raftstore.Start(ctx, raftstore.Config{NodeID: id, RaftAddr: addr, DataDir: filepath.Join(dir, fmt.Sprint(id), "raft"),
				Members: members, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), QuietRaftLog: true})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			sh.stores[id] = s
		}()
	}
	wg.Wait()
	t.Cleanup(sh.closeAll)
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for id, s := range sh.stores {
		if _, err := s.ProposeOK(ctx, testkit.Register(id), time.Now); err != nil {
			t.Fatal(err)
		}
		s.SetHeartbeatInterval(500 * time.Millisecond)
		hctx, stop := context.WithCancel(context.Background())
		sh.stop[id] = stop
		sh.wg.Add(1)
		go func() {
			defer sh.wg.Done()
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for {
				pctx, cancel := context.WithTimeout(hctx, 5*time.Second)
				s.Propose(pctx, replicated.Command{Type: replicated.CmdNodeHeartbeat, At: time.Now(), NodeHeartbeat: &replicated.NodeHeartbeat{ID: id}})
				cancel()
				select {
				case <-hctx.Done():
					return
				case <-tick.C:
				}
			}
		}()
	}
	return sh
}

func (sh *shard) close(id uint64) {
	sh.stop[id]()
	sh.stores[id].Close()
}

func (sh *shard) closeAll() {
	for _, stop := range sh.stop {
		stop()
	}
	sh.wg.Wait()
	for _, s := range sh.stores {
		s.Close()
	}
}

func (sh *shard) leader(t *testing.T) uint64 {
	t.Helper()
	var id uint64
	testkit.WaitFor(t, 10*time.Second, "a leader", testkit.Until(func() bool {
		for _, s := range sh.stores {
			if s.IsLeader() {
				id = s.NodeID()
				return true
			}
		}
		return false
	}))
	return id
}

func roleOf(ms []api.MemberView, id uint64) string {
	for _, m := range ms {
		if m.ID == id {
			return m.Role
		}
	}
	return "none"
}

// TestMembersAreListedAddedAndRemovedThroughTheAPI runs node 1's API on a
// real shard: list, add (a learner), refused adds and removals with what
// to do, removal of a stopped voter, and node 1 removing itself.
func TestMembersAreListedAddedAndRemovedThroughTheAPI(t *testing.T) {
	sh := startShard(t, 3)
	srv := httptest.NewServer(api.NewServer(api.Options{Replica: sh.stores[1], Insecure: true}).Handler())
	defer srv.Close()
	c, err := api.NewClient(srv.URL, api.ClientOptions{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	leader := sh.leader(t)

	// Eventually: node 1's replica may not have applied every node's first
	// heartbeat yet.
	testkit.WaitFor(t, 30*time.Second, "three registered voters with a heartbeat", func() error {
		ms, err := c.Members(ctx)
		if err != nil {
			return err
		}
		if len(ms) != 3 {
			return fmt.Errorf("members %+v, want 3", ms)
		}
		for _, m := range ms {
			if m.Role != api.RoleVoter || !m.Registered || m.LastHeartbeatAt == nil || m.Leader != (m.ID == leader) {
				return fmt.Errorf("member %+v: want a registered voter with a heartbeat, leader %v", m, m.ID == leader)
			}
		}
		return nil
	})

	addr := freeLoopback(t)
	added, err := c.AddMember(ctx, api.MemberRequest{ID: 4, RaftAddr: addr})
	if err != nil || !strings.Contains(added.Next, "--join") || !strings.Contains(added.Next, "learner") {
		t.Fatalf("adding node 4: %+v, %v", added, err)
	}
	if ms, err := c.Members(ctx); err != nil || roleOf(ms, 4) != api.RoleLearner || ms[3].Registered {
		t.Fatalf("after adding node 4: %+v, %v", ms, err)
	}
	_, err = c.AddMember(ctx, api.MemberRequest{ID: 5, RaftAddr: addr})
	if apiCode(err) != 409 || !strings.Contains(err.Error(), "already node 4's") {
		t.Fatalf("adding node 5 at node 4's address: %v, want 409 saying whose it is", err)
	}
	if out, err := c.RemoveMember(ctx, 4, false); err != nil || out.Role != api.RoleLearner {
		t.Fatalf("removing learner 4: %+v, %v", out, err)
	}
	_, err = c.AddMember(ctx, api.MemberRequest{ID: 4, RaftAddr: addr})
	if apiCode(err) != 409 || !strings.Contains(err.Error(), "new id") {
		t.Fatalf("adding removed id 4 again: %v, want 409 asking for a new id", err)
	}

	// Stop a voter other than node 1 and the leader when node 1 follows.
	var down, alive uint64
	for _, id := range []uint64{2, 3} {
		if id != leader && down == 0 {
			down = id
		} else {
			alive = id
		}
	}
	sh.close(down)
	_, err = c.RemoveMember(ctx, alive, false)
	if apiCode(err) != 409 || !strings.Contains(err.Error(), "of which 1 are reachable") || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("removing live voter %d with voter %d down: %v, want 409 with the numbers", alive, down, err)
	}
	out, err := c.RemoveMember(ctx, down, false)
	if err != nil || out.Role != api.RoleVoter || !strings.Contains(out.Next, "new id") || out.Warning != "" {
		t.Fatalf("removing stopped voter %d: %+v, %v", down, out, err)
	}
	if ms, err := c.Members(ctx); err != nil || len(ms) != 2 || roleOf(ms, down) != "none" {
		t.Fatalf("after removing %d: %+v, %v", down, ms, err)
	}

	out, err = c.RemoveMember(ctx, 1, false)
	if err != nil || !strings.Contains(out.Warning, "removed itself") {
		t.Fatalf("node 1 removing itself: %+v, %v", out, err)
	}
	if _, err := c.RemoveMember(ctx, 0, false); apiCode(err) != 400 {
		t.Fatalf("removing id 0: %v, want 400", err)
	}
}

// TestLastVoterIsNeverRemoved: a one-node cluster refuses to remove its
// only voter, --force or not.
func TestLastVoterIsNeverRemoved(t *testing.T) {
	sh := startShard(t, 1)
	srv := httptest.NewServer(api.NewServer(api.Options{Replica: sh.stores[1], Insecure: true}).Handler())
	defer srv.Close()
	c, err := api.NewClient(srv.URL, api.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.RemoveMember(context.Background(), 1, true)
	if apiCode(err) != 409 || !strings.Contains(err.Error(), "last voter") {
		t.Fatalf("removing the last voter: %v, want 409", err)
	}
}

// TestMembersNeedTheAdminRole: listing and removing members is for
// admins; a node without membership support says so.
func TestMembersNeedTheAdminRole(t *testing.T) {
	sh := startShard(t, 1)
	p := newTestPKI(t)
	addr := serveTLS(t, api.Options{Replica: sh.stores[1], TLS: p.server(t, "node-1")})
	ctx := context.Background()
	list := func(c *api.Client) error { _, err := c.Members(ctx); return err }
	remove := func(c *api.Client) error { _, err := c.RemoveMember(ctx, 7, false); return err }
	for _, tt := range []struct {
		name string
		who  string
		call func(*api.Client) error
		code int
	}{
		{"a read certificate cannot list members: 403", "alice", list, 403},
		{"an operate certificate cannot remove a member: 403", "bob", remove, 403},
		{"an admin lists members", "carol", list, 200},
		{"an admin's removal of a stranger is refused: 409", "carol", remove, 409},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(p.client(t, addr, tt.who, "")); apiCode(err) != tt.code {
				t.Fatalf("got %v (HTTP %d), want HTTP %d", err, apiCode(err), tt.code)
			}
		})
	}

	fake := httptest.NewServer(api.NewServer(api.Options{Replica: testkit.NewReplica(nil, 1, 1), Insecure: true}).Handler())
	defer fake.Close()
	c, err := api.NewClient(fake.URL, api.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Members(ctx); apiCode(err) != 409 || !strings.Contains(err.Error(), "cannot list or change Raft members") {
		t.Fatalf("members of a replica without membership: %v, want 409", err)
	}
}

func freeLoopback(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
