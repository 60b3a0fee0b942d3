package main

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/node"
	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/raftstore"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/volumes"
)

type serveOptions struct {
	nodeID                                          uint64
	dataDir, raftAddr, apiAddr, members             string
	join, nonVoting, agent, checkConfig             bool
	repo, ref, attr, labels, logDB                  string
	poll, heartbeat, nodeTimeout, evalTimeout       time.Duration
	fetchTimeout                                    time.Duration
	lease                                           time.Duration
	raft                                            node.RaftTiming
	capacityVCPU, capacityMem                       int
	webhookSecret, secretFile, configFile, stateDir string
	backend                                         string
	restartDelay                                    time.Duration
	restorePool                                     int
	ceph                                            cephOptions
	git                                             node.Source // credentials and trust only
	eval                                            node.Eval
	tls                                             raftstore.TLSFiles
	insecure, insecureIKnow                         bool
	network                                         node.NetworkConfig
	notify                                          node.NotifyConfig
	cache                                           node.CacheConfig
	underlayAddr                                    string
	agentOnly                                       bool
	servers                                         string
}

// cephOptions are the Ceph flags. There is no pool flag: each volume's pool
// comes from the flake (see removedCephPool).
type cephOptions struct {
	user, keyringFile, configFile, attach string
}

// config is the node's Ceph configuration, nil when no Ceph flag is set.
func (c cephOptions) config() *volumes.Config {
	if c.user == "" && c.keyringFile == "" && c.configFile == "" {
		return nil
	}
	return &volumes.Config{ConfigFile: c.configFile, User: c.user, KeyringFile: c.keyringFile, Attach: volumes.AttachMode(c.attach)}
}

