package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/gitsync"
	"github.com/blixard/blixard/nixeval"
	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/raftstore"
	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/volumes"
)

type serveOptions struct {
	nodeID        uint64
	dataDir       string
	raftAddr      string
	apiAddr       string
	members       string
	join          bool
	nonVoting     bool
	repo          string
	ref           string
	attr          string
	poll          time.Duration
	heartbeat     time.Duration
	nodeTimeout   time.Duration
	evalTimeout   time.Duration
	capacityVCPU  int
	capacityMem   int
	labels        string
	logDB         string
	webhookSecret string
	secretFile    string
	configFile    string
	checkConfig   bool
	stateDir      string
	backend       string
	agent         bool
	restartDelay  time.Duration
	ceph          cephOptions
}

// cephOptions are accepted so that hosts can be configured ahead of Ceph
// volume support (a later issue); until then they are only validated.
type cephOptions struct {
	pool, user, keyringFile, configFile string
}

func (c cephOptions) set() bool {
	return c.pool != "" || c.user != "" || c.keyringFile != "" || c.configFile != ""
}

func newServeCommand(g *globals) *cobra.Command {
	o := &serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run a Blixard node: Raft replica, reconciler (when leader) and HTTP API",
		Example: `  blixard serve --node-id 1 --data-dir /var/lib/blixard \
    --raft-addr 10.0.0.1:7001 --api-addr 10.0.0.1:7070 \
    --members 1=10.0.0.1:7001,2=10.0.0.2:7001,3=10.0.0.3:7001 \
    --repo https://git.example.org/infra/cluster.git --ref main \
    --capacity-vcpu 16 --capacity-mem-mib 65536 --labels zone=a`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.configFile != "" {
				if err := loadConfigFile(cmd.Flags(), o.configFile); err != nil {
					return err
				}
			}
			if o.secretFile != "" {
				b, err := os.ReadFile(o.secretFile)
				if err != nil {
					return fmt.Errorf("--webhook-secret-file: %w", err)
				}
				o.webhookSecret = strings.TrimSpace(string(b))
			}
			if o.checkConfig {
				if _, _, err := o.validate(); err != nil {
					return err
				}
				fmt.Fprintln(g.stdout, "configuration ok")
				return nil
			}
			log, err := g.logger()
			if err != nil {
				return err
			}
			return serve(cmd.Context(), o, log)
		},
	}
	f := cmd.Flags()
	f.Uint64Var(&o.nodeID, "node-id", 0, "this node's id (> 0), unique in the cluster")
	f.StringVar(&o.dataDir, "data-dir", "/var/lib/blixard", "directory for the Raft log, snapshots and the git mirror")
	f.StringVar(&o.raftAddr, "raft-addr", "", "HOST:PORT for Raft traffic (default: this node's address in --members)")
	f.StringVar(&o.apiAddr, "api-addr", "127.0.0.1:7070", "HOST:PORT for the HTTP API")
	f.StringVar(&o.members, "members", "", "initial voters: ID=HOST:PORT,… (the same on every node)")
	f.BoolVar(&o.join, "join", false, "join an existing cluster (after 'blixard node add' on it) instead of bootstrapping from --members")
	f.BoolVar(&o.nonVoting, "non-voting", false, "with --join: replicate as a non-voting member (added with 'blixard node add --non-voting')")
	f.StringVar(&o.repo, "repo", "", "cluster repository URL (file://, https://, ssh://) holding the cluster flake")
	f.StringVar(&o.ref, "ref", "main", "branch of --repo to follow")
	f.StringVar(&o.attr, "attr", "blixard", "flake output attribute holding the cluster")
	f.DurationVar(&o.poll, "poll", 5*time.Second, "how often the leader fetches --repo")
	f.DurationVar(&o.heartbeat, "heartbeat", 2*time.Second, "how often this node reports to the cluster")
	f.DurationVar(&o.nodeTimeout, "node-timeout", 30*time.Second, "a node silent this long is fenced (Ceph) and marked down, and its VMs move; 0: never")
	f.DurationVar(&o.evalTimeout, "eval-timeout", 2*time.Minute, "limit for one nix evaluation")
	f.IntVar(&o.capacityVCPU, "capacity-vcpu", 0, "vCPUs this node offers to VMs")
	f.IntVar(&o.capacityMem, "capacity-mem-mib", 0, "memory (MiB) this node offers to VMs")
	f.StringVar(&o.labels, "labels", "", "node labels: k=v,… (matched by placement.labels)")
	f.StringVar(&o.logDB, "raft-logdb", "tiny", "Raft log DB memory budget: tiny, small, medium, large")
	f.StringVar(&o.webhookSecret, "webhook-secret", os.Getenv("BLIXARD_WEBHOOK_SECRET"), "HMAC secret for POST /v1/webhook (env BLIXARD_WEBHOOK_SECRET)")
	f.StringVar(&o.stateDir, "state-dir", nodeagent.DefaultStateDir, "per-VM state directories (microvm.nix layout: NAME/current, NAME/booted)")
	f.StringVar(&o.backend, "backend", "", "how VMs run: systemd (microvm@NAME units; the default under systemd) or process (the agent supervises microvm-run; the default otherwise)")
	f.DurationVar(&o.restartDelay, "restart-backoff", 250*time.Millisecond, "first delay before a crashed VM is restarted (doubles per crash, capped at 30s)")
	f.BoolVar(&o.agent, "agent", true, "run the node agent (false: a control-plane-only node that runs no VMs)")
	f.StringVar(&o.ceph.pool, "ceph-pool", "", "not used yet: each volume's pool comes from the flake (default rbd); accepted so NixOS hosts can set it")
	f.StringVar(&o.ceph.user, "ceph-user", "", "Ceph client user name, without the client. prefix")
	f.StringVar(&o.ceph.keyringFile, "ceph-keyring-file", "", "Ceph keyring of --ceph-user")
	f.StringVar(&o.ceph.configFile, "ceph-config-file", "", "ceph.conf naming the monitors")
	f.StringVar(&o.secretFile, "webhook-secret-file", "", "file holding the webhook HMAC secret (overrides --webhook-secret)")
	f.StringVar(&o.configFile, "config", "", "JSON file of settings keyed by flag name, e.g. {\"node-id\": 1}; flags on the command line win")
	f.BoolVar(&o.checkConfig, "check-config", false, "validate the flags and --config file, then exit 0 (valid) or 1")
	return cmd
}

