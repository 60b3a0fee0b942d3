package api_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/raftstore"
	"github.com/blixard/blixard/replicated"
)

// TestFollowingEventsOverTheAPISeesEveryCommittedEvent follows the event
// log of a real one-voter replica through the client's long poll, as
// `blixard events -f` does, while node states are changed through Raft:
// the follower receives exactly the replica's events, in order, each once.
func TestFollowingEventsOverTheAPISeesEveryCommittedEvent(t *testing.T) {
	store, c := followedReplica(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := store.ProposeOK(ctx, testkit.Register(1), time.Now); err != nil {
		t.Fatal(err)
	}

	var (
		mu  sync.Mutex
		got []replicated.Event
	)
	fctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		var after uint64
		for fctx.Err() == nil {
			page, err := c.EventsAfter(fctx, after, api.DefaultEventWait)
			if err != nil {
				if fctx.Err() == nil {
					done <- err
					return
				}
				break
			}
			mu.Lock()
			got = append(got, page.Events...)
			mu.Unlock()
			for _, e := range page.Events {
				after = max(after, e.Index)
			}
		}
		done <- nil
	}()
	for i := range 10 {
		state := []replicated.NodeState{replicated.NodeCordoned, replicated.NodeReady}[i%2]
		if _, err := store.ProposeOK(ctx, replicated.Command{Type: replicated.CmdSetNodeState,
			SetNodeState: &replicated.SetNodeState{ID: 1, State: state}}, time.Now); err != nil {
			t.Fatal(err)
		}
	}
	want, err := store.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	key := func(evs []replicated.Event) []string {
		var out []string
		for _, e := range evs {
			out = append(out, fmt.Sprintf("%d %s %s", e.Index, e.Kind, e.Message))
		}
		return out
	}
	testkit.WaitFor(t, 30*time.Second, "every event followed", testkit.Detail(func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return slices.Equal(key(got), key(want.Events)), fmt.Sprintf("followed %d of %d events", len(got), len(want.Events))
	}))
	stop()
	if err := <-done; err != nil {
		t.Fatalf("following: %v", err)
	}
}

// followedReplica starts a real one-voter replica and its API server,
// wired as the node wires them (every applied entry wakes the waiting
// event polls), and returns the replica and a client of the API.
func followedReplica(t testing.TB) (*raftstore.Store, *api.Client) {
	t.Helper()
	var srv atomic.Pointer[api.Server]
	addr := testkit.FreeLoopbackAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	store, err := raftstore.Start(ctx, raftstore.Config{NodeID: 1, RaftAddr: addr, DataDir: filepath.Join(t.TempDir(), "raft"),
		Members: map[uint64]string{1: addr}, QuietRaftLog: true, Logger: slog.New(slog.DiscardHandler),
		OnApply: func(uint64) {
			if s := srv.Load(); s != nil {
				s.Applied()
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	s := api.NewServer(api.Options{Replica: store, Health: store, Insecure: true})
	srv.Store(s)
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(hs.Close)
	c, err := api.NewClient(hs.URL, api.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return store, c
}

// BenchmarkEventFollowLatency measures, on a real one-voter replica, one
// node state change from its proposal until a follower waiting in the
// events long poll has it: ns/op is commit plus delivery; follow-ms the
// median from the proposal's return to the poll's answer.
func BenchmarkEventFollowLatency(b *testing.B) {
	store, c := followedReplica(b)
	ctx := context.Background()
	if _, err := store.ProposeOK(ctx, testkit.Register(1), time.Now); err != nil {
		b.Fatal(err)
	}
	st, err := store.Read(ctx)
	if err != nil {
		b.Fatal(err)
	}
	after := st.Applied
	var lat []time.Duration
	b.ResetTimer()
	for i := range b.N {
		pages := make(chan api.EventsPage, 1)
		go func() {
			p, err := c.EventsAfter(ctx, after, api.DefaultEventWait)
			if err != nil {
				b.Error(err)
			}
			pages <- p
		}()
		state := []replicated.NodeState{replicated.NodeCordoned, replicated.NodeReady}[i%2]
		if _, err := store.ProposeOK(ctx, replicated.Command{Type: replicated.CmdSetNodeState,
			SetNodeState: &replicated.SetNodeState{ID: 1, State: state}}, time.Now); err != nil {
			b.Fatal(err)
		}
		committed := time.Now()
		p := <-pages
		lat = append(lat, time.Since(committed))
		if len(p.Events) == 0 {
			b.Fatal("the poll ended without the event")
		}
		after = p.Events[len(p.Events)-1].Index
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "follow-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "follow-p99-ms")
}
