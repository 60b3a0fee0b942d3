package volumes

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// DefaultFenceExpiry bounds a fencing blocklist entry. A fenced node's agent
// restarts with a new Ceph client (new addresses) long before it runs out,
// when the node comes back; the entry only has to outlive the old client.
const DefaultFenceExpiry = 24 * time.Hour

// Fencer cuts a silent node (partitioned, frozen, its agent dead) off the
// Ceph cluster by blocklisting its client addresses, so it cannot write to
// the images its VMs had once they run elsewhere: the one its agent
// registered and those its heartbeats reported ([Manager.ClientAddrs]: its
// volume daemons, which outlive the agent, and its kernel mappings). It
// uses the fencing node's own client ([Manager.Conn]).
//
// Policy: a node that registered no addresses has no Ceph client that could
// write, so there is nothing to fence and that is not an error; otherwise
// every address is blocklisted for Expiry, or the fencing fails as a whole.
// It compiles without Ceph support, where fencing a node with addresses
// fails with [ErrNotBuilt].
type Fencer struct {
	m *Manager
	// expiry is how long a blocklist entry lasts (> 0).
	expiry time.Duration
}

// NewFencer returns a fencer that blocklists through m's client for expiry
// (DefaultFenceExpiry when <= 0). It connects on first use.
func NewFencer(m *Manager, expiry time.Duration) *Fencer {
	if expiry <= 0 {
		expiry = DefaultFenceExpiry
	}
	return &Fencer{m: m, expiry: expiry}
}

// Fence blocklists addrs, the Ceph client addresses of node nodeID
// (replicated Node.CephAddrs), and returns the addresses it fenced (none
// when addrs is empty).
// An error means the node is not fenced: its VMs must not run elsewhere.
func (f *Fencer) Fence(ctx context.Context, nodeID uint64, addrs []string) ([]string, error) {
	if len(addrs) == 0 {
		return nil, nil
	}
	conn, err := f.m.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("connecting to Ceph to fence node %d: %w", nodeID, err)
	}
	if err := conn.Blocklist(ctx, addrs, f.expiry); err != nil {
		return nil, fmt.Errorf("blocklisting node %d's Ceph addresses %v: %w", nodeID, addrs, err)
	}
	return slices.Clone(addrs), nil
}
