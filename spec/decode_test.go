package spec

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

const (
	testDrv = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-web-runner.drv"
	testOut = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-web-runner"
)

const testRunnerJSON = `{"drv": "` + testDrv + `", "out": "` + testOut + `"}`

func TestDecodeFullSpec(t *testing.T) {
	in := `{
	  "cluster": "prod",
	  "vms": {
	    "web": {
	      "runner": ` + testRunnerJSON + `,
	      "vcpu": 2, "memMiB": 1024, "replicas": 3,
	      "placement": {"nodes": [1, 2], "labels": {"zone": "a", "Disk.Type": "ssd"}, "antiAffinity": ["web", "db"]},
	      "autostart": false
	    },
	    "db": {
	      "runner": ` + testRunnerJSON + `,
	      "vcpu": 1, "memMiB": 512,
	      "volumes": {"data": {"sizeMiB": 10240}, "logs": {"sizeMiB": 10, "pool": "fast_ssd"}}
	    }
	  },
	  "functions": {
	    "hello": {"runner": ` + testRunnerJSON + `, "vcpu": 1, "memMiB": 128,
	      "http": {"host": "fn.example.org", "path": "/hello", "port": 8080}, "maxInstances": 4}
	  }
	}`
	got, err := Decode([]byte(in))
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	r := Runner{Drv: testDrv, Out: testOut}
	want := &Cluster{
		Name: "prod",
		VMs: map[string]VM{
			"web": {Runner: r, VCPU: 2, MemMiB: 1024, Replicas: 3, Autostart: false, Placement: Placement{
				Nodes: []uint64{1, 2}, Labels: map[string]string{"zone": "a", "Disk.Type": "ssd"}, AntiAffinity: []string{"web", "db"},
			}},
			"db": {Runner: r, VCPU: 1, MemMiB: 512, Replicas: 1, Autostart: true, Volumes: map[string]Volume{
				"data": {SizeMiB: 10240, Pool: "rbd"}, "logs": {SizeMiB: 10, Pool: "fast_ssd"},
			}},
		},
		Functions: map[string]Function{
			"hello": {Runner: r, VCPU: 1, MemMiB: 128, HTTP: FunctionHTTP{Host: "fn.example.org", Path: "/hello", Port: 8080},
				MinInstances: 0, MaxInstances: 4, Concurrency: 1, IdleTimeout: DefaultIdleTimeout, RestoreAhead: DefaultRestoreAhead},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Decode =\n%#v\nwant\n%#v", got, want)
	}
	if err := got.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
}

func TestDecodeDefaults(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want *Cluster
	}{
		{"empty attribute set gives no cluster name and no VMs", `{}`, &Cluster{VMs: map[string]VM{}}},
		{"missing replicas, autostart and pool get 1, true and rbd",
			`{"vms": {"a": {"runner": ` + testRunnerJSON + `, "vcpu": 1, "memMiB": 1, "volumes": {"v": {"sizeMiB": 5}}}}}`,
			&Cluster{VMs: map[string]VM{"a": {
				Runner: Runner{testDrv, testOut}, VCPU: 1, MemMiB: 1, Replicas: 1, Autostart: true,
				Volumes: map[string]Volume{"v": {SizeMiB: 5, Pool: "rbd"}},
			}}}},
		{"missing minInstances, maxInstances, concurrency, idleTimeout, snapshot and restoreAhead get 0, 1, 1, 60s, false and 1",
			`{"functions": {"f": {"runner": ` + testRunnerJSON + `, "vcpu": 1, "memMiB": 1, "http": {"host": "f.example.org", "path": "/", "port": 80}}}}`,
			&Cluster{VMs: map[string]VM{}, Functions: map[string]Function{"f": {
				Runner: Runner{testDrv, testOut}, VCPU: 1, MemMiB: 1, HTTP: FunctionHTTP{Host: "f.example.org", Path: "/", Port: 80},
				MaxInstances: 1, Concurrency: 1, IdleTimeout: 60 * time.Second, RestoreAhead: 1,
			}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode([]byte(tt.in))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Decode =\n%#v\nwant\n%#v", got, tt.want)
			}
		})
	}
}

