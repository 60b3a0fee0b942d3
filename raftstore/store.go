package raftstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"sync"
	"time"

	"github.com/blixard/blixard/pki"
	"github.com/blixard/blixard/replicated"
	"github.com/lni/dragonboat/v4"
	"github.com/lni/dragonboat/v4/config"
	"github.com/lni/dragonboat/v4/logger"
	"github.com/lni/dragonboat/v4/raftio"
)

// ShardID is the one Raft shard Blixard uses.
const ShardID uint64 = 1

// Defaults of [Config] and of the retry loop.
//
// Raft timing is chosen for real hosts, which are busy: a node starting
// thousands of VMs, building closures or swapping must not make followers
// call elections. Like etcd (100 ms heartbeat, 1 s election timeout), a
// leader heartbeats every 100 ms and a follower campaigns only after 1–2 s
// (Dragonboat randomises the election timeout between ElectionRTT and
// 2×ElectionRTT ticks) without hearing from it; with CheckQuorum a leader steps
// down after 1 s without a quorum. A lost leader is replaced within ~1–2 s,
// far inside any node timeout, and a host that is starved for less than a
// second costs nothing. Measured on a 2-core host starting 2,000 VMs on three
// nodes (docs/benchmarks.md): the old timing (RTT 5 ms, heartbeat 10 ms,
// election 100–200 ms) changed leaders in two of three runs even with the
// agents' nix runs bounded; this timing in none of four.
const (
	// DefaultRTTMillisecond is the Raft tick: Dragonboat counts heartbeats
	// and elections in it. 1 ms caused spurious elections and dropped
	// proposals on loaded machines; 10 ms halves the ticks of 5 ms.
	DefaultRTTMillisecond = 10
	// DefaultHeartbeatRTT is the leader's heartbeat period in ticks
	// (10 × 10 ms = 100 ms).
	DefaultHeartbeatRTT = 10
	// DefaultElectionRTT is the election timeout in ticks (100 × 10 ms =
	// 1 s, randomised up to 2 s): ten heartbeats may be lost or late before
	// a follower campaigns.
	DefaultElectionRTT = 100
	// MinElectionHeartbeats is the least ElectionRTT/HeartbeatRTT a Config
	// may set: Dragonboat needs more than 2 and recommends 10.
	MinElectionHeartbeats = 10

	DefaultLogDB           = "tiny"
	DefaultSnapshotEntries = 1000

	// minAttemptTimeout bounds one SyncPropose/SyncRead attempt from below.
	// An attempt lasts attemptElections election timeouts (3 s with the
	// defaults): longer than a leader change takes (the randomised timeout,
	// at most 2 election timeouts, plus a vote), so a proposal made just
	// before the leader was lost is not given up while it may still commit.
	// A dropped proposal only shows as a timeout, so every attempt is
	// bounded and retried while ctx lasts.
	minAttemptTimeout = 2 * time.Second
	attemptElections  = 3
	retryBackoff      = 20 * time.Millisecond
	leaderPoll        = 10 * time.Millisecond
	// unknownOutcomeBackoff spaces ProposeOK's retries after Propose gave up
	// (each Propose already retried for as long as its ctx allowed).
	unknownOutcomeBackoff = 200 * time.Millisecond
	// quorumWarnEvery spaces the warnings of a replica that knows no leader
	// (at start and while it runs): often enough that an operator reading
	// the log sees why the node does nothing, rarely enough not to flood it.
	quorumWarnEvery = 5 * time.Second
	// readWaitTicks is the least ReadWait in ticks: a linearizable read
	// costs about two round trips (follower → leader → quorum → back).
	readWaitTicks = 4
)

