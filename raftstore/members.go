package raftstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lni/dragonboat/v4"
	"github.com/lni/dragonboat/v4/config"
)

// Membership changes never cost the shard its quorum:
//
//  1. [Store.AddReplica] adds every new node as a learner (Dragonboat's
//     non-voting member), whatever role it is meant to have. A learner that
//     never starts costs nothing; a voter that never starts raises the
//     quorum for good (three phantom voters added to a three-node cluster
//     wedged it: six voters, quorum four, three alive).
//  2. A replica started with Config.Join and without Config.NonVoting
//     promotes itself before [Start] returns: once it has caught up (a
//     linearizable read completed on it, so it applied every entry the
//     leader had committed when the read began) and the strict check
//     allows, it asks the leader to make its own id a voter. With
//     Config.NonVoting it stays a learner.
//  3. The strict check, as etcd's --strict-reconfig-check: a change of the
//     voters is refused unless a quorum of the new voters is reachable.
//     Reachable are the leader, the replica making the check (it just
//     completed a round trip through the leader) and every voter whose
//     node heartbeat (the NodeHeartbeat its agent proposes) was committed
//     while the check watched, for up to heartbeatsWatched heartbeat
//     intervals ([Store.SetHeartbeatInterval]). Dragonboat v4 does not
//     expose which followers its leader heard from; the heartbeats are the
//     signal the rest of Blixard already trusts for liveness.
//  4. [Store.RemoveReplica] removes a member after the same check (force
//     skips it), never the last voter.
//
// Two changes racing each other are not made atomic with their check
// (Dragonboat's OrderedConfigChange would, but it must be set on every
// replica at once or their memberships diverge); Dragonboat applies one
// change at a time, and membership changes are rare operator actions.

// Defaults of the strict check.
const (
	// DefaultHeartbeatInterval is the node agent's heartbeat period
	// (nodeagent's default), until [Store.SetHeartbeatInterval] says
	// otherwise.
	DefaultHeartbeatInterval = 2 * time.Second
	// heartbeatsWatched is how many heartbeat intervals the check waits
	// for a voter's heartbeat: one may be late or lost.
	heartbeatsWatched = 3
	// reachPoll is how often the check re-reads the local replica.
	reachPoll = 100 * time.Millisecond
	// promoteRetry spaces a joining replica's promotion attempts; a
	// refusal is logged at most every promoteWarnEvery.
	promoteRetry     = time.Second
	promoteWarnEvery = 10 * time.Second
)

// Role is a member's part in the shard.
type Role string

const (
	// RoleVoter votes in elections and counts for the quorum.
	RoleVoter Role = "voter"
	// RoleLearner replicates and serves reads but never votes (Dragonboat's
	// non-voting member).
	RoleLearner Role = "learner"
	// RoleWitness votes but holds no state; Blixard adds none, but lists
	// one it finds.
	RoleWitness Role = "witness"
)

// Member is one replica of the shard.
type Member struct {
	ID       uint64 `json:"id"`
	RaftAddr string `json:"raftAddr"`
	Role     Role   `json:"role"`
}

// Membership is the shard's configuration, as the leader confirmed it.
type Membership struct {
	// Members are sorted by ID.
	Members []Member
	// Removed are the ids removed from the shard, sorted: Raft never takes
	// a removed id back.
	Removed []uint64
}

// find returns member id.
func (m Membership) find(id uint64) (Member, bool) {
	for _, mem := range m.Members {
		if mem.ID == id {
			return mem, true
		}
	}
	return Member{}, false
}

// ids returns the ids of the members with role r, sorted.
func (m Membership) ids(r Role) []uint64 {
	var ids []uint64
	for _, mem := range m.Members {
		if mem.Role == r {
			ids = append(ids, mem.ID)
		}
	}
	return ids
}

// ErrRefused is what every refused membership change wraps
// ([RefusedError]): retrying it unchanged cannot help.
var ErrRefused = errors.New("membership change refused")

// RefusedError is a membership change the store refused, with why and
// what to do.
type RefusedError struct {
	Reason string
}

func (e *RefusedError) Error() string { return "membership change refused: " + e.Reason }

