package nodeagent

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/blixard/blixard/replicated"
)

// becameReady reports whether a VM's status turned running and healthy
// from old (nil: none), the report gateways wait for (pure).
func becameReady(old *replicated.VMStatus, now replicated.VMStatus) bool {
	ready := func(s replicated.VMStatus) bool {
		return s.Phase == replicated.PhaseRunning && s.Health == replicated.Healthy
	}
	return ready(now) && (old == nil || !ready(*old) || old.Generation != now.Generation)
}

// A heartbeat that reports a newly ready instance goes early: requests
// queued at the gateways wait for it (a cold start's first byte), and the
// regular gap after the last heartbeat (up to a second) would hold it back.
// readyGap lets readinesses of one moment share it; at most readyBurst
// such early heartbeats go in any second, so that a burst of hundreds of
// VMs becoming ready still costs one proposal per regular gap.
const (
	readyGap   = 10 * time.Millisecond
	readyBurst = 4
)

// readyWait is how long a heartbeat reporting a newly ready instance waits
// from now (pure): readyGap after the last heartbeat when fewer than
// readyBurst early ones went in the second before now (early: their send
// times), else minGap after it. early reports whether it goes early.
func readyWait(now, last time.Time, early []time.Time, minGap time.Duration) (wait time.Duration, isEarly bool) {
	recent := 0
	for _, t := range early {
		if now.Sub(t) < time.Second {
			recent++
		}
	}
	gap, isEarly := minGap, false
	if recent < readyBurst && readyGap < minGap {
		gap, isEarly = readyGap, true
	}
	return max(last.Add(gap).Sub(now), 0), isEarly
}

func (a *Agent) signalReadiedLocked() {
	select {
	case a.readied <- struct{}{}:
	default:
	}
}

func (a *Agent) signalChangedLocked() {
	select {
	case a.changed <- struct{}{}:
	default:
	}
}

func (a *Agent) snapshotLocked() []replicated.VMStatus {
	out := make([]replicated.VMStatus, 0, len(a.statuses))
	for _, s := range a.statuses {
		out = append(out, s.VMStatus)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].VM < out[j].VM })
	return out
}

// report proposes heartbeats: ~100ms after a change, and Options.Heartbeat
// after the last one, without waiting for earlier ones to be answered (see
// [Agent.Start]). The period restarts after every heartbeat so that a tick
// that came due while a change was debounced does not send a second one
// right after it: that would cost a Raft proposal for nothing.
//
// While statuses keep changing (hundreds of VMs starting at once), changes
// are coalesced: a heartbeat follows the previous one by at least half the
// period (100ms to 1s). Every heartbeat carries all of the node's
// statuses, so a burst costs one Raft proposal per half period instead of
// one per 100ms, and leaves Raft its time. A heartbeat that reports a newly
// ready instance goes early (readyWait: up to readyBurst a second beyond
// that rate), since requests wait for it.
//
// The cap on heartbeats in flight: one sent more than the timeout ago is
// given up, so sending once a period never has more than ⌈timeout/period⌉
// out; the cap holds back only the extra heartbeats of changes while Raft
// answers none (no quorum: the lease runs out whatever is sent), and keeps
// a node that lost its quorum from piling up proposals that would all
// commit at once when it returns.
func (a *Agent) report(ctx context.Context) {
	const debounce = 100 * time.Millisecond
	minGap := min(max(a.o.Heartbeat/2, debounce), time.Second)
	timeout := a.heartbeatTimeout()
	inFlight := make(chan struct{}, maxInFlight(timeout, a.o.Heartbeat))
	var wg sync.WaitGroup
	defer wg.Wait() // every heartbeat in flight ends with ctx
	t := time.NewTicker(a.o.Heartbeat)
	defer t.Stop()
	var last time.Time    // when the last heartbeat was sent
	var early []time.Time // when the early ones of the last second were (readyWait)
	// The first heartbeat goes at once: a restarted agent's lease runs
	// from its predecessor's last committed heartbeat, and may be close to
	// its end.
	for first := true; ; first = false {
		isEarly := false
		if !first {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-a.changed:
				d := time.NewTimer(max(debounce, time.Until(last.Add(minGap))))
				for waiting := true; waiting; {
					select {
					case <-ctx.Done():
						d.Stop()
						return
					case <-d.C:
						waiting = false
					case <-a.readied:
						// An instance is ready: requests queued at the
						// gateways wait for this very report, and what
						// the debounce would add comes later anyway.
						var wait time.Duration
						wait, isEarly = readyWait(time.Now(), last, early, minGap)
						d.Reset(wait)
					}
				}
			}
		}
		select {
		case inFlight <- struct{}{}:
		default:
			a.log.Debug("every heartbeat in flight is unanswered; the next waits for one of them", "inFlight", cap(inFlight))
			select {
			case <-ctx.Done():
				return
			case inFlight <- struct{}{}:
			}
		}
		// Made after the waits, it carries every change signalled until
		// now: drop their signal rather than send the same statuses again.
		select {
		case <-a.changed:
		default:
		}
		select {
		case <-a.readied:
		default:
		}
		hb := a.nextHeartbeat()
		wg.Go(func() {
			defer func() { <-inFlight }()
			a.sendHeartbeat(ctx, hb, timeout)
		})
		last = time.Now()
		if isEarly {
			early = append(slices.DeleteFunc(early, func(t time.Time) bool { return last.Sub(t) >= time.Second }), last)
		}
		t.Reset(a.o.Heartbeat)
	}
}

