package node

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"time"

	"github.com/blixard/blixard/hostnet"
)

// The network's fast lane: a start waits for its instance's tap and
// network.env (WaitReady), which a new instance gets at once rather than
// after a whole pass.

// WaitReady returns once vm's STATE/NAME/network.env is written and its
// tap set up: the agent's Prepare, so that a runner never starts before
// its network identity is in place. A new instance takes the fast lane
// (startLane); otherwise, or when that cannot do it, it asks for a pass
// and waits for one that does.
func (n *network) WaitReady(ctx context.Context, vm string) error {
	for {
		n.readyMu.Lock()
		ok, done := n.envReady[vm], n.passDone
		n.readyMu.Unlock()
		if ok {
			return nil
		}
		if n.startLane(ctx, vm) {
			return nil
		}
		n.Notify()
		select {
		case <-ctx.Done():
			return fmt.Errorf("network identity of %s: %s not written yet (see the node's log for the network's state): %w",
				vm, filepath.Join(n.cfg.StateDir, vm, NetworkEnvFile), ctx.Err())
		case <-done:
		}
	}
}

// startLane is the fast lane of a start: vm, new on this node, is made
// ready by addNewLocked at once instead of waiting for a whole pass. It
// reports false when it did not make vm ready; a pass then does. It never
// waits for a running pass (which holds hostMu through its Sync, and
// publishes the new instances it reads before that): when vm's tap is in
// place it writes vm's identity beside that pass (sideLane); otherwise
// WaitReady waits for the pass's publication and tries again.
func (n *network) startLane(ctx context.Context, vm string) bool {
	if !n.hostMu.TryLock() {
		return n.sideLane(vm)
	}
	defer n.hostMu.Unlock()
	p, ok := n.lanePlan(vm)
	if !ok {
		return false
	}
	if _, ok := p.env[vm]; !ok {
		return false // not local in this replica's state (yet): a pass tells
	}
	n.addNewLocked(ctx, p, vm)
	n.envMu.Lock()
	defer n.envMu.Unlock()
	_, ready := n.written[vm]
	return ready
}

// sideLane makes vm ready while a pass or another start holds hostMu, when
// that needs nothing of the host: vm's tap is one the last successful Sync
// made as vm wants it (a spare), and the Sync under way, if any, keeps it.
// Then only vm's identity is written. It reports false otherwise.
func (n *network) sideLane(vm string) bool {
	start := time.Now()
	p, ok := n.lanePlan(vm)
	if !ok {
		return false
	}
	e, ok := p.env[vm]
	if !ok {
		return false
	}
	i := slices.IndexFunc(p.want.LocalTaps, func(t hostnet.Tap) bool { return t.Name == e.tap })
	if i < 0 {
		return false
	}
	tap := p.want.LocalTaps[i]
	n.envMu.Lock()
	defer n.envMu.Unlock()
	if _, ok := n.written[vm]; ok {
		return true
	}
	if !sideLaneTrusts(tap, n.syncedTaps, n.syncing, n.keeps) {
		return false
	}
	_, err := n.writeEnv(map[string]instanceEnv{vm: e}, false)
	if err != nil {
		n.log.Debug("side lane: identity not written; the pass writes it", "instance", vm, "err", err)
		return false
	}
	n.publishReady()
	n.log.Debug("network identity ready (side lane, beside a pass)", "instance", vm, "took", time.Since(start), "syncing", n.syncing)
	return true
}

// sideLaneTrusts reports whether a start may use tap without holding
// hostMu: the last successful Sync made it exactly so (synced), and a pass
// that is syncing has planned (keeps is not nil) to keep it as it is.
func sideLaneTrusts(tap hostnet.Tap, synced map[string]hostnet.Tap, syncing bool, keeps map[string]hostnet.Tap) bool {
	if !sameTap(synced[tap.Name], tap) {
		return false
	}
	return !syncing || (keeps != nil && sameTap(keeps[tap.Name], tap))
}