// Config configures one replica of the shard.
type Config struct {
	// NodeID is this replica's Raft replica ID (> 0); it is also the node id
	// the agent registers.
	NodeID uint64
	// RaftAddr is the host:port this NodeHost listens on for Raft traffic.
	RaftAddr string
	// DataDir holds the Raft log and snapshots (created if missing).
	DataDir string
	// Members are the initial voters, replica id → raft address, the same on
	// every initial member. Empty when Join is set or when restarting a
	// replica whose DataDir already holds the shard.
	Members map[uint64]string
	// Join starts a replica that was added to a running shard with
	// [Store.AddReplica].
	Join bool
	// NonVoting starts this replica as a non-voting member; it must have been
	// added with AddReplica(…, nonVoting = true).
	NonVoting bool
	// RTTMillisecond is the Raft tick in ms (default
	// [DefaultRTTMillisecond], 10). Set it to about the round trip between
	// the hosts, or more.
	RTTMillisecond uint64
	// HeartbeatRTT is the leader's heartbeat period in ticks (default
	// [DefaultHeartbeatRTT], 10: 100 ms with the default tick).
	HeartbeatRTT uint64
	// ElectionRTT is the election timeout in ticks (default
	// [DefaultElectionRTT], 100: 1 s with the default tick, randomised up
	// to twice that). It must be at least [MinElectionHeartbeats] ×
	// HeartbeatRTT. Every replica of a shard should use the same timing.
	ElectionRTT uint64
	// LogDB sizes the log DB's memory: tiny (default, ≤256 MB), small
	// (≤1 GB), medium (≤4 GB) or large (≤8 GB).
	LogDB string
	// SnapshotEntries is the number of applied entries between automatic
	// snapshots (default 1000).
	SnapshotEntries uint64
	// QuietRaftLog lowers Dragonboat's own logging from warnings to errors
	// (process-wide; the first Start decides).
	QuietRaftLog bool
	// TLS, when set, makes all Raft traffic mutual TLS (Dragonboat's
	// MutualTLS): this replica presents its node certificate and accepts
	// only peers whose certificate the CA signed, so a host without one
	// cannot join the shard or send it messages. Every replica of a shard
	// must use it, or none.
	TLS TLSFiles
	// OnApply, when non-nil, is called (without blocking) after every entry
	// this replica applies, so local readers can react at once — except
	// after quiet ones, liveness-only heartbeats that change nothing but
	// the node's heartbeat count and time
	// (replicated.State.ApplyEntryQuiet): in a steady cluster of 1,000
	// nodes those are hundreds a second, and each would wake the agent
	// into a full read of the state. LastApplied counts every entry.
	OnApply func(index uint64)
	// Logger receives the store's own logs (default slog.Default()).
	// Dragonboat's internal logger is set to WARNING.
	Logger *slog.Logger
}

// TLSFiles are the PEM files of Raft's mutual TLS, as package pki writes
// them. All three are set, or none (plain TCP: anyone who reaches the raft
// port can take part in the shard).
type TLSFiles struct {
	// CAFile is the cluster CA's certificate (ca.crt).
	CAFile string
	// CertFile is this node's certificate (node-ID.crt, ID being NodeID); it
	// must name the host of RaftAddr, which peers check when they dial it.
	CertFile string
	// KeyFile is CertFile's key (node-ID.key, mode 0600).
	KeyFile string
}

// enabled reports whether any file is set; validate requires all then.
func (f TLSFiles) enabled() bool { return f != TLSFiles{} }

// Store is a running replica of the shard. Its methods are safe for
// concurrent use.
type Store struct {
	nh        *dragonboat.NodeHost // non-nil
	nodeID    uint64
	log       *slog.Logger // non-nil
	closeOnce sync.Once
	// attemptTimeout bounds one SyncPropose/SyncRead attempt
	// (Config.attemptTimeout); electionTimeout is Config.ElectionTimeout.
	attemptTimeout, electionTimeout time.Duration
	leaders                         *leaderWatch // non-nil
	applied                         *applyWatch  // non-nil
	members                         *memberGuard // non-nil; see members.go
}

// leaderWatch follows the shard's leader as this replica sees it, from
// Dragonboat's leader events (it is the NodeHost's RaftEventListener), so
// that readers learn at no cost how long the replica has been without a
// leader, and pending requests learn that a new leader was elected.
type leaderWatch struct {
	log *slog.Logger // non-nil
	mu  sync.Mutex
	// leader is the leader known locally (0: none) in term; since is when
	// leader took its value (the NodeHost's start before any event).
	leader, term uint64    // guarded by mu
	since        time.Time // guarded by mu
	// elected is closed, and replaced, whenever a leader becomes known in
	// a new term: a request forwarded to the previous leader is lost then.
	elected chan struct{} // guarded by mu
	// changes counts the times a leader became known in a new term, as
	// this replica saw it (metrics: elections that ended).
	changes uint64 // guarded by mu
}

var _ raftio.IRaftEventListener = (*leaderWatch)(nil)

func newLeaderWatch(log *slog.Logger) *leaderWatch {
	return &leaderWatch{log: log, since: time.Now(), elected: make(chan struct{})}
}

