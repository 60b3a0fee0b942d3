package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/blixard/blixard/api"
)

// newFunctionsCommand is `blixard functions`.
func newFunctionsCommand(g *globals) *cobra.Command {
	var local bool
	cmd := &cobra.Command{
		Use:   "functions",
		Short: "Show the functions: scale, instances, requests in flight, cold starts and latency",
		Long: strings.TrimSpace(`
Shows every function of the committed revision: its committed scale (want,
within min and max; why it last changed), its instances (node, phase,
health, address), and what the nodes' gateways saw: requests in flight and
queued, requests and cold starts (requests that waited for an instance),
refusals, the p50/p99 of cold-start waits and of whole requests (over each
gateway's last 1000). Every node's ingress listener runs its own gateway:
the answering node asks the others and sums their counts (percentiles: the
highest node's), naming the nodes it could not ask. --local shows the
answering node's gateway alone.` + readsNote),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			path := "/v1/functions?nodes=all"
			if local {
				path = "/v1/functions"
			}
			var v api.FunctionsView
			fresh, err := c.Get(cmd.Context(), path, &v)
			if err != nil {
				return err
			}
			v.Freshness = fresh
			if g.json {
				api.WriteStale(g.stderr, fresh)
			}
			return g.show(v, func(w io.Writer) error { return writeFunctions(w, v) })
		},
	}
	cmd.Flags().BoolVar(&local, "local", false, "the answering node's gateway only (do not ask the other nodes)")
	return cmd
}

// writeFunctions is the text form of `blixard functions`.
func writeFunctions(w io.Writer, v api.FunctionsView) error {
	if len(v.Functions) == 0 {
		_, err := fmt.Fprintln(w, "no functions in the committed revision")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "FUNCTION\tROUTE\tWANT\tMIN/MAX\tINSTANCES\tIN FLIGHT\tQUEUED\tREQUESTS\tCOLD STARTS\tCOLD P50/P99\tREQ P50/P99\n")
	for _, f := range v.Functions {
		ready := 0
		for _, i := range f.Instances {
			if i.Phase == "running" && i.Health == "healthy" {
				ready++
			}
		}
		l := counts(v, f)
		if l == nil {
			l = &api.FunctionLocal{}
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d/%d\t%d (%d ready)\t%d\t%d\t%d\t%d\t%s/%s\t%s/%s\n", f.Name, f.Route, f.Want, f.Min, f.Max,
			len(f.Instances), ready, l.InFlight, l.Queued, l.Requests, l.ColdStarts, ms(l.ColdStartP50), ms(l.ColdStartP99),
			ms(l.RequestP50), ms(l.RequestP99))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, f := range v.Functions {
		if f.Reason != "" {
			fmt.Fprintf(w, "\n%s: scaled to %d at %s: %s\n", f.Name, f.Want, f.ScaledAt.Format(time.RFC3339), f.Reason)
		}
		if l := counts(v, f); l != nil && l.QueueFull+l.TimedOut+l.StartFailed+l.Unreachable > 0 {
			fmt.Fprintf(w, "%s: refused: %d queue full (503), %d timed out (504), %d start failed (502), %d unreachable (502)\n",
				f.Name, l.QueueFull, l.TimedOut, l.StartFailed, l.Unreachable)
		}
		if l := counts(v, f); l != nil && l.StartFailure != "" {
			fmt.Fprintf(w, "%s: last start failed: %s\n", f.Name, l.StartFailure)
		}
		for _, i := range f.Instances {
			line := fmt.Sprintf("  %s  node %d  %s", i.Name, i.Node, i.Phase)
			if i.Health != "" {
				line += " " + i.Health
			}
			if i.Address != "" {
				line += "  " + i.Address
			}
			if i.Message != "" {
				line += "  " + i.Message
			}
			fmt.Fprintln(w, line)
		}
	}
	if v.Gateways == nil {
		fmt.Fprintf(w, "\n(in flight, queued, requests, cold starts and latencies: node %d's gateway only)\n", v.Node)
		return nil
	}
	var asked, missing []string
	for _, gw := range v.Gateways {
		if gw.Error != "" {
			missing = append(missing, fmt.Sprintf("node %d: %s", gw.Node, gw.Error))
		} else {
			asked = append(asked, fmt.Sprint(gw.Node))
		}
	}
	fmt.Fprintf(w, "\n(counts summed over the gateways of nodes %s; latency percentiles: the highest node's)\n", strings.Join(asked, ", "))
	for _, m := range missing {
		fmt.Fprintf(w, "not counted: %s\n", m)
	}
	return nil
}

// counts is what writeFunctions shows of f: the cluster's sum when v
// has every node's gateways, else the answering node's.
func counts(v api.FunctionsView, f api.FunctionView) *api.FunctionLocal {
	if v.Gateways != nil {
		return f.Cluster
	}
	return f.Local
}

func ms(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return d.Round(time.Millisecond).String()
}
