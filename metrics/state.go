package metrics

import (
	"fmt"
	"sort"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/blixard/blixard/replicated"
)

// stateCollector reads the local replica at every scrape, so the gauges
// are never older than the replica and cost nothing between scrapes. It is
// an unchecked collector (Describe sends nothing): which series exist
// depends on the state.
type stateCollector struct {
	replica Replica
	raft    Raft // may be nil
}

// Describe implements prometheus.Collector.
func (c *stateCollector) Describe(chan<- *prometheus.Desc) {}

// Collect implements prometheus.Collector.
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	st, err := c.replica.LocalRead()
	if err != nil {
		// The scrape says what went wrong (promhttp logs it and serves
		// the other series) rather than pretending the cluster is empty.
		ch <- prometheus.NewInvalidMetric(prometheus.NewDesc("blixard_state", "The local replica's state.", nil, nil),
			fmt.Errorf("reading the local replica for /metrics (is the node starting or stopping?): %w", err))
		return
	}
	v := replicaView{self: c.replica.NodeID()}
	v.leader, _ = c.replica.Leader()
	if c.raft != nil {
		v.raft = true
		v.leaderChanges = c.raft.LeaderChanges()
		v.lastLog, v.haveLog = c.raft.LastLogIndex()
	}
	// One Desc per series name: making one checks and hashes the name and
	// labels, which for every series of a large cluster cost most of a
	// scrape (docs/benchmarks.md, BenchmarkScrape).
	descs := map[string]*prometheus.Desc{}
	values := make([]string, 0, 4)
	for _, s := range stateSamples(st, v) {
		typ := prometheus.GaugeValue
		if s.counter {
			typ = prometheus.CounterValue
		}
		values = values[:0]
		for i := 1; i < len(s.labels); i += 2 {
			values = append(values, s.labels[i])
		}
		d := descs[s.name]
		if d == nil {
			names := make([]string, 0, len(s.labels)/2)
			for i := 0; i < len(s.labels); i += 2 {
				names = append(names, s.labels[i])
			}
			d = prometheus.NewDesc(s.name, s.help, names, nil)
			descs[s.name] = d
		}
		ch <- prometheus.MustNewConstMetric(d, typ, s.value, values...)
	}
}

// replicaView is what a scrape knows of this replica besides its state.
type replicaView struct {
	self, leader uint64 // leader 0: none known
	// raft: the Raft fields below are known.
	raft          bool
	leaderChanges uint64
	lastLog       uint64
	haveLog       bool
}

// sample is one series of one scrape.
type sample struct {
	name, help string
	counter    bool
	labels     []string // name, value, name, value, …
	value      float64
}

