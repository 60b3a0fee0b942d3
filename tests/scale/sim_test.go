package scale

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blixard/blixard/agentlink"
	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/replicated"
)

// memBackend is a nodeagent.Backend whose VMs run nowhere: Start records
// the unit active on the out path STATE/NAME/current points at, Stop and
// Kill record it stopped. Nothing crashes, so it sends no events. It is
// what makes a thousand agents fit in one process; everything above it
// (Decide, the executor, the records, the heartbeats) is the real agent.
type memBackend struct {
	stateDir string

	mu     sync.Mutex
	units  map[string]nodeagent.UnitStatus // guarded by mu
	events chan string                     // never sent on
	ran    atomic.Bool
}

var _ nodeagent.Backend = (*memBackend)(nil)

func newMemBackend(stateDir string) *memBackend {
	return &memBackend{stateDir: stateDir, units: map[string]nodeagent.UnitStatus{}, events: make(chan string)}
}

func (b *memBackend) Run(ctx context.Context) error {
	b.ran.Store(true)
	<-ctx.Done()
	return nil
}

func (b *memBackend) Start(_ context.Context, name string) error {
	cur, err := os.Readlink(filepath.Join(b.stateDir, name, "current"))
	if err != nil {
		return fmt.Errorf("memBackend: start %s: %w", name, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if u := b.units[name]; u.Active {
		return nil
	}
	b.units[name] = nodeagent.UnitStatus{Active: true, PID: 1, Booted: cur}
	return nil
}

func (b *memBackend) stop(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.units, name)
}

func (b *memBackend) Stop(_ context.Context, name string) error { b.stop(name); return nil }
func (b *memBackend) Kill(_ context.Context, name string) error { b.stop(name); return nil }

func (b *memBackend) Restart(ctx context.Context, name string) error {
	b.stop(name)
	return b.Start(ctx, name)
}

func (b *memBackend) Status(name string) (nodeagent.UnitStatus, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.units[name], nil
}

func (b *memBackend) List() ([]string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]string, 0, len(b.units))
	for n := range b.units {
		out = append(out, n)
	}
	sort.Strings(out)
	return out, nil
}

func (b *memBackend) Events() <-chan string { return b.events }

// traffic counts the heartbeats the simulated agents commit: entries and
// the bytes of their Raft payload (the encoded command), in full and
// liveness-only.
type traffic struct {
	full, live           atomic.Int64
	fullBytes, liveBytes atomic.Int64
	failed               atomic.Int64
}

func (c *traffic) snapshot() trafficSample {
	return trafficSample{at: time.Now(), full: c.full.Load(), live: c.live.Load(),
		fullBytes: c.fullBytes.Load(), liveBytes: c.liveBytes.Load(), failed: c.failed.Load()}
}

// running counts, per node, the instances running in the report Raft
// holds for it, as the heartbeats' answers tell the agents
// (Result.StatusSeq: the seq of the full report whose statuses the state
// holds, after a full or a liveness-only heartbeat). A full report's
// count is noted when it is sent, so any later answer naming it counts,
// also when its own answer was lost (a timeout under load).
type running struct {
	mu      sync.Mutex
	sent    map[uint64]map[uint64]int // node → seq of a full report → its running instances
	seq     map[uint64]uint64         // node → seq of the report counted
	n       map[uint64]int            // node → running instances in it
	total   int
	reached map[int]time.Time // total → when it was first reached
}

func newRunning() *running {
	return &running{sent: map[uint64]map[uint64]int{}, seq: map[uint64]uint64{}, n: map[uint64]int{}, reached: map[int]time.Time{}}
}

