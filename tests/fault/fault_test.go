package fault

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/replicated"
)

var (
	flagStrict      = flag.Bool("strict", false, "any VM instance running on two nodes at once fails the run")
	flagGrace       = flag.Duration("overlap-grace", 0, "how long after a cut-off node heals its copies may still run beside the new ones (0: --node-timeout + 10s)")
	flagConverge    = flag.Duration("converge", 60*time.Second, "bound on convergence after the last heal and push")
	flagNodeTimeout = flag.Duration("node-timeout", 5*time.Second, "blixard serve --node-timeout")
	flagKeep        = flag.Bool("keep", false, "keep the run's directory (logs, records) even when it passes")
	flagSummary     = flag.String("summary", "", "append each run's summary to this file")
	flagBinaryB     = flag.String("blixard-b", "", "the binary restart-new-binary switches to (default: a second build of this tree)")
)

// shortSeeds are TestFaultShortFixedSeeds' seeds; each runs its coverage
// round only (shortDuration is shorter than it): seed 1 the six kinds the
// issue names, seed 2 all nine.
var shortSeeds = []uint64{1, 2}

const shortDuration = 20 * time.Second

// TestFaultShortFixedSeeds is the CI run: for two fixed seeds, a fresh
// three-node cluster, every coverage fault once (kill -9, whole-node kill,
// SIGSTOP/SIGCONT, minority partition, leader isolation, restart with a new
// binary; seed 2 also the majority and one-way partitions and a leader
// change) in a seeded order, pushes including a broken and a fixed one,
// and every invariant.
func TestFaultShortFixedSeeds(t *testing.T) {
	requireTools(t)
	for _, seed := range shortSeeds {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			runFaults(t, config(seed, shortDuration))
		})
	}
}

type runConfig struct {
	Seed        uint64
	Duration    time.Duration
	Nodes       int
	NodeTimeout time.Duration
	Lease       time.Duration // the agents' --lease (serve's default for NodeTimeout)
	Grace       time.Duration
	Strict      bool
	Converge    time.Duration
}

func config(seed uint64, d time.Duration) runConfig {
	c := runConfig{Seed: seed, Duration: d, Nodes: 3, NodeTimeout: *flagNodeTimeout, Grace: *flagGrace, Strict: *flagStrict, Converge: *flagConverge}
	if c.Grace == 0 {
		c.Grace = c.NodeTimeout + 10*time.Second
	}
	// serve's default: the lease ends max(timeout/4, 1s) before the node
	// timeout (docs/architecture.md, Failure detection).
	c.Lease = c.NodeTimeout - max(c.NodeTimeout/4, time.Second)
	return c
}

func (c runConfig) rerun() string {
	extra := ""
	if c.Strict {
		extra += " -strict"
	}
	if c.NodeTimeout != 5*time.Second {
		extra += " -node-timeout " + c.NodeTimeout.String()
	}
	return fmt.Sprintf("go test -tags chaos ./tests/fault -run '^TestFault$' -count=1 -timeout %v -seed %d -duration %v%s -v\n       scripts/chaos.sh --seed %d --duration %v",
		(c.Duration + 15*time.Minute).Round(time.Minute), c.Seed, c.Duration, extra, c.Seed, c.Duration)
}

// run is one seeded run against one fresh cluster.
type run struct {
	t     *testing.T
	cfg   runConfig
	sched schedule
	dir   string
	net   *Net
	repo  *repo
	nodes []*node
	bins  [2]string
	t0    int64 // boottime when the run began: the zero of every +time
	tf    int64 // boottime when the faults began

	ops opLog

	recMu sync.Mutex // serialises writes to harness.log

	mu          sync.Mutex
	events      *os.File                       // guarded by mu
	windows     []window                       // guarded by mu
	violations  []string                       // guarded by mu
	seenViol    map[string]bool                // guarded by mu
	active      map[int]int                    // guarded by mu: node → faults in effect on it
	injected    []*injection                   // guarded by mu
	histories   int                            // guarded by mu: history answers checked
	known       map[uint64]replicated.Revision // guarded by mu
	broken      map[string]bool                // guarded by mu: commits of broken pushes
	lastGood    string                         // guarded by mu: the last pushed commit that evaluates
	lastPushAt  int64                          // guarded by mu
	pushed      int                            // guarded by mu
	readied     int                            // guarded by mu
	versions    map[string]int                 // the pusher's
	overlapSeen map[string]overlap             // guarded by mu: by key, the latest view
}

