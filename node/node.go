package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/gitsync"
	"github.com/blixard/blixard/metrics"
	"github.com/blixard/blixard/nixeval"
	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/raftstore"
	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/volumes"
)

// Run runs the node cfg describes until ctx ends, then stops every part
// and returns nil; it returns an error when the node cannot start (a taken
// port, a host without the systemd template, no quorum before ctx ends) or
// when a part fails (the agent's backend, the API server).
//
// The steps, in order:
//
//  1. Check cfg; bind the API (a taken port fails before Raft starts), load
//     the TLS files (a wrong one is named before Raft starts) and make the
//     backend (a host without microvm@.service is told so before the node
//     joins).
//  2. Start the Raft replica (it returns once the shard has a leader).
//  3. Connect to Ceph (when configured) for the node's client addresses.
//  4. Serve the API, then register the node (capacity, labels, addresses)
//     until that is committed.
//  5. Tell systemd READY=1 and call OnReady.
//  6. Run the agent (or the control-plane-only heartbeat), the reconciler,
//     the notifier (with receivers; it sends while the node leads) and the
//     working tree's watcher until ctx ends.
//
// Every resource is closed by Run itself after all goroutines returned:
// the agent stops (and with StopOnExit stops the VMs and detaches their
// volumes) before the Ceph client closes, and the replica closes last.
func Run(ctx context.Context, cfg Config) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		if cfg.APIListener != nil {
			cfg.APIListener.Close()
		}
		return err
	}
	log := cfg.Logger.With("node", cfg.NodeID)
	ln := cfg.APIListener
	if ln == nil {
		if ln, err = net.Listen("tcp", cfg.APIAddr); err != nil {
			return fmt.Errorf("--api-addr %s (is another blixard running? pick another address): %w", cfg.APIAddr, err)
		}
	}
	defer ln.Close()
	var tlsCfg apiTLS
	if !cfg.Insecure {
		if tlsCfg, err = loadAPITLS(cfg.TLS, cfg.NodeID, advertisedAPI(ln.Addr().String(), cfg.APIAddr)); err != nil {
			return err
		}
	}
	if err := checkCephFiles(cfg.Ceph); err != nil {
		return err
	}
	notifyOpts, notifying, err := cfg.Notify.options(log)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return fmt.Errorf("creating --data-dir: %w", err)
	}
	if cfg.RaftAddr == "" && !cfg.AgentOnly {
		if cfg.RaftAddr, err = stableRaftAddr(cfg.DataDir); err != nil {
			return err
		}
		cfg.Members = map[uint64]string{cfg.NodeID: cfg.RaftAddr}
	}

	// The network's host side is checked (netlink rights, dnsmasq, the
	// ingress port, nftables) before the node joins, like the API port.
	var nw *network
	if cfg.Network.Enable {
		if cfg.Network, err = cfg.Network.withDefaults(cfg.DataDir, cfg.RaftAddr); err != nil {
			return err
		}
		if nw, err = newNetwork(cfg, log); err != nil {
			return err
		}
		// Closed after the goroutines below returned: it removes the
		// masquerade, and the proxies have closed their listeners.
		defer nw.Close()
	}

	// The binary cache's port and key, like the API's port, before the
	// node joins.
	sh, err := newSharing(cfg, log)
	if err != nil {
		return err
	}
	defer sh.close()

	backend, err := newBackend(ctx, cfg, log)
	if err != nil {
		return err
	}
	if sb, ok := backend.(*nodeagent.SystemdBackend); ok {
		// The agent's backend Run closes the connection too; Close is for
		// when the agent never ran, and a no-op otherwise.
		defer sb.Close()
	}

	if risk := cfg.LeaseRisk(); risk != "" {
		log.Warn(risk)
	}
	if cfg.AgentOnly {
		// No replica: the same parts, fed from the servers (agentonly.go).
		return runAgentOnly(ctx, cfg, ln, tlsCfg, nw, sh, backend, log)
	}
	onApply, applied := appliedSignal()
	rc := cfg.Raft.raftConfig()
	rc.NodeID, rc.RaftAddr, rc.DataDir = cfg.NodeID, cfg.RaftAddr, filepath.Join(cfg.DataDir, "raft")
	rc.Members, rc.Join, rc.NonVoting, rc.LogDB = cfg.Members, cfg.Join, cfg.NonVoting, cfg.LogDB
	rc.QuietRaftLog, rc.Logger, rc.OnApply, rc.TLS = cfg.QuietRaftLog, log, onApply, cfg.TLS
	store, err := raftstore.Start(ctx, rc)
	if errors.Is(err, raftstore.ErrDataLost) {
		// The node cannot rejoin under its id, and the leader moves its VMs
		// once it is marked down: the copies here must not run on beside them.
		killOrphans(ctx, backend, log)
	}
	if err != nil {
		return fmt.Errorf("starting the Raft replica in %s: %w", cfg.DataDir, err)
	}
	defer store.Close()
	store.SetHeartbeatInterval(cfg.Heartbeat)
	// One registry per node: the parts report to it, /metrics serves it.
	m := metrics.New(metrics.Options{Replica: store, Raft: store})

	// Ceph: the node's client addresses are registered so the cluster can
	// fence them; the agent attaches VM volumes through the same client.
	var (
		vols      *volumes.Manager
		cephAddrs []string
	)
	if cfg.Ceph != nil {
		vols = volumes.NewManager(*cfg.Ceph, nil, log.With("component", "volumes"))
		// Closed after the goroutines below returned (defers run last in,
		// first out): the agent may still detach volumes on its way out.
		defer vols.Close(context.WithoutCancel(ctx))
		if cephAddrs, err = vols.Addrs(ctx); err != nil {
			log.Warn("cannot reach Ceph yet; registering without client addresses (VMs with volumes will fail until it is reachable)", "err", err)
		}
	}

	// The function gateway serves on the ingress listener, beside ingress.
	var fns *functions
	var gatewayAddr string
	if nw != nil && nw.ingressL != nil {
		fns = newFunctions(cfg.NodeID, store, m, log)
		fns.carryPlan = true // a replica: it plans from its own state
		// Before the API serves: agent-only nodes' scale-outs use them too.
		fns.ahead, fns.agents = newSpeculation(cfg.NodeID, log), newAgentGuesses()
		nw.front = fns.frontDoor(nw.ingress)
		if gatewayAddr, err = nw.gatewayAddr(cfg.RaftAddr); err != nil {
			return err
		}
	}
	p, err := newParts(cfg, rc, store, vols, backend, tlsCfg, fns, m, log)
	if err != nil {
		return err
	}
	if fns != nil && p.rec != nil {
		fns.trigger = p.rec.Wake
	}
	if fns != nil {
		fns.agents.setWake(p.api.WakeAgentViews)
	}

	g := newGroup(ctx)
	defer g.Wait()
	ctx = g.ctx
	g.Go("API server", func(ctx context.Context) error { return p.api.Serve(ctx, ln) })
	g.Go("quorum watch", store.WatchQuorum)

	reg := replicated.Command{Type: replicated.CmdRegisterNode, RegisterNode: &replicated.RegisterNode{
		ID: cfg.NodeID, RaftAddr: cfg.RaftAddr, APIAddr: advertisedAPI(ln.Addr().String(), cfg.APIAddr),
		Capacity: cfg.Capacity, Labels: cfg.Labels, CephAddrs: cephAddrs, Ceph: cfg.Ceph != nil, GatewayAddr: gatewayAddr,
	}}
	sh.register(reg.RegisterNode)
	if _, err := store.ProposeOK(ctx, reg, time.Now); err != nil {
		if ctx.Err() != nil {
			return g.Wait() // stopped while starting
		}
		return fmt.Errorf("registering node %d: %w", cfg.NodeID, err)
	}
	notifyReady(g, log, fmt.Sprintf("node %d serving API on %s", cfg.NodeID, ln.Addr()))
	log.Info("node registered", "raft", cfg.RaftAddr, "api", ln.Addr().String(),
		"vcpu", cfg.Capacity.VCPU, "memMiB", cfg.Capacity.MemMiB, "labels", cfg.Labels)
	if cfg.OnReady != nil {
		cfg.OnReady(ln.Addr())
	}

	// The agent and the network read the replica with the instances this
	// node's scale-outs start ahead of their commit (speculate.go).
	var nodeSt nodeState = store
	ao := p.agentOptions(ctx, cfg, store, backend, vols, log)
	if fns != nil {
		nodeSt = speculativeState{nodeState: store, sp: fns.ahead}
		ao.State, ao.OnPhase = nodeSt, fns.ahead.phase
	}
	notify := startNodeParts(g, cfg, ao, nw, fns, sh, nodeSt, store)
	// Waiting `events -f` polls and the notifier (when it has receivers)
	// look at every applied entry too.
	wakeNotifier, err := startNotifier(g, notifyOpts, notifying, store, m.Registerer())
	if err != nil {
		return err
	}
	woken := notify
	notify = func() { woken(); p.api.Applied(); wakeNotifier() }
	g.Go("", func(ctx context.Context) error {
		forwardApplied(ctx, applied, notify, store, onState(ctx, cfg, vols, log))
		return nil
	})
	if p.rec != nil {
		g.Go("reconciler", p.rec.Start)
	} else {
		log.Warn("no --repo given: this node replicates state but never proposes plans")
	}
	if p.worktree != nil {
		g.Go("", func(ctx context.Context) error {
			if err := p.worktree.Watch(ctx, cfg.Source.Debounce, p.rec.Trigger); err != nil {
				log.Warn("file watching stopped; changes are picked up at every poll instead", "every", cfg.Poll, "err", err)
			}
			return nil
		})
	}
	<-ctx.Done()
	log.Info("shutting down")
	return g.Wait()
}

