package node

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/blixard/blixard/hostnet"
	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/raftstore"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/volumes"
)

// Backend says how the node runs VMs.
type Backend string

const (
	// BackendNone runs no VMs: a control-plane-only node that only sends
	// its heartbeat (the zero value).
	BackendNone Backend = ""
	// BackendSystemd runs VMs as microvm.nix's microvm@NAME units.
	BackendSystemd Backend = "systemd"
	// BackendProcess supervises the runners itself.
	BackendProcess Backend = "process"
)

// Source is what the node's reconciler follows: a branch of a git
// repository, a working tree as it is on disk, or nothing (the node then
// replicates state but never proposes plans).
type Source struct {
	// Repo is the cluster repository's URL (file://, https://, ssh://) and
	// Ref its branch (default "main"); mirrored in DataDir/mirror.
	Repo, Ref string
	// Worktree is a directory holding the cluster flake, followed as it is
	// on disk (uncommitted and untracked files included); changes are seen
	// Debounce after the last write (default 300ms), and at every Poll.
	Worktree string
	Debounce time.Duration
	// Git credentials for Repo (see gitsync.Options): an SSH key with the
	// server's known_hosts, or an HTTPS token (and user name). Files, read
	// at every fetch; secrets never appear in URLs, logs or status.
	SSHKeyFile, SSHKnownHostsFile string
	HTTPTokenFile, HTTPUsername   string
	// Trust lists OpenPGP keyrings and SSH allowed_signers files: when set,
	// the leader evaluates only commits signed by one of their keys.
	Trust []string
}

// Eval confines the leader's nix evaluation (see nixeval.Options).
type Eval struct {
	// MaxMemory bounds one evaluation's memory in bytes (0: the default,
	// negative: none).
	MaxMemory int64
	// User evaluates as this unprivileged user; Store is the nix store it
	// writes to ("" : the default store, e.g. through a nix-daemon).
	User, Store string
}

