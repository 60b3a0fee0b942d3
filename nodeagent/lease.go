package nodeagent

import (
	"fmt"
	"time"
)

// startLease starts the lease at this node's last committed heartbeat in
// the local replica (the node's own clock when it sent it), or now when
// the node has sent none.
func (a *Agent) startLease() {
	if a.o.Lease <= 0 {
		return
	}
	from := a.o.Now()
	st, err := a.o.State.LocalRead()
	if err != nil {
		// Unknown: the safe side is a lease that has run out; the first
		// committed heartbeat renews it.
		a.log.Warn("cannot read this node's last heartbeat; fenced until a heartbeat commits", "err", err)
		from = time.Time{}
	} else if n, ok := st.Nodes[a.o.NodeID]; ok && n.LastHeartbeatSeq > 0 {
		from = n.LastHeartbeatAt
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.renewed = from
}

// leaseState says why the node is fenced at now because its lease ran out
// ("" while it holds).
func (a *Agent) leaseState(now time.Time) string {
	if a.o.Lease <= 0 {
		return ""
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	silent := now.Sub(a.renewed)
	a.fenced = silent > a.o.Lease
	if !a.fenced {
		return ""
	}
	return FenceReason(silent, a.o.Lease)
}

// FenceReason is the status message of every VM of a fenced node: no
// heartbeat committed for silent, longer than the lease.
func FenceReason(silent, lease time.Duration) string {
	s := "yet" // the lease never started: the local replica was unreadable
	if silent < 100*365*24*time.Hour {
		s = "for " + silent.Round(100*time.Millisecond).String()
	}
	return fmt.Sprintf("fenced: no heartbeat committed %s (lease %s): this node cannot reach a quorum; VMs stay stopped until it can",
		s, lease)
}

// untilExpiry is how long until the lease runs out (an hour while fenced:
// a committed heartbeat calls Notify instead).
func (a *Agent) untilExpiry() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fenced {
		return time.Hour
	}
	// Just past the expiry: at it the lease still holds.
	return max(a.renewed.Add(a.o.Lease).Sub(a.o.Now()), 0) + time.Millisecond
}

// holdStartsUntil holds starts until heartbeat number seq has committed;
// 0: until the next heartbeat made has, which carries the statuses set so
// far.
func (a *Agent) holdStartsUntil(seq uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if seq == 0 {
		seq = a.seq + 1
	}
	a.holdStarts = seq
}

// startsHeld: starts wait for a heartbeat to commit (see pass).
func (a *Agent) startsHeld() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.holdStarts != 0
}

// MarkedDownReason is the status message of every VM of a node fenced
// because the leader marked it down.
func MarkedDownReason(node uint64) string {
	return fmt.Sprintf("fenced: this node is marked down (the leader heard no heartbeat of it for the node timeout) "+
		"and its VMs may run elsewhere; once it is healthy, `blixard node ready %d` lets it run VMs again", node)
}
