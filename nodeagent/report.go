package nodeagent

import (
	"context"
	"fmt"
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
// one per 100ms, and leaves Raft its time.
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
	var last time.Time // when the last heartbeat was sent
	// The first heartbeat goes at once: a restarted agent's lease runs
	// from its predecessor's last committed heartbeat, and may be close to
	// its end.
	for first := true; ; first = false {
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
						// the debounce would add comes later anyway. The
						// gap still bounds the rate in a burst.
						d.Reset(max(time.Until(last.Add(minGap)), 0))
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

// nextHeartbeat makes the next heartbeat: every status, numbered after
// every heartbeat made before it, and the node's Ceph client addresses
// (its volumes' clients come and go, and fencing must cover them).
func (a *Agent) nextHeartbeat() heartbeat {
	a.mu.Lock()
	a.seq++
	seq := a.seq
	markSent(a.statuses, seq)
	snap := a.snapshotLocked()
	a.mu.Unlock()
	return heartbeat{seq: seq, cmd: replicated.Command{
		V:    replicated.CommandVersion,
		Type: replicated.CmdNodeHeartbeat,
		At:   a.o.Now(),
		NodeHeartbeat: &replicated.NodeHeartbeat{ID: a.o.NodeID, Epoch: a.epoch, Seq: seq, Statuses: snap,
			CephAddrs: a.cephAddrs()},
	}}
}

// sendHeartbeat proposes hb; once it committed, it renews the lease to its
// send time (unless a later one did already) and stopped VMs that are no
// longer assigned here are forgotten. A heartbeat whose outcome is unknown
// (an error: timed out, cancelled) changes nothing.
func (a *Agent) sendHeartbeat(ctx context.Context, hb heartbeat, timeout time.Duration) {
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := a.o.Proposer.Propose(pctx, hb.cmd)
	if err == nil && !res.OK() {
		err = fmt.Errorf("refused: %s: %s", res.Code, res.Message)
	}
	a.mu.Lock()
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
	forgetCommitted(a.statuses, hb.seq)
	// Raft shows this heartbeat's statuses or newer ones: the VMs this node
	// starts after a fence say so there (see pass).
	held := a.holdStarts != 0 && hb.seq >= a.holdStarts
	if held {
		a.holdStarts = 0
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
