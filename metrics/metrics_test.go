package metrics

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/blixard/blixard/replicated"
)

// key names a sample by its name and labels, as the exposition shows it.
func key(s sample) string {
	var b strings.Builder
	b.WriteString(s.name)
	for i := 0; i+1 < len(s.labels); i += 2 {
		fmt.Fprintf(&b, ",%s=%s", s.labels[i], s.labels[i+1])
	}
	return b.String()
}

func TestStateSamples(t *testing.T) {
	st := &replicated.State{
		Applied:  42,
		Revision: &replicated.Revision{ID: 40, Commit: "c1"},
		Nodes: map[uint64]*replicated.Node{
			1: {ID: 1, State: replicated.NodeReady, Capacity: replicated.Resources{VCPU: 8, MemMiB: 4096}, LastHeartbeatSeq: 9},
			2: {ID: 2, State: replicated.NodeDraining, Capacity: replicated.Resources{VCPU: 2, MemMiB: 1024}},
		},
		Assignments: map[string]replicated.Assignment{
			"web-0": {VM: "web-0", Node: 1, VCPU: 2, MemMiB: 512},
			"web-1": {VM: "web-1", Node: 1, VCPU: 2, MemMiB: 512},
			"db":    {VM: "db", Node: 2, VCPU: 1, MemMiB: 256},
		},
		Observed: map[string]replicated.VMStatus{
			"web-0": {VM: "web-0", Node: 1, Phase: replicated.PhaseRunning, Health: replicated.Healthy},
			"web-1": {VM: "web-1", Node: 1, Phase: replicated.PhaseRunning, Health: replicated.Unhealthy},
			// Reported by a node it is not assigned to (moving): pending here.
			"db": {VM: "db", Node: 1, Phase: replicated.PhaseRunning},
		},
		Unschedulable: []replicated.Unschedulable{{VM: "big", Reason: "no node fits"}},
		Conditions:    []replicated.Condition{{Type: replicated.EvalFailed, Commit: "c2", Message: "boom"}},
	}
	for _, tc := range []struct {
		name   string
		state  *replicated.State
		view   replicaView
		want   map[string]float64 // series that must be there with these values
		absent []string           // series names that must not be there
	}{
		{
			name: "a leader with Raft details", state: st,
			view: replicaView{self: 1, leader: 1, raft: true, leaderChanges: 3, lastLog: 45, haveLog: true},
			want: map[string]float64{
				"blixard_node_is_leader,node=1": 1, "blixard_applied_index": 42, "blixard_revision": 40,
				"blixard_eval_error": 1, "blixard_fetch_error": 0, "blixard_raft_leader": 1,
				"blixard_raft_leader_changes_total": 3, "blixard_raft_last_log_index": 45, "blixard_raft_apply_lag_entries": 3,
				"blixard_vm_phase,vm=web-0,node=1,phase=running": 1, "blixard_vm_phase,vm=web-0,node=1,phase=pending": 0,
				"blixard_vm_phase,vm=db,node=2,phase=pending": 1, "blixard_vm_phase,vm=db,node=2,phase=running": 0,
				"blixard_vm_health,vm=web-0,node=1,health=healthy": 1, "blixard_vm_health,vm=web-1,node=1,health=unhealthy": 1,
				"blixard_vm_health,vm=db,node=2,health=unknown": 1, "blixard_vm_health,vm=db,node=2,health=healthy": 0,
				"blixard_vms,phase=running": 2, "blixard_vms,phase=pending": 1, "blixard_vms,phase=failed": 0,
				"blixard_unschedulable_instances":            1,
				"blixard_node_heartbeats,node=1,state=ready": 9, "blixard_node_state,node=2,state=draining": 1,
				"blixard_node_state,node=2,state=ready": 0, "blixard_node_capacity_vcpu,node=1": 8,
				"blixard_node_capacity_memory_bytes,node=1": 4096 << 20, "blixard_node_allocated_vcpu,node=1": 4,
				"blixard_node_allocated_memory_bytes,node=2": 256 << 20, "blixard_node_instances,node=1": 2,
			},
		},
		{
			name: "a follower whose log is behind what it applied shows no negative lag", state: st,
			view: replicaView{self: 2, leader: 1, raft: true, lastLog: 40, haveLog: true},
			want: map[string]float64{"blixard_node_is_leader,node=2": 0, "blixard_raft_leader": 1, "blixard_raft_apply_lag_entries": 0},
		},
		{
			name: "no leader known and no Raft details", state: &replicated.State{},
			view: replicaView{self: 1},
			want: map[string]float64{"blixard_node_is_leader,node=1": 0, "blixard_raft_leader": 0, "blixard_revision": 0,
				"blixard_vms,phase=running": 0},
			absent: []string{"blixard_raft_leader_changes_total", "blixard_raft_apply_lag_entries", "blixard_vm_phase", "blixard_node_state"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := map[string]float64{}
			names := map[string]bool{}
			for _, s := range stateSamples(tc.state, tc.view) {
				k := key(s)
				if _, dup := got[k]; dup {
					t.Errorf("series %s twice", k)
				}
				got[k], names[s.name] = s.value, true
				if s.counter != strings.HasSuffix(s.name, "_total") {
					t.Errorf("%s: counter %t; counters, and only they, end in _total", s.name, s.counter)
				}
			}
			for k, v := range tc.want {
				if g, ok := got[k]; !ok || g != v {
					t.Errorf("%s = %v (present %t), want %v", k, g, ok, v)
				}
			}
			for _, n := range tc.absent {
				if names[n] {
					t.Errorf("%s present, want none", n)
				}
			}
		})
	}
}

type fakeReplica struct {
	st  *replicated.State
	err error
}

