package sim

import (
	"fmt"
	"slices"

	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/replicated"
)

// node is one host: its blixard process (Raft replica, agent, reconciler
// loop), its runners and its disk.
type node struct {
	id       uint64
	capacity replicated.Resources
	labels   map[string]string

	// The replica. Its applied state survives process restarts (the Raft
	// log is on disk).
	st      *replicated.State
	applied int

	// The blixard process.
	procUp     bool
	epoch      int      // process incarnation: events of a dead one are dropped
	frozen     bool     // SIGSTOP: nothing of the process runs
	frozenTerm int      // the term it led when frozen (-1: it did not lead)
	deferred   []func() // what came due while frozen
	registered bool     // RegisterNode committed: the agent and the loop run
	agent      *agent
	loop       *loop

	group     int   // partition side
	slowUntil int64 // its messages and replication are slow until then

	host host
}

// host is what outlives the blixard process: runners (until the host dies)
// and the disk (STATE/NAME/current, the nix store).
type host struct {
	units   map[string]*unit
	current map[string]string // STATE/NAME/current
	store   map[string]bool   // valid out paths in the nix store
	// backendUp: the ProcessBackend runs (the agent started it); crashed
	// runners are restarted only while it does.
	backendUp bool
}

// unit is one VM's runner as the host and the ProcessBackend see it.
type unit struct {
	// Ground truth: a runner process exists and runs booted.
	alive     bool
	booted    string
	spawnedAt int64
	inc       int // runner incarnation, for crash events

	// The ProcessBackend's procUnit.
	h           bool // it holds the runner (Status: Active)
	restarting  bool
	nextRestart int64
	restarts    int
	backoff     int64
	startedAt   int64
	result      string
	since       int64
}

func (w *world) unit(n *node, name string) *unit {
	u := n.host.units[name]
	if u == nil {
		u = &unit{}
		n.host.units[name] = u
	}
	return u
}

// status is ProcessBackend.Status.
func (w *world) status(n *node, name string) nodeagent.UnitStatus {
	u := n.host.units[name]
	if u == nil {
		return nodeagent.UnitStatus{}
	}
	s := nodeagent.UnitStatus{Active: u.h, Restarting: u.restarting, Restarts: u.restarts, Result: u.result,
		Since: at(u.since), ExitCode: -1}
	if s.Active || s.Restarting {
		s.Booted = u.booted
	}
	if s.Restarting {
		s.NextRestart = at(u.nextRestart)
	}
	return s
}

