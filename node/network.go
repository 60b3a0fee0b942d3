package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/blixard/blixard/fngateway"
	"github.com/blixard/blixard/hostnet"
	"github.com/blixard/blixard/ingress"
	"github.com/blixard/blixard/netdns"
	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/replicated"
)

// netResync is how often the network component converges without a new
// state: it repairs what someone changed on the host (a deleted bridge, a
// flushed nft table) and picks up a new resolv.conf.
const netResync = 10 * time.Second

// netRetryMax caps the wait before a failed pass is tried again.
const netRetryMax = 30 * time.Second

// resolvConf is the file the host's resolvers are read from.
const resolvConf = "/etc/resolv.conf"

// network is the node's network component (Config.Network): on every
// applied state it makes this host carry the cluster network — hostnet
// (bridge, VXLAN, taps), netdns (dnsmasq for DHCP and DNS), the masquerade
// of the cluster network out of the uplink, STATE/NAME/network.env for
// plain runners — and gives ingress its routing table.
//
// The work runs on its own goroutine (Run), never on the apply path:
// Notify only records that there is a newer state, so any number of applied
// entries while a pass runs cost one more pass, which reads the newest
// state.
type network struct {
	cfg      Config // with defaults
	set      netSettings
	read     func() (*replicated.State, error)
	log      *slog.Logger
	host     *hostnet.Host
	dns      *netdns.Manager
	ingress  *ingress.Server
	ingressL net.Listener // nil without --ingress-addr; owned until Run's Serve takes it
	// front serves the ingress listener when set: ingress routes and the
	// function gateway's (functions.go); nil: ingress alone.
	front *fngateway.Front
	nat   *masquerade // nil with --masquerade=false

	kick chan struct{} // capacity 1: a newer state to converge to

	// What WaitReady waits for: the instances whose network.env the last
	// pass left written, and a channel closed when the next pass ends.
	readyMu  sync.Mutex
	envReady map[string]bool // guarded by readyMu
	passDone chan struct{}   // guarded by readyMu

	// hostMu orders the changes to the host: a pass holds it from reading
	// the state until its identities are written, a start's fast lane
	// (startLane) likewise, so a Sync never plans from a state older than
	// a tap the fast lane made (and deletes it as no longer wanted).
	hostMu sync.Mutex
	// envMu guards the identities written (and, with hostMu, what a lane
	// needs to know of the host), so that a start whose tap is in place
	// writes its identity beside a pass's Sync (sideLane) instead of
	// waiting for it. Taken after hostMu, never held through a host change.
	envMu   sync.Mutex
	written map[string][]byte // guarded by envMu: network.env contents written, by instance
	// Written holding hostMu and envMu, read holding either:
	mtu    int  // the bridge's MTU once observed; 0 before
	synced bool // the last host Sync succeeded
	// syncedTaps are the local taps, by name, as the last Sync that
	// succeeded made them: the fast lane asks the kernel only about the
	// others. Asking costs a netlink request, which waits for the kernel's
	// RTNL lock, held for milliseconds while any tap on the host is deleted
	// (an instance stopping, a spare placed elsewhere); a tap removed
	// behind the agent's back since fails its runner's start as it would
	// have a moment after the check.
	syncedTaps map[string]hostnet.Tap
	// laneIn are the inputs of the last pass's plan, which the lanes plan
	// with (a start does not wait for DNS or read every instance's tap
	// flags again); nil before the first plan.
	laneIn *netInputs
	// What the pass holding hostMu does to the taps, guarded by envMu:
	// syncing from taking hostMu until its Sync ended, keeps (nil while it
	// has not planned) the local taps its Sync converges to, by name. A
	// side lane trusts no tap that Sync may delete.
	syncing bool
	keeps   map[string]hostnet.Tap
	// runnerQueues caches which function runners (store paths, which never
	// change) want multi-queue taps; guarded by hostMu.
	runnerQueues map[string]bool

	// spares are the taps made ahead by the last pass whose Sync succeeded
	// (the restore pool starts runners on them); guarded by readyMu.
	// onSpares, when set before Run, is called when they changed.
	spares   []nodeagent.SpareTap
	onSpares func()

	// Owned by Run's goroutine.
	lastSkip  string // the skipped entries last logged
	lastError string // the failure last logged
	// failures counts the passes in a row that failed with lastError;
	// the second makes it the node's "network" problem (problem, when
	// set), so a pass failing once does not.
	failures int
	problem  func(msg string)
	// warnedForwarding: the host's IPv4 forwarding was found off and said so.
	warnedForwarding bool
	names            *nameCache
}