// parts are the node's pieces that follow from its source.
type parts struct {
	rec      *reconciler.Reconciler // nil without a source
	mirror   *gitsync.Mirror        // nil unless following a repository
	worktree *gitsync.Worktree      // nil unless following a working tree
	builder  nodeagent.Builder      // nil without a source
	api      *api.Server
	metrics  *metrics.Metrics
}

func newParts(cfg Config, rc raftstore.Config, store *raftstore.Store, vols *volumes.Manager, backend nodeagent.Backend, tlsCfg apiTLS,
	fns *functions, m *metrics.Metrics, log *slog.Logger) (*parts, error) {
	p := &parts{metrics: m}
	ev := nixeval.New(nixeval.Options{Timeout: cfg.EvalTimeout, MaxMemory: cfg.Eval.MaxMemory,
		User: cfg.Eval.User, Store: cfg.Eval.Store, Logger: log})
	recOpts := reconciler.Options{Store: store, Ref: cfg.Source.Ref, Poll: cfg.Poll, FetchTimeout: cfg.FetchTimeout,
		NodeTimeout: cfg.NodeTimeout, Metrics: m, Logger: log}
	if vols != nil {
		f := fencer{volumes.NewFencer(vols, 0)}
		recOpts.Fencer, recOpts.Unfencer = f, f
	}
	// Reads wait a heartbeat period for a quorum, then answer from the
	// local replica. Every node proposes a heartbeat each period, so a
	// replica that applies nothing for three of them and a leader change
	// is unhealthy.
	apiOpts := api.Options{Replica: store, WebhookSecret: cfg.WebhookSecret, Logger: log.With("component", "api"), Metrics: m.Gatherer(),
		TLS: tlsCfg.server, PeerTLS: tlsCfg.peer, Insecure: cfg.Insecure,
		Health: store, ReadWait: rc.ReadWait(), StalledAfter: 3*cfg.Heartbeat + 2*rc.ElectionTimeout()}
	if backend != nil {
		apiOpts.Logs = consoleLogs{backend: backend, stateDir: cfg.StateDir}
	}
	if fns != nil {
		apiOpts.Functions, apiOpts.ScaleOuts, apiOpts.AgentAhead = fns, fns, fns.agents
	}
	switch {
	case cfg.Source.Repo != "":
		m, err := gitsync.New(gitsync.Options{URL: cfg.Source.Repo, Dir: filepath.Join(cfg.DataDir, "mirror"), Ref: cfg.Source.Ref,
			SSHKeyFile: cfg.Source.SSHKeyFile, SSHKnownHostsFile: cfg.Source.SSHKnownHostsFile,
			HTTPTokenFile: cfg.Source.HTTPTokenFile, HTTPUsername: cfg.Source.HTTPUsername, Logger: log})
		if err != nil {
			return nil, fmt.Errorf("--repo: %w", err)
		}
		if err := m.CheckCredentials(); err != nil {
			return nil, err
		}
		p.mirror = m
		recOpts.Source = source{m}
		recOpts.Evaluator = evaluator{ev: ev, attr: cfg.Attr, flakeRef: m.FlakeURL}
		apiOpts.Source, apiOpts.Evaluator = recOpts.Source, recOpts.Evaluator
		if len(cfg.Source.Trust) > 0 {
			trust, err := gitsync.LoadTrust(cfg.Source.Trust...)
			if err != nil {
				return nil, fmt.Errorf("--trust: %w", err)
			}
			log.Info("evaluating only signed commits", "trust", trust.String())
			for _, w := range trust.Warnings() {
				log.Warn("--trust", "warning", w)
			}
			v := gitsync.NewVerifier(m.Dir(), trust)
			// Set only with trust: a nil *Verifier in the interface is not nil.
			recOpts.Verifier = v
			apiOpts.Evaluator = reconciler.VerifyFirst(v, recOpts.Evaluator)
		}
	case cfg.Source.Worktree != "":
		w, err := gitsync.NewWorktree(cfg.Source.Worktree, log)
		if err != nil {
			return nil, err
		}
		p.worktree = w
		ref := w.FlakeURL()
		recOpts.Source = source{w}
		recOpts.Ref = "worktree"
		recOpts.Evaluator = evaluator{ev: ev, attr: cfg.Attr, flakeRef: func(string) string { return ref }}
		p.builder = nodeagent.FlakeBuilder{Attr: cfg.Attr, FlakeURL: func(string) (string, error) { return ref, nil }}
	}
	if recOpts.Source != nil {
		p.rec = reconciler.New(recOpts)
		apiOpts.Reconciler = p.rec
	}
	p.api = api.NewServer(apiOpts)
	return p, nil
}

