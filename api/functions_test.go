package api

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

func TestFunctionsView(t *testing.T) {
	st := &replicated.State{
		Desired: &spec.Cluster{Functions: map[string]spec.Function{
			"hello": {MinInstances: 0, MaxInstances: 4, Concurrency: 2, IdleTimeout: time.Minute, HTTP: spec.FunctionHTTP{Host: "fn.test", Path: "/", Port: 8080}},
			"cold":  {MinInstances: 1, MaxInstances: 2, Concurrency: 1, IdleTimeout: time.Minute, HTTP: spec.FunctionHTTP{Host: "c.test", Path: "/", Port: 80}},
		}},
		Functions: map[string]replicated.FunctionState{"hello": {Want: 9, Reason: "queued"}},
		Assignments: map[string]replicated.Assignment{
			"fn-hello-0": {VM: "fn-hello-0", Function: "hello", Node: 1},
			"fn-hello-1": {VM: "fn-hello-1", Function: "hello", Node: 2},
			"web":        {VM: "web", Node: 1},
		},
		Observed: map[string]replicated.VMStatus{
			"fn-hello-0": {VM: "fn-hello-0", Node: 1, Phase: replicated.PhaseRunning, Health: replicated.Healthy},
			"fn-hello-1": {VM: "fn-hello-1", Node: 1, Phase: replicated.PhaseRunning}, // the old node's report
		},
		Network: &replicated.Network{Identities: map[string]replicated.Identity{"fn-hello-0": {Address: netip.MustParseAddr("10.0.0.2")}}},
	}
	v := functionsView(st, 3, []FunctionLocal{{Function: "hello", InFlight: 2}})
	if len(v.Functions) != 2 || v.Node != 3 {
		t.Fatalf("view %+v", v)
	}
	cold, hello := v.Functions[0], v.Functions[1]
	if cold.Name != "cold" || cold.Want != 1 || len(cold.Instances) != 0 || cold.Local != nil {
		t.Errorf("cold: %+v", cold)
	}
	if hello.Want != 4 || hello.Reason != "queued" || hello.Local == nil || hello.Local.InFlight != 2 || len(hello.Instances) != 2 {
		t.Fatalf("hello: %+v", hello)
	}
	if i := hello.Instances[0]; i.Phase != "running" || i.Health != "healthy" || i.Address != "10.0.0.2" {
		t.Errorf("fn-hello-0: %+v", i)
	}
	if i := hello.Instances[1]; i.Phase != "pending" {
		t.Errorf("fn-hello-1 (reported by another node than its own): %+v", i)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(functionCollector{state: func() (*replicated.State, error) { return st, nil },
		local: func() []FunctionLocal {
			return []FunctionLocal{{Function: "hello", InFlight: 2, Requests: 7, QueueFull: 3}}
		}})
	fams, err := reg.Gather()
	if err != nil {
		t.Fatalf("gathering the function series: %v", err)
	}
	var b bytes.Buffer
	for _, f := range fams {
		if _, err := expfmt.MetricFamilyToText(&b, f); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{`blixard_function_want{function="hello"} 4`, `blixard_function_want{function="cold"} 1`,
		`blixard_function_instances{function="hello",phase="running"} 1`, `blixard_function_in_flight{function="hello"} 2`,
		`blixard_function_requests_total{function="hello"} 7`, "# TYPE blixard_function_requests_total counter",
		`blixard_function_refused_total{function="hello",reason="queue_full"} 3`} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("metrics lack %q:\n%s", want, b.String())
		}
	}
	if strings.Contains(b.String(), `blixard_function_in_flight{function="cold"}`) {
		t.Errorf("a function this node's gateway has no stats of has gateway series:\n%s", b.String())
	}
}