// newNetwork checks what the network needs before the node joins (netlink
// rights, dnsmasq, the ingress port, nftables) and starts nothing: Run and
// the parts it lists do. Close releases what it opened.
func newNetwork(cfg Config, log *slog.Logger) (_ *network, err error) {
	nc := cfg.Network
	n := &network{cfg: cfg, log: log.With("component", "network"), kick: make(chan struct{}, 1), passDone: make(chan struct{}),
		written: map[string][]byte{}, names: &nameCache{ttl: time.Minute, addrs: map[string]cachedAddr{}}}
	n.set = netSettings{self: cfg.NodeID, bridge: nc.Bridge, vxlanID: nc.VXLANID, vxlanPort: nc.VXLANPort,
		underlay: nc.UnderlayAddr, createTaps: cfg.Backend == BackendProcess, restorePool: cfg.RestorePool}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	if n.host, err = hostnet.New(n.log); err != nil {
		return nil, fmt.Errorf("--network: %w (run blixard as root, or with CAP_NET_ADMIN)", err)
	}
	if n.dns, err = netdns.New(netdns.Options{Dir: nc.DNSDir, Logger: n.log.With("part", "dnsmasq")}); err != nil {
		return nil, fmt.Errorf("--network (--dns-dir %s): %w", nc.DNSDir, err)
	}
	if nc.Masquerade {
		if n.nat, err = newMasquerade(); err != nil {
			return nil, fmt.Errorf("--network: outbound traffic of the instances: %w (or run with --masquerade=false and masquerade on the host, "+
				"NixOS: networking.nat)", err)
		}
	}
	host, _, _ := net.SplitHostPort(nc.IngressAddr)
	n.ingress = ingress.New(ingress.Options{TCPHost: host, Logger: n.log.With("part", "ingress")})
	if nc.IngressAddr != "" {
		if n.ingressL, err = net.Listen("tcp", nc.IngressAddr); err != nil {
			return nil, fmt.Errorf("--ingress-addr %s (is another proxy listening there? pick another address): %w", nc.IngressAddr, err)
		}
	}
	if host, _, err := net.SplitHostPort(cfg.RaftAddr); err == nil {
		if ip, err := netip.ParseAddr(host); err == nil && ip.Unmap() != nc.UnderlayAddr.Unmap() {
			n.log.Warn("--underlay-addr is not the host of --raft-addr: other nodes send this node's overlay traffic to the Raft host, "+
				"so it must be an address of this node too", "underlay", nc.UnderlayAddr, "raft", cfg.RaftAddr)
		}
	}
	return n, nil
}

// start runs the network's parts on g: the converging loop, which reads
// the local replica with read, dnsmasq, and the ingress proxy (HTTP on
// --ingress-addr, TCP passthrough on the ports of the TCP entries).
func (n *network) start(g *group, read func() (*replicated.State, error), propose func(context.Context, replicated.Command) (replicated.Result, error)) {
	n.read = read
	if propose != nil {
		r := newProblemReporter(n.cfg.NodeID, "network", propose, read)
		n.problem = r.set
		g.Go("network problem reporter", r.Run)
	}
	g.Go("network", n.Run)
	g.Go("dnsmasq", n.dns.Run)
	if n.ingressL != nil {
		ln := n.ingressL
		n.ingressL = nil // Serve owns it now
		if n.front != nil {
			g.Go("ingress proxy and function gateway", func(ctx context.Context) error { return n.front.Serve(ctx, ln, n.log) })
		} else {
			g.Go("ingress proxy", func(ctx context.Context) error { return n.ingress.Serve(ctx, ln) })
		}
		g.Go("ingress TCP passthrough", n.ingress.ServeTCP)
	}
}

