package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
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

func loopbackAddr(t *testing.T) string {
	t.Helper()
	return testkit.FreeLoopbackAddr(t)
}

// startHeartbeatingShard starts three voters on loopback whose nodes
// register and heartbeat through Raft, as their agents do; stop ends one
// node's heartbeats and replica.
func startHeartbeatingShard(t *testing.T) (stores map[uint64]*raftstore.Store, stop func(id uint64)) {
	t.Helper()
	members := map[uint64]string{1: loopbackAddr(t), 2: loopbackAddr(t), 3: loopbackAddr(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stores = map[uint64]*raftstore.Store{}
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
			stores[id] = s
		}()
	}
	wg.Wait()
	stops := map[uint64]context.CancelFunc{}
	var beats sync.WaitGroup
	t.Cleanup(func() {
		for _, s := range stops {
			s()
		}
		beats.Wait()
		for _, s := range stores {
			s.Close()
		}
	})
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for id, s := range stores {
		if _, err := s.ProposeOK(ctx, testkit.Register(id), time.Now); err != nil {
			t.Fatal(err)
		}
		s.SetHeartbeatInterval(500 * time.Millisecond)
		hctx, cancel := context.WithCancel(context.Background())
		stops[id] = cancel
		beats.Add(1)
		go func() {
			defer beats.Done()
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
	return stores, func(id uint64) {
		stops[id]()
		stores[id].Close()
	}
}

// TestNodeMemberCommands runs `blixard node list-members|add|remove`
// against node 1's API on a real three-voter shard.
func TestNodeMemberCommands(t *testing.T) {
	stores, stop := startHeartbeatingShard(t)
	srv := httptest.NewServer(api.NewServer(api.Options{Replica: stores[1], Insecure: true}).Handler())
	defer srv.Close()
	leader := uint64(0)
	testkit.WaitFor(t, 10*time.Second, "a leader", testkit.Until(func() bool {
		leader, _ = stores[1].Leader()
		return leader != 0
	}))
	var down, alive uint64 // voters other than node 1: down is not the leader
	for _, id := range []uint64{2, 3} {
		if id != leader && down == 0 {
			down = id
		} else {
			alive = id
		}
	}
	learner := loopbackAddr(t)
	steps := []struct {
		args   []string
		before func()
		code   int
		want   []string
	}{
		{args: []string{"node", "list-members"}, want: []string{"NODE", "ROLE", "voter", fmt.Sprintf("%d*", leader), "ready"}},
		{args: []string{"node", "list-members", "--json"}, want: []string{`"role": "voter"`, `"registered": true`}},
		{args: []string{"node", "add", "4", learner}, want: []string{"node 4 added", "joins as a learner"}},
		{args: []string{"node", "list-members"}, want: []string{"learner", "not registered"}},
		{args: []string{"node", "add", "5", learner}, code: 1, want: []string{"already node 4's"}},
		{args: []string{"node", "remove", "4"}, want: []string{"node 4 (learner) removed", "new id"}},
		{args: []string{"node", "remove", "4"}, code: 1, want: []string{"removed already"}},
		{args: []string{"node", "remove", "x"}, code: 1, want: []string{`node id "x"`}},
		{args: []string{"node", "remove", fmt.Sprint(alive)}, before: func() { stop(down) }, code: 1,
			want: []string{fmt.Sprintf("removing voter %d", alive), "of which 1 are reachable", fmt.Sprintf("unreachable: [%d]", down), "--force"}},
		{args: []string{"node", "remove", fmt.Sprint(down)}, want: []string{fmt.Sprintf("node %d (voter) removed", down)}},
		{args: []string{"node", "remove", "1", "--json"}, want: []string{`"warning": "node 1 removed itself`, "WARNING: node 1 removed itself"}},
	}
	for _, st := range steps {
		t.Run(strings.Join(st.args, " "), func(t *testing.T) {
			if st.before != nil {
				st.before()
			}
			var out, errb bytes.Buffer
			code := run(context.Background(), append(st.args, "--server", srv.URL), &out, &errb)
			if code != st.code {
				t.Fatalf("exit %d, want %d\n%s%s", code, st.code, out.String(), errb.String())
			}
			for _, w := range st.want {
				if !strings.Contains(out.String()+errb.String(), w) {
					t.Errorf("output lacks %q:\n%s%s", w, out.String(), errb.String())
				}
			}
		})
	}
}

// TestNodeRemoveForceSkipsTheReachabilityCheck: with one of three voters
// down, removing a live one is refused, and --force removes it anyway
// (leaving a shard without a quorum, which is why it is refused by
// default).
func TestNodeRemoveForceSkipsTheReachabilityCheck(t *testing.T) {
	stores, stop := startHeartbeatingShard(t)
	srv := httptest.NewServer(api.NewServer(api.Options{Replica: stores[1], Insecure: true}).Handler())
	defer srv.Close()
	var leader uint64
	testkit.WaitFor(t, 10*time.Second, "a leader", testkit.Until(func() bool {
		leader, _ = stores[1].Leader()
		return leader != 0
	}))
	down, alive := uint64(2), uint64(3)
	if leader == 2 {
		down, alive = 3, 2
	}
	stop(down)
	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"node", "remove", fmt.Sprint(alive)}, 1, "reachable"},
		{[]string{"node", "remove", fmt.Sprint(alive), "--force"}, 0, fmt.Sprintf("node %d (voter) removed", alive)},
	} {
		var out, errb bytes.Buffer
		if code := run(context.Background(), append(tt.args, "--server", srv.URL), &out, &errb); code != tt.code || !strings.Contains(out.String()+errb.String(), tt.want) {
			t.Fatalf("%v: exit %d, want %d saying %q:\n%s%s", tt.args, code, tt.code, tt.want, out.String(), errb.String())
		}
	}
}
