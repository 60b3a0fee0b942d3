package sim

import (
	"errors"
	"fmt"

	"github.com/blixard/blixard/replicated"
)

// The simulated Raft log. It is not Raft: it is the contract Blixard relies
// on, with the failures Raft lets through.
//
//   - One ordered log of committed entries. An entry commits when the
//     leader holds it and the leader reaches a majority (itself included) of
//     nodes whose blixard process runs and is not frozen.
//   - A leader is a node with a majority on its side of the partition. A
//     leader that loses its majority steps down at once (CheckQuorum; the
//     real one waits ~1 s, during which nothing commits anyway). A frozen
//     leader keeps leading while no other node can win an election (PreVote:
//     the rest cannot form a majority without it); when it thaws with a
//     majority it still leads, in the same term. Elections take 1–2 s. The
//     winner holds every committed entry (Raft's election restriction; here
//     it catches up at once).
//   - Every node applies the committed entries in order to its own
//     replicated.State with the real Apply, when they reach it: a delay per
//     entry and node while it is connected to the leader, nothing while it
//     is cut off, frozen or down, and everything it missed once it is back.
//     So local reads are stale, by milliseconds or by minutes.
//   - A proposal reaches the leader when the proposer is connected to it;
//     it can be lost on the way (the attempt times out and is retried), or
//     commit while its answer is lost (retried too: applied twice, as
//     raftstore's doc warns). Without a reachable leader it is retried
//     until the proposer's deadline, which also ends an attempt in flight;
//     an answer after the deadline is an unknown outcome (the entry may
//     have committed). Its answer comes with the entries up
//     to it: Dragonboat's SyncPropose returns the result of the proposer's
//     own state machine, so its replica has applied them (the agent relies
//     on it: a heartbeat that renews the lease shows every plan before it).
//
// The replicas persist their applied state across process restarts (the
// Raft log is on disk), and no snapshots are modelled.

// entry is one committed log entry.
type entry struct {
	index uint64
	cmd   replicated.Command
	at    int64 // commit time
	from  uint64
}

var errTimeout = errors.New("proposal timed out: outcome unknown")

// raftUp: the node's replica takes part in Raft.
func (n *node) raftUp() bool { return n.procUp && !n.frozen }

// reach: a and b can exchange Raft messages.
func (w *world) reach(a, b *node) bool {
	return a.raftUp() && b.raftUp() && a.group == b.group
}

// quorum: n reaches a majority of the voters, itself included.
func (w *world) quorum(n *node) bool {
	c := 0
	for _, m := range w.nodes {
		if w.reach(n, m) {
			c++
		}
	}
	return 2*c > len(w.nodes)
}

// available: the leader can commit now.
func (w *world) available() bool {
	return w.leader != nil && w.leader.raftUp() && w.quorum(w.leader)
}

// topologyChanged re-evaluates leadership and replication after any change
// of partitions or of a node's process (crash, boot, freeze, thaw).
func (w *world) topologyChanged() {
	w.chk.tick()
	if l := w.leader; l != nil {
		switch {
		case !l.procUp:
			w.setLeader(nil, "leader's process died")
		case l.frozen:
			// Keeps leading until another node wins an election.
		case !w.quorum(l):
			w.setLeader(nil, "leader lost its majority (CheckQuorum)")
		}
	}
	if (w.leader == nil || !w.leader.raftUp()) && !w.electing {
		w.electing = true
		w.after(w.rnd(electionMin, electionMax), w.elect)
	}
	w.catchUpAll()
	w.chk.healthChanged()
}

// elect makes a node with a majority the leader, if there is one.
func (w *world) elect() {
	w.electing = false
	if w.available() {
		return
	}
	var cands []*node
	for _, n := range w.nodes {
		if n.raftUp() && w.quorum(n) {
			cands = append(cands, n)
		}
	}
	if len(cands) == 0 {
		return // tried again at the next topology change
	}
	w.setLeader(cands[w.pick(len(cands))], "elected")
	w.catchUpAll()
	w.chk.healthChanged()
}

func (w *world) setLeader(n *node, why string) {
	w.chk.tick()
	w.leader = n
	w.term++
	w.termStart = w.now
	if n == nil {
		w.tracef("no leader (%s)", why)
		return
	}
	w.tracef("node %d leads, term %d (%s)", n.id, w.term, why)
	if w.term > 1 {
		w.cover("leader changed")
	}
	w.applyUpTo(n, len(w.log))
}

// catchUpAll sends every node connected to the leader what it misses.
func (w *world) catchUpAll() {
	if !w.available() {
		return
	}
	for _, m := range w.nodes {
		if m != w.leader && m.applied < len(w.log) && w.reach(w.leader, m) {
			w.deliver(m, len(w.log))
		}
	}
}

// deliver schedules node m to apply the log up to idx, after the
// replication delay, if it is still connected to the leader then.
func (w *world) deliver(m *node, idx int) {
	d := w.rnd(1, 10)
	if m.slowUntil > w.now {
		d += w.rnd(200, 3000)
	}
	w.after(d, func() {
		if w.leader != nil && w.reach(w.leader, m) {
			w.applyUpTo(m, idx)
		}
	})
}

