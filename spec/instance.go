package spec

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Per-instance entries (VM.Instances): a runner of its own and the parts of
// a network identity that are baked into it. lib.mkCluster writes them for
// microvm.nix configurations, one per replica, so that replicas differ in
// MAC, tap and hostname; the cluster then hands out exactly those.

// MaxTapName is the longest Linux interface name: IFNAMSIZ (16) less the
// terminating NUL.
const MaxTapName = 15

// bridgeMACPrefix starts the MAC of every node's bridge (hostnet.BridgeMAC:
// 0a:b1 and the node's overlay address); an instance using it would be
// mistaken for a node.
var bridgeMACPrefix = [2]byte{0x0a, 0xb1}

// ValidMAC reports whether s may be an instance's declared MAC address,
// with an error that says what to write instead: six octets in lower-case
// colon form ("02:1a:2b:3c:4d:5e", the form MAC addresses are compared and
// stored in), locally administered unicast (first octet's bit 1 set, bit 0
// clear: no vendor assigns it, so it cannot clash with a physical NIC), and
// not 0a:b1:…, which the nodes' bridges use.
func ValidMAC(s string) error {
	hw, err := net.ParseMAC(s)
	switch {
	case err != nil || len(hw) != 6:
		return fmt.Errorf("%q is not a MAC address such as \"02:1a:2b:3c:4d:5e\"", s)
	case hw.String() != s:
		return fmt.Errorf("%q: write MAC addresses in lower-case colon form, %q", s, hw.String())
	case hw[0]&0x03 != 0x02:
		return fmt.Errorf("%s is not a locally administered unicast address (the first octet's bit 1 set, bit 0 clear, e.g. 02:…)", s)
	case hw[0] == bridgeMACPrefix[0] && hw[1] == bridgeMACPrefix[1]:
		return fmt.Errorf("%s starts with 0a:b1, which the nodes' bridges use: start instance MACs with 02", s)
	}
	return nil
}

// ValidTap reports whether s may be an instance's declared tap interface
// name: 1 to MaxTapName characters of letters, digits, '_', '.' and '-',
// starting with a letter or digit (the kernel's own rule, dev_valid_name,
// is looser; this one also keeps the name safe in unit names and scripts).
func ValidTap(s string) error {
	if s == "" || len(s) > MaxTapName {
		return fmt.Errorf("tap interface name %q has %d characters: Linux allows 1 to %d", s, len(s), MaxTapName)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		if !alnum && (i == 0 || c != '_' && c != '.' && c != '-') {
			return fmt.Errorf("%q is not a valid interface name: use letters, digits, '_', '.' and '-', starting with a letter or digit", s)
		}
	}
	return nil
}

// InstanceNames are the instance names replica expansion gives VM name
// with the given replicas: NAME-0 … NAME-(replicas-1), or NAME alone when
// replicas <= 1.
func InstanceNames(name string, replicas int) []string {
	if replicas <= 1 {
		return []string{name}
	}
	out := make([]string, replicas)
	for i := range out {
		out[i] = instanceName(name, i)
	}
	return out
}