// Is makes errors.Is(err, ErrRefused) hold.
func (e *RefusedError) Is(target error) bool { return target == ErrRefused }

// Refused says that the change was refused: a consumer that cannot import
// this package (the API) tells a refusal from an unknown outcome by it.
func (e *RefusedError) Refused() bool { return true }

func refused(format string, args ...any) error {
	return &RefusedError{Reason: fmt.Sprintf(format, args...)}
}

// quorum is the majority of n voters.
func quorum(n int) int { return n/2 + 1 }

// checkReachable refuses a change that leaves the voters after with
// fewer reachable voters than a quorum of them. what names the change.
func checkReachable(what string, after []uint64, reachable map[uint64]bool) error {
	var up, down []uint64
	for _, id := range after {
		if reachable[id] {
			up = append(up, id)
		} else {
			down = append(down, id)
		}
	}
	if need := quorum(len(after)); len(up) < need {
		return refused("%s would leave %d voters %v of which %d are reachable %v (unreachable: %v), but a quorum of %d voters is %d: "+
			"bring the unreachable voters back (or remove them first), or give --force if you are sure they are reachable",
			what, len(after), after, len(up), up, down, len(after), need)
	}
	return nil
}

// checkAdd refuses adding id at raftAddr when the id is taken or was
// removed, or the address is a member's.
func checkAdd(m Membership, id uint64, raftAddr string) error {
	if slices.Contains(m.Removed, id) {
		return refused("node id %d was removed from the shard and Raft never takes a removed id back: add the node under a new id and start it with that --node-id", id)
	}
	if mem, ok := m.find(id); ok {
		if mem.RaftAddr == raftAddr {
			return refused("node %d is already a %s at %s: nothing to add; start it with `blixard serve --node-id %d --raft-addr %s --join`",
				id, mem.Role, raftAddr, id, raftAddr)
		}
		return refused("node id %d is already a %s at %s: pick another id, or remove it first with `blixard node remove %d`", id, mem.Role, mem.RaftAddr, id)
	}
	for _, mem := range m.Members {
		if mem.RaftAddr == raftAddr {
			return refused("raft address %s is already node %d's (a %s): use another address, or remove node %d first with `blixard node remove %d`",
				raftAddr, mem.ID, mem.Role, mem.ID, mem.ID)
		}
	}
	return nil
}

// checkRemove refuses removing id when it is no member or the last voter;
// for a voter it returns the voters after the change, which the strict
// check must find reachable (nil for a learner or witness: the quorum
// does not change).
func checkRemove(m Membership, id uint64) (after []uint64, err error) {
	mem, ok := m.find(id)
	switch {
	case !ok && slices.Contains(m.Removed, id):
		return nil, refused("node %d was removed already", id)
	case !ok:
		return nil, refused("node %d is not a member of the shard (members: %v); see `blixard node list-members`", id, memberList(m))
	case mem.Role != RoleVoter:
		return nil, nil
	}
	for _, v := range m.ids(RoleVoter) {
		if v != id {
			after = append(after, v)
		}
	}
	if len(after) == 0 {
		return nil, refused("node %d is the last voter: removing it would leave a shard that can never commit again", id)
	}
	return after, nil
}

func memberList(m Membership) []string {
	var out []string
	for _, mem := range m.Members {
		out = append(out, fmt.Sprintf("%d (%s)", mem.ID, mem.Role))
	}
	return out
}

