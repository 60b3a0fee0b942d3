package api

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

func TestNaturalCompare(t *testing.T) {
	names := []string{"web-10", "web-2", "web-1", "db", "web", "web-1a", "web-01x"}
	slices.SortFunc(names, naturalCompare)
	if want := []string{"db", "web", "web-1", "web-1a", "web-01x", "web-2", "web-10"}; !slices.Equal(names, want) {
		t.Fatalf("sorted %v, want %v", names, want)
	}
}

// replicas is a state with web's instances web-1, web-2 and web-10 placed
// (web-10 kept stopped when stopped is set), api placed and big
// unschedulable.
func replicas(stopped bool) *replicated.State {
	s := replicated.NewState()
	for _, name := range []string{"web-1", "web-2", "web-10"} {
		a := testkit.Assign(name, 1, "v1")
		a.Declared = "web"
		s.Assignments[name] = a
	}
	if stopped {
		a := s.Assignments["web-10"]
		a.Stopped = replicated.StoppedByOperator
		s.Assignments["web-10"] = a
	}
	s.Assignments["api"] = testkit.Assign("api", 2, "v1")
	s.Unschedulable = []replicated.Unschedulable{{VM: "big", Declared: "big", Reason: "needs 64 vCPUs"}}
	return s
}

func TestRestartOrder(t *testing.T) {
	for _, tt := range []struct {
		name, vm string
		stopped  bool
		want     []string
		err      string
	}{
		{"a declared VM's instances, numbers as numbers", "web", false, []string{"web-1", "web-2", "web-10"}, ""},
		{"one instance", "web-2", false, []string{"web-2"}, ""},
		{"a VM with one instance", "api", false, []string{"api"}, ""},
		{"a kept stopped instance refuses the whole VM", "web", true, nil, "cannot restart web-10: kept stopped"},
		{"the others of it alone are fine", "web-1", true, []string{"web-1"}, ""},
		{"an unschedulable VM says why", "big", false, nil, "needs 64 vCPUs"},
		{"an unknown VM is named", "ghost", false, nil, `VM "ghost" is neither`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := RestartOrder(replicas(tt.stopped), tt.vm)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("RestartOrder: %v, %v; want an error with %q", got, err, tt.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("RestartOrder = %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}

func TestRestartDone(t *testing.T) {
	const req = 40 // the restart request's index
	check := &spec.HealthCheck{TCP: &spec.TCPHealthCheck{Port: 22}}
	running := replicated.VMStatus{VM: "web-1", Node: 1, Phase: replicated.PhaseRunning, Restart: req}
	for _, tt := range []struct {
		name      string
		change    func(a *replicated.Assignment, o *replicated.VMStatus, observed *bool)
		done      bool
		why, fail string
	}{
		{"restarted and running: done", func(*replicated.Assignment, *replicated.VMStatus, *bool) {}, true, "", ""},
		{"a later restart counts too", func(a *replicated.Assignment, o *replicated.VMStatus, _ *bool) { a.Restart, o.Restart = req+5, req+5 },
			true, "", ""},
		{"the request not applied on the node read yet", func(a *replicated.Assignment, _ *replicated.VMStatus, _ *bool) { a.Restart = req - 1 },
			false, "not applied on this node yet", ""},
		{"never reported", func(_ *replicated.Assignment, _ *replicated.VMStatus, observed *bool) { *observed = false },
			false, "not reported by node 1 yet", ""},
		{"still reported by the node it leaves", func(_ *replicated.Assignment, o *replicated.VMStatus, _ *bool) { o.Node = 2 },
			false, "reported by node 2, assigned to node 1", ""},
		{"running but the restart not carried out", func(_ *replicated.Assignment, o *replicated.VMStatus, _ *bool) { o.Restart = req - 10 },
			false, "node 1 has not carried out the restart yet (running)", ""},
		{"carried out, starting", func(_ *replicated.Assignment, o *replicated.VMStatus, _ *bool) {
			o.Phase, o.Message = replicated.PhaseStarting, "runner starting"
		}, false, "starting: runner starting", ""},
		{"carried out, failed: waiting, the agent retries", func(_ *replicated.Assignment, o *replicated.VMStatus, _ *bool) {
			o.Phase = replicated.PhaseFailed
		}, false, "failed", ""},
		{"with a health check, running is not enough", func(a *replicated.Assignment, _ *replicated.VMStatus, _ *bool) { a.Health = check },
			false, "running, health not judged yet", ""},
		{"with a health check, unhealthy says why", func(a *replicated.Assignment, o *replicated.VMStatus, _ *bool) {
			a.Health, o.Health, o.HealthError = check, replicated.Unhealthy, "connection refused"
		}, false, "running, health unhealthy: connection refused", ""},
		{"with a health check, healthy: done", func(a *replicated.Assignment, o *replicated.VMStatus, _ *bool) {
			a.Health, o.Health = check, replicated.Healthy
		}, true, "", ""},
		{"kept stopped meanwhile: abandoned", func(a *replicated.Assignment, _ *replicated.VMStatus, _ *bool) {
			a.Stopped = replicated.StoppedByOperator
		}, false, "", "now kept stopped (operator)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := replicated.NewState()
			a := testkit.Assign("web-1", 1, "v1")
			a.Restart = req
			o, observed := running, true
			tt.change(&a, &o, &observed)
			s.Assignments["web-1"] = a
			if observed {
				s.Observed["web-1"] = o
			}
			done, why, err := RestartDone(s, "web-1", req)
			if tt.fail != "" {
				if !errors.Is(err, ErrRestartAbandoned) || !strings.Contains(err.Error(), tt.fail) {
					t.Fatalf("RestartDone: %v, want ErrRestartAbandoned with %q", err, tt.fail)
				}
				return
			}
			if err != nil || done != tt.done || (tt.why == "") != (why == "") || !strings.Contains(why, tt.why) {
				t.Fatalf("RestartDone = %v, %q, %v; want %v, %q", done, why, err, tt.done, tt.why)
			}
		})
	}
	if _, _, err := RestartDone(replicated.NewState(), "web-1", req); !errors.Is(err, ErrRestartAbandoned) {
		t.Fatalf("RestartDone of an instance no longer planned: %v", err)
	}
}