// gatewayAddr is how the other nodes' gateways reach this node's (the
// ingress listener, which serves the function gateway): the host of
// --ingress-addr, or of raftAddr when that listens on every address.
// Called before start, while the network still owns the listener.
func (n *network) gatewayAddr(raftAddr string) (string, error) {
	return advertisedHostPort("--ingress-addr", n.cfg.Network.IngressAddr, n.ingressL.Addr().String(), raftAddr)
}

// Notify tells the component that a newer state applied; it never blocks.
func (n *network) Notify() {
	select {
	case n.kick <- struct{}{}:
	default: // a pass is pending; it reads the newest state
	}
}

// Run converges until ctx ends: at once after Notify, every netResync, and
// after a failure again with a backoff from one second to netRetryMax. It
// returns nil when ctx ends; failures are logged, never returned, so a
// host that refuses the overlay (a conflict a person must fix) never stops
// the node's other parts.
func (n *network) Run(ctx context.Context) error {
	backoff := time.Second
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-n.kick:
		case <-t.C:
		}
		err := n.pass(ctx)
		if ctx.Err() != nil {
			return nil
		}
		n.passEnded()
		wait := netResync
		switch {
		case err != nil:
			wait = backoff
			backoff = min(2*backoff, netRetryMax)
			if msg := err.Error(); msg != n.lastError {
				n.lastError, n.failures = msg, 0
				n.log.Error("the cluster network on this node is not converged; retrying", "err", err, "retry_in", wait)
			}
			if n.failures++; n.failures == 2 && n.problem != nil {
				n.problem("not converged: " + n.lastError)
			}
		default:
			backoff = time.Second
			if n.lastError != "" {
				n.log.Info("the cluster network on this node converged again")
				n.lastError, n.failures = "", 0
			}
			if n.problem != nil {
				n.problem("")
			}
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(wait)
	}
}

// publishSpares publishes p's spare taps, which its Sync made.
func (n *network) publishSpares(p netPlan) {
	macs := map[string]string{}
	for _, t := range p.want.LocalTaps {
		macs[t.Name] = t.MAC.String()
	}
	var spares []nodeagent.SpareTap
	for _, tap := range slices.Sorted(maps.Keys(p.spares)) {
		spares = append(spares, nodeagent.SpareTap{Instance: p.spares[tap], Tap: tap, MAC: macs[tap]})
	}
	n.readyMu.Lock()
	changed := !slices.Equal(spares, n.spares)
	n.spares = spares
	n.readyMu.Unlock()
	if changed && n.onSpares != nil {
		n.onSpares()
	}
}

// SpareTaps are the taps made ahead for instances not placed yet.
func (n *network) SpareTaps() []nodeagent.SpareTap {
	n.readyMu.Lock()
	defer n.readyMu.Unlock()
	return slices.Clone(n.spares)
}

// passEnded publishes which instances' network.env a pass left written
// and wakes WaitReady.
func (n *network) passEnded() {
	n.envMu.Lock()
	defer n.envMu.Unlock()
	n.publishReady()
}

// publishReady publishes which instances' network.env is written (in the
// pass, once the taps and identities are in place, and when it ends) and
// wakes WaitReady. n.envMu must be held.
func (n *network) publishReady() {
	ready := make(map[string]bool, len(n.written))
	for name := range n.written {
		ready[name] = true
	}
	n.readyMu.Lock()
	defer n.readyMu.Unlock()
	n.envReady = ready
	close(n.passDone)
	n.passDone = make(chan struct{})
}

