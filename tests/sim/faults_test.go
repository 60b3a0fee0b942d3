package sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"time"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// repo is the cluster repository and what nix makes of its commits: the
// leader fetches its head and evaluates commits; agents build runners.
type repo struct {
	w       *world
	commits map[string]*commit
	head    string
	n       int
	// base is the last good spec pushed: the next push changes it.
	base     *spec.Cluster
	versions map[string]int // per declared VM: its newest runner version

	unbuildable map[string]bool // out paths whose build fails
	crashy      map[string]bool // out paths whose runner exits 1–3 s after it starts

	unreachableUntil int64 // fetches fail until then
	evalFlakyUntil   int64 // evaluations fail temporarily until then
}

type commit struct {
	id      string
	spec    *spec.Cluster // nil: evaluation fails with evalErr
	evalErr string
}

func newRepo(w *world) *repo {
	return &repo{w: w, commits: map[string]*commit{}, versions: map[string]int{},
		unbuildable: map[string]bool{}, crashy: map[string]bool{}}
}

func (r *repo) fetch() (string, error) {
	if r.w.now < r.unreachableUntil {
		return "", errors.New("fetching https://git.example.org/infra/cluster.git: dial tcp 10.0.9.1:443: connect: connection refused")
	}
	return r.head, nil
}

// evalError is nixeval's error as the reconciler sees it.
type evalError struct {
	msg  string
	temp bool
}

func (e *evalError) Error() string   { return e.msg }
func (e *evalError) Temporary() bool { return e.temp }

// evaluate returns a fresh copy of the commit's spec, as every nix eval does.
func (r *repo) evaluate(id string) (*spec.Cluster, string, error) {
	if r.w.now < r.evalFlakyUntil {
		return nil, "", &evalError{msg: "nix eval: killed by signal 9 (evaluation timed out after 2m0s)", temp: true}
	}
	c := r.commits[id]
	if c == nil {
		return nil, "", &evalError{msg: fmt.Sprintf("commit %s is not in the mirror", id), temp: true}
	}
	if c.spec == nil {
		return nil, "", &evalError{msg: c.evalErr}
	}
	data, err := json.Marshal(c.spec)
	if err != nil {
		panic(err)
	}
	var out spec.Cluster
	if err := json.Unmarshal(data, &out); err != nil {
		panic(err)
	}
	h := fnv.New64a()
	h.Write(data)
	return &out, fmt.Sprintf("%016x", h.Sum64()), nil
}

// push makes a new commit the head. A nil spec is a commit that does not
// evaluate (the base stays the last good spec).
func (r *repo) push(s *spec.Cluster, what string) string {
	r.n++
	id := fmt.Sprintf("c%03d", r.n)
	c := &commit{id: id, spec: s}
	if s == nil {
		c.evalErr = "error: syntax error, unexpected '}'\n       at /nix/store/…-source/flake.nix:12:3"
	} else {
		if err := s.Validate(); err != nil {
			r.w.chk.failf("the simulator pushed an invalid spec (%s): %v", what, err)
		}
		r.base = s
	}
	r.commits[id] = c
	r.head = id
	r.w.tracef("push %s: %s", id, what)
	return id
}

var vmNames = []string{"api", "cache", "db", "queue", "web"}

// runner is version v of declared VM name's runner.
func runner(name string, v int) spec.Runner {
	tag := fmt.Sprintf("microvm-%s-v%d", name, v)
	return spec.Runner{Drv: "/nix/store/" + hash32(tag+".drv") + "-" + tag + ".drv", Out: "/nix/store/" + hash32(tag) + "-" + tag}
}

func hash32(s string) string {
	h := fnv.New64a()
	h.Write([]byte(s))
	a := h.Sum64()
	h.Write([]byte("/"))
	return fmt.Sprintf("%016x%016x", a, h.Sum64())
}

func cloneSpec(s *spec.Cluster) *spec.Cluster {
	c := &spec.Cluster{Name: s.Name, VMs: map[string]spec.VM{}}
	for name, vm := range s.VMs {
		vm.Placement.Nodes = slices.Clone(vm.Placement.Nodes)
		vm.Placement.Labels = maps.Clone(vm.Placement.Labels)
		vm.Placement.AntiAffinity = slices.Clone(vm.Placement.AntiAffinity)
		vm.Volumes = maps.Clone(vm.Volumes)
		c.VMs[name] = vm
	}
	return c
}

