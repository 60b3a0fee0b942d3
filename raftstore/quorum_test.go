package raftstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lni/dragonboat/v4"
	"github.com/lni/dragonboat/v4/raftio"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
)

// TestSurvivorKnowsItHasNoLeaderAndStillReadsLocally stops two of three
// replicas: the survivor reports no leader (and since when) without
// blocking, a linearizable read fails, and its local replica still holds
// everything it applied, at the index LastApplied reports.
func TestSurvivorKnowsItHasNoLeaderAndStillReadsLocally(t *testing.T) {
	stores, _ := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, s := range stores {
		mustPropose(t, ctx, s, testkit.Register(s.NodeID()), replicated.ResultOK)
	}
	leader := leaderOf(t, stores)
	for _, s := range stores {
		testkit.WaitFor(t, 10*time.Second, fmt.Sprintf("node %d to know leader %d and apply the registrations", s.NodeID(), leader.NodeID()),
			func() error {
				id, since := s.LeaderSince()
				idx, at := s.LastApplied()
				st, err := s.LocalRead()
				switch {
				case err != nil:
					return err
				case id != leader.NodeID() || since.IsZero():
					return fmt.Errorf("leader %d since %v", id, since)
				case len(st.Nodes) != 3 || idx != st.Applied || at.IsZero():
					return fmt.Errorf("%d nodes, applied %d at %v, state applied %d", len(st.Nodes), idx, at, st.Applied)
				}
				return nil
			})
	}

	survivor := stores[0]
	var logged logBuffer
	survivor.log = slog.New(slog.NewTextHandler(&logged, nil)) // nothing else logs through it now
	wctx, stopWatch := context.WithCancel(ctx)
	watched := make(chan error, 1)
	go func() { watched <- survivor.WatchQuorum(wctx) }()
	for _, s := range stores[1:] {
		s.Close()
	}
	stopped := time.Now()
	testkit.WaitFor(t, 20*time.Second, "the survivor to know it has no leader", testkit.Until(func() bool {
		id, _ := survivor.LeaderSince()
		return id == 0
	}))
	if _, ok := survivor.Leader(); ok {
		t.Errorf("LeaderSince says no leader, Leader says there is one")
	}
	if _, since := survivor.LeaderSince(); since.Before(stopped) {
		t.Errorf("no leader since %v, before two of three replicas stopped at %v", since, stopped)
	}
	short, cancelShort := context.WithTimeout(ctx, Config{}.ReadWait())
	_, err := survivor.Read(short)
	cancelShort()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("linearizable read without a quorum: %v, want a deadline", err)
	}
	st, err := survivor.LocalRead()
	if err != nil {
		t.Fatal(err)
	}
	if idx, _ := survivor.LastApplied(); len(st.Nodes) != 3 || st.Applied != idx {
		t.Errorf("local replica without a quorum: %d nodes at index %d, LastApplied %d; want 3 at the same index", len(st.Nodes), st.Applied, idx)
	}
	testkit.WaitFor(t, 20*time.Second, "a warning that the node waits for a quorum", testkit.Until(func() bool {
		return strings.Contains(logged.String(), `level=WARN msg="waiting for a Raft quorum: no leader known`) &&
			strings.Contains(logged.String(), "are a majority of the voters [1 2 3] running and reachable")
	}))
	stopWatch()
	if err := <-watched; err != nil {
		t.Errorf("WatchQuorum: %v", err)
	}
}

