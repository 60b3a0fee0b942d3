package api

import (
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/blixard/blixard/reconciler"
	"github.com/blixard/blixard/replicated"
)

// The text renderings of the answers, as `blixard` prints them without
// --json (like reconciler.Plan.Render for plans).

// WriteStatus writes the status as `blixard status` prints it: a warning
// when it is stale, the revision, the errors, the VMs (with their wanted
// run state) and the nodes.
func WriteStatus(w io.Writer, v StatusView) error {
	WriteStale(w, v.Freshness)
	if v.Revision == nil {
		fmt.Fprintln(w, "Revision: none committed yet")
	} else {
		fmt.Fprintf(w, "Revision: %d  commit %s  ref %s  %s\n  %s\n", v.Revision.ID, short(v.Revision.Commit, 12),
			v.Revision.Ref, v.Revision.CommittedAt.Local().Format(time.RFC3339), v.Revision.Summary)
		if v.Revision.Signer != "" {
			fmt.Fprintf(w, "  signed by %s\n", v.Revision.Signer)
		}
	}
	for _, c := range v.Conditions {
		if c.Type == replicated.SignatureRefused {
			fmt.Fprintf(w, "Refused (commit %s, signature):\n  %s\n", short(c.Commit, 12),
				strings.ReplaceAll(strings.TrimSpace(c.Message), "\n", "\n  "))
		}
	}
	if v.LastError != nil {
		fmt.Fprintf(w, "Last error (commit %s, not deployed):\n  %s\n", short(v.LastError.Commit, 12),
			strings.ReplaceAll(strings.TrimSpace(v.LastError.Message), "\n", "\n  "))
	}
	if v.Reconciler != nil && v.Reconciler.FetchError != "" {
		fmt.Fprintf(w, "Fetch error (leader, node %d): %s\n", v.Leader, v.Reconciler.FetchError)
	}
	if sp := v.Suspended; sp != nil {
		fmt.Fprintf(w, "Following: suspended since %s", sp.Since.Local().Format(time.RFC3339))
		if sp.By != "" {
			fmt.Fprintf(w, " by %s", sp.By)
		}
		if sp.Rollback != nil {
			fmt.Fprintf(w, ", rolled back to revision %d (commit %s)", sp.Rollback.Revision, short(sp.Rollback.Commit, 12))
		}
		fmt.Fprintln(w, "; `blixard resume` follows the branch again")
		if sp.Pending != "" {
			fmt.Fprintf(w, "  pending (fetched, not applied): commit %s\n", short(sp.Pending, 12))
		}
	}
	for _, r := range v.Rollouts {
		fmt.Fprintf(w, "Rollout: %s to commit %s, wave %d (%s), moving %d of %d instances", r.VM, short(r.To, 12),
			r.Waves, strings.Join(r.Wave, ", "), r.Moving, r.Instances)
		if !r.Deadline.IsZero() {
			fmt.Fprintf(w, ", deadline %s", r.Deadline.Local().Format(time.RFC3339))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "Leader: node %d (answered by node %d)\n\n", v.Leader, v.Node)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VM\tNODE\tADDRESS\tPHASE\tHEALTH\tWANT\tVCPU\tMEM\tRUNNER")
	var sick []VMView
	for _, vm := range v.VMs {
		want := string(vm.Want)
		if vm.Stopped != "" {
			want += " (" + string(vm.Stopped) + ")"
		}
		if vm.Health == replicated.Unhealthy {
			sick = append(sick, vm)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%d\t%d MiB\t%s\n", vm.Name, vm.Node, addrOrDash(vm.Address), vm.Phase,
			healthOrDash(vm.Health), want, vm.VCPU, vm.MemMiB, StoreName(vm.OutPath))
	}
	if len(v.VMs) == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	for _, u := range v.Unschedulable {
		fmt.Fprintf(tw, "%s\t-\t-\tunschedulable\t-\t\t\t\t%s\n", u.VM, u.Reason)
	}
	fmt.Fprintln(tw)
	if err := tw.Flush(); err != nil {
		return err
	}
	// The probes' errors are long: below the table, one line each.
	for _, vm := range sick {
		fmt.Fprintf(w, "%s unhealthy since %s: %s\n", vm.Name, vm.HealthSince.Local().Format(time.RFC3339),
			strings.ReplaceAll(vm.HealthError, "\n", " "))
	}
	if len(sick) > 0 {
		fmt.Fprintln(w)
	}
	return WriteNodes(w, v.Nodes)
}

// WriteVMDetails writes instances as `blixard vm NAME` prints them: one
// block each, with the identity, the node and the DNS names.
func WriteVMDetails(w io.Writer, vms []VMDetail) error {
	for i, d := range vms {
		if i > 0 {
			fmt.Fprintln(w)
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		row := func(k, format string, args ...any) {
			fmt.Fprintf(tw, "%s:\t"+format+"\n", append([]any{k}, args...)...)
		}
		row("Instance", "%s (VM %s)", d.Name, d.Declared)
		if d.Unschedulable != "" {
			row("Node", "none: unschedulable: %s", d.Unschedulable)
		} else {
			want := string(d.Want)
			if d.Stopped != "" {
				want += " (" + string(d.Stopped) + ")"
			}
			row("Node", "%d", d.Node)
			row("Phase", "%s (want %s)", d.Phase, want)
			if d.Message != "" {
				row("Message", "%s", d.Message)
			}
			row("Health", "%s", healthLine(d.VMView))
			row("Health check", "%s", d.HealthCheck)
			row("Runner", "%s", d.OutPath)
		}
		if !d.Address.IsValid() {
			row("Address", "none (no network identity yet: the cluster commits one with the next plan)")
		} else {
			row("Address", "%s/%d (gateway %s)", d.Address, d.CIDR.Bits(), d.Gateway)
			row("MAC", "%s", d.MAC)
			row("Tap", "%s", d.Tap)
			row("Hostname", "%s", d.Hostname)
			dns := strings.Join(d.DNSNames, ", ")
			if !d.Resolvable {
				dns += " (once it runs)"
			}
			row("DNS", "%s", dns)
		}
		for _, e := range d.Ingress {
			row("Ingress", "%s", e)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

func healthOrDash(h replicated.HealthState) string {
	if h == "" {
		return "-"
	}
	return string(h)
}

// healthLine is an instance's health in words: healthy or unhealthy since
// when (unhealthy: the error), or "-" and why there is none.
func healthLine(v VMView) string {
	since := v.HealthSince.Local().Format(time.RFC3339)
	switch {
	case v.Health == replicated.Healthy:
		return "healthy since " + since
	case v.Health == replicated.Unhealthy:
		return "unhealthy since " + since + ": " + v.HealthError
	case v.Phase != replicated.PhaseRunning:
		return "- (not running)"
	case v.HealthError != "":
		return "- (not judged yet; last probe: " + v.HealthError + ")"
	}
	return "- (not judged yet)"
}

func addrOrDash(a netip.Addr) string {
	if !a.IsValid() {
		return "-"
	}
	return a.String()
}

// WriteNodes writes the nodes as `blixard nodes` prints them (* = leader).
func WriteNodes(w io.Writer, nodes []NodeView) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
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
		sort.Strings(labels)
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d/%d\t%d/%d MiB\t%s\t%s\n", id, n.State, n.VMs, n.Allocated.VCPU, n.Capacity.VCPU,
			n.Allocated.MemMiB, n.Capacity.MemMiB, n.APIAddr, strings.Join(labels, ","))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// A node's problems are long: below the table, one line each.
	for _, n := range nodes {
		parts := make([]string, 0, len(n.Problems))
		for part := range n.Problems {
			parts = append(parts, part)
		}
		sort.Strings(parts)
		for _, part := range parts {
			p := n.Problems[part]
			if _, err := fmt.Fprintf(w, "node %d %s problem since %s: %s\n", n.ID, part, p.Since.Local().Format(time.RFC3339),
				strings.ReplaceAll(p.Message, "\n", " ")); err != nil {
				return err
			}
		}
	}
	return nil
}

// WriteHistory writes the revisions newest first, as `blixard history`.
func WriteHistory(w io.Writer, revs []replicated.Revision) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REVISION\tCOMMIT\tREF\tTIME\tSIGNER\tCHANGES")
	for i := len(revs) - 1; i >= 0; i-- {
		r := revs[i]
		signer := r.Signer
		if signer == "" {
			signer = "-"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", r.ID, short(r.Commit, 12), r.Ref, r.CommittedAt.Local().Format(time.RFC3339),
			signer, r.Summary)
	}
	return tw.Flush()
}

// WriteDrift writes the drift as `blixard diff` prints it.
func WriteDrift(w io.Writer, drift []reconciler.Drift) error {
	if len(drift) == 0 {
		_, err := fmt.Fprintln(w, "No drift: every VM runs its committed closure on its assigned node (or is stopped on purpose).")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VM\tNODE\tOBSERVED\tREASON")
	for _, d := range drift {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", d.VM, d.Node, d.Phase, d.Reason)
	}
	return tw.Flush()
}

// WriteTokens writes the tokens as `blixard token list` prints them.
func WriteTokens(w io.Writer, tokens []TokenView) error {
	if len(tokens) == 0 {
		_, err := fmt.Fprintln(w, "No tokens (create one with `blixard token create --name NAME --role ROLE`).")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tROLE\tCREATED\tBY")
	for _, t := range tokens {
		by := t.CreatedBy
		if by == "" {
			by = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.Name, t.Role, t.CreatedAt.Local().Format(time.RFC3339), by)
	}
	return tw.Flush()
}

// WriteEvents writes the event log, oldest first, as `blixard events`
// prints it; an event's message names who asked for it through the API.
func WriteEvents(w io.Writer, events []replicated.Event) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INDEX\tTIME\tKIND\tMESSAGE")
	for _, e := range events {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", e.Index, e.At.Local().Format(time.RFC3339), e.Kind, strings.ReplaceAll(e.Message, "\n", " "))
	}
	return tw.Flush()
}

// StoreName shortens /nix/store/HASH-name to HASH[:8]-name for tables.
func StoreName(p string) string {
	base := filepath.Base(p)
	if h, rest, ok := strings.Cut(base, "-"); ok && len(h) == 32 {
		return h[:8] + "-" + rest
	}
	return base
}

func short(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
