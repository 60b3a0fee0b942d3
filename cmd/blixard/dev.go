package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/spf13/cobra"

	"github.com/blixard/blixard/nixeval"
	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/raftstore"
	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/volumes"
)

type devOptions struct {
	dir          string
	dataDir      string
	apiAddr      string
	attr         string
	capacityVCPU int
	capacityMem  int
	debounce     time.Duration
	evalTimeout  time.Duration
	ceph         cephOptions
}

func newDevCommand(g *globals) *cobra.Command {
	o := &devOptions{}
	cmd := &cobra.Command{
		Use:   "dev [DIR]",
		Short: "Run a one-node cluster that follows a flake directory as you edit it",
		Long: `Run a complete one-node cluster in this process (Raft replica, reconciler, agent
with the process backend) that watches DIR (default: the current directory),
evaluates its working tree — uncommitted edits included — on every change, and
starts, restarts and stops the VMs to match. Ctrl-C stops every VM.

The node's data (Raft log, VM state dirs, console logs) lives in --data-dir, by
default a per-project directory under $XDG_STATE_HOME/blixard/dev. Other
commands reach it with --server (default 127.0.0.1:7070): status, logs, diff.`,
		Example: `  blixard dev examples/demo
  blixard logs web -f`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.dir = "."
			if len(args) == 1 {
				o.dir = args[0]
			}
			log, err := g.logger()
			if err != nil {
				return err
			}
			return dev(cmd.Context(), o, g.stdout, log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dataDir, "data-dir", "", "where the dev node keeps its data (default: per project, under $XDG_STATE_HOME/blixard/dev)")
	f.StringVar(&o.apiAddr, "api-addr", "127.0.0.1:7070", "HOST:PORT for the HTTP API")
	f.StringVar(&o.attr, "attr", "blixard", "flake output attribute holding the cluster")
	// VMs' vCPUs are threads on a dev machine: offer more than there are cores.
	f.IntVar(&o.capacityVCPU, "capacity-vcpu", 4*runtime.NumCPU(), "vCPUs offered to VMs")
	f.IntVar(&o.capacityMem, "capacity-mem-mib", memTotalMiB(), "memory (MiB) offered to VMs")
	f.DurationVar(&o.debounce, "debounce", 300*time.Millisecond, "quiet time after a file change before re-evaluating")
	f.DurationVar(&o.evalTimeout, "eval-timeout", 2*time.Minute, "limit for one nix evaluation")
	f.StringVar(&o.ceph.user, "ceph-user", "", "Ceph client user for VM volumes (needs a build with -tags ceph,pacific)")
	f.StringVar(&o.ceph.keyringFile, "ceph-keyring-file", "", "Ceph keyring of --ceph-user")
	f.StringVar(&o.ceph.configFile, "ceph-config-file", "", "ceph.conf naming the monitors")
	return cmd
}

// memTotalMiB is the machine's memory, the dev node's default capacity.
func memTotalMiB() int {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 4096
	}
	var kb int
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "MemTotal:") {
			fmt.Sscanf(strings.TrimPrefix(line, "MemTotal:"), "%d", &kb)
		}
	}
	if kb == 0 {
		return 4096
	}
	return kb / 1024
}

// defaultDevDataDir is per project and outside it, so a flake directory
// never fills with state and two projects never share a node.
func defaultDevDataDir(dir string) (string, error) {
	base := os.Getenv("XDG_STATE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("no --data-dir and no home directory: %w", err)
		}
		base = filepath.Join(home, ".local", "state")
	}
	sum := sha256.Sum256([]byte(dir))
	return filepath.Join(base, "blixard", "dev", filepath.Base(dir)+"-"+hex.EncodeToString(sum[:4])), nil
}

// raftAddrFor keeps the dev node's Raft address stable across runs (the log
// records it) while picking a free port the first time.
func raftAddrFor(dataDir string) (string, error) {
	p := filepath.Join(dataDir, "raft-addr")
	if b, err := os.ReadFile(p); err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	l.Close()
	return addr, os.WriteFile(p, []byte(addr+"\n"), 0o644)
}

