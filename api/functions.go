package api

import (
	"maps"
	"net/http"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

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

// functionCollector is the functions' series at scrape time, from the
// local replica and this node's gateway: committed want, instances by
// phase, requests in flight and queued, requests, cold starts and refusals
// (counters). Latency histograms come from the gateway itself (package
// metrics). It describes nothing (an unchecked collector): its series
// follow the flake's functions.
type functionCollector struct {
	state func() (*replicated.State, error)
	local func() []FunctionLocal
}

var (
	fnWantDesc = prometheus.NewDesc("blixard_function_want", "Instances the function wants (committed scale).",
		[]string{"function"}, nil)
	fnInstancesDesc = prometheus.NewDesc("blixard_function_instances", "The function's assigned instances by phase.",
		[]string{"function", "phase"}, nil)
	fnInFlightDesc = prometheus.NewDesc("blixard_function_in_flight", "Requests in flight at this node's gateway.",
		[]string{"function"}, nil)
	fnQueuedDesc = prometheus.NewDesc("blixard_function_queued", "Requests waiting for an instance at this node's gateway.",
		[]string{"function"}, nil)
	fnRequestsDesc = prometheus.NewDesc("blixard_function_requests_total", "Requests routed to the function at this node's gateway.",
		[]string{"function"}, nil)
	fnColdStartsDesc = prometheus.NewDesc("blixard_function_cold_starts_total", "Requests that waited for an instance at this node's gateway.",
		[]string{"function"}, nil)
	fnRefusedDesc = prometheus.NewDesc("blixard_function_refused_total",
		"Requests refused at this node's gateway, by reason: queue_full (503), timed_out (504), start_failed and unreachable (502).",
		[]string{"function", "reason"}, nil)
)

func (c functionCollector) Describe(chan<- *prometheus.Desc) {}

func (c functionCollector) Collect(ch chan<- prometheus.Metric) {
	st, err := c.state()
	if err != nil {
		return // the state's own collector reports it
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for _, f := range functionsView(st, 0, c.local()).Functions {
		gauge(fnWantDesc, float64(f.Want), f.Name)
		phases := map[string]int{}
		for _, i := range f.Instances {
			phases[i.Phase]++
		}
		for _, p := range slices.Sorted(maps.Keys(phases)) {
			gauge(fnInstancesDesc, float64(phases[p]), f.Name, p)
		}
		l := f.Local
		if l == nil {
			continue
		}
		gauge(fnInFlightDesc, float64(l.InFlight), f.Name)
		gauge(fnQueuedDesc, float64(l.Queued), f.Name)
		counter(fnRequestsDesc, l.Requests, f.Name)
		counter(fnColdStartsDesc, l.ColdStarts, f.Name)
		counter(fnRefusedDesc, l.QueueFull, f.Name, "queue_full")
		counter(fnRefusedDesc, l.TimedOut, f.Name, "timed_out")
		counter(fnRefusedDesc, l.StartFailed, f.Name, "start_failed")
		counter(fnRefusedDesc, l.Unreachable, f.Name, "unreachable")
	}
}