// send notes a full heartbeat about to be proposed.
func (r *running) send(hb *replicated.NodeHeartbeat) {
	if hb.Unchanged != 0 {
		return
	}
	n := 0
	for _, st := range hb.Statuses {
		if st.Phase == replicated.PhaseRunning {
			n++
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sent[hb.ID] == nil {
		r.sent[hb.ID] = map[uint64]int{}
	}
	r.sent[hb.ID][hb.Seq] = n
}

// report takes the result of a committed heartbeat of node id.
func (r *running) report(id uint64, res replicated.Result) {
	if !res.OK() || res.StatusSeq == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	n, ok := r.sent[id][res.StatusSeq]
	if !ok || res.StatusSeq <= r.seq[id] {
		return // not sent by this process, or an older report answered late
	}
	for seq := range r.sent[id] {
		if seq < res.StatusSeq {
			delete(r.sent[id], seq) // Raft holds a newer report: never again
		}
	}
	r.seq[id] = res.StatusSeq
	r.total += n - r.n[id]
	r.n[id] = n
	if _, ok := r.reached[r.total]; !ok {
		r.reached[r.total] = time.Now()
	}
}

// count returns the running instances and when m (or more: a moving
// instance may count on two nodes for a moment) were first reached (zero:
// not yet).
func (r *running) count(m int) (int, time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var first time.Time
	for n, at := range r.reached {
		if n >= m && (first.IsZero() || at.Before(first)) {
			first = at
		}
	}
	return r.total, first
}

type trafficSample struct {
	at                   time.Time
	full, live           int64
	fullBytes, liveBytes int64
	failed               int64
}

// countingProposer is the agent's Proposer: the link, counting heartbeats
// and the running instances they report.
type countingProposer struct {
	link *agentlink.Client
	c    *traffic
	r    *running
}

func (p countingProposer) Propose(ctx context.Context, cmd replicated.Command) (replicated.Result, error) {
	if cmd.Type == replicated.CmdNodeHeartbeat {
		p.r.send(cmd.NodeHeartbeat)
	}
	res, err := p.link.Propose(ctx, cmd)
	if cmd.Type != replicated.CmdNodeHeartbeat {
		return res, err
	}
	if err != nil {
		p.c.failed.Add(1)
		return res, err
	}
	p.r.report(cmd.NodeHeartbeat.ID, res)
	cmd.V = 0 // as the server proposes it: the oldest version that carries it
	data, encErr := replicated.EncodeCommand(cmd)
	if encErr != nil {
		return res, err
	}
	if cmd.NodeHeartbeat.Unchanged != 0 {
		p.c.live.Add(1)
		p.c.liveBytes.Add(int64(len(data)))
	} else {
		p.c.full.Add(1)
		p.c.fullBytes.Add(int64(len(data)))
	}
	return res, err
}

// simNode is one simulated agent-only node: a real nodeagent.Agent over
// agentlink, with a memBackend.
type simNode struct {
	id    uint64
	link  *agentlink.Client
	agent *nodeagent.Agent
}

// simCluster runs n simulated nodes (ids first … first+n-1), each offering
// capacity for perNode light VMs (1 vCPU, 64 MiB).
type simCluster struct {
	nodes   []*simNode
	traffic *traffic
	running *running
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	errs    chan error
}

// startSimNodes registers and starts n simulated nodes against servers
// (their API addresses) and stops them when the test ends. It returns once
// every node is registered and its link has its first view.
func startSimNodes(t testing.TB, servers []string, first uint64, n, perNode int, heartbeat time.Duration) *simCluster {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &simCluster{traffic: &traffic{}, running: newRunning(), cancel: cancel, errs: make(chan error, 2*n)}
	t.Cleanup(c.stop)
	root := t.TempDir()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	// Every node registers first, a few at a time, before any link polls:
	// each registration changes every node's view (the nodes part), so
	// agents polling while 1,000 nodes register would download the growing
	// node list ~N²/2 times — a bring-up storm that starves the servers
	// and this process (seen at N = 1,000: registrations slowed to one
	// every few seconds), and not what this harness measures. Then every
	// link starts, and each agent once its first view arrived.
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	var upErr atomic.Value
	fail := func(err error) { upErr.CompareAndSwap(nil, err) }
	for i := range n {
		id := first + uint64(i)
		// The same list for every node, as an operator gives it: the
		// links spread themselves over the servers by node ID (all 1,000
		// on one server would hold more connections than its API's cap
		// of 1,024, and requests beyond it wait for a free one).
		link, err := agentlink.New(agentlink.Options{Servers: servers, NodeID: id, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		sn := &simNode{id: id, link: link}
		c.nodes = append(c.nodes, sn)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := register(ctx, sn, sem, perNode); err != nil {
				fail(err)
			}
		}()
	}
	wg.Wait()
	if err, _ := upErr.Load().(error); err != nil {
		t.Fatal(err)
	}
	for _, sn := range c.nodes {
		c.wg.Go(func() {
			if err := sn.link.Run(ctx); err != nil && ctx.Err() == nil {
				c.errs <- fmt.Errorf("node %d: agentlink: %w", sn.id, err)
			}
		})
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.startAgent(ctx, sn, root, heartbeat, log); err != nil {
				fail(err)
			}
		}()
	}
	wg.Wait()
	if err, _ := upErr.Load().(error); err != nil {
		t.Fatal(err)
	}
	return c
}

// register proposes sn's RegisterNode (through its link, which need not
// run for that) with room for perNode light VMs.
func register(ctx context.Context, sn *simNode, sem chan struct{}, perNode int) error {
	sem <- struct{}{}
	defer func() { <-sem }()
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	res, err := sn.link.Propose(rctx, replicated.Command{Type: replicated.CmdRegisterNode, At: time.Now(),
		RegisterNode: &replicated.RegisterNode{ID: sn.id, Capacity: replicated.Resources{VCPU: perNode, MemMiB: 64 * perNode}}})
	if err == nil {
		err = res.Err()
	}
	if err != nil {
		return fmt.Errorf("registering node %d: %w", sn.id, err)
	}
	return nil
}

// startAgent waits for sn's first view and starts its agent.
func (c *simCluster) startAgent(ctx context.Context, sn *simNode, root string, heartbeat time.Duration, log *slog.Logger) error {
	select {
	case <-sn.link.Ready():
	case <-time.After(2 * time.Minute):
		return fmt.Errorf("node %d: no view from the servers after 2 minutes", sn.id)
	}
	stateDir := filepath.Join(root, fmt.Sprint(sn.id))
	sn.agent = nodeagent.New(nodeagent.Options{
		NodeID: sn.id, StateDir: stateDir, State: sn.link, Proposer: countingProposer{link: sn.link, c: c.traffic, r: c.running},
		Backend: newMemBackend(stateDir), Heartbeat: heartbeat,
		// The resync of a real agent is 1 s; a thousand agents in this
		// process resyncing every second would cost the servers' CPU on
		// a small machine. They act on every view change at once anyway.
		Interval: 5 * time.Second,
		Realise:  func(context.Context, string) error { return nil }, // the runner "is" in the store
		Logger:   log,
	})
	c.wg.Go(func() {
		if err := sn.agent.Start(ctx); err != nil && ctx.Err() == nil {
			c.errs <- fmt.Errorf("node %d: agent: %w", sn.id, err)
		}
	})
	// The link says when the node's view changed: a new plan is acted on
	// at once, not at the agent's next resync.
	c.wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-sn.link.Changed():
				sn.agent.Notify()
			}
		}
	})
	return nil
}

func (c *simCluster) stop() {
	c.cancel()
	c.wg.Wait()
}

// err returns the first error a node's link or agent stopped with.
func (c *simCluster) err() error {
	select {
	case err := <-c.errs:
		return err
	default:
		return nil
	}
}