func parseMembers(s string) (map[uint64]string, error) {
	out := map[uint64]string{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, part := range strings.Split(s, ",") {
		id, addr, ok := strings.Cut(strings.TrimSpace(part), "=")
		n, err := strconv.ParseUint(id, 10, 64)
		if !ok || err != nil || n == 0 || addr == "" {
			return nil, fmt.Errorf("--members: %q is not ID=HOST:PORT with ID > 0", part)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("--members: %q: %w", part, err)
		}
		if _, dup := out[n]; dup {
			return nil, fmt.Errorf("--members: node %d listed twice", n)
		}
		out[n] = addr
	}
	return out, nil
}

func parseLabels(s string) (map[string]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	out := map[string]string{}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--labels: %q is not KEY=VALUE", part)
		}
		out[k] = v
	}
	return out, nil
}

func (o *serveOptions) validate() (map[uint64]string, map[string]string, error) {
	if o.nodeID == 0 {
		return nil, nil, errors.New("--node-id is required and must be > 0")
	}
	members, err := parseMembers(o.members)
	if err != nil {
		return nil, nil, err
	}
	if o.raftAddr == "" {
		o.raftAddr = members[o.nodeID]
	}
	if o.raftAddr == "" {
		return nil, nil, fmt.Errorf("--raft-addr is required (node %d is not in --members)", o.nodeID)
	}
	if o.nonVoting && !o.join {
		return nil, nil, errors.New("--non-voting needs --join: the initial members are voters")
	}
	if o.join {
		members = nil // the shard knows its members; the joining node was added with `blixard node add`
	} else {
		if len(members) == 0 {
			members = map[uint64]string{o.nodeID: o.raftAddr}
		}
		if addr, ok := members[o.nodeID]; !ok || addr != o.raftAddr {
			return nil, nil, fmt.Errorf("--members must list this node as %d=%s", o.nodeID, o.raftAddr)
		}
	}
	if o.capacityVCPU < 0 || o.capacityMem < 0 {
		return nil, nil, errors.New("--capacity-vcpu and --capacity-mem-mib must not be negative")
	}
	labels, err := parseLabels(o.labels)
	if err != nil {
		return nil, nil, err
	}
	if o.backend == "" {
		o.backend = defaultBackend()
	}

	if o.backend != "process" && o.backend != "systemd" {
		return nil, nil, fmt.Errorf("--backend %q: want process or systemd", o.backend)
	}
	if o.poll <= 0 || o.heartbeat <= 0 {
		return nil, nil, errors.New("--poll and --heartbeat must be positive")
	}
	return members, labels, nil
}

