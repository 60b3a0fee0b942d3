package spec

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Functions are scale-to-zero HTTP services: a runner started on demand by
// the gateway on every node (package fngateway) when a request for the
// function's host and path arrives, and stopped again after idleTimeout
// without requests.

// Function defaults: Decode fills them in for attributes a function leaves
// out (DefaultMinInstances and DefaultMaxInstances are in decode.go).
const (
	// DefaultConcurrency is one request at a time per instance: safe for
	// any handler, however it keeps its state. A function that serves
	// requests concurrently says so.
	DefaultConcurrency = 1
	// DefaultIdleTimeout is how long a function's instances stay up
	// without requests before it scales to minInstances.
	DefaultIdleTimeout = 60 * time.Second
	// DefaultSnapshot is off: a restored memory snapshot carries whatever
	// the guest held when it was taken (random seeds, keys, tokens) into
	// every instance restored from it, a trade the flake makes knowingly.
	DefaultSnapshot = false
	// DefaultRestoreAhead is one guest of a snapshot function restored
	// ahead on each node that may run it: the next cold start there finds
	// it; a burst's further instances restore into runners spawned at the
	// request until the pool refills.
	DefaultRestoreAhead = 1
	// MinIdleTimeout bounds idleTimeout from below, so that a slip such as
	// "60ms" does not start and stop an instance for every request.
	MinIdleTimeout = time.Second
	// MaxFunctionInstances bounds maxInstances, as MaxReplicas bounds a
	// VM's replicas.
	MaxFunctionInstances = MaxReplicas
)

// Function is one `functions.NAME` entry: a scale-to-zero HTTP service.
// Between MinInstances and MaxInstances instances run Runner; a request
// for HTTP.Host and a path under HTTP.Path goes to a ready instance with
// fewer than Concurrency requests in flight, or waits while one starts.
// Functions are decoded and validated; the gateway serves them (package
// fngateway); the planner does not schedule them yet.
type Function struct {
	Runner Runner `json:"runner"`
	VCPU   int    `json:"vcpu"`
	MemMiB int    `json:"memMiB"`
	// HTTP is how requests reach the function.
	HTTP FunctionHTTP `json:"http"`
	// MinInstances run even without requests (default 0: scale to zero).
	MinInstances int `json:"minInstances"`
	// MaxInstances bounds the instances running at once (default 1).
	MaxInstances int `json:"maxInstances"`
	// Concurrency is how many requests one instance serves at once
	// (default 1); more wait, and make the function scale out.
	Concurrency int `json:"concurrency"`
	// IdleTimeout is how long the function goes without requests before
	// it scales to MinInstances (default 60s). In the flake a string Go's
	// time.ParseDuration reads ("60s", "5m"); here a time.Duration (in
	// the replicated state's JSON: nanoseconds).
	IdleTimeout time.Duration `json:"idleTimeout"`
	// Snapshot: cold starts restore a memory snapshot of an instance taken
	// once it first became ready, instead of booting (default false; see
	// DefaultSnapshot). A function has no volumes (Decode refuses the
	// attribute), so no restore runs against a disk that moved on since
	// the save.
	Snapshot bool `json:"snapshot"`
	// RestoreAhead is how many of a snapshot function's next instances
	// each node that may run it keeps restored ahead, frozen until one
	// takes an instance's identity (default DefaultRestoreAhead; 0: none;
	// at most maxInstances). Each costs the node a paused qemu and the
	// guest memory it touched; the node's --restore-pool bounds them all.
	// Only with Snapshot. In JSON it is 1 when absent, so a spec stored
	// before the attribute existed reads as the default.
	RestoreAhead int `json:"restoreAhead"`
	// Placement constrains where instances run, as a VM's does;
	// antiAffinity may name VMs and functions.
	Placement Placement `json:"placement,omitzero"`
	// NoPrefetch is the flake's `prefetch = false`: only the evaluating
	// leader builds the runner ahead; the nodes that may run an instance
	// do not keep its closure ready, so a node's first cold start of the
	// function copies it (from a peer's cache) first. The default keeps it
	// on every eligible node, which costs their stores the closure. In
	// JSON it is "prefetch", true unless said otherwise (so a spec written
	// before the attribute existed reads as prefetched).
	NoPrefetch bool `json:"-"`
}

