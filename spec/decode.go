package spec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// Defaults applied by Decode to attributes a flake leaves out.
const (
	DefaultReplicas     = 1
	DefaultAutostart    = true
	DefaultPool         = "rbd"
	DefaultMinInstances = 0
	DefaultMaxInstances = 1
	// DefaultCIDR is network.cidr when a flake leaves it out.
	DefaultCIDR            = "10.100.0.0/16"
	DefaultIngressPath     = "/"
	DefaultIngressProtocol = IngressHTTP
)

// Decode strictly decodes the JSON of an evaluated `blixard` output (runners
// already turned into {drv, out} by nixeval's apply function) into a Cluster.
//
// Every unknown attribute, wrong type and missing required attribute is
// reported with its path, all of them at once, as an *Error. A VM's runner
// is required unless the VM has `instances` (Validate then wants a runner
// in every entry). Absent optional
// attributes get their defaults: replicas 1, autostart true, volume pool
// "rbd", cluster "", vms {}, function minInstances 0, maxInstances 1,
// concurrency 1, idleTimeout "60s" and snapshot false,
// ingress path "/", protocol "http" and listenPort null (0), health
// interval "5s", timeout "2s", healthyAfter 1, unhealthyAfter 3 and
// http.path "/", update maxUnavailable 1, canary 0, minHealthySeconds 10,
// progressDeadline "5m" and autoRevert false (durations are strings
// time.ParseDuration reads; a VM without an update block has none). A missing
// network.cidr stays the zero Prefix, which means DefaultCIDR
// ([Cluster.NetworkCIDR]), so clusters that never mention the network
// decode as before.
// Decode does not check values (names, sizes, store paths): call
// [Cluster.Validate] for that.
func Decode(data []byte) (*Cluster, error) {
	root, err := parseJSON(data)
	if err != nil {
		return nil, &Error{Problems: []Problem{{Message: "invalid JSON: " + err.Error()}}}
	}
	var d decoder
	c := d.cluster(root)
	if err := d.ps.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// parseJSON reads exactly one JSON value, keeping numbers as json.Number so
// that integers are checked exactly.
func parseJSON(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("unexpected data after the top-level value")
	}
	return v, nil
}

type decoder struct{ ps problems }

// object checks that v is an attribute set whose names are all in fields,
// reporting each unknown name with its own path. ok is false (and the
// problem reported) when v is not an attribute set.
func (d *decoder) object(path string, v any, fields ...string) (m map[string]any, ok bool) {
	m, ok = v.(map[string]any)
	if !ok {
		d.ps.addf(path, "expected an attribute set, got %s", describe(v))
		return nil, false
	}
	for _, name := range sortedKeys(m) {
		if !contains(fields, name) {
			d.ps.addf(attrPath(path, name), "unknown field %q%s (known fields: %s)",
				name, suggest(name, fields), strings.Join(fields, ", "))
		}
	}
	return m, true
}

func (d *decoder) cluster(v any) *Cluster {
	c := &Cluster{VMs: map[string]VM{}}
	m, ok := d.object("", v, "cluster", "vms", "functions", "network", "ingress")
	if !ok {
		return c
	}
	if x, ok := m["cluster"]; ok {
		c.Name = d.str("cluster", x)
	}
	if x, ok := m["vms"]; ok {
		if vms, ok := x.(map[string]any); ok {
			for _, name := range sortedKeys(vms) {
				c.VMs[name] = d.vm(attrPath("vms", name), vms[name])
			}
		} else {
			d.ps.addf("vms", "expected an attribute set of VMs, got %s", describe(x))
		}
	}
	if x, ok := m["functions"]; ok {
		if fns, ok := x.(map[string]any); ok {
			c.Functions = make(map[string]Function, len(fns))
			for _, name := range sortedKeys(fns) {
				c.Functions[name] = d.function(attrPath("functions", name), fns[name])
			}
		} else {
			d.ps.addf("functions", "expected an attribute set of functions, got %s", describe(x))
		}
	}
	if x, ok := m["network"]; ok {
		if nm, ok := d.object("network", x, "cidr"); ok {
			if x, ok := nm["cidr"]; ok {
				c.Network.CIDR = d.cidr("network.cidr", x)
			}
		}
	}
	if x, ok := m["ingress"]; ok {
		if entries, ok := x.(map[string]any); ok {
			c.Ingress = make(map[string]Ingress, len(entries))
			for _, name := range sortedKeys(entries) {
				c.Ingress[name] = d.ingress(attrPath("ingress", name), entries[name])
			}
		} else {
			d.ps.addf("ingress", "expected an attribute set of ingress entries, got %s", describe(x))
		}
	}
	return c
}

