package api

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"time"

	"github.com/blixard/blixard/replicated"
)

// FunctionStats is the node's function gateway, as the API needs it: its
// bookkeeping of each function's requests on this node.
type FunctionStats interface {
	FunctionStats() []FunctionLocal
}

// FunctionLocal is one function's requests as this node's gateway saw
// them (not cluster-wide: every node's gateway counts its own).
type FunctionLocal struct {
	Function string `json:"function"`
	// Ready and Starting: the function's instances as the gateway sees
	// them; InFlight and Queued: its requests here now.
	Ready    int `json:"ready"`
	Starting int `json:"starting"`
	InFlight int `json:"inFlight"`
	Queued   int `json:"queued"`
	// Requests counts the requests routed here; ColdStarts those that
	// waited for an instance.
	Requests   uint64 `json:"requests"`
	ColdStarts uint64 `json:"coldStarts"`
	// Refused requests: QueueFull (503), TimedOut (504), StartFailed and
	// Unreachable (502).
	QueueFull   uint64 `json:"queueFull,omitempty"`
	TimedOut    uint64 `json:"timedOut,omitempty"`
	StartFailed uint64 `json:"startFailed,omitempty"`
	Unreachable uint64 `json:"unreachable,omitempty"`
	// ColdStartP50/P99: how long requests that waited waited for an
	// instance; RequestP50/P99: whole requests (arrival to the end of the
	// answer), over the last 1000.
	ColdStartP50 time.Duration `json:"coldStartP50"`
	ColdStartP99 time.Duration `json:"coldStartP99"`
	RequestP50   time.Duration `json:"requestP50"`
	RequestP99   time.Duration `json:"requestP99"`
	LastActive   time.Time     `json:"lastActive,omitzero"`
	StartFailure string        `json:"startFailure,omitempty"`
}

// FunctionsView is GET /v1/functions: every function of the committed
// revision with its committed scale and instances, and what the answering
// node's gateway saw.
type FunctionsView struct {
	Freshness
	// Node is the node that answered: Local is its gateway's.
	Node      uint64         `json:"node"`
	Functions []FunctionView `json:"functions"`
}

// FunctionView is one function.
type FunctionView struct {
	Name  string `json:"name"`
	Route string `json:"route"`
	// Want is the committed scale (clamped to Min and Max); Reason why it
	// last changed.
	Want        int       `json:"want"`
	Min         int       `json:"min"`
	Max         int       `json:"max"`
	Concurrency int       `json:"concurrency"`
	IdleTimeout string    `json:"idleTimeout"`
	Reason      string    `json:"reason,omitempty"`
	ScaledAt    time.Time `json:"scaledAt,omitzero"`
	// LastActive is the newest activity any gateway reported.
	LastActive time.Time          `json:"lastActive,omitzero"`
	Instances  []FunctionInstance `json:"instances"`
	// Local is the answering node's gateway (nil: it runs none).
	Local *FunctionLocal `json:"local,omitempty"`
}

// FunctionInstance is one instance of a function.
type FunctionInstance struct {
	Name    string `json:"name"`
	Node    uint64 `json:"node"`
	Phase   string `json:"phase"`
	Health  string `json:"health,omitempty"`
	Address string `json:"address,omitempty"`
	Message string `json:"message,omitempty"`
}

// functionsView builds the view from the state and the local gateway's
// stats (nil: none).
func functionsView(st *replicated.State, self uint64, local []FunctionLocal) FunctionsView {
	v := FunctionsView{Node: self, Functions: []FunctionView{}}
	if st.Desired == nil {
		return v
	}
	byFn := map[string]*FunctionLocal{}
	for i := range local {
		byFn[local[i].Function] = &local[i]
	}
	insts := map[string][]FunctionInstance{}
	for _, name := range slices.Sorted(maps.Keys(st.Assignments)) {
		a := st.Assignments[name]
		if a.Function == "" {
			continue
		}
		fi := FunctionInstance{Name: name, Node: a.Node, Phase: "pending"}
		if o, ok := st.Observed[name]; ok && o.Node == a.Node {
			fi.Phase, fi.Health, fi.Message = string(o.Phase), string(o.Health), o.Message
		}
		if st.Network != nil {
			if id, ok := st.Network.Identities[name]; ok && id.Address.IsValid() {
				fi.Address = id.Address.String()
			}
		}
		insts[a.Function] = append(insts[a.Function], fi)
	}
	for _, name := range slices.Sorted(maps.Keys(st.Desired.Functions)) {
		f := st.Desired.Functions[name]
		fs := st.Functions[name]
		fv := FunctionView{Name: name, Route: f.HTTP.String(), Want: st.FunctionWant(name), Min: f.MinInstances,
			Max: f.MaxInstances, Concurrency: f.Concurrency, IdleTimeout: f.IdleTimeout.String(), Reason: fs.Reason,
			ScaledAt: fs.ScaledAt, LastActive: fs.LastActive, Instances: insts[name], Local: byFn[name]}
		if fv.Instances == nil {
			fv.Instances = []FunctionInstance{}
		}
		v.Functions = append(v.Functions, fv)
	}
	return v
}

