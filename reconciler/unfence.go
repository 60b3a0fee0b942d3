package reconciler

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/blixard/blixard/replicated"
)

// Unfencer lifts a fence the Fencer took (Ceph: it removes the OSD
// blocklist entries of a node's old client addresses), so that a node made
// ready again does not leave them behind. The leader calls it only for the
// nodes [NodesToUnfence] names, whose fenced clients are gone. An error
// leaves the node's Fenced list as it is and the next pass tries again, so
// lifting an entry that is already gone must not be an error.
type Unfencer interface {
	Unfence(ctx context.Context, node *replicated.Node, addrs []string) error
}

// Unfence is one node whose fence the leader lifts now: Addrs are its
// fenced addresses (replicated Node.Fenced).
type Unfence struct {
	Node  uint64
	Addrs []string
}

// NodesToUnfence lists, by node id, the fences to lift now. A node's fence
// is lifted once no client with a fenced address can be alive:
//
//   - the node is not down (an operator made it ready, or cordoned or
//     drained it, after it came back);
//   - it has fenced addresses;
//   - its last report (ReportedCephAddrs: the heartbeat's addresses) names
//     at least one client and none of the fenced ones. The node's volumes
//     manager reports a new client only after it stopped every fenced one
//     (volumes.Manager.Reconnect), and a restarted agent has a new client
//     anyway; a node that still reports a fenced address (not reconnected
//     yet, an attachment that would not stop) keeps its whole fence, since
//     a librados client that is still open works again once its entry is
//     lifted.
//
// It reads only nodes; every leader decides the same from the same state,
// and the UnfenceNode a lift is recorded with removes the node from the
// answer.
func NodesToUnfence(nodes map[uint64]*replicated.Node) []Unfence {
	var out []Unfence
	for id, n := range nodes {
		if n.State == replicated.NodeDown || len(n.Fenced) == 0 || len(n.ReportedCephAddrs) == 0 {
			continue
		}
		if slices.ContainsFunc(n.ReportedCephAddrs, func(a string) bool { return slices.Contains(n.Fenced, a) }) {
			continue
		}
		out = append(out, Unfence{Node: id, Addrs: slices.Clone(n.Fenced)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

// unfenceNodes lifts the fences NodesToUnfence names in state and records
// each with UnfenceNode, so that no leader lifts it again or forgets it.
// It returns the errors: a fence that could not be lifted is a transient
// error (the next pass tries again).
func (r *Reconciler) unfenceNodes(ctx context.Context, state *replicated.State, now time.Time) []error {
	if r.opts.Unfencer == nil {
		return nil
	}
	var errs []error
	for _, u := range NodesToUnfence(state.Nodes) {
		node := state.Nodes[u.Node]
		if err := r.opts.Unfencer.Unfence(ctx, node, u.Addrs); err != nil {
			errs = append(errs, fmt.Errorf("node %d is ready again with new Ceph clients, but lifting the fence of its old ones %v failed (retrying): %w", u.Node, u.Addrs, err))
			continue
		}
		res, err := r.opts.Store.Propose(ctx, replicated.Command{Type: replicated.CmdUnfenceNode, At: now,
			UnfenceNode: &replicated.UnfenceNode{ID: u.Node, Addrs: u.Addrs}})
		switch {
		case err != nil:
			// Lifted but not recorded: the next pass lifts again, which is
			// harmless, and records it then.
			errs = append(errs, fmt.Errorf("recording that node %d's fence was lifted: %w", u.Node, err))
			continue
		case res.Code == replicated.ResultStaleParent:
			// Down again since the read: its new fence is recorded, and
			// what was lifted were clients that are gone.
			r.opts.Logger.Info("node went down again while its old fence was lifted", "node", u.Node, "detail", res.Message)
			continue
		case !res.OK():
			errs = append(errs, TerminalError(fmt.Errorf("recording that node %d's fence was lifted: %w", u.Node, res.Err())))
			continue
		}
		r.opts.Logger.Info("fence lifted: the node's old Ceph clients are gone", "node", u.Node, "addrs", u.Addrs, "clients", node.ReportedCephAddrs)
	}
	return errs
}