// LeaderUpdated records a leader change. Dragonboat calls it on its event
// goroutine, one event at a time, for every shard of the NodeHost.
func (w *leaderWatch) LeaderUpdated(info raftio.LeaderInfo) {
	if info.ShardID != ShardID {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if info.LeaderID == w.leader && info.Term == w.term {
		return
	}
	now := time.Now()
	prev, without := w.leader, now.Sub(w.since)
	if info.LeaderID != w.leader {
		w.since = now
	}
	w.leader, w.term = info.LeaderID, info.Term
	switch {
	case info.LeaderID != 0:
		close(w.elected)
		w.elected = make(chan struct{})
		w.changes++
		if prev == 0 {
			w.log.Info("Raft leader known", "leader", info.LeaderID, "term", info.Term, "withoutLeader", without.Round(time.Millisecond))
		} else {
			w.log.Info("Raft leader changed", "leader", info.LeaderID, "previous", prev, "term", info.Term)
		}
	case prev != 0:
		w.log.Info("Raft leader lost; an election follows", "previous", prev, "term", info.Term)
	}
}

// get returns the leader known locally (0: none) and since when that is so.
func (w *leaderWatch) get() (leader uint64, since time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.leader, w.since
}

// electedC is closed once a leader is known in a term after this call.
func (w *leaderWatch) electedC() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.elected
}

// applyWatch records the last entry the replica applied and when.
type applyWatch struct {
	mu    sync.Mutex
	index uint64    // guarded by mu
	at    time.Time // guarded by mu; the NodeHost's start before any entry
}

func (a *applyWatch) set(index uint64, at time.Time) {
	a.mu.Lock()
	a.index, a.at = index, at
	a.mu.Unlock()
}

func (a *applyWatch) get() (uint64, time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.index, a.at
}

func logDBConfig(name string) (config.LogDBConfig, error) {
	switch name {
	case "", "tiny":
		return config.GetTinyMemLogDBConfig(), nil
	case "small":
		return config.GetSmallMemLogDBConfig(), nil
	case "medium":
		return config.GetMediumMemLogDBConfig(), nil
	case "large":
		return config.GetLargeMemLogDBConfig(), nil
	}
	return config.LogDBConfig{}, fmt.Errorf("log DB size %q is not one of tiny, small, medium, large", name)
}

func (cfg *Config) validate() error {
	if cfg.NodeID == 0 {
		return errors.New("node id must be > 0")
	}
	if _, _, err := net.SplitHostPort(cfg.RaftAddr); err != nil {
		return fmt.Errorf("raft address %q is not host:port: %w", cfg.RaftAddr, err)
	}
	if cfg.DataDir == "" {
		return errors.New("data dir is empty")
	}
	if err := cfg.checkTiming(); err != nil {
		return err
	}
	if cfg.Join && len(cfg.Members) > 0 {
		return errors.New("a joining replica takes no initial members: drop Members or Join")
	}
	if cfg.TLS.enabled() && (cfg.TLS.CAFile == "" || cfg.TLS.CertFile == "" || cfg.TLS.KeyFile == "") {
		return fmt.Errorf("raft TLS needs a CA, a certificate and a key file, got CA %q, certificate %q, key %q: give all three or none",
			cfg.TLS.CAFile, cfg.TLS.CertFile, cfg.TLS.KeyFile)
	}
	if len(cfg.Members) > 0 {
		addr, ok := cfg.Members[cfg.NodeID]
		if !ok {
			return fmt.Errorf("the initial members %v do not include this node %d", memberIDs(cfg.Members), cfg.NodeID)
		}
		if addr != cfg.RaftAddr {
			return fmt.Errorf("the initial members give node %d the raft address %s but it listens on %s", cfg.NodeID, addr, cfg.RaftAddr)
		}
	}
	return nil
}

// withTimingDefaults fills RTTMillisecond, HeartbeatRTT and ElectionRTT
// where they are zero.
func (cfg Config) withTimingDefaults() Config {
	if cfg.RTTMillisecond == 0 {
		cfg.RTTMillisecond = DefaultRTTMillisecond
	}
	if cfg.HeartbeatRTT == 0 {
		cfg.HeartbeatRTT = DefaultHeartbeatRTT
	}
	if cfg.ElectionRTT == 0 {
		cfg.ElectionRTT = DefaultElectionRTT
	}
	return cfg
}

// checkTiming refuses an election timeout too close to the heartbeat
// period: a follower would campaign after a few late heartbeats.
func (cfg *Config) checkTiming() error {
	t := cfg.withTimingDefaults()
	if t.ElectionRTT < MinElectionHeartbeats*t.HeartbeatRTT {
		return fmt.Errorf("raft election timeout of %d ticks is less than %d heartbeats of %d ticks: raise ElectionRTT to at least %d (or lower HeartbeatRTT)",
			t.ElectionRTT, MinElectionHeartbeats, t.HeartbeatRTT, MinElectionHeartbeats*t.HeartbeatRTT)
	}
	return nil
}