// injection is a fault as it happened.
type injection struct {
	f                 fault
	targets           []int
	desc              string
	at, healed, recov int64
	windows           []int      // into run.windows
	leaderBefore      int        // the leader when it was injected (0: none known)
	leaderAfter       int        // the leader once the cluster recovered
	stopAt            int64      // restart-new-binary: when SIGTERM was sent
	running           []interval // restart-new-binary: the node's runners then
	heal              func() error
}

func (r *run) rel(ns int64) string {
	return fmt.Sprintf("+%.3fs", float64(ns-r.t0)/1e9)
}

func (r *run) logf(format string, args ...any) {
	line := fmt.Sprintf("%s %s", r.rel(boottime()), fmt.Sprintf(format, args...))
	r.mu.Lock()
	if r.events != nil {
		fmt.Fprintln(r.events, line)
	}
	r.mu.Unlock()
	r.t.Log(line)
}

// violate records a broken invariant (once per message).
func (r *run) violate(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.mu.Lock()
	dup := r.seenViol[msg]
	if !dup {
		r.seenViol[msg] = true
		r.violations = append(r.violations, r.rel(boottime())+" "+msg)
	}
	r.mu.Unlock()
	if !dup {
		r.logf("VIOLATION: %s", msg)
	}
}

func (r *run) failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.violations) > 0
}

func (r *run) recordsDir() string { return filepath.Join(r.dir, "records") }

// record appends lines to the harness's record file.
func (r *run) record(lines ...string) {
	r.recMu.Lock()
	defer r.recMu.Unlock()
	f, err := os.OpenFile(filepath.Join(r.recordsDir(), "harness.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		r.violate("harness: %v", err)
		return
	}
	defer f.Close()
	for _, l := range lines {
		fmt.Fprintln(f, l)
	}
}

func secs(ns int64) string { return fmt.Sprintf("%.3f", float64(ns)/1e9) }

// pause waits d or until ctx ends (schedule holds and gaps; no assertion
// depends on it).
func pause(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
	case <-tm.C:
	}
}

// poll calls cond every interval until it returns nil or d passed; it
// returns cond's last error.
func poll(ctx context.Context, d, interval time.Duration, cond func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		pause(ctx, interval)
	}
}