func dev(ctx context.Context, o *devOptions, out io.Writer, log *slog.Logger) error {
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, "flake.nix")); err != nil {
		return fmt.Errorf("%s has no flake.nix: pass the directory of a cluster flake (e.g. examples/demo)", dir)
	}
	if o.ceph.set() && !volumes.Built {
		return fmt.Errorf("the Ceph settings need Ceph support, but %w", volumes.ErrNotBuilt)
	}
	if o.dataDir == "" {
		if o.dataDir, err = defaultDevDataDir(dir); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(o.dataDir, 0o750); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	raftAddr, err := raftAddrFor(o.dataDir)
	if err != nil {
		return fmt.Errorf("choosing a Raft address: %w", err)
	}
	ln, err := net.Listen("tcp", o.apiAddr)
	if err != nil {
		return fmt.Errorf("--api-addr (is another blixard running? pick another with --api-addr): %w", err)
	}
	defer ln.Close()

	const nodeID = 1
	onApply, applied := appliedSignal()
	store, err := raftstore.Start(ctx, raftstore.Config{
		NodeID: nodeID, RaftAddr: raftAddr, DataDir: filepath.Join(o.dataDir, "raft"),
		Members: map[uint64]string{nodeID: raftAddr}, Logger: log, QuietRaftLog: true, OnApply: onApply,
	})
	if err != nil {
		return fmt.Errorf("starting the dev node's Raft replica in %s: %w", o.dataDir, err)
	}
	defer store.Close()

	evaluator := nixeval.New(nixeval.Options{Timeout: o.evalTimeout, Logger: log})
	flakeRef := nixeval.PathFlakeRef(dir)
	rec := reconciler.New(reconciler.Options{
		Store: store, Source: worktreeSource{dir}, Ref: "worktree",
		Evaluator: worktreeEvaluator{evaluator, flakeRef, o.attr},
		Poll:      10 * time.Second, Resync: time.Second, Logger: log,
	})
	stateDir := filepath.Join(o.dataDir, "vms")
	backend := nodeagent.NewProcessBackend(nodeagent.ProcessOptions{StateDir: stateDir, Logger: log})
	agentOpts := nodeagent.Options{
		NodeID: nodeID, StateDir: stateDir, State: store, Proposer: store, Backend: backend, StopOnExit: true,
		Builder: nodeagent.FlakeBuilder{Attr: o.attr, FlakeURL: func(string) (string, error) { return flakeRef, nil }},
		Logger:  log.With("component", "agent"),
	}
	if o.ceph.set() {
		vols := volumes.NewManager(volumes.Config{ConfigFile: o.ceph.configFile, User: o.ceph.user, KeyringFile: o.ceph.keyringFile},
			nil, log.With("component", "volumes"))
		// Deferred before the goroutines' wait below, so it runs after the
		// agent stopped its VMs and detached their volumes.
		defer vols.Close(context.WithoutCancel(ctx))
		agentOpts.Volumes = vols
	}
	agent := nodeagent.New(agentOpts)

	ctx, cancel := context.WithCancel(ctx)
	var g group
	defer func() { cancel(); g.Wait() }()

	api := &apiServer{store: store, rec: rec, eval: evaluator, attr: o.attr, log: log, stateDir: stateDir}
	serveAPI(ctx, &g, ln, api.routes(), log, cancel)

	reg := replicated.Command{Type: replicated.CmdRegisterNode, RegisterNode: &replicated.RegisterNode{
		ID: nodeID, RaftAddr: raftAddr, APIAddr: ln.Addr().String(),
		Capacity: replicated.Resources{VCPU: o.capacityVCPU, MemMiB: o.capacityMem},
	}}
	if err := proposeOK(ctx, store, reg); err != nil {
		return fmt.Errorf("registering the dev node: %w", err)
	}
	fmt.Fprintf(out, "blixard dev: watching %s\n  data in %s, API on %s (blixard status / logs VM -f)\n  Ctrl-C stops every VM\n",
		dir, o.dataDir, ln.Addr())

	g.Go(func() {
		if err := agent.Start(ctx); err != nil {
			log.Error("node agent stopped", "err", err)
			cancel()
		}
	})
	g.Go(func() { forwardApplied(ctx, applied, agent.Notify) })
	g.Go(func() { _ = rec.Start(ctx) })
	g.Go(func() {
		if err := watchTree(ctx, dir, o.debounce, rec.Trigger, log); err != nil {
			log.Warn("file watching stopped; changes are picked up every 10s instead", "err", err)
		}
	})
	g.Go(func() { devProgress(ctx, store, out) })

	<-ctx.Done()
	fmt.Fprintln(out, "blixard dev: stopping every VM …")
	return nil
}

