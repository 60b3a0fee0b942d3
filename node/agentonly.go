package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"time"

	"github.com/blixard/blixard/agentlink"
	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/gitsync"
	"github.com/blixard/blixard/metrics"
	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/volumes"
)

// runAgentOnly is Run for an agent-only node (Config.AgentOnly), after the
// steps that do not need Raft (listener, TLS, network, cache, backend):
// instead of a replica, a link to the servers; no reconciler, no notifier.
// The agent, the cache sharing, the network component and the function
// gateway run as on any node, reading the link's view and proposing
// through it; the node's API serves /healthz, /metrics and its VMs' logs.
func runAgentOnly(ctx context.Context, cfg Config, ln net.Listener, tlsCfg apiTLS, nw *network, sh *sharing,
	backend nodeagent.Backend, log *slog.Logger) error {
	lo := agentlink.Options{Servers: cfg.Servers, NodeID: cfg.NodeID, TLS: tlsCfg.peer, Logger: log}
	if nw != nil || sh != nil {
		// Routes, remote VXLAN entries, the gateway's instances and the
		// runners the cache serves are the other nodes' too.
		lo.Optional = replicated.OptionalViewParts()
	}
	link, err := agentlink.New(lo)
	if err != nil {
		return err
	}
	view := linkView{link, cfg.NodeID}
	m := metrics.New(metrics.Options{Replica: view})

	var (
		vols      *volumes.Manager
		cephAddrs []string
	)
	if cfg.Ceph != nil {
		vols = volumes.NewManager(*cfg.Ceph, nil, log.With("component", "volumes"))
		defer vols.Close(context.WithoutCancel(ctx))
		if cephAddrs, err = vols.Addrs(ctx); err != nil {
			log.Warn("cannot reach Ceph yet; registering without client addresses (VMs with volumes will fail until it is reachable)", "err", err)
		}
	}
	var builder nodeagent.Builder
	if cfg.Source.Repo != "" {
		// Only to build runners no peer has: the servers plan.
		mirror, err := gitsync.New(gitsync.Options{URL: cfg.Source.Repo, Dir: filepath.Join(cfg.DataDir, "mirror"), Ref: cfg.Source.Ref,
			SSHKeyFile: cfg.Source.SSHKeyFile, SSHKnownHostsFile: cfg.Source.SSHKnownHostsFile,
			HTTPTokenFile: cfg.Source.HTTPTokenFile, HTTPUsername: cfg.Source.HTTPUsername, Logger: log})
		if err != nil {
			return fmt.Errorf("--repo: %w", err)
		}
		builder = mirrorBuilder(ctx, mirror, cfg.Attr)
	}

	var fns *functions
	var fnStats api.FunctionStats
	var gatewayAddr string
	if nw != nil && nw.ingressL != nil {
		fns = newFunctions(cfg.NodeID, link, m, log)
		nw.front = fns.frontDoor(nw.ingress)
		fnStats = fns
		if gatewayAddr, err = nw.gatewayAddr(advertisedUnderlay(cfg)); err != nil {
			return err
		}
	}
	apiOpts := api.Options{Replica: view, AgentOnly: true, Logger: log.With("component", "api"), Metrics: m.Gatherer(),
		TLS: tlsCfg.server, PeerTLS: tlsCfg.peer, Insecure: cfg.Insecure, Functions: fnStats}
	if backend != nil {
		apiOpts.Logs = consoleLogs{backend: backend, stateDir: cfg.StateDir}
	}
	srv := api.NewServer(apiOpts)

	g := newGroup(ctx)
	defer g.Wait()
	ctx = g.ctx
	g.Go("", link.Run)
	g.Go("API server", func(ctx context.Context) error { return srv.Serve(ctx, ln) })

	apiAddr := advertisedAPI(ln.Addr().String(), cfg.APIAddr)
	reg := replicated.Command{V: replicated.CommandVersion, Type: replicated.CmdRegisterNode, RegisterNode: &replicated.RegisterNode{
		ID: cfg.NodeID, RaftAddr: advertisedUnderlay(cfg), APIAddr: apiAddr,
		Capacity: cfg.Capacity, Labels: cfg.Labels, CephAddrs: cephAddrs, Ceph: cfg.Ceph != nil, GatewayAddr: gatewayAddr,
	}}
	sh.register(reg.RegisterNode)
	if err := registerThrough(ctx, link, reg, log); err != nil {
		if ctx.Err() != nil {
			return g.Wait() // stopped while starting
		}
		return fmt.Errorf("registering agent-only node %d through %v: %w", cfg.NodeID, cfg.Servers, err)
	}
	notifyReady(g, log, fmt.Sprintf("agent-only node %d serving API on %s", cfg.NodeID, ln.Addr()))
	log.Info("agent-only node registered", "servers", cfg.Servers, "api", ln.Addr().String(),
		"vcpu", cfg.Capacity.VCPU, "memMiB", cfg.Capacity.MemMiB, "labels", cfg.Labels)
	if cfg.OnReady != nil {
		cfg.OnReady(ln.Addr())
	}

	// The agent and the network read the view with the instances a
	// server started ahead of their commit; the gateway does not.
	ao := nodeagent.Options{NodeID: cfg.NodeID, State: link.Ahead(), Proposer: link, Heartbeat: cfg.Heartbeat, Metrics: m, OnBuild: cfg.OnBuild,
		Builder: builder, Logger: log.With("component", "agent")}
	if vols != nil {
		ao.Volumes = vols
	}
	if backend == nil {
		ao.ControlPlaneOnly = true
	} else {
		ao.StateDir, ao.Backend, ao.StopOnExit, ao.Lease = cfg.StateDir, backend, cfg.StopOnExit, cfg.Lease
	}
	notify := startNodeParts(g, cfg, ao, nw, fns, sh, link.Ahead(), view)
	onState := onState(ctx, cfg, vols, log)
	g.Go("", func(ctx context.Context) error {
		// The link's change signal stands for the replica's applied
		// entries: one per new view, coalesced.
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-link.Changed():
				notify()
				if st, err := link.LocalRead(); err == nil && onState != nil {
					onState(st)
				}
			}
		}
	})
	<-ctx.Done()
	log.Info("shutting down")
	return g.Wait()
}

