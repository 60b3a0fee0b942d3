package volumes

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// DefaultFenceExpiry bounds a fencing blocklist entry. A fenced node that
// comes back gets a new Ceph client (new addresses) when it is made ready
// ([Manager.Reconnect]) or restarts, and the leader then lifts the entries
// ([Fencer.Unfence]); the expiry only bounds entries nobody lifts (a node
// that never comes back).
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
// [Fencer.Unfence] lifts the entries again once the node is back with new
// clients. It compiles without Ceph support, where fencing a node with
// addresses fails with [ErrNotBuilt].
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

// Unfence lifts the blocklist entries of addrs, the addresses the leader
// fenced for node nodeID (replicated Node.Fenced). Call it only once no
// client with those addresses is alive: a librados client that is still
// open works again when its entry is lifted. The leader knows that when
// the node, ready again, reports new client addresses and none of these
// ([Manager.Reconnect] shuts the old clients down before it reports new
// ones; a restarted agent has new ones anyway). Entries already gone
// (lifted before, expired) are not an error, so a retry is safe.
func (f *Fencer) Unfence(ctx context.Context, nodeID uint64, addrs []string) error {
	if len(addrs) == 0 {
		return nil
	}
	conn, err := f.m.Conn(ctx)
	if err != nil {
		return fmt.Errorf("connecting to Ceph to lift the fence of node %d: %w", nodeID, err)
	}
	if err := conn.Unblocklist(ctx, addrs); err != nil {
		return fmt.Errorf("lifting the blocklist entries of node %d's old Ceph addresses %v: %w", nodeID, addrs, err)
	}
	return nil
}
