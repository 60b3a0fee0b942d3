package nixeval

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/blixard/blixard/spec"
)

// applyFunction is passed to `nix eval --apply`; see apply.nix.
//
//go:embed apply.nix
var applyFunction string

// Defaults for zero Options fields.
const (
	DefaultNix       = "nix"
	DefaultTimeout   = 60 * time.Second
	DefaultMaxOutput = 64 << 20
	DefaultMaxStderr = 1 << 20
	DefaultCacheSize = 64
	// DefaultMaxMemory bounds one evaluation: well above what evaluating
	// a few NixOS systems takes, far below what a runaway flake would
	// take from a node that also runs VMs.
	DefaultMaxMemory = 4 << 30
	// DefaultAttr is the flake output evaluated when Eval gets attr "".
	DefaultAttr = "blixard"
)

// Options configure an Evaluator. Zero values mean the defaults above.
type Options struct {
	// Nix is the nix binary: a path, or a name looked up in PATH.
	Nix string
	// Timeout bounds one nix run; on expiry nix and what it started are
	// killed (see package nixrun).
	Timeout time.Duration
	// MaxOutput caps the JSON nix prints (bytes); more is an OutputTooLarge
	// error.
	MaxOutput int64
	// MaxStderr caps the captured stderr (bytes); the end, where nix puts
	// its error, is kept.
	MaxStderr int
	// CacheSize bounds the number of remembered (cacheKey, attr) results;
	// the oldest are forgotten first.
	CacheSize int
	// MaxMemory bounds the memory of one evaluation (bytes; default
	// DefaultMaxMemory, negative for no bound): the address space of nix,
	// and of each process it starts (git), see nixrun.Command.MaxMemory.
	// An evaluation that needs more fails with a MemoryLimit error.
	MaxMemory int64
	// User evaluates as this user (a name or a numeric uid) instead of as
	// this process, which must then be root: nix, and so the flake, can
	// read only what that user may read. The flake reference (the mirror)
	// must be readable by it, and nix must be able to write the flake's
	// sources and .drv files to Store as that user. nix gets that user's
	// HOME (for its caches) and only part of this process's environment
	// (see nixrun.Runner.User); git is told to read repositories owned by
	// others (safe.directory). "" evaluates as this process.
	User string
	// Store is the nix store the evaluation writes the flake's sources and
	// the runners' .drv files to (nix's --store): "daemon" for the host's
	// nix-daemon (how an unprivileged User evaluates on NixOS),
	// "local?root=DIR" for a store of the evaluation's own under DIR (a
	// chroot store: the same /nix/store paths, kept in DIR/nix/store; for
	// hosts without a daemon), "unix://SOCKET" for a daemon at another
	// socket. "" is nix's default (the local store as root; for others the
	// daemon when its socket exists).
	Store string
	// Env adds KEY=VALUE entries to nix's environment, after (overriding)
	// the process's own, e.g. HOME or XDG_CACHE_HOME for nix's caches.
	// A NIX_CONFIG given here is kept and appended to like the process's.
	Env    []string
	Logger *slog.Logger
}

// Result is a successful evaluation.
type Result struct {
	// Spec is decoded and validated. Each call returns its own copy.
	Spec *spec.Cluster
	// JSON is the canonical JSON of Spec (encoding/json of spec.Cluster:
	// sorted map keys, defaults filled in); equal specs have equal JSON.
	JSON []byte
	// Hash is the hex SHA-256 of JSON.
	Hash string
	// Duration is how long nix ran (for a cached result: when it ran).
	Duration time.Duration
	// Cached is true when no nix ran for this call.
	Cached bool
}

// Evaluator runs nix evaluations and remembers their results per
// (cacheKey, attr). It is safe for concurrent use.
type Evaluator struct {
	opts Options
	log  *slog.Logger

	mu sync.Mutex
	// cache and order are guarded by mu. order lists the keys of finished
	// entries, oldest first, for eviction.
	cache map[cacheKey]*entry
	order []cacheKey
}

type cacheKey struct{ key, attr string }

// entry is one evaluation, in flight until done is closed; then res or err
// is set and never changes.
type entry struct {
	done chan struct{}
	res  *Result
	err  *Error
}