// pass is one convergence: read the state, plan (planNetwork, pure), then
// act — ingress table, hostnet, masquerade, dnsmasq, network.env files.
// Each step runs even when an earlier one failed, so a refused overlay does
// not stop DNS for the instances already reachable; the failures are
// joined.
func (n *network) pass(ctx context.Context) error {
	start := time.Now()
	n.hostMu.Lock()
	n.setSyncing(true, nil)
	locked := true
	defer func() {
		if locked {
			n.setSyncing(false, nil)
			n.hostMu.Unlock()
		}
	}()
	s, err := n.read()
	if err != nil {
		return fmt.Errorf("reading the local replica: %w", err)
	}
	read := time.Since(start)
	n.ingress.Update(ingress.FromState(s))
	in := n.inputs(ctx, s)
	p, ok := planNetwork(s, n.set, in)
	if !ok {
		return nil // no plan committed yet: the network has no address range
	}
	n.envMu.Lock()
	n.laneIn = &in
	n.envMu.Unlock()
	n.setSyncing(true, p.want.LocalTaps)
	if msg := strings.Join(p.skipped, "; "); msg != n.lastSkip {
		n.lastSkip = msg
		if msg != "" {
			n.log.Warn("the cluster network leaves entries out", "skipped", p.skipped)
		}
	}
	var errs []error
	planned := time.Since(start)
	fast := n.addNewLocked(ctx, p, "")
	ops, err := n.host.Sync(ctx, p.host, p.want) // hostnet logs what it changed
	synced := time.Since(start)
	var conflict *hostnet.ConflictError
	mtu := n.mtu
	switch {
	case errors.As(err, &conflict):
		errs = append(errs, fmt.Errorf("this host's network conflicts with the cluster network, nothing was changed: %w", err))
	case err != nil:
		errs = append(errs, err)
	case len(ops) > 0 || mtu == 0:
		mtu = n.bridgeMTU()
	}
	var syncedTaps map[string]hostnet.Tap
	if err == nil {
		syncedTaps = tapsByName(p.want.LocalTaps)
		n.publishSpares(p)
	}
	// The taps are there: the identities next, and the runners waiting for
	// them (WaitReady) go on while the rest of the pass runs. dnsmasq learns
	// the new hosts a few milliseconds later, long before a guest that just
	// started asks for its lease (and its reload after SIGHUP was never
	// waited for anyway).
	n.envMu.Lock()
	n.synced, n.mtu, n.syncedTaps = err == nil, mtu, syncedTaps
	n.syncing, n.keeps = false, nil
	wrote, err := n.writeEnv(p.env, true)
	errs = append(errs, err)
	n.publishReady()
	n.envMu.Unlock()
	n.hostMu.Unlock()
	locked = false
	envDone := time.Since(start)
	// On a conflict the masquerade is left as it is too: the refused CIDR
	// may be a range this host routes elsewhere (a VPN's), whose traffic a
	// new masquerade rule would rewrite.
	if n.nat != nil && conflict == nil {
		if err := n.nat.ensure(s.Network.CIDR); err != nil {
			errs = append(errs, err)
		}
		if !n.warnedForwarding && !ipv4Forwarding() {
			n.warnedForwarding = true
			n.log.Warn("IPv4 forwarding is off on this host, so instances cannot reach anything outside the cluster network: " +
				"enable it (sysctl net.ipv4.ip_forward=1; NixOS: services.blixard.network.enable sets it)")
		}
	}
	p.dns.Network.MTU = mtu
	if act, err := n.dns.Update(ctx, p.dns); err != nil {
		errs = append(errs, fmt.Errorf("dnsmasq files: %w", err))
	} else if act != netdns.Unchanged {
		n.log.Debug("dnsmasq files updated", "action", act)
	}
	if len(ops) > 0 || wrote > 0 {
		// Where a cold start's wait for its network identity goes
		// (durations since the pass started).
		n.log.Debug("network pass", "read", read, "planned", planned, "fast_lane", fast, "host", synced, "identities", envDone,
			"done", time.Since(start), "host_ops", len(ops), "env_written", wrote)
	}
	return errors.Join(errs...)
}

// inputs is what planNetwork needs from this host for state s. n.hostMu
// must be held.
func (n *network) inputs(ctx context.Context, s *replicated.State) netInputs {
	in := netInputs{underlays: n.underlays(ctx, s), upstreams: n.upstreams()}
	in.owner, in.group = stateOwner(n.cfg.StateDir)
	in.multiQueue = multiQueueTaps(n.cfg.StateDir, s, n.cfg.NodeID)
	if n.set.createTaps {
		in.multiQueueRunners = n.functionRunnerQueues(s)
	}
	return in
}

// setSyncing records what the pass holding hostMu may do to the taps:
// while syncing with want nil, anything; with want, converge them to it.
func (n *network) setSyncing(syncing bool, want []hostnet.Tap) {
	n.envMu.Lock()
	defer n.envMu.Unlock()
	n.syncing, n.keeps = syncing, nil
	if syncing && want != nil {
		n.keeps = tapsByName(want)
	}
}