func (f fakeReplica) LocalRead() (*replicated.State, error) { return f.st, f.err }
func (f fakeReplica) NodeID() uint64                        { return 1 }
func (f fakeReplica) Leader() (uint64, bool)                { return 1, true }

type fakeRaft struct{}

func (fakeRaft) LeaderChanges() uint64        { return 2 }
func (fakeRaft) LastLogIndex() (uint64, bool) { return 7, true }

// families gathers m and returns its families by name.
func families(t *testing.T, m *Metrics) (map[string]*dto.MetricFamily, error) {
	t.Helper()
	fs, err := m.Gatherer().Gather()
	out := map[string]*dto.MetricFamily{}
	for _, f := range fs {
		out[f.GetName()] = f
	}
	return out, err
}

// histogramCount is the sample count of family name's series with labels.
func histogramCount(f *dto.MetricFamily, labels map[string]string) (uint64, bool) {
	for _, m := range f.GetMetric() {
		match := true
		for _, l := range m.GetLabel() {
			if want, ok := labels[l.GetName()]; ok && want != l.GetValue() {
				match = false
			}
		}
		if match && m.GetHistogram() != nil {
			return m.GetHistogram().GetSampleCount(), true
		}
	}
	return 0, false
}

func TestRegistryGathersEverySource(t *testing.T) {
	m := New(Options{Replica: fakeReplica{st: &replicated.State{Applied: 5}}, Raft: fakeRaft{}})
	m.ObserveFetch(time.Second, nil)
	m.ObserveEval(3*time.Second, errors.New("boom"))
	m.ObservePlan(time.Millisecond, false)
	m.ObservePlan(time.Millisecond, true)
	m.ObserveCommit(5*time.Millisecond, "ok")
	m.ObservePushToRunning(40 * time.Second)
	m.ObserveRealise(time.Minute, true, nil)
	m.ObserveAttach(time.Second, nil)
	m.ObserveStart(time.Second, nil)
	m.CountRestarts("web-0", "crash", 2)
	m.ObserveRestore(300*time.Millisecond, true, nil)
	m.ObserveRestore(600*time.Millisecond, false, errors.New("boom"))
	m.SetRestorePool(3)
	fs, err := families(t, m)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		family string
		labels map[string]string
		want   uint64
	}{
		{"blixard_fetch_duration_seconds", map[string]string{"result": "ok"}, 1},
		{"blixard_fetch_duration_seconds", map[string]string{"result": "error"}, 0},
		{"blixard_eval_duration_seconds", map[string]string{"result": "error"}, 1},
		{"blixard_plan_duration_seconds", map[string]string{"kind": "commit"}, 1},
		{"blixard_plan_duration_seconds", map[string]string{"kind": "replan"}, 1},
		{"blixard_commit_duration_seconds", map[string]string{"result": "ok"}, 1},
		{"blixard_commit_duration_seconds", map[string]string{"result": "refused"}, 0},
		{"blixard_push_to_running_seconds", nil, 1},
		{"blixard_realise_duration_seconds", map[string]string{"result": "ok", "built": "true"}, 1},
		{"blixard_attach_duration_seconds", map[string]string{"result": "ok"}, 1},
		{"blixard_start_duration_seconds", map[string]string{"result": "ok"}, 1},
		{"blixard_snapshot_restore_duration_seconds", map[string]string{"result": "ok", "runner": "started_ahead"}, 1},
		{"blixard_snapshot_restore_duration_seconds", map[string]string{"result": "error", "runner": "spawned"}, 1},
		{"blixard_snapshot_restore_duration_seconds", map[string]string{"result": "ok", "runner": "spawned"}, 0},
	} {
		f, ok := fs[tc.family]
		if !ok {
			t.Errorf("no family %s", tc.family)
			continue
		}
		if n, ok := histogramCount(f, tc.labels); !ok || n != tc.want {
			t.Errorf("%s%v count = %d (found %t), want %d", tc.family, tc.labels, n, ok, tc.want)
		}
	}
	if f := fs["blixard_restore_pool_runners"]; f == nil || f.GetMetric()[0].GetGauge().GetValue() != 3 {
		t.Errorf("blixard_restore_pool_runners = %v, want 3", f)
	}
	if f := fs["blixard_vm_restarts_total"]; f == nil || f.GetMetric()[0].GetCounter().GetValue() != 2 {
		t.Errorf("blixard_vm_restarts_total = %v, want 2 for web-0", f)
	}
	for _, name := range []string{"blixard_applied_index", "blixard_raft_leader_changes_total", "blixard_raft_apply_lag_entries",
		"go_goroutines", "go_memstats_heap_alloc_bytes", "process_cpu_seconds_total", "process_resident_memory_bytes"} {
		if fs[name] == nil {
			t.Errorf("no family %s", name)
		}
	}
	if lag := fs["blixard_raft_apply_lag_entries"]; lag != nil && lag.GetMetric()[0].GetGauge().GetValue() != 2 {
		t.Errorf("apply lag = %v, want 7 - 5 = 2", lag)
	}
}

// An unreadable replica fails the state part of a scrape, saying why, and
// leaves the rest.
func TestUnreadableReplicaIsAnErrorNotAnEmptyCluster(t *testing.T) {
	m := New(Options{Replica: fakeReplica{err: errors.New("replica closed")}})
	fs, err := families(t, m)
	if err == nil || !strings.Contains(err.Error(), "replica closed") {
		t.Errorf("gather error = %v, want the replica's", err)
	}
	if fs["go_goroutines"] == nil || fs["blixard_fetch_duration_seconds"] == nil || fs["blixard_vms"] != nil {
		t.Errorf("families %v: want the runtime's and the histograms, none of the state's", len(fs))
	}
}
