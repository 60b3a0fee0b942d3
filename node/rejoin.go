package node

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/volumes"
)

// rejoiner gives a fenced node a new Ceph client once an operator readied
// it (`blixard node ready`): the leader lifts the old blocklist entries
// only after the node's heartbeats report none of the fenced addresses
// (reconciler.NodesToUnfence), and only a new client has new ones.
type rejoiner struct {
	id    uint64
	vols  *volumes.Manager
	every time.Duration // how often to try again while the fence stays
	log   *slog.Logger

	running atomic.Bool // one Reconnect at a time
	// Owned by the goroutine calling observe.
	wasDown bool
	lastTry time.Time
}

// shouldReconnect decides, from this node's entry in the local replica,
// whether to reconnect now: at once when the node stops being down (it was
// readied), and again every `every` while it is not down and still has
// fenced addresses (a Reconnect failed, or the readying was missed while
// the agent was restarting). Reconnect itself does nothing unless one of
// the node's addresses is on the blocklist.
func shouldReconnect(n *replicated.Node, wasDown bool, lastTry, now time.Time, every time.Duration) bool {
	if n == nil || n.State == replicated.NodeDown || len(n.Fenced) == 0 {
		return false
	}
	return wasDown || lastTry.IsZero() || now.Sub(lastTry) >= every
}

// observe is called with every applied state.
func (r *rejoiner) observe(ctx context.Context, s *replicated.State) {
	n := s.Nodes[r.id]
	now := time.Now()
	down := n != nil && n.State == replicated.NodeDown
	try := shouldReconnect(n, r.wasDown, r.lastTry, now, r.every)
	r.wasDown = down
	if !try || !r.running.CompareAndSwap(false, true) {
		return
	}
	r.lastTry = now
	go func() {
		defer r.running.Store(false)
		res, err := r.vols.Reconnect(ctx)
		switch {
		case err != nil:
			r.log.Warn("this node was readied but its Ceph client could not be replaced; trying again", "err", err, "every", r.every)
		case len(res.Addrs) > 0:
			r.log.Info("fenced Ceph client replaced; the leader lifts the old blocklist entries once a heartbeat reports the new ones",
				"fenced", res.Fenced, "new", res.Addrs, "stopped attachments", len(res.Stopped))
		}
	}()
}