func runFaults(t *testing.T, cfg runConfig) {
	r := &run{t: t, cfg: cfg, sched: newSchedule(cfg.Seed, cfg.Duration, cfg.NodeTimeout), seenViol: map[string]bool{},
		active: map[int]int{}, known: map[uint64]replicated.Revision{}, broken: map[string]bool{},
		versions: map[string]int{}, overlapSeen: map[string]overlap{}}
	r.bins = binaries(t)
	r.t0 = boottime()
	dir, err := os.MkdirTemp("", fmt.Sprintf("blixard-fault-seed%d-", cfg.Seed))
	if err != nil {
		t.Fatal(err)
	}
	r.dir = dir
	if err := os.MkdirAll(r.recordsDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	if r.events, err = os.Create(filepath.Join(dir, "events.log")); err != nil {
		t.Fatal(err)
	}
	t.Logf("seed %d, duration %v; run directory %s\n%s", cfg.Seed, cfg.Duration, dir, r.sched)
	sum := &summary{cfg: cfg, dir: dir}
	defer func() {
		sum.violations = r.violations
		text := sum.String()
		if *flagSummary != "" {
			if f, err := os.OpenFile(*flagSummary, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
				fmt.Fprintln(f, text)
				f.Close()
			}
		}
		if len(r.violations) > 0 || t.Failed() {
			t.Errorf("%s\nrerun: %s\nlogs and records kept in %s", text, cfg.rerun(), dir)
			for _, n := range r.nodes {
				if b, err := os.ReadFile(n.logPath); err == nil {
					t.Logf("--- node %d log (last 3000 bytes of %s):\n%s", n.id, n.logPath, tail(b, 3000))
				}
			}
		} else {
			t.Log(text)
		}
		r.mu.Lock()
		r.events.Close()
		r.events = nil
		r.mu.Unlock()
		if !t.Failed() && !*flagKeep {
			os.RemoveAll(dir)
		}
	}()

	if r.net, err = NewNet(cfg.Nodes); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := r.net.Teardown(); err != nil {
			t.Errorf("tearing down the network: %v", err)
		}
	}()
	if r.repo, err = newRepo(dir); err != nil {
		t.Fatal(err)
	}
	call := boottime()
	first, err := r.repo.push(clusterFlake(r.versions), "initial")
	if err != nil {
		t.Fatal(err)
	}
	r.ops.add(op{Push: true, Index: 0, Commit: first, Call: call, Return: boottime()})
	r.lastGood = first
	for i := 1; i <= cfg.Nodes; i++ {
		nd := filepath.Join(dir, fmt.Sprintf("node%d", i))
		if err := os.MkdirAll(nd, 0o755); err != nil {
			t.Fatal(err)
		}
		r.nodes = append(r.nodes, &node{id: i, addr: r.net.Addr(i), dataDir: nd, stateDir: filepath.Join(nd, "vms"), logPath: filepath.Join(nd, "serve.log")})
	}
	for _, n := range r.nodes {
		if err := r.startNode(n); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := poll(ctx, 120*time.Second, 500*time.Millisecond, func() error { return r.converged(ctx, first) }); err != nil {
		r.violate("the cluster did not come up within 120s: %v", err)
		return
	}
	sum.upIn = time.Duration(boottime() - r.t0)
	r.logf("cluster up: revision of %.12s, every VM running once (%v)", first, sum.upIn.Round(time.Millisecond))

	// The faults begin: readers, the monitor, the operator and the pusher run
	// beside them.
	r.tf = boottime()
	var wg sync.WaitGroup
	bg, stopBG := context.WithCancel(ctx)
	for _, n := range r.nodes {
		wg.Add(1)
		go func() { defer wg.Done(); r.reader(bg, n) }()
	}
	wg.Add(2)
	go func() { defer wg.Done(); r.monitor(bg) }()
	go func() { defer wg.Done(); r.operator(bg) }()
	pushesDone := make(chan struct{})
	go func() { defer close(pushesDone); r.pusher(bg) }()

	for _, f := range r.sched.Faults {
		if r.failed() {
			r.logf("a violation was found: no more faults")
			break
		}
		coverageRound := f.N <= len(coverageFor(cfg.Seed))
		if !coverageRound && time.Duration(boottime()-r.tf) >= cfg.Duration {
			break
		}
		r.doFault(ctx, f)
	}
	select {
	case <-pushesDone:
	case <-ctx.Done():
	}
	if err := r.healAll(); err != nil {
		r.violate("healing: %v", err)
	}
	r.mu.Lock()
	settled := max(r.lastPushAt, r.lastHealLocked())
	lastGood := r.lastGood
	r.mu.Unlock()
	r.logf("faults and pushes done; waiting for convergence on %.12s (bound %v)", lastGood, cfg.Converge)
	convErr := poll(ctx, cfg.Converge+30*time.Second, 500*time.Millisecond, func() error { return r.converged(ctx, lastGood) })
	sum.converged = time.Duration(boottime() - settled)
	switch {
	case convErr != nil:
		r.violate("no convergence within %v of the last heal and push: %v", sum.converged.Round(time.Second), convErr)
	case sum.converged > cfg.Converge:
		r.violate("converged only %v after the last heal and push (bound %v)", sum.converged.Round(time.Millisecond), cfg.Converge)
	default:
		r.logf("converged %v after the last heal and push", sum.converged.Round(time.Millisecond))
	}
	stopBG()
	wg.Wait()
	r.finalChecks(ctx, sum)
}

func (r *run) lastHealLocked() int64 {
	var last int64
	for _, in := range r.injected {
		last = max(last, in.healed)
	}
	return last
}

// converged checks that every node answers with commit as its revision and
// every node ready, all agree on the assignments, every instance runs, and
// the records show exactly one live runner per assigned instance, on its
// node, with its committed out path, and none elsewhere.
func (r *run) converged(ctx context.Context, commit string) error {
	var first map[string]api.VMView
	for _, n := range r.nodes {
		s, err := n.status(ctx)
		if err != nil {
			return fmt.Errorf("node %d: %w", n.id, err)
		}
		if s.Revision == nil || s.Revision.Commit != commit {
			return fmt.Errorf("node %d is at revision %+v, want commit %.12s", n.id, s.Revision, commit)
		}
		for _, nv := range s.Nodes {
			if nv.State != replicated.NodeReady {
				return fmt.Errorf("node %d is %s", nv.ID, nv.State)
			}
		}
		vms := map[string]api.VMView{}
		for _, vm := range s.VMs {
			if vm.Phase != replicated.PhaseRunning {
				return fmt.Errorf("%s on node %d is %s %s", vm.Name, vm.Node, vm.Phase, vm.Message)
			}
			vms[vm.Name] = vm
		}
		if first == nil {
			first = vms
			continue
		}
		for name, vm := range vms {
			if f := first[name]; f.Node != vm.Node || f.OutPath != vm.OutPath {
				return fmt.Errorf("nodes disagree on %s: node %d %s vs node %d %s", name, f.Node, f.OutPath, vm.Node, vm.OutPath)
			}
		}
	}
	if len(first) != 6 {
		return fmt.Errorf("%d instances assigned, want 6", len(first))
	}
	ivs, err := readRecords(r.recordsDir())
	if err != nil {
		return err
	}
	live := map[string][]interval{}
	for _, iv := range ivs {
		if iv.Open && runnerAlive(iv.PID) {
			live[iv.VM] = append(live[iv.VM], iv)
		}
	}
	for name, vm := range first {
		l := live[name]
		if len(l) != 1 || l[0].Node != int(vm.Node) || l[0].Out != vm.OutPath {
			return fmt.Errorf("%s is assigned to node %d with %s; runners: %s", name, vm.Node, vm.OutPath, describe(l))
		}
	}
	for name, l := range live {
		if _, ok := first[name]; !ok {
			return fmt.Errorf("%s runs but is not assigned: %s", name, describe(l))
		}
	}
	return nil
}

func describe(l []interval) string {
	if len(l) == 0 {
		return "none"
	}
	var parts []string
	for _, iv := range l {
		parts = append(parts, fmt.Sprintf("node %d pid %d %s", iv.Node, iv.PID, iv.Out))
	}
	return strings.Join(parts, "; ")
}

// runnerAlive tells whether pid is still a runner (not gone, not a zombie,
// not reused by another program).
func runnerAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && strings.Contains(string(b), "microvm-run")
}

