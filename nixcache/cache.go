package nixcache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// BuildingHeader is set on the 404 answer for a root the node does not
// have yet but is producing: "building" while it builds it, "queued"
// while it means to (a builder node's queue). Nix ignores it; Blixard's
// agents read it through [Probe] to wait for the build instead of
// starting their own.
const BuildingHeader = "Blixard-Building"

// DefaultPriority is the nix-cache-info Priority of a node's cache: lower
// is tried first, and cache.nixos.org says 40, so a peer on the local
// network is asked before it.
const DefaultPriority = 30

// DefaultMaxStreams bounds the NARs a cache sends at once.
const DefaultMaxStreams = 16

// Options configure a [Cache].
type Options struct {
	// Key signs every narinfo (required).
	Key SecretKey
	// Store reads the local store (default NixStore{} on the host's store).
	Store Store
	// StoreDir is the store's logical directory (default /nix/store).
	StoreDir string
	// RealStoreDir is where its files are on disk (default StoreDir; for a
	// chroot store see [RealStoreDir]).
	RealStoreDir string
	// Priority is the nix-cache-info Priority (default DefaultPriority).
	Priority int
	// MaxStreams bounds the NARs sent at once; more get 503, which nix
	// takes as this cache failing for the path and tries the next
	// (default DefaultMaxStreams).
	MaxStreams int
	Logger     *slog.Logger
}

// Cache serves the closures of an allow-list of store paths (the roots:
// the runners assigned in the cluster) from the local store over nix's
// binary-cache HTTP protocol, each narinfo signed with Options.Key. It is
// an http.Handler; [Serve] runs it on a listener.
//
// Roots may name paths the store does not have yet (a runner still to be
// built or substituted); the first narinfo request for such a root checks
// the store again, so a root is served from the moment it is valid with no
// polling. Only closures of valid roots are served: anything else is 404,
// so a node never hands out what it was not asked to share.
type Cache struct {
	o   Options
	log *slog.Logger
	// refreshing serialises refreshes (one nix run at a time); a request
	// that waited on another's refresh looks again before starting its own.
	refreshing chan struct{}
	streams    chan struct{}

	mu sync.Mutex
	// roots maps each root to its closure's paths, nil until it was found
	// valid (guarded by mu).
	roots map[string][]string
	// pending maps the hash part of every root without a closure yet to
	// the root (guarded by mu).
	pending map[string]string
	// served maps the hash part of every path in a valid root's closure to
	// what is served for it (guarded by mu).
	served map[string]*entry
	// producing maps roots this node is producing to "building" or
	// "queued" (guarded by mu).
	producing map[string]string
}

// entry is one served path: its info and its narinfo, rendered (and
// signed) once.
type entry struct {
	info    PathInfo
	narinfo string
}

