package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"sort"
	"strconv"

	"github.com/blixard/blixard/nixcache"
	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/replicated"
)

// CacheConfig is how the node shares runner closures with the other nodes
// (serve --cache-addr …; see docs/architecture.md, Closure sharing).
// Agents substitute from the other nodes' caches whether or not this node
// serves one.
type CacheConfig struct {
	// Addr is the HOST:PORT of this node's binary cache ("" : none): plain
	// HTTP serving the closures of the runners assigned in the cluster that
	// this node's store has, each narinfo signed with the node's key. Keep
	// it reachable by the nodes only (the signatures protect integrity,
	// not confidentiality).
	Addr string
	// URL is how the other nodes reach it (default http://HOST:PORT with
	// Addr's host, or RaftAddr's when that is a wildcard, and the bound
	// port).
	URL string
	// KeyFile holds the node's signing key (default
	// DataDir/nix-cache/secret-key; generated, named blixard-node-ID, when
	// missing).
	KeyFile string
	// Builder makes this node realise every runner assigned in the
	// cluster, not only its own, so the others copy them from it. The
	// leader does so too while it leads. Needs Addr.
	Builder bool
	// Substituters are further binary caches every realisation may
	// substitute from (an existing harmonia, attic or cachix cache), and
	// TrustedKeys their public keys; PushTo is a nix store URL every
	// runner this node builds is copied to (`nix copy --to`).
	Substituters, TrustedKeys []string
	PushTo                    string
}

// check checks c and fills in its defaults.
func (c CacheConfig) withDefaults(dataDir string) (CacheConfig, error) {
	if c.Addr == "" {
		switch {
		case c.Builder:
			return c, errors.New("--builder needs --cache-addr: the runners a builder realises reach the other nodes through its binary cache")
		case c.URL != "":
			return c, errors.New("--cache-url needs --cache-addr (the address this node's binary cache listens on)")
		}
	} else if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return c, fmt.Errorf("--cache-addr %q: want HOST:PORT, e.g. :7080: %w", c.Addr, err)
	}
	if c.URL != "" {
		if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return c, fmt.Errorf("--cache-url %q: want http://HOST:PORT (how the other nodes reach this node's cache)", c.URL)
		}
	}
	for _, s := range c.Substituters {
		if u, err := url.Parse(s); err != nil || u.Scheme == "" {
			return c, fmt.Errorf("--substituter %q: want a nix store URL such as https://cache.example.org", s)
		}
	}
	for _, k := range c.TrustedKeys {
		if err := nixcache.ValidPublicKey(k); err != nil {
			return c, fmt.Errorf("--trusted-key: %w", err)
		}
	}
	if c.KeyFile == "" {
		c.KeyFile = filepath.Join(dataDir, "nix-cache", "secret-key")
	}
	return c, nil
}

// advertisedCacheURL is the URL the other nodes reach a cache bound at
// bound with: explicit when given, else http:// with the host of
// listenAddr (or of raftAddr when that is a wildcard or empty) and the
// bound port.
func advertisedCacheURL(explicit, listenAddr, bound, raftAddr string) (string, error) {
	if explicit != "" {
		return explicit, nil
	}
	hp, err := advertisedHostPort("--cache-addr", listenAddr, bound, raftAddr)
	if err != nil {
		return "", fmt.Errorf("%w: pass --cache-url (how the other nodes reach it)", err)
	}
	return "http://" + hp, nil
}

// advertisedHostPort is how the other nodes reach a listener of flag bound
// at bound: the host of listenAddr (or of raftAddr when that is a
// wildcard or empty) and the bound port.
func advertisedHostPort(flag, listenAddr, bound, raftAddr string) (string, error) {
	host, _, err := net.SplitHostPort(listenAddr)
	if err != nil {
		return "", fmt.Errorf("%s %q: %w", flag, listenAddr, err)
	}
	if a, err := netip.ParseAddr(host); host == "" || (err == nil && a.IsUnspecified()) {
		if raftAddr == "" {
			return "", fmt.Errorf("%s %s listens on every address and there is no --raft-addr to take the host from", flag, listenAddr)
		}
		if host, _, err = net.SplitHostPort(raftAddr); err != nil {
			return "", fmt.Errorf("--raft-addr %q: %w", raftAddr, err)
		}
	}
	_, port, err := net.SplitHostPort(bound)
	if err != nil {
		return "", fmt.Errorf("%s: bound address %q: %w", flag, bound, err)
	}
	return net.JoinHostPort(host, port), nil
}