// registerThrough proposes reg through the link until it committed (a
// refusal is returned; an unknown outcome is tried again).
func registerThrough(ctx context.Context, link *agentlink.Client, reg replicated.Command, log *slog.Logger) error {
	backoff := 100 * time.Millisecond
	for {
		reg.At = time.Now()
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		res, err := link.Propose(pctx, reg)
		cancel()
		if err == nil {
			return res.Err()
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.Warn("registering through the servers failed; trying again", "err", err, "retryIn", backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// advertisedUnderlay is the Raft address an agent-only node registers:
// it runs no Raft, but the other nodes' network components take the host
// of a node's Raft address as its underlay address. "" without one.
func advertisedUnderlay(cfg Config) string {
	switch {
	case cfg.Network.UnderlayAddr.IsValid():
		return net.JoinHostPort(cfg.Network.UnderlayAddr.String(), "0")
	default:
		return cfg.RaftAddr
	}
}

// linkView is the link as the API, the metrics and the cache read a
// replica: the node's view, never a leader (an agent-only node leads
// nothing, so it prebuilds only with --builder).
type linkView struct {
	*agentlink.Client
	id uint64
}

func (v linkView) NodeID() uint64                                  { return v.id }
func (v linkView) Leader() (uint64, bool)                          { return 0, false }
func (v linkView) Read(context.Context) (*replicated.State, error) { return v.LocalRead() }

// Propose is refused on the node's own API: its agent proposes through
// the link itself.
func (v linkView) Propose(context.Context, replicated.Command) (replicated.Result, error) {
	return replicated.Result{}, errAgentOnly
}

// AddReplica is refused: an agent-only node has no shard to add to.
func (v linkView) AddReplica(context.Context, uint64, string, bool) error { return errAgentOnly }

var errAgentOnly = errors.New("this is an agent-only node: ask a server (its --servers)")
