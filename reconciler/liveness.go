package reconciler

import (
	"sort"
	"time"

	"github.com/blixard/blixard/replicated"
)

// Heartbeats is the leader's record of when (by its own clock) it last saw
// each node's heartbeat sequence advance. Liveness is judged by the sequence
// moving, never by comparing clocks across nodes. A new leader starts with
// an empty record, so every node gets a full timeout of grace before it can
// be judged: the new leader has no heartbeat history yet.
type Heartbeats map[uint64]HeartbeatSeen

// HeartbeatSeen is one node's entry in [Heartbeats].
type HeartbeatSeen struct {
	Seq uint64
	At  time.Time
	// Down: the node was down when last observed. A node made ready again
	// (`blixard node ready`) gets a full timeout of grace from then on,
	// not the silence of its time down.
	Down bool
}

// ObserveHeartbeats returns the record updated with the nodes' current
// sequences: a node seen for the first time, whose sequence changed, or
// that was down and is not any more, is stamped now. Nodes no longer registered are dropped. prev is not modified.
func ObserveHeartbeats(prev Heartbeats, nodes map[uint64]*replicated.Node, now time.Time) Heartbeats {
	next := make(Heartbeats, len(nodes))
	for id, n := range nodes {
		down := n.State == replicated.NodeDown
		p, seen := prev[id]
		readied := seen && p.Down && !down
		if seen && p.Seq == n.LastHeartbeatSeq && !readied {
			p.Down = down
			next[id] = p
			continue
		}
		next[id] = HeartbeatSeen{Seq: n.LastHeartbeatSeq, At: now, Down: down}
	}
	return next
}

// StaleNodes lists, by id, the nodes not already down whose heartbeat has
// not advanced for longer than timeout.
func StaleNodes(hb Heartbeats, nodes map[uint64]*replicated.Node, now time.Time, timeout time.Duration) []uint64 {
	var out []uint64
	for id, n := range nodes {
		if n.State == replicated.NodeDown {
			continue
		}
		if seen, ok := hb[id]; ok && now.Sub(seen.At) > timeout {
			out = append(out, id)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// DiscountBlindness returns the record with a leader's blindness taken out
// of it: when this observation (now) follows the previous one
// (lastObserved) by more than expected — the leader was frozen while it kept
// its term, or could not read a quorum — the whole gap is added to every
// node's last-seen time, because the silence the leader saw then was its
// own, not the nodes'. Passes run every Resync; a gap beyond expected (a
// few of them) is blindness. Being slower to judge is the safe side. prev
// is not modified.
func DiscountBlindness(prev Heartbeats, lastObserved, now time.Time, expected time.Duration) Heartbeats {
	gap := now.Sub(lastObserved)
	if lastObserved.IsZero() || gap <= expected {
		return prev
	}
	next := make(Heartbeats, len(prev))
	for id, seen := range prev {
		seen.At = seen.At.Add(gap)
		next[id] = seen
	}
	return next
}
