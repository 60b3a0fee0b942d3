package spec

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDecodeFunctionFullSchema(t *testing.T) {
	in := `{"functions": {"hello": {
		"runner": ` + testRunnerJSON + `, "vcpu": 2, "memMiB": 256,
		"http": {"host": "fn.example.org", "path": "/fn/hello", "port": 8080},
		"minInstances": 1, "maxInstances": 10, "concurrency": 4, "idleTimeout": "1m30s", "snapshot": true,
		"restoreAhead": 2, "placement": {"nodes": [1, 2], "labels": {"zone": "a"}, "antiAffinity": ["hello"], "spreadBy": "zone",
			"prefer": {"labels": {"disk": "ssd"}}}
	}}}`
	got, err := Decode([]byte(in))
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	want := Function{
		Runner: Runner{testDrv, testOut}, VCPU: 2, MemMiB: 256,
		HTTP:         FunctionHTTP{Host: "fn.example.org", Path: "/fn/hello", Port: 8080},
		MinInstances: 1, MaxInstances: 10, Concurrency: 4, IdleTimeout: 90 * time.Second, Snapshot: true, RestoreAhead: 2,
		Placement: Placement{Nodes: []uint64{1, 2}, Labels: map[string]string{"zone": "a"}, AntiAffinity: []string{"hello"},
			SpreadBy: "zone", Prefer: Preference{Labels: map[string]string{"disk": "ssd"}}},
	}
	if !reflect.DeepEqual(got.Functions["hello"], want) {
		t.Fatalf("Decode =\n%#v\nwant\n%#v", got.Functions["hello"], want)
	}
	if err := got.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	// The replicated state stores the desired spec as JSON: a function
	// comes back from it unchanged.
	data, err := json.Marshal(got.Functions["hello"])
	if err != nil {
		t.Fatal(err)
	}
	var back Function
	if err := json.Unmarshal(data, &back); err != nil || !reflect.DeepEqual(back, want) {
		t.Fatalf("JSON round trip = %#v, %v; want %#v", back, err, want)
	}
	// nixeval's canonical JSON (json.Marshal of the cluster) decodes again
	// to the same cluster: idleTimeout is a duration string there too.
	canon, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Decode(canon)
	if err != nil || !reflect.DeepEqual(again, got) {
		t.Fatalf("Decode(canonical JSON) = %#v, %v\n%s", again, err, canon)
	}
}