// heartbeatTimeout is how long one heartbeat may take to commit: the lease
// (a later commit renews nothing), or 10s without one.
func (a *Agent) heartbeatTimeout() time.Duration {
	if a.o.Lease > 0 {
		return a.o.Lease
	}
	return 10 * time.Second
}

// maxInFlight is how many heartbeats may be unanswered at once:
// max(2, ⌈timeout/period⌉), see report.
func maxInFlight(timeout, period time.Duration) int {
	return max(2, int((timeout+period-1)/period))
}

// heartbeat is one NodeHeartbeat to propose.
type heartbeat struct {
	cmd replicated.Command
	seq uint64 // its place in this process's order
}

// heartbeatDelta is what the agent knows to send liveness-only heartbeats
// (guarded by Agent.mu). A run is a sequence of full heartbeats whose
// statuses are equal but for the time each was observed; once a result
// shows the state holds one of the run's reports, the heartbeats carry no
// statuses but "unchanged since" that report, until a status changes.
// Apply checks the claim against the state (replicated.NodeHeartbeat
// .Unchanged), so a wrong belief here costs one heartbeat, never a stale
// status.
type heartbeatDelta struct {
	statuses []replicated.VMStatus // the run's statuses, ObservedAt cleared
	since    uint64                // seq of the run's first full heartbeat (0: none yet)
	full     uint64                // seq of its last full heartbeat
	base     uint64                // the run's report the state holds (0: not known)
}

// nextDelta decides for the heartbeat numbered seq with statuses snap:
// the report it says the statuses are unchanged since (0: send them in
// full), updating the run (pure but for d).
func (d *heartbeatDelta) next(seq uint64, snap []replicated.VMStatus) uint64 {
	cmp := withoutTimes(snap)
	if d.since != 0 && slices.Equal(cmp, d.statuses) {
		if d.base != 0 {
			return d.base
		}
		d.full = seq
		return 0
	}
	*d = heartbeatDelta{statuses: cmp, since: seq, full: seq}
	return 0
}

// answered takes the result of a committed heartbeat: res.StatusSeq says
// whose statuses the state holds. It reports whether the heartbeat's own
// statuses are what the state holds (false only for a liveness-only one
// whose base was not there).
func (d *heartbeatDelta) answered(hb *replicated.NodeHeartbeat, res replicated.Result) bool {
	inRun := d.since != 0 && res.StatusSeq >= d.since && res.StatusSeq <= d.full
	switch {
	case inRun:
		d.base = max(d.base, res.StatusSeq)
	case hb.Unchanged != 0 && hb.Unchanged == d.base:
		// The base is gone (a newer full report of the run or another
		// order took its place): full statuses until a result shows one.
		d.base = 0
	}
	return hb.Unchanged == 0 || res.StatusSeq == hb.Unchanged
}

// refused takes a heartbeat the state machine refused. A liveness-only
// one is refused by a replica of a build that predates them (version 2 is
// undecodable there: during a rolling upgrade such a replica may lead),
// so the agent goes back to full heartbeats, which every build applies,
// until a result shows a report held again — rather than sending
// refused heartbeats until its lease runs out.
func (d *heartbeatDelta) refused(hb *replicated.NodeHeartbeat) {
	if hb.Unchanged != 0 {
		d.base = 0
	}
}

// withoutTimes is snap with ObservedAt cleared: the agent stamps every
// status at every pass, which is no change worth reporting. (Raft keeps
// the time of the last full report that carried the status; the node's
// LastHeartbeatAt says when it was last heard.)
func withoutTimes(snap []replicated.VMStatus) []replicated.VMStatus {
	out := slices.Clone(snap)
	for i := range out {
		out[i].ObservedAt = time.Time{}
	}
	return out
}

