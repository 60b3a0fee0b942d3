package reconciler

import (
	"testing"
	"time"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// TestComputeCarriesHealthChecks: the planner gives each assignment its
// VM's health check, and a change of the check alone is no change of the
// workload (same generation, not listed as changed: the agent probes
// differently, it does not restart the instance).
func TestComputeCarriesHealthChecks(t *testing.T) {
	check := func(port int) *spec.HealthCheck {
		return &spec.HealthCheck{HTTP: &spec.HTTPHealthCheck{Port: port, Path: "/healthz"}, Interval: 5 * time.Second,
			Timeout: 2 * time.Second, HealthyAfter: 1, UnhealthyAfter: 3}
	}
	web := mkVM("web", 1, 1024)
	web.Health = check(8080)
	web = withReplicas(web, 2)
	in := Input{
		Desired: mkCluster(map[string]spec.VM{"web": web, "db": mkVM("db", 1, 1024)}),
		Nodes:   mkNodes(ready(1)),
		Current: mkCurrent(mkAssign("web-0", 1, "web", 1, 1024, 5), mkAssign("web-1", 1, "web", 1, 1024, 5),
			mkAssign("db", 1, "db", 1, 1024, 5)),
	}
	p := Compute(in)
	byVM := map[string]replicated.Assignment{}
	for _, a := range p.Assignments {
		byVM[a.VM] = a
	}
	for _, name := range []string{"web-0", "web-1"} {
		a := byVM[name]
		if a.Health == nil || a.Health.HTTP == nil || a.Health.HTTP.Port != 8080 {
			t.Errorf("%s's health check = %+v, want the VM's", name, a.Health)
		}
		if a.Generation != 5 {
			t.Errorf("%s got generation %d, want its old 5: a new check is not a new workload", name, a.Generation)
		}
	}
	if a := byVM["db"]; a.Health != nil {
		t.Errorf("db has no check, its assignment has %+v", a.Health)
	}
	if p.HasChanges() {
		t.Errorf("a plan changing only health checks has changes: %s", p.Summary())
	}
}
