package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/nixeval"
	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func short(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// storeName shortens /nix/store/HASH-name to HASH[:8]-name for tables.
func storeName(p string) string {
	base := filepath.Base(p)
	if h, rest, ok := strings.Cut(base, "-"); ok && len(h) == 32 {
		return h[:8] + "-" + rest
	}
	return base
}

func newStatusCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the committed revision, the last error, VMs and nodes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var v statusView
			if err := g.client().do(cmd.Context(), "GET", "/v1/status", nil, &v); err != nil {
				return err
			}
			if g.json {
				return printJSON(g.stdout, v)
			}
			w := g.stdout
			if v.Revision == nil {
				fmt.Fprintln(w, "Revision: none committed yet")
			} else {
				fmt.Fprintf(w, "Revision: %d  commit %s  ref %s  %s\n  %s\n", v.Revision.ID, short(v.Revision.Commit, 12),
					v.Revision.Ref, v.Revision.CommittedAt.Local().Format(time.RFC3339), v.Revision.Summary)
			}
			if v.LastError != nil {
				fmt.Fprintf(w, "Last error (commit %s, not deployed):\n  %s\n", short(v.LastError.Commit, 12),
					strings.ReplaceAll(strings.TrimSpace(v.LastError.Message), "\n", "\n  "))
			}
			if v.Reconciler != nil && v.Reconciler.FetchError != "" {
				fmt.Fprintf(w, "Fetch error (leader, node %d): %s\n", v.Leader, v.Reconciler.FetchError)
			}
			fmt.Fprintf(w, "Leader: node %d (answered by node %d)\n\n", v.Leader, v.Node)
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "VM\tNODE\tPHASE\tVCPU\tMEM\tRUNNER")
			for _, vm := range v.VMs {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d MiB\t%s\n", vm.Name, vm.Node, vm.Phase, vm.VCPU, vm.MemMiB, storeName(vm.OutPath))
			}
			if len(v.VMs) == 0 {
				fmt.Fprintln(tw, "(none)")
			}
			for _, u := range v.Unschedulable {
				fmt.Fprintf(tw, "%s\t-\tunschedulable\t\t\t%s\n", u.VM, u.Reason)
			}
			fmt.Fprintln(tw)
			writeNodesTable(tw, v.Nodes)
			return tw.Flush()
		},
	}
}

func writeNodesTable(tw *tabwriter.Writer, nodes []nodeView) {
	fmt.Fprintln(tw, "NODE\tSTATE\tVMS\tVCPU\tMEM\tAPI\tLABELS")
	for _, n := range nodes {
		id := fmt.Sprint(n.ID)
		if n.Leader {
			id += "*"
		}
		var labels []string
		for k, v := range n.Labels {
			labels = append(labels, k+"="+v)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d/%d\t%d/%d MiB\t%s\t%s\n", id, n.State, n.VMs, n.Allocated.VCPU, n.Capacity.VCPU,
			n.Allocated.MemMiB, n.Capacity.MemMiB, n.APIAddr, strings.Join(sortedStrings(labels), ","))
	}
}

func newNodesCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "nodes",
		Short: "List registered nodes with their state, capacity and allocation (* = leader)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var nodes []nodeView
			if err := g.client().do(cmd.Context(), "GET", "/v1/nodes", nil, &nodes); err != nil {
				return err
			}
			if g.json {
				return printJSON(g.stdout, nodes)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			writeNodesTable(tw, nodes)
			return tw.Flush()
		},
	}
}

func newHistoryCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "history",
		Short: "List committed revisions, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var revs []replicated.Revision
			if err := g.client().do(cmd.Context(), "GET", "/v1/history", nil, &revs); err != nil {
				return err
			}
			if g.json {
				return printJSON(g.stdout, revs)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "REVISION\tCOMMIT\tREF\tTIME\tCHANGES")
			for i := len(revs) - 1; i >= 0; i-- {
				r := revs[i]
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", r.ID, short(r.Commit, 12), r.Ref,
					r.CommittedAt.Local().Format(time.RFC3339), r.Summary)
			}
			return tw.Flush()
		},
	}
}

func newDiffCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "diff",
		Short: "Show drift between the committed plan and what the agents observe",
		Long: `Compare the committed desired state with the VMs the node agents report.
Exit code 0: no drift; 2: drift; 1: error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var drift []reconciler.Drift
			if err := g.client().do(cmd.Context(), "GET", "/v1/diff", nil, &drift); err != nil {
				return err
			}
			if g.json {
				if err := printJSON(g.stdout, drift); err != nil {
					return err
				}
			} else if len(drift) == 0 {
				fmt.Fprintln(g.stdout, "No drift: every VM runs its committed closure on its assigned node.")
			} else {
				tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "VM\tNODE\tOBSERVED\tREASON")
				for _, d := range drift {
					fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", d.VM, d.Node, d.Phase, d.Reason)
				}
				if err := tw.Flush(); err != nil {
					return err
				}
			}
			if len(drift) > 0 {
				return exitCode(exitChanges)
			}
			return nil
		},
	}
}

func newPlanCommand(g *globals) *cobra.Command {
	var flakeDir, commit, attr string
	var evalTimeout time.Duration
	cmd := &cobra.Command{
		Use:   "plan",
		Short: "Evaluate a flake (local dir or pushed commit) and show what would change",
		Long: `Evaluate the cluster flake and compare the result with the committed plan:
