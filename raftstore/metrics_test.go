package raftstore

import (
	"fmt"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
)

// What the metrics read of a replica: the leader changes it saw and the
// last index of its log, which is at least what it applied once a proposal
// returned.
func TestLeaderChangesAndLastLogIndex(t *testing.T) {
	stores, _ := startCluster(t, 1)
	s := stores[0]
	// Dragonboat reports the leader on its event goroutine, possibly after
	// startCluster saw it elected.
	testkit.WaitFor(t, 10*time.Second, "LeaderChanges ≥ 1 after the first election", func() error {
		if n := s.LeaderChanges(); n < 1 {
			return fmt.Errorf("LeaderChanges = %d", n)
		}
		return nil
	})
	if _, err := s.ProposeOK(t.Context(), testkit.Register(1), time.Now); err != nil {
		t.Fatal(err)
	}
	applied, _ := s.LastApplied()
	if last, ok := s.LastLogIndex(); !ok || last < applied || applied == 0 {
		t.Errorf("LastLogIndex = %d, %t; want ≥ the applied %d", last, ok, applied)
	}
	s.Close()
	if _, ok := s.LastLogIndex(); ok {
		t.Errorf("LastLogIndex of a closed replica says ok")
	}
}