// Config is everything one node needs. Zero durations take the defaults
// documented on each field.
type Config struct {
	// NodeID is this node's id (> 0), unique in the cluster; it is also its
	// Raft replica id.
	NodeID uint64
	// DataDir holds the Raft log (DataDir/raft) and the git mirror
	// (DataDir/mirror); created if missing.
	DataDir string
	// RaftAddr is the HOST:PORT of Raft traffic (default: this node's
	// address in Members). Empty with no Members and no Join: a single
	// voter on loopback, whose free port is chosen once and remembered in
	// DataDir/raft-addr, since the Raft log records it.
	RaftAddr string
	// APIAddr is the HOST:PORT the API listens on, unless APIListener is
	// set. Other nodes reach the API at it; a wildcard or empty host
	// advertises the bound address instead.
	APIAddr string
	// APIListener is an already-bound listener for the API; Run owns it
	// and closes it.
	APIListener net.Listener
	// TLS, when set (all three files), serves the API over HTTPS — callers
	// present a client certificate from the CA in CAFile or a bearer
	// token —, makes all Raft traffic mutual TLS, and lets the API reach
	// other nodes' APIs with this node's certificate. The certificate must
	// be this node's (`blixard cert issue --node ID`) and name the hosts of
	// RaftAddr and APIAddr. The files are read when Run starts.
	TLS raftstore.TLSFiles
	// Insecure serves the API over plain HTTP without authentication
	// (every caller acts as admin) and Raft over plain TCP; it excludes
	// TLS. On an API address that is not loopback it needs InsecureIKnow.
	Insecure, InsecureIKnow bool
	// Members are the initial voters (id → Raft address), the same on
	// every initial member (default: this node alone); ignored with Join.
	Members map[uint64]string
	// Join starts a replica added with `blixard node add`; NonVoting
	// matches --non-voting there.
	Join, NonVoting bool
	// LogDB sizes the Raft log DB: tiny (default), small, medium, large.
	LogDB string
	// Raft is the Raft timing (zero fields: raftstore's defaults, like
	// etcd's: 100 ms heartbeat, 1 s election timeout). Every replica of a
	// cluster should use the same.
	Raft RaftTiming
	// QuietRaftLog lowers Dragonboat's own logging to errors.
	QuietRaftLog bool
	// AgentOnly runs no Raft replica (serve --agent-only): the node
	// registers, heartbeats and reads what its agent, cache sharing,
	// network component and function gateway need through the APIs of
	// Servers (package agentlink), with its node certificate, failing
	// over between them. Its own API serves /healthz, /metrics and its
	// VMs' logs. RaftAddr, when given, is only advertised: its host is
	// where the other nodes send this node's overlay traffic.
	AgentOnly bool
	// Servers are the API addresses (https://HOST:PORT or HOST:PORT) of
	// the Raft nodes an agent-only node talks to.
	Servers []string

	Source Source
	// Attr is the flake output holding the cluster (default "blixard").
	Attr string
	// Poll is how often the leader fetches the source (default 5s).
	// Negative durations are errors; zero ones take the default.
	Poll time.Duration
	// Heartbeat is how often this node reports to the cluster (default
	// min(2s, NodeTimeout/10); 2s without a node timeout). More than
	// NodeTimeout/3 is refused: one late heartbeat would get a healthy
	// node marked down.
	Heartbeat time.Duration
	// NodeTimeout: a node silent this long is fenced (with Ceph) and
	// marked down, and its VMs move; 0 never.
	NodeTimeout time.Duration
	// Lease is how long this node's agent keeps its VMs running while its
	// heartbeats do not commit (cut off from the quorum); then it stops
	// them, before the leader may start them elsewhere after NodeTimeout.
	// Default NodeTimeout - max(NodeTimeout/4, 1s); it must hold two
	// heartbeats and end at least 500ms before NodeTimeout. 0 without a
	// node timeout (nothing is ever moved, nothing needs stopping).
	Lease time.Duration
	// EvalTimeout bounds one nix evaluation (default 2m).
	EvalTimeout time.Duration
	// FetchTimeout bounds one fetch of the cluster repository (default
	// 2m): the leader's loop waits for its fetch, and a remote that
	// accepts the connection and then stalls must not stop it.
	FetchTimeout time.Duration
	Eval         Eval

	// Capacity and Labels are what the node offers to placement.
	Capacity replicated.Resources
	Labels   map[string]string
	// WebhookSecret is the HMAC secret of POST /v1/webhook.
	WebhookSecret string
	// Notify names the webhook receivers of the cluster's notable events,
	// which this node sends while it leads (see NotifyConfig).
	Notify NotifyConfig

	// StateDir holds one directory per VM (microvm.nix's layout).
	StateDir string
	// Backend runs the VMs; BackendNone makes a control-plane-only node.
	Backend Backend
	// RestartBackoff is the first delay before a crashed VM is restarted
	// (process backend; default 250ms, doubling to 30s).
	RestartBackoff time.Duration
	// RestorePool is how many guests of snapshot functions the node keeps
	// restored ahead and warmed up, frozen until they take an identity,
	// for the next instances of those functions (process backend with
	// Network; 0: none): each function's restoreAhead of them, every
	// function's next instance before any function's second. Each costs a
	// qemu, the guest memory it touched and an idle vCPU; a cold start that
	// finds one is only the identity exchange.
	RestorePool int
	// StopOnExit stops every VM when Run returns (`blixard dev`); otherwise
	// they keep running and the next agent adopts them.
	StopOnExit bool
	// Network, when enabled, makes this node carry the cluster network
	// (see NetworkConfig).
	Network NetworkConfig
	// Cache shares runner closures with the other nodes (see CacheConfig).
	Cache CacheConfig

	// Ceph, when set, attaches the VMs' RBD volumes, registers the node's
	// Ceph client addresses and lets the leader fence silent nodes. It
	// needs a build with `-tags ceph,pacific`.
	Ceph *volumes.Config

	// OnReady, when set, is called once the node is registered and its API
	// serves on addr.
	OnReady func(addr net.Addr)
	// OnState, when set, is called with the local replica's state after
	// registration and after every applied entry (coalesced), on one
	// goroutine; it must not keep s.
	OnState func(s *replicated.State)
	// OnBuild, when set, is told when the agent starts building a runner,
	// each line nix prints meanwhile and when the build ends
	// (nodeagent.Options.OnBuild; `blixard dev` prints them). It is
	// called from several goroutines and must be quick.
	OnBuild func(nodeagent.BuildProgress)
	// Logger receives the node's logs (default slog.Default()).
	Logger *slog.Logger
}