// leader asks every node and returns the leader most of them name (0: none).
func (r *run) leader(ctx context.Context) int {
	votes := map[uint64]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range r.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			if s, err := n.status(c); err == nil && s.Leader != 0 {
				mu.Lock()
				votes[s.Leader]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	best, bestN := uint64(0), 0
	for id, v := range votes {
		if v > bestN || v == bestN && id < best {
			best, bestN = id, v
		}
	}
	return int(best)
}

func (r *run) node(id int) *node { return r.nodes[id-1] }

// doFault injects f, holds it, heals it and waits until every node answers
// with one leader again.
func (r *run) doFault(ctx context.Context, f fault) {
	in, err := r.inject(ctx, f)
	if err != nil {
		r.violate("injecting fault #%d %s: %v", f.N, f.Kind, err)
		return
	}
	pause(ctx, f.Hold)
	if err := in.heal(); err != nil {
		r.violate("healing fault #%d %s: %v", f.N, f.Kind, err)
	}
	healed := boottime()
	r.mu.Lock()
	in.healed = healed
	for _, w := range in.windows {
		r.windows[w].End, r.windows[w].Ongoing = healed, false
	}
	for _, id := range in.targets {
		r.active[id]--
	}
	r.mu.Unlock()
	r.logf("fault #%d healed: %s", f.N, in.desc)
	err = poll(ctx, 60*time.Second, 200*time.Millisecond, func() error { return r.healthy(ctx) })
	in.recov = boottime()
	if err != nil {
		r.violate("the cluster did not recover within 60s of healing fault #%d %s: %v", f.N, in.desc, err)
	} else {
		if f.Kind == restartNewBin {
			r.checkAdopted(in)
		}
		in.leaderAfter = r.leader(ctx)
		r.logf("recovered %.1fs after the heal; leader %d (was %d)", float64(in.recov-healed)/1e9, in.leaderAfter, in.leaderBefore)
	}
	pause(ctx, f.Gap)
}

// healthy: every blixard runs and answers a linearizable read, and all name
// the same leader.
func (r *run) healthy(ctx context.Context) error {
	leaders := map[uint64]bool{}
	for _, n := range r.nodes {
		if n.pid() == 0 {
			return fmt.Errorf("node %d: blixard is not running", n.id)
		}
		c, cancel := context.WithTimeout(ctx, 2*time.Second)
		s, err := n.status(c)
		cancel()
		if err != nil {
			return fmt.Errorf("node %d: %w", n.id, err)
		}
		leaders[s.Leader] = true
	}
	if len(leaders) != 1 || leaders[0] {
		return fmt.Errorf("leaders named: %v", slices.Sorted(maps.Keys(leaders)))
	}
	return nil
}

func pick[T any](p uint64, from []T) T { return from[p%uint64(len(from))] }

func (r *run) ids() []int {
	var ids []int
	for _, n := range r.nodes {
		ids = append(ids, n.id)
	}
	return ids
}

// inject starts fault f and returns how to heal it.
func (r *run) inject(ctx context.Context, f fault) (*injection, error) {
	in := &injection{f: f}
	leader := r.leader(ctx)
	switch f.Kind {
	case partMinority, partLeader, leaderChange:
		// The cluster may be between leaders (a fault just healed, an
		// election after it): a fault aimed at the leader waits for one.
		for deadline := time.Now().Add(15 * time.Second); leader == 0 && time.Now().Before(deadline) && ctx.Err() == nil; {
			pause(ctx, 500*time.Millisecond)
			leader = r.leader(ctx)
		}
	}
	in.leaderBefore = leader
	switch f.Kind {
	case partMinority, partLeader, leaderChange:
		if leader == 0 {
			return nil, errors.New("no leader to aim at within 15s")
		}
	}
	all := r.ids()
	var followers []int
	for _, id := range all {
		if id != leader {
			followers = append(followers, id)
		}
	}
	switch f.Kind {
	case kill9:
		id := pick(f.Pick, all)
		in.targets, in.desc = []int{id}, fmt.Sprintf("kill -9 of blixard on node %d (runners keep running)", id)
		r.node(id).kill()
		in.heal = func() error { return r.startNode(r.node(id)) }
	case nodeKill:
		id := pick(f.Pick, all)
		in.targets, in.desc = []int{id}, fmt.Sprintf("kill -9 of node %d (blixard and its runners)", id)
		pids, err := r.net.Signal(id, syscall.SIGKILL)
		if err != nil {
			return nil, err
		}
		killedAt := boottime()
		r.node(id).kill()
		r.recordKilled(id, pids, killedAt)
		in.heal = func() error { return r.startNode(r.node(id)) }
	case freeze:
		id := pick(f.Pick, all)
		in.targets = []int{id}
		pids, err := r.net.Signal(id, syscall.SIGSTOP)
		if err != nil {
			return nil, err
		}
		in.desc = fmt.Sprintf("SIGSTOP of node %d (%d processes: blixard and its runners)", id, len(pids))
		if len(pids) == 1 {
			in.desc = fmt.Sprintf("SIGSTOP of node %d (blixard only: it runs no VM)", id)
		}
		in.heal = func() error {
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGCONT)
			}
			_, err := r.net.Signal(id, syscall.SIGCONT)
			return err
		}
	case partMinority, partLeader:
		id := leader
		what := "the leader"
		if f.Kind == partMinority {
			id, what = pick(f.Pick, followers), "a follower"
		}
		in.targets, in.desc = []int{id}, fmt.Sprintf("node %d (%s) cut from the others", id, what)
		if err := r.net.Isolate(id); err != nil {
			return nil, err
		}
		in.heal = r.net.HealAll
	case partMajority:
		a := pick(f.Pick, all)
		rest := slices.DeleteFunc(slices.Clone(all), func(x int) bool { return x == a })
		b := pick(f.Pick/7, rest)
		in.targets, in.desc = []int{a, b}, fmt.Sprintf("nodes %d and %d cut from each other (both reach the rest)", a, b)
		if err := r.net.Cut(a, b); err != nil {
			return nil, err
		}
		in.heal = r.net.HealAll
	case partOneWay:
		a := pick(f.Pick, all)
		rest := slices.DeleteFunc(slices.Clone(all), func(x int) bool { return x == a })
		b := pick(f.Pick/7, rest)
		in.targets, in.desc = []int{a, b}, fmt.Sprintf("packets from node %d to node %d dropped", a, b)
		if err := r.net.Block(a, b); err != nil {
			return nil, err
		}
		in.heal = r.net.HealAll
	case leaderChange:
		n := r.node(leader)
		pid := n.pid()
		if pid == 0 {
			return nil, fmt.Errorf("leader %d runs no blixard", leader)
		}
		in.targets, in.desc = []int{leader}, fmt.Sprintf("SIGSTOP of the leader's blixard (node %d) for %v", leader, f.Hold)
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			return nil, err
		}
		in.heal = func() error { return syscall.Kill(pid, syscall.SIGCONT) }
	case restartNewBin:
		id := pick(f.Pick, all)
		n := r.node(id)
		in.targets = []int{id}
		in.running = r.liveRunners(id)
		in.stopAt = boottime()
		if err := n.stop(); err != nil {
			r.violate("node %d: %v", id, err)
		}
		n.bin = 1 - n.bin
		in.desc = fmt.Sprintf("node %d stopped (SIGTERM), restarted with %s", id, filepath.Base(r.bins[n.bin]))
		in.heal = func() error { return r.startNode(n) }
	default:
		return nil, fmt.Errorf("unknown fault %q", f.Kind)
	}
	in.at = boottime()
	r.mu.Lock()
	for _, id := range in.targets {
		r.active[id]++
		r.windows = append(r.windows, window{Node: id, Kind: f.Kind, Fault: fmt.Sprintf("#%d %s", f.N, f.Kind), Start: in.at, Ongoing: true})
		in.windows = append(in.windows, len(r.windows)-1)
	}
	r.injected = append(r.injected, in)
	r.mu.Unlock()
	r.logf("fault #%d %s: %s, for %v", f.N, f.Kind, in.desc, f.Hold)
	return in, nil
}