// stateSamples is every series the replica's state gives, as node v.self
// sees it: pure, so that what a scrape says is table-tested.
//
// The names of the hand-written exposition this replaced are kept
// (blixard_node_is_leader, blixard_applied_index, blixard_revision,
// blixard_eval_error, blixard_fetch_error, blixard_vms,
// blixard_node_heartbeats). Every node exports the cluster-wide series
// (VMs, nodes) from its own replica: query them with max by (…) or from
// one node.
func stateSamples(s *replicated.State, v replicaView) []sample {
	// Every value the one-hot series take, so each VM and node has a
	// stable set of series (a phase change flips values, it does not make
	// series appear and vanish).
	phases := []replicated.Phase{replicated.PhasePending, replicated.PhaseBuilding, replicated.PhaseStarting,
		replicated.PhaseRunning, replicated.PhaseStopping, replicated.PhaseStopped, replicated.PhaseFailed}
	nodeStates := []replicated.NodeState{replicated.NodeReady, replicated.NodeCordoned, replicated.NodeDraining, replicated.NodeDown}
	healths := []string{string(replicated.Healthy), string(replicated.Unhealthy), "unknown"}
	var out []sample
	add := func(name, help string, value float64, labels ...string) {
		out = append(out, sample{name: name, help: help, labels: labels, value: value})
	}
	node := func(id uint64) string { return strconv.FormatUint(id, 10) }

	add("blixard_node_is_leader", "1 when this node leads the Raft shard.", b2f(v.self == v.leader && v.leader != 0), "node", node(v.self))
	add("blixard_applied_index", "Raft index of the last entry this replica applied.", float64(s.Applied))
	var rev uint64
	if s.Revision != nil {
		rev = s.Revision.ID
	}
	add("blixard_revision", "ID (Raft index) of the current revision; 0 before the first plan.", float64(rev))
	_, evalFailed := s.Condition(replicated.EvalFailed)
	add("blixard_eval_error", "1 while the tracked ref's last evaluation failed.", b2f(evalFailed))
	_, fetchFailed := s.Condition(replicated.FetchFailed)
	add("blixard_fetch_error", "1 while the leader cannot fetch the tracked ref.", b2f(fetchFailed))
	add("blixard_raft_leader", "The Raft leader's node id as this replica knows it; 0 while none is known.", float64(v.leader))
	if v.raft {
		out = append(out, sample{name: "blixard_raft_leader_changes_total", counter: true, value: float64(v.leaderChanges),
			help: "Leaders this replica learned of in a new term since it started (elections that ended)."})
		if v.haveLog {
			add("blixard_raft_last_log_index", "Raft index of the last entry in this replica's log.", float64(v.lastLog))
			lag := uint64(0)
			if v.lastLog > s.Applied {
				lag = v.lastLog - s.Applied
			}
			add("blixard_raft_apply_lag_entries", "Entries in this replica's log it has not applied yet (on the leader also those being committed); "+
				"a replica cut off from the leader lags behind the others' blixard_applied_index instead.", float64(lag))
		}
	}

	// VMs: phase as `blixard status` shows it (api.VMViews): the phase its
	// node last reported, pending until that node reported it.
	names := make([]string, 0, len(s.Assignments))
	for name := range s.Assignments {
		names = append(names, name)
	}
	sort.Strings(names)
	count := map[replicated.Phase]int{}
	for _, name := range names {
		a := s.Assignments[name]
		phase, health := replicated.PhasePending, "unknown"
		if st, ok := s.Observed[name]; ok && st.Node == a.Node {
			phase = st.Phase
			if st.Health != "" {
				health = string(st.Health)
			}
		}
		count[phase]++
		for _, p := range phases {
			add("blixard_vm_phase", "1 for the phase each assigned VM instance is in (its node's last report; pending before one).",
				b2f(p == phase), "vm", name, "node", node(a.Node), "phase", string(p))
		}
		for _, h := range healths {
			add("blixard_vm_health", "1 for each assigned VM instance's health as its node's probes judge it (unknown: not running or not judged yet).",
				b2f(h == health), "vm", name, "node", node(a.Node), "health", h)
		}
	}
	for _, p := range phases {
		add("blixard_vms", "Assigned VMs by observed phase.", float64(count[p]), "phase", string(p))
	}
	add("blixard_unschedulable_instances", "Instances the committed plan could not place.", float64(len(s.Unschedulable)))

	// Nodes.
	ids := make([]uint64, 0, len(s.Nodes))
	for id := range s.Nodes {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	type use struct{ vcpu, mem, instances int }
	used := map[uint64]use{}
	for _, a := range s.Assignments {
		u := used[a.Node]
		u.vcpu, u.mem, u.instances = u.vcpu+a.VCPU, u.mem+a.MemMiB, u.instances+1
		used[a.Node] = u
	}
	for _, id := range ids {
		n, u, l := s.Nodes[id], used[id], node(id)
		add("blixard_node_heartbeats", "Heartbeats applied per node.", float64(n.LastHeartbeatSeq), "node", l, "state", string(n.State))
		for _, ns := range nodeStates {
			add("blixard_node_state", "1 for each registered node's scheduling state.", b2f(ns == n.State), "node", l, "state", string(ns))
		}
		add("blixard_node_capacity_vcpu", "vCPUs a node offers to VMs.", float64(n.Capacity.VCPU), "node", l)
		add("blixard_node_capacity_memory_bytes", "Memory a node offers to VMs.", float64(n.Capacity.MemMiB)*(1<<20), "node", l)
		add("blixard_node_allocated_vcpu", "vCPUs of the VM instances assigned to a node.", float64(u.vcpu), "node", l)
		add("blixard_node_allocated_memory_bytes", "Memory of the VM instances assigned to a node.", float64(u.mem)*(1<<20), "node", l)
		add("blixard_node_instances", "VM instances assigned to a node.", float64(u.instances), "node", l)
	}
	return out
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