// cidr parses an IPv4 CIDR such as "10.100.0.0/16"; Validate checks its
// values (IPv4, prefix length, network address).
func (d *decoder) cidr(path string, v any) netip.Prefix {
	s, ok := v.(string)
	if !ok {
		d.ps.addf(path, "expected a string such as %q, got %s", DefaultCIDR, describe(v))
		return netip.Prefix{}
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		d.ps.addf(path, "%q is not a CIDR such as %q: %v", s, DefaultCIDR, err)
		return netip.Prefix{}
	}
	return p
}

var ingressFields = []string{"host", "path", "to", "port", "protocol", "listenPort"}

func (d *decoder) ingress(path string, v any) Ingress {
	in := Ingress{Path: DefaultIngressPath, Protocol: DefaultIngressProtocol}
	m, ok := d.object(path, v, ingressFields...)
	if !ok {
		return in
	}
	if x, ok := d.required(m, path, "host", `a host name such as "web.example.org"`); ok {
		in.Host = d.str(attrPath(path, "host"), x)
	}
	if x, ok := m["path"]; ok {
		in.Path = d.str(attrPath(path, "path"), x)
	}
	if x, ok := d.required(m, path, "to", "the name of a VM in vms"); ok {
		in.To = d.str(attrPath(path, "to"), x)
	}
	if x, ok := d.required(m, path, "port", "the VM's port, 1–65535"); ok {
		in.Port = d.int(attrPath(path, "port"), x)
	}
	if x, ok := m["protocol"]; ok {
		in.Protocol = d.str(attrPath(path, "protocol"), x)
	}
	if x, ok := m["listenPort"]; ok && x != nil {
		in.ListenPort = d.int(attrPath(path, "listenPort"), x)
	}
	return in
}

var vmFields = []string{"runner", "vcpu", "memMiB", "replicas", "placement", "volumes", "autostart", "instances", "health", "update"}

func (d *decoder) vm(path string, v any) VM {
	vm := VM{Replicas: DefaultReplicas, Autostart: DefaultAutostart}
	m, ok := d.object(path, v, vmFields...)
	if !ok {
		return vm
	}
	// With instances, the VM's runner may be left out: every instance then
	// names its own, which Validate checks.
	if _, perInstance := m["instances"]; perInstance {
		if x, ok := m["runner"]; ok {
			vm.Runner = d.runner(attrPath(path, "runner"), x)
		}
	} else if x, ok := d.required(m, path, "runner", "a derivation"); ok {
		vm.Runner = d.runner(attrPath(path, "runner"), x)
	}
	if x, ok := d.required(m, path, "vcpu", "an integer > 0"); ok {
		vm.VCPU = d.int(attrPath(path, "vcpu"), x)
	}
	if x, ok := d.required(m, path, "memMiB", "an integer > 0"); ok {
		vm.MemMiB = d.int(attrPath(path, "memMiB"), x)
	}
	if x, ok := m["replicas"]; ok {
		vm.Replicas = d.int(attrPath(path, "replicas"), x)
	}
	if x, ok := m["placement"]; ok {
		vm.Placement = d.placement(attrPath(path, "placement"), x)
	}
	if x, ok := m["volumes"]; ok {
		vm.Volumes = d.volumes(attrPath(path, "volumes"), x)
	}
	if x, ok := m["autostart"]; ok {
		vm.Autostart = d.bool(attrPath(path, "autostart"), x)
	}
	if x, ok := m["instances"]; ok {
		vm.Instances = d.instances(attrPath(path, "instances"), x)
	}
	if x, ok := m["health"]; ok {
		vm.Health = d.health(attrPath(path, "health"), x)
	}
	if x, ok := m["update"]; ok {
		vm.Update = d.update(attrPath(path, "update"), x)
	}
	return vm
}

