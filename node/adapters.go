package node

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/blixard/blixard/gitsync"
	"github.com/blixard/blixard/nixeval"
	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/volumes"
)

// updater is what gitsync's Mirror and Worktree have in common.
type updater interface {
	Fetch(ctx context.Context) (gitsync.Update, error)
}

// source adapts a mirror or a working tree to reconciler.Source.
type source struct{ u updater }

func (s source) Fetch(ctx context.Context) (reconciler.Fetched, error) {
	u, err := s.u.Fetch(ctx)
	if err != nil {
		return reconciler.Fetched{}, err
	}
	return reconciler.Fetched{Commit: u.Commit, Previous: u.Previous, Rewritten: u.Rewritten}, nil
}

// evaluator adapts nixeval to reconciler.Evaluator: it evaluates the flake
// flakeRef(commit) returns, cached by commit (not cached when "").
type evaluator struct {
	ev       *nixeval.Evaluator
	attr     string
	flakeRef func(commit string) string
}

func (e evaluator) Evaluate(ctx context.Context, commit string) (reconciler.Evaluation, error) {
	res, err := e.ev.Eval(ctx, e.flakeRef(commit), e.attr, commit)
	if err != nil {
		return reconciler.Evaluation{}, err
	}
	return reconciler.Evaluation{Spec: res.Spec, Hash: res.Hash}, nil
}

// LocalEvaluator evaluates the cluster flake in dir as it is on disk
// (uncommitted edits included), for `blixard plan`: pass it, with commit
// "", to reconciler.PlanCommit.
func LocalEvaluator(dir, attr string, timeout time.Duration, log *slog.Logger) reconciler.Evaluator {
	ref := gitsync.PathFlakeURL(dir)
	return evaluator{ev: nixeval.New(nixeval.Options{Timeout: timeout, Logger: log}), attr: attr,
		flakeRef: func(string) string { return ref }}
}

// fencer adapts volumes.Fencer to reconciler.Fencer: it fences the
// node's Ceph addresses, those it registered and those its heartbeats
// added (its volume daemons and kernel mappings).
type fencer struct{ f *volumes.Fencer }

func (f fencer) Fence(ctx context.Context, n *replicated.Node) ([]string, error) {
	return f.f.Fence(ctx, n.ID, n.CephAddrs)
}

// Unfence lifts the blocklist entries of a readied node's old clients
// (reconciler.Unfencer).
func (f fencer) Unfence(ctx context.Context, n *replicated.Node, addrs []string) error {
	return f.f.Unfence(ctx, n.ID, addrs)
}

// consoleLogs serves the VMs' console output on this node (api.ConsoleLogs)
// from where the agent's backend keeps it: the journal under systemd,
// STATE/NAME/console.log under the process backend.
type consoleLogs struct {
	backend  nodeagent.Backend
	stateDir string
}

func (c consoleLogs) Tail(ctx context.Context, name string, follow bool, w io.Writer) error {
	return nodeagent.TailConsole(ctx, c.backend, c.stateDir, name, follow, w)
}

// mirrorBuilder builds runners from the cluster repository at a commit, for
// nodes that did not evaluate that commit themselves (only the leader does).
func mirrorBuilder(ctx context.Context, mirror *gitsync.Mirror, attr string) nodeagent.Builder {
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