// DefaultVXLANID is the VXLAN network identifier of --vxlan-id: any id
// works as long as every node of the cluster uses the same and no other
// VXLAN on the underlay does.
const DefaultVXLANID = 4242

// NetworkConfig is the node's part of the cluster network (serve
// --network …; see docs/architecture.md, Networking). Off by default:
// nodes without it place and run VMs as before, without addresses.
type NetworkConfig struct {
	// Enable runs the network component on this node: the overlay bridge
	// and VXLAN (hostnet), DHCP and DNS (netdns's dnsmasq), the masquerade
	// of the cluster network, STATE/NAME/network.env, and the ingress
	// proxy when IngressAddr is set. It needs root (CAP_NET_ADMIN).
	Enable bool
	// Bridge is the overlay bridge (default hostnet.DefaultBridge,
	// "blixard0").
	Bridge string
	// VXLANID is the VXLAN network identifier (1..16777215, default
	// DefaultVXLANID), the same on every node; VXLANPort its UDP port
	// (default 4789), open between the nodes.
	VXLANID   uint32
	VXLANPort int
	// UnderlayAddr is this node's address on the network between the
	// nodes (a LAN, a WAN, a tailnet). Default: the host of RaftAddr, which
	// is where the other nodes send this node's overlay traffic (they know
	// nodes by their Raft address).
	UnderlayAddr netip.Addr
	// IngressAddr is the HOST:PORT of the ingress HTTP proxy ("" : none);
	// TCP entries listen on HOST and their listenPort.
	IngressAddr string
	// DNSDir holds dnsmasq's files (default DataDir/netdns); it and its
	// parents must be searchable by everyone (dnsmasq rereads them as
	// nobody).
	DNSDir string
	// Masquerade keeps the nft table NATTable that masquerades the cluster
	// network out of the host's uplink; false leaves outbound NAT to the
	// host (NixOS: networking.nat).
	Masquerade bool
}