var instanceFields = []string{"runner", "mac", "tap", "hostname"}

// instances decodes a VM's `instances` attribute set; Validate checks the
// names and values.
func (d *decoder) instances(path string, v any) map[string]InstanceEntry {
	entries, ok := v.(map[string]any)
	if !ok {
		d.ps.addf(path, "expected an attribute set of instances (instance name → { runner; mac; tap; hostname; }), got %s", describe(v))
		return nil
	}
	out := make(map[string]InstanceEntry, len(entries))
	for _, name := range sortedKeys(entries) {
		ip := attrPath(path, name)
		var e InstanceEntry
		if m, ok := d.object(ip, entries[name], instanceFields...); ok {
			if x, ok := m["runner"]; ok {
				e.Runner = d.runner(attrPath(ip, "runner"), x)
			}
			if x, ok := m["mac"]; ok {
				e.MAC = d.str(attrPath(ip, "mac"), x)
			}
			if x, ok := m["tap"]; ok {
				e.Tap = d.str(attrPath(ip, "tap"), x)
			}
			if x, ok := m["hostname"]; ok {
				e.Hostname = d.str(attrPath(ip, "hostname"), x)
			}
		}
		out[name] = e
	}
	return out
}

func (d *decoder) placement(path string, v any) Placement {
	var p Placement
	m, ok := d.object(path, v, placementFields...)
	if !ok {
		return p
	}
	if x, ok := m["nodes"]; ok {
		for i, e := range d.list(attrPath(path, "nodes"), x) {
			p.Nodes = append(p.Nodes, d.uint(indexPath(attrPath(path, "nodes"), i), e))
		}
	}
	if x, ok := m["labels"]; ok {
		lp := attrPath(path, "labels")
		if labels, ok := x.(map[string]any); ok {
			p.Labels = make(map[string]string, len(labels))
			for _, k := range sortedKeys(labels) {
				p.Labels[k] = d.str(attrPath(lp, k), labels[k])
			}
		} else {
			d.ps.addf(lp, "expected an attribute set of strings, got %s", describe(x))
		}
	}
	if x, ok := m["antiAffinity"]; ok {
		for i, e := range d.list(attrPath(path, "antiAffinity"), x) {
			p.AntiAffinity = append(p.AntiAffinity, d.str(indexPath(attrPath(path, "antiAffinity"), i), e))
		}
	}
	d.softPlacement(path, m, &p)
	return p
}

func (d *decoder) volumes(path string, v any) map[string]Volume {
	vols, ok := v.(map[string]any)
	if !ok {
		d.ps.addf(path, "expected an attribute set of volumes, got %s", describe(v))
		return nil
	}
	out := make(map[string]Volume, len(vols))
	for _, name := range sortedKeys(vols) {
		vp := attrPath(path, name)
		vol := Volume{Pool: DefaultPool}
		if m, ok := d.object(vp, vols[name], "sizeMiB", "pool"); ok {
			if x, ok := d.required(m, vp, "sizeMiB", "an integer > 0"); ok {
				vol.SizeMiB = d.int(attrPath(vp, "sizeMiB"), x)
			}
			if x, ok := m["pool"]; ok {
				vol.Pool = d.str(attrPath(vp, "pool"), x)
			}
		}
		out[name] = vol
	}
	return out
}

