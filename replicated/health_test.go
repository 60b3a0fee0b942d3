package replicated

import (
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"github.com/blixard/blixard/spec"
)

// healthArgs applies a heartbeat's health=vm:state[:error],… and
// health-since=RFC3339 arguments to its statuses.
func healthArgs(t *testing.T, d *datadriven.TestData, statuses []VMStatus) {
	var since time.Time
	if v := strArg(t, d, "health-since"); v != "" {
		var err error
		if since, err = time.Parse(time.RFC3339, v); err != nil {
			t.Fatalf("health-since=%s: %v", v, err)
		}
	}
	v := strArg(t, d, "health")
	if v == "" {
		return
	}
	for _, h := range strings.Split(v, ",") {
		parts := strings.SplitN(h, ":", 3)
		found := false
		for i := range statuses {
			if statuses[i].VM != parts[0] {
				continue
			}
			found = true
			if len(parts) > 1 {
				statuses[i].Health = HealthState(parts[1])
			}
			if len(parts) > 2 {
				statuses[i].HealthError = parts[2]
			}
			statuses[i].HealthSince = since
		}
		if !found {
			t.Fatalf("health=%s: %s has no status", v, parts[0])
		}
	}
}

// healthChecks gives the VMs of health=vm:port,… an HTTP health check on
// port, in the spec and in their assignment, as the planner does.
func healthChecks(t *testing.T, c *CommitPlan, arg string) {
	for _, h := range strings.Split(arg, ",") {
		vm, port, _ := strings.Cut(h, ":")
		p, err := strconv.Atoi(port)
		if err != nil {
			t.Fatalf("health=%s: %v", arg, err)
		}
		check := &spec.HealthCheck{HTTP: &spec.HTTPHealthCheck{Port: p, Path: "/healthz"}, Interval: 5 * time.Second,
			Timeout: 2 * time.Second, HealthyAfter: 1, UnhealthyAfter: 3}
		x, ok := c.Spec.VMs[vm]
		if !ok {
			t.Fatalf("health=%s: no VM %s in the plan's spec", arg, vm)
		}
		x.Health = check
		c.Spec.VMs[vm] = x
		for i := range c.Assignments {
			if c.Assignments[i].VM == vm {
				c.Assignments[i].Health = check
			}
		}
	}
}

// TestHealthJSONRoundTrip: a status's health and an assignment's check
// survive the JSON of commands and snapshots; without them the JSON has
// no trace of them (older readers see what they always saw).
func TestHealthJSONRoundTrip(t *testing.T) {
	since := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	st := VMStatus{VM: "web", Node: 1, Phase: PhaseRunning, ObservedAt: since, Health: Unhealthy, HealthSince: since,
		HealthError: "connect to 10.100.0.2:80: connection refused"}
	as := Assignment{VM: "web", Declared: "web", Node: 1, Health: &spec.HealthCheck{TCP: &spec.TCPHealthCheck{Port: 80},
		Interval: 5 * time.Second, Timeout: 2 * time.Second, HealthyAfter: 1, UnhealthyAfter: 3}}
	for _, v := range []any{&st, &as} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		back := reflect.New(reflect.TypeOf(v).Elem())
		if err := json.Unmarshal(b, back.Interface()); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(back.Interface(), v) {
			t.Errorf("round trip of %s: %+v, want %+v", b, back.Elem(), reflect.ValueOf(v).Elem())
		}
	}
	b, err := json.Marshal(VMStatus{VM: "web", Phase: PhaseStarting})
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"health", "healthSince", "healthError"} {
		if strings.Contains(string(b), `"`+key+`"`) {
			t.Errorf("a status without health has %q: %s", key, b)
		}
	}
	// Only the check differs: the same workload (no new generation, no
	// restart).
	other := as
	other.Health = nil
	if !as.SameWorkload(other) {
		t.Error("assignments that differ only in their health check are not the same workload")
	}
}
