package reconciler

import (
	"fmt"
	"io"
	"strings"

	"github.com/blixard/blixard/replicated"
)

// ANSI colours of Render.
const (
	ansiReset  = "\x1b[0m"
	ansiGreen  = "\x1b[32m"
	ansiYellow = "\x1b[33m"
	ansiCyan   = "\x1b[36m"
	ansiRed    = "\x1b[31m"
	ansiBold   = "\x1b[1;31m"
)

// Render writes the plan for a human, one line per instance or volume, in
// the manner of `terraform plan`:
//
//	$ blixard plan
//	+ web-0 → node 1 (/nix/store/…-runner, 2 vCPU, 1024 MiB) [spread: 0 of web here; binpack: 40% used]
//	~ db on node 1: /nix/store/…-old → /nix/store/…-new
//	→ cache moved node 2 → node 3 (node 2 is draining) [binpack: 0% used]
//	⟳ web: 3 instances roll out in 3 waves (waves of 1, healthy for 10s within 5m0s)
//	- old-vm (was on node 2): no longer declared
//	+ volume db/data: RBD image rbd/prod.db.data, 10240 MiB (created unless it exists)
//	~ volume web/logs: RBD image rbd/prod.web.logs grows 512 → 1024 MiB
//	~ network 10.100.0.0/16 → 10.200.0.0/24 (gateway 10.100.0.1 → 10.200.0.1)
//	~ address of web-0: 10.100.0.2 → 10.200.0.2 (not an instance address of network 10.200.0.0/24)
//	~ identity of web-1: MAC 02:… → 02:…, tap bx… → bx… (declared in the flake)
//	+ address of node 4: 10.200.0.251
//	! big: unschedulable: needs 4096 MiB memory and 2 vCPU; …
//
// The bracket says why an added or moved instance went to its node
// (Change.Placement); a changed one stays where it was. It is followed
// by a blank line and the Summary, or just "No changes." when there
// is nothing to list. Lines are grouped by kind in that order and sorted by
// VM. ANSI colours are written only when color is true.
func (p Plan) Render(w io.Writer, color bool) error {
	var b strings.Builder
	line := func(col, format string, args ...any) {
		if color {
			b.WriteString(col)
		}
		fmt.Fprintf(&b, format, args...)
		if color {
			b.WriteString(ansiReset)
		}
		b.WriteByte('\n')
	}
	for _, c := range p.Added {
		line(ansiGreen, "+ %s → node %d (%s, %d vCPU, %d MiB)%s", c.VM, c.Node, c.OutPath, c.VCPU, c.MemMiB, placedWhy(c))
	}
	for _, c := range p.Changed {
		line(ansiYellow, "~ %s on node %d: %s", c.VM, c.Node, strings.Join(workloadDiff(c), ", "))
	}
	for _, c := range p.Moved {
		s := fmt.Sprintf("→ %s moved node %d → node %d (%s)%s", c.VM, c.OldNode, c.Node, c.Reason, placedWhy(c))
		if d := workloadDiff(c); len(d) > 0 {
			s += "; " + strings.Join(d, ", ")
		}
		line(ansiCyan, "%s", s)
	}
	for _, r := range p.Rollouts {
		line(ansiCyan, "⟳ %s: %d %s roll out in %d %s (%s)", r.VM, len(r.Instances), plural(len(r.Instances), "instance", "instances"),
			r.Waves, plural(r.Waves, "wave", "waves"), r.Update)
	}
	for _, c := range p.Removed {
		line(ansiRed, "- %s (was on node %d): %s", c.VM, c.OldNode, c.Reason)
	}
	for _, v := range p.Volumes {
		if v.OldSizeMiB == 0 {
			line(ansiGreen, "+ volume %s/%s: RBD image %s/%s, %d MiB (created unless it exists)", v.VM, v.Volume, v.Pool, v.Image, v.SizeMiB)
		} else {
			line(ansiYellow, "~ volume %s/%s: RBD image %s/%s grows %d → %d MiB", v.VM, v.Volume, v.Pool, v.Image, v.OldSizeMiB, v.SizeMiB)
		}
	}
	if p.OldCIDR.IsValid() && p.Network != nil {
		line(ansiYellow, "~ network %s → %s (gateway %s → %s)", p.OldCIDR, p.Network.CIDR, replicated.Gateway(p.OldCIDR), p.Network.Gateway)
	}
	for _, c := range p.Readdressed {
		if c.New.IsValid() {
			line(ansiYellow, "~ address of %s: %s → %s (not an instance address of network %s)", c.VM, c.Old, c.New, p.Network.CIDR)
		} else {
			line(ansiRed, "- address of %s: %s released (no free address in network %s)", c.VM, c.Old, p.Network.CIDR)
		}
	}
	for _, c := range p.Reidentified {
		line(ansiYellow, "~ identity of %s: %s (declared in the flake)", c.VM, identityDiff(c.Old, c.New))
	}
	for _, c := range p.NodeAddrs {
		switch {
		case !c.Old.IsValid():
			line(ansiGreen, "+ address of node %d: %s", c.Node, c.New)
		case c.New.IsValid():
			line(ansiYellow, "~ address of node %d: %s → %s", c.Node, c.Old, c.New)
		default:
			line(ansiRed, "- address of node %d: %s released (no free address in network %s)", c.Node, c.Old, p.Network.CIDR)
		}
	}
	for _, u := range p.Unschedulable {
		line(ansiBold, "! %s: unschedulable: %s", u.VM, u.Reason)
	}
	if b.Len() == 0 {
		b.WriteString("No changes.\n")
	} else {
		b.WriteString("\n" + p.Summary() + "\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// placedWhy is the bracketed placement reason of an added or moved
// instance (Change.Placement), "" without one.
func placedWhy(c Change) string {
	if c.Placement == "" {
		return ""
	}
	return " [" + c.Placement + "]"
}

// identityDiff lists what changed in an instance's MAC, tap and hostname.
func identityDiff(old, now replicated.Identity) string {
	var d []string
	if old.MAC != now.MAC {
		d = append(d, "MAC "+old.MAC.String()+" → "+now.MAC.String())
	}
	if old.Tap != now.Tap {
		d = append(d, "tap "+old.Tap+" → "+now.Tap)
	}
	if old.Hostname != now.Hostname {
		d = append(d, "hostname "+old.Hostname+" → "+now.Hostname)
	}
	return strings.Join(d, ", ")
}

// workloadDiff lists what changed in an instance's runner and resources.
func workloadDiff(c Change) []string {
	var d []string
	switch {
	case c.OldOutPath != c.OutPath:
		d = append(d, c.OldOutPath+" → "+c.OutPath)
	case c.OldDrv != c.Drv:
		d = append(d, "derivation "+c.OldDrv+" → "+c.Drv)
	}
	if c.OldVCPU != c.VCPU {
		d = append(d, fmt.Sprintf("%d → %d vCPU", c.OldVCPU, c.VCPU))
	}
	if c.OldMemMiB != c.MemMiB {
		d = append(d, fmt.Sprintf("%d → %d MiB", c.OldMemMiB, c.MemMiB))
	}
	return d
}