// runner decodes the {drv, out} value nixeval's apply function makes of a
// derivation. Anything else was not a derivation in the flake.
func (d *decoder) runner(path string, v any) Runner {
	var r Runner
	m, ok := v.(map[string]any)
	if !ok {
		hint := ""
		if s, isStr := v.(string); isStr && strings.HasPrefix(s, "/") {
			hint = "; pass the derivation itself (e.g. config.microvm.declaredRunner), not its out path or a string"
		}
		d.ps.addf(path, "must be a derivation, got %s%s", describe(v), hint)
		return r
	}
	if _, hasDrv := m["drv"]; !hasDrv {
		d.ps.addf(path, "must be a derivation, got an attribute set without drvPath (attributes: %s)",
			strings.Join(sortedKeys(m), ", "))
		return r
	}
	m, _ = d.object(path, v, "drv", "out")
	if x, ok := d.required(m, path, "drv", "a store path"); ok {
		r.Drv = d.str(attrPath(path, "drv"), x)
	}
	if x, ok := d.required(m, path, "out", "a store path"); ok {
		r.Out = d.str(attrPath(path, "out"), x)
	}
	return r
}

// required returns m[name], or reports it missing.
func (d *decoder) required(m map[string]any, path, name, what string) (any, bool) {
	x, ok := m[name]
	if !ok {
		d.ps.addf(attrPath(path, name), "missing required field (%s)", what)
	}
	return x, ok
}

func (d *decoder) list(path string, v any) []any {
	l, ok := v.([]any)
	if !ok {
		d.ps.addf(path, "expected a list, got %s", describe(v))
	}
	return l
}

func (d *decoder) str(path string, v any) string {
	s, ok := v.(string)
	if !ok {
		d.ps.addf(path, "expected a string, got %s", describe(v))
	}
	return s
}

func (d *decoder) bool(path string, v any) bool {
	b, ok := v.(bool)
	if !ok {
		d.ps.addf(path, "expected a boolean, got %s", describe(v))
	}
	return b
}

func (d *decoder) int(path string, v any) int {
	n, ok := v.(json.Number)
	if ok {
		i, err := strconv.ParseInt(string(n), 10, strconv.IntSize)
		if err == nil {
			return int(i)
		}
		if errors.Is(err, strconv.ErrRange) {
			d.ps.addf(path, "integer %s is out of range", n)
			return 0
		}
	}
	d.ps.addf(path, "expected an integer, got %s", describe(v))
	return 0
}

func (d *decoder) uint(path string, v any) uint64 {
	n, ok := v.(json.Number)
	if ok {
		u, err := strconv.ParseUint(string(n), 10, 64)
		if err == nil {
			return u
		}
		if strings.HasPrefix(string(n), "-") && isInteger(n) {
			d.ps.addf(path, "expected a node id (an integer > 0), got %s", n)
			return 0
		}
		if errors.Is(err, strconv.ErrRange) {
			d.ps.addf(path, "integer %s is out of range", n)
			return 0
		}
	}
	d.ps.addf(path, "expected an integer, got %s", describe(v))
	return 0
}

func isInteger(n json.Number) bool {
	s := strings.TrimPrefix(string(n), "-")
	return s != "" && strings.Trim(s, "0123456789") == ""
}

// describe names the Nix type of a decoded JSON value, with the value
// itself when it is short.
func describe(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case bool:
		return fmt.Sprintf("boolean %t", v)
	case string:
		if len(v) > 60 {
			return fmt.Sprintf("string %q…", v[:60])
		}
		return fmt.Sprintf("string %q", v)
	case json.Number:
		if isInteger(v) {
			return "integer " + string(v)
		}
		return "float " + string(v)
	case []any:
		return fmt.Sprintf("list of %d elements", len(v))
	case map[string]any:
		return "attribute set"
	default:
		return fmt.Sprintf("%T", v)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

// suggest returns `; did you mean "x"?` for the known field closest to
// name, when it is a likely typo.
func suggest(name string, fields []string) string {
	best, bestDist := "", 3
	for _, f := range fields {
		if dist := editDistance(strings.ToLower(name), strings.ToLower(f)); dist < bestDist {
			best, bestDist = f, dist
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf("; did you mean %q?", best)
}

// editDistance is the Levenshtein distance of a and b (bytes); names here
// are short.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return math.MaxInt
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