// agentOptions configures the agent: a converging one with a backend, a
// heartbeat-only one without.
func (p *parts) agentOptions(ctx context.Context, cfg Config, store *raftstore.Store, backend nodeagent.Backend,
	vols *volumes.Manager, log *slog.Logger) nodeagent.Options {
	o := nodeagent.Options{NodeID: cfg.NodeID, State: store, Proposer: store, Heartbeat: cfg.Heartbeat, Metrics: p.metrics, OnBuild: cfg.OnBuild,
		Logger: log.With("component", "agent")}
	if vols != nil {
		// Also without VMs: the heartbeat reports the node's Ceph client
		// addresses, which the leader fences and later un-fences.
		o.Volumes = vols
	}
	// Also without a backend: a builder node's prebuilder builds from the
	// flake (see CacheConfig.Builder).
	o.Builder = p.builder
	if p.mirror != nil {
		o.Builder = mirrorBuilder(ctx, p.mirror, cfg.Attr)
	}
	if backend == nil {
		o.ControlPlaneOnly = true
		return o
	}
	o.StateDir, o.Backend, o.StopOnExit = cfg.StateDir, backend, cfg.StopOnExit
	o.Lease = cfg.Lease // withDefaults derived it from NodeTimeout
	return o
}

// onState is what runs on every applied state: cfg.OnState, and with Ceph
// the rejoiner that replaces a fenced client once the node is readied.
func onState(ctx context.Context, cfg Config, vols *volumes.Manager, log *slog.Logger) func(*replicated.State) {
	if vols == nil {
		return cfg.OnState
	}
	r := &rejoiner{id: cfg.NodeID, vols: vols, every: max(cfg.Heartbeat, time.Second), log: log.With("component", "volumes")}
	return func(s *replicated.State) {
		r.observe(ctx, s)
		if cfg.OnState != nil {
			cfg.OnState(s)
		}
	}
}