func instances(s *spec.Cluster) int {
	n := 0
	for _, vm := range s.VMs {
		n += vm.Replicas
	}
	return n
}

// maxInstances keeps every spec placeable on the cluster with all nodes
// ready: at most 8 instances of at most 2 vCPUs and 1 GiB, on nodes of at
// least 8 vCPUs and 8 GiB (3 nodes at least).
const maxInstances = 8

// newVM declares VM name with a fresh runner.
func (r *repo) newVM(name string) spec.VM {
	w := r.w
	r.versions[name]++
	vm := spec.VM{
		Runner:    runner(name, r.versions[name]),
		VCPU:      int(w.rnd(1, 2)),
		MemMiB:    []int{256, 512, 1024}[w.pick(3)],
		Replicas:  int(w.rnd(1, 3)),
		Autostart: !w.chance(0.1),
	}
	if w.chance(0.4) {
		// Rolling updates (reconciler.NextRolloutStep): deadlines long
		// enough for a wave after heal (a build, its retry, minHealthy),
		// short enough to expire during faults.
		vm.Update = spec.Update{MaxUnavailable: int(w.rnd(1, 2)), MinHealthySeconds: int(w.rnd(0, 3)),
			ProgressDeadline: time.Duration(w.rnd(60, 120)) * time.Second, AutoRevert: w.chance(0.5)}
		if w.chance(0.3) {
			vm.Update.Canary = 1
		}
	}
	switch {
	case w.chance(0.3):
		// Spread the replicas: at most one per node.
		vm.Placement.AntiAffinity = []string{name}
		vm.Replicas = min(vm.Replicas, len(w.nodes)-1)
	case w.chance(0.15):
		// Zone a: the odd node ids, at least two of them.
		vm.Placement.Labels = map[string]string{"zone": "a"}
		vm.Replicas = min(vm.Replicas, 2)
	}
	return vm
}

// initialSpec declares 2–4 VMs.
func (r *repo) initialSpec() *spec.Cluster {
	w := r.w
	s := &spec.Cluster{Name: "sim", VMs: map[string]spec.VM{}}
	names := slices.Clone(vmNames)
	w.rng.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	for _, name := range names[:w.rnd(2, 4)] {
		vm := r.newVM(name)
		vm.Replicas = min(vm.Replicas, maxInstances-instances(s))
		if vm.Replicas > 0 {
			s.VMs[name] = vm
		}
	}
	return s
}

// bump gives VM name a new runner version; bad ones fail to build or crash.
func (r *repo) bump(s *spec.Cluster, name string, bad bool) string {
	vm := s.VMs[name]
	r.versions[name]++
	vm.Runner = runner(name, r.versions[name])
	what := fmt.Sprintf("%s v%d", name, r.versions[name])
	if bad {
		if r.w.chance(0.6) {
			r.unbuildable[vm.Runner.Out] = true
			what += " (does not build)"
		} else {
			r.crashy[vm.Runner.Out] = true
			what += " (crashes)"
		}
	}
	s.VMs[name] = vm
	return what
}