VMs added, removed, changed (old → new out path), moved, and unschedulable.

With --flake (default: the current directory) nix runs here, on the working tree
including uncommitted edits; with --commit the node behind --server evaluates
that commit of the repository it follows.

Exit code 0: no changes; 2: changes; 1: error (including a failed evaluation).`,
		Example: `  blixard plan                   # the flake in the current directory
  blixard plan --flake ./cluster
  blixard plan --commit 3f2c…    # a pushed commit, evaluated by the cluster`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c := g.client()
			var v planView
			if commit != "" {
				if cmd.Flags().Changed("flake") {
					return fmt.Errorf("--flake and --commit exclude each other")
				}
				if err := c.do(ctx, "POST", "/v1/plan", planRequest{Commit: commit}, &v); err != nil {
					return err
				}
			} else {
				abs, err := filepath.Abs(flakeDir)
				if err != nil {
					return err
				}
				if _, err := os.Stat(filepath.Join(abs, "flake.nix")); err != nil {
					return fmt.Errorf("--flake %s: no flake.nix there (pass the directory of the cluster flake)", abs)
				}
				log, err := g.logger()
				if err != nil {
					return err
				}
				ev := nixeval.New(nixeval.Options{Timeout: evalTimeout, Logger: log})
				res, err := ev.Eval(ctx, nixeval.PathFlakeRef(abs), attr, "")
				if err != nil {
					return err
				}
				var s replicated.State
				if err := c.do(ctx, "GET", "/v1/state", nil, &s); err != nil {
					return err
				}
				if v, err = newPlanView(&s, res.Spec, "", abs); err != nil {
					return err
				}
			}
			if g.json {
				if err := printJSON(g.stdout, v); err != nil {
					return err
				}
			} else {
				v.Plan.Render(g.stdout, isTerminal(g.stdout))
			}
			if v.HasChanges {
				return exitCode(exitChanges)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&flakeDir, "flake", ".", "directory of the cluster flake to evaluate locally")
	cmd.Flags().StringVar(&commit, "commit", "", "full SHA of a pushed commit for the cluster to evaluate")
	cmd.Flags().StringVar(&attr, "attr", "blixard", "flake output attribute holding the cluster")
	cmd.Flags().DurationVar(&evalTimeout, "eval-timeout", 2*time.Minute, "limit for the nix evaluation")
	return cmd
}

// newPlanView plans desired against the committed state; a change the
// cluster would refuse (a volume shrink) is an error, as it is for the leader.
func newPlanView(s *replicated.State, desired *spec.Cluster, commit, flake string) (planView, error) {
	if err := reconciler.CheckVolumes(s.Desired, desired); err != nil {
		return planView{}, err
	}
	p := reconciler.Compute(reconciler.Input{Desired: desired, Nodes: s.Nodes, Current: s.Assignments, Previous: s.Desired})
	v := planView{Commit: commit, Flake: flake, HasChanges: p.HasChanges(), Summary: p.Summary(), Plan: p}
	if s.Revision != nil {
		v.Base = s.Revision.ID
	}
	return v, nil
}

func sortedStrings(s []string) []string {
	sort.Strings(s)
	return s
}

func newNodeCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Change a node's scheduling state (cordon, drain, ready) or add a node",
	}
	for _, c := range []struct {
		verb  string
		state replicated.NodeState
		short string
	}{
		{"cordon", replicated.NodeCordoned, "Keep the node's VMs but place no new ones on it"},
		{"drain", replicated.NodeDraining, "Move the node's VMs to other nodes and place no new ones on it"},
		{"ready", replicated.NodeReady, "Make the node eligible for VMs again"},
	} {
		cmd.AddCommand(&cobra.Command{
			Use:   c.verb + " ID",
			Short: c.short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				var out map[string]any
				if err := g.client().do(cmd.Context(), "POST", "/v1/nodes/"+url.PathEscape(args[0])+"/state",
					nodeStateRequest{State: c.state}, &out); err != nil {
					return err
				}
				if g.json {
					return printJSON(g.stdout, out)
				}
				fmt.Fprintf(g.stdout, "node %s is %s\n", args[0], c.state)
				return nil
			},
		})
	}
	var nonVoting bool
	add := &cobra.Command{
		Use:   "add ID RAFT-ADDR",
		Short: "Add a node to the Raft shard; then start it with `serve --join`",
		Long: `Add a replica to the cluster's Raft shard. The initial members (serve --members)
are voters; keep 3 or 5 voters and add further nodes with --non-voting. Then start
the new node with ` + "`blixard serve --node-id ID --raft-addr RAFT-ADDR --join [--non-voting] …`" + `.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := strconv.ParseUint(args[0], 10, 64)
			if err != nil || id == 0 {
				return fmt.Errorf("node id %q: want a number > 0", args[0])
			}
			var out map[string]any
			if err := g.client().do(cmd.Context(), "POST", "/v1/members",
				memberRequest{ID: id, RaftAddr: args[1], NonVoting: nonVoting}, &out); err != nil {
				return err
			}
			if g.json {
				return printJSON(g.stdout, out)
			}
			fmt.Fprintf(g.stdout, "node %d added at %s; %v\n", id, args[1], out["next"])
			return nil
		},
	}
	add.Flags().BoolVar(&nonVoting, "non-voting", false, "replicate without voting (for nodes beyond 3 or 5 voters)")
	cmd.AddCommand(add)
	return cmd
}