// newBackend makes the VM backend (nil for BackendNone).
func newBackend(ctx context.Context, cfg Config, log *slog.Logger) (nodeagent.Backend, error) {
	blog := log.With("component", "backend")
	switch cfg.Backend {
	case BackendSystemd:
		sb, err := nodeagent.NewSystemdBackend(ctx, nodeagent.SystemdOptions{StateDir: cfg.StateDir, Logger: blog})
		if err != nil {
			return nil, fmt.Errorf("--backend systemd: %w", err)
		}
		return sb, nil
	case BackendProcess:
		return nodeagent.NewProcessBackend(nodeagent.ProcessOptions{
			StateDir: cfg.StateDir, RestartBackoff: cfg.RestartBackoff, Logger: blog,
		}), nil
	}
	return nil, nil
}

// appliedSignal returns a replica OnApply hook and the channel it signals
// (coalesced, never blocking Raft's apply loop).
func appliedSignal() (func(uint64), <-chan struct{}) {
	ch := make(chan struct{}, 1)
	return func(uint64) {
		select {
		case ch <- struct{}{}:
		default:
		}
	}, ch
}

// forwardApplied wakes the agent for every applied-entry signal, so it acts
// on a new plan at once rather than at its resync, and hands the local
// state to onState (when set), until ctx ends.
func forwardApplied(ctx context.Context, applied <-chan struct{}, notify func(), store *raftstore.Store, onState func(*replicated.State)) {
	report := func() {
		if onState == nil {
			return
		}
		if s, err := store.LocalRead(); err == nil {
			onState(s)
		}
	}
	report()
	for {
		select {
		case <-ctx.Done():
			return
		case <-applied:
			notify()
			report()
		}
	}
}