func vmJSON(extra string) string {
	return `{"vms": {"web": {"runner": ` + testRunnerJSON + `, "vcpu": 1, "memMiB": 64` + extra + `}}}`
}

func TestDecodeProblems(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string // each a whole line of the error ("path: message" prefix match)
	}{
		{"unknown VM field is reported with its path and a suggestion", vmJSON(`, "placment": {}`),
			[]string{`vms.web.placment: unknown field "placment"; did you mean "placement"?`}},
		{"unknown top-level field", `{"vm": {}}`,
			[]string{`vm: unknown field "vm"; did you mean "vms"?`}},
		{"unknown nested fields are all reported", vmJSON(`, "placement": {"node": [1]}, "volumes": {"d": {"sizeMiB": 1, "size": 2}}`),
			[]string{`vms.web.placement.node: unknown field "node"; did you mean "nodes"?`, `vms.web.volumes.d.size: unknown field "size"`}},
		{"unknown function field", `{"functions": {"f": {"runner": ` + testRunnerJSON + `, "vcpu": 1, "memMiB": 1,
			"http": {"host": "f.example.org", "path": "/", "port": 80, "prot": 80}}}}`,
			[]string{`functions.f.http.prot: unknown field "prot"; did you mean "port"?`}},
		{"string where an integer belongs", `{"vms": {"web": {"runner": ` + testRunnerJSON + `, "vcpu": "2", "memMiB": 64}}}`,
			[]string{`vms.web.vcpu: expected an integer, got string "2"`}},
		{"float where an integer belongs", `{"vms": {"web": {"runner": ` + testRunnerJSON + `, "vcpu": 1.5, "memMiB": 64}}}`,
			[]string{`vms.web.vcpu: expected an integer, got float 1.5`}},
		{"integer out of range", `{"vms": {"web": {"runner": ` + testRunnerJSON + `, "vcpu": 1, "memMiB": 99999999999999999999}}}`,
			[]string{`vms.web.memMiB: integer 99999999999999999999 is out of range`}},
		{"boolean field given a string", vmJSON(`, "autostart": "yes"`),
			[]string{`vms.web.autostart: expected a boolean, got string "yes"`}},
		{"negative node id", vmJSON(`, "placement": {"nodes": [3, -1]}`),
			[]string{`vms.web.placement.nodes[1]: expected a node id (an integer > 0), got -1`}},
		{"nodes not a list", vmJSON(`, "placement": {"nodes": 3}`),
			[]string{`vms.web.placement.nodes: expected a list, got integer 3`}},
		{"label value not a string", vmJSON(`, "placement": {"labels": {"zone": 1}}`),
			[]string{`vms.web.placement.labels.zone: expected a string, got integer 1`}},
		{"antiAffinity entry not a string", vmJSON(`, "placement": {"antiAffinity": [null]}`),
			[]string{`vms.web.placement.antiAffinity[0]: expected a string, got null`}},
		{"VM not an attribute set", `{"vms": {"web": 3}}`,
			[]string{`vms.web: expected an attribute set, got integer 3`}},
		{"vms not an attribute set", `{"vms": []}`,
			[]string{`vms: expected an attribute set of VMs, got list of 0 elements`}},
		{"top level not an attribute set", `"hello"`,
			[]string{`expected an attribute set, got string "hello"`}},
		{"missing runner, vcpu and memMiB", `{"vms": {"web": {}}}`,
			[]string{`vms.web.memMiB: missing required field`, `vms.web.runner: missing required field (a derivation)`, `vms.web.vcpu: missing required field`}},
		{"runner that is an out-path string", `{"vms": {"web": {"runner": "` + testOut + `", "vcpu": 1, "memMiB": 1}}}`,
			[]string{`vms.web.runner: must be a derivation, got string "` + testOut + `"; pass the derivation itself`}},
		{"runner that is an attribute set without drvPath", `{"vms": {"web": {"runner": {"name": "x"}, "vcpu": 1, "memMiB": 1}}}`,
			[]string{`vms.web.runner: must be a derivation, got an attribute set without drvPath (attributes: name)`}},
		{"runner with an extra field", `{"vms": {"web": {"runner": {"drv": "a", "out": "b", "x": 1}, "vcpu": 1, "memMiB": 1}}}`,
			[]string{`vms.web.runner.x: unknown field "x"`}},
		{"quoted names in paths", `{"vms": {"we b": {"runner": ` + testRunnerJSON + `, "vcpu": true, "memMiB": 1}}}`,
			[]string{`vms."we b".vcpu: expected an integer, got boolean true`}},
		{"function missing http", `{"functions": {"f": {"runner": ` + testRunnerJSON + `, "vcpu": 1, "memMiB": 1}}}`,
			[]string{`functions.f.http: missing required field`}},
		{"invalid JSON", `{"vms": `, []string{`invalid JSON: unexpected EOF`}},
		{"trailing data", `{} {}`, []string{`invalid JSON: unexpected data after the top-level value`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Decode([]byte(tt.in))
			if err == nil {
				t.Fatalf("Decode succeeded with %#v, want problems %q", c, tt.want)
			}
			assertProblems(t, err, tt.want)
		})
	}
}