// HeartbeatInterval is how often the leader heartbeats with cfg's timing
// (defaults filled in).
func (cfg Config) HeartbeatInterval() time.Duration {
	t := cfg.withTimingDefaults()
	return time.Duration(t.HeartbeatRTT*t.RTTMillisecond) * time.Millisecond
}

// ElectionTimeout is the least time a follower waits without hearing from
// a leader before it campaigns (Dragonboat waits up to twice as long), and
// the time after which a leader without a quorum steps down.
func (cfg Config) ElectionTimeout() time.Duration {
	t := cfg.withTimingDefaults()
	return time.Duration(t.ElectionRTT*t.RTTMillisecond) * time.Millisecond
}

// attemptTimeout bounds one SyncPropose/SyncRead attempt: attemptElections
// election timeouts, at least minAttemptTimeout.
func (cfg Config) attemptTimeout() time.Duration {
	return max(minAttemptTimeout, attemptElections*cfg.ElectionTimeout())
}

// ReadWait is how long a reader that can fall back on the local replica
// (the API's read-only calls) should wait for a linearizable [Store.Read]:
// three quarters of a heartbeat period, at least readWaitTicks ticks. A
// leader that is there confirms a read in about two round trips, and a
// tick is set to about one round trip, so a read that takes that long has
// met a leader that is gone (its followers campaign soon) or a replica too
// busy to answer. Waiting longer would make every read during the election
// timeout that follows a lost leader as slow as the wait; with the default
// timing (75 ms) a stale answer still comes within 100 ms.
func (cfg Config) ReadWait() time.Duration {
	t := cfg.withTimingDefaults()
	return max(cfg.HeartbeatInterval()*3/4, time.Duration(readWaitTicks*t.RTTMillisecond)*time.Millisecond)
}