// New returns an Evaluator; it starts nothing.
func New(o Options) *Evaluator {
	if o.Nix == "" {
		o.Nix = DefaultNix
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.MaxOutput <= 0 {
		o.MaxOutput = DefaultMaxOutput
	}
	if o.MaxStderr <= 0 {
		o.MaxStderr = DefaultMaxStderr
	}
	if o.CacheSize <= 0 {
		o.CacheSize = DefaultCacheSize
	}
	if o.MaxMemory == 0 {
		o.MaxMemory = DefaultMaxMemory
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.User == "" && os.Geteuid() == 0 {
		log.Warn("evaluating flakes as root: import-from-derivation is off and evaluation is pure, " +
			"but a flake's inputs (path:, git+file:) can still read any file of this host; configure an evaluation user")
	}
	return &Evaluator{opts: o, log: log, cache: map[cacheKey]*entry{}}
}

// Eval evaluates output attr ("" means DefaultAttr) of the flake flakeRef,
// decodes it and validates it. Failures are *Error values.
//
// A non-empty cacheKey (the commit SHA of a reference that pins one) makes
// the result, or the failure, of (cacheKey, attr) remembered: an unchanged
// commit is evaluated once, and concurrent calls for it share one nix run.
// Timeouts, cancellations and a missing nix binary are not remembered. With
// cacheKey "" nix always runs.
func (e *Evaluator) Eval(ctx context.Context, flakeRef, attr, cacheKey string) (*Result, error) {
	if attr == "" {
		attr = DefaultAttr
	}
	if cacheKey == "" {
		res, err := e.eval(ctx, flakeRef, attr)
		if err != nil {
			return nil, err
		}
		return res, nil
	}
	res, err := e.evalCached(ctx, flakeRef, attr, cacheKey)
	if err != nil {
		return nil, err
	}
	return res, nil
}

func (e *Evaluator) evalCached(ctx context.Context, flakeRef, attr, key string) (*Result, *Error) {
	k := cacheKey{key, attr}
	for {
		e.mu.Lock()
		ent, ok := e.cache[k]
		if !ok {
			ent = &entry{done: make(chan struct{})}
			e.cache[k] = ent
			e.mu.Unlock()
			return e.fill(ctx, k, ent, flakeRef, attr)
		}
		e.mu.Unlock()
		select {
		case <-ent.done:
		case <-ctx.Done():
			return nil, contextError(ctx, flakeRef, attr, context.Cause(ctx))
		}
		if ent.err != nil && ent.err.transient() {
			continue // its runner gave up (timeout, its own cancel): try ourselves
		}
		if ent.err != nil {
			e.log.Debug("nix eval cached failure", "flake", flakeRef, "attr", attr, "kind", ent.err.Kind)
			c := *ent.err // each caller gets its own value
			return nil, &c
		}
		return e.copyResult(ent.res)
	}
}

// fill runs the evaluation for the in-flight entry ent, publishes its
// outcome and returns it.
func (e *Evaluator) fill(ctx context.Context, k cacheKey, ent *entry, flakeRef, attr string) (*Result, *Error) {
	res, err := e.eval(ctx, flakeRef, attr)
	e.mu.Lock()
	ent.res, ent.err = res, err
	if err != nil && err.transient() {
		delete(e.cache, k) // waiters see the transient error and retry
	} else {
		e.order = append(e.order, k)
		for len(e.order) > e.opts.CacheSize {
			delete(e.cache, e.order[0])
			e.order = e.order[1:]
		}
	}
	e.mu.Unlock()
	close(ent.done)
	if err != nil {
		return nil, err
	}
	// The caller gets its own copy too, so the cached Spec is never shared.
	c, cerr := e.copyResult(res)
	if cerr != nil {
		return nil, cerr
	}
	c.Cached = false
	return c, nil
}

// copyResult returns a cached result with a fresh Spec.
func (e *Evaluator) copyResult(r *Result) (*Result, *Error) {
	var c spec.Cluster
	if err := json.Unmarshal(r.JSON, &c); err != nil {
		// Cannot happen: JSON is what json.Marshal made of a spec.Cluster.
		return nil, &Error{Kind: InvalidSpec, Message: "re-reading the cached spec: " + err.Error(), Err: err}
	}
	out := *r
	out.Spec = &c
	out.Cached = true
	return &out, nil
}

// eval runs nix once and decodes and validates what it prints.
func (e *Evaluator) eval(ctx context.Context, flakeRef, attr string) (*Result, *Error) {
	start := time.Now()
	out, rerr := e.run(ctx, flakeRef, attr)
	dur := time.Since(start)
	log := e.log.With("flake", flakeRef, "attr", attr, "duration", dur.Round(time.Millisecond))
	if rerr != nil {
		log.Info("nix eval failed", "kind", rerr.Kind)
		return nil, rerr
	}
	c, err := spec.Decode(out)
	if err == nil {
		err = c.Validate()
	}
	if err != nil {
		log.Info("nix eval gave an invalid spec")
		return nil, &Error{Kind: InvalidSpec, FlakeRef: flakeRef, Attr: attr, Message: err.Error(), Err: err}
	}
	canon, err := json.Marshal(c)
	if err != nil {
		return nil, &Error{Kind: InvalidSpec, FlakeRef: flakeRef, Attr: attr, Message: "encoding the spec: " + err.Error(), Err: err}
	}
	sum := sha256.Sum256(canon)
	res := &Result{Spec: c, JSON: canon, Hash: hex.EncodeToString(sum[:]), Duration: dur}
	log.Info("nix eval done", "vms", len(c.VMs), "hash", res.Hash[:12])
	return res, nil
}

// contextError describes why ctx ended: Timeout for a deadline, Canceled
// otherwise.
func contextError(ctx context.Context, flakeRef, attr string, cause error) *Error {
	err := ctx.Err()
	if cause == nil {
		cause = err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &Error{Kind: Timeout, FlakeRef: flakeRef, Attr: attr, Err: cause,
			Message: fmt.Sprintf("the caller's deadline passed before the evaluation finished (%v)", cause)}
	}
	return &Error{Kind: Canceled, FlakeRef: flakeRef, Attr: attr, Err: cause,
		Message: fmt.Sprintf("evaluation canceled (%v)", cause)}
}