func tapsByName(taps []hostnet.Tap) map[string]hostnet.Tap {
	out := make(map[string]hostnet.Tap, len(taps))
	for _, t := range taps {
		out[t.Name] = t
	}
	return out
}

// functionRunnerQueues reports which function runners of s want
// multi-queue taps, as multiQueueTaps does for instances, reading each
// runner's tap-flags once it is in the store. n.hostMu must be held.
func (n *network) functionRunnerQueues(s *replicated.State) map[string]bool {
	if s.Desired == nil {
		return nil
	}
	known := n.runnerQueues
	n.runnerQueues = map[string]bool{} // the runners of s only
	for _, f := range s.Desired.Functions {
		out := f.Runner.Out
		if mq, ok := known[out]; ok || out == "" {
			n.runnerQueues[out] = mq
			continue
		}
		data, err := os.ReadFile(filepath.Join(out, "share", "microvm", "tap-flags"))
		switch {
		case err == nil:
			n.runnerQueues[out] = slices.Contains(strings.Fields(string(data)), "multi_queue")
		case errors.Is(err, fs.ErrNotExist):
			if _, err := os.Stat(out); err == nil {
				n.runnerQueues[out] = false // in the store, without tap flags
			}
			// else: not fetched yet; asked again next pass
		}
	}
	return n.runnerQueues
}

// bridgeMTU is the MTU hostnet gave the bridge (0 when it cannot be read):
// guests are told it by DHCP and network.env.
func (n *network) bridgeMTU() int {
	mtu, err := n.host.LinkMTU(n.set.bridge)
	if err != nil {
		return 0
	}
	return mtu
}

// writeEnv writes STATE/NAME/network.env for every local instance whose
// file differs (atomically: a runner reads the old file or the new one)
// and, when env is all of them (not the fast lane's few), forgets the
// instances no longer here (an instance a side lane wrote after the pass
// read its state included: the next pass finds its file as it should be
// and leaves it). The directory is created the way the agent creates it;
// the agent gives it to the runners' user when it prepares the instance.
// n.envMu must be held.
func (n *network) writeEnv(env map[string]instanceEnv, all bool) (int, error) {
	if n.cfg.StateDir == "" {
		return 0, nil
	}
	if _, err := os.Stat(n.cfg.StateDir); err != nil {
		// The agent makes STATE as microvm.nix would (its owner and mode)
		// when it starts; until then there is nothing to write into.
		return 0, nil
	}
	wrote := 0
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(env)) {
		data := env[name].render(n.mtu)
		if bytes.Equal(n.written[name], data) {
			continue
		}
		dir := filepath.Join(n.cfg.StateDir, name)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			errs = append(errs, fmt.Errorf("network identity of %s: %w", name, err))
			continue
		}
		if err := writeFileAtomic(filepath.Join(dir, NetworkEnvFile), data); err != nil {
			errs = append(errs, fmt.Errorf("network identity of %s: %w", name, err))
			continue
		}
		n.written[name] = data
		wrote++
	}
	for name := range n.written {
		if _, ok := env[name]; !ok && all {
			delete(n.written, name) // written again if it comes back
		}
	}
	return wrote, errors.Join(errs...)
}

// writeFileAtomic replaces path with data through a temporary file
// in the same directory, readable by everyone (the runner's user).
func writeFileAtomic(path string, data []byte) (err error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil // left by an earlier run of the agent
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp.Name())
		}
	}()
	// Not synced: the file is derived from the replicated state and
	// rewritten by the first pass after a restart when it differs (a file
	// a crash left empty included), before any runner may read it; a
	// cold start should not wait for the disk.
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	return err
}

// upstreams are the host's resolvers, read at every pass (a changed
// resolv.conf restarts nothing: netdns rewrites dnsmasq's configuration
// only when the list changed).
func (n *network) upstreams() []netip.AddrPort {
	data, err := os.ReadFile(resolvConf)
	if err != nil {
		return nil
	}
	return netdns.ParseResolvConf(data)
}