func serve(ctx context.Context, o *serveOptions, log *slog.Logger) error {
	members, labels, err := o.validate()
	if err != nil {
		return err
	}
	if o.ceph.set() && !volumes.Built {
		return fmt.Errorf("the Ceph settings need Ceph support, but %w", volumes.ErrNotBuilt)
	}
	// Checked at start, not by --check-config: on NixOS these files (secrets)
	// do not exist when the configuration is built.
	for _, f := range []struct{ flag, path string }{{"--ceph-config-file", o.ceph.configFile}, {"--ceph-keyring-file", o.ceph.keyringFile}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return fmt.Errorf("%s: %w", f.flag, err)
		}
	}
	if err := os.MkdirAll(o.dataDir, 0o750); err != nil {
		return fmt.Errorf("creating --data-dir: %w", err)
	}
	// Bind the API first, so a taken port fails before Raft starts.
	ln, err := net.Listen("tcp", o.apiAddr)
	if err != nil {
		return fmt.Errorf("--api-addr: %w", err)
	}
	defer ln.Close()

	log = log.With("node", o.nodeID)
	agentStarted := false
	// The backend first: a host that lacks microvm@.service should be told
	// so before this node joins the cluster.
	var backend nodeagent.Backend
	if o.agent {
		if o.backend == "systemd" {
			sb, err := nodeagent.NewSystemdBackend(ctx, nodeagent.SystemdOptions{StateDir: o.stateDir, Logger: log.With("component", "backend")})
			if err != nil {
				return fmt.Errorf("--backend systemd: %w", err)
			}
			backend = sb
			// Run closes the connection; until the agent runs it, this does.
			defer func() {
				if !agentStarted {
					sb.Close()
				}
			}()
		} else {
			backend = nodeagent.NewProcessBackend(nodeagent.ProcessOptions{
				StateDir: o.stateDir, RestartBackoff: o.restartDelay, Logger: log.With("component", "backend"),
			})
		}
	}
	// applied wakes the agent when this replica applies an entry.
	onApply, applied := appliedSignal()
	store, err := raftstore.Start(ctx, raftstore.Config{
		NodeID: o.nodeID, RaftAddr: o.raftAddr, DataDir: filepath.Join(o.dataDir, "raft"),
		Members: members, Join: o.join, NonVoting: o.nonVoting, LogDB: o.logDB, Logger: log, OnApply: onApply,
	})
	if err != nil {
		return fmt.Errorf("starting the Raft replica: %w", err)
	}
	defer store.Close()

	// Ceph: the node's client addresses are registered so the cluster can
	// fence them; the agent attaches VM volumes through the same client.
	var vols *volumes.Manager
	var cephAddrs []string
	var fencer reconciler.Fencer
	if o.ceph.set() {
		vols = volumes.NewManager(volumes.Config{ConfigFile: o.ceph.configFile, User: o.ceph.user, KeyringFile: o.ceph.keyringFile},
			nil, log.With("component", "volumes"))
		defer func() {
			if !agentStarted { // otherwise the agent's goroutine closes it after the agent stopped
				vols.Close(context.WithoutCancel(ctx))
			}
		}()
		fencer = cephFencer{vols}
		if cephAddrs, err = vols.Addrs(ctx); err != nil {
			log.Warn("cannot reach Ceph yet; registering without client addresses (VMs with volumes will fail until it is reachable)", "err", err)
		}
	}
	evaluator := nixeval.New(nixeval.Options{Timeout: o.evalTimeout, Logger: log})
	var (
		mirror *gitsync.Mirror
		rec    *reconciler.Reconciler
	)
	if o.repo != "" {
		mirror, err = gitsync.New(gitsync.Options{URL: o.repo, Dir: filepath.Join(o.dataDir, "mirror"), Ref: o.ref, Logger: log})
		if err != nil {
			return fmt.Errorf("--repo: %w", err)
		}
		recOpts := reconciler.Options{
			Store: store, Source: mirrorSource{mirror}, Evaluator: flakeEvaluator{evaluator, mirror, o.attr},
			Ref: o.ref, Poll: o.poll, NodeTimeout: o.nodeTimeout, Logger: log,
		}
		if fencer != nil {
			recOpts.Fencer = fencer
		}
		rec = reconciler.New(recOpts)
	}

	var g group
	ctx, cancel := context.WithCancel(ctx)
	defer func() { cancel(); g.Wait() }()

	api := &apiServer{store: store, rec: rec, mirror: mirror, eval: evaluator, attr: o.attr, log: log,
		webhookSecret: o.webhookSecret, stateDir: o.stateDir}
	serveAPI(ctx, &g, ln, api.routes(), log, cancel)

	reg := replicated.Command{Type: replicated.CmdRegisterNode, RegisterNode: &replicated.RegisterNode{
		ID: o.nodeID, RaftAddr: o.raftAddr, APIAddr: advertisedAPI(ln.Addr().String(), o.apiAddr),
		Capacity: replicated.Resources{VCPU: o.capacityVCPU, MemMiB: o.capacityMem}, Labels: labels,
		CephAddrs: cephAddrs,
	}}
	if err := proposeOK(ctx, store, reg); err != nil {
		return fmt.Errorf("registering node %d: %w", o.nodeID, err)
	}
	notifyReady(ctx, &g, log, fmt.Sprintf("node %d serving API on %s", o.nodeID, ln.Addr()))
	log.Info("node registered", "raft", o.raftAddr, "api", ln.Addr().String(),
		"vcpu", o.capacityVCPU, "memMiB", o.capacityMem, "labels", o.labels)

	if o.agent {
		opts := nodeagent.Options{
			NodeID: o.nodeID, StateDir: o.stateDir, State: store, Proposer: store, Backend: backend,
			Builder: flakeBuilder(ctx, mirror, o.attr), Heartbeat: o.heartbeat, Logger: log.With("component", "agent"),
		}
		if vols != nil {
			opts.Volumes = vols
		}
		agent := nodeagent.New(opts)
		agentStarted = true
		g.Go(func() {
			if err := agent.Start(ctx); err != nil {
				log.Error("node agent stopped", "err", err)
				cancel()
			}
			if vols != nil {
				// Only after the agent returned: it may still detach on exit.
				vols.Close(context.WithoutCancel(ctx))
			}
		})
		g.Go(func() { forwardApplied(ctx, applied, agent.Notify) })
	} else {
		g.Go(func() { heartbeatLoop(ctx, store, o.nodeID, o.heartbeat, log) })
	}
	if rec != nil {
		g.Go(func() { _ = rec.Start(ctx) })
	} else {
		log.Warn("no --repo given: this node replicates state but never proposes plans")
	}
	<-ctx.Done()
	log.Info("shutting down")
	return nil
}