// liveRunners lists node id's runners that run now.
func (r *run) liveRunners(id int) []interval {
	ivs, err := readRecords(r.recordsDir())
	if err != nil {
		r.violate("records: %v", err)
		return nil
	}
	var out []interval
	for _, iv := range ivs {
		if iv.Open && iv.Node == id && runnerAlive(iv.PID) {
			out = append(out, iv)
		}
	}
	return out
}

// checkAdopted: a graceful stop of blixard (SIGTERM) leaves its VMs
// running, and the next blixard adopts them; so no runner that ran when
// SIGTERM was sent stopped before the new blixard started.
func (r *run) checkAdopted(in *injection) {
	ivs, err := readRecords(r.recordsDir())
	if err != nil {
		r.violate("records: %v", err)
		return
	}
	for _, was := range in.running {
		for _, iv := range ivs {
			if iv.Node == was.Node && iv.PID == was.PID && iv.Start == was.Start && !iv.Open && iv.End >= in.stopAt && iv.End <= in.healed {
				r.violate("restart: %s (pid %d) on node %d ended (%s, %s) while blixard was stopped for %s; VMs must outlive the daemon",
					iv.VM, iv.PID, iv.Node, iv.EndHow, r.rel(iv.End), in.desc)
			}
		}
	}
}