// Members returns the shard's members as the leader confirms them (a
// linearizable read: it needs a quorum).
func (s *Store) Members(ctx context.Context) (Membership, error) {
	var dm *dragonboat.Membership
	_, err := s.retry(ctx, "raftstore: read the shard's members", true, func(actx context.Context) error {
		var err error
		dm, err = s.nh.SyncGetShardMembership(actx, ShardID)
		return err
	})
	if err != nil {
		return Membership{}, err
	}
	var m Membership
	for role, set := range map[Role]map[uint64]string{RoleVoter: dm.Nodes, RoleLearner: dm.NonVotings, RoleWitness: dm.Witnesses} {
		for id, addr := range set {
			m.Members = append(m.Members, Member{ID: id, RaftAddr: addr, Role: role})
		}
	}
	slices.SortFunc(m.Members, func(a, b Member) int { return cmpUint(a.ID, b.ID) })
	for id := range dm.Removed {
		m.Removed = append(m.Removed, id)
	}
	slices.Sort(m.Removed)
	return m, nil
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// RaftMembers is [Store.Members] as maps of id → Raft address per role,
// for consumers that cannot name this package's types (the API).
func (s *Store) RaftMembers(ctx context.Context) (voters, learners, witnesses map[uint64]string, err error) {
	m, err := s.Members(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	voters, learners, witnesses = map[uint64]string{}, map[uint64]string{}, map[uint64]string{}
	for _, mem := range m.Members {
		map[Role]map[uint64]string{RoleVoter: voters, RoleLearner: learners, RoleWitness: witnesses}[mem.Role][mem.ID] = mem.RaftAddr
	}
	return voters, learners, witnesses, nil
}

// SetHeartbeatInterval tells the strict check how often nodes propose
// their heartbeats (node.Config.Heartbeat; default
// [DefaultHeartbeatInterval]): it waits up to heartbeatsWatched of them
// for each voter.
func (s *Store) SetHeartbeatInterval(d time.Duration) {
	if d > 0 {
		s.members.heartbeat.Store(int64(d))
	}
}

// reachableVoters returns which of voters this replica knows to be
// reachable: itself and the leader at once, any other voter once a
// heartbeat of its node is committed after the check began. It watches
// until every voter is reachable, enough says the outcome is decided, or
// heartbeatsWatched heartbeat intervals passed.
func (s *Store) reachableVoters(ctx context.Context, voters []uint64, enough func(map[uint64]bool) bool) (map[uint64]bool, error) {
	// The baseline is linearizable: a heartbeat committed before the check
	// began must not count as one heard during it. The read also went
	// through the leader, so this replica and the leader it knows now are
	// reachable.
	st, err := s.Read(ctx)
	if err != nil {
		return nil, fmt.Errorf("raftstore: reading the node heartbeats for the reachability check: %w", err)
	}
	reach := map[uint64]bool{}
	leader, _ := s.Leader()
	for _, id := range voters {
		if id == s.nodeID || id == leader {
			reach[id] = true
		}
	}
	base := map[uint64]uint64{}
	for _, id := range voters {
		if n, ok := st.Nodes[id]; ok && n != nil {
			base[id] = n.LastHeartbeatSeq
		}
	}
	deadline := time.Now().Add(heartbeatsWatched * time.Duration(s.members.heartbeat.Load()))
	t := time.NewTicker(reachPoll)
	defer t.Stop()
	for len(reach) < len(voters) && !enough(reach) && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("raftstore: waiting for the voters' heartbeats: %w", ctx.Err())
		case <-t.C:
		}
		st, err := s.LocalRead()
		if err != nil {
			return nil, err
		}
		for id, b := range base {
			if n, ok := st.Nodes[id]; ok && n != nil && n.LastHeartbeatSeq > b {
				reach[id] = true
			}
		}
	}
	return reach, nil
}

// count is how many of ids are in set.
func count(ids []uint64, set map[uint64]bool) int {
	n := 0
	for _, id := range ids {
		if set[id] {
			n++
		}
	}
	return n
}

// addLearner adds id at raftAddr as a learner after checkAdd.
func (s *Store) addLearner(ctx context.Context, id uint64, raftAddr string) error {
	if id == 0 {
		return refused("node id 0: want an id > 0")
	}
	m, err := s.Members(ctx)
	if err != nil {
		return err
	}
	if err := checkAdd(m, id, raftAddr); err != nil {
		return err
	}
	what := fmt.Sprintf("raftstore: add node %d (%s) as a learner", id, raftAddr)
	// Not retried on an election: a change applied twice is refused the
	// second time; the outcome is read back instead.
	_, err = s.retry(ctx, what, false, func(actx context.Context) error {
		return s.nh.SyncRequestAddNonVoting(actx, ShardID, id, raftAddr, 0)
	})
	if err != nil && s.isMember(ctx, id, RoleLearner) {
		return nil
	}
	return err
}

