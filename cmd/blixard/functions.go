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
	return &cobra.Command{
		Use:   "functions",
		Short: "Show the functions: scale, instances, requests in flight, cold starts and latency",
		Long: strings.TrimSpace(`
Shows every function of the committed revision: its committed scale (want,
within min and max; why it last changed), its instances (node, phase,
health, address), and what the answering node's gateway saw: requests in
flight and queued, requests and cold starts (requests that waited for an
instance), refusals, the p50/p99 of cold-start waits and of whole requests
(over the last 1000). Those counts are this node's gateway's only: every
node's ingress listener runs its own gateway; ask another node with
--server, or scrape every node's /metrics.` + readsNote),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			var v api.FunctionsView
			fresh, err := c.Get(cmd.Context(), "/v1/functions", &v)
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
		l := f.Local
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
		if l := f.Local; l != nil && l.QueueFull+l.TimedOut+l.StartFailed+l.Unreachable > 0 {
			fmt.Fprintf(w, "%s: refused here: %d queue full (503), %d timed out (504), %d start failed (502), %d unreachable (502)\n",
				f.Name, l.QueueFull, l.TimedOut, l.StartFailed, l.Unreachable)
		}
		if l := f.Local; l != nil && l.StartFailure != "" {
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
	fmt.Fprintf(w, "\n(in flight, queued, requests, cold starts and latencies: node %d's gateway only)\n", v.Node)
	return nil
}

func ms(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return d.Round(time.Millisecond).String()
}