// lanePlan is the network's plan for the replica's state as a lane sees
// it: with the last pass's inputs (laneIn) and vm's own tap flags. False
// before a Sync succeeded (no bridge, or its MTU unknown) or without a
// plan.
func (n *network) lanePlan(vm string) (netPlan, bool) {
	n.envMu.Lock()
	ready := n.synced && n.mtu != 0 && n.cfg.StateDir != "" && n.laneIn != nil
	var in netInputs
	if ready {
		in = *n.laneIn
	}
	n.envMu.Unlock()
	if !ready {
		return netPlan{}, false
	}
	s, err := n.read()
	if err != nil {
		return netPlan{}, false
	}
	if a, ok := s.Assignments[vm]; ok && a.Node == n.cfg.NodeID && wantsMultiQueue(n.cfg.StateDir, vm, a) {
		in.multiQueue = maps.Clone(in.multiQueue)
		in.multiQueue[vm] = true
	}
	return planNetwork(s, n.set, in)
}

// addNewLocked is the fast lane for the instances new on this node (no
// network.env written yet; only for instance only when it is not empty):
// their taps are created when missing, asking the kernel about those taps
// alone, and their identities are written and published before a Sync
// observes and converges the whole namespace, which then finds those taps
// in place. Only after a Sync succeeded (the bridge is there with its MTU
// known, the host does not conflict with the cluster network); a failure
// leaves it all to the next Sync. It returns how long it took (0 when it
// had nothing to do). n.hostMu must be held.
func (n *network) addNewLocked(ctx context.Context, p netPlan, only string) time.Duration {
	if !n.synced || n.mtu == 0 || n.cfg.StateDir == "" {
		return 0
	}
	start := time.Now()
	env := map[string]instanceEnv{}
	taps := map[string]bool{}
	n.envMu.Lock()
	for name, e := range p.env {
		if _, ok := n.written[name]; !ok && (only == "" || name == only) {
			env[name], taps[e.tap] = e, true
		}
	}
	n.envMu.Unlock()
	if len(env) == 0 {
		return 0
	}
	want, synced := laneTaps(p.want.LocalTaps, taps, n.syncedTaps)
	ops, err := n.host.AddMissingTaps(ctx, p.host, n.mtu, want)
	tapsTook := time.Since(start)
	if err != nil {
		n.log.Debug("fast lane for new instances: no taps; the full Sync makes them", "instances", slices.Sorted(maps.Keys(env)), "err", err)
		return 0
	}
	n.envMu.Lock()
	_, err = n.writeEnv(env, false)
	n.publishReady() // those written, even when another one failed
	n.envMu.Unlock()
	took := time.Since(start)
	if err != nil {
		n.log.Debug("fast lane for new instances: not every identity written; the pass writes them", "err", err)
		return took
	}
	// tap_ops is 0 when the taps were made ahead (spares).
	n.log.Debug("network identities ready (fast lane)", "instances", slices.Sorted(maps.Keys(env)), "took", took, "taps", tapsTook,
		"taps_synced", synced, "tap_ops", len(ops))
	return took
}

// laneTaps splits the local taps named in lane (the fast lane's new
// instances') into those to ask the kernel about (ask) and how many the
// last successful Sync made exactly as wanted (synced: spares).
func laneTaps(local []hostnet.Tap, lane map[string]bool, synced map[string]hostnet.Tap) (ask []hostnet.Tap, trusted int) {
	for _, t := range local {
		switch {
		case !lane[t.Name]:
		case sameTap(synced[t.Name], t):
			trusted++
		default:
			ask = append(ask, t)
		}
	}
	return ask, trusted
}

// sameTap: a and b are the same tap with the same settings.
func sameTap(a, b hostnet.Tap) bool {
	return a.Name == b.Name && slices.Equal(a.MAC, b.MAC) && a.Owner == b.Owner && a.Group == b.Group && a.MultiQueue == b.MultiQueue
}