// isMember reports whether id is a member with role r, as far as a read
// of the members tells (false when it fails).
func (s *Store) isMember(ctx context.Context, id uint64, r Role) bool {
	m, err := s.Members(ctx)
	if err != nil {
		return false
	}
	mem, ok := m.find(id)
	return ok && mem.Role == r
}

// RemoveReplica removes member id from the shard: a learner or witness at
// once; a voter only when a quorum of the remaining voters is reachable
// (unless force), and never the last voter. A refusal is a [RefusedError].
// The removed replica takes no further part in Raft; its node must be
// stopped, and can only come back under a new id with an empty raft
// directory.
func (s *Store) RemoveReplica(ctx context.Context, id uint64, force bool) error {
	m, err := s.Members(ctx)
	if err != nil {
		return err
	}
	after, err := checkRemove(m, id)
	if err != nil {
		return err
	}
	if after != nil && !force {
		reach, err := s.reachableVoters(ctx, m.ids(RoleVoter), func(r map[uint64]bool) bool {
			return count(after, r) >= quorum(len(after))
		})
		if err != nil {
			return err
		}
		if err := checkReachable(fmt.Sprintf("removing voter %d", id), after, reach); err != nil {
			return err
		}
	}
	what := fmt.Sprintf("raftstore: remove node %d", id)
	_, err = s.retry(ctx, what, false, func(actx context.Context) error {
		return s.nh.SyncRequestDeleteReplica(actx, ShardID, id, 0)
	})
	if err != nil {
		if m, rerr := s.Members(ctx); rerr == nil && slices.Contains(m.Removed, id) {
			return nil
		}
		return err
	}
	s.log.Info("member removed", "removed", id, "force", force)
	return nil
}

