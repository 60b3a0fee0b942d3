// Package metrics is a node's Prometheus registry (client_golang), served
// at GET /metrics by the API: the histograms of the work the node does,
// gauges read from its local replica at scrape time, and the Go runtime
// and process collectors.
//
// Its one job is to turn measurements into Prometheus series. The parts
// that measure declare what they report in small interfaces of their own
// (reconciler.Metrics, nodeagent.Metrics), which *Metrics implements, so
// none of them imports Prometheus; the node assembly hands one *Metrics to
// all of them. There is no default registry and no package-level state:
// every node (and every test) has its own.
//
// Series:
//
//   - histograms, in seconds: blixard_fetch_duration_seconds{result},
//     blixard_eval_duration_seconds{result},
//     blixard_plan_duration_seconds{kind="commit"|"replan"},
//     blixard_commit_duration_seconds{result="ok"|"stale"|"refused"|"error"}
//     (proposing a plan until this replica applied it),
//     blixard_push_to_running_seconds (the leader: from the fetch that saw
//     a commit to every instance of it running), and on every node with
//     VMs blixard_realise_duration_seconds{result,built},
//     blixard_attach_duration_seconds{result},
//     blixard_start_duration_seconds{result};
//   - blixard_vm_restarts_total{vm,reason="crash"|"requested"}: restarts
//     this node's agent saw or made;
//   - from the local replica, the same on every node (see state.go): the
//     VMs' phase and health, the nodes' state, capacity and allocation, the
//     revision and conditions, and this replica's Raft view (leader,
//     applied index, leader changes, apply lag);
//   - go_* and process_*.
//
// Functions (issue 16's functions work) will add their own series through
// [Metrics.Registerer]: invocations, cold starts and their durations.
//
// It must not serve HTTP (the API does, under its role rules), propose,
// run programs, or reach Raft, git, nix or Ceph: it reads the replica
// through the [Replica] interface it declares.
package metrics

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/blixard/blixard/replicated"
)

// Replica is the local replica as the metrics read it at scrape time;
// *raftstore.Store satisfies it.
type Replica interface {
	// LocalRead returns the local replica's state, possibly stale.
	LocalRead() (*replicated.State, error)
	// NodeID is this node's id.
	NodeID() uint64
	// Leader is the leader's id as known locally (ok false: none known).
	Leader() (id uint64, ok bool)
}

// Raft is what the metrics read of the Raft replica beyond the state;
// *raftstore.Store satisfies it. Optional.
type Raft interface {
	// LeaderChanges counts the leaders this replica learned of.
	LeaderChanges() uint64
	// LastLogIndex is the last entry in this replica's log.
	LastLogIndex() (index uint64, ok bool)
}

// Options configure [New].
type Options struct {
	// Replica is read at every scrape (nil: no state series, as on a
	// process that runs no replica).
	Replica Replica
	// Raft adds the leader change counter and the apply lag (nil: none).
	Raft Raft
}

// Metrics is one node's registry and the histograms and counters the
// node's parts report to. Its methods are safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	fetch, eval, plan, commit *prometheus.HistogramVec
	push                      prometheus.Histogram
	realise, attach, start    *prometheus.HistogramVec
	restore                   *prometheus.HistogramVec
	pool                      prometheus.Gauge
	restarts                  *prometheus.CounterVec
	fnWait, fnRequest         *prometheus.HistogramVec
}