// randomPush pushes one change of the last good spec.
func (r *repo) randomPush() {
	w := r.w
	s := cloneSpec(r.base)
	names := sortedKeys(s.VMs)
	name := names[w.pick(len(names))]
	vm := s.VMs[name]
	var what string
	switch k := w.pick(100); {
	case k < 35:
		what = "new runner: " + r.bump(s, name, w.chance(0.3))
		if w.chance(0.3) {
			other := names[w.pick(len(names))]
			what += ", " + r.bump(s, other, false)
		}
	case k < 50:
		limit := 3
		if len(vm.Placement.AntiAffinity) > 0 {
			limit = len(w.nodes) - 1
		} else if len(vm.Placement.Labels) > 0 {
			limit = 2
		}
		n := int(w.rnd(1, int64(limit)))
		n = min(n, vm.Replicas+maxInstances-instances(s))
		vm.Replicas = max(n, 1)
		s.VMs[name] = vm
		what = fmt.Sprintf("%s replicas = %d", name, vm.Replicas)
	case k < 58:
		var missing []string
		for _, n := range vmNames {
			if _, ok := s.VMs[n]; !ok {
				missing = append(missing, n)
			}
		}
		if len(missing) == 0 || instances(s) >= maxInstances {
			what = "no change"
			break
		}
		add := missing[w.pick(len(missing))]
		nvm := r.newVM(add)
		nvm.Replicas = min(nvm.Replicas, maxInstances-instances(s))
		s.VMs[add] = nvm
		what = "new VM " + add
	case k < 64:
		if len(s.VMs) < 2 {
			what = "no change"
			break
		}
		delete(s.VMs, name)
		what = "VM " + name + " removed"
	case k < 72:
		vm.MemMiB = []int{256, 512, 1024}[w.pick(3)]
		vm.VCPU = int(w.rnd(1, 2))
		s.VMs[name] = vm
		what = fmt.Sprintf("%s resized to %d vCPU %d MiB", name, vm.VCPU, vm.MemMiB)
	case k < 78:
		vm.Autostart = !vm.Autostart
		s.VMs[name] = vm
		what = fmt.Sprintf("%s autostart = %v", name, vm.Autostart)
	case k < 84:
		// Too large for any node: unschedulable.
		vm.MemMiB = 1 << 20
		s.VMs[name] = vm
		what = name + " needs 1 TiB"
	case k < 94:
		r.push(nil, "a flake that does not evaluate")
		return
	default:
		what = "no change (another commit)"
	}
	r.push(s, what)
}

// finalPush pushes a good spec: every runner builds and runs, everything
// fits, and autostart is on.
func (r *repo) finalPush() {
	w := r.w
	s := cloneSpec(r.base)
	for _, name := range sortedKeys(s.VMs) {
		vm := s.VMs[name]
		if r.unbuildable[vm.Runner.Out] || r.crashy[vm.Runner.Out] {
			r.bump(s, name, false)
			vm = s.VMs[name]
		}
		if vm.MemMiB > 1024 {
			vm.MemMiB = 1024
		}
		vm.Autostart = true
		s.VMs[name] = vm
	}
	if w.chance(0.5) {
		names := sortedKeys(s.VMs)
		r.bump(s, names[w.pick(len(names))], false)
	}
	// A rollout that failed or reverted during the faults stays so until a
	// commit changes the VM's targets: every rolling VM gets a new runner,
	// so the final spec is rolled out in the healed cluster.
	for _, name := range sortedKeys(s.VMs) {
		if s.VMs[name].Update.Enabled() {
			r.bump(s, name, false)
		}
	}
	r.push(s, "the final good spec")
}

// Faults. Every fault ends by the heal time; at heal everything is made
// whole, the final spec is pushed and the operator readies every node.

// scheduleFaults draws the fault schedule from the seed.
func (w *world) scheduleFaults(from, to int64) {
	n := int(w.rnd(4, 14))
	for range n {
		t := w.rnd(from, to-1000)
		kind := w.pick(100)
		w.after(t-w.now, func() { w.fault(kind, to) })
	}
}