// promoteSelf makes this learner a voter (step 2 of the membership
// rules): it retries refusals and unknown outcomes until it is a voter or
// ctx ends, and fails at once when this replica is not a learner.
func (s *Store) promoteSelf(ctx context.Context) error {
	s.log.Info("joined as a learner; becoming a voter once caught up and a quorum of the new voters is reachable")
	var warned time.Time
	for {
		err := s.promoteOnce(ctx)
		if err == nil {
			return nil
		}
		var permanent *notLearnerError
		if errors.As(err, &permanent) {
			return err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("raftstore: node %d is still a learner: %w (last attempt: %w)", s.nodeID, ctx.Err(), err)
		}
		if now := time.Now(); now.Sub(warned) >= promoteWarnEvery {
			warned = now
			s.log.Warn("still a learner: promotion to voter not possible yet; retrying", "err", err)
		}
		t := time.NewTimer(promoteRetry)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}

// notLearnerError: the replica is not a learner the shard could promote.
type notLearnerError struct{ msg string }

func (e *notLearnerError) Error() string { return e.msg }

func (s *Store) promoteOnce(ctx context.Context) error {
	m, err := s.Members(ctx)
	if err != nil {
		return err
	}
	me, ok := m.find(s.nodeID)
	switch {
	case !ok:
		return &notLearnerError{fmt.Sprintf("raftstore: node %d is not a member of the shard (members: %v): add it with `blixard node add %d RAFT-ADDR` on a member",
			s.nodeID, memberList(m), s.nodeID)}
	case me.Role == RoleVoter:
		return nil
	case me.Role == RoleWitness:
		return &notLearnerError{fmt.Sprintf("raftstore: node %d is a witness, which Raft cannot promote", s.nodeID)}
	}
	// Caught up: a linearizable read returns only once this replica
	// applied everything the leader had committed when the read began.
	st, err := s.Read(ctx)
	if err != nil {
		return fmt.Errorf("raftstore: catching up before the promotion: %w", err)
	}
	voters := m.ids(RoleVoter)
	after := append(slices.Clone(voters), s.nodeID)
	reach, err := s.reachableVoters(ctx, voters, func(r map[uint64]bool) bool {
		return count(voters, r)+1 >= quorum(len(after))
	})
	if err != nil {
		return err
	}
	reach[s.nodeID] = true
	if err := checkReachable(fmt.Sprintf("promoting node %d to voter", s.nodeID), after, reach); err != nil {
		return err
	}
	actx, cancel := context.WithTimeout(ctx, s.attemptTimeout)
	defer cancel()
	if err := s.nh.SyncRequestAddReplica(actx, ShardID, s.nodeID, me.RaftAddr, 0); err != nil {
		if s.isMember(ctx, s.nodeID, RoleVoter) {
			return nil // an earlier attempt went through
		}
		return fmt.Errorf("raftstore: promoting node %d to voter: %w", s.nodeID, err)
	}
	s.log.Info("promoted to voter", "caughtUpAtIndex", st.Applied, "voters", len(after))
	return nil
}

// ErrDataLost is what [Start] returns (wrapped in a [DataLostError]) when
// this replica's Raft data is lost or corrupt: the directory is empty
// although the replica was a member, or its log ends before an index the
// replica is known to have applied, or Dragonboat failed while opening
// it. Such a replica must never rejoin under its id: a leader that
// remembers what it acknowledged makes it panic ("invalid commitTo
// index"), and a replica that forgot its votes can vote twice in a term.
// The node should stop its VMs (the cluster moves them elsewhere once the
// node is removed or marked down) and exit without restarting.
var ErrDataLost = errors.New("this node's Raft data is lost or corrupt")

// DataLostError is [ErrDataLost] with the replica, the directory, why, and
// the replacement procedure.
type DataLostError struct {
	NodeID uint64
	// Dir is the raft directory (Config.DataDir).
	Dir    string
	Reason string
}

func (e *DataLostError) Error() string {
	return fmt.Sprintf("raftstore: node %d: %v: %s. Replace the node: on a healthy node run `blixard node remove %d`, "+
		"then wipe %s here and join again under a new id (`blixard node add NEW-ID RAFT-ADDR` on a healthy node, then "+
		"`blixard serve --node-id NEW-ID --join …`); see docs/reliability.md",
		e.NodeID, ErrDataLost, e.Reason, e.NodeID, e.Dir)
}

// Is makes errors.Is(err, ErrDataLost) hold.
func (e *DataLostError) Is(target error) bool { return target == ErrDataLost }

// memberRecord is what the store keeps beside the raft directory
// (memberRecordPath): the evidence that survives the directory.
type memberRecord struct {
	// NodeID is the replica the raft directory holds.
	NodeID   uint64 `json:"nodeID"`
	RaftAddr string `json:"raftAddr"`
	// JoinedAsLearner: the replica joined as a learner, so Dragonboat must
	// start it non-voting every time, also after its promotion (it turns
	// into a voter while it replays the log; started as a voter it panics
	// on the log's add-learner entry).
	JoinedAsLearner bool `json:"joinedAsLearner"`
	// Applied is the highest index the replica is known to have applied
	// (written at start and at Close). Its log holds at least that much;
	// if it holds less, entries it acknowledged are gone.
	Applied uint64 `json:"applied"`
}

// memberRecordPath is the record of the raft directory dir: beside it,
// so that wiping the directory leaves the evidence.
func memberRecordPath(dir string) string { return filepath.Clean(dir) + ".member.json" }

// memberGuard holds the replica's record and the strict check's
// heartbeat interval.
type memberGuard struct {
	path string
	dir  string
	log  *slog.Logger // non-nil
	// heartbeat is the nodes' heartbeat interval in ns.
	heartbeat atomic.Int64
	mu        sync.Mutex
	rec       memberRecord // guarded by mu
}

// checkData checks cfg's raft directory against its record before the
// replica starts (see [ErrDataLost]), and returns the guard that keeps the
// record from now on. cfg has its defaults filled in.
func checkData(cfg Config, logdb config.LogDBConfig, log *slog.Logger) (*memberGuard, error) {
	g := &memberGuard{path: memberRecordPath(cfg.DataDir), dir: cfg.DataDir, log: log}
	g.heartbeat.Store(int64(DefaultHeartbeatInterval))
	lost := func(format string, args ...any) error {
		return &DataLostError{NodeID: cfg.NodeID, Dir: cfg.DataDir, Reason: fmt.Sprintf(format, args...)}
	}
	rec, found, err := readMemberRecord(g.path)
	if err != nil {
		return nil, err
	}
	empty, err := emptyDir(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("raftstore: start node %d: %w", cfg.NodeID, err)
	}
	switch {
	case found && rec.NodeID != cfg.NodeID && !empty:
		return nil, fmt.Errorf("raftstore: start node %d: %s holds the Raft data of node %d (see %s): start with --node-id %d, "+
			"or wipe %s to join as a new node", cfg.NodeID, cfg.DataDir, rec.NodeID, g.path, rec.NodeID, cfg.DataDir)
	case found && rec.NodeID != cfg.NodeID:
		log.Info("the raft directory is empty and the node has a new id: it starts as a new replica", "previousNode", rec.NodeID)
		found = false
	case found && empty:
		return nil, lost("the raft directory is empty or missing, but %s records that it held replica %d of the shard, which had applied index %d",
			g.path, rec.NodeID, rec.Applied)
	}
	switch {
	case found:
		g.rec = rec
	case empty:
		// A new replica: a joining one always starts as a learner.
		g.rec = memberRecord{NodeID: cfg.NodeID, JoinedAsLearner: cfg.Join}
	default:
		// Data from before the record existed: it started as it was told.
		g.rec = memberRecord{NodeID: cfg.NodeID, JoinedAsLearner: cfg.NonVoting}
	}
	g.rec.RaftAddr = cfg.RaftAddr
	if empty {
		return g, nil
	}
	last, err := probeLog(cfg, logdb, g.nonVoting(cfg))
	var p *openPanic
	var settings *startError
	switch {
	case errors.As(err, &p):
		return nil, lost("Dragonboat failed while opening it: %v", p.v)
	case errors.As(err, &settings):
		// Not the data but how it is started (other members, a join
		// setting): the real start fails the same way and says so.
		log.Debug("the data check could not start the replica; the start will say why", "err", err)
		return g, nil
	case err != nil:
		return nil, fmt.Errorf("raftstore: start node %d: opening the Raft data in %s (is another blixard using it? if its files are damaged, "+
			"replace the node as docs/reliability.md says): %w", cfg.NodeID, cfg.DataDir, err)
	}
	if last < g.rec.Applied {
		return nil, lost("its Raft log ends at index %d, but the replica had applied index %d (recorded in %s): entries it acknowledged are gone "+
			"(a damaged or restored log)", last, g.rec.Applied, g.path)
	}
	return g, nil
}

// nonVoting is Dragonboat's IsNonVoting for the replica.
func (g *memberGuard) nonVoting(cfg Config) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return cfg.NonVoting || g.rec.JoinedAsLearner
}