// New returns a node's registry with the Go runtime and process
// collectors, the state collector of o.Replica, and every histogram and
// counter of the node's parts (their label values already present, at
// zero, so dashboards and alerts see the series before the first event).
func New(o Options) *Metrics {
	// Buckets, in seconds. Fetches, evaluations and builds take from
	// milliseconds (a cached result, a runner already in the store) to many
	// minutes (a cold nixpkgs, a kernel build); planning is in-memory work
	// of microseconds to seconds; a commit is a Raft round trip.
	slowBuckets := []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800}
	planBuckets := prometheus.ExponentialBuckets(0.0001, 4, 10) // 100µs … 26s
	// Function requests: a warm one takes a millisecond, a cold start from
	// a snapshot a fraction of a second, a boot seconds.
	fnBuckets := prometheus.ExponentialBuckets(0.0005, 2.5, 14) // 0.5ms … 75s
	commitBuckets := []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		fetch: histogram("blixard_fetch_duration_seconds",
			"Fetches of the tracked ref by the leader, by result (ok, error).", slowBuckets, "result"),
		eval: histogram("blixard_eval_duration_seconds",
			"Evaluations of fetched commits by the leader (nix eval), by result (ok, error); cancelled ones are left out.", slowBuckets, "result"),
		plan: histogram("blixard_plan_duration_seconds",
			"Planning (volume check and placement) by the leader: kind commit for a newly evaluated commit, replan for the re-plan every pass makes of the running revision.",
			planBuckets, "kind"),
		commit: histogram("blixard_commit_duration_seconds",
			"Proposing a plan until this replica applied it, by result (ok, stale: another plan won, refused, error: outcome unknown).",
			commitBuckets, "result"),
		push: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "blixard_push_to_running_seconds",
			Help:    "From the leader's fetch that first saw a commit to every instance of its revision running and healthy (checked at each pass, so up to a pass interval late).",
			Buckets: slowBuckets}),
		realise: histogram("blixard_realise_duration_seconds",
			"Making a VM's runner valid on this node, by result (ok, error) and built (true: built from a .drv or the flake; false: found in the store or a cache).",
			slowBuckets, "result", "built"),
		attach: histogram("blixard_attach_duration_seconds",
			"Attaching a VM's volumes on this node, by result (ok, error).", slowBuckets, "result"),
		start: histogram("blixard_start_duration_seconds",
			"Starting or restarting a VM's unit on this node (its network included), by result (ok, error).", slowBuckets, "result"),
		fnWait: histogram("blixard_function_queue_wait_seconds",
			"Waits of function requests at this node's gateway for an instance that took them (cold starts and busy instances), by function.",
			fnBuckets, "function"),
		fnRequest: histogram("blixard_function_request_duration_seconds",
			"Function requests through this node's gateway, arrival to the end of the answer, whatever the outcome, by function.",
			fnBuckets, "function"),
		restore: histogram("blixard_snapshot_restore_duration_seconds",
			"Restores of snapshot functions' instances on this node, from the start to the guest's identity acknowledged, by result (ok, error) and runner "+
				"(started_ahead: the restore pool's; spawned).", fnBuckets, "result", "runner"),
		pool: prometheus.NewGauge(prometheus.GaugeOpts{Name: "blixard_restore_pool_runners",
			Help: "Runners of snapshot functions this node keeps started ahead, paused before their restore (serve --restore-pool)."}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "blixard_vm_restarts_total",
			Help: "Restarts of VMs on this node: reason crash (the backend restarted a runner that exited), requested (a new runner or `blixard vm restart`)."},
			[]string{"vm", "reason"}),
	}
	for _, r := range []string{"ok", "error"} {
		m.fetch.WithLabelValues(r)
		m.eval.WithLabelValues(r)
		m.attach.WithLabelValues(r)
		m.start.WithLabelValues(r)
		for _, runner := range []string{"started_ahead", "spawned"} {
			m.restore.WithLabelValues(r, runner)
		}
		for _, b := range []string{"true", "false"} {
			m.realise.WithLabelValues(r, b)
		}
	}
	for _, k := range []string{"commit", "replan"} {
		m.plan.WithLabelValues(k)
	}
	for _, r := range []string{"ok", "stale", "refused", "error"} {
		m.commit.WithLabelValues(r)
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.fetch, m.eval, m.plan, m.commit, m.push, m.realise, m.attach, m.start, m.restore, m.pool, m.restarts, m.fnWait, m.fnRequest,
	)
	if o.Replica != nil {
		m.reg.MustRegister(&stateCollector{replica: o.Replica, raft: o.Raft})
	}
	return m
}

func histogram(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels)
}

// Gatherer is what the API serves at GET /metrics.
func (m *Metrics) Gatherer() prometheus.Gatherer { return m.reg }

// Registerer lets other parts of the node add their own series (the
// functions gateway's, when it comes).
func (m *Metrics) Registerer() prometheus.Registerer { return m.reg }

func result(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

// ObserveFetch implements reconciler.Metrics.
func (m *Metrics) ObserveFetch(d time.Duration, err error) {
	m.fetch.WithLabelValues(result(err)).Observe(d.Seconds())
}

// ObserveEval implements reconciler.Metrics.
func (m *Metrics) ObserveEval(d time.Duration, err error) {
	m.eval.WithLabelValues(result(err)).Observe(d.Seconds())
}

// ObservePlan implements reconciler.Metrics.
func (m *Metrics) ObservePlan(d time.Duration, replan bool) {
	kind := "commit"
	if replan {
		kind = "replan"
	}
	m.plan.WithLabelValues(kind).Observe(d.Seconds())
}

// ObserveCommit implements reconciler.Metrics.
func (m *Metrics) ObserveCommit(d time.Duration, result string) {
	m.commit.WithLabelValues(result).Observe(d.Seconds())
}

// ObservePushToRunning implements reconciler.Metrics.
func (m *Metrics) ObservePushToRunning(d time.Duration) { m.push.Observe(d.Seconds()) }

// ObserveRealise implements nodeagent.Metrics.
func (m *Metrics) ObserveRealise(d time.Duration, built bool, err error) {
	m.realise.WithLabelValues(result(err), strconv.FormatBool(built)).Observe(d.Seconds())
}

// ObserveAttach implements nodeagent.Metrics.
func (m *Metrics) ObserveAttach(d time.Duration, err error) {
	m.attach.WithLabelValues(result(err)).Observe(d.Seconds())
}

// ObserveStart implements nodeagent.Metrics.
func (m *Metrics) ObserveStart(d time.Duration, err error) {
	m.start.WithLabelValues(result(err)).Observe(d.Seconds())
}

// CountRestarts implements nodeagent.Metrics.
func (m *Metrics) CountRestarts(vm, reason string, n int) {
	m.restarts.WithLabelValues(vm, reason).Add(float64(n))
}

// ObserveRestore implements nodeagent.Metrics.
func (m *Metrics) ObserveRestore(d time.Duration, startedAhead bool, err error) {
	runner := "spawned"
	if startedAhead {
		runner = "started_ahead"
	}
	m.restore.WithLabelValues(result(err), runner).Observe(d.Seconds())
}

// SetRestorePool implements nodeagent.Metrics.
func (m *Metrics) SetRestorePool(n int) { m.pool.Set(float64(n)) }

// ObserveQueueWait records that a request of function fn waited d at this
// node's gateway for an instance (fngateway.Metrics).
func (m *Metrics) ObserveQueueWait(fn string, d time.Duration) {
	m.fnWait.WithLabelValues(fn).Observe(d.Seconds())
}

// ObserveRequest records a function request through this node's gateway
// that took d (fngateway.Metrics).
func (m *Metrics) ObserveRequest(fn string, d time.Duration) {
	m.fnRequest.WithLabelValues(fn).Observe(d.Seconds())
}
