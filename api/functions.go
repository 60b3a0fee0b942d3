package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/blixard/blixard/replicated"
)

// FunctionStats is the node's function gateway, as the API needs it: its
// bookkeeping of each function's requests on this node.
type FunctionStats interface {
	FunctionStats() []FunctionLocal
}

// ScaleOuts proposes a gateway's scale-out (a ScaleFunction command
// without a plan) with the plan made from this replica riding along, and
// may start the instances it places ahead of the commit (the node's
// function component); it returns when the command committed, as
// [Replica.Propose] does.
type ScaleOuts interface {
	ProposeScaleOut(ctx context.Context, cmd replicated.Command) (replicated.Result, error)
}

// AgentAhead holds the instances this server started ahead of their
// scale-out's commit on agent-only nodes (the node's function component,
// for the scale-outs their gateways sent it). Ahead returns, for each node
// with such instances, st with them added and their names
// ([AheadInstances]); none when there are none. It must not change st.
type AgentAhead interface {
	Ahead(st *replicated.State) map[uint64]AheadInstances
}

// AheadInstances are one node's instances started ahead: State is the
// state they were guessed from with them added, Instances their names.
type AheadInstances struct {
	State     *replicated.State
	Instances []string
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
	// Gateways, with ?nodes=all, is every registered node's gateway as
	// the answering node could ask it, sorted by node; each function's
	// Cluster sums them.
	Gateways []NodeGateway `json:"gateways,omitempty"`
}

// NodeGateway is one node's gateway in a cluster-wide view.
type NodeGateway struct {
	Node uint64 `json:"node"`
	// Error says why the node's counts are missing (marked down,
	// unreachable, …); "" when it answered.
	Error string `json:"error,omitempty"`
	// Functions is its gateway's counts; empty when it runs no gateway
	// (no --ingress-addr).
	Functions []FunctionLocal `json:"functions"`
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
	// Cluster, with ?nodes=all, is every answering gateway's counts
	// summed (instances: the most any gateway sees ready or starting;
	// percentiles: the highest gateway's; nil: no gateway has the
	// function).
	Cluster *FunctionLocal `json:"cluster,omitempty"`
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

// handleFunctions is GET /v1/functions; with ?nodes=all it also asks
// every other registered node's API for its gateway's counts (at once,
// each bounded by peerStatsTimeout) and sums them.
func (s *Server) handleFunctions(w http.ResponseWriter, r *http.Request) {
	st, fresh, ok := s.read(w, r)
	if !ok {
		return
	}
	self := s.o.Replica.NodeID()
	v := functionsView(st, self, s.localFunctions())
	v.Freshness = fresh
	switch nodes := r.URL.Query().Get("nodes"); nodes {
	case "":
	case "all":
		v.Gateways = s.gateways(r.Context(), st, self)
		MergeGateways(&v)
	default:
		writeError(w, http.StatusBadRequest, fmt.Errorf("nodes=%q: want nodes=all (every node's gateway) or no nodes parameter (this node's)", nodes))
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// peerStatsTimeout bounds asking one other node for its gateway's counts.
const peerStatsTimeout = 3 * time.Second

// gateways asks every registered node for its gateway's counts: this node
// directly, the others over their APIs, concurrently.
func (s *Server) gateways(ctx context.Context, st *replicated.State, self uint64) []NodeGateway {
	ids := slices.Sorted(maps.Keys(st.Nodes))
	out := make([]NodeGateway, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		out[i] = NodeGateway{Node: id, Functions: []FunctionLocal{}}
		n := st.Nodes[id]
		switch {
		case id == self:
			if l := s.localFunctions(); l != nil {
				out[i].Functions = l
			}
		case n.State == replicated.NodeDown:
			out[i].Error = "marked down"
		case n.APIAddr == "":
			out[i].Error = "registered no API address"
		default:
			wg.Add(1)
			go func() {
				defer wg.Done()
				fns, err := s.peerFunctions(ctx, n.APIAddr)
				if err != nil {
					out[i].Error = err.Error()
					return
				}
				out[i].Functions = fns
			}()
		}
	}
	wg.Wait()
	return out
}

// peerFunctions is the gateway counts of the node whose API is at apiAddr.
func (s *Server) peerFunctions(ctx context.Context, apiAddr string) ([]FunctionLocal, error) {
	ctx, cancel := context.WithTimeout(ctx, peerStatsTimeout)
	defer cancel()
	scheme := "http"
	if s.o.PeerTLS != nil {
		scheme = "https"
	}
	u := (&url.URL{Scheme: scheme, Host: apiAddr, Path: "/v1/functions"}).String()
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		return nil, fmt.Errorf("its API address %q is not usable: %w", apiAddr, err)
	}
	resp, err := s.peers.Do(req)
	if err != nil {
		return nil, fmt.Errorf("unreachable at %s: %w", apiAddr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("its API at %s answered %s", apiAddr, resp.Status)
	}
	var v FunctionsView
	if err := json.NewDecoder(io.LimitReader(resp.Body, 8<<20)).Decode(&v); err != nil {
		return nil, fmt.Errorf("its API at %s answered what is not a functions view: %w", apiAddr, err)
	}
	fns := []FunctionLocal{}
	for _, f := range v.Functions {
		if f.Local != nil {
			fns = append(fns, *f.Local)
		}
	}
	return fns, nil
}

// MergeGateways sets each function's Cluster from v.Gateways: counts
// summed; Ready and Starting the most any gateway sees (they see the same
// instances, a stale one fewer); percentiles the highest gateway's (exact
// ones cannot be merged from percentiles); the newest LastActive; the first
// StartFailure by node.
func MergeGateways(v *FunctionsView) {
	for i := range v.Functions {
		f := &v.Functions[i]
		f.Cluster = nil
		for _, g := range v.Gateways {
			for _, l := range g.Functions {
				if l.Function != f.Name {
					continue
				}
				if f.Cluster == nil {
					f.Cluster = &FunctionLocal{Function: f.Name}
				}
				c := f.Cluster
				c.Ready, c.Starting = max(c.Ready, l.Ready), max(c.Starting, l.Starting)
				c.InFlight += l.InFlight
				c.Queued += l.Queued
				c.Requests += l.Requests
				c.ColdStarts += l.ColdStarts
				c.QueueFull += l.QueueFull
				c.TimedOut += l.TimedOut
				c.StartFailed += l.StartFailed
				c.Unreachable += l.Unreachable
				c.ColdStartP50, c.ColdStartP99 = max(c.ColdStartP50, l.ColdStartP50), max(c.ColdStartP99, l.ColdStartP99)
				c.RequestP50, c.RequestP99 = max(c.RequestP50, l.RequestP50), max(c.RequestP99, l.RequestP99)
				if l.LastActive.After(c.LastActive) {
					c.LastActive = l.LastActive
				}
				if c.StartFailure == "" {
					c.StartFailure = l.StartFailure
				}
			}
		}
	}
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
