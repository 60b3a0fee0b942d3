package raftstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lni/dragonboat/v4/config"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
)

// testHeartbeat is how often the tests' nodes heartbeat; the stores are
// told a slower interval so that a busy test machine does not make a live
// voter look unreachable (the check ends early once it is decided).
const (
	testHeartbeat        = 100 * time.Millisecond
	testHeartbeatSetting = 500 * time.Millisecond
)

// voters are n voters started on loopback, with their configs (to restart
// them) and the node heartbeats that make them reachable.
type voters struct {
	t      *testing.T
	stores map[uint64]*Store
	cfgs   map[uint64]Config
	mu     sync.Mutex
	stop   map[uint64]context.CancelFunc // guarded by mu
	wg     sync.WaitGroup
}

func startVoters(t *testing.T, n int) *voters {
	t.Helper()
	addrs := freeAddrs(t, n)
	base := t.TempDir()
	members := map[uint64]string{}
	for i, a := range addrs {
		members[uint64(i+1)] = a
	}
	v := &voters{t: t, stores: map[uint64]*Store{}, cfgs: map[uint64]Config{}, stop: map[uint64]context.CancelFunc{}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for id, addr := range members {
		cfg := Config{NodeID: id, RaftAddr: addr, DataDir: filepath.Join(base, fmt.Sprint(id), "raft"), Members: members, Logger: quietLogger()}
		v.cfgs[id] = cfg
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := Start(ctx, cfg)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			v.stores[id] = s
		}()
	}
	wg.Wait()
	t.Cleanup(v.closeAll)
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for _, s := range v.stores {
		mustPropose(t, ctx, s, testkit.Register(s.NodeID()), replicated.ResultOK)
		v.beat(s)
	}
	return v
}

