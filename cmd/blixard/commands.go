package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/node"
	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
)

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// show prints v as JSON with --json, and with human otherwise.
func (g *globals) show(v any, human func(w io.Writer) error) error {
	if g.json {
		return printJSON(g.stdout, v)
	}
	return human(g.stdout)
}

// changes ends plan and diff with exit code 2 when there are changes.
func changes(has bool) error {
	if has {
		return exitCode(exitChanges)
	}
	return nil
}

// readCommand is a command that GETs one answer from path and shows it:
// as JSON (a stale answer's warning then goes to stderr, so that the JSON
// stays clean for scripts) or through human, which is given the answer's
// freshness; exit, when set, turns the answer into the exit code.
func readCommand[T any](g *globals, use, short, long, path string, human func(io.Writer, T, api.Freshness) error,
	exit func(T) error) *cobra.Command {
	return &cobra.Command{
		Use: use, Short: short, Long: strings.TrimSpace(long + readsNote), Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			var v T
			fresh, err := c.Get(cmd.Context(), path, &v)
			if err != nil {
				return err
			}
			if g.json {
				api.WriteStale(g.stderr, fresh)
			}
			if err := g.show(v, func(w io.Writer) error { return human(w, v, fresh) }); err != nil || exit == nil {
				return err
			}
			return exit(v)
		},
	}
}

const readsNote = `

Any node answers at once: without a quorum (an election, most nodes down) from
its own replica, with a warning that the answer is stale and up to which Raft
index it goes.`

// listed shows a list answer, which carries its freshness in headers only:
// the stale warning goes above the table.
func listed[T any](write func(io.Writer, T) error) func(io.Writer, T, api.Freshness) error {
	return func(w io.Writer, v T, fresh api.Freshness) error {
		api.WriteStale(w, fresh)
		return write(w, v)
	}
}

func newReadCommands(g *globals) []*cobra.Command {
	return append([]*cobra.Command{
		// The status view carries its freshness, and WriteStatus warns.
		readCommand(g, "status", "Show the committed revision, the last error, VMs (with their wanted run state) and nodes", "",
			"/v1/status", func(w io.Writer, v api.StatusView, _ api.Freshness) error { return api.WriteStatus(w, v) }, nil),
		readCommand(g, "nodes", "List registered nodes with their state, capacity and allocation (* = leader)", "",
			"/v1/nodes", listed(api.WriteNodes), nil),
		readCommand(g, "history", "List committed revisions, newest first", "", "/v1/history", listed(api.WriteHistory), nil),
		readCommand(g, "diff", "Show drift between the committed plan and what the agents observe",
			"Compare the committed desired state with the VMs the node agents report.\nExit code 0: no drift; 2: drift; 1: error.",
			"/v1/diff", listed(api.WriteDrift), func(d []reconciler.Drift) error { return changes(len(d) > 0) }),
		newEventsCommand(g),    // with -f: events.go
		newFunctionsCommand(g), // functions.go
		// The GitOps controls (rollout status, suspend, resume, rollback,
		// wait) follow: rollout.go.
	}, newRolloutCommands(g)...)
}

func newPlanCommand(g *globals) *cobra.Command {
	var flakeDir, commit, attr string
	var evalTimeout time.Duration
	var showProgress bool
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
			if !cmd.Flags().Changed("progress") {
				showProgress = isTerminal(g.stderr)
			}
			timeout := g.timeout
			if commit != "" && !cmd.Flags().Changed("timeout") {
				timeout = max(timeout, planTimeout)
			}
			c, err := g.clientWithTimeout(timeout)
			if err != nil {
				return err
			}
			var v api.PlanView
			if commit != "" {
				if cmd.Flags().Changed("flake") {
					return fmt.Errorf("--flake and --commit exclude each other")
				}
				var report func(api.PlanProgress) // the plan alone
				if showProgress {
					pp := &planProgress{p: newProgressPrinter(g.stderr), commit: commit}
					report = func(r api.PlanProgress) { pp.report(r, time.Now()) }
				}
				if v, err = c.PlanWithProgress(ctx, commit, report); err != nil {
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
				var st replicated.State
				fresh, err := c.Get(ctx, "/v1/state", &st)
				if err != nil {
					return err
				}
				ectx, finish := ctx, func(error) {}
				if showProgress {
					ectx, finish = newProgressPrinter(g.stderr).evalProgress(ctx, "evaluating "+abs)
				}
				p, err := reconciler.PlanCommit(ectx, node.LocalEvaluator(abs, attr, evalTimeout, log), "", &st)
				finish(err)
				if err != nil {
					return err
				}
				v = api.NewPlanView(p, abs)
				v.Freshness = fresh
			}
			if g.json {
				api.WriteStale(g.stderr, v.Freshness)
			}
			if err := g.show(v, func(w io.Writer) error {
				api.WriteStale(w, v.Freshness)
				return v.Plan.Render(w, isTerminal(w))
			}); err != nil {
				return err
			}
			return changes(v.HasChanges)
		},
	}
	cmd.Flags().StringVar(&flakeDir, "flake", ".", "directory of the cluster flake to evaluate locally")
	cmd.Flags().StringVar(&commit, "commit", "", "full SHA of a pushed commit for the cluster to evaluate")
	cmd.Flags().StringVar(&attr, "attr", "blixard", "flake output attribute holding the cluster")
	cmd.Flags().DurationVar(&evalTimeout, "eval-timeout", 2*time.Minute, "limit for the nix evaluation")
	cmd.Flags().BoolVar(&showProgress, "progress", false,
		"show the evaluation's progress (stage, time so far, nix's latest line) on stderr (default: when stderr is a terminal)")
	return cmd
}