func (s *Server) localFunctions() []FunctionLocal {
	if s.o.Functions == nil {
		return nil
	}
	return s.o.Functions.FunctionStats()
}

func (s *Server) handleFunctions(w http.ResponseWriter, r *http.Request) {
	st, fresh, ok := s.read(w, r)
	if !ok {
		return
	}
	v := functionsView(st, s.o.Replica.NodeID(), s.localFunctions())
	v.Freshness = fresh
	writeJSON(w, http.StatusOK, v)
}

// WriteFunctionMetrics writes the functions' gauges and this node's
// gateway counters: committed want, instances by phase, requests in
// flight and queued, requests, cold starts and refusals (counters), and
// cold start and request latency quantiles.
func WriteFunctionMetrics(w io.Writer, st *replicated.State, local []FunctionLocal) {
	v := functionsView(st, 0, local)
	if len(v.Functions) == 0 {
		return
	}
	head := func(name, typ, help string) { fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ) }
	head("blixard_function_want", "gauge", "Instances the function wants (committed scale).")
	for _, f := range v.Functions {
		fmt.Fprintf(w, "blixard_function_want{function=%q} %d\n", f.Name, f.Want)
	}
	head("blixard_function_instances", "gauge", "The function's assigned instances by phase.")
	for _, f := range v.Functions {
		phases := map[string]int{}
		for _, i := range f.Instances {
			phases[i.Phase]++
		}
		for _, p := range slices.Sorted(maps.Keys(phases)) {
			fmt.Fprintf(w, "blixard_function_instances{function=%q,phase=%q} %d\n", f.Name, p, phases[p])
		}
	}
	type metric struct {
		name, typ, help string
		val             func(*FunctionLocal) float64
	}
	for _, m := range []metric{
		{"blixard_function_in_flight", "gauge", "Requests in flight at this node's gateway.", func(l *FunctionLocal) float64 { return float64(l.InFlight) }},
		{"blixard_function_queued", "gauge", "Requests waiting for an instance at this node's gateway.", func(l *FunctionLocal) float64 { return float64(l.Queued) }},
		{"blixard_function_requests_total", "counter", "Requests routed to the function at this node's gateway.", func(l *FunctionLocal) float64 { return float64(l.Requests) }},
		{"blixard_function_cold_starts_total", "counter", "Requests that waited for an instance at this node's gateway.", func(l *FunctionLocal) float64 { return float64(l.ColdStarts) }},
		{"blixard_function_refused_total", "counter", "Requests refused (503, 504, 502) at this node's gateway.", func(l *FunctionLocal) float64 {
			return float64(l.QueueFull + l.TimedOut + l.StartFailed + l.Unreachable)
		}},
		{"blixard_function_cold_start_p99_seconds", "gauge", "p99 of the waits for an instance (last 1000) at this node's gateway.", func(l *FunctionLocal) float64 { return l.ColdStartP99.Seconds() }},
		{"blixard_function_request_p99_seconds", "gauge", "p99 of request latency (last 1000) at this node's gateway.", func(l *FunctionLocal) float64 { return l.RequestP99.Seconds() }},
	} {
		head(m.name, m.typ, m.help)
		for _, f := range v.Functions {
			if f.Local != nil {
				fmt.Fprintf(w, "%s{function=%q} %g\n", m.name, f.Name, m.val(f.Local))
			}
		}
	}
}