// wantsPromotion: the replica joined as a learner and is not told to
// stay one.
func (g *memberGuard) wantsPromotion(cfg Config) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return !cfg.NonVoting && g.rec.JoinedAsLearner
}

// started records that the directory holds the replica now.
func (g *memberGuard) started() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := writeMemberRecord(g.path, g.rec); err != nil {
		return fmt.Errorf("raftstore: start node %d: recording the replica beside its raft directory: %w", g.rec.NodeID, err)
	}
	return nil
}

// recordApplied raises the record's applied index to index; a failure is
// logged (the record stays a lower bound, which is still correct).
func (g *memberGuard) recordApplied(index uint64) {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if index <= g.rec.Applied {
		return
	}
	rec := g.rec
	rec.Applied = index
	if err := writeMemberRecord(g.path, rec); err != nil {
		g.log.Warn("cannot record the applied index beside the raft directory; a damaged log may go unnoticed at the next start", "err", err)
		return
	}
	g.rec = rec
}

// recordApplied records the local replica's applied index (at start and
// at Close).
func (s *Store) recordApplied() {
	if st, err := s.LocalRead(); err == nil {
		s.members.recordApplied(st.Applied)
	}
}

// settle finishes Start once the shard has a leader: a learner that is to
// vote promotes itself, and the record gets the applied index.
func (s *Store) settle(ctx context.Context, cfg Config) error {
	if s.members.wantsPromotion(cfg) {
		if err := s.promoteSelf(ctx); err != nil {
			return err
		}
	}
	s.recordApplied()
	return nil
}