// recordKilled writes a kill record for every runner of node id among pids.
func (r *run) recordKilled(id int, pids []int, at int64) {
	ivs, err := readRecords(r.recordsDir())
	if err != nil {
		r.violate("records: %v", err)
		return
	}
	var lines []string
	for _, iv := range ivs {
		if iv.Open && iv.Node == id && slices.Contains(pids, iv.PID) {
			lines = append(lines, fmt.Sprintf("killed %d %s %d %s", id, iv.VM, iv.PID, secs(at)))
		}
	}
	r.record(lines...)
}

// healAll undoes whatever is still in effect: blocks, stopped processes,
// nodes not running.
func (r *run) healAll() error {
	var errs []error
	errs = append(errs, r.net.HealAll())
	for _, n := range r.nodes {
		_, err := r.net.Signal(n.id, syscall.SIGCONT)
		errs = append(errs, err)
		if n.pid() == 0 {
			errs = append(errs, r.startNode(n))
		}
	}
	return errors.Join(errs...)
}

// reader reads node n's /v1/status in a loop and records each answer.
func (r *run) reader(ctx context.Context, n *node) {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		call := boottime()
		s, err := n.status(ctx)
		ret := boottime()
		if err == nil {
			o := op{Client: n.id, Call: call, Return: ret}
			if s.Revision != nil {
				o.Rev, o.Commit = s.Revision.ID, s.Revision.Commit
			}
			r.ops.add(o)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// pusher runs the schedule's pushes.
func (r *run) pusher(ctx context.Context) {
	for _, p := range r.sched.Pushes {
		pause(ctx, time.Duration(r.tf+int64(p.At)-boottime()))
		if ctx.Err() != nil {
			return
		}
		flake, what := "", ""
		if p.Broken {
			flake, what = brokenFlake(p.N), "a flake that does not evaluate"
		} else {
			for _, vm := range p.Bump {
				r.versions[vm]++
			}
			flake, what = clusterFlake(r.versions), "new runners for "+strings.Join(p.Bump, ", ")
		}
		call := boottime()
		commit, err := r.repo.push(flake, fmt.Sprintf("push %d", p.N))
		ret := boottime()
		if err != nil {
			r.violate("push #%d: %v", p.N, err)
			continue
		}
		r.ops.add(op{Push: true, Index: p.N, Commit: commit, Broken: p.Broken, Call: call, Return: ret})
		r.mu.Lock()
		if p.Broken {
			r.broken[commit] = true
		} else {
			r.lastGood = commit
		}
		r.lastPushAt = ret
		r.pushed++
		r.mu.Unlock()
		r.logf("push #%d %.12s: %s", p.N, commit, what)
	}
}

// operator readies a node the leader marked down once it runs again, no
// fault is in effect on it and its heartbeats move again (`blixard nodes`,
// then `blixard node ready ID`): readied earlier, the leader would mark it
// down again at once, its heartbeat still old.
func (r *run) operator(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	beats := map[uint64]uint64{} // heartbeats seen at the previous look
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, via := range r.nodes {
			c, cancel := context.WithTimeout(ctx, 3*time.Second)
			views, err := via.nodes(c)
			cancel()
			if err != nil {
				continue
			}
			for _, v := range views {
				prev, seen := beats[v.ID]
				beats[v.ID] = v.Heartbeats
				r.mu.Lock()
				busy := r.active[int(v.ID)] > 0
				r.mu.Unlock()
				if v.State != replicated.NodeDown || busy || r.node(int(v.ID)).pid() == 0 || !seen || v.Heartbeats <= prev {
					continue
				}
				c, cancel := context.WithTimeout(ctx, 15*time.Second)
				err := via.setReady(c, int(v.ID))
				cancel()
				if err == nil {
					r.mu.Lock()
					r.readied++
					r.mu.Unlock()
					r.logf("operator: node %d was down and heartbeats again; `blixard node ready %d` via node %d", v.ID, v.ID, via.id)
				}
			}
			break
		}
	}
}

// monitor checks the invariants while the faults happen: runners that
// vanished, overlaps beyond the bound, stale reads, histories, and blixard
// processes that died on their own.
func (r *run) monitor(ctx context.Context) {
	// Runners killed with SIGKILL (by the harness, or by a fencing agent)
	// leave no stop record: an exit watcher (pidfd) records their end as it
	// happens; this loop starts one for every new runner every 100 ms, and
	// records those that ended before it could, and does the rest every
	// second.
	exits := newExitWatcher(func(line string) { r.record(line) }, runnerAlive)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := boottime()
		ivs, err := readRecords(r.recordsDir())
		if err != nil {
			r.violate("records: %v", err)
			continue
		}
		var gone []string
		for _, iv := range ivs {
			switch {
			case !iv.Open:
			case runnerAlive(iv.PID):
				exits.watch(ctx, iv)
			default:
				gone = append(gone, fmt.Sprintf("gone %d %s %d %s", iv.Node, iv.VM, iv.PID, secs(now)))
			}
		}
		r.record(gone...)
		if i%10 != 0 {
			continue
		}
		r.judgeOverlaps(ivs, now, false)
		for _, n := range r.nodes {
			if err, ok := n.exited(); ok {
				r.violate("blixard on node %d exited on its own: %v (see %s)", n.id, err, n.logPath)
			}
		}
		if i%30 == 0 {
			for _, bad := range quickCheck(r.ops.snapshot(), r.rel) {
				r.violate("linearizability: %s", bad)
			}
		}
		if i%50 == 0 {
			r.checkHistories(ctx)
		}
	}
}