// cacheRoots are the runners the cache may serve: every assignment's out
// path, once each, sorted.
func cacheRoots(st *replicated.State) []string {
	if st == nil {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	for _, as := range st.Assignments {
		if as.OutPath != "" && !seen[as.OutPath] {
			seen[as.OutPath] = true
			out = append(out, as.OutPath)
		}
	}
	sort.Strings(out)
	return out
}

// cacheOptions are the agent's cache options; sh is nil when this node
// serves no cache.
func cacheOptions(cfg Config, sh *sharing) nodeagent.CacheOptions {
	o := nodeagent.CacheOptions{Substituters: cfg.Cache.Substituters, TrustedKeys: cfg.Cache.TrustedKeys, PushTo: cfg.Cache.PushTo}
	if sh != nil {
		o.Producing = sh.cache.SetProducing
	}
	return o
}

// sharing is the node's binary cache: bound and keyed before the node
// joins, served and kept up to date once it runs.
type sharing struct {
	cache *nixcache.Cache
	ln    net.Listener // owned until start hands it to Serve
	url   string
	key   string
	log   *slog.Logger
	roots chan struct{} // capacity 1: a newer state to take the roots from
}

// newSharing binds the cache's port and loads (or makes) the node's key;
// nil when cfg serves no cache.
func newSharing(cfg Config, log *slog.Logger) (*sharing, error) {
	c := cfg.Cache
	if c.Addr == "" {
		return nil, nil
	}
	log = log.With("component", "nix-cache")
	key, created, err := nixcache.LoadOrCreateKey(c.KeyFile, "blixard-node-"+strconv.FormatUint(cfg.NodeID, 10))
	if err != nil {
		return nil, fmt.Errorf("--cache-key-file: %w", err)
	}
	if created {
		log.Info("generated this node's binary cache signing key", "file", c.KeyFile, "public", key.Public())
	}
	cache, err := nixcache.NewCache(nixcache.Options{Key: key, Logger: log})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", c.Addr)
	if err != nil {
		return nil, fmt.Errorf("--cache-addr %s (is another blixard running? pick another address): %w", c.Addr, err)
	}
	u, err := advertisedCacheURL(c.URL, c.Addr, ln.Addr().String(), cfg.RaftAddr)
	if err != nil {
		ln.Close()
		return nil, err
	}
	return &sharing{cache: cache, ln: ln, url: u, key: key.Public(), log: log, roots: make(chan struct{}, 1)}, nil
}

// close releases the listener when start never ran.
func (s *sharing) close() {
	if s != nil && s.ln != nil {
		s.ln.Close()
	}
}

// register puts the cache's URL and public key into the registration.
func (s *sharing) register(r *replicated.RegisterNode) {
	if s != nil {
		r.CacheURL, r.CacheKey = s.url, s.key
	}
}

// cacheState is what the cache reads of the node's state: the local
// replica (*raftstore.Store), or an agent-only node's view.
type cacheState interface {
	LocalRead() (*replicated.State, error)
	Leader() (id uint64, ok bool)
}

// start serves the cache, keeps its roots at the assigned runners and runs
// the agent's prebuilder (while this node is a builder or leads); the
// returned function wakes both after an applied entry.
func (s *sharing) start(g *group, cfg Config, agent *nodeagent.Agent, store cacheState) func() {
	ln := s.ln
	s.ln = nil // Serve owns it now
	g.Go("binary cache", func(ctx context.Context) error { return nixcache.Serve(ctx, ln, s.cache, s.log) })
	g.Go("", func(ctx context.Context) error {
		for {
			if st, err := store.LocalRead(); err == nil {
				s.cache.SetRoots(cacheRoots(st))
			}
			select {
			case <-ctx.Done():
				return nil
			case <-s.roots:
			}
		}
	})
	s.log.Info("serving the assigned runners' closures to the other nodes", "url", s.url, "key", s.key, "builder", cfg.Cache.Builder)
	pb := agent.Prebuilder(filepath.Join(cfg.DataDir, "nix-cache", "roots"), func() bool {
		id, ok := store.Leader()
		return cfg.Cache.Builder || (ok && id == cfg.NodeID)
	})
	g.Go("prebuild", pb.Run)
	return func() {
		select {
		case s.roots <- struct{}{}:
		default:
		}
		pb.Notify()
	}
}