// logBuffer is a bytes.Buffer safe for a logger and a reader at once.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *logBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *logBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestAttemptPendingAtAnElectionIsMadeAgainAtOnce drives retry with an
// attempt that hangs like a proposal forwarded to a leader that died: the
// election of a new leader ends it, and the second attempt's result is
// returned, counted as timed out (the first may still be committed).
func TestAttemptPendingAtAnElectionIsMadeAgainAtOnce(t *testing.T) {
	log := quietLogger()
	// An attempt timeout far beyond the test: only the election can end
	// the first attempt.
	s := &Store{log: log, attemptTimeout: time.Hour, leaders: newLeaderWatch(log), applied: &applyWatch{}}
	s.leaders.LeaderUpdated(raftio.LeaderInfo{ShardID: ShardID, LeaderID: 1, Term: 2})
	started := make(chan struct{})
	attempts := 0
	done := make(chan error, 1)
	var timedOut bool
	go func() {
		var err error
		timedOut, err = s.retry(context.Background(), "test propose", true, func(actx context.Context) error {
			attempts++
			if attempts > 1 {
				return nil
			}
			close(started)
			<-actx.Done()
			return actx.Err()
		})
		done <- err
	}()
	<-started
	// Events of another shard, the same leader again, and an election in
	// progress do not end the attempt; a new leader does.
	s.leaders.LeaderUpdated(raftio.LeaderInfo{ShardID: ShardID + 1, LeaderID: 3, Term: 9})
	s.leaders.LeaderUpdated(raftio.LeaderInfo{ShardID: ShardID, LeaderID: 1, Term: 2})
	s.leaders.LeaderUpdated(raftio.LeaderInfo{ShardID: ShardID, LeaderID: 0, Term: 3})
	select {
	case err := <-done:
		t.Fatalf("retry returned (%v) before a new leader was elected", err)
	default:
	}
	s.leaders.LeaderUpdated(raftio.LeaderInfo{ShardID: ShardID, LeaderID: 2, Term: 3})
	if err := <-done; err != nil {
		t.Fatalf("retry after the election: %v", err)
	}
	if attempts != 2 || !timedOut {
		t.Fatalf("%d attempts, timed out %v; want the second attempt's result, counted as timed out", attempts, timedOut)
	}
	if id, since := s.LeaderSince(); id != 2 || since.IsZero() {
		t.Fatalf("LeaderSince: %d since %v, want 2", id, since)
	}
}

// TestWithoutALeaderADroppedAttemptWaitsForTheElection: while no leader
// is known, Dragonboat drops a request at once; the next attempt follows
// the election instead of a short backoff.
func TestWithoutALeaderADroppedAttemptWaitsForTheElection(t *testing.T) {
	log := quietLogger()
	s := &Store{log: log, attemptTimeout: time.Hour, leaders: newLeaderWatch(log), applied: &applyWatch{}}
	failed := make(chan struct{})
	attempts := 0
	done := make(chan error, 1)
	go func() {
		_, err := s.retry(context.Background(), "test propose", true, func(actx context.Context) error {
			attempts++
			if leader, _ := s.LeaderSince(); leader == 0 {
				if attempts == 1 {
					close(failed)
				}
				return dragonboat.ErrShardNotReady // "dropped proposal, no leader"
			}
			return nil
		})
		done <- err
	}()
	<-failed
	s.leaders.LeaderUpdated(raftio.LeaderInfo{ShardID: ShardID, LeaderID: 3, Term: 4})
	if err := <-done; err != nil || attempts != 2 {
		t.Fatalf("retry: %v after %d attempts; want success at the attempt after the election", err, attempts)
	}
}

func TestReadWaitIsThreeQuartersOfAHeartbeatAndAtLeastFourTicks(t *testing.T) {
	for _, tt := range []struct {
		cfg  Config
		want time.Duration
	}{
		{Config{}, 75 * time.Millisecond},
		{Config{RTTMillisecond: 50, HeartbeatRTT: 1, ElectionRTT: 10}, 200 * time.Millisecond},
		{Config{RTTMillisecond: 20, HeartbeatRTT: 10, ElectionRTT: 200}, 150 * time.Millisecond},
	} {
		if got := tt.cfg.ReadWait(); got != tt.want {
			t.Errorf("ReadWait of %+v: %v, want %v", tt.cfg, got, tt.want)
		}
	}
}

// BenchmarkProposeAcrossLeaderChange measures a follower's proposal made
// just after the leader stopped (a node's heartbeat at the wrong moment):
// Dragonboat forwards it to the dead leader, and it commits only once a
// new leader is elected and the attempt is made again. Each op starts
// three replicas, stops the leader and proposes through a survivor.
func BenchmarkProposeAcrossLeaderChange(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	var lat []time.Duration
	for b.Loop() {
		stores, _ := startCluster(b, 3)
		for _, s := range stores {
			mustPropose(b, ctx, s, testkit.Register(s.NodeID()), replicated.ResultOK)
		}
		leader := leaderOf(b, stores)
		var follower *Store
		for _, s := range stores {
			if s != leader {
				follower = s
			}
		}
		leader.Close()
		start := time.Now()
		mustPropose(b, ctx, follower, testkit.Register(follower.NodeID()), replicated.ResultOK)
		lat = append(lat, time.Since(start))
		for _, s := range stores {
			s.Close()
		}
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2])/float64(time.Millisecond), "p50-ms")
	b.ReportMetric(float64(lat[len(lat)-1])/float64(time.Millisecond), "max-ms")
}