// judgeOverlaps records every overlap and a violation for each one the
// bound does not allow (final: nothing is pending any more).
func (r *run) judgeOverlaps(ivs []interval, now int64, final bool) {
	r.mu.Lock()
	windows := slices.Clone(r.windows)
	r.mu.Unlock()
	for _, o := range findOverlaps(ivs, now) {
		key := fmt.Sprintf("%s %d/%d %d/%d", o.VM, o.A.Node, o.A.PID, o.B.Node, o.B.PID)
		r.mu.Lock()
		r.overlapSeen[key] = o
		r.mu.Unlock()
		v := judge(o, windows, r.cfg.Grace, r.cfg.Strict, now)
		if !v.Allowed && (final || !v.Pending) {
			r.violate("one copy: %s ran on node %d (pid %d) and node %d (pid %d) at once from %s for %.1fs: %s",
				o.VM, o.A.Node, o.A.PID, o.B.Node, o.B.PID, r.rel(o.Start), o.Duration().Seconds(), v.Why)
		}
	}
}

// checkHistories reads every node's history and checks it.
func (r *run) checkHistories(ctx context.Context) {
	reads := r.ops.snapshot()
	for _, n := range r.nodes {
		c, cancel := context.WithTimeout(ctx, 3*time.Second)
		call := boottime()
		h, err := n.history(c)
		ret := boottime()
		cancel()
		if err != nil {
			continue
		}
		r.mu.Lock()
		broken := maps.Clone(r.broken)
		bad := checkHistory(histObs{Node: n.id, Call: call, Return: ret, H: h}, reads, r.known, broken, r.rel)
		r.histories++
		r.mu.Unlock()
		for _, b := range bad {
			r.violate("history: %s", b)
		}
	}
}

