package sim

import (
	"slices"
	"strings"
	"testing"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// Hand-written scenarios: the same simulator, with a scripted workload and
// scripted faults instead of random ones. Each runs to convergence after
// its heal with every invariant checked; the script adds its own checks at
// chosen times (t.Errorf from inside the run: it is synchronous).

// atTime runs fn at virtual time ms.
func (w *world) atTime(ms int64, fn func()) { w.after(ms-w.now, fn) }

// twoVMs is a spec of web (2 replicas) and db, at runner version v.
func twoVMs(v int) *spec.Cluster {
	return &spec.Cluster{Name: "sim", VMs: map[string]spec.VM{
		"web": {Runner: runner("web", v), VCPU: 1, MemMiB: 512, Replicas: 2, Autostart: true},
		"db":  {Runner: runner("db", v), VCPU: 2, MemMiB: 1024, Replicas: 1, Autostart: true},
	}}
}

// spread is web with 2 replicas on distinct nodes (anti-affinity) and db.
func spread(v int) *spec.Cluster {
	s := twoVMs(v)
	web := s.VMs["web"]
	web.Placement.AntiAffinity = []string{"web"}
	s.VMs["web"] = web
	return s
}

func scenario(t *testing.T, cfg Config) Report {
	t.Helper()
	cfg.KeepTrace = true
	r := run(cfg)
	if r.Failure != "" {
		t.Fatalf("%s\n%s", r.Failure, strings.Join(r.All, "\n"))
	}
	if testing.Verbose() {
		for _, l := range r.All {
			t.Log(l)
		}
	}
	t.Logf("converged %s after heal; %d double runs, the longest %s (blixard frozen or not running), %s (isolated), %s (handoff)",
		r.Converged, r.Overlaps, msDuration(r.MaxExcused.dur), msDuration(r.MaxIsolated.dur), msDuration(r.MaxHandoff.dur))
	return r
}

func TestScenarios(t *testing.T) {
	t.Run("a partitioned leader's node fences itself, is marked down and its VMs run elsewhere, once; after the heal they converge", func(t *testing.T) {
		var old *node
		var moved []string
		r := scenario(t, Config{Seed: 1, Nodes: 3, Script: func(w *world) {
			w.atTime(2000, func() { w.repo.push(spread(1), "web (spread) and db") })
			w.atTime(30000, func() {
				old = w.leader
				for _, name := range sortedKeys(old.st.Assignments) {
					if old.st.Assignments[name].Node == old.id {
						moved = append(moved, name)
					}
				}
				if len(moved) == 0 {
					t.Errorf("the leader, node %d, runs no VM: the scenario needs one", old.id)
				}
				w.partition([][]*node{{old}}, "the leader isolated")
			})
			w.atTime(60000, func() {
				l := w.leader
				if l == nil || l == old {
					t.Fatalf("no new leader 30 s into the partition")
				}
				if st := l.st.Nodes[old.id].State; st != replicated.NodeDown {
					t.Errorf("node %d (the old leader) is %s after 30 s cut off, want down", old.id, st)
				}
				for _, name := range moved {
					a := l.st.Assignments[name]
					if a.Node == old.id {
						t.Errorf("%s still assigned to the isolated node %d", name, old.id)
					}
					if on := w.runningOn(name); !slices.Equal(on, []uint64{a.Node}) {
						t.Errorf("%s runs on %v; want only the new node %d (the old one, cut off, fenced itself)", name, on, a.Node)
					}
				}
			})
			w.atTime(70000, func() { w.heal(false) })
		}})
		if r.Overlaps != 0 {
			t.Errorf("%d double runs; want none: the isolated node killed its copies before the leader moved them", r.Overlaps)
		}
		if !r.Seen["a fenced node killed its runners"] {
			t.Errorf("the isolated node did not fence itself")
		}
	})

	t.Run("a broken push keeps the last good revision on every node", func(t *testing.T) {
		var good string
		spawned := map[string]int64{}
		scenario(t, Config{Seed: 2, Nodes: 3, Script: func(w *world) {
			w.atTime(2000, func() { good = w.repo.push(twoVMs(1), "web and db") })
			w.atTime(30000, func() {
				for _, n := range w.nodes {
					for name, u := range n.host.units {
						spawned[name] = u.spawnedAt
					}
				}
				w.repo.push(nil, "a flake that does not evaluate")
			})
			w.atTime(50000, func() {
				bad := w.repo.head
				for _, n := range w.nodes {
					st := n.st
					if st.Revision == nil || st.Revision.Commit != good {
						t.Errorf("node %d: revision %v, want the last good commit %s", n.id, st.Revision, good)
					}
					if c, ok := st.Condition(replicated.EvalFailed); !ok || c.Commit != bad || c.Retryable {
						t.Errorf("node %d: EvalFailed = %+v (set %v), want a permanent failure of %s", n.id, c, ok, bad)
					}
					for name, u := range n.host.units {
						if u.alive && u.spawnedAt != spawned[name] {
							t.Errorf("node %d restarted %s after the broken push", n.id, name)
						}
					}
				}
			})
			w.atTime(55000, func() { w.heal(true) })
		}})
	})

	t.Run("a runner that fails to build keeps the old version running", func(t *testing.T) {
		scenario(t, Config{Seed: 3, Nodes: 3, Script: func(w *world) {
			w.atTime(2000, func() { w.repo.push(twoVMs(1), "web and db") })
			w.atTime(30000, func() {
				s := cloneSpec(w.repo.base)
				w.repo.unbuildable[runner("db", 2).Out] = true
				s.VMs["db"] = spec.VM{Runner: runner("db", 2), VCPU: 2, MemMiB: 1024, Replicas: 1, Autostart: true}
				w.repo.versions["db"] = 2
				w.repo.push(s, "db v2 (does not build)")
			})
			w.atTime(60000, func() {
				l := w.leader
				a := l.st.Assignments["db"]
				u := w.node(a.Node).host.units["db"]
				if u == nil || !u.alive || u.booted != runner("db", 1).Out {
					t.Errorf("db on node %d: %+v, want v1 still running", a.Node, u)
				}
				if st := l.st.Observed["db"]; st.Phase != replicated.PhaseFailed || !strings.Contains(st.Message, "realise runner") {
					t.Errorf("db reported %s %q, want failed with the build error", st.Phase, st.Message)
				}
			})
			w.atTime(65000, func() { w.heal(true) })
		}})
	})

	t.Run("a restarted agent adopts its runners without restarting them", func(t *testing.T) {
		spawned := map[string]int64{}
		var crashed *node
		scenario(t, Config{Seed: 4, Nodes: 3, Script: func(w *world) {
			w.atTime(2000, func() { w.repo.push(twoVMs(1), "web and db") })
			w.atTime(30000, func() {
				crashed = w.nodes[0]
				for name, u := range crashed.host.units {
					spawned[name] = u.spawnedAt
				}
				w.stopProcess(crashed, "blixard restarted", false)
				w.after(3000, func() { w.boot(crashed) })
			})
			w.atTime(50000, func() {
				for name, at := range spawned {
					if u := crashed.host.units[name]; u == nil || !u.alive || u.spawnedAt != at {
						t.Errorf("node %d: %s was not adopted as it ran: %+v", crashed.id, name, u)
					}
				}
			})
			w.atTime(55000, func() { w.heal(false) })
		}})
		if len(spawned) == 0 {
			t.Errorf("node 1 ran no VM: the scenario needs one")
		}
	})

	t.Run("with self-fencing an isolated node's VMs stop before they run elsewhere, which StrictOneCopy passes", func(t *testing.T) {
		var cut *node
		var ran []string
		r := scenario(t, Config{Seed: 5, Nodes: 3, StrictOneCopy: true, Script: func(w *world) {
			w.atTime(2000, func() { w.repo.push(twoVMs(1), "web and db") })
			w.atTime(30000, func() {
				for _, n := range w.nodes {
					if len(w.list(n)) > 0 && n != w.leader {
						cut, ran = n, w.list(n)
						w.partition([][]*node{{n}}, "a node that runs VMs isolated")
						return
					}
				}
			})
			// Past the lease (7.5 s), the node timeout (10 s) and the
			// builds on the other nodes: the isolated node killed its
			// copies, the leader placed them on the others, which run them.
			w.atTime(65000, func() {
				for _, name := range ran {
					on := w.runningOn(name)
					if slices.Contains(on, cut.id) || len(on) != 1 {
						t.Errorf("%s runs on %v; want one copy, not on the isolated node %d", name, on, cut.id)
					}
					if s := cut.st.Observed[name]; s.Node == cut.id && s.Phase != replicated.PhaseStopped {
						t.Logf("the cut-off node's replica still shows its last report of %s: %s", name, s.Phase)
					}
				}
				if cut.agent == nil || !cut.agent.fenced {
					t.Errorf("node %d is not fenced 35 s into its isolation", cut.id)
				}
			})
			w.atTime(70000, func() { w.heal(false) })
		}})
		if len(ran) == 0 {
			t.Fatalf("no node but the leader runs a VM: the scenario needs one")
		}
		if r.Overlaps != 0 {
			t.Errorf("%d double runs; want none", r.Overlaps)
		}
	})

	t.Run("a drained node's VMs start elsewhere only once it reported them stopped", func(t *testing.T) {
		var drained *node
		var ran []string
		r := scenario(t, Config{Seed: 8, Nodes: 3, StrictOneCopy: true, Script: func(w *world) {
			// Every runner is in every store: the new copies could start
			// within milliseconds, long before the old ones have shut down.
			for _, n := range w.nodes {
				for _, vm := range []string{"web", "db"} {
					n.host.store[runner(vm, 1).Out] = true
				}
			}
			w.atTime(2000, func() { w.repo.push(twoVMs(1), "web and db") })
			w.atTime(30000, func() {
				for _, n := range w.nodes {
					if len(w.list(n)) > 0 {
						drained, ran = n, w.list(n)
						w.operator(replicated.Command{Type: replicated.CmdSetNodeState, Actor: "alice",
							SetNodeState: &replicated.SetNodeState{ID: n.id, State: replicated.NodeDraining}})
						return
					}
				}
				t.Fatalf("no node runs a VM: the scenario needs one")
			})
			w.atTime(60000, func() {
				for _, name := range ran {
					if on := w.runningOn(name); len(on) != 1 || on[0] == drained.id {
						t.Errorf("%s runs on %v; want one copy, not on the drained node %d", name, on, drained.id)
					}
				}
			})
			w.atTime(65000, func() { w.heal(false) })
		}})
		if r.Overlaps != 0 {
			t.Errorf("%d double runs; want none", r.Overlaps)
		}
	})

	t.Run("a frozen node cannot fence: its copies run twice until it thaws, then die at once", func(t *testing.T) {
		var frozen *node
		var ran []string
		var thawedAt int64
		r := scenario(t, Config{Seed: 8, Nodes: 3, StrictOneCopy: true, Script: func(w *world) {
			w.atTime(2000, func() { w.repo.push(twoVMs(1), "web and db") })
			w.atTime(30000, func() {
				for _, n := range w.nodes {
					if len(w.list(n)) > 0 && n != w.leader {
						frozen, ran = n, w.list(n)
						w.freeze(n)
						return
					}
				}
				t.Fatalf("no node but the leader runs a VM: the scenario needs one")
			})
			// 30 s frozen: marked down after the node timeout (~11 s), its
			// VMs placed and, once built (up to 15 s), started elsewhere
			// while its own copies run on.
			w.atTime(60000, func() {
				twice := 0
				for _, name := range ran {
					if on := w.runningOn(name); len(on) == 2 && slices.Contains(on, frozen.id) {
						twice++
					}
				}
				if twice == 0 {
					t.Errorf("none of %v runs both on the frozen node %d and elsewhere", ran, frozen.id)
				}
				thawedAt = w.now
				w.thaw(frozen)
			})
			w.atTime(60001, func() {
				for _, name := range ran {
					if slices.Contains(w.runningOn(name), frozen.id) {
						t.Errorf("%s still runs on node %d after its thaw", name, frozen.id)
					}
				}
			})
			w.atTime(70000, func() { w.heal(false) })
		}})
		if r.MaxExcused.dur == 0 || r.MaxExcused.start+r.MaxExcused.dur != thawedAt {
			t.Errorf("longest allowed double run %+v; want one that ended at the thaw (%.3fs)", r.MaxExcused, float64(thawedAt)/1000)
		}
	})

	t.Run("a frozen leader that kept its term does not count its own blindness as the nodes' silence", func(t *testing.T) {
		r := scenario(t, Config{Seed: 6, Nodes: 3, Script: func(w *world) {
			w.atTime(2000, func() { w.repo.push(spread(1), "web (spread) and db") })
			w.atTime(30000, func() {
				l := w.leader
				for _, n := range w.nodes {
					if n != l {
						// One follower dies: the other cannot elect alone.
						w.stopProcess(n, "host lost power (runners die)", true)
						w.after(60000, func() { w.boot(n) })
						break
					}
				}
				w.freeze(l)
				w.after(2*msOf(w.cfg.NodeTimeout), func() { w.thaw(l) })
			})
			w.atTime(60000, func() {
				// The thawed leader keeps itself and the healthy follower up
				// (reconciler.DiscountBlindness); only the dead node goes down.
				l := w.leader
				if l.st.Nodes[l.id].State == replicated.NodeDown || len(l.st.Assignments) == 0 {
					t.Errorf("after the thaw: leader node %d is %s with %d assignments; it judged its own blindness as silence",
						l.id, l.st.Nodes[l.id].State, len(l.st.Assignments))
				}
			})
			w.atTime(100000, func() { w.heal(false) })
		}})
		for _, k := range r.Known {
			if strings.HasPrefix(k, "stale-heartbeat-record") {
				t.Errorf("a node was judged silent early: %s", k)
			}
		}
	})
}
