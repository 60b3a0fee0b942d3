package spec

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// NameRule is the rule every VM, volume, function and cluster name follows.
// Names become systemd unit names (microvm@NAME), directory names and RBD
// image names.
const NameRule = `^[a-z][a-z0-9-]{0,62}$`

// MaxReplicas bounds VM.Replicas.
const MaxReplicas = 1000

// StoreDir is the Nix store every runner path must lie in.
const StoreDir = "/nix/store/"

var poolRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,100}$`)

// isName reports whether s matches NameRule.
func isName(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// ValidName reports whether s may name a VM, a volume, a function or the
// cluster, with an error that states the rule.
func ValidName(s string) error {
	if isName(s) {
		return nil
	}
	why := ""
	switch {
	case s == "":
		why = " (it is empty)"
	case len(s) > 63:
		why = fmt.Sprintf(" (it has %d characters, at most 63 are allowed)", len(s))
	}
	return fmt.Errorf("invalid name %q%s: names must match %s (a lowercase letter, then lowercase letters, digits or '-', at most 63 characters) because they become systemd unit, directory and RBD image names", s, why, NameRule)
}

// Validate checks the values of a decoded (or hand-built) cluster: names,
// resources, runner store paths, replica expansion, instances entries
// (names, runners, declared MACs, taps and hostnames, unique across the
// cluster), volumes, placement, update blocks (update.go), functions
// (function.go), network.cidr and ingress. It reports every problem at
// once as an *Error, or returns nil.
func (c *Cluster) Validate() error {
	var ps problems
	if c.Name != "" {
		if err := ValidName(c.Name); err != nil {
			ps.addf("cluster", "%v", err)
		}
	}
	for _, name := range sortedKeys(c.VMs) {
		validateVM(&ps, c, attrPath("vms", name), name, c.VMs[name])
	}
	validateInstanceNames(&ps, c)
	validateIdentities(&ps, c)
	validateNetwork(&ps, c)
	validateIngress(&ps, c)
	validateFunctions(&ps, c)
	return ps.err()
}

func validateVM(ps *problems, c *Cluster, path, name string, vm VM) {
	if err := ValidName(name); err != nil {
		ps.addf(path, "%v", err)
	}
	if vm.Runner != (Runner{}) || vm.Instances == nil {
		validateRunner(ps, attrPath(path, "runner"), vm.Runner)
	}
	validateInstances(ps, path, name, vm)
	validateHealth(ps, attrPath(path, "health"), vm.Health)
	validateUpdate(ps, attrPath(path, "update"), vm)
	if vm.VCPU <= 0 {
		ps.addf(attrPath(path, "vcpu"), "must be > 0, got %d", vm.VCPU)
	}
	if vm.MemMiB <= 0 {
		ps.addf(attrPath(path, "memMiB"), "must be > 0, got %d", vm.MemMiB)
	}
	if vm.Replicas < 1 || vm.Replicas > MaxReplicas {
		ps.addf(attrPath(path, "replicas"), "must be between 1 and %d, got %d", MaxReplicas, vm.Replicas)
	}
	pp := attrPath(path, "placement")
	validatePlacement(ps, pp, vm.Placement)
	for i, n := range vm.Placement.Nodes {
		if n == 0 {
			ps.addf(indexPath(attrPath(pp, "nodes"), i), "node ids are > 0, got 0")
		}
	}
	for i, other := range vm.Placement.AntiAffinity {
		if _, ok := c.VMs[other]; !ok {
			ps.addf(indexPath(attrPath(pp, "antiAffinity"), i), "%q is not a VM declared in vms (antiAffinity names declared VMs, not replicas)", other)
		}
	}
	for _, vol := range sortedKeys(vm.Volumes) {
		vp := attrPath(attrPath(path, "volumes"), vol)
		v := vm.Volumes[vol]
		if err := ValidName(vol); err != nil {
			ps.addf(vp, "%v", err)
		}
		if v.SizeMiB <= 0 {
			ps.addf(attrPath(vp, "sizeMiB"), "must be > 0, got %d", v.SizeMiB)
		}
		if !poolRE.MatchString(v.Pool) {
			ps.addf(attrPath(vp, "pool"), "invalid Ceph pool name %q: use letters, digits, '_', '.' or '-' (default %q)", v.Pool, DefaultPool)
		}
		if ValidName(vol) == nil && ValidName(name) == nil && vm.Replicas <= MaxReplicas {
			// The longest instance name gives the longest image name.
			inst := name
			if vm.Replicas > 1 {
				inst = instanceName(name, vm.Replicas-1)
			}
			if _, err := ImageName(c.Name, inst, vol); err != nil && (c.Name == "" || ValidName(c.Name) == nil) && ValidName(inst) == nil {
				ps.addf(vp, "%v", err)
			}
		}
	}
}

func validateRunner(ps *problems, path string, r Runner) {
	if !isStorePath(r.Drv) || !strings.HasSuffix(r.Drv, ".drv") {
		ps.addf(attrPath(path, "drv"), "must be a .drv store path under %s, got %q", StoreDir, r.Drv)
	}
	if !isStorePath(r.Out) {
		ps.addf(attrPath(path, "out"), "must be a store path under %s, got %q", StoreDir, r.Out)
	}
}

// isStorePath reports whether p is a top-level store path,
// /nix/store/HASH-NAME (a 32-character hash).
func isStorePath(p string) bool {
	base, ok := strings.CutPrefix(p, StoreDir)
	if !ok || len(base) < 34 || base[32] != '-' || strings.ContainsRune(base, '/') {
		return false
	}
	for _, r := range base[:32] {
		if !('0' <= r && r <= '9' || 'a' <= r && r <= 'z') {
			return false
		}
	}
	return true
}

// validateInstanceNames checks the names replica expansion produces: valid
// names, unique across VMs (`web` with replicas 2 makes web-0 and web-1,
// which collide with a VM declared as web-0) and not shared with a
// function (both become microvm@NAME units).
func validateInstanceNames(ps *problems, c *Cluster) {
	owner := map[string]string{} // instance name → description of its origin
	for _, name := range sortedKeys(c.VMs) {
		vm := c.VMs[name]
		if ValidName(name) != nil || vm.Replicas < 1 || vm.Replicas > MaxReplicas {
			continue // already reported
		}
		path := attrPath("vms", name)
		if vm.Replicas > 1 {
			longest := instanceName(name, vm.Replicas-1)
			if err := ValidName(longest); err != nil {
				ps.addf(attrPath(path, "replicas"), "replica name %q is not valid: %v; shorten the VM name", longest, err)
				continue
			}
		}
		for i := range max(vm.Replicas, 1) {
			inst, origin := name, path
			if vm.Replicas > 1 {
				inst = instanceName(name, i)
				origin = fmt.Sprintf("replica %d of %s (replicas = %d)", i, path, vm.Replicas)
			}
			if prev, ok := owner[inst]; ok {
				ps.addf(path, "instance name %q collides with %s; rename one of them", inst, prev)
				continue
			}
			owner[inst] = origin
		}
	}
	for _, name := range sortedKeys(c.Functions) {
		if prev, ok := owner[name]; ok {
			ps.addf(attrPath("functions", name), "name %q collides with VM instance %s; rename one of them", name, prev)
		}
	}
}

func instanceName(name string, i int) string {
	return name + "-" + strconv.Itoa(i)
}

// Instances expands replicas into schedulable instances, sorted by Name: a
// VM with replicas <= 1 is one instance with its declared name; replicas = n
// > 1 gives NAME-0 … NAME-(n-1). An instance with a VM.Instances entry
// carries it (Instance.Own) and runs the entry's runner when it names one.
// Instances share the VM's maps and slices: treat them as read-only. Call
// it on a validated cluster.
func (c *Cluster) Instances() []Instance {
	// Sorting the declared names first and expanding in order avoids
	// sorting large Instance values (10,000 of them cost ~10 ms).
	names := make([]string, 0, len(c.VMs))
	n := 0
	for name, vm := range c.VMs {
		names = append(names, name)
		n += max(vm.Replicas, 1)
	}
	slices.Sort(names)
	out := make([]Instance, 0, n)
	for _, name := range names {
		vm := c.VMs[name]
		if vm.Replicas <= 1 {
			out = append(out, withEntry(Instance{Name: name, Declared: name, VM: vm}))
			continue
		}
		first := len(out)
		for i := range vm.Replicas {
			out = append(out, withEntry(Instance{Name: instanceName(name, i), Declared: name, VM: vm}))
		}
		if vm.Replicas > 10 { // name-10 sorts before name-2
			slices.SortStableFunc(out[first:], byInstanceName)
		}
	}
	// Expanded names of different VMs can interleave ("a-1" < "a-1b" <
	// "a-2"), rarely: checking is cheap. The stable sort keeps colliding
	// names (invalid clusters) in declared-name order.
	if !slices.IsSortedFunc(out, byInstanceName) {
		slices.SortStableFunc(out, byInstanceName)
	}
	return out
}

// withEntry gives in its VM's Instances entry, and the entry's runner
// when it names one.
func withEntry(in Instance) Instance {
	if e, ok := in.Instances[in.Name]; ok {
		in.Own = new(InstanceEntry)
		*in.Own = e
		if in.OwnRunner() {
			in.Runner = e.Runner
		}
	}
	return in
}

func byInstanceName(a, b Instance) int { return strings.Compare(a.Name, b.Name) }