func memberIDs(m map[uint64]string) []uint64 {
	ids := make([]uint64, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// dragonboatLogOnce guards quietDragonboat. It is the package's only
// package-level state, and it mirrors state that is process-wide anyway:
// Dragonboat's log levels are global and SetLevel is unsynchronised with the
// loggers' readers, so the levels are set once, before the first NodeHost.
var dragonboatLogOnce sync.Once

// quietDragonboat turns Dragonboat's own loggers down to WARNING, or to
// ERROR when quieter is set (a one-node dev cluster, where elections and
// stale-read warnings are noise). The first Start in a process decides.
func quietDragonboat(quieter bool) {
	dragonboatLogOnce.Do(func() {
		level := logger.WARNING
		if quieter {
			level = logger.ERROR
		}
		for _, pkg := range []string{"dragonboat", "raft", "rsm", "transport", "logdb", "LogDB", "raftpb",
			"config", "settings", "gossip", "registry", "server", "tan", "pebblekv", "raft-mt", "tools"} {
			logger.GetLogger(pkg).SetLevel(level)
		}
	})
}

// checkTLS loads the TLS files the way Dragonboat will and checks what
// Dragonboat would only report as failed handshakes, peer by peer: that the
// certificate is this node's, verifies against the CA for both directions,
// and names the host peers dial.
func (cfg *Config) checkTLS() error {
	f := cfg.TLS
	srv, err := pki.ServerTLS(f.CAFile, f.CertFile, f.KeyFile)
	if err != nil {
		return fmt.Errorf("raft TLS: %w", err)
	}
	if _, err := pki.ClientTLS(f.CAFile, f.CertFile, f.KeyFile); err != nil {
		return fmt.Errorf("raft TLS: %w", err)
	}
	leaf := srv.Certificates[0].Leaf
	issue := fmt.Sprintf("issue one with `blixard cert issue --ca DIR --node %d --host HOST`", cfg.NodeID)
	id, err := pki.IdentityOf(leaf)
	if err != nil {
		return fmt.Errorf("raft TLS: %s: %w; %s", f.CertFile, err, issue)
	}
	if id.Kind != pki.KindNode || id.NodeID != cfg.NodeID {
		return fmt.Errorf("raft TLS: %s is the certificate of %s %s, not of node %d: %s", f.CertFile, id.Kind, id.Name, cfg.NodeID, issue)
	}
	host, _, _ := net.SplitHostPort(cfg.RaftAddr) // validate checked the form
	if err := leaf.VerifyHostname(host); err != nil {
		return fmt.Errorf("raft TLS: %s does not name %s, the host of the raft address %s, which peers check: issue it again with --host %s: %w",
			f.CertFile, host, cfg.RaftAddr, host, err)
	}
	return nil
}

// Start creates the NodeHost, starts this replica of the shard and returns
// once the shard has a leader. If ctx ends first (a majority of Members is
// not running or not reachable), the NodeHost is closed and an error returned.
func Start(ctx context.Context, cfg Config) (*Store, error) {
	s, err := open(cfg)
	if err != nil {
		return nil, err
	}
	if err := s.waitLeader(ctx, cfg.Members); err != nil {
		s.Close()
		hint := fmt.Sprintf("are a majority of %v running and reachable?", memberIDs(cfg.Members))
		if cfg.TLS.enabled() {
			hint += " Do their certificates come from the CA in " + cfg.TLS.CAFile + "?"
		}
		return nil, fmt.Errorf("raftstore: start node %d: no leader for shard %d (%s): %w", cfg.NodeID, ShardID, hint, err)
	}
	if err := s.settle(ctx, cfg); err != nil { // a joining voter promotes itself
		s.Close()
		return nil, err
	}
	id, _ := s.Leader()
	s.log.Info("replica started", "raftAddr", cfg.RaftAddr, "leader", id, "join", cfg.Join, "mutualTLS", cfg.TLS.enabled())
	return s, nil
}

// open creates the NodeHost and starts this replica without waiting for a
// leader; tests use it for replicas that must never find one.
func open(cfg Config) (*Store, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("raftstore: start node %d: %w", cfg.NodeID, err)
	}
	if cfg.TLS.enabled() {
		if err := cfg.checkTLS(); err != nil {
			return nil, fmt.Errorf("raftstore: start node %d: %w", cfg.NodeID, err)
		}
	}
	cfg = cfg.withTimingDefaults()
	if cfg.SnapshotEntries == 0 {
		cfg.SnapshotEntries = DefaultSnapshotEntries
	}
	logdb, err := logDBConfig(cfg.LogDB)
	if err != nil {
		return nil, fmt.Errorf("raftstore: start node %d: %w", cfg.NodeID, err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "raftstore", "node", cfg.NodeID)
	quietDragonboat(cfg.QuietRaftLog)
	// Lost or damaged Raft data stops the node here, before any peer can
	// reach the replica (ErrDataLost).
	guard, err := checkData(cfg, logdb, log)
	if err != nil {
		return nil, err
	}

	leaders, applied := newLeaderWatch(log), &applyWatch{at: time.Now()}
	nhc := config.NodeHostConfig{
		NodeHostDir:       cfg.DataDir,
		RTTMillisecond:    cfg.RTTMillisecond,
		RaftAddress:       cfg.RaftAddr,
		Expert:            config.ExpertConfig{LogDB: logdb},
		MutualTLS:         cfg.TLS.enabled(),
		CAFile:            cfg.TLS.CAFile,
		CertFile:          cfg.TLS.CertFile,
		KeyFile:           cfg.TLS.KeyFile,
		RaftEventListener: leaders,
	}
	nh, err := dragonboat.NewNodeHost(nhc)
	if err != nil {
		return nil, fmt.Errorf("raftstore: start node %d: create NodeHost in %s on %s (is the address free and the directory writable?): %w",
			cfg.NodeID, cfg.DataDir, cfg.RaftAddr, err)
	}
	rc := config.Config{
		ReplicaID:          cfg.NodeID,
		ShardID:            ShardID,
		CheckQuorum:        true,
		PreVote:            true,
		HeartbeatRTT:       cfg.HeartbeatRTT,
		ElectionRTT:        cfg.ElectionRTT,
		SnapshotEntries:    cfg.SnapshotEntries,
		CompactionOverhead: cfg.SnapshotEntries / 2,
		IsNonVoting:        guard.nonVoting(cfg),
	}
	members := make(map[uint64]dragonboat.Target, len(cfg.Members))
	for id, addr := range cfg.Members {
		members[id] = addr
	}
	onApply := func(index uint64, quiet bool) {
		// The shell's clock, not the state machine's: Apply stays pure.
		applied.set(index, time.Now())
		if cfg.OnApply != nil && !quiet {
			cfg.OnApply(index)
		}
	}
	if err := nh.StartReplica(members, cfg.Join, stateMachineFactory(onApply), rc); err != nil {
		nh.Close()
		hint := ""
		if errors.Is(err, dragonboat.ErrInvalidShardSettings) {
			hint = " (the data dir was bootstrapped with other members or join setting; start with the original settings or an empty data dir)"
		}
		if errors.Is(err, dragonboat.ErrShardNotBootstrapped) {
			hint = " (the data dir is empty: give the initial Members, or Join after AddReplica)"
		}
		return nil, fmt.Errorf("raftstore: start node %d: start replica of shard %d%s: %w", cfg.NodeID, ShardID, hint, err)
	}
	if err := guard.started(); err != nil {
		nh.Close()
		return nil, err
	}
	return &Store{nh: nh, nodeID: cfg.NodeID, log: log, attemptTimeout: cfg.attemptTimeout(),
		electionTimeout: cfg.ElectionTimeout(), leaders: leaders, applied: applied, members: guard}, nil
}

// waitLeader returns once the shard has a leader, warning every
// quorumWarnEvery while it has none.
func (s *Store) waitLeader(ctx context.Context, members map[uint64]string) error {
	t := time.NewTicker(leaderPoll)
	defer t.Stop()
	start := time.Now()
	warned := start
	for {
		if _, ok := s.Leader(); ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case now := <-t.C:
			if now.Sub(warned) >= quorumWarnEvery {
				warned = now
				s.log.Warn("waiting for a Raft quorum to start: no leader yet; the node serves nothing until one is elected",
					"waited", now.Sub(start).Round(time.Second), "hint", s.quorumHint(members))
			}
		}
	}
}

// quorumHint says what to check when the shard has no leader: whether a
// majority of its voters (members, or the replica's own view of the
// shard when nil) run and reach each other.
func (s *Store) quorumHint(members map[uint64]string) string {
	if len(members) == 0 {
		for _, si := range s.nh.GetNodeHostInfo(dragonboat.NodeHostInfoOption{SkipLogInfo: true}).ShardInfoList {
			if si.ShardID == ShardID {
				members = si.Replicas
			}
		}
	}
	if len(members) == 0 {
		return "are a majority of the voters running and reachable on their Raft addresses?"
	}
	return fmt.Sprintf("are a majority of the voters %v running and reachable on their Raft addresses?", memberIDs(members))
}

// LeaderSince returns the shard's leader as this replica knows it (0:
// none, an election is under way or no quorum is reachable) and since when
// that has been so. It never blocks on Raft.
func (s *Store) LeaderSince() (leader uint64, since time.Time) { return s.leaders.get() }

// LeaderChanges counts the times this replica learned of a leader in a new
// term since it started (the first leader included). It never blocks on
// Raft.
func (s *Store) LeaderChanges() uint64 {
	s.leaders.mu.Lock()
	defer s.leaders.mu.Unlock()
	return s.leaders.changes
}

// LastLogIndex returns the index of the last entry in this replica's log
// (ok false when the replica is not running): entries it received and
// saved, committed or about to be. Dragonboat does not expose the commit
// index it knows, so LastLogIndex minus the applied index is the local
// measure of how far the state machine is behind: entries this replica has
// but has not applied yet (on the leader, also those still being
// committed). A follower cut off from the leader has no entries to lag
// behind with; compare applied indexes across nodes for that.
func (s *Store) LastLogIndex() (index uint64, ok bool) {
	lr, err := s.nh.GetLogReader(ShardID)
	if err != nil {
		return 0, false
	}
	_, last := lr.GetRange()
	return last, true
}

// LastApplied returns the index of the last entry this replica applied and
// when (the replica's start, before it applied any). It never blocks on
// Raft.
func (s *Store) LastApplied() (index uint64, at time.Time) { return s.applied.get() }

// WatchQuorum logs a warning every few seconds while this replica knows
// no leader for longer than an election timeout (an election that does
// not end: no majority of the voters runs or reaches the others), so that
// the log says why nothing is committed. It returns when ctx ends.
func (s *Store) WatchQuorum(ctx context.Context) error {
	t := time.NewTicker(quorumWarnEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			if leader, since := s.LeaderSince(); leader == 0 && now.Sub(since) > s.electionTimeout {
				s.log.Warn("waiting for a Raft quorum: no leader known; nothing can be committed, reads answer from this replica and are marked stale",
					"for", now.Sub(since).Round(100*time.Millisecond), "hint", s.quorumHint(nil))
			}
		}
	}
}