// NewCache returns a cache serving nothing until [Cache.SetRoots].
func NewCache(o Options) (*Cache, error) {
	if !o.Key.Valid() {
		return nil, errors.New("nixcache: Options.Key is required: every served path must be signed")
	}
	if o.Store == nil {
		o.Store = NixStore{}
	}
	if o.StoreDir == "" {
		o.StoreDir = "/nix/store"
	}
	if o.RealStoreDir == "" {
		o.RealStoreDir = o.StoreDir
	}
	if o.Priority <= 0 {
		o.Priority = DefaultPriority
	}
	if o.MaxStreams <= 0 {
		o.MaxStreams = DefaultMaxStreams
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Cache{o: o, log: o.Logger, refreshing: make(chan struct{}, 1), streams: make(chan struct{}, o.MaxStreams),
		roots: map[string][]string{}, pending: map[string]string{}, served: map[string]*entry{},
		producing: map[string]string{}}, nil
}

// PublicKey is the public key of the cache's signing key, for the other
// nodes' trusted-public-keys.
func (c *Cache) PublicKey() string { return c.o.Key.Public() }

// SetRoots replaces the allow-list's roots (store paths; anything else is
// ignored). Closures of roots that stay are kept; those of removed roots
// are no longer served.
func (c *Cache) SetRoots(roots []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	want := map[string]bool{}
	for _, r := range roots {
		if HashPart(r) != "" && path.Dir(r) == c.o.StoreDir {
			want[r] = true
		}
	}
	changed := len(want) != len(c.roots)
	for r := range c.roots {
		if !want[r] {
			delete(c.roots, r)
			changed = true
		}
	}
	for r := range want {
		if _, ok := c.roots[r]; !ok {
			c.roots[r] = nil
			changed = true
		}
	}
	if changed {
		c.rebuildLocked(nil)
	}
}

// SetProducing says which roots this node is producing: each out path
// maps to "building" or "queued" (see [BuildingHeader]).
func (c *Cache) SetProducing(outs map[string]string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.producing = make(map[string]string, len(outs))
	for o, s := range outs {
		c.producing[o] = s
	}
}

// rebuildLocked recomputes pending and served from roots; infos has the
// new infos by path (old entries are reused).
func (c *Cache) rebuildLocked(infos map[string]PathInfo) {
	old := c.served
	c.pending = map[string]string{}
	c.served = map[string]*entry{}
	for r, closure := range c.roots {
		if closure == nil {
			c.pending[HashPart(r)] = r
			continue
		}
		for _, p := range closure {
			h := HashPart(p)
			if _, ok := c.served[h]; ok {
				continue
			}
			if e, ok := old[h]; ok && e.info.Path == p {
				c.served[h] = e
				continue
			}
			if info, ok := infos[p]; ok {
				c.served[h] = &entry{info: info, narinfo: info.NarInfo("nar/"+h+".nar", c.o.Key)}
			}
		}
	}
}

// Closures returns how many roots are served and how many paths their
// closures hold.
func (c *Cache) Closures() (roots, paths int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cl := range c.roots {
		if cl != nil {
			roots++
		}
	}
	return roots, len(c.served)
}

// refresh looks for the pending roots in the store and loads the closures
// of those now valid.
func (c *Cache) refresh(ctx context.Context) error {
	select {
	case c.refreshing <- struct{}{}:
		defer func() { <-c.refreshing }()
	case <-ctx.Done():
		return ctx.Err()
	}
	c.mu.Lock()
	pending := make([]string, 0, len(c.pending))
	for _, r := range c.pending {
		pending = append(pending, r)
	}
	c.mu.Unlock()
	if len(pending) == 0 {
		return nil
	}
	slices.Sort(pending)
	invalid, err := c.o.Store.Invalid(ctx, pending)
	if err != nil {
		return err
	}
	var valid []string
	for _, r := range pending {
		if !slices.Contains(invalid, r) {
			valid = append(valid, r)
		}
	}
	if len(valid) == 0 {
		return nil
	}
	infos, err := c.o.Store.Closure(ctx, valid)
	if err != nil {
		return err
	}
	byPath := make(map[string]PathInfo, len(infos))
	for _, i := range infos {
		byPath[i.Path] = i
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range valid {
		if _, still := c.roots[r]; !still {
			continue
		}
		closure, err := closureOf(r, byPath)
		if err != nil {
			return err
		}
		c.roots[r] = closure
	}
	c.rebuildLocked(byPath)
	return nil
}

// closureOf is root and every path it references, directly or not, as
// infos describe them: the closure of a valid path is complete in the
// store, so a reference infos lacks is an error.
func closureOf(root string, infos map[string]PathInfo) ([]string, error) {
	seen := map[string]bool{root: true}
	queue := []string{root}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		info, ok := infos[p]
		if !ok {
			return nil, fmt.Errorf("the store's closure of %s lacks %s", root, p)
		}
		for _, r := range info.References {
			if !seen[r] {
				seen[r] = true
				queue = append(queue, r)
			}
		}
	}
	out := make([]string, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	slices.Sort(out)
	return out, nil
}

// lookup finds what is served for hash part h. ok false: not served; then
// root is the pending root with that hash part ("" none) and producing
// says whether this node is producing it.
func (c *Cache) lookup(h string) (e *entry, root, producing string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.served[h]; e != nil {
		return e, "", ""
	}
	root = c.pending[h]
	return nil, root, c.producing[root]
}

// ServeHTTP implements http.Handler: GET and HEAD of /nix-cache-info,
// /HASH.narinfo and /nar/HASH.nar (under any prefix the caller strips).
func (c *Cache) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "the binary cache is read-only: use GET or HEAD", http.StatusMethodNotAllowed)
		return
	}
	switch kind, h := parseRequest(r.URL.Path); kind {
	case reqCacheInfo:
		w.Header().Set("Content-Type", "text/x-nix-cache-info")
		fmt.Fprintf(w, "StoreDir: %s\nWantMassQuery: 1\nPriority: %d\n", c.o.StoreDir, c.o.Priority)
	case reqNarInfo:
		c.serveNarInfo(w, r, h)
	case reqNar:
		c.serveNar(w, r, h)
	default:
		http.NotFound(w, r)
	}
}