// list is ProcessBackend.List: units with a runner or restarting.
func (w *world) list(n *node) []string {
	var out []string
	for name, u := range n.host.units {
		if u.h || u.restarting {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// spawn starts the runner of STATE/name/current (ProcessBackend.Start).
func (w *world) spawn(n *node, name string) error {
	u := w.unit(n, name)
	if u.h {
		return nil
	}
	cur := n.host.current[name]
	if cur == "" {
		u.result, u.since = "start failed: current does not exist", w.now
		return fmt.Errorf("start %s: STATE/%s/current does not exist", name, name)
	}
	u.alive, u.h, u.booted, u.spawnedAt = true, true, cur, w.now
	u.restarting, u.startedAt, u.since = false, w.now, w.now
	u.inc++
	w.tracef("node %d: runner %s started on %s", n.id, name, short(cur))
	w.chk.runnersChanged(name)
	if w.repo.crashy[cur] {
		inc := u.inc
		w.after(w.rnd(1000, 3000), func() {
			if u.alive && u.inc == inc {
				w.crashRunner(n, name, "crashy runner exited with code 1")
			}
		})
	}
	return nil
}

// stopUnit stops name's runner (ProcessBackend.Stop, once it returned).
func (w *world) stopUnit(n *node, name string) {
	u := w.unit(n, name)
	u.restarting = false
	if u.alive {
		w.tracef("node %d: runner %s stopped", n.id, name)
	}
	wasAlive := u.alive
	u.alive, u.h, u.booted = false, false, ""
	u.restarts, u.backoff, u.since = 0, 0, w.now
	if wasAlive {
		w.chk.runnersChanged(name)
	}
}

// killUnit is ProcessBackend.Kill once it returned: the runner is gone at
// once, no restart is pending, nothing is booted. It reports whether a
// runner was running.
func (w *world) killUnit(n *node, name string) bool {
	u := n.host.units[name]
	if u == nil {
		return false
	}
	wasAlive := u.alive
	if wasAlive {
		w.tracef("node %d: runner %s killed (fenced)", n.id, name)
	}
	u.alive, u.h, u.booted, u.restarting = false, false, "", false
	u.restarts, u.backoff, u.since, u.result = 0, 0, w.now, "killed by signal: killed"
	if wasAlive {
		w.chk.runnersChanged(name)
	}
	return wasAlive
}

// crashRunner makes a runner exit on its own. The ProcessBackend notices
// (when it runs) and restarts it after its backoff.
func (w *world) crashRunner(n *node, name, why string) {
	u := n.host.units[name]
	if u == nil || !u.alive {
		return
	}
	u.alive = false
	w.tracef("node %d: runner %s crashed (%s)", n.id, name, why)
	w.chk.runnersChanged(name)
	if !n.host.backendUp {
		return // nobody watches it: the next agent does not adopt it
	}
	inc := u.inc
	w.afterOn(n, 0, func() {
		if u.inc != inc || !u.h {
			return
		}
		u.h = false
		u.result, u.since = "exited with code 1", w.now
		if u.startedAt != 0 && w.now-u.startedAt >= resetBackoffAfter {
			u.restarts, u.backoff = 0, 0
		}
		if u.backoff == 0 {
			u.backoff = restartBackoff
		} else {
			u.backoff = min(2*u.backoff, maxRestartBackoff)
		}
		u.restarts++
		if u.restarts >= 3 {
			w.cover("a crash loop (3 restarts)")
		}
		u.restarting = true
		u.nextRestart = w.now + u.backoff
		w.scheduleAutoRestart(n, name, u)
		if n.agent != nil {
			n.agent.notify() // a backend event
		}
	})
}

// scheduleAutoRestart is the ProcessBackend's restart after a crash.
func (w *world) scheduleAutoRestart(n *node, name string, u *unit) {
	inc := u.inc
	w.afterOn(n, u.nextRestart-w.now, func() {
		if u.inc != inc || !u.restarting || u.h {
			return
		}
		if err := w.spawn(n, name); err != nil {
			u.startedAt = w.now
			u.backoff = min(2*u.backoff, maxRestartBackoff)
			u.restarts++
			u.nextRestart = w.now + u.backoff
			w.scheduleAutoRestart(n, name, u)
		}
		if n.agent != nil {
			n.agent.notify()
		}
	})
}

// adopt is ProcessBackend.Run's start: runners that still run are adopted
// (their pid files name live processes); everything else is forgotten.
func (w *world) adopt(n *node) {
	for name, u := range n.host.units {
		if !u.alive {
			delete(n.host.units, name)
			continue
		}
		w.cover("a restarted agent adopted a runner")
		u.h, u.restarting, u.restarts, u.backoff = true, false, 0, 0
		u.startedAt, u.since, u.result = w.now, w.now, ""
	}
	n.host.backendUp = true
}

// boot starts n's blixard process: the replica rejoins, RegisterNode is
// proposed until it lands, then the agent and the reconciler loop start.
func (w *world) boot(n *node) {
	if n.procUp {
		return
	}
	n.procUp, n.frozen, n.registered = true, false, false
	n.epoch++
	n.deferred = nil
	w.tracef("node %d: blixard starts", n.id)
	w.topologyChanged()
	w.register(n)
}

func (w *world) register(n *node) {
	cmd := replicated.Command{Type: replicated.CmdRegisterNode, At: at(w.now), RegisterNode: &replicated.RegisterNode{
		ID: n.id, RaftAddr: fmt.Sprintf("10.0.0.%d:7001", n.id), APIAddr: fmt.Sprintf("10.0.0.%d:7070", n.id),
		Capacity: n.capacity, Labels: n.labels}}
	// ProposeOK: retried until it lands.
	w.propose(n, cmd, commandTimeout, func(res replicated.Result, err error) {
		if err != nil {
			w.afterOn(n, 200, func() { w.register(n) })
			return
		}
		if !res.OK() {
			w.chk.failf("node %d: RegisterNode refused: %s", n.id, res.Message)
			return
		}
		n.registered = true
		w.tracef("node %d: registered; agent and reconciler start", n.id)
		w.adopt(n)
		n.agent = newAgent(w, n)
		n.loop = newLoop(w, n)
		n.agent.start()
		n.loop.start()
		w.chk.healthChanged()
	})
}

// stopProcess ends n's blixard process: a crash or restart (runners keep
// running) or, with killRunners, the whole host dying.
func (w *world) stopProcess(n *node, why string, killRunners bool) {
	if !n.procUp {
		return
	}
	w.tracef("node %d: %s", n.id, why)
	w.chk.blixardStopped(n)
	n.procUp, n.frozen, n.registered = false, false, false
	n.epoch++
	n.deferred = nil
	n.agent, n.loop = nil, nil
	n.host.backendUp = false
	if killRunners {
		for _, name := range sortedKeys(n.host.units) {
			u := n.host.units[name]
			wasAlive := u.alive
			delete(n.host.units, name)
			if wasAlive {
				w.chk.runnersChanged(name)
			}
		}
	} else {
		for _, u := range n.host.units {
			u.h = u.alive
		}
	}
	w.topologyChanged()
}

func (w *world) freeze(n *node) {
	if !n.procUp || n.frozen {
		return
	}
	n.frozen = true
	w.chk.blixardStopped(n)
	n.frozenTerm = -1
	if w.leader == n {
		n.frozenTerm = w.term
	}
	w.tracef("node %d: blixard frozen (SIGSTOP)", n.id)
	w.topologyChanged()
}

func (w *world) thaw(n *node) {
	if !n.procUp || !n.frozen {
		return
	}
	n.frozen = false
	w.tracef("node %d: blixard thawed (SIGCONT)", n.id)
	if w.leader == n && w.term == n.frozenTerm {
		w.cover("a frozen leader thawed in the same term")
	}
	d := n.deferred
	n.deferred = nil
	epoch := n.epoch
	for _, fn := range d {
		w.after(0, func() {
			if n.epoch == epoch && n.procUp && !n.frozen {
				fn()
			} else if n.epoch == epoch && n.frozen {
				n.deferred = append(n.deferred, fn)
			}
		})
	}
	w.topologyChanged()
}

// short is a store path without its hash, for the trace.
func short(out string) string {
	if len(out) > len("/nix/store/")+33 {
		return out[len("/nix/store/")+33:]
	}
	return out
}