// fault injects one fault of the given kind (a number in [0, 100) that
// picks the kind by weight); every fault ends before heal.
func (w *world) fault(kind int, heal int64) {
	nt := msOf(w.cfg.NodeTimeout)
	dur := func(lo, hi int64) int64 { return min(w.rnd(lo, hi), heal-w.now) }
	target := func(leaderBias float64) *node {
		if w.leader != nil && w.chance(leaderBias) {
			return w.leader
		}
		return w.nodes[w.pick(len(w.nodes))]
	}
	switch {
	case kind < 18: // partition
		if w.partitioned {
			return
		}
		d := dur(1000, 3*nt)
		switch k := w.pick(10); {
		case k < 5:
			n := target(0.5)
			w.partition([][]*node{{n}}, fmt.Sprintf("node %d isolated", n.id))
		case k < 9:
			perm := w.rng.Perm(len(w.nodes))
			size := int(w.rnd(1, int64((len(w.nodes)-1)/2)))
			var minority []*node
			for _, i := range perm[:size] {
				minority = append(minority, w.nodes[i])
			}
			w.partition([][]*node{minority}, "minority split off")
		default:
			// No side has a majority (4 nodes: 2|2; 3 or 5: a three-way split).
			perm := w.rng.Perm(len(w.nodes))
			var a, b []*node
			for i, j := range perm {
				switch {
				case i < len(w.nodes)/2:
					a = append(a, w.nodes[j])
				case i < len(w.nodes)-1 || len(w.nodes)%2 == 0:
					b = append(b, w.nodes[j])
				}
			}
			w.partition([][]*node{a, b}, "split without a majority")
			w.cover("a split without a majority")
		}
		w.after(d, w.healPartition)
	case kind < 30: // blixard crashes and restarts: runners keep running
		n := target(0.3)
		w.stopProcess(n, "blixard crashed (runners keep running)", false)
		w.after(dur(300, 8000), func() { w.boot(n) })
	case kind < 38: // the host dies: runners die with it
		n := target(0.3)
		w.stopProcess(n, "host lost power (runners die)", true)
		w.after(dur(3000, 3*nt), func() { w.boot(n) })
	case kind < 50: // SIGSTOP
		n := target(0.5)
		w.freeze(n)
		w.after(dur(300, 3*nt), func() { w.thaw(n) })
	case kind < 54:
		n := target(0.3)
		n.slowUntil = w.now + dur(2000, 30000)
		w.tracef("node %d: slow network and replication until %.1fs", n.id, float64(n.slowUntil)/1000)
		w.topologyChanged()
	case kind < 58:
		w.lossUntil = w.now + dur(2000, 20000)
		w.tracef("30%% message loss until %.1fs", float64(w.lossUntil)/1000)
	case kind < 64: // a runner crashes
		type runner struct {
			n    *node
			name string
		}
		var alive []runner
		for _, n := range w.nodes {
			for _, name := range sortedKeys(n.host.units) {
				if n.host.units[name].alive {
					alive = append(alive, runner{n, name})
				}
			}
		}
		if len(alive) == 0 {
			return
		}
		r := alive[w.pick(len(alive))]
		w.crashRunner(r.n, r.name, "killed by the OOM killer")
	case kind < 84:
		w.repo.randomPush()
	case kind < 90: // drain (or cordon), then ready
		if w.drained {
			return
		}
		n := w.nodes[w.pick(len(w.nodes))]
		st := replicated.NodeDraining
		if w.chance(0.3) {
			st = replicated.NodeCordoned
		}
		w.drained = true
		w.operator(replicated.Command{Type: replicated.CmdSetNodeState, Actor: "alice",
			SetNodeState: &replicated.SetNodeState{ID: n.id, State: st}})
		w.after(dur(3000, 40000), func() {
			w.drained = false
			w.operator(replicated.Command{Type: replicated.CmdSetNodeState, Actor: "alice",
				SetNodeState: &replicated.SetNodeState{ID: n.id, State: replicated.NodeReady}})
		})
	case kind < 95: // blixard vm stop / start / restart
		l := w.anyState()
		if l == nil || len(l.Assignments) == 0 {
			return
		}
		names := sortedKeys(l.Assignments)
		vm := names[w.pick(len(names))]
		if w.chance(0.5) {
			w.operator(replicated.Command{Type: replicated.CmdSetVMRunState, Actor: "alice",
				SetVMRunState: &replicated.SetVMRunState{VM: vm, Restart: true}})
			return
		}
		w.operator(replicated.Command{Type: replicated.CmdSetVMRunState, Actor: "alice",
			SetVMRunState: &replicated.SetVMRunState{VM: vm, Want: replicated.RunStateStopped}})
		w.after(dur(2000, 30000), func() {
			w.operator(replicated.Command{Type: replicated.CmdSetVMRunState, Actor: "alice",
				SetVMRunState: &replicated.SetVMRunState{VM: vm, Want: replicated.RunStateRunning}})
		})
	case kind < 97:
		w.repo.evalFlakyUntil = w.now + dur(2000, 15000)
		w.tracef("evaluations fail temporarily until %.1fs", float64(w.repo.evalFlakyUntil)/1000)
	default:
		w.repo.unreachableUntil = w.now + dur(2000, 20000)
		w.tracef("the repository is unreachable until %.1fs", float64(w.repo.unreachableUntil)/1000)
	}
}