// functionJSON is Function with IdleTimeout as the flake writes it.
type functionJSON Function

// MarshalJSON writes IdleTimeout as a duration string ("1m0s"), as the
// flake does: nixeval's canonical JSON of a spec must decode again with
// Decode, which reads durations as strings only.
func (f Function) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		functionJSON
		IdleTimeout string `json:"idleTimeout"` // shadows functionJSON's
		Prefetch    bool   `json:"prefetch"`
	}{functionJSON(f), f.IdleTimeout.String(), !f.NoPrefetch})
}

// UnmarshalJSON reads what MarshalJSON writes (the replicated state keeps
// the desired spec as JSON).
func (f *Function) UnmarshalJSON(data []byte) error {
	aux := struct {
		*functionJSON
		IdleTimeout string `json:"idleTimeout"`
		Prefetch    *bool  `json:"prefetch"`
		// Shadows functionJSON's: absent is the default, not 0.
		RestoreAhead *int `json:"restoreAhead"`
	}{functionJSON: (*functionJSON)(f)}
	if err := json.Unmarshal(data, &aux); err != nil {
		return err
	}
	f.NoPrefetch = aux.Prefetch != nil && !*aux.Prefetch
	f.RestoreAhead = DefaultRestoreAhead
	if aux.RestoreAhead != nil {
		f.RestoreAhead = *aux.RestoreAhead
	}
	f.IdleTimeout = 0
	if aux.IdleTimeout != "" {
		d, err := time.ParseDuration(aux.IdleTimeout)
		if err != nil {
			return fmt.Errorf("function idleTimeout %q: %w", aux.IdleTimeout, err)
		}
		f.IdleTimeout = d
	}
	return nil
}

// FunctionHTTP is a function's `http` attribute: requests for Host (any
// case, any port) whose path lies under Path (whole segments, as ingress
// paths) go to port Port of an instance. Host and Path are unique across
// functions and HTTP ingress entries.
type FunctionHTTP struct {
	Host string `json:"host"`
	Path string `json:"path"`
	Port int    `json:"port"`
}

// functionFields are the attributes of a `functions.NAME` entry.
var functionFields = []string{"runner", "vcpu", "memMiB", "http", "minInstances", "maxInstances", "concurrency",
	"idleTimeout", "snapshot", "restoreAhead", "placement", "prefetch"}

// function decodes one `functions.NAME` entry, with the defaults for what
// it leaves out; Validate checks the values.
func (d *decoder) function(path string, v any) Function {
	f := Function{MinInstances: DefaultMinInstances, MaxInstances: DefaultMaxInstances, Concurrency: DefaultConcurrency,
		IdleTimeout: DefaultIdleTimeout, Snapshot: DefaultSnapshot, RestoreAhead: DefaultRestoreAhead}
	m, ok := d.object(path, v, functionFields...)
	if !ok {
		return f
	}
	if x, ok := d.required(m, path, "runner", "a derivation"); ok {
		f.Runner = d.runner(attrPath(path, "runner"), x)
	}
	if x, ok := d.required(m, path, "vcpu", "an integer > 0"); ok {
		f.VCPU = d.int(attrPath(path, "vcpu"), x)
	}
	if x, ok := d.required(m, path, "memMiB", "an integer > 0"); ok {
		f.MemMiB = d.int(attrPath(path, "memMiB"), x)
	}
	if x, ok := d.required(m, path, "http", `an attribute set { host = "fn.example.org"; path = "/…"; port = 8080; }`); ok {
		hp := attrPath(path, "http")
		if hm, ok := d.object(hp, x, "host", "path", "port"); ok {
			if x, ok := d.required(hm, hp, "host", `a host name such as "fn.example.org"`); ok {
				f.HTTP.Host = d.str(attrPath(hp, "host"), x)
			}
			if x, ok := d.required(hm, hp, "path", `a string starting with "/"`); ok {
				f.HTTP.Path = d.str(attrPath(hp, "path"), x)
			}
			if x, ok := d.required(hm, hp, "port", "the port the function's instances answer HTTP on, 1–65535"); ok {
				f.HTTP.Port = d.int(attrPath(hp, "port"), x)
			}
		}
	}
	if x, ok := m["minInstances"]; ok {
		f.MinInstances = d.int(attrPath(path, "minInstances"), x)
	}
	if x, ok := m["maxInstances"]; ok {
		f.MaxInstances = d.int(attrPath(path, "maxInstances"), x)
	}
	if x, ok := m["concurrency"]; ok {
		f.Concurrency = d.int(attrPath(path, "concurrency"), x)
	}
	if x, ok := m["idleTimeout"]; ok {
		// The same duration strings, and the same messages, as health checks.
		f.IdleTimeout = d.healthDuration(attrPath(path, "idleTimeout"), x)
	}
	if x, ok := m["snapshot"]; ok {
		f.Snapshot = d.bool(attrPath(path, "snapshot"), x)
	}
	if x, ok := m["restoreAhead"]; ok {
		f.RestoreAhead = d.int(attrPath(path, "restoreAhead"), x)
	}
	if x, ok := m["prefetch"]; ok {
		f.NoPrefetch = !d.bool(attrPath(path, "prefetch"), x)
	}
	if x, ok := m["placement"]; ok {
		f.Placement = d.placement(attrPath(path, "placement"), x)
		if len(f.Placement.Labels) == 0 {
			// `labels = { }` means none; nil keeps the decoded value its
			// own canonical JSON (the replicated state's round trip).
			f.Placement.Labels = nil
		}
	}
	return f
}

