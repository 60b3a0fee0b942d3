// Package testkit is the one set of test helpers the packages share: polling
// with a deadline instead of sleeping, an in-memory replicated state that
// applies proposals with the real [replicated.State.Apply], and builders of
// commands. It is imported only by tests.
//
// The in-memory [Store] models a single replica that always leads and
// applies every proposal at once; it does not model Raft: no leader changes,
// no lost or duplicated proposals, no lag between Read and LocalRead. Tests
// of those behaviours run the real raftstore on loopback.
package testkit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// pollEvery is how often WaitFor re-checks its condition.
const pollEvery = 10 * time.Millisecond

// WaitFor polls cond until it returns nil, and fails the test with what and
// cond's last error when timeout passes first.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		<-tick.C
	}
}

// Until turns a boolean condition into one for WaitFor.
func Until(cond func() bool) func() error {
	return func() error {
		if cond() {
			return nil
		}
		return errors.New("not yet")
	}
}

// Store is an in-memory replicated state. It satisfies the reconciler's and
// the agent's state interfaces (Read, LocalRead, Propose, IsLeader). Every
// proposal is applied with replicated.State.Apply at the next index and
// recorded. Safe for concurrent use.
type Store struct {
	mu       sync.Mutex
	state    *replicated.State // guarded by mu
	proposed []replicated.Command
	// Leader is what IsLeader answers (default true). Guarded by mu.
	leader bool
	// failWith, when set, makes Propose fail with it (outcome unknown).
	failWith error
}

// NewStore returns a store holding s (a fresh state when nil).
func NewStore(s *replicated.State) *Store {
	if s == nil {
		s = replicated.NewState()
	}
	return &Store{state: s, leader: true}
}

// Read returns a copy of the state.
func (s *Store) Read(context.Context) (*replicated.State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state.Clone(), nil
}

// LocalRead returns a copy of the state.
func (s *Store) LocalRead() (*replicated.State, error) { return s.Read(context.Background()) }

// IsLeader reports the value set by SetLeader (true by default).
func (s *Store) IsLeader() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leader
}

// SetLeader sets what IsLeader answers.
func (s *Store) SetLeader(v bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.leader = v
}

// FailProposals makes every Propose fail with err (nil: succeed again).
func (s *Store) FailProposals(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failWith = err
}

// Propose applies cmd and records it.
func (s *Store) Propose(_ context.Context, cmd replicated.Command) (replicated.Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failWith != nil {
		return replicated.Result{}, s.failWith
	}
	if cmd.V == 0 {
		// The oldest version that carries it, as EncodeCommand fills in
		// on the real path.
		cmd.V = replicated.CommandVersion
		if hb := cmd.NodeHeartbeat; hb != nil && hb.Unchanged != 0 {
			cmd.V = replicated.HeartbeatDeltaVersion
		}
	}
	s.proposed = append(s.proposed, cmd)
	return s.state.Apply(s.state.Applied+1, cmd), nil
}

// Update changes the state in place (as if commands had been applied).
func (s *Store) Update(fn func(*replicated.State)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn(s.state)
}

// Proposed returns the commands proposed so far, oldest first.
func (s *Store) Proposed() []replicated.Command {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]replicated.Command(nil), s.proposed...)
}

// ProposedOf returns the proposed commands of type typ.
func (s *Store) ProposedOf(typ replicated.CommandType) []replicated.Command {
	var out []replicated.Command
	for _, c := range s.Proposed() {
		if c.Type == typ {
			out = append(out, c)
		}
	}
	return out
}

// T0 is the time the command builders stamp.
var T0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// Register is a RegisterNode of node id with 8 vCPUs and 16 GiB.
func Register(id uint64) replicated.Command {
	return replicated.Command{V: replicated.CommandVersion, Type: replicated.CmdRegisterNode, At: T0,
		RegisterNode: &replicated.RegisterNode{ID: id, RaftAddr: fmt.Sprintf("127.0.0.1:%d", 7000+id),
			Capacity: replicated.Resources{VCPU: 8, MemMiB: 16384}, Labels: map[string]string{"zone": "a"}}}
}

// FunctionState is a committed state of three registered nodes running
// the revision of commit c1, whose spec has VM db on node 1 and function
// name declared as f.
func FunctionState(t testing.TB, name string, f spec.Function) *replicated.State {
	t.Helper()
	st := replicated.NewState()
	apply := func(cmd replicated.Command) {
		if res := st.Apply(st.Applied+1, cmd); !res.OK() {
			t.Fatalf("%s: %v", cmd.Type, res.Err())
		}
	}
	for id := uint64(1); id <= 3; id++ {
		apply(Register(id))
	}
	plan := Plan(0, "c1", Assign("db", 1, "v1"))
	plan.CommitPlan.Spec.Functions = map[string]spec.Function{name: f}
	apply(plan)
	return st
}