// defaultBackend is systemd when this process is a systemd service (systemd
// sets INVOCATION_ID for every unit it starts) and process otherwise.
func defaultBackend() string {
	if os.Getenv("INVOCATION_ID") != "" {
		return "systemd"
	}
	return "process"
}

// advertisedAPI is the address other nodes and clients reach the API on.
func advertisedAPI(bound, flag string) string {
	host, _, err := net.SplitHostPort(flag)
	if err == nil && host != "" && host != "0.0.0.0" && host != "::" {
		_, port, _ := net.SplitHostPort(bound)
		return net.JoinHostPort(host, port)
	}
	return bound
}

// proposeOK proposes until the command is applied with an OK result or ctx ends.
func proposeOK(ctx context.Context, store *raftstore.Store, cmd replicated.Command) error {
	_, err := store.ProposeOK(ctx, cmd, time.Now)
	return err
}

func heartbeatLoop(ctx context.Context, store *raftstore.Store, id uint64, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cmd := replicated.Command{Type: replicated.CmdNodeHeartbeat, At: time.Now(),
			NodeHeartbeat: &replicated.NodeHeartbeat{ID: id}}
		pctx, done := context.WithTimeout(ctx, every)
		res, err := store.Propose(pctx, cmd)
		done()
		if err != nil && ctx.Err() == nil {
			log.Debug("heartbeat not committed", "err", err)
		} else if err == nil && res.Code != replicated.ResultOK {
			log.Warn("heartbeat refused", "reason", res.Message)
		}
	}
}