// validateInstances checks one VM's instances entries: the names are
// exactly its instance names, the values well-formed, and without a runner
// of the VM's own every instance names one.
func validateInstances(ps *problems, path, name string, vm VM) {
	if vm.Instances == nil || vm.Replicas < 1 || vm.Replicas > MaxReplicas {
		return // without entries validateVM checks the runner; bad replicas are reported
	}
	ip := attrPath(path, "instances")
	noRunner := vm.Runner == (Runner{})
	want := InstanceNames(name, vm.Replicas)
	isInstance := make(map[string]bool, len(want))
	var missing []string
	for _, inst := range want {
		isInstance[inst] = true
		if _, ok := vm.Instances[inst]; !ok {
			missing = append(missing, inst)
		}
	}
	if len(missing) > 0 {
		ps.addf(ip, "has no entry for %s: declare every instance of the VM (%s) or none", quotedList(missing, 5), describeNames(want))
	}
	for _, inst := range sortedKeys(vm.Instances) {
		ep := attrPath(ip, inst)
		e := vm.Instances[inst]
		if !isInstance[inst] {
			ps.addf(ep, "is not an instance of %s: with replicas = %d its instances are %s", path, vm.Replicas, describeNames(want))
		}
		if e.Runner != (Runner{}) {
			validateRunner(ps, attrPath(ep, "runner"), e.Runner)
		} else if noRunner {
			ps.addf(attrPath(ep, "runner"), "missing: %s has no runner of its own, so every instance needs one", path)
		}
		if e.MAC != "" {
			if err := ValidMAC(e.MAC); err != nil {
				ps.addf(attrPath(ep, "mac"), "%v", err)
			}
		}
		if e.Tap != "" {
			if err := ValidTap(e.Tap); err != nil {
				ps.addf(attrPath(ep, "tap"), "%v", err)
			}
		}
		if e.Hostname != "" && !IsDNSLabel(e.Hostname) {
			ps.addf(attrPath(ep, "hostname"), "%q is not a host name label: 1–63 lower-case letters, digits or '-', not starting or ending with '-'", e.Hostname)
		}
	}
}

// validateIdentities checks that no two instances of the cluster declare
// the same MAC, tap or hostname, and that no declared hostname is another
// instance's name (an instance whose name is a DNS label is its own
// hostname unless it declares another).
func validateIdentities(ps *problems, c *Cluster) {
	type owner struct{ path, inst string }
	macs, taps, hosts := map[string]owner{}, map[string]owner{}, map[string]owner{}
	for _, name := range sortedKeys(c.VMs) {
		entries := c.VMs[name].Instances
		for _, inst := range sortedKeys(entries) {
			e := entries[inst]
			ep := attrPath(attrPath(attrPath("vms", name), "instances"), inst)
			for _, part := range []struct {
				field, value string
				seen         map[string]owner
			}{{"mac", e.MAC, macs}, {"tap", e.Tap, taps}, {"hostname", e.Hostname, hosts}} {
				if part.value == "" {
					continue
				}
				if prev, dup := part.seen[part.value]; dup {
					ps.addf(attrPath(ep, part.field), "%q is also the %s of %s; every instance needs its own", part.value, part.field, prev.path)
					continue
				}
				part.seen[part.value] = owner{ep, inst}
			}
			if h := e.Hostname; h != "" && h != inst && c.isInstanceName(h) {
				ps.addf(attrPath(ep, "hostname"), "%q is the name of another instance, which DNS resolves to that instance; pick another hostname", h)
			}
		}
	}
}

// isInstanceName reports whether replica expansion gives c an instance
// named s, without expanding (a bad replicas count may be huge).
func (c *Cluster) isInstanceName(s string) bool {
	if vm, ok := c.VMs[s]; ok && vm.Replicas <= 1 {
		return true
	}
	i := strings.LastIndexByte(s, '-')
	if i < 0 {
		return false
	}
	n, err := strconv.Atoi(s[i+1:])
	if err != nil || n < 0 || strconv.Itoa(n) != s[i+1:] {
		return false
	}
	vm, ok := c.VMs[s[:i]]
	return ok && vm.Replicas > 1 && n < vm.Replicas
}

// quotedList quotes up to max names, with a count of the rest.
func quotedList(names []string, max int) string {
	var b strings.Builder
	for i, n := range names {
		if i == max {
			fmt.Fprintf(&b, " and %d more", len(names)-max)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q", n)
	}
	return b.String()
}

// describeNames lists a VM's instance names briefly: "web-0 … web-9".
func describeNames(names []string) string {
	switch len(names) {
	case 1:
		return names[0]
	case 2:
		return names[0] + " and " + names[1]
	}
	return names[0] + " … " + names[len(names)-1]
}