func TestDecodeFunctionProblems(t *testing.T) {
	fn := func(extra string) string {
		return `{"functions": {"f": {"runner": ` + testRunnerJSON + `, "vcpu": 1, "memMiB": 1,
			"http": {"host": "f.example.org", "path": "/", "port": 80}` + extra + `}}}`
	}
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"missing vcpu, host and port are reported with their paths",
			`{"functions": {"f": {"runner": ` + testRunnerJSON + `, "memMiB": 1, "http": {"path": "/"}}}}`,
			[]string{`functions.f.http.host: missing required field`, `functions.f.http.port: missing required field`,
				`functions.f.vcpu: missing required field (an integer > 0)`}},
		{"idleTimeout that is not a duration", fn(`, "idleTimeout": "a minute"`),
			[]string{`functions.f.idleTimeout: "a minute" is not a duration: write it as "500ms", "5s" or "1m30s"`}},
		{"idleTimeout as a number", fn(`, "idleTimeout": 60`),
			[]string{`functions.f.idleTimeout: expected a duration string such as "500ms", "5s" or "1m30s", got integer 60`}},
		{"snapshot that is not a boolean", fn(`, "snapshot": "yes"`),
			[]string{`functions.f.snapshot: expected a boolean, got string "yes"`}},
		{"restoreAhead that is not an integer", fn(`, "snapshot": true, "restoreAhead": true`),
			[]string{`functions.f.restoreAhead: expected an integer, got boolean true`}},
		{"prefetch that is not a boolean", fn(`, "prefetch": 0`),
			[]string{`functions.f.prefetch: expected a boolean, got integer 0`}},
		{"concurrency that is not an integer", fn(`, "concurrency": 1.5`),
			[]string{`functions.f.concurrency: expected an integer, got float 1.5`}},
		{"unknown attribute with a suggestion", fn(`, "maxInstance": 3`),
			[]string{`functions.f.maxInstance: unknown field "maxInstance"; did you mean "maxInstances"?`}},
		{"unknown placement attribute", fn(`, "placement": {"node": [1]}`),
			[]string{`functions.f.placement.node: unknown field "node"; did you mean "nodes"?`}},
		{"a port as a string", `{"functions": {"f": {"runner": ` + testRunnerJSON + `, "vcpu": 1, "memMiB": 1,
			"http": {"host": "f.example.org", "path": "/", "port": "8080"}}}}`,
			[]string{`functions.f.http.port: expected an integer, got string "8080"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode([]byte(tt.in))
			assertProblems(t, err, tt.want)
		})
	}
}

func TestValidateFunctions(t *testing.T) {
	web := Ingress{Host: "web.example.org", Path: "/", To: "web", Port: 80, Protocol: IngressHTTP}
	tests := []struct {
		name string
		edit func(c *Cluster)
		want []string // nil: valid
	}{
		{"the valid function passes", func(c *Cluster) {}, nil},
		{"a function next to an ingress entry on another path of the same host passes", func(c *Cluster) {
			c.Ingress = map[string]Ingress{"web": web}
			editFunction(c, "fn", func(f *Function) { f.HTTP.Host, f.HTTP.Path = "web.example.org", "/fn/f" })
		}, nil},
		{"antiAffinity may name VMs and functions", func(c *Cluster) {
			c.Functions["gn"] = validFunction()
			editFunction(c, "gn", func(f *Function) { f.HTTP.Path = "/g" })
			editFunction(c, "fn", func(f *Function) { f.Placement.AntiAffinity = []string{"fn", "gn", "web"} })
		}, nil},
		{"maxInstances = 0 names the function", func(c *Cluster) {
			editFunction(c, "fn", func(f *Function) { f.MaxInstances = 0 })
		}, []string{`functions.fn.maxInstances: must be >= 1, got 0: a function without instances can answer no request`}},
		{"maxInstances above the bound", func(c *Cluster) {
			editFunction(c, "fn", func(f *Function) { f.MaxInstances = MaxFunctionInstances + 1 })
		}, []string{`functions.fn.maxInstances: must be at most 1000, got 1001`}},
		{"maxInstances below minInstances", func(c *Cluster) {
			editFunction(c, "fn", func(f *Function) { f.MinInstances, f.MaxInstances = 4, 2 })
		}, []string{`functions.fn.maxInstances: must be >= minInstances (4), got 2`}},
		{"negative minInstances", func(c *Cluster) { editFunction(c, "fn", func(f *Function) { f.MinInstances = -1 }) },
			[]string{`functions.fn.minInstances: must be >= 0, got -1`}},
		{"zero concurrency", func(c *Cluster) { editFunction(c, "fn", func(f *Function) { f.Concurrency = 0 }) },
			[]string{`functions.fn.concurrency: must be >= 1 (the requests one instance serves at once), got 0`}},
		{"idleTimeout below a second", func(c *Cluster) {
			editFunction(c, "fn", func(f *Function) { f.IdleTimeout = 60 * time.Millisecond })
		}, []string{`functions.fn.idleTimeout: must be at least 1s, got 60ms`}},
		{"restoreAhead up to maxInstances on a snapshot function passes", func(c *Cluster) {
			editFunction(c, "fn", func(f *Function) { f.Snapshot, f.MaxInstances, f.RestoreAhead = true, 3, 3 })
		}, nil},
		{"restoreAhead 0 turns it off, with or without snapshot", func(c *Cluster) {
			editFunction(c, "fn", func(f *Function) { f.RestoreAhead = 0 })
		}, nil},
		{"restoreAhead above maxInstances", func(c *Cluster) {
			editFunction(c, "fn", func(f *Function) { f.Snapshot, f.MaxInstances, f.RestoreAhead = true, 2, 3 })
		}, []string{`functions.fn.restoreAhead: must be at most maxInstances (2), got 3: no more instances can start`}},
		{"negative restoreAhead", func(c *Cluster) {
			editFunction(c, "fn", func(f *Function) { f.Snapshot, f.RestoreAhead = true, -1 })
		}, []string{`functions.fn.restoreAhead: must be >= 0 (the guests each node keeps restored ahead), got -1`}},
		{"restoreAhead without snapshot", func(c *Cluster) {
			editFunction(c, "fn", func(f *Function) { f.Snapshot, f.MaxInstances, f.RestoreAhead = false, 4, 2 })
		}, []string{`functions.fn.restoreAhead: applies to snapshot functions only (guests are restored ahead from the function's snapshot): set snapshot = true or leave restoreAhead out`}},
		{"zero vcpu and memory, like a VM's", func(c *Cluster) {
			editFunction(c, "fn", func(f *Function) { f.VCPU, f.MemMiB = 0, -1 })
		}, []string{`functions.fn.memMiB: must be > 0, got -1`, `functions.fn.vcpu: must be > 0, got 0`}},
		{"a runner is required", func(c *Cluster) { editFunction(c, "fn", func(f *Function) { f.Runner = Runner{} }) },
			[]string{`functions.fn.runner.drv: must be a .drv store path`, `functions.fn.runner.out: must be a store path`}},
		{"host with a port, path with a query, port 0", func(c *Cluster) {
			editFunction(c, "fn", func(f *Function) { f.HTTP = FunctionHTTP{Host: "fn.example.org:80", Path: "/f?x", Port: 0} })
		}, []string{`functions.fn.http.host: "fn.example.org:80" is not a host name`,
			`functions.fn.http.path: "/f?x" holds '?'`, `functions.fn.http.port: must be a port between 1 and 65535`}},
		{"empty host", func(c *Cluster) { editFunction(c, "fn", func(f *Function) { f.HTTP.Host = "" }) },
			[]string{`functions.fn.http.host: must be a host name such as "web.example.org", got ""`}},
		{"the route of an ingress entry, host in another case", func(c *Cluster) {
			c.Ingress = map[string]Ingress{"web": web}
			editFunction(c, "fn", func(f *Function) { f.HTTP.Host, f.HTTP.Path = "WEB.example.org", "/" })
		}, []string{`functions.fn.http: host "WEB.example.org" and path "/" are also routed by ingress.web; give each function and ingress entry its own host or path`}},
		{"the route of another function", func(c *Cluster) {
			c.Functions["gn"] = validFunction()
		}, []string{`functions.gn.http: host "fn.example.org" and path "/f" are also routed by functions.fn`}},
		{"a TCP ingress entry's host does not collide", func(c *Cluster) {
			c.Ingress = map[string]Ingress{"db": {Host: "fn.example.org", Path: "/", To: "db", Port: 5432, Protocol: IngressTCP, ListenPort: 5432}}
			editFunction(c, "fn", func(f *Function) { f.HTTP.Path = "/" })
		}, nil},
		{"placement like a VM's", func(c *Cluster) {
			editFunction(c, "fn", func(f *Function) {
				f.Placement = Placement{Nodes: []uint64{0}, AntiAffinity: []string{"cache"}, SpreadBy: "a=b"}
			})
		}, []string{`functions.fn.placement.antiAffinity[0]: "cache" is neither a VM declared in vms nor a function`,
			`functions.fn.placement.nodes[0]: node ids are > 0, got 0`, `functions.fn.placement.spreadBy: invalid label key "a=b"`}},
		{"a function named like a VM", func(c *Cluster) {
			c.Functions["web"] = c.Functions["fn"]
			delete(c.Functions, "fn")
		}, []string{`functions.web: name "web" collides with VM instance vms.web; rename one of them`}},
		{"a VM named like a function's instance", func(c *Cluster) {
			c.VMs["fn-fn-0"] = c.VMs["web"]
		}, []string{`vms.fn-fn-0: names starting with "fn-" are reserved for the instances of functions`}},
		{"a function name too long for its instances' names", func(c *Cluster) {
			long := "f" + strings.Repeat("x", 56)
			c.Functions[long] = c.Functions["fn"]
			delete(c.Functions, "fn")
		}, []string{`functions.f` + strings.Repeat("x", 56) + `: name is too long for a function: its instances (fn-f` + strings.Repeat("x", 56) + `-N) must be valid instance names of at most 63 characters; shorten it by 1`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := cluster(tt.edit)
			err := c.Validate()
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			assertProblems(t, err, tt.want)
		})
	}
}

func TestFunctionHTTPString(t *testing.T) {
	h := FunctionHTTP{Host: "fn.example.org", Path: "/fn/hello", Port: 8080}
	if got, want := h.String(), "fn.example.org/fn/hello → :8080"; got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
}

func TestFunctionCloneSharesNothing(t *testing.T) {
	f := validFunction()
	f.Placement = Placement{Nodes: []uint64{1}, Labels: map[string]string{"zone": "a"}, AntiAffinity: []string{"fn"},
		Prefer: Preference{Labels: map[string]string{"disk": "ssd"}}}
	c := f.Clone()
	if !reflect.DeepEqual(c, f) {
		t.Fatalf("Clone = %#v, want %#v", c, f)
	}
	c.Placement.Nodes[0], c.Placement.Labels["zone"], c.Placement.AntiAffinity[0], c.Placement.Prefer.Labels["disk"] = 2, "b", "gn", "hdd"
	if f.Placement.Nodes[0] != 1 || f.Placement.Labels["zone"] != "a" || f.Placement.AntiAffinity[0] != "fn" || f.Placement.Prefer.Labels["disk"] != "ssd" {
		t.Fatalf("changing the clone changed the original: %#v", f.Placement)
	}
}

func TestDecodeFunctionEmptyPlacementIsCanonical(t *testing.T) {
	in := `{"functions": {"f": {"runner": ` + testRunnerJSON + `, "vcpu": 1, "memMiB": 1,
		"http": {"host": "f.example.org", "path": "/", "port": 80}, "placement": {"labels": {}, "nodes": []}}}}`
	got, err := Decode([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	canon, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Decode(canon)
	if err != nil || !reflect.DeepEqual(again, got) {
		t.Fatalf("Decode(canonical JSON) = %#v, %v; want %#v\n%s", again, err, got, canon)
	}
	if p := got.Functions["f"].Placement; !reflect.DeepEqual(p, Placement{}) {
		t.Fatalf("placement with empty labels and nodes = %#v, want the zero Placement", p)
	}
}

// TestFunctionRestoreAheadJSON: restoreAhead survives the replicated
// state's JSON, 0 included; a function stored before the attribute
// existed reads as the default.
func TestFunctionRestoreAheadJSON(t *testing.T) {
	for _, n := range []int{0, 1, 3} {
		data, err := json.Marshal(Function{Snapshot: true, RestoreAhead: n, IdleTimeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		var back Function
		if err := json.Unmarshal(data, &back); err != nil || back.RestoreAhead != n {
			t.Errorf("restoreAhead %d: JSON %s reads back as %d, %v", n, data, back.RestoreAhead, err)
		}
	}
	var old Function
	if err := json.Unmarshal([]byte(`{"vcpu": 1, "snapshot": true, "idleTimeout": "1m0s"}`), &old); err != nil || old.RestoreAhead != DefaultRestoreAhead {
		t.Errorf("a function stored without restoreAhead: RestoreAhead %d, %v; want %d", old.RestoreAhead, err, DefaultRestoreAhead)
	}
}

// TestFunctionPrefetch: prefetch is on unless the flake says false, and
// survives the replicated state's JSON and nixeval's canonical JSON; a
// function stored before the attribute existed reads as prefetched.
func TestFunctionPrefetch(t *testing.T) {
	decode := func(extra string) Function {
		t.Helper()
		c, err := Decode([]byte(`{"functions": {"f": {"runner": ` + testRunnerJSON + `, "vcpu": 1, "memMiB": 1,
			"http": {"host": "f.example.org", "path": "/", "port": 80}` + extra + `}}}`))
		if err != nil {
			t.Fatalf("Decode: %v", err)
		}
		return c.Functions["f"]
	}
	for _, tt := range []struct {
		extra string
		no    bool
	}{{"", false}, {`, "prefetch": true`, false}, {`, "prefetch": false`, true}} {
		f := decode(tt.extra)
		if f.NoPrefetch != tt.no {
			t.Errorf("%q: NoPrefetch = %t, want %t", tt.extra, f.NoPrefetch, tt.no)
		}
		data, err := json.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf(`"prefetch":%t`, !tt.no); !strings.Contains(string(data), want) {
			t.Errorf("%q: JSON %s lacks %s", tt.extra, data, want)
		}
		var back Function
		if err := json.Unmarshal(data, &back); err != nil || !reflect.DeepEqual(back, f) {
			t.Errorf("%q: JSON round trip = %+v, %v; want %+v", tt.extra, back, err, f)
		}
		if again := decode(`, "prefetch": ` + fmt.Sprint(!tt.no)); again.NoPrefetch != tt.no {
			t.Errorf("%q: canonical JSON decodes to NoPrefetch %t", tt.extra, again.NoPrefetch)
		}
	}
	var old Function
	if err := json.Unmarshal([]byte(`{"vcpu": 1, "idleTimeout": "1m0s"}`), &old); err != nil || old.NoPrefetch {
		t.Errorf("a function stored without prefetch: NoPrefetch %t, %v; want prefetched", old.NoPrefetch, err)
	}
}