// mirrorSource adapts the git mirror to the reconciler.
type mirrorSource struct{ m *gitsync.Mirror }

func (s mirrorSource) Fetch(ctx context.Context) (reconciler.Fetched, error) {
	u, err := s.m.Fetch(ctx)
	if err != nil {
		return reconciler.Fetched{}, err
	}
	return reconciler.Fetched{Commit: u.Commit, Previous: u.Previous, Rewritten: u.Rewritten}, nil
}

// flakeEvaluator evaluates the cluster flake from the mirror at a commit.
type flakeEvaluator struct {
	ev     *nixeval.Evaluator
	mirror *gitsync.Mirror
	attr   string
}

func (f flakeEvaluator) Evaluate(ctx context.Context, commit string) (reconciler.Evaluation, error) {
	res, err := f.ev.Eval(ctx, f.mirror.FlakeURL(commit), f.attr, commit)
	if err != nil {
		return reconciler.Evaluation{}, err
	}
	return reconciler.Evaluation{Spec: res.Spec, Hash: res.Hash}, nil
}

// cephFencer blocklists a node's registered Ceph client addresses, so a node
// that is only silent (partitioned, frozen) cannot write to the images its
// VMs had once they run elsewhere.
type cephFencer struct{ vols *volumes.Manager }

// fenceExpiry bounds a blocklist entry; a fenced node's agent restarts with
// a new client (and new addresses) long before, when it comes back.
const fenceExpiry = 24 * time.Hour

func (f cephFencer) Fence(ctx context.Context, n *replicated.Node) ([]string, error) {
	if len(n.CephAddrs) == 0 {
		return nil, nil // it registered no Ceph client: nothing of it can write
	}
	conn, err := f.vols.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("connecting to Ceph to fence node %d: %w", n.ID, err)
	}
	if err := conn.Blocklist(ctx, n.CephAddrs, fenceExpiry); err != nil {
		return nil, fmt.Errorf("blocklisting node %d's addresses %v: %w", n.ID, n.CephAddrs, err)
	}
	return n.CephAddrs, nil
}

// flakeBuilder builds runners from the cluster repository at a commit, for
// nodes that did not evaluate that commit themselves (only the leader does).
func flakeBuilder(ctx context.Context, mirror *gitsync.Mirror, attr string) nodeagent.Builder {
	if mirror == nil {
		return nil
	}
	return nodeagent.FlakeBuilder{Attr: attr, FlakeURL: func(commit string) (string, error) {
		// Followers do not poll; bring the mirror up to the commit first.
		fctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		if _, err := mirror.Fetch(fctx); err != nil {
			return "", fmt.Errorf("fetching the cluster repository for commit %s: %w", commit, err)
		}
		return mirror.FlakeURL(commit), nil
	}}
}

func sortedNodeIDs[V any](m map[uint64]V) []uint64 {
	ids := make([]uint64, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}