// assertProblems checks that err is an *Error with exactly len(want)
// problems, each line starting with the matching want (in sorted order).
func assertProblems(t *testing.T, err error, want []string) {
	t.Helper()
	var se *Error
	if !errors.As(err, &se) {
		t.Fatalf("error %v (%T) is not a *spec.Error", err, err)
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(want) || len(se.Problems) != len(want) {
		t.Fatalf("got %d problems:\n%s\nwant %d:\n%s", len(lines), err, len(want), strings.Join(want, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(lines[i], want[i]) {
			t.Errorf("problem %d:\n got  %s\n want %s…", i, lines[i], want[i])
		}
	}
}

func TestDecodeReportsAllProblemsSortedByPath(t *testing.T) {
	in := `{"vms": {"b": {"runner": 1, "vcpu": "x", "memMiB": 1}, "a": {"runner": ` + testRunnerJSON + `, "vcpu": 1, "memMiB": 1, "zzz": 1}}, "cluster": 7}`
	_, err := Decode([]byte(in))
	assertProblems(t, err, []string{
		`cluster: expected a string, got integer 7`,
		`vms.a.zzz: unknown field "zzz"`,
		`vms.b.runner: must be a derivation, got integer 1`,
		`vms.b.vcpu: expected an integer, got string "x"`,
	})
}

// Decode reads the canonical JSON of what it decoded (nixeval hashes and
// caches it; `--json` shows it), durations of health and update included,
// and encoding/json reads it back the same (the replicated state).
func TestDecodeRoundTripsCanonicalJSON(t *testing.T) {
	for _, extra := range []string{
		`, "replicas": 2, "volumes": {"d": {"sizeMiB": 3}}`,
		`, "replicas": 2, "health": {"http": {"port": 8080, "path": "/healthz"}, "interval": "3s", "timeout": "1500ms"},
		   "update": {"maxUnavailable": 1, "progressDeadline": "2m", "autoRevert": true}`,
	} {
		c, err := Decode([]byte(vmJSON(extra)))
		if err != nil {
			t.Fatal(err)
		}
		data, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		again, err := Decode(data)
		if err != nil {
			t.Fatalf("Decode(Marshal(c)): %v\n%s", err, data)
		}
		if !reflect.DeepEqual(c, again) {
			t.Fatalf("round trip changed the value:\n%#v\n%#v", c, again)
		}
		var plain Cluster
		if err := json.Unmarshal(data, &plain); err != nil {
			t.Fatalf("json.Unmarshal(Marshal(c)): %v\n%s", err, data)
		}
		if !reflect.DeepEqual(*c, plain) {
			t.Fatalf("json round trip changed the value:\n%#v\n%#v", *c, plain)
		}
	}
}