// withDefaults checks the network settings (only when enabled) and fills
// in their defaults; raftAddr is the node's Raft address ("" while it is
// still to be chosen on loopback).
func (n NetworkConfig) withDefaults(dataDir, raftAddr string) (NetworkConfig, error) {
	if !n.Enable {
		return n, nil
	}
	if n.Bridge == "" {
		n.Bridge = hostnet.DefaultBridge
	}
	if len(n.Bridge) > replicated.MaxTapName || strings.ContainsAny(n.Bridge, "/: \t\n") || n.Bridge == "." || n.Bridge == ".." {
		return n, fmt.Errorf("--bridge %q is not a Linux interface name (at most %d characters, no '/', ':' or spaces)", n.Bridge, replicated.MaxTapName)
	}
	if strings.HasPrefix(n.Bridge, replicated.TapPrefix) {
		return n, fmt.Errorf("--bridge %q starts with %q, which names instances' taps: pick another name", n.Bridge, replicated.TapPrefix)
	}
	if n.VXLANID == 0 {
		n.VXLANID = DefaultVXLANID
	}
	if n.VXLANID > 1<<24-1 {
		return n, fmt.Errorf("--vxlan-id %d: want 1..16777215 (24 bits), the same on every node", n.VXLANID)
	}
	if n.VXLANPort == 0 {
		n.VXLANPort = hostnet.DefaultVXLANPort
	}
	if n.VXLANPort < 1 || n.VXLANPort > 65535 {
		return n, fmt.Errorf("--vxlan-port %d: want 1..65535 (default %d)", n.VXLANPort, hostnet.DefaultVXLANPort)
	}
	if !n.UnderlayAddr.IsValid() && raftAddr != "" {
		host, _, err := net.SplitHostPort(raftAddr)
		if err != nil {
			return n, fmt.Errorf("--raft-addr %q: %w", raftAddr, err)
		}
		a, err := netip.ParseAddr(host)
		if err != nil {
			return n, fmt.Errorf("--network needs this node's underlay address: the host of --raft-addr %s is not an IP address; "+
				"pass --underlay-addr (the address other nodes reach %s at)", raftAddr, host)
		}
		n.UnderlayAddr = a
	}
	n.UnderlayAddr = n.UnderlayAddr.Unmap()
	if n.UnderlayAddr.IsValid() && (n.UnderlayAddr.IsUnspecified() || n.UnderlayAddr.IsMulticast() || n.UnderlayAddr.Zone() != "") {
		return n, fmt.Errorf("--underlay-addr %s is not a unicast address of this node: pass the address other nodes reach it at", n.UnderlayAddr)
	}
	if n.IngressAddr != "" {
		_, port, err := net.SplitHostPort(n.IngressAddr)
		if err != nil {
			return n, fmt.Errorf("--ingress-addr %q: want HOST:PORT, e.g. :80: %w", n.IngressAddr, err)
		}
		if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
			return n, fmt.Errorf("--ingress-addr %q: port %q is not 1..65535", n.IngressAddr, port)
		}
	}
	if n.DNSDir == "" {
		n.DNSDir = filepath.Join(dataDir, "netdns")
	}
	dir, err := filepath.Abs(n.DNSDir)
	if err != nil {
		return n, fmt.Errorf("--dns-dir %q: %w", n.DNSDir, err)
	}
	n.DNSDir = dir
	return n, nil
}

// RaftTiming is the Raft tick and the heartbeat and election timeout
// counted in ticks, as Dragonboat takes them (RTTMillisecond, HeartbeatRTT,
// ElectionRTT); see raftstore.Config.
type RaftTiming struct {
	// RTT is the tick (whole milliseconds; default 10ms): about the round
	// trip between the hosts, or more.
	RTT time.Duration
	// HeartbeatRTT is the leader's heartbeat period in ticks (default 10);
	// ElectionRTT the election timeout in ticks (default 100, at least 10
	// heartbeats; Dragonboat randomises it up to twice that).
	HeartbeatRTT, ElectionRTT uint64
}

// Check reports whether c is a valid configuration; its errors name the
// flags of `blixard serve`. It touches nothing but a working tree's
// flake.nix.
func (c Config) Check() error {
	_, err := c.withDefaults()
	return err
}

