package nodeagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/blixard/blixard/nixrun"
	"github.com/blixard/blixard/progress"
)

// Builder realises a runner that is neither in the store nor buildable
// from a local .drv: it builds VM declared (its name in the flake) of the
// revision at commit and returns the realised out path. The agent compares
// that path with the plan's.
type Builder interface {
	// Build builds the runner of owner, the attribute path under the
	// flake's cluster output: a declared VM (`vms.web`), an instance's own
	// entry (`vms.web.instances."web-0"`) or a function (`functions.hello`).
	Build(ctx context.Context, commit, owner string) (outPath string, err error)
}

// FlakeBuilder builds `FLAKEURL#ATTR.OWNER.runner` with
// `nix build --json --no-link`.
type FlakeBuilder struct {
	// FlakeURL returns the flake reference of the cluster flake at commit
	// (for example a `git+file://…?rev=COMMIT` or `path:` reference).
	FlakeURL func(commit string) (string, error)
	// Attr is the flake output holding the cluster (default "blixard").
	Attr string
	// Nix is the nix binary (default "nix").
	Nix string
}

// Build implements [Builder].
func (fb FlakeBuilder) Build(ctx context.Context, commit, owner string) (string, error) {
	if fb.FlakeURL == nil {
		return "", errors.New("nodeagent: FlakeBuilder has no FlakeURL")
	}
	url, err := fb.FlakeURL(commit)
	if err != nil {
		return "", fmt.Errorf("flake of commit %s: %w", commit, err)
	}
	attr := fb.Attr
	if attr == "" {
		attr = "blixard"
	}
	installable := fmt.Sprintf("%s#%s.%s.runner", url, attr, owner)
	// -L: the builders' output goes to stderr too, so progress reports
	// (and a failure's message) carry the build's own log lines.
	stdout, err := runNixOf(ctx, fb.Nix, "nix", "build", "--json", "--no-link", "--print-build-logs", installable)
	if err != nil {
		return "", fmt.Errorf("nix build %s: %w", installable, err)
	}
	var res []struct {
		Outputs map[string]string `json:"outputs"`
	}
	if err := json.Unmarshal(stdout, &res); err != nil || len(res) != 1 || res[0].Outputs["out"] == "" {
		return "", fmt.Errorf("nix build %s: unexpected output %q", installable, truncate(string(stdout), 300))
	}
	return res[0].Outputs["out"], nil
}

// nixConfig is appended to the caller's NIX_CONFIG: flakes on. Sandbox and
// substituters stay the host's choice (nix.conf): realising from a binary
// cache is the agent's second step, so it must not be switched off here.
const nixConfig = "extra-experimental-features = nix-command flakes"

// runNix runs program (nix, nix-store, nix-instantiate) from PATH.
func runNix(ctx context.Context, program string, args ...string) ([]byte, error) {
	return runNixOf(ctx, "", program, args...)
}