// transient reports whether a Dragonboat error may go away on retry (no
// leader yet, leader change, dropped or timed-out request, busy).
func transient(err error) bool {
	return errors.Is(err, dragonboat.ErrTimeout) ||
		errors.Is(err, dragonboat.ErrSystemBusy) ||
		errors.Is(err, dragonboat.ErrShardNotReady) ||
		errors.Is(err, dragonboat.ErrShardNotInitialized) ||
		errors.Is(err, dragonboat.ErrShardNotFound) ||
		errors.Is(err, dragonboat.ErrAborted)
}

// retry runs attempt with a per-attempt timeout until it succeeds, fails
// with a non-transient error, or ctx ends. It returns whether some attempt
// timed out (the request may have been applied anyway).
//
// With onElection, an attempt still pending when a leader is elected in a
// new term is given up and made again at once: Dragonboat forwards a
// follower's proposal or read to the leader it knows and never tells when
// that leader is gone, so the attempt would otherwise wait out its whole
// timeout (three election timeouts) after the new leader is there — long
// enough for a node's heartbeats to miss its lease. The given-up attempt
// counts as timed out: it may still be committed. And while the replica
// knows no leader, a failed attempt is made again once one is elected
// rather than every retryBackoff: Dragonboat drops each request at once
// then, and logs a warning for every one.
func (s *Store) retry(ctx context.Context, what string, onElection bool, attempt func(ctx context.Context) error) (timedOut bool, err error) {
	for n := 1; ; n++ {
		// Taken before the attempt, so that no election is missed.
		elected := s.leaders.electedC()
		actx, cancel := context.WithTimeout(ctx, s.attemptTimeout)
		var superseded <-chan struct{}
		if onElection {
			superseded = cancelOnElection(actx, cancel, elected)
		}
		err = attempt(actx)
		cancel()
		if err == nil {
			return timedOut, nil
		}
		if errors.Is(err, dragonboat.ErrTimeout) {
			timedOut = true
		}
		if closed(superseded) && ctx.Err() == nil {
			timedOut = true
			s.log.Debug("a leader was elected while the request was pending; retrying at once", "op", what, "attempt", n, "err", err)
			continue
		}
		if ctx.Err() != nil {
			return timedOut, fmt.Errorf("%s: gave up after %d attempts: %w (last error: %w)", what, n, ctx.Err(), err)
		}
		if errors.Is(err, dragonboat.ErrTimeoutTooSmall) || errors.Is(err, dragonboat.ErrInvalidDeadline) {
			// Less than a tick was left of ctx (an attempt's own timeout is
			// seconds): ctx is ending, and that is what the caller should see.
			return timedOut, fmt.Errorf("%s: gave up after %d attempts: %w (last error: %w)", what, n, context.DeadlineExceeded, err)
		}
		if !transient(err) {
			return timedOut, fmt.Errorf("%s: %w", what, err)
		}
		s.log.Debug("retrying", "op", what, "attempt", n, "err", err)
		wait, until := retryBackoff, (<-chan struct{})(nil)
		if leader, _ := s.leaders.get(); onElection && leader == 0 {
			wait, until = s.attemptTimeout, elected
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return timedOut, fmt.Errorf("%s: gave up after %d attempts: %w (last error: %w)", what, n, ctx.Err(), err)
		case <-until:
			t.Stop()
		case <-t.C:
		}
	}
}