// planTimeout is `plan --commit`'s default --timeout: the node fetches and
// evaluates the commit before it answers, and its --eval-timeout defaults
// to 2m. (`plan --flake` evaluates here; only its read of the state is an
// API call.)
const planTimeout = 3 * time.Minute

func parseNodeID(s string) (uint64, error) {
	id, err := strconv.ParseUint(s, 10, 64)
	if err != nil || id == 0 {
		return 0, fmt.Errorf("node id %q: want a number > 0", s)
	}
	return id, nil
}

func newNodeCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Change a node's scheduling state (cordon, drain, ready), or add, list and remove Raft members",
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
				id, err := parseNodeID(args[0])
				if err != nil {
					return err
				}
				client, err := g.client()
				if err != nil {
					return err
				}
				out, err := client.SetNodeState(cmd.Context(), id, c.state)
				if err != nil {
					return err
				}
				return g.show(out, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "node %d is %s\n", id, c.state)
					return err
				})
			},
		})
	}
	var nonVoting bool
	add := &cobra.Command{
		Use:   "add ID RAFT-ADDR",
		Short: "Add a node to the Raft shard; then start it with `serve --join`",
		Long: `Add a replica to the cluster's Raft shard. The initial members (serve --members)
are voters; keep 3 or 5 voters and add further nodes with --non-voting. Then start
the new node with ` + "`blixard serve --node-id ID --raft-addr RAFT-ADDR --join [--non-voting] …`" + `.
Every node joins as a learner (it never votes, so a node that never starts costs
the cluster nothing); without --non-voting it becomes a voter once it has caught
up and a quorum of the new voters is reachable. A taken or removed id, or a
member's address, is refused. See ` + "`blixard node list-members`" + `.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseNodeID(args[0])
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			out, err := c.AddMember(cmd.Context(), api.MemberRequest{ID: id, RaftAddr: args[1], NonVoting: nonVoting})
			if err != nil {
				return err
			}
			return g.show(out, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "node %d added at %s; %s\n", id, args[1], out.Next)
				return err
			})
		},
	}
	add.Flags().BoolVar(&nonVoting, "non-voting", false, "replicate without voting (for nodes beyond 3 or 5 voters)")
	cmd.AddCommand(add)
	cmd.AddCommand(newMemberCommands(g)...)
	return cmd
}

func newVMCommand(g *globals) *cobra.Command {
	show := func(cmd *cobra.Command, name string) error {
		c, err := g.client()
		if err != nil {
			return err
		}
		var vms []api.VMDetail
		fresh, err := c.Get(cmd.Context(), "/v1/vms/"+url.PathEscape(name), &vms)
		if err != nil {
			return err
		}
		if g.json {
			api.WriteStale(g.stderr, fresh)
		}
		return g.show(vms, func(w io.Writer) error {
			api.WriteStale(w, fresh)
			return api.WriteVMDetails(w, vms)
		})
	}
	cmd := &cobra.Command{
		Use:   "vm [NAME]",
		Short: "Show a VM (address, MAC, tap, node, DNS names), or start, stop or restart it",
		Long: `blixard vm NAME shows an instance (web-1), or every instance of a declared VM
(web): its node and phase, its network identity (address, MAC, tap, hostname),
the DNS names that resolve to it and the ingress entries that route to it.
` + "`blixard vm show NAME`" + ` does the same for a VM named like a subcommand.

Start, stop or restart a VM through Raft. NAME is an instance (web-1) or a
declared VM (web: every replica). A stopped VM keeps its place and resources;
start and stop hold across new revisions until changed again, and beat the
flake's autostart (autostart = false: placed, kept stopped until vm start).`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return cmd.Help()
			}
			return show(cmd, args[0])
		},
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "show NAME",
		Short: "Show an instance, or every instance of a declared VM, with its address and DNS names",
		Args:  cobra.ExactArgs(1),
		RunE:  func(cmd *cobra.Command, args []string) error { return show(cmd, args[0]) },
	})
	for _, c := range []struct {
		action api.VMAction
		short  string
	}{
		{api.VMStart, "Run the VM and keep it running (also one with autostart = false)"},
		{api.VMStop, "Stop the VM and keep it stopped; it keeps its place"},
	} {
		cmd.AddCommand(&cobra.Command{
			Use:   string(c.action) + " NAME",
			Short: c.short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				client, err := g.client()
				if err != nil {
					return err
				}
				out, err := client.SetVMRunState(cmd.Context(), args[0], c.action)
				if err != nil {
					return err
				}
				return g.show(out, func(w io.Writer) error {
					_, err := fmt.Fprintf(w, "%s (see `blixard status`)\n", out.Message)
					return err
				})
			},
		})
	}
	cmd.AddCommand(newVMRestartCommand(g)) // rolling: restart.go
	return cmd
}

func newLogsCommand(g *globals) *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs VM",
		Short: "Show a VM's console output, from whichever node runs it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			return c.Logs(cmd.Context(), args[0], follow, g.stdout)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output")
	return cmd
}