func newServeCommand(g *globals) *cobra.Command {
	o := &serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run a Blixard node: Raft replica, reconciler (when leader) and HTTP API",
		Example: `  blixard serve --node-id 1 --data-dir /var/lib/blixard \
    --raft-addr 10.0.0.1:7001 --api-addr 10.0.0.1:7070 \
    --tls-ca /etc/blixard/ca.crt --tls-cert /etc/blixard/node-1.crt --tls-key /run/secrets/node-1.key \
    --members 1=10.0.0.1:7001,2=10.0.0.2:7001,3=10.0.0.3:7001 \
    --repo https://git.example.org/infra/cluster.git --ref main \
    --capacity-vcpu 16 --capacity-mem-mib 65536 --labels zone=a

  # a VM host without a Raft replica, talking to the three servers above
  blixard serve --agent-only --node-id 42 --api-addr 10.0.1.42:7070 \
    --servers https://10.0.0.1:7070,https://10.0.0.2:7070,https://10.0.0.3:7070 \
    --tls-ca /etc/blixard/ca.crt --tls-cert /etc/blixard/node-42.crt --tls-key /run/secrets/node-42.key \
    --capacity-vcpu 64 --capacity-mem-mib 262144`,
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
			cfg, err := o.config(os.Getenv("INVOCATION_ID") != "")
			if err != nil {
				return err
			}
			if o.checkConfig {
				fmt.Fprintln(g.stdout, "configuration ok")
				return nil
			}
			if cfg.Logger, err = g.logger(); err != nil {
				return err
			}
			return node.Run(cmd.Context(), cfg)
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
	f.BoolVar(&o.agentOnly, "agent-only", false, "run no Raft replica: register, heartbeat and read this node's work through the "+
		"--servers' APIs with the node certificate (for the many VM hosts of a big cluster; 3 or 5 nodes are servers)")
	f.StringVar(&o.servers, "servers", "", "with --agent-only: the servers' API addresses, https://HOST:PORT,… (or HOST:PORT,…); "+
		"the node fails over between them")
	f.StringVar(&o.repo, "repo", "", "cluster repository URL (file://, https://, ssh://) holding the cluster flake")
	f.StringVar(&o.ref, "ref", "main", "branch of --repo to follow")
	f.StringVar(&o.attr, "attr", "blixard", "flake output attribute holding the cluster")
	f.DurationVar(&o.poll, "poll", 5*time.Second, "how often the leader fetches --repo")
	f.DurationVar(&o.heartbeat, "heartbeat", 0, "how often this node reports to the cluster (default min(2s, node-timeout/10); at most node-timeout/3)")
	f.DurationVar(&o.nodeTimeout, "node-timeout", 30*time.Second, "a node silent this long is fenced (Ceph) and marked down, and its VMs move; 0: never")
	f.DurationVar(&o.lease, "lease", 0, "a node whose heartbeats have not committed for this long stops its VMs, before the leader moves them "+
		"(default node-timeout - max(node-timeout/4, 1s); at least 2 × heartbeat and below node-timeout - 500ms; none without --node-timeout)")
	// Raft timing, in Dragonboat's terms. The defaults are etcd's for real
	// hosts (100 ms heartbeat, 1 s election timeout): a busy host that
	// starts thousands of VMs must not make followers call elections
	// (docs/benchmarks.md measured 5 ms ticks changing leaders under load).
	f.DurationVar(&o.raft.RTT, "raft-rtt", raftstore.DefaultRTTMillisecond*time.Millisecond,
		"Raft tick, in whole ms: about the round trip between the hosts, or more; heartbeat and election are counted in it")
	f.Uint64Var(&o.raft.HeartbeatRTT, "raft-heartbeat-rtt", raftstore.DefaultHeartbeatRTT, "the Raft leader heartbeats every this many ticks (10 × 10ms: 100ms)")
	f.Uint64Var(&o.raft.ElectionRTT, "raft-election-rtt", raftstore.DefaultElectionRTT,
		"a follower calls an election after this many ticks without the leader, randomised up to twice that (100 × 10ms: 1-2s); at least 10 heartbeats; the same on every node")
	f.DurationVar(&o.evalTimeout, "eval-timeout", 2*time.Minute, "limit for one nix evaluation")
	f.DurationVar(&o.fetchTimeout, "fetch-timeout", 2*time.Minute, "limit for one fetch of --repo (a stalled remote is given up and tried again)")
	f.IntVar(&o.capacityVCPU, "capacity-vcpu", 0, "vCPUs this node offers to VMs")
	f.IntVar(&o.capacityMem, "capacity-mem-mib", 0, "memory (MiB) this node offers to VMs")
	f.StringVar(&o.labels, "labels", "", "node labels: k=v,… (matched by placement.labels)")
	f.StringVar(&o.logDB, "raft-logdb", "tiny", "Raft log DB memory budget: tiny, small, medium, large")
	f.StringVar(&o.webhookSecret, "webhook-secret", os.Getenv("BLIXARD_WEBHOOK_SECRET"), "HMAC secret for POST /v1/webhook (env BLIXARD_WEBHOOK_SECRET)")
	f.StringVar(&o.stateDir, "state-dir", nodeagent.DefaultStateDir, "per-VM state directories (microvm.nix layout: NAME/current, NAME/booted)")
	f.StringVar(&o.backend, "backend", "", "how VMs run: systemd (microvm@NAME units; the default under systemd) or process (the agent supervises microvm-run; the default otherwise)")
	f.DurationVar(&o.restartDelay, "restart-backoff", 250*time.Millisecond, "first delay before a crashed VM is restarted (doubles per crash, capped at 30s)")
	f.IntVar(&o.restorePool, "restore-pool", 4, "with --network and the process backend: guests of snapshot functions kept restored ahead and warmed up, "+
		"frozen until they take an identity, for the next instances of those functions (each function's restoreAhead, every function's next instance first; "+
		"0: none; each costs a qemu, the guest memory it touched and an idle vCPU; "+
		"a cold start that finds one is only the identity exchange)")
	f.BoolVar(&o.agent, "agent", true, "run the node agent (false: a control-plane-only node that runs no VMs)")
	removedFlag(f, "ceph-pool", removedCephPool)
	f.StringVar(&o.ceph.user, "ceph-user", "", "Ceph client user name, without the client. prefix")
	f.StringVar(&o.ceph.keyringFile, "ceph-keyring-file", "", "Ceph keyring of --ceph-user")
	f.StringVar(&o.ceph.configFile, "ceph-config-file", "", "ceph.conf naming the monitors")
	f.StringVar(&o.ceph.attach, "volume-attach", "auto", "how RBD volumes reach VMs at STATE/NAME/volumes/VOL: kernel (rbd device map --exclusive; a link to /dev/rbdN), daemon (a qemu-storage-daemon per volume; NBD on a unix socket there) or auto (kernel when /sys/bus/rbd exists)")
	f.StringArrayVar(&o.git.Trust, "trust", nil, "evaluate only commits signed by a key of this OpenPGP keyring or SSH allowed_signers file (repeatable)")
	f.StringVar(&o.git.SSHKeyFile, "git-ssh-key", "", "private key for an ssh:// --repo (needs --git-known-hosts)")
	f.StringVar(&o.git.SSHKnownHostsFile, "git-known-hosts", "", "known_hosts file with the git server's host key")
	f.StringVar(&o.git.HTTPTokenFile, "git-token-file", "", "file holding an access token for an https:// --repo")
	f.StringVar(&o.git.HTTPUsername, "git-username", "", "user name sent with --git-token-file")
	f.Int64Var(&o.eval.MaxMemory, "eval-max-memory-mib", 0, "memory limit of one nix evaluation in MiB (0: 4096; -1: none)")
	f.StringVar(&o.eval.User, "eval-user", "", "evaluate as this unprivileged user (see docs/security.md)")
	f.StringVar(&o.eval.Store, "eval-store", "", "nix store the evaluation writes to, e.g. local?root=/var/lib/blixard-eval/store (default: nix's)")
	f.StringVar(&o.tls.CAFile, "tls-ca", "", "the cluster CA's ca.crt: with --tls-cert and --tls-key, the API serves HTTPS to clients with a certificate or token, and Raft is mutual TLS")
	f.StringVar(&o.tls.CertFile, "tls-cert", "", "this node's certificate (`blixard cert issue --node ID --host …`), naming the hosts of --raft-addr and --api-addr")
	f.StringVar(&o.tls.KeyFile, "tls-key", "", "the key of --tls-cert (mode 0600)")
	f.BoolVar(&o.insecure, "insecure", false, "serve the API over plain HTTP without authentication (everyone is admin) and Raft over plain TCP; loopback --api-addr only")
	f.BoolVar(&o.insecureIKnow, "insecure-i-know", false, "with --insecure: allow it on an --api-addr that is not loopback")
	f.BoolVar(&o.network.Enable, "network", false, "give instances their cluster addresses on this node: overlay bridge and VXLAN, DHCP and DNS (dnsmasq), "+
		"outbound masquerade, STATE/NAME/network.env; needs root (see docs/architecture.md, Networking)")
	f.StringVar(&o.network.Bridge, "bridge", "blixard0", "with --network: the overlay bridge; it carries the cluster's gateway address")
	f.Uint32Var(&o.network.VXLANID, "vxlan-id", node.DefaultVXLANID, "with --network: the VXLAN network identifier (1-16777215), the same on every node")
	f.IntVar(&o.network.VXLANPort, "vxlan-port", 4789, "with --network: the VXLAN UDP port, open between the nodes")
	f.StringVar(&o.underlayAddr, "underlay-addr", "", "with --network: this node's IP address on the network between the nodes (default: the host of --raft-addr, "+
		"where other nodes send its overlay traffic)")
	f.StringVar(&o.network.IngressAddr, "ingress-addr", "", "with --network: HOST:PORT of the ingress HTTP proxy, e.g. :80 (default: none); TCP entries listen on HOST")
	f.StringVar(&o.network.DNSDir, "dns-dir", "", "with --network: directory of dnsmasq's files, searchable by everyone (default DATA-DIR/netdns)")
	f.BoolVar(&o.network.Masquerade, "masquerade", true, "with --network: masquerade the cluster network out of this host's uplink (nft table ip blixard); "+
		"false leaves outbound NAT to the host (NixOS: networking.nat)")
	f.StringVar(&o.secretFile, "webhook-secret-file", "", "file holding the webhook HMAC secret (overrides --webhook-secret)")
	f.StringArrayVar(&o.notify.URLs, "notify-url", nil, "POST the cluster's notable events as JSON to this URL while this node leads (repeatable; "+
		"kinds: --notify-kind; retried 5 times, 1000 queued per URL; logs show only its host)")
	f.StringVar(&o.notify.URLFile, "notify-url-file", "", "file of more --notify-url receivers, one per line, read at start (for URLs that hold a token)")
	f.StringVar(&o.notify.SecretFile, "notify-secret-file", "", "file holding the HMAC secret that signs every notification (X-Blixard-Signature: sha256=…), read at start")
	f.StringArrayVar(&o.notify.Kinds, "notify-kind", nil, "event kind to notify (repeatable; default PlanCommitted, NodeDown (a NodeStateChanged to down), "+
		"RolloutFailed, RolloutReverted; see `blixard events`)")
	f.StringVar(&o.cache.Addr, "cache-addr", "", "HOST:PORT of this node's binary cache: plain HTTP serving the assigned runners' closures its store has, "+
		"signed with its key, to the other nodes (default: none; firewall it to the nodes)")
	f.StringVar(&o.cache.URL, "cache-url", "", "with --cache-addr: how the other nodes reach it (default http://HOST:PORT, HOST from --cache-addr or --raft-addr)")
	f.StringVar(&o.cache.KeyFile, "cache-key-file", "", "with --cache-addr: this node's signing key in nix's format (default DATA-DIR/nix-cache/secret-key, generated when missing)")
	f.BoolVar(&o.cache.Builder, "builder", false, "with --cache-addr: realise every runner assigned in the cluster, not only this node's, so the others copy it (the leader does while it leads)")
	f.StringArrayVar(&o.cache.Substituters, "substituter", nil, "a further binary cache every realisation substitutes from, e.g. an existing harmonia or attic (repeatable)")
	f.StringArrayVar(&o.cache.TrustedKeys, "trusted-key", nil, "public key (NAME:BASE64) the paths of --substituter are signed with (repeatable)")
	f.StringVar(&o.cache.PushTo, "push-to", "", "nix store URL every runner this node builds is copied to (nix copy --to), e.g. the store behind --substituter")
	f.StringVar(&o.configFile, "config", "", "JSON file of settings keyed by flag name, e.g. {\"node-id\": 1}; flags on the command line win")
	f.BoolVar(&o.checkConfig, "check-config", false, "validate the flags and --config file, then exit 0 (valid) or 1")
	return cmd
}