// Clone returns a copy of f that shares no slice or map with it.
func (f Function) Clone() Function {
	f.Placement.Nodes = slices.Clone(f.Placement.Nodes)
	f.Placement.Labels = maps.Clone(f.Placement.Labels)
	f.Placement.AntiAffinity = slices.Clone(f.Placement.AntiAffinity)
	f.Placement.Prefer.Labels = maps.Clone(f.Placement.Prefer.Labels)
	return f
}

// validateFunctions checks every function: its name, runner, resources,
// http route, instance bounds, concurrency, idle timeout and placement;
// then that no two functions, and no function and HTTP ingress entry,
// route the same host and path.
func validateFunctions(ps *problems, c *Cluster) {
	for _, name := range sortedKeys(c.Functions) {
		path := attrPath("functions", name)
		f := c.Functions[name]
		if err := ValidName(name); err != nil {
			ps.addf(path, "%v", err)
		}
		if n := len(FunctionInstancePrefix) + len(name) + len(strconv.Itoa(MaxFunctionInstances-1)) + 1; n > 63 {
			ps.addf(path, "name is too long for a function: its instances (%s%s-N) must be valid instance names of at most 63 characters; shorten it by %d", FunctionInstancePrefix, name, n-63)
		}
		validateRunner(ps, attrPath(path, "runner"), f.Runner)
		if f.VCPU <= 0 {
			ps.addf(attrPath(path, "vcpu"), "must be > 0, got %d", f.VCPU)
		}
		if f.MemMiB <= 0 {
			ps.addf(attrPath(path, "memMiB"), "must be > 0, got %d", f.MemMiB)
		}
		hp := attrPath(path, "http")
		if err := validHost(f.HTTP.Host); err != nil {
			ps.addf(attrPath(hp, "host"), "%v", err)
		}
		if err := validURLPath(f.HTTP.Path); err != nil {
			ps.addf(attrPath(hp, "path"), "%v", err)
		}
		if f.HTTP.Port < 1 || f.HTTP.Port > 65535 {
			ps.addf(attrPath(hp, "port"), "must be a port between 1 and 65535 (the port the function's instances answer HTTP on), got %d", f.HTTP.Port)
		}
		if f.MinInstances < 0 {
			ps.addf(attrPath(path, "minInstances"), "must be >= 0, got %d", f.MinInstances)
		}
		switch mp := attrPath(path, "maxInstances"); {
		case f.MaxInstances < 1:
			ps.addf(mp, "must be >= 1, got %d: a function without instances can answer no request (minInstances = 0 already scales it to zero when idle)", f.MaxInstances)
		case f.MaxInstances > MaxFunctionInstances:
			ps.addf(mp, "must be at most %d, got %d", MaxFunctionInstances, f.MaxInstances)
		case f.MaxInstances < f.MinInstances:
			ps.addf(mp, "must be >= minInstances (%d), got %d", f.MinInstances, f.MaxInstances)
		}
		if f.Concurrency < 1 {
			ps.addf(attrPath(path, "concurrency"), "must be >= 1 (the requests one instance serves at once), got %d", f.Concurrency)
		}
		switch rp := attrPath(path, "restoreAhead"); {
		case f.RestoreAhead < 0:
			ps.addf(rp, "must be >= 0 (the guests each node keeps restored ahead), got %d", f.RestoreAhead)
		case f.RestoreAhead > max(f.MaxInstances, 1):
			ps.addf(rp, "must be at most maxInstances (%d), got %d: no more instances can start", f.MaxInstances, f.RestoreAhead)
		case !f.Snapshot && f.RestoreAhead > DefaultRestoreAhead:
			ps.addf(rp, "applies to snapshot functions only (guests are restored ahead from the function's snapshot): set snapshot = true or leave restoreAhead out")
		}
		if f.IdleTimeout < MinIdleTimeout {
			ps.addf(attrPath(path, "idleTimeout"), "must be at least %s, got %s: instances would stop between requests", MinIdleTimeout, f.IdleTimeout)
		}
		validateFunctionPlacement(ps, c, attrPath(path, "placement"), f.Placement)
	}
	validateRoutes(ps, c)
	for _, name := range sortedKeys(c.VMs) {
		if strings.HasPrefix(name, FunctionInstancePrefix) {
			ps.addf(attrPath("vms", name), "names starting with %q are reserved for the instances of functions (functions.NAME runs as %sNAME-0, …): rename the VM", FunctionInstancePrefix, FunctionInstancePrefix)
		}
	}
}