// ErrDataLost: this node's Raft data is lost or corrupt (raftstore.ErrDataLost);
// it must be replaced under a new id (docs/reliability.md). `blixard serve`
// exits with its own code for it, so that systemd does not restart it.
var ErrDataLost = raftstore.ErrDataLost

// killOrphans kills every VM the backend runs on this node (none without a
// backend), bounded in time like the agent's fencing.
func killOrphans(ctx context.Context, backend nodeagent.Backend, log *slog.Logger) {
	if backend == nil {
		return
	}
	// The backend adopts the runners that outlived the last agent when it
	// runs; ending its Run stops none of them.
	bctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		if err := backend.Run(bctx); err != nil && bctx.Err() == nil {
			log.Error("the VM backend stopped while killing the VMs of a node whose Raft data is lost", "err", err)
		}
	}()
	defer func() { stop(); <-ran }()
	names, err := backend.List()
	if err != nil {
		log.Error("this node's Raft data is lost and its VMs cannot be listed to stop them; stop them by hand", "err", err)
		return
	}
	kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	for _, name := range names {
		if err := backend.Kill(kctx, name); err != nil {
			log.Error("this node's Raft data is lost and a VM could not be stopped; stop it by hand", "vm", name, "err", err)
			continue
		}
		log.Warn("this node's Raft data is lost: VM killed (the cluster runs it elsewhere once the node is marked down)", "vm", name)
	}
}

// nodeState is what the node's parts read and propose through: the local
// replica (*raftstore.Store), or an agent-only node's link.
type nodeState interface {
	LocalRead() (*replicated.State, error)
	Propose(ctx context.Context, cmd replicated.Command) (replicated.Result, error)
}

// startNodeParts starts the agent of ao and, when the node runs them, the
// network component, the function gateway and the closure sharing, on st
// (cacheSt for the cache); the returned function wakes them all after a
// newer state. The same on a replica and on an agent-only node.
func startNodeParts(g *group, cfg Config, ao nodeagent.Options, nw *network, fns *functions, sh *sharing, st nodeState,
	cacheSt cacheState) func() {
	ao.Cache = cacheOptions(cfg, sh)
	if nw != nil {
		// A runner starts only once its network.env (and tap) are in place.
		ao.Prepare = nw.WaitReady
		ao.SpareTaps, ao.RestorePool = nw.SpareTaps, cfg.RestorePool
		// Health checks probe instances at their cluster addresses.
		ao.ClusterNetwork = true
	}
	agent := nodeagent.New(ao)
	if fns != nil && fns.ahead != nil {
		fns.ahead.setWake(agent.Notify)
	}
	g.Go("node agent", agent.Start)
	notify := agent.Notify
	if pool := agent.RestorePool(); pool != nil {
		nw.onSpares = pool.Notify
		g.Go("restore pool", pool.Run)
		notify = func() { agent.Notify(); pool.Notify() }
	}
	if nw != nil {
		nw.start(g, st.LocalRead, st.Propose)
		withPool := notify
		notify = func() { withPool(); nw.Notify() }
	}
	if fns != nil {
		g.Go("functions", fns.Run)
		withNetwork := notify
		notify = func() { withNetwork(); fns.Notify() }
		if !ao.ControlPlaneOnly {
			// A function's first cold start here finds its runner in the
			// store and rooted.
			pf := agent.FunctionPrefetcher(filepath.Join(cfg.DataDir, "function-runners"))
			g.Go("function runners", pf.Run)
			withGateway := notify
			notify = func() { withGateway(); pf.Notify() }
		}
	}
	if sh != nil {
		wakeCache, before := sh.start(g, cfg, agent, cacheSt), notify
		notify = func() { before(); wakeCache() }
	}
	return notify
}