// runNixOf runs program of the nix installation of nix (a path or "" for
// PATH; see nixrun.Runner.Nix) and returns its stdout. A failure reads as
// the agent's always have: the exit status, then the last lines of stderr
// (the build log's end); it unwraps to the *nixrun.Error. A canceled run
// returns ctx.Err().
func runNixOf(ctx context.Context, nix, program string, args ...string) ([]byte, error) {
	cfg := nixConfig
	if extra := nixConfigFrom(ctx); extra != "" {
		cfg += "\n" + extra // a realisation's substituters (share.go)
	}
	// Lines: a caller that shows progress (`blixard dev`) gets nix's lines.
	out, err := nixrun.Runner{Nix: nix}.Run(ctx, nixrun.Command{Program: program, Args: args, ExtraConfig: cfg,
		Lines: progress.From(ctx)})
	if err == nil {
		return out, nil
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	var re *nixrun.Error
	if !errors.As(err, &re) {
		return nil, err
	}
	return nil, &nixError{run: re}
}

// nixError words a failed nix run for the agent's messages, which name the
// command themselves.
type nixError struct{ run *nixrun.Error }

func (e *nixError) Error() string {
	switch e.run.Kind {
	case nixrun.Failed, nixrun.Killed:
		if msg := tailLines(e.run.Message, 15); msg != "" {
			return fmt.Sprintf("%v: %s", e.run.Err, msg)
		}
		return e.run.Err.Error()
	case nixrun.NotFound:
		return e.run.Err.Error()
	}
	return e.run.Message
}

func (e *nixError) Unwrap() error { return e.run }

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return truncate(strings.Join(lines, "\n"), 4000)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// realiser makes a runner's out path valid and roots it.
type realiser struct {
	nix     string
	builder Builder
	// builds deduplicates concurrent builds of one thing (replicas share
	// their runner): nix would make the second wait on the first's lock,
	// polling only every 5 seconds.
	builds *flight
	// rooting bounds the `nix-store --add-root --realise` runs at once.
	// Each costs ~50 ms of CPU; hundreds of VMs assigned at once would
	// otherwise start hundreds of them together and starve the node's Raft
	// replica of CPU for tens of seconds (docs/benchmarks.md, start storm).
	// Builds are not bounded here: they are few (deduplicated by builds)
	// and long.
	rooting chan struct{}
	// share substitutes from the other nodes' binary caches, waits for
	// their builds, and says what this node builds (nil: none of that).
	share *sharing
	// prebuilding: a Prebuilder's realisation, which waits only for peers
	// that are building, never for another builder's queue.
	prebuilding bool
	// roots lets a VM link a runner another VM's root keeps (nil: every
	// root through nix).
	roots *rootBook
	log   *slog.Logger
}

// flight runs one function per key at a time; concurrent callers with the
// same key share its result.
type flight struct {
	mu    sync.Mutex
	calls map[string]*flightCall // guarded by mu
}

type flightCall struct {
	done chan struct{}
	out  string
	err  error
}

func (f *flight) do(ctx context.Context, key string, fn func() (string, error)) (string, error) {
	f.mu.Lock()
	if c, ok := f.calls[key]; ok {
		f.mu.Unlock()
		select {
		case <-c.done:
			return c.out, c.err
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	c := &flightCall{done: make(chan struct{})}
	f.calls[key] = c
	f.mu.Unlock()
	c.out, c.err = fn()
	f.mu.Lock()
	delete(f.calls, key)
	f.mu.Unlock()
	close(c.done)
	return c.out, c.err
}

// addRoot makes out valid (already valid, or from the substituters) and
// roots it at root as an indirect GC root (root → out, registered under
// /nix/var/nix/gcroots/auto). It fails when out is not valid and cannot be
// substituted.
func (r realiser) addRoot(ctx context.Context, root, out string) error {
	if r.roots != nil {
		unlock, err := r.roots.lock(ctx, root)
		if err != nil {
			return err
		}
		defer unlock()
	}
	return r.addRootLocked(ctx, root, out)
}

// addRootLocked is addRoot with root's lock held (rootBook).
func (r realiser) addRootLocked(ctx context.Context, root, out string) error {
	if r.rooting != nil {
		select {
		case r.rooting <- struct{}{}:
			defer func() { <-r.rooting }()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	_, err := runNixOf(ctx, r.nix, "nix-store", "--add-root", root, "--indirect", "--realise", out)
	if err == nil && r.roots != nil {
		r.roots.rooted(root, out)
	}
	return err
}

// realise is step 1 for one VM: out valid and rooted at root. building is
// called before anything is built. It tries, in order: out already valid or
// substitutable (the other nodes' binary caches included); a peer that is
// building it, waited for; the .drv when it exists locally; the Builder.
// What it builds it copies to CacheOptions.PushTo.
func (r realiser) realise(ctx context.Context, root, drv, out, commit, declared string, building func(how string)) error {
	if r.linkKept(ctx, root, out, r.log) {
		return nil
	}
	ctx = r.share.context(ctx)
	if err := r.addRoot(ctx, root, out); err == nil {
		return nil
	} else if ctx.Err() != nil {
		return ctx.Err()
	}
	if r.share.awaitPeers(ctx, out, r.prebuilding) {
		if err := r.addRoot(ctx, root, out); err == nil {
			return nil
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	defer r.share.startBuild(out)()
	var got string
	switch {
	case drv != "" && fileExists(drv):
		building("from " + drv)
		var err error
		got, err = r.builds.do(ctx, "drv "+drv, func() (string, error) {
			stdout, err := runNixOf(ctx, r.nix, "nix-store", "--realise", drv)
			if err != nil {
				return "", fmt.Errorf("build %s: %w", drv, err)
			}
			outs := strings.Fields(string(stdout))
			if len(outs) == 0 {
				return "", fmt.Errorf("build %s: nix-store printed no out path", drv)
			}
			for _, o := range outs {
				if o == out {
					return o, nil
				}
			}
			return outs[0], nil
		})
		if err != nil {
			return err
		}
	case r.builder != nil:
		building(fmt.Sprintf("from the flake at commit %s", shortCommit(commit)))
		var err error
		got, err = r.builds.do(ctx, "flake "+commit+" "+declared, func() (string, error) {
			return r.builder.Build(ctx, commit, declared)
		})
		if err != nil {
			return fmt.Errorf("build runner of %s at commit %s: %w", declared, shortCommit(commit), err)
		}
	default:
		return fmt.Errorf("runner %s is not in the store, its derivation %s is not here, and this agent has no builder", out, drv)
	}
	if got != out {
		return fmt.Errorf("runner built as %s but the plan wants %s: the build is not reproducible or the plan is from another evaluation; check the flake at commit %s", got, out, shortCommit(commit))
	}
	if err := r.addRoot(ctx, root, out); err != nil {
		return fmt.Errorf("GC root for %s: %w", out, err)
	}
	r.share.push(ctx, out)
	return nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func shortCommit(c string) string {
	if len(c) > 12 {
		return c[:12]
	}
	if c == "" {
		return "(unknown)"
	}
	return c
}