// finalChecks runs the checks that need the whole run: overlaps with
// nothing pending, the histories once more, porcupine.
func (r *run) finalChecks(ctx context.Context, sum *summary) {
	now := boottime()
	ivs, err := readRecords(r.recordsDir())
	if err != nil {
		r.violate("records: %v", err)
	}
	// Runners still alive at the end are the converged ones: they end now.
	r.judgeOverlaps(ivs, now, true)
	r.mu.Lock()
	windows := slices.Clone(r.windows)
	r.mu.Unlock()
	sum.fencing = measureFencing(ivs, windows, r.cfg.Lease)
	for _, s := range sum.fencing.Survived {
		r.violate("self-fencing: %s, held longer than the lease (%v) + %v", s, r.cfg.Lease, fenceSlack)
	}
	r.checkHistories(ctx)
	ops := r.ops.snapshot()
	for _, bad := range quickCheck(ops, r.rel) {
		r.violate("linearizability: %s", bad)
	}
	start := time.Now()
	res, err := checkLinearizable(ops, 2*time.Minute, filepath.Join(r.dir, "linearizability.html"))
	sum.porcupine, sum.porcupineTook = res, time.Since(start)
	if err != nil {
		r.violate("porcupine visualization: %v", err)
	}
	switch res {
	case porcupine.Illegal:
		r.violate("linearizability: porcupine found the reads and pushes not linearizable (see %s)", filepath.Join(r.dir, "linearizability.html"))
	case porcupine.Unknown:
		r.logf("porcupine timed out after %v (the pairwise check above still ran)", sum.porcupineTook.Round(time.Millisecond))
	}
	for _, o := range ops {
		if o.Push {
			sum.pushes++
			if o.Broken {
				sum.brokenPushes++
			}
		} else {
			sum.reads++
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	sum.injected = slices.Clone(r.injected)
	sum.histories, sum.revisions, sum.readied = r.histories, len(r.known), r.readied
	for _, o := range r.overlapSeen {
		v := judge(o, r.windows, r.cfg.Grace, r.cfg.Strict, now)
		sum.overlaps = append(sum.overlaps, judged{o, v})
	}
	slices.SortFunc(sum.overlaps, func(a, b judged) int { return cmpInt64(a.o.Start, b.o.Start) })
	sum.rel = r.rel
}