// cancelOnElection cancels actx (through cancel) when elected closes (a
// leader is elected in a new term) before actx ends; the returned channel
// is closed when it did. The goroutine it starts ends with actx.
func cancelOnElection(actx context.Context, cancel context.CancelFunc, elected <-chan struct{}) <-chan struct{} {
	superseded := make(chan struct{})
	go func() {
		select {
		case <-elected:
			close(superseded)
			cancel()
		case <-actx.Done():
		}
	}()
	return superseded
}

// closed reports whether ch (nil: never) is closed.
func closed(ch <-chan struct{}) bool {
	if ch == nil {
		return false
	}
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// Propose replicates cmd (its V set to the oldest version that carries it:
// [replicated.CommandVersion] for all but a liveness-only heartbeat, so
// replicas of an older build still read them) and returns the
// state machine's [replicated.Result]. Any replica may propose; followers forward to the
// leader. Transient failures (no leader, leader change, timeouts) are retried
// with a per-attempt timeout until ctx ends. The error is non-nil only when
// the command could not be encoded or its outcome is unknown; a rejection is
// a [replicated.Result] with a non-OK Code (see [replicated.Result.Err]).
//
// A retried attempt may apply a command twice. That is harmless for every
// command but CommitPlan, whose second copy is refused as a stale parent;
// Propose recognises that case (the current revision is this very plan) and
// returns the revision as OK.
func (s *Store) Propose(ctx context.Context, cmd replicated.Command) (replicated.Result, error) {
	cmd.V = 0 // EncodeCommand fills in the oldest version that carries cmd
	data, err := replicated.EncodeCommand(cmd)
	if err != nil {
		return replicated.Result{}, fmt.Errorf("raftstore: propose: %w", err)
	}
	what := fmt.Sprintf("raftstore: propose %s", cmd.Type)
	session := s.nh.GetNoOPSession(ShardID)
	var res replicated.Result
	timedOut, err := s.retry(ctx, what, true, func(actx context.Context) error {
		r, err := s.nh.SyncPropose(actx, session, data)
		if err != nil {
			return err
		}
		res = decodeResult(r)
		return nil
	})
	if err != nil {
		return replicated.Result{}, err
	}
	if timedOut && res.Code == replicated.ResultStaleParent && cmd.CommitPlan != nil {
		if st, rerr := s.Read(ctx); rerr == nil && st.IsCurrentPlan(cmd.CommitPlan) {
			return replicated.Result{Code: replicated.ResultOK, Revision: st.Revision.ID,
				Message: fmt.Sprintf("revision %d committed (confirmed after a retried proposal)", st.Revision.ID)}, nil
		}
	}
	return res, nil
}

// ProposeOK proposes cmd until it is applied or rejected, retrying while
// its outcome is unknown (no quorum yet, a leader change) until ctx ends.
// Each attempt stamps cmd.At with now(). A rejection is returned as its
// [replicated.RejectedError] (see [replicated.Result.Err]); retrying it could
// not help. It is for commands that must land before a node goes on, such
// as RegisterNode at start.
func (s *Store) ProposeOK(ctx context.Context, cmd replicated.Command, now func() time.Time) (replicated.Result, error) {
	for {
		cmd.At = now()
		res, err := s.Propose(ctx, cmd)
		if err == nil {
			return res, res.Err()
		}
		s.log.Debug("proposal outcome unknown; retrying", "type", cmd.Type, "err", err)
		t := time.NewTimer(unknownOutcomeBackoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return replicated.Result{}, err
		case <-t.C:
		}
	}
}

// Read returns a linearizable copy of the state: it reflects every command
// whose Propose returned before Read was called.
func (s *Store) Read(ctx context.Context) (*replicated.State, error) {
	var st *replicated.State
	_, err := s.retry(ctx, "raftstore: read", true, func(actx context.Context) error {
		v, err := s.nh.SyncRead(actx, ShardID, nil)
		if err != nil {
			return err
		}
		var ok bool
		if st, ok = v.(*replicated.State); !ok {
			return fmt.Errorf("state machine returned %T, not *State", v)
		}
		return nil
	})
	return st, err
}

// LocalRead returns a copy of the local replica's state without contacting
// the leader; it may lag behind. Agents read their assignments this way.
func (s *Store) LocalRead() (*replicated.State, error) {
	v, err := s.nh.StaleRead(ShardID, nil)
	if err != nil {
		return nil, fmt.Errorf("raftstore: local read on node %d: %w", s.nodeID, err)
	}
	st, ok := v.(*replicated.State)
	if !ok {
		return nil, fmt.Errorf("raftstore: local read on node %d: state machine returned %T, not *State", s.nodeID, v)
	}
	return st, nil
}

// AddReplica adds a replica with the given id and raft address to the
// shard as a learner, whether it is to vote or not (nonVoting): the new
// node decides when it starts, with Config.Join, and promotes itself to
// voter unless Config.NonVoting (see members.go). A taken or removed id
// and a member's address are refused ([RefusedError]). Call it on any
// replica; transient failures are retried.
func (s *Store) AddReplica(ctx context.Context, id uint64, raftAddr string, nonVoting bool) error {
	return s.addLearner(ctx, id, raftAddr)
}

// Leader returns the replica ID of the shard's leader as known locally.
func (s *Store) Leader() (id uint64, ok bool) {
	id, _, valid, err := s.nh.GetLeaderID(ShardID)
	if err != nil || !valid || id == 0 {
		return 0, false
	}
	return id, true
}

// IsLeader reports whether this replica is the leader, as known locally.
func (s *Store) IsLeader() bool {
	id, ok := s.Leader()
	return ok && id == s.nodeID
}

// NodeID is this replica's ID.
func (s *Store) NodeID() uint64 { return s.nodeID }

// Close stops the replica and the NodeHost. It is safe to call more than once.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.recordApplied()
		s.nh.Close()
		s.log.Info("replica stopped")
	})
	return nil
}