// FunctionInstancePrefix starts the instance names of functions
// (fn-NAME-0, fn-NAME-1, …); no VM may be named so.
const FunctionInstancePrefix = "fn-"

// validateFunctionPlacement checks a function's placement as a VM's is
// checked; antiAffinity may name functions too.
func validateFunctionPlacement(ps *problems, c *Cluster, path string, p Placement) {
	validatePlacement(ps, path, p)
	for i, n := range p.Nodes {
		if n == 0 {
			ps.addf(indexPath(attrPath(path, "nodes"), i), "node ids are > 0, got 0")
		}
	}
	for i, other := range p.AntiAffinity {
		_, vm := c.VMs[other]
		_, fn := c.Functions[other]
		if !vm && !fn {
			ps.addf(indexPath(attrPath(path, "antiAffinity"), i), "%q is neither a VM declared in vms nor a function", other)
		}
	}
}

// routeKey is how HTTP routes are compared: hosts in any case.
func routeKey(host, path string) string { return strings.ToLower(host) + " " + path }

// validateRoutes checks that every function has a host and path of its
// own: not another function's, not an HTTP ingress entry's (whichever
// one served the request, the other would never see it). Duplicates
// among ingress entries are validateIngress's to report.
func validateRoutes(ps *problems, c *Cluster) {
	owner := map[string]string{} // routeKey → "ingress.NAME" or "functions.NAME"
	for _, name := range sortedKeys(c.Ingress) {
		in := c.Ingress[name]
		if in.Protocol != IngressHTTP || in.Host == "" {
			continue
		}
		if k := routeKey(in.Host, in.Path); owner[k] == "" {
			owner[k] = attrPath("ingress", name)
		}
	}
	for _, name := range sortedKeys(c.Functions) {
		h := c.Functions[name].HTTP
		if h.Host == "" {
			continue // reported as a missing host
		}
		k := routeKey(h.Host, h.Path)
		if prev := owner[k]; prev != "" {
			ps.addf(attrPath(attrPath("functions", name), "http"),
				"host %q and path %q are also routed by %s; give each function and ingress entry its own host or path", h.Host, h.Path, prev)
			continue
		}
		owner[k] = attrPath("functions", name)
	}
}

// String describes the function's route as `blixard` shows it:
// "fn.example.org/fn/hello → :8080".
func (h FunctionHTTP) String() string { return fmt.Sprintf("%s%s → :%d", h.Host, h.Path, h.Port) }