// underlays are the other nodes' underlay addresses: the host of each
// node's Raft address, resolved when it is a name.
func (n *network) underlays(ctx context.Context, s *replicated.State) map[uint64]netip.Addr {
	out := map[uint64]netip.Addr{}
	for id, node := range s.Nodes {
		if id == n.cfg.NodeID {
			continue
		}
		host, _, err := net.SplitHostPort(node.RaftAddr)
		if err != nil {
			continue
		}
		if a, ok := n.names.lookup(ctx, host, n.set.underlay.Unmap().Is4()); ok {
			out[id] = a
		}
	}
	return out
}

// nameCache resolves node host names, keeping answers for ttl so that a
// pass does not wait for DNS every time.
type nameCache struct {
	ttl   time.Duration
	mu    sync.Mutex
	addrs map[string]cachedAddr // guarded by mu
}

type cachedAddr struct {
	addr netip.Addr
	at   time.Time
}

// lookup returns host's address of the wanted family: host itself when it
// is an IP address, else the resolver's first answer (bounded to 2s).
func (c *nameCache) lookup(ctx context.Context, host string, v4 bool) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(host); err == nil {
		return a.Unmap(), true
	}
	c.mu.Lock()
	hit, ok := c.addrs[host]
	c.mu.Unlock()
	if ok && time.Since(hit.at) < c.ttl {
		return hit.addr, true
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	network := "ip6"
	if v4 {
		network = "ip4"
	}
	addrs, err := net.DefaultResolver.LookupNetIP(rctx, network, host)
	if err != nil || len(addrs) == 0 {
		return hit.addr, ok // the last answer, while the resolver fails
	}
	a := addrs[0].Unmap()
	c.mu.Lock()
	c.addrs[host] = cachedAddr{addr: a, at: time.Now()}
	c.mu.Unlock()
	return a, true
}

// stateOwner is the owner of the state directory, whom the runners run as
// (microvm:kvm under microvm.nix's host module): the taps hostnet creates
// are theirs. This process's own ids when the directory does not exist yet.
func stateOwner(stateDir string) (uid, gid uint32) {
	if fi, err := os.Stat(stateDir); err == nil && stateDir != "" {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			return st.Uid, st.Gid
		}
	}
	return uint32(os.Getuid()), uint32(os.Getgid())
}

// multiQueueTaps lists the instances assigned to node self whose runner
// asks for a multi-queue tap: microvm.nix writes "multi_queue" into the
// runner's share/microvm/tap-flags (STATE/NAME/current is the runner;
// until the agent links it, the assignment's runner), so a new instance's
// tap is made as its spare was (rule 6 of planNetwork) and as it stays.
func multiQueueTaps(stateDir string, s *replicated.State, self uint64) map[string]bool {
	out := map[string]bool{}
	if stateDir == "" {
		return out
	}
	for name, a := range s.Assignments {
		if a.Node == self && wantsMultiQueue(stateDir, name, a) {
			out[name] = true
		}
	}
	return out
}

// wantsMultiQueue reports whether instance name's runner (assigned as a)
// asks for a multi-queue tap; see multiQueueTaps.
func wantsMultiQueue(stateDir, name string, a replicated.Assignment) bool {
	current := filepath.Join(stateDir, name, "current")
	data, err := os.ReadFile(filepath.Join(current, "share", "microvm", "tap-flags"))
	if errors.Is(err, fs.ErrNotExist) && a.OutPath != "" {
		if _, lerr := os.Lstat(current); errors.Is(lerr, fs.ErrNotExist) {
			data, err = os.ReadFile(filepath.Join(a.OutPath, "share", "microvm", "tap-flags"))
		}
	}
	return err == nil && slices.Contains(strings.Fields(string(data)), "multi_queue")
}

// Close releases what newNetwork opened and removes the masquerade: the
// bridge, VXLAN and taps stay, with the VMs that use them (the next agent
// adopts them); dnsmasq and the ingress proxy ended with their contexts.
func (n *network) Close() {
	if n.ingressL != nil {
		_ = n.ingressL.Close()
	}
	if n.nat != nil {
		if err := n.nat.remove(); err != nil {
			n.log.Warn("could not remove the masquerade of the cluster network (nft table ip blixard); delete it by hand", "err", err)
		}
	}
	if n.host != nil {
		_ = n.host.Close()
	}
}