// withDefaults checks c and fills in its defaults.
func (c Config) withDefaults() (Config, error) {
	if c.NodeID == 0 {
		return c, errors.New("--node-id is required and must be > 0")
	}
	if c.DataDir == "" {
		return c, errors.New("--data-dir is required")
	}
	if c.RaftAddr == "" {
		c.RaftAddr = c.Members[c.NodeID]
	}
	if c.RaftAddr == "" && (len(c.Members) > 0 || c.Join) {
		return c, fmt.Errorf("--raft-addr is required (node %d is not in --members)", c.NodeID)
	}
	if c.NonVoting && !c.Join {
		return c, errors.New("--non-voting needs --join: the initial members are voters")
	}
	if c.Join {
		c.Members = nil // the shard knows its members; the joining node was added with `blixard node add`
	} else if c.RaftAddr != "" {
		if len(c.Members) == 0 {
			c.Members = map[uint64]string{c.NodeID: c.RaftAddr}
		}
		if addr, ok := c.Members[c.NodeID]; !ok || addr != c.RaftAddr {
			return c, fmt.Errorf("--members must list this node as %d=%s", c.NodeID, c.RaftAddr)
		}
	}
	if c.APIListener == nil && c.APIAddr == "" {
		return c, errors.New("--api-addr is required")
	}
	if err := c.checkAgentOnly(); err != nil {
		return c, err
	}
	if c.RestorePool < 0 {
		return c, fmt.Errorf("--restore-pool %d: want 0 (none) or more guests restored ahead", c.RestorePool)
	}
	switch c.Backend {
	case BackendNone, BackendSystemd, BackendProcess:
	default:
		return c, fmt.Errorf("--backend %q: want process or systemd", c.Backend)
	}
	if c.Backend != BackendNone && c.StateDir == "" {
		return c, errors.New("--state-dir is required to run VMs")
	}
	if c.Source.Repo != "" && c.Source.Worktree != "" {
		return c, errors.New("follow either a repository (--repo) or a working tree (blixard dev), not both")
	}
	if c.Source.Repo == "" && (len(c.Source.Trust) > 0 || c.Source.SSHKeyFile != "" || c.Source.HTTPTokenFile != "") {
		return c, errors.New("--trust and the --git-* credentials need --repo: they apply to the cluster repository")
	}
	if c.Source.Worktree != "" {
		dir, err := filepath.Abs(c.Source.Worktree)
		if err != nil {
			return c, err
		}
		if _, err := os.Stat(filepath.Join(dir, "flake.nix")); err != nil {
			return c, fmt.Errorf("%s has no flake.nix: pass the directory of a cluster flake (e.g. examples/demo)", dir)
		}
		c.Source.Worktree = dir
	}
	if c.Capacity.VCPU < 0 || c.Capacity.MemMiB < 0 {
		return c, errors.New("--capacity-vcpu and --capacity-mem-mib must not be negative")
	}
	if c.Poll < 0 || c.Heartbeat < 0 {
		return c, errors.New("--poll and --heartbeat must be positive")
	}
	if err := c.Raft.check(); err != nil {
		return c, err
	}
	if err := c.timing(); err != nil {
		return c, err
	}
	if c.Ceph != nil && !volumes.Built {
		return c, fmt.Errorf("the Ceph settings need Ceph support, but %w", volumes.ErrNotBuilt)
	}
	if c.Ceph != nil {
		if err := c.Ceph.Attach.Check(); err != nil {
			return c, err
		}
	}
	if err := c.checkTransport(); err != nil {
		return c, err
	}
	if err := c.Notify.check(); err != nil {
		return c, err
	}
	var err error
	if c.Network, err = c.Network.withDefaults(c.DataDir, c.RaftAddr); err != nil {
		return c, err
	}
	if c.Cache, err = c.Cache.withDefaults(c.DataDir); err != nil {
		return c, err
	}
	if c.Source.Ref == "" {
		c.Source.Ref = "main"
	}
	setDefault(&c.Source.Debounce, 300*time.Millisecond)
	setDefault(&c.Poll, 5*time.Second)
	setDefault(&c.EvalTimeout, 2*time.Minute)
	setDefault(&c.FetchTimeout, 2*time.Minute)
	if c.Attr == "" {
		c.Attr = "blixard"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

// checkAgentOnly refuses what an agent-only node cannot do, and
// --servers without --agent-only.
func (c Config) checkAgentOnly() error {
	if !c.AgentOnly {
		if len(c.Servers) > 0 {
			return errors.New("--servers needs --agent-only: a node with a Raft replica reads its own")
		}
		return nil
	}
	switch {
	case len(c.Servers) == 0:
		return errors.New("--agent-only needs --servers URL[,URL…]: the API addresses of the Raft nodes (https://HOST:PORT)")
	case c.Join || c.NonVoting || len(c.Members) > 1:
		return errors.New("--agent-only runs no Raft replica: drop --members, --join and --non-voting")
	case c.Source.Worktree != "":
		return errors.New("--agent-only follows no working tree: the servers plan")
	case len(c.Source.Trust) > 0:
		return errors.New("--trust is for the servers, which evaluate; an agent-only node only builds (--repo) what they planned")
	case len(c.Notify.URLs) > 0 || c.Notify.URLFile != "":
		return errors.New("--notify-url is for the servers: an agent-only node never leads, so it would send nothing")
	case c.Network.Enable && !c.Network.UnderlayAddr.IsValid() && c.RaftAddr == "":
		return errors.New("--agent-only --network needs --underlay-addr: the address the other nodes reach this node at (it has no --raft-addr)")
	}
	return nil
}

// raftConfig is the Raft timing in raftstore's terms (zero: its default).
func (t RaftTiming) raftConfig() raftstore.Config {
	return raftstore.Config{RTTMillisecond: uint64(t.RTT / time.Millisecond), HeartbeatRTT: t.HeartbeatRTT, ElectionRTT: t.ElectionRTT}
}

// check refuses a tick that is not whole milliseconds, and an election
// timeout too close to the heartbeat: followers would campaign after a few
// late heartbeats, and a busy host would change leaders all the time.
func (t RaftTiming) check() error {
	if t.RTT < 0 || t.RTT%time.Millisecond != 0 || t.RTT > 10*time.Second {
		return fmt.Errorf("--raft-rtt %v: want whole milliseconds from 1ms to 10s (about the round trip between the hosts; default %dms)",
			t.RTT, raftstore.DefaultRTTMillisecond)
	}
	r := t.raftConfig()
	hb, el := cmp.Or(r.HeartbeatRTT, raftstore.DefaultHeartbeatRTT), cmp.Or(r.ElectionRTT, raftstore.DefaultElectionRTT)
	if el < raftstore.MinElectionHeartbeats*hb {
		return fmt.Errorf("--raft-election-rtt %d is less than %d heartbeats of --raft-heartbeat-rtt %d ticks: followers would call "+
			"elections after a few late heartbeats; raise --raft-election-rtt to at least %d or lower --raft-heartbeat-rtt",
			el, raftstore.MinElectionHeartbeats, hb, raftstore.MinElectionHeartbeats*hb)
	}
	return nil
}

// timing fills in the heartbeat and the lease from the node timeout and
// checks how they fit (see Config.Heartbeat and Config.Lease):
//
//	heartbeat   = min(2s, timeout/10)            (2s without a timeout)
//	lease       = timeout - max(timeout/4, 1s)   (0 without a timeout)
//	heartbeat  <= timeout/3
//	2×heartbeat <= lease < timeout - 500ms
//
// The leader marks a node down after NodeTimeout without a new heartbeat,
// so several heartbeats must fit in it; the agent stops its VMs after
// Lease without a committed one, which must happen before the leader
// starts them elsewhere (500ms for the stop to take effect), and one lost
// heartbeat must not end the lease.
func (c *Config) timing() error {
	nt := c.NodeTimeout
	if nt < 0 || c.Lease < 0 {
		return errors.New("--node-timeout and --lease must not be negative (0: never mark nodes down)")
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = 2 * time.Second
		if nt > 0 {
			c.Heartbeat = min(c.Heartbeat, nt/10)
		}
	}
	if nt == 0 {
		if c.Lease != 0 {
			return fmt.Errorf("--lease %v needs a --node-timeout: without one no node is marked down and its VMs never move, so none needs to stop them", c.Lease)
		}
		return nil
	}
	if c.Heartbeat > nt/3 {
		return fmt.Errorf("--heartbeat %v is more than a third of --node-timeout %v: one late heartbeat would get a healthy node marked down "+
			"and its VMs moved; use --heartbeat %v or less (the default is min(2s, node-timeout/10))", c.Heartbeat, nt, nt/3)
	}
	if c.Lease == 0 {
		c.Lease = nt - max(nt/4, time.Second)
	}
	if c.Lease < 2*c.Heartbeat || c.Lease >= nt-500*time.Millisecond {
		return fmt.Errorf("--lease %v must hold two heartbeats (--heartbeat %v: at least %v) and end at least 500ms before --node-timeout %v "+
			"(below %v), so that a node cut off from the cluster stops its VMs before the leader starts them elsewhere; "+
			"the default is node-timeout - max(node-timeout/4, 1s)", c.Lease, c.Heartbeat, 2*c.Heartbeat, nt, nt-500*time.Millisecond)
	}
	return nil
}

// LeaseRisk says, when it is so, that a Raft leader change can keep this
// node's heartbeats from committing for longer than its lease, so that its
// agent would stop its VMs during a routine election: the election
// timeout is randomised up to twice ElectionRTT, and the last heartbeat
// before it may be a whole period old. "" when the lease outlasts that.
func (c Config) LeaseRisk() string {
	if c.Lease == 0 {
		return ""
	}
	gap := 2*c.Raft.raftConfig().ElectionTimeout() + c.Heartbeat
	if c.Lease > gap {
		return ""
	}
	return fmt.Sprintf("--lease %v is not longer than a Raft leader change can keep heartbeats from committing (up to %v: twice the election timeout "+
		"plus a heartbeat): a leader change may make this node stop its VMs; raise --node-timeout (or --lease), or lower --raft-election-rtt",
		c.Lease, gap)
}

// ParseMembers parses initial voters, `ID=HOST:PORT,…` (--members, as the
// NixOS module renders it); "" is none.
func ParseMembers(s string) (map[uint64]string, error) {
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

// ParseLabels parses node labels, `KEY=VALUE,…` (--labels); "" is none.
func ParseLabels(s string) (map[string]string, error) {
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

// checkTransport checks how the API and Raft are protected: TLS with all
// three files, or plain and unauthenticated when asked for explicitly —
// on loopback, or anywhere when asked for twice.
func (c Config) checkTransport() error {
	tlsOn := c.TLS != raftstore.TLSFiles{}
	switch {
	case tlsOn && (c.TLS.CAFile == "" || c.TLS.CertFile == "" || c.TLS.KeyFile == ""):
		return fmt.Errorf("--tls-ca, --tls-cert and --tls-key go together (got CA %q, certificate %q, key %q): give all three", c.TLS.CAFile, c.TLS.CertFile, c.TLS.KeyFile)
	case tlsOn && c.Insecure:
		return errors.New("--insecure and --tls-ca/--tls-cert/--tls-key exclude each other: drop --insecure to serve HTTPS")
	case c.InsecureIKnow && !c.Insecure:
		return errors.New("--insecure-i-know goes with --insecure")
	case !tlsOn && !c.Insecure:
		return errors.New("the API needs TLS: give --tls-ca, --tls-cert and --tls-key (from `blixard ca init` and `blixard cert issue --node ID`; see docs/security.md), " +
			"or --insecure for plain HTTP without authentication on a loopback --api-addr")
	}
	if !c.Insecure || c.InsecureIKnow {
		return nil
	}
	addr := c.APIAddr
	if c.APIListener != nil {
		addr = c.APIListener.Addr().String()
	}
	if !Loopback(addr) {
		return fmt.Errorf("--insecure on --api-addr %s, which is not a loopback address, lets anyone who reaches it drain nodes, stop VMs and add Raft members: "+
			"give --tls-ca, --tls-cert and --tls-key instead, bind the API to 127.0.0.1, or add --insecure-i-know", addr)
	}
	return nil
}

// Loopback reports whether the host of addr (HOST:PORT) is a loopback
// address or localhost; an empty or wildcard host is every interface.
func Loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func setDefault(d *time.Duration, def time.Duration) {
	if *d <= 0 {
		*d = def
	}
}

// checkCephFiles fails when a configured Ceph file is missing. It runs at
// start, not when the configuration is checked: on NixOS these files
// (secrets) do not exist when the configuration is built.
func checkCephFiles(c *volumes.Config) error {
	if c == nil {
		return nil
	}
	for _, f := range []struct{ flag, path string }{{"--ceph-config-file", c.ConfigFile}, {"--ceph-keyring-file", c.KeyringFile}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return fmt.Errorf("%s: %w", f.flag, err)
		}
	}
	return nil
}

// advertisedAPI is the address other nodes and clients reach the API on:
// the configured host with the bound port, or the bound address when the
// configured host is empty or a wildcard.
func advertisedAPI(bound, configured string) string {
	host, _, err := net.SplitHostPort(configured)
	if err == nil && host != "" && host != "0.0.0.0" && host != "::" {
		_, port, _ := net.SplitHostPort(bound)
		return net.JoinHostPort(host, port)
	}
	return bound
}