// beat registers s's node (when needed) and proposes its heartbeat every
// testHeartbeat until stopped, s closes or the test ends.
func (v *voters) beat(s *Store) {
	s.SetHeartbeatInterval(testHeartbeatSetting)
	ctx, cancel := context.WithCancel(context.Background())
	v.mu.Lock()
	v.stop[s.NodeID()] = cancel
	v.mu.Unlock()
	v.wg.Add(1)
	go func() {
		defer v.wg.Done()
		t := time.NewTicker(testHeartbeat)
		defer t.Stop()
		for {
			pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
			res, err := s.Propose(pctx, replicated.Command{Type: replicated.CmdNodeHeartbeat, At: testkit.T0,
				NodeHeartbeat: &replicated.NodeHeartbeat{ID: s.NodeID()}})
			pcancel()
			if err == nil && res.Code == replicated.ResultUnknownNode {
				s.Propose(ctx, testkit.Register(s.NodeID()))
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// close stops node id's heartbeats and closes its replica.
func (v *voters) close(id uint64) {
	v.mu.Lock()
	if stop := v.stop[id]; stop != nil {
		stop()
	}
	v.mu.Unlock()
	if s := v.stores[id]; s != nil {
		s.Close()
	}
}

func (v *voters) closeAll() {
	v.mu.Lock()
	for _, stop := range v.stop {
		stop()
	}
	v.mu.Unlock()
	v.wg.Wait()
	for _, s := range v.stores {
		s.Close()
	}
}

func (v *voters) leader() *Store {
	v.t.Helper()
	var all []*Store
	for _, s := range v.stores {
		all = append(all, s)
	}
	return leaderOf(v.t, all)
}

// follower is a voter that does not lead.
func (v *voters) follower(not ...uint64) *Store {
	v.t.Helper()
	l := v.leader()
	for id, s := range v.stores {
		if id != l.NodeID() && !contains(not, id) {
			return s
		}
	}
	v.t.Fatal("no follower")
	return nil
}

// syncBuffer is a bytes.Buffer that a logger may write from any goroutine.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer // guarded by mu
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func contains(ids []uint64, id uint64) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

// roles returns the members as "id:role" strings.
func roles(t *testing.T, ctx context.Context, s *Store) []string {
	t.Helper()
	m, err := s.Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mem := range m.Members {
		out = append(out, fmt.Sprintf("%d:%s", mem.ID, mem.Role))
	}
	return out
}

func wantRoles(t *testing.T, ctx context.Context, s *Store, want ...string) {
	t.Helper()
	if got := roles(t, ctx, s); !reflect.DeepEqual(got, want) {
		t.Fatalf("members %v, want %v", got, want)
	}
}

func wantRefused(t *testing.T, err error, says ...string) {
	t.Helper()
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("got %v, want a refusal", err)
	}
	for _, w := range says {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("refusal %q does not say %q", err, w)
		}
	}
}

func TestJoiningNodeIsALearnerUntilCaughtUpThenAVoter(t *testing.T) {
	v := startVoters(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	leader := v.leader()
	for i := range 20 {
		mustPropose(t, ctx, leader, testkit.Register(uint64(100+i)), replicated.ResultOK)
	}

	before, err := leader.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	addr := freeAddrs(t, 2)
	if err := leader.AddReplica(ctx, 4, addr[0], false); err != nil {
		t.Fatal(err)
	}
	wantRoles(t, ctx, leader, "1:voter", "2:voter", "3:voter", "4:learner")

	var logs syncBuffer
	cfg := Config{NodeID: 4, RaftAddr: addr[0], DataDir: filepath.Join(t.TempDir(), "raft"), Join: true,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	joined, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	wantRoles(t, ctx, leader, "1:voter", "2:voter", "3:voter", "4:voter")
	// It asked for its promotion only after it had applied everything
	// committed before it was even added.
	promoted := regexp.MustCompile(`msg="promoted to voter".* caughtUpAtIndex=(\d+)`).FindStringSubmatch(logs.String())
	if promoted == nil {
		t.Fatalf("no promotion logged:\n%s", logs.String())
	}
	if caughtUp, _ := strconv.ParseUint(promoted[1], 10, 64); caughtUp < before.Applied {
		t.Fatalf("promoted at applied index %d, before catching up to %d", caughtUp, before.Applied)
	}
	st, err := joined.Read(ctx)
	if err != nil || len(st.Nodes) != 23 {
		t.Fatalf("the promoted replica reads %v nodes, %v", st, err)
	}
	rec, found, err := readMemberRecord(memberRecordPath(cfg.DataDir))
	if err != nil || !found || !rec.JoinedAsLearner || rec.NodeID != 4 || rec.Applied == 0 {
		t.Fatalf("record beside the raft directory: %+v found %v, %v", rec, found, err)
	}

	// Restarted, the promoted replica replays its own promotion (Dragonboat
	// starts it non-voting) and votes: with the leader gone the other three
	// of four voters need its vote to elect a new one.
	joined.Close()
	joined, err = Start(ctx, cfg)
	if err != nil {
		t.Fatalf("restarting the promoted replica: %v", err)
	}
	defer joined.Close()
	old := leader.NodeID()
	v.close(old)
	rest := []*Store{joined}
	for id, s := range v.stores {
		if id != old {
			rest = append(rest, s)
		}
	}
	newLeader := leaderOf(t, rest)
	if newLeader.NodeID() == old {
		t.Fatalf("leader %d was closed", old)
	}
	mustPropose(t, ctx, joined, testkit.Register(4), replicated.ResultOK)

	// A node started with NonVoting stays a learner.
	if err := joined.AddReplica(ctx, 5, addr[1], true); err != nil {
		t.Fatal(err)
	}
	learner, err := Start(ctx, Config{NodeID: 5, RaftAddr: addr[1], DataDir: filepath.Join(t.TempDir(), "raft"), Join: true, NonVoting: true, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer learner.Close()
	if _, err := learner.Read(ctx); err != nil {
		t.Fatal(err)
	}
	m, err := learner.Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if mem, _ := m.find(5); mem.Role != RoleLearner {
		t.Fatalf("node 5 started non-voting is %q, want learner", mem.Role)
	}
}

// TestPhantomMembersAreHarmlessLearners replays the probe of the issue:
// three members added to a three-node cluster that never start. They
// used to be voters (six voters, quorum four: one lost node wedged the
// cluster); now they are learners and cost nothing.
func TestPhantomMembersAreHarmlessLearners(t *testing.T) {
	v := startVoters(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	leader := v.leader()
	phantoms := freeAddrs(t, 3)
	for i, a := range phantoms {
		if err := leader.AddReplica(ctx, uint64(4+i), a, false); err != nil {
			t.Fatal(err)
		}
	}
	wantRoles(t, ctx, leader, "1:voter", "2:voter", "3:voter", "4:learner", "5:learner", "6:learner")

	v.close(v.follower().NodeID())
	mustPropose(t, ctx, leader, testkit.Register(9), replicated.ResultOK)

	wantRefused(t, leader.AddReplica(ctx, 7, phantoms[0], false), "already node 4's")
	wantRefused(t, leader.AddReplica(ctx, 4, freeAddrs(t, 1)[0], false), "node id 4 is already a learner")
	wantRefused(t, leader.AddReplica(ctx, 4, phantoms[0], false), "already a learner", "--join")
	for id := uint64(4); id <= 6; id++ {
		if err := leader.RemoveReplica(ctx, id, false); err != nil {
			t.Fatalf("removing phantom %d: %v", id, err)
		}
	}
	wantRefused(t, leader.AddReplica(ctx, 4, phantoms[0], false), "removed", "new id")
	wantRefused(t, leader.RemoveReplica(ctx, 4, false), "removed already")
	wantRefused(t, leader.RemoveReplica(ctx, 8, false), "not a member")
}

func TestRemovingAVoterNeedsAReachableQuorumOfTheRest(t *testing.T) {
	v := startVoters(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	leader := v.leader()
	down := v.follower()
	alive := v.follower(down.NodeID())
	v.close(down.NodeID())

	// Removing the live follower would leave the leader and the stopped
	// node: one of two reachable, a quorum is two.
	err := leader.RemoveReplica(ctx, alive.NodeID(), false)
	wantRefused(t, err, fmt.Sprintf("removing voter %d", alive.NodeID()), "of which 1 are reachable", "a quorum of 2 voters is 2",
		fmt.Sprintf("unreachable: [%d]", down.NodeID()))
	// Removing the stopped one leaves two reachable voters.
	if err := leader.RemoveReplica(ctx, down.NodeID(), false); err != nil {
		t.Fatal(err)
	}
	want := []string{fmt.Sprintf("%d:voter", min(leader.NodeID(), alive.NodeID())), fmt.Sprintf("%d:voter", max(leader.NodeID(), alive.NodeID()))}
	wantRoles(t, ctx, leader, want...)
	mustPropose(t, ctx, leader, testkit.Register(9), replicated.ResultOK)

	if err := leader.RemoveReplica(ctx, alive.NodeID(), false); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, leader.RemoveReplica(ctx, leader.NodeID(), true), "last voter")
	mustPropose(t, ctx, leader, testkit.Register(10), replicated.ResultOK)
}

// flipLogByte flips one byte in the middle of the largest log file of the
// log DB under dir (Pebble's write-ahead log, which holds the entries).
func flipLogByte(t *testing.T, dir string) string {
	t.Helper()
	var largest string
	var size int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(p) != ".log" {
			return err
		}
		if fi, err := d.Info(); err == nil && fi.Size() > size {
			largest, size = p, fi.Size()
		}
		return nil
	})
	if err != nil || largest == "" {
		t.Fatalf("no log file under %s: %v", dir, err)
	}
	b, err := os.ReadFile(largest)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40
	if err := os.WriteFile(largest, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return largest
}

// TestFlippedLogByteStopsTheReplicaWithErrDataLost: a flipped byte in a
// replica's log makes Pebble drop every entry after it without an error;
// restarted, Dragonboat used to panic ("invalid commitTo index") as soon
// as the leader told the commit index, in a loop. Now Start refuses with
// ErrDataLost before any peer reaches the replica, again on every try,
// and the replacement procedure brings the node back under a new id.
func TestFlippedLogByteStopsTheReplicaWithErrDataLost(t *testing.T) {
	v := startVoters(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	leader := v.leader()
	victim := v.follower()
	id := victim.NodeID()
	for i := range 60 {
		mustPropose(t, ctx, leader, testkit.Register(uint64(100+i)), replicated.ResultOK)
	}
	testkit.WaitFor(t, 10*time.Second, "the victim to apply every entry", testkit.Until(func() bool {
		mine, err1 := victim.LocalRead()
		theirs, err2 := leader.LocalRead()
		return err1 == nil && err2 == nil && mine.Applied == theirs.Applied
	}))
	v.close(id)
	cfg := v.cfgs[id]
	t.Logf("flipped a byte of %s", flipLogByte(t, cfg.DataDir))

	for attempt := 1; attempt <= 2; attempt++ {
		s, err := Start(ctx, cfg)
		if err == nil {
			s.Close()
			t.Fatalf("attempt %d: the replica with a damaged log started", attempt)
		}
		if !errors.Is(err, ErrDataLost) {
			t.Fatalf("attempt %d: %v, want ErrDataLost", attempt, err)
		}
		t.Logf("attempt %d: %v", attempt, err)
		for _, w := range []string{"log ends at index", fmt.Sprintf("blixard node remove %d", id), cfg.DataDir, "new id"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("attempt %d: %q does not say %q", attempt, err, w)
			}
		}
	}
	mustPropose(t, ctx, leader, testkit.Register(9), replicated.ResultOK)

	// The replacement procedure: remove, wipe, add under a new id, join.
	if err := leader.RemoveReplica(ctx, id, false); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(cfg.DataDir); err != nil {
		t.Fatal(err)
	}
	if err := leader.AddReplica(ctx, 4, cfg.RaftAddr, false); err != nil {
		t.Fatal(err)
	}
	again := Config{NodeID: 4, RaftAddr: cfg.RaftAddr, DataDir: cfg.DataDir, Join: true, Logger: quietLogger()}
	s, err := Start(ctx, again)
	if err != nil {
		t.Fatalf("rejoining under a new id: %v", err)
	}
	defer s.Close()
	m, err := s.Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if mem, _ := m.find(4); mem.Role != RoleVoter || !contains(m.Removed, id) {
		t.Fatalf("after the replacement: %+v", m)
	}
}

// TestWipedRaftDirectoryStopsTheReplicaWithErrDataLost: a replica whose
// raft directory is gone, while the record beside it says it was a
// member, must not start afresh under the same id. Data from before the
// record existed starts as it did and gets one.
func TestWipedRaftDirectoryStopsTheReplicaWithErrDataLost(t *testing.T) {
	v := startVoters(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	id := v.follower().NodeID()
	cfg := v.cfgs[id]
	v.close(id)

	if err := os.Remove(memberRecordPath(cfg.DataDir)); err != nil {
		t.Fatal(err)
	}
	s, err := Start(ctx, cfg)
	if err != nil {
		t.Fatalf("data without a record: %v", err)
	}
	s.Close()
	if _, found, err := readMemberRecord(memberRecordPath(cfg.DataDir)); !found || err != nil {
		t.Fatalf("no record after the start: %v", err)
	}

	if err := os.RemoveAll(cfg.DataDir); err != nil {
		t.Fatal(err)
	}
	_, err = Start(ctx, cfg)
	if !errors.Is(err, ErrDataLost) || !strings.Contains(err.Error(), "empty or missing") {
		t.Fatalf("wiped raft directory: %v, want ErrDataLost saying it is empty", err)
	}
	var dl *DataLostError
	if !errors.As(err, &dl) || dl.NodeID != id || dl.Dir != cfg.DataDir {
		t.Fatalf("error %#v", err)
	}
	// Another id in the same place is a new replica (the replacement).
	other := cfg
	other.NodeID = 7
	other.Members = map[uint64]string{7: cfg.RaftAddr}
	if g, err := checkData(other.withTimingDefaults(), mustLogDB(t), quietLogger()); err != nil || g.rec.NodeID != 7 {
		t.Fatalf("a new id over a wiped directory: %v", err)
	}
}

func mustLogDB(t *testing.T) config.LogDBConfig {
	t.Helper()
	c, err := logDBConfig("")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestMembershipChecks(t *testing.T) {
	three := Membership{Members: []Member{{1, "a:1", RoleVoter}, {2, "a:2", RoleVoter}, {3, "a:3", RoleVoter}, {4, "a:4", RoleLearner}}, Removed: []uint64{9}}
	reach := func(ids ...uint64) map[uint64]bool {
		m := map[uint64]bool{}
		for _, id := range ids {
			m[id] = true
		}
		return m
	}
	for _, tt := range []struct {
		name string
		err  error
		says []string // nil: allowed
	}{
		{"adding a new id at a new address is allowed", checkAdd(three, 5, "a:5"), nil},
		{"adding a removed id is refused", checkAdd(three, 9, "a:9"), []string{"removed", "new id"}},
		{"adding a taken id is refused", checkAdd(three, 2, "a:9"), []string{"node id 2 is already a voter at a:2"}},
		{"adding a member again says how to start it", checkAdd(three, 4, "a:4"), []string{"already a learner", "--join"}},
		{"adding at a member's address is refused", checkAdd(three, 5, "a:3"), []string{"already node 3's"}},
		{"promoting with all voters reachable is allowed", checkReachable("promoting", []uint64{1, 2, 3, 4}, reach(1, 2, 3, 4)), nil},
		{"promoting with two of three voters and the learner is allowed", checkReachable("promoting", []uint64{1, 2, 3, 4}, reach(1, 2, 4)), nil},
		{"promoting with one of three voters is refused", checkReachable("promoting", []uint64{1, 2, 3, 4}, reach(1, 4)),
			[]string{"4 voters [1 2 3 4]", "2 are reachable [1 4]", "unreachable: [2 3]", "quorum of 4 voters is 3"}},
		{"removing a voter leaving a reachable quorum is allowed", checkReachable("removing voter 3", []uint64{1, 2}, reach(1, 2)), nil},
		{"removing a voter leaving half reachable is refused", checkReachable("removing voter 2", []uint64{1, 3}, reach(1, 2)),
			[]string{"removing voter 2", "1 are reachable", "quorum of 2 voters is 2"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.says == nil {
				if tt.err != nil {
					t.Fatalf("refused: %v", tt.err)
				}
				return
			}
			wantRefused(t, tt.err, tt.says...)
		})
	}
	for _, tt := range []struct {
		name  string
		id    uint64
		after []uint64
		says  []string
	}{
		{"removing a learner leaves the voters alone", 4, nil, nil},
		{"removing a voter checks the other voters", 2, []uint64{1, 3}, nil},
		{"removing a removed id is refused", 9, nil, []string{"removed already"}},
		{"removing a stranger is refused", 8, nil, []string{"not a member", "2 (voter)"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			after, err := checkRemove(three, tt.id)
			if tt.says != nil {
				wantRefused(t, err, tt.says...)
				return
			}
			if err != nil || !reflect.DeepEqual(after, tt.after) {
				t.Fatalf("after %v, %v; want %v", after, err, tt.after)
			}
		})
	}
	one := Membership{Members: []Member{{1, "a:1", RoleVoter}, {2, "a:2", RoleLearner}}}
	_, err := checkRemove(one, 1)
	wantRefused(t, err, "last voter")
}

// BenchmarkProbeLog measures what the data check adds to every restart
// of a replica with a log: opening its data once more with no peer
// reaching it (a single voter with 2,000 applied entries).
func BenchmarkProbeLog(b *testing.B) {
	addr := freeAddrs(b, 1)[0]
	cfg := Config{NodeID: 1, RaftAddr: addr, DataDir: filepath.Join(b.TempDir(), "raft"), Members: map[uint64]string{1: addr}, Logger: quietLogger()}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s, err := Start(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	for i := range 2000 {
		mustPropose(b, ctx, s, testkit.Register(uint64(i%50+1)), replicated.ResultOK)
	}
	s.Close()
	logdb, err := logDBConfig("")
	if err != nil {
		b.Fatal(err)
	}
	cfg = cfg.withTimingDefaults()
	for b.Loop() {
		if last, err := probeLog(cfg, logdb, false); err != nil || last < 2000 {
			b.Fatalf("probe: last index %d, %v", last, err)
		}
	}
}