func (w *world) node(id uint64) *node { return w.nodes[id-1] }

// anyState is the state of a running node (for the operator's choice of a
// VM), preferring the leader's.
func (w *world) anyState() *replicated.State {
	if w.leader != nil {
		return w.leader.st
	}
	for _, n := range w.nodes {
		if n.procUp {
			return n.st
		}
	}
	return nil
}

// partition puts each group on its own side; the remaining nodes form one
// more side.
func (w *world) partition(groups [][]*node, what string) {
	w.partitioned = true
	for _, n := range w.nodes {
		n.group = 0
	}
	var ids [][]uint64
	for i, g := range groups {
		var side []uint64
		for _, n := range g {
			n.group = i + 1
			side = append(side, n.id)
		}
		ids = append(ids, side)
	}
	w.tracef("partition: %s %v", what, ids)
	w.topologyChanged()
}

func (w *world) healPartition() {
	if !w.partitioned {
		return
	}
	w.partitioned = false
	for _, n := range w.nodes {
		n.group = 0
	}
	w.tracef("partition healed")
	w.topologyChanged()
}

// operator sends a command through the API of a running node (any one).
func (w *world) operator(cmd replicated.Command) {
	var up []*node
	for _, n := range w.nodes {
		if n.procUp && n.registered && !n.frozen {
			up = append(up, n)
		}
	}
	if len(up) == 0 {
		w.tracef("operator: no node answers; %s not sent", cmd.Type)
		return
	}
	n := up[w.pick(len(up))]
	cmd.At = at(w.now)
	desc := describe(cmd)
	w.tracef("operator via node %d: %s", n.id, desc)
	w.propose(n, cmd, commandTimeout, func(res replicated.Result, err error) {
		switch {
		case err != nil:
			w.tracef("operator: %s: %v", desc, err)
		case !res.OK():
			w.tracef("operator: %s refused: %s", desc, res.Message)
		}
	})
}

func describe(cmd replicated.Command) string {
	switch {
	case cmd.SetNodeState != nil:
		return fmt.Sprintf("node %d %s", cmd.SetNodeState.ID, cmd.SetNodeState.State)
	case cmd.SetVMRunState != nil:
		if cmd.SetVMRunState.Restart {
			return "vm restart " + cmd.SetVMRunState.VM
		}
		return fmt.Sprintf("vm %s %s", cmd.SetVMRunState.Want, cmd.SetVMRunState.VM)
	}
	return string(cmd.Type)
}

// heal ends every fault: partitions, frozen and dead processes, slow and
// lossy links, a failing repository or evaluator. With push, the final good
// spec is pushed. From then on the operator readies every node that is not
// ready (drained, cordoned, marked down), every 2 s until all are.
func (w *world) heal(push bool) {
	w.tracef("heal: every fault ends")
	w.faultsOver = true
	w.healPartition()
	w.lossUntil = 0
	w.repo.unreachableUntil, w.repo.evalFlakyUntil = 0, 0
	for _, n := range w.nodes {
		n.slowUntil = 0
		w.thaw(n)
		w.boot(n)
	}
	w.topologyChanged()
	if push {
		w.repo.finalPush()
	}
	w.chk.healed()
	var ready func()
	ready = func() {
		if l := w.leader; l != nil && w.available() {
			for _, id := range sortedKeys(l.st.Nodes) {
				if st := l.st.Nodes[id].State; st != replicated.NodeReady {
					w.operator(replicated.Command{Type: replicated.CmdSetNodeState, Actor: "alice",
						SetNodeState: &replicated.SetNodeState{ID: id, State: replicated.NodeReady}})
				}
			}
		}
		w.after(2000, ready)
	}
	w.after(1000, ready)
}

// faulty: faults are still being injected (random build and start
// failures, hung stops happen only then).
func (w *world) faulty() bool { return !w.faultsOver }

// evalDuration is how long one nix eval takes.
func (w *world) evalDuration() int64 {
	if w.faulty() && w.chance(0.05) {
		return w.rnd(8000, 12000)
	}
	return w.rnd(300, 3000)
}