// config maps the flags to a node.Config and checks it; underSystemd picks
// the default backend.
func (o *serveOptions) config(underSystemd bool) (node.Config, error) {
	members, err := node.ParseMembers(o.members)
	if err != nil {
		return node.Config{}, err
	}
	if o.raftAddr == "" && members[o.nodeID] == "" && o.nodeID != 0 && !o.agentOnly {
		return node.Config{}, fmt.Errorf("--raft-addr is required (node %d is not in --members)", o.nodeID)
	}
	labels, err := node.ParseLabels(o.labels)
	if err != nil {
		return node.Config{}, err
	}
	backend := node.Backend(o.backend)
	if backend == "" {
		backend = map[bool]node.Backend{true: node.BackendSystemd, false: node.BackendProcess}[underSystemd]
	}
	if backend != node.BackendProcess && backend != node.BackendSystemd {
		return node.Config{}, fmt.Errorf("--backend %q: want process or systemd", o.backend)
	}
	if !o.agent {
		backend = node.BackendNone
	}
	nw := o.network
	if !nw.Enable {
		// Settings that do nothing without --network are a mistake, not a
		// preference: say so instead of ignoring them.
		for _, f := range []struct {
			name string
			set  bool
		}{
			{"--bridge", nw.Bridge != "" && nw.Bridge != "blixard0"}, {"--vxlan-id", nw.VXLANID != 0 && nw.VXLANID != node.DefaultVXLANID},
			{"--vxlan-port", nw.VXLANPort != 0 && nw.VXLANPort != 4789},
			{"--underlay-addr", o.underlayAddr != ""}, {"--ingress-addr", nw.IngressAddr != ""}, {"--dns-dir", nw.DNSDir != ""},
		} {
			if f.set {
				return node.Config{}, fmt.Errorf("%s needs --network: add --network (NixOS: services.blixard.network.enable), or drop %s", f.name, f.name)
			}
		}
	}
	if o.underlayAddr != "" {
		a, err := netip.ParseAddr(o.underlayAddr)
		if err != nil {
			return node.Config{}, fmt.Errorf("--underlay-addr %q: want an IP address (this node's address on the network between the nodes): %w", o.underlayAddr, err)
		}
		nw.UnderlayAddr = a
	}
	cfg := node.Config{
		NodeID: o.nodeID, DataDir: o.dataDir, RaftAddr: o.raftAddr, APIAddr: o.apiAddr, Members: members,
		Join: o.join, NonVoting: o.nonVoting, LogDB: o.logDB,
		Source: node.Source{Repo: o.repo, Ref: o.ref, SSHKeyFile: o.git.SSHKeyFile, SSHKnownHostsFile: o.git.SSHKnownHostsFile,
			HTTPTokenFile: o.git.HTTPTokenFile, HTTPUsername: o.git.HTTPUsername, Trust: o.git.Trust},
		Attr: o.attr, Poll: o.poll, Heartbeat: o.heartbeat, NodeTimeout: o.nodeTimeout, Lease: o.lease, EvalTimeout: o.evalTimeout, FetchTimeout: o.fetchTimeout,
		Raft:     o.raft,
		Eval:     node.Eval{MaxMemory: o.eval.MaxMemory << 20, User: o.eval.User, Store: o.eval.Store},
		Capacity: replicated.Resources{VCPU: o.capacityVCPU, MemMiB: o.capacityMem}, Labels: labels,
		WebhookSecret: o.webhookSecret, StateDir: o.stateDir, Backend: backend, RestartBackoff: o.restartDelay, RestorePool: o.restorePool,
		Ceph: o.ceph.config(), TLS: o.tls, Insecure: o.insecure, InsecureIKnow: o.insecureIKnow, Network: nw,
		Notify: o.notify, Cache: o.cache, AgentOnly: o.agentOnly,
	}
	for _, srv := range strings.Split(o.servers, ",") {
		if srv = strings.TrimSpace(srv); srv != "" {
			cfg.Servers = append(cfg.Servers, srv)
		}
	}
	return cfg, cfg.Check()
}