// nextHeartbeat makes the next heartbeat: every status (or, while they are
// unchanged since a report the state holds, none: see heartbeatDelta),
// numbered after every heartbeat made before it, and the node's Ceph
// client addresses (its volumes' clients come and go, and fencing must
// cover them).
func (a *Agent) nextHeartbeat() heartbeat {
	a.mu.Lock()
	a.seq++
	seq := a.seq
	markSent(a.statuses, seq)
	snap := a.snapshotLocked()
	unchanged := a.delta.next(seq, snap)
	a.mu.Unlock()
	c := &replicated.NodeHeartbeat{ID: a.o.NodeID, Epoch: a.epoch, Seq: seq, Statuses: snap, CephAddrs: a.cephAddrs()}
	v := replicated.CommandVersion
	if unchanged != 0 {
		c.Statuses, c.Unchanged, v = nil, unchanged, replicated.HeartbeatDeltaVersion
	}
	return heartbeat{seq: seq, cmd: replicated.Command{V: v, Type: replicated.CmdNodeHeartbeat, At: a.o.Now(), NodeHeartbeat: c}}
}

// sendHeartbeat proposes hb; once it committed, it renews the lease to its
// send time (unless a later one did already) and stopped VMs that are no
// longer assigned here are forgotten. A heartbeat whose outcome is unknown
// (an error: timed out, cancelled) changes nothing.
func (a *Agent) sendHeartbeat(ctx context.Context, hb heartbeat, timeout time.Duration) {
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := a.o.Proposer.Propose(pctx, hb.cmd)
	refused := err == nil && !res.OK()
	if refused {
		err = fmt.Errorf("refused: %s: %s", res.Code, res.Message)
	}
	a.mu.Lock()
	if refused {
		a.delta.refused(hb.cmd.NodeHeartbeat)
	}
	if err != nil {
		a.unanswered++
		first := a.unanswered == 1
		a.mu.Unlock()
		switch {
		case ctx.Err() != nil: // shutting down
		case first:
			a.log.Warn("heartbeat not committed; the next ones go on (this warning is not repeated until one commits)",
				"seq", hb.seq, "err", err)
		default:
			a.log.Debug("heartbeat not committed", "seq", hb.seq, "err", err)
		}
		return
	}
	if a.unanswered > 0 {
		a.log.Info("a heartbeat committed again", "seq", hb.seq, "notCommitted", a.unanswered)
		a.unanswered = 0
	}
	// The lease counts from the send: the leader counts its node timeout
	// from a later moment, when it sees this heartbeat applied. A later
	// heartbeat may have been answered first: never move it backwards.
	if hb.cmd.At.After(a.renewed) {
		a.renewed = hb.cmd.At
	}
	fenced := a.fenced
	held := false
	// A liveness-only heartbeat whose base was not in the state proves
	// nothing about the statuses Raft holds.
	if a.delta.answered(hb.cmd.NodeHeartbeat, res) {
		forgetCommitted(a.statuses, hb.seq)
		// Raft shows this heartbeat's statuses or newer ones: the VMs this node
		// starts after a fence say so there (see pass).
		held = a.holdStarts != 0 && hb.seq >= a.holdStarts
		if held {
			a.holdStarts = 0
		}
	}
	a.mu.Unlock()
	if fenced || held {
		a.Notify() // the lease is back, or starts may go: at once, not at the next resync
	}
}

// markSent records heartbeat seq as the first to carry the statuses of VMs
// gone from this node that say stopped and no heartbeat carried yet.
func markSent(statuses map[string]*vmStatus, seq uint64) {
	for _, s := range statuses {
		if s.forgettable() && s.stoppedIn == 0 {
			s.stoppedIn = seq
		}
	}
}

// forgetCommitted drops the statuses of VMs gone from this node that a
// committed heartbeat, numbered seq, shows stopped. Heartbeats commit in any
// order and Apply keeps the statuses of the newest one only, so a commit
// says what Raft holds only together with the numbering: every heartbeat
// from a status's stoppedIn on carries it stopped, and once heartbeat seq
// committed, the node's report in Raft is seq or newer. So when stoppedIn <=
// seq, Raft shows the VM stopped whichever heartbeat it kept; one numbered
// before stoppedIn (an older snapshot, maybe of it running) proves nothing.
func forgetCommitted(statuses map[string]*vmStatus, seq uint64) {
	for name, s := range statuses {
		if s.forgettable() && s.stoppedIn != 0 && s.stoppedIn <= seq {
			delete(statuses, name)
		}
	}
}
