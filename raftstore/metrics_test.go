package raftstore

import (
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
	if n := s.LeaderChanges(); n < 1 {
		t.Errorf("LeaderChanges = %d after the first election, want ≥ 1", n)
	}
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