type reqKind int

const (
	reqUnknown reqKind = iota
	reqCacheInfo
	reqNarInfo
	reqNar
)

// parseRequest classifies a request path (the cache's root is "/") and
// returns the hash part it names: only a valid one counts, so a path that
// reaches the store's directory is always HASH-NAME of a served entry.
func parseRequest(p string) (reqKind, string) {
	switch dir, base := path.Split(p); {
	case dir == "/" && base == "nix-cache-info":
		return reqCacheInfo, ""
	case dir == "/" && strings.HasSuffix(base, ".narinfo"):
		if h := strings.TrimSuffix(base, ".narinfo"); validHashPart(h) {
			return reqNarInfo, h
		}
	case dir == "/nar/" && strings.HasSuffix(base, ".nar"):
		if h := strings.TrimSuffix(base, ".nar"); validHashPart(h) {
			return reqNar, h
		}
	}
	return reqUnknown, ""
}

func (c *Cache) serveNarInfo(w http.ResponseWriter, r *http.Request, h string) {
	e, root, _ := c.lookup(h)
	if e == nil && root != "" {
		// A root asked for that was not valid at the last look: nix asks for
		// a closure's root first, so this is when it may have become valid.
		ctx, cancel := context.WithTimeout(r.Context(), time.Minute)
		err := c.refresh(ctx)
		cancel()
		if err != nil {
			c.log.Warn("binary cache: looking for a root in the store failed", "root", root, "err", err)
			http.Error(w, "the node could not read its nix store; see its log", http.StatusServiceUnavailable)
			return
		}
		e, _, _ = c.lookup(h)
	}
	if e == nil {
		if _, _, producing := c.lookup(h); producing != "" {
			w.Header().Set(BuildingHeader, producing)
		}
		http.Error(w, "not served here", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "text/x-nix-narinfo")
	w.Header().Set("Content-Length", strconv.Itoa(len(e.narinfo)))
	if r.Method == http.MethodHead {
		return
	}
	io.WriteString(w, e.narinfo)
}

func (c *Cache) serveNar(w http.ResponseWriter, r *http.Request, h string) {
	e, _, _ := c.lookup(h)
	if e == nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/x-nix-nar")
	w.Header().Set("Content-Length", strconv.FormatUint(e.info.NarSize, 10))
	if r.Method == http.MethodHead {
		return
	}
	select {
	case c.streams <- struct{}{}:
		defer func() { <-c.streams }()
	default:
		w.Header().Del("Content-Length")
		http.Error(w, "too many NARs in flight; try again", http.StatusServiceUnavailable)
		return
	}
	file := path.Join(c.o.RealStoreDir, path.Base(e.info.Path))
	if err := WriteNAR(w, file); err != nil {
		// The header is gone: the client sees a short body, and nix checks
		// the NAR's hash and size anyway.
		if r.Context().Err() == nil {
			c.log.Warn("binary cache: sending a NAR failed", "path", e.info.Path, "err", err)
		}
		panic(http.ErrAbortHandler)
	}
}
