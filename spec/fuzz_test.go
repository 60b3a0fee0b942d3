package spec

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzDecode checks that Decode and Validate never panic, and that a
// cluster that decodes and validates survives Marshal → Decode unchanged
// (canonical JSON is a fixed point) and expands into unique instances.
func FuzzDecode(f *testing.F) {
	seeds := []string{
		`{}`,
		`[]`,
		`null`,
		`{"cluster": "prod"}`,
		vmJSON(``),
		vmJSON(`, "replicas": 3, "placement": {"nodes": [1], "labels": {"a": "b"}, "antiAffinity": ["web"]}`),
		vmJSON(`, "volumes": {"data": {"sizeMiB": 10, "pool": "rbd"}}, "autostart": false`),
		`{"vms": {"web": {"runner": "/nix/store/x", "vcpu": 1.5, "memMiB": -1}}}`,
		`{"functions": {"f": {"runner": ` + testRunnerJSON + `, "memMiB": 1, "http": {"path": "/"}, "minInstances": 0, "maxInstances": 2}}}`,
		`{"vms": {"web": {"runner": ` + testRunnerJSON + `, "vcpu": 1, "memMiB": 1, "replicas": 2}, "web-0": {"runner": ` + testRunnerJSON + `, "vcpu": 1, "memMiB": 1}}}`,
		`{"network": {"cidr": "10.200.0.0/24"}}`,
		`{"network": {"cidr": "10.200.0.5/24"}}`,
		`{"network": {}}`,
		vmJSON(``)[:len(vmJSON(``))-1] + `, "ingress": {"site": {"host": "web.example.org", "to": "web", "port": 80}, "pg": {"host": "d.e", "to": "web", "port": 5432, "protocol": "tcp", "listenPort": 15432}}}`,
		vmJSON(``)[:len(vmJSON(``))-1] + `, "ingress": {"site": {"host": "web.example.org", "path": "/a", "to": "web", "port": 80, "listenPort": null}}}`,
		`{"vms": {"web": {"vcpu": 1, "memMiB": 1, "replicas": 2, "instances": {"web-0": {"runner": ` + testRunnerJSON + `, "mac": "02:00:00:00:00:01", "tap": "bx0", "hostname": "w0"}, "web-1": {"runner": ` + testRunnerJSON + `}}}}}`,
		vmJSON(`, "instances": {"web": {"mac": "0a:b1:00:00:00:01", "hostname": "web-"}}`),
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Decode(data)
		if err != nil {
			if c != nil {
				t.Fatalf("Decode returned both a cluster and %v", err)
			}
			return
		}
		if c.Validate() != nil {
			return
		}
		seen := map[string]bool{}
		for _, in := range c.Instances() {
			if seen[in.Name] {
				t.Fatalf("valid cluster expands to %q twice", in.Name)
			}
			seen[in.Name] = true
			if err := ValidName(in.Name); err != nil {
				t.Fatalf("valid cluster expands to an invalid name: %v", err)
			}
		}
		canon, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		again, err := Decode(canon)
		if err != nil {
			t.Fatalf("Decode(canonical JSON): %v\n%s", err, canon)
		}
		canon2, err := json.Marshal(again)
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		if !bytes.Equal(canon, canon2) {
			t.Fatalf("canonical JSON is not a fixed point:\n%s\n%s", canon, canon2)
		}
	})
}