func readMemberRecord(path string) (memberRecord, bool, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return memberRecord{}, false, nil
	}
	if err != nil {
		return memberRecord{}, false, fmt.Errorf("raftstore: reading the replica record: %w", err)
	}
	var rec memberRecord
	if err := json.Unmarshal(data, &rec); err != nil || rec.NodeID == 0 {
		return memberRecord{}, false, fmt.Errorf("raftstore: the replica record %s is damaged (%v): if the raft directory beside it is intact, "+
			"delete the record and start again; otherwise replace the node as docs/reliability.md says", path, err)
	}
	return rec, true, nil
}

// writeMemberRecord replaces the record atomically and durably.
func writeMemberRecord(path string, rec memberRecord) error {
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// emptyDir reports whether dir is missing or holds nothing.
func emptyDir(dir string) (bool, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading the raft directory: %w", err)
	}
	return len(entries) == 0, nil
}

// openPanic is a panic Dragonboat raised while the probe opened the data.
type openPanic struct{ v any }

func (p *openPanic) Error() string { return fmt.Sprintf("panic: %v", p.v) }

// startError is the probe's StartReplica refusing the replica's settings.
type startError struct{ err error }

func (e *startError) Error() string { return e.err.Error() }
func (e *startError) Unwrap() error { return e.err }

// probeLog opens the replica's data the way open does, but with the
// NodeHost listening on an unused loopback port that no peer knows, so
// nothing reaches the replica: a leader that remembers more than the log
// holds would make Dragonboat panic in one of its own goroutines, out of
// reach of recover(). It returns the last index the log holds (or its
// snapshot covers). Panics on the calling goroutine (Dragonboat panics on
// some damaged data while opening it) come back as an *openPanic.
func probeLog(cfg Config, logdb config.LogDBConfig, nonVoting bool) (last uint64, err error) {
	listen, err := unusedLoopbackAddr()
	if err != nil {
		return 0, err
	}
	var nh *dragonboat.NodeHost
	defer func() {
		if v := recover(); v != nil {
			err = &openPanic{v: v}
		}
		if nh != nil {
			nh.Close()
		}
	}()
	nh, err = dragonboat.NewNodeHost(config.NodeHostConfig{
		NodeHostDir: cfg.DataDir, RTTMillisecond: cfg.RTTMillisecond, RaftAddress: cfg.RaftAddr, ListenAddress: listen,
		Expert: config.ExpertConfig{LogDB: logdb}, MutualTLS: cfg.TLS.enabled(),
		CAFile: cfg.TLS.CAFile, CertFile: cfg.TLS.CertFile, KeyFile: cfg.TLS.KeyFile,
	})
	if err != nil {
		return 0, err
	}
	if nh == nil {
		// NewNodeHost recovers from a panic that is not an error and
		// returns neither a NodeHost nor an error.
		return 0, &openPanic{v: "the NodeHost files (dragonboat.ds, NODEHOST.ID) could not be read"}
	}
	members := make(map[uint64]dragonboat.Target, len(cfg.Members))
	for id, addr := range cfg.Members {
		members[id] = addr
	}
	rc := config.Config{ReplicaID: cfg.NodeID, ShardID: ShardID, CheckQuorum: true, PreVote: true,
		HeartbeatRTT: cfg.HeartbeatRTT, ElectionRTT: cfg.ElectionRTT, IsNonVoting: nonVoting}
	if err := nh.StartReplica(members, cfg.Join, stateMachineFactory(nil), rc); err != nil {
		return 0, &startError{err}
	}
	lr, err := nh.GetLogReader(ShardID)
	if err != nil {
		return 0, err
	}
	_, last = lr.GetRange()
	return max(last, lr.Snapshot().Index), nil
}

// unusedLoopbackAddr returns a loopback address with a port nothing
// listens on (the probe binds it a moment later).
func unusedLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("raftstore: finding a free loopback port to open the Raft data without peers: %w", err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr, nil
}
