package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/node"
	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/replicated"
)

type devOptions struct {
	dataDir, apiAddr, attr    string
	capacityVCPU, capacityMem int
	debounce, evalTimeout     time.Duration
	ceph                      cephOptions
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
			dir := "."
			if len(args) == 1 {
				dir = args[0]
			}
			// Builds show their progress on stderr (progress.go).
			builds := newProgressPrinter(g.stderr)
			cfg, err := o.config(dir, g.stdout, func(b nodeagent.BuildProgress) { builds.build(b, time.Now()) })
			if err != nil {
				return err
			}
			tctx, stopTicks := context.WithCancel(cmd.Context())
			ticked := make(chan struct{})
			go func() {
				defer close(ticked)
				builds.tickEvery(tctx)
			}()
			defer func() { stopTicks(); <-ticked }()
			if cfg.Logger, err = g.logger(); err != nil {
				return err
			}
			stop := context.AfterFunc(cmd.Context(), func() { fmt.Fprintln(g.stdout, "blixard dev: stopping every VM …") })
			defer stop()
			return node.Run(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dataDir, "data-dir", "", "where the dev node keeps its data (default: per project, under $XDG_STATE_HOME/blixard/dev)")
	f.StringVar(&o.apiAddr, "api-addr", "127.0.0.1:7070", "HOST:PORT for the HTTP API")
	f.StringVar(&o.attr, "attr", "blixard", "flake output attribute holding the cluster")
	// VMs' vCPUs are threads on a dev machine: offer more than there are cores.
	f.IntVar(&o.capacityVCPU, "capacity-vcpu", 4*runtime.NumCPU(), "vCPUs offered to VMs")
	f.IntVar(&o.capacityMem, "capacity-mem-mib", node.HostMemMiB(), "memory (MiB) offered to VMs")
	f.DurationVar(&o.debounce, "debounce", 300*time.Millisecond, "quiet time after a file change before re-evaluating")
	f.DurationVar(&o.evalTimeout, "eval-timeout", 2*time.Minute, "limit for one nix evaluation")
	f.StringVar(&o.ceph.user, "ceph-user", "", "Ceph client user for VM volumes (needs a build with -tags ceph,pacific)")
	f.StringVar(&o.ceph.keyringFile, "ceph-keyring-file", "", "Ceph keyring of --ceph-user")
	f.StringVar(&o.ceph.configFile, "ceph-config-file", "", "ceph.conf naming the monitors")
	return cmd
}

// config maps the flags to a one-voter node on the working tree in dir,
// running VMs with the process backend and stopping them on exit; its
// progress goes to out, and the agent's build reports to onBuild.
func (o *devOptions) config(dir string, out io.Writer, onBuild func(nodeagent.BuildProgress)) (node.Config, error) {
	if !node.Loopback(o.apiAddr) {
		return node.Config{}, fmt.Errorf("--api-addr %s: blixard dev serves its API without authentication, so only on loopback: use 127.0.0.1:PORT (a cluster for others is `blixard serve` with TLS)", o.apiAddr)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return node.Config{}, err
	}
	dataDir := o.dataDir
	if dataDir == "" {
		if dataDir, err = node.DevDataDir(dir); err != nil {
			return node.Config{}, err
		}
	}
	p := &progress{out: out, now: time.Now}
	// No RaftAddr: a single voter on a loopback port remembered in dataDir.
	return node.Config{
		NodeID: 1, DataDir: dataDir, APIAddr: o.apiAddr, QuietRaftLog: true,
		Source: node.Source{Worktree: dir, Debounce: o.debounce}, Attr: o.attr, Poll: 10 * time.Second, EvalTimeout: o.evalTimeout,
		Capacity: replicated.Resources{VCPU: o.capacityVCPU, MemMiB: o.capacityMem},
		StateDir: filepath.Join(dataDir, "vms"), Backend: node.BackendProcess, StopOnExit: true, Ceph: o.ceph.config(),
		// A one-person cluster on this machine: plain HTTP on loopback, no
		// credentials (a non-loopback --api-addr is refused).
		Insecure: true,
		OnReady: func(addr net.Addr) {
			fmt.Fprintf(out, "blixard dev: watching %s\n  data in %s, API on %s (blixard status / logs VM -f)\n  status page: %s\n  Ctrl-C stops every VM\n",
				dir, dataDir, addr, devPageURL(addr))
		},
		OnState: p.show,
		OnBuild: onBuild,
	}, nil
}

// devPageURL is the status page of the dev node's API at addr (plain
// HTTP: dev serves without TLS, on loopback only).
func devPageURL(addr net.Addr) string { return "http://" + addr.String() + "/ui/" }

// progress prints what changes: new revisions with their plan summary,
// evaluation errors, and a compact VM table whenever a phase changes.
type progress struct {
	out            io.Writer
	now            func() time.Time
	rev            uint64
	evalErr, table string
}

func (p *progress) show(s *replicated.State) {
	if s.Revision != nil && s.Revision.ID != p.rev {
		p.rev = s.Revision.ID
		fmt.Fprintf(p.out, "%s revision %d: %s\n", p.now().Format("15:04:05"), s.Revision.ID, s.Revision.Summary)
	}
	if e, ok := s.Condition(replicated.EvalFailed); ok && e.Message != p.evalErr {
		p.evalErr = e.Message
		fmt.Fprintf(p.out, "%s evaluation failed; still running revision %d:\n  %s\n", p.now().Format("15:04:05"),
			p.rev, strings.ReplaceAll(strings.TrimSpace(p.evalErr), "\n", "\n  "))
	}
	if table := vmTable(api.VMViews(s), s.Unschedulable); table != p.table {
		p.table = table
		fmt.Fprint(p.out, table)
	}
}

func vmTable(vms []api.VMView, unplaced []replicated.Unschedulable) string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	for _, vm := range vms { // sorted by name
		msg, phase := vm.Message, string(vm.Phase)
		if vm.Health != "" {
			phase += " (" + string(vm.Health) + ")"
		}
		if msg == "" && vm.Health == replicated.Unhealthy {
			msg = vm.HealthError
		}
		if len(msg) > 60 {
			msg = msg[:60] + "…"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", vm.Name, phase, api.StoreName(vm.OutPath), strings.ReplaceAll(msg, "\n", " "))
	}
	for _, u := range unplaced {
		fmt.Fprintf(tw, "  %s\tunschedulable\t-\t%s\n", u.VM, u.Reason)
	}
	tw.Flush()
	return b.String()
}