// worktreeSource stands for a git ref in dev mode: its "commit" is a hash of
// the working tree, so any edit is a new revision.
type worktreeSource struct{ dir string }

func (s worktreeSource) Fetch(ctx context.Context) (reconciler.Fetched, error) {
	h, err := hashTree(s.dir)
	return reconciler.Fetched{Commit: h}, err
}

// hashTree hashes names, modes and contents of every file under dir except
// .git and result symlinks of nix build.
func hashTree(dir string) (string, error) {
	h := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() && (d.Name() == ".git" || d.Name() == ".direnv") {
			return filepath.SkipDir
		}
		if strings.HasPrefix(d.Name(), "result") && d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\x00%o\x00", rel, info.Mode())
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, "%d\x00", len(b))
			h.Write(b)
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", dir, err)
	}
	return "worktree-" + hex.EncodeToString(h.Sum(nil))[:16], nil
}

type worktreeEvaluator struct {
	ev       *nixeval.Evaluator
	flakeRef string
	attr     string
}

func (w worktreeEvaluator) Evaluate(ctx context.Context, token string) (reconciler.Evaluation, error) {
	res, err := w.ev.Eval(ctx, w.flakeRef, w.attr, token)
	if err != nil {
		return reconciler.Evaluation{}, err
	}
	return reconciler.Evaluation{Spec: res.Spec, Hash: res.Hash}, nil
}

// watchTree calls changed once the tree has been quiet for debounce after
// any change under dir (new subdirectories are watched too).
func watchTree(ctx context.Context, dir string, debounce time.Duration, changed func(), log *slog.Logger) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	add := func(root string) error {
		return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return err
			}
			if d.Name() == ".git" {
				return filepath.SkipDir
			}
			return w.Add(p)
		})
	}
	if err := add(dir); err != nil {
		return err
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("watcher closed")
			}
			if strings.Contains(ev.Name, string(filepath.Separator)+".git") {
				continue
			}
			if ev.Has(fsnotify.Create) {
				if fi, err := os.Stat(ev.Name); err == nil && fi.IsDir() {
					_ = add(ev.Name)
				}
			}
			log.Debug("file changed", "path", ev.Name, "op", ev.Op.String())
			timer.Reset(debounce)
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("watcher closed")
			}
			log.Warn("file watcher error", "err", err)
		case <-timer.C:
			changed()
		}
	}
}

// devProgress prints what changes: new revisions with their plan summary,
// evaluation errors, and a compact VM table whenever a phase changes.
func devProgress(ctx context.Context, store *raftstore.Store, out io.Writer) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	var lastRev uint64
	var lastErr, lastTable string
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s, err := store.LocalRead()
		if err != nil {
			continue
		}
		if s.Revision != nil && s.Revision.ID != lastRev {
			lastRev = s.Revision.ID
			fmt.Fprintf(out, "%s revision %d: %s\n", time.Now().Format("15:04:05"), s.Revision.ID, s.Revision.Summary)
		}
		if e, ok := s.Condition(replicated.EvalFailed); ok && e.Message != lastErr {
			lastErr = e.Message
			fmt.Fprintf(out, "%s evaluation failed; still running revision %d:\n  %s\n", time.Now().Format("15:04:05"),
				lastRev, strings.ReplaceAll(strings.TrimSpace(lastErr), "\n", "\n  "))
		}
		table := vmTable(vmViews(s), s.Unschedulable)
		if table != lastTable {
			lastTable = table
			fmt.Fprint(out, table)
		}
	}
}

func vmTable(vms []vmView, unplaced []replicated.Unschedulable) string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	sort.Slice(vms, func(i, j int) bool { return vms[i].Name < vms[j].Name })
	for _, vm := range vms {
		msg := vm.Message
		if len(msg) > 60 {
			msg = msg[:60] + "…"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", vm.Name, vm.Phase, storeName(vm.OutPath), strings.ReplaceAll(msg, "\n", " "))
	}
	for _, u := range unplaced {
		fmt.Fprintf(tw, "  %s\tunschedulable\t-\t%s\n", u.VM, u.Reason)
	}
	tw.Flush()
	return b.String()
}