// applyUpTo applies the log on n up to idx (1-based) with the real Apply.
// It returns the result of the last entry applied.
func (w *world) applyUpTo(n *node, idx int) replicated.Result {
	var res replicated.Result
	applied := false
	for n.applied < idx {
		e := &w.log[n.applied]
		res = n.st.Apply(e.index, e.cmd)
		n.applied++
		applied = true
		w.chk.applied(n, e, res)
	}
	if applied && n.agent != nil {
		n.agent.notify() // the replica's OnApply wakes the agent
	}
	return res
}

// commit appends cmd to the log; the leader applies it at once and the
// others when it reaches them.
func (w *world) commit(cmd replicated.Command, from uint64) replicated.Result {
	e := entry{index: uint64(len(w.log) + 1), cmd: cmd, at: w.now, from: from}
	w.log = append(w.log, e)
	w.mix(uint64(cmd.Type[0]), from, e.index)
	res := w.applyUpTo(w.leader, len(w.log))
	for _, m := range w.nodes {
		if m != w.leader && w.reach(w.leader, m) {
			w.deliver(m, len(w.log))
		}
	}
	return res
}

// proposal is one Propose call: attempts until it commits and its answer
// reaches the proposer, or until deadline.
type proposal struct {
	from     *node
	cmd      replicated.Command
	deadline int64
	cb       func(replicated.Result, error)
	timedOut bool // an earlier attempt timed out: this one may be a duplicate
}

// propose sends cmd from node n; cb runs on n's process (not at all when it
// died). Commands round-trip through their JSON encoding first, as on the
// wire.
func (w *world) propose(n *node, cmd replicated.Command, ttl int64, cb func(replicated.Result, error)) {
	cmd.V = replicated.CommandVersion
	data, err := replicated.EncodeCommand(cmd)
	if err != nil {
		w.chk.failf("encoding %s: %v", cmd.Type, err)
		return
	}
	if cmd, err = replicated.DecodeCommand(data); err != nil {
		w.chk.failf("decoding %s: %v", cmd.Type, err)
		return
	}
	p := &proposal{from: n, cmd: cmd, deadline: w.now + ttl, cb: cb}
	w.attempt(p, n.epoch)
}

func (w *world) attempt(p *proposal, epoch int) {
	n := p.from
	retry := func(d int64, timedOut bool) {
		// An attempt ends at the caller's deadline too (raftstore's
		// attempts run under its context).
		w.afterOn(n, min(d, p.deadline-w.now), func() {
			p.timedOut = p.timedOut || timedOut
			w.attempt(p, epoch)
		})
	}
	if n.epoch != epoch {
		return
	}
	if w.now >= p.deadline {
		w.cover("a proposal timed out")
		p.cb(replicated.Result{}, fmt.Errorf("%s: %w", p.cmd.Type, errTimeout))
		return
	}
	if !w.available() || !w.reach(n, w.leader) {
		retry(noLeaderRetry, false)
		return
	}
	if w.chance(w.dropRate()) {
		retry(attemptTimeout, true) // lost on the way: the attempt times out
		return
	}
	term := w.term
	d := w.netDelay(n)
	w.after(d, func() {
		if w.term != term || !w.available() {
			retry(attemptTimeout-d, true) // the leader changed: dropped
			return
		}
		res := w.commit(p.cmd, n.id)
		if w.chance(w.dropRate()) {
			w.cover("a proposal committed, its answer lost (applied twice)")
			retry(attemptTimeout-d, true) // committed, but the answer is lost
			return
		}
		// raftstore.Propose: a retried CommitPlan refused as a stale parent
		// because its first copy was applied is this very plan.
		if p.timedOut && res.Code == replicated.ResultStaleParent && p.cmd.CommitPlan != nil &&
			w.leader.st.IsCurrentPlan(p.cmd.CommitPlan) {
			res = replicated.Result{Code: replicated.ResultOK, Revision: w.leader.st.Revision.ID,
				Message: "confirmed after a retried proposal"}
			w.cover("a retried CommitPlan confirmed")
		}
		// SyncPropose answers with the proposer's own state machine's
		// result: its replica has applied the log up to the entry.
		idx := len(w.log)
		w.afterOn(n, w.netDelay(n), func() {
			w.applyUpTo(n, idx)
			if w.now >= p.deadline {
				// Committed, but the caller gave up: its outcome is unknown.
				w.cover("a proposal timed out")
				p.cb(replicated.Result{}, fmt.Errorf("%s: %w", p.cmd.Type, errTimeout))
				return
			}
			p.cb(res, nil)
		})
	})
}

// netDelay is one message's delay from or to n.
func (w *world) netDelay(n *node) int64 {
	d := w.rnd(1, 15)
	if n.slowUntil > w.now {
		d += w.rnd(50, 500)
	}
	return d
}

// dropRate is the chance that a message is lost now.
func (w *world) dropRate() float64 {
	if w.lossUntil > w.now {
		return 0.3
	}
	return 0.01
}