// Assign is an assignment of vm to node running version ver of its runner.
func Assign(vm string, node uint64, ver string) replicated.Assignment {
	return replicated.Assignment{VM: vm, Declared: vm, Node: node, Drv: "/nix/store/" + vm + "-" + ver + ".drv",
		OutPath: "/nix/store/" + vm + "-" + ver, VCPU: 1, MemMiB: 256}
}

// Plan is a CommitPlan on parent of commit with the assignments and a
// matching spec.
func Plan(parent uint64, commit string, as ...replicated.Assignment) replicated.Command {
	sp := &spec.Cluster{Name: "t", VMs: map[string]spec.VM{}}
	for _, a := range as {
		sp.VMs[a.Declared] = spec.VM{Runner: spec.Runner{Drv: a.Drv, Out: a.OutPath}, VCPU: a.VCPU, MemMiB: a.MemMiB, Replicas: 1,
			Autostart: true} // the flake's default
	}
	return replicated.Command{V: replicated.CommandVersion, Type: replicated.CmdCommitPlan, At: T0,
		CommitPlan: &replicated.CommitPlan{Parent: parent, Commit: commit, Ref: "refs/heads/main",
			EvalHash: "h-" + commit, Spec: sp, Assignments: as}}
}

// JSON is v as indented JSON, for failure messages.
func JSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Detail turns a condition that explains itself (ok, and what it saw) into
// one for WaitFor.
func Detail(cond func() (ok bool, detail string)) func() error {
	return func() error {
		if ok, detail := cond(); !ok {
			return errors.New(detail)
		}
		return nil
	}
}

// FreeLoopbackAddr returns HOST:PORT free at the moment on a random
// loopback address 127.X.Y.Z (X ≥ 1), for a server a test starts later
// (Raft replicas take their address before they listen). Not 127.0.0.1:
// the port is released before the server binds it, and on 127.0.0.1 the
// packages tested in parallel (their outgoing connections included) take
// ports from the same ephemeral range.
func FreeLoopbackAddr(t testing.TB) string {
	t.Helper()
	for range 20 {
		ip := fmt.Sprintf("127.%d.%d.%d", 1+rand.IntN(254), rand.IntN(256), 1+rand.IntN(254))
		l, err := net.Listen("tcp", ip+":0")
		if err != nil {
			continue
		}
		addr := l.Addr().String()
		l.Close()
		return addr
	}
	t.Fatal("no free port on a loopback address")
	return ""
}

// Ports hands out 127.0.0.1 ports below the kernel's ephemeral port range
// (ip_local_port_range), for servers a test starts in other processes
// (which bind a port some time after it was chosen). A port from the
// ephemeral range (127.0.0.1:0) may meanwhile become the local port of any
// outgoing connection on the machine — packages tested in parallel make
// many — and the server then fails with "address already in use"; the
// kernel never picks a port below that range by itself. One Ports hands
// out each port once, in sequence from a random start (so that two test
// processes rarely walk the same ports), skipping ports something has
// bound. Use one per test process; it is safe for concurrent use.
type Ports struct {
	mu         sync.Mutex
	low, span  int
	next, used int
}

// NewPorts returns a Ports over [10000, the ephemeral range's start).
func NewPorts() *Ports {
	low, high := 10000, ephemeralStart()
	span := high - low
	return &Ports{low: low, span: span, next: rand.IntN(span)}
}

// ephemeralStart reads the start of the kernel's ephemeral port range
// (32768 when it cannot be read).
func ephemeralStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	var lo, hi int
	if _, err := fmt.Sscan(string(b), &lo, &hi); err != nil || lo <= 11000 {
		return 32768
	}
	return lo
}

// Addr returns 127.0.0.1:PORT, a port free now that this Ports has not
// handed out before.
func (p *Ports) Addr(t testing.TB) string {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.used < p.span {
		port := p.low + p.next
		p.next, p.used = (p.next+1)%p.span, p.used+1
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // bound by something else
		}
		addr := l.Addr().String()
		l.Close()
		return addr
	}
	t.Fatal("testkit.Ports: every port below the ephemeral range was handed out")
	return ""
}
