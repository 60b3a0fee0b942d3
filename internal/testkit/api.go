package testkit

import (
	"context"
	"sync"

	"github.com/blixard/blixard/replicated"
)

// Member is one AddReplica call a [Replica] received.
type Member struct {
	ID        uint64
	RaftAddr  string
	NonVoting bool
}

// Replica is a [Store] as one node of a cluster sees it: it adds what the
// API server needs of a replica (NodeID, Leader, AddReplica) and failing
// reads. Which node leads is just a value (SetLeaderID); like Store it does
// not model Raft: AddReplica only records the call, and every node's view
// is the same state.
type Replica struct {
	*Store

	mu       sync.Mutex
	id       uint64
	leader   uint64   // guarded by mu; 0: none known
	members  []Member // guarded by mu
	addErr   error    // guarded by mu
	readFail error    // guarded by mu
}

// NewReplica returns node id's view of s, led by leader (0: no leader
// known). A nil s is a fresh store.
func NewReplica(s *Store, id, leader uint64) *Replica {
	if s == nil {
		s = NewStore(nil)
	}
	return &Replica{Store: s, id: id, leader: leader}
}

// NodeID is the id the replica was made with.
func (r *Replica) NodeID() uint64 { return r.id }

// Leader returns the leader set by NewReplica or SetLeaderID.
func (r *Replica) Leader() (uint64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.leader, r.leader != 0
}

// SetLeaderID changes the leader this replica knows (0: none).
func (r *Replica) SetLeaderID(id uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.leader = id
}

// IsLeader reports whether this replica leads.
func (r *Replica) IsLeader() bool {
	id, ok := r.Leader()
	return ok && id == r.id
}

// AddReplica records the call, or fails with the error set by
// FailAddReplica.
func (r *Replica) AddReplica(_ context.Context, id uint64, raftAddr string, nonVoting bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.addErr != nil {
		return r.addErr
	}
	r.members = append(r.members, Member{ID: id, RaftAddr: raftAddr, NonVoting: nonVoting})
	return nil
}

// FailAddReplica makes AddReplica fail with err (nil: succeed again).
func (r *Replica) FailAddReplica(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.addErr = err
}

// Added returns the members added so far, oldest first.
func (r *Replica) Added() []Member {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Member(nil), r.members...)
}

// FailReads makes Read and LocalRead fail with err (nil: succeed again),
// as when no quorum answers.
func (r *Replica) FailReads(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.readFail = err
}

// Read returns a copy of the state, or the error set by FailReads.
func (r *Replica) Read(ctx context.Context) (*replicated.State, error) {
	r.mu.Lock()
	err := r.readFail
	r.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return r.Store.Read(ctx)
}

// LocalRead is Read.
func (r *Replica) LocalRead() (*replicated.State, error) { return r.Read(context.Background()) }
