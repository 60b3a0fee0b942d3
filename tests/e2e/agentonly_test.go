package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
)

// agentOnlyFlake places web on node 4 (the agent-only node) and db on any
// server.
func agentOnlyFlake(webTag string) string {
	return lightRunnerFlake("e2e", fmt.Sprintf(`        web = { runner = runner "web" %q; vcpu = 1; memMiB = 256; placement = { nodes = [ 4 ]; }; };
        db = { runner = runner "db" "v1"; vcpu = 1; memMiB = 256; placement = { nodes = [ 1 2 3 ]; }; };
`, webTag))
}

// agentNodeState is what a server says of a node: its heartbeat count and
// state.
func agentNodeState(t *testing.T, p *e2ePKI, api string, id uint64) (heartbeats uint64, state string, err error) {
	t.Helper()
	var nodes []struct {
		ID         uint64 `json:"id"`
		Heartbeats uint64 `json:"heartbeats"`
		State      string `json:"state"`
	}
	if err := cliJSON(t, &nodes, p.as("reader", "nodes", "--server", api)...); err != nil {
		return 0, "", err
	}
	for _, n := range nodes {
		if n.ID == id {
			return n.Heartbeats, n.State, nil
		}
	}
	return 0, "", fmt.Errorf("node %d is not registered", id)
}

// tlsVMStates is vmStates over HTTPS with a read certificate.
func tlsVMStates(t *testing.T, p *e2ePKI, api string) (map[string]vmState, error) {
	var s struct {
		VMs []struct {
			Name, OutPath, Phase, Message string
			Node                          uint64
		} `json:"vms"`
	}
	if err := cliJSON(t, &s, p.as("reader", "status", "--server", api)...); err != nil {
		return nil, err
	}
	m := map[string]vmState{}
	for _, vm := range s.VMs {
		m[vm.Name] = vmState{vm.Node, vm.OutPath, vm.Phase, vm.Message}
	}
	return m, nil
}

// TestNixGitRaftAgentOnlyNode runs three servers (Raft voters with their
// agents) and one `serve --agent-only` node that talks to them over HTTPS
// with its node certificate: a VM placed on it runs there; the server it
// talks to is killed and it goes on through another (heartbeats commit,
// it is not marked down, a new push converges on it); with every server
// gone its lease runs out and it kills its VM.
func TestNixGitRaftAgentOnlyNode(t *testing.T) {
	requireTools(t, "nix", "git")
	p := newE2EPKI(t, 4)
	r := newRepo(t)
	first := r.push(agentOnlyFlake("v1"), "web on the agent-only node")
	const nodeTimeout = "4s" // lease 3s, heartbeat 500ms
	c := startClusterWith(t, r.url(), []nodeSpec{{4, 4096, ""}, {4, 4096, ""}, {4, 4096, ""}}, p.serveArgs, "--node-timeout", nodeTimeout)

	// Node 4: no replica; it reaches the servers, node 1's API first.
	agent := &node{id: 4, api: freeAddr(t), dataDir: t.TempDir()}
	agent.logPath = filepath.Join(agent.dataDir, "serve.log")
	var servers []string
	for _, n := range c.nodes {
		servers = append(servers, "https://"+n.api)
	}
	agent.args = append([]string{"serve", "--agent-only", "--servers", strings.Join(servers, ","),
		"--node-id", "4", "--data-dir", agent.dataDir, "--api-addr", agent.api,
		"--heartbeat", "500ms", "--node-timeout", nodeTimeout,
		"--capacity-vcpu", "4", "--capacity-mem-mib", "4096", "--state-dir", agent.stateDir(), "--log-level", "debug"},
		p.serveArgs(agent)...)
	c.start(agent, agent.args)
	t.Cleanup(func() {
		if err := agent.stop(); err != nil {
			t.Errorf("agent-only node: %v", err)
		}
		agent.killRunners()
		if t.Failed() {
			if b, err := os.ReadFile(agent.logPath); err == nil {
				t.Logf("--- log of agent-only node 4 (last 8000 bytes):\n%s", tail(b, 8000))
			}
		}
	})

	// 1. web, placed on node 4, runs there: a server's status says so.
	testkit.WaitFor(t, 90*time.Second, "the first revision", func() error {
		commit, err := tlsStatusCommit(t, p, c.nodes[1].api)
		if err == nil && commit != first {
			err = fmt.Errorf("revision %s", commit)
		}
		return err
	})
	var (
		webPID int
		webV1  string
	)
	testkit.WaitFor(t, 90*time.Second, "web running on the agent-only node 4", func() error {
		vms, err := tlsVMStates(t, p, c.nodes[1].api)
		if err != nil {
			return err
		}
		if w := vms["web"]; w.node != 4 || w.phase != "running" {
			return fmt.Errorf("web: %+v", w)
		}
		webV1 = vms["web"].outPath
		if d := vms["db"]; d.phase != "running" || d.node == 4 {
			return fmt.Errorf("db: %+v", d)
		}
		if webPID = agent.runnerPID("web"); webPID == 0 {
			return fmt.Errorf("no runner of web on node 4")
		}
		return nil
	})
	// Its own API answers what it can, and says where the rest is; a
	// server serves web's console log from it.
	if a := httpsDo(t, p.tlsClient(t, mustPair(t, p, "reader")), "GET", agent.api, "/healthz", ""); a.code != 200 {
		t.Errorf("/healthz of the agent-only node: %d %s", a.code, a.body)
	}
	testkit.WaitFor(t, 30*time.Second, "web's console log through a server", func() error {
		out, stderr, code := cli(t, "", p.as("reader", "logs", "web", "--server", c.nodes[2].api)...)
		if code != 0 || !strings.Contains(out, "booted web v1") {
			return fmt.Errorf("logs web: exit %d: %s%s", code, out, stderr)
		}
		return nil
	})
	if out, stderr, code := cli(t, "", p.as("reader", "status", "--server", agent.api)...); code == 0 || !strings.Contains(stderr, "agent-only node") {
		t.Errorf("status on the agent-only node: exit %d: %s%s", code, out, stderr)
	}

	// 2. Node 1, the server node 4 talks to, dies: node 4 goes on through
	// another. Its heartbeats keep committing for longer than the node
	// timeout, it is not marked down, and web keeps running.
	before, _, err := agentNodeState(t, p, c.nodes[1].api, 4)
	if err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	c.nodes[0].kill9()
	testkit.WaitFor(t, 60*time.Second, "node 4's heartbeats committing through another server for longer than the node timeout", func() error {
		hb, state, err := agentNodeState(t, p, c.nodes[1].api, 4)
		if err != nil {
			return err
		}
		if state != "ready" {
			t.Fatalf("node 4 is %s after its server died", state)
		}
		if hb < before+12 { // 12 × 500ms = 6s > the 4s node timeout
			return fmt.Errorf("%d heartbeats since the kill", hb-before)
		}
		return nil
	})
	t.Logf("node 4: %d heartbeats committed in the %v after its server was killed", 12, time.Since(killed).Round(100*time.Millisecond))
	if pid := agent.runnerPID("web"); pid != webPID {
		// Why, from node 4's whole log (the cleanup shows only its tail).
		b, _ := os.ReadFile(agent.logPath)
		var why []string
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "fenced") || strings.Contains(line, "vm=web") && (strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") ||
				strings.Contains(line, "stopp") || strings.Contains(line, "exited")) {
				why = append(why, line)
			}
		}
		t.Errorf("web's runner changed from %d to %d while node 4 failed over; node 4's log says:\n%s", webPID, pid, strings.Join(why, "\n"))
	}

	// 3. A new push converges on node 4.
	second := r.push(agentOnlyFlake("v2"), "web v2")
	pushed := time.Now()
	testkit.WaitFor(t, 90*time.Second, "web v2 running on node 4", func() error {
		s, err := tlsVMStates(t, p, c.nodes[2].api)
		if err != nil {
			return err
		}
		w := s["web"]
		if w.node != 4 || w.phase != "running" || w.outPath == webV1 {
			return fmt.Errorf("web: %+v", w)
		}
		st, err := tlsStatusCommit(t, p, c.nodes[2].api)
		if err != nil {
			return err
		}
		if st != second {
			return fmt.Errorf("revision %s", st)
		}
		if pid := agent.runnerPID("web"); pid == 0 || pid == webPID {
			return fmt.Errorf("web's runner on node 4: pid %d (v1 was %d)", pid, webPID)
		}
		return nil
	})
	webPID = agent.runnerPID("web")
	t.Logf("web v2 (%s, was %s) converged on node 4 %v after the push", vmsOutPath(t, p, c.nodes[2].api, "web"), webV1,
		time.Since(pushed).Round(100*time.Millisecond))

	// 4. Every server gone: node 4's heartbeats cannot commit; after its
	// lease it kills web (the servers would move it after the node
	// timeout, had they a quorum).
	c.nodes[1].kill9()
	c.nodes[2].kill9()
	gone := time.Now()
	testkit.WaitFor(t, 30*time.Second, "node 4 fencing itself: web's runner killed", func() error {
		if alive(webPID) {
			return fmt.Errorf("web (pid %d) still runs", webPID)
		}
		return nil
	})
	t.Logf("node 4 killed web %v after the last server died (lease 3s, heartbeat 500ms)", time.Since(gone).Round(100*time.Millisecond))
	// The agent logs the fence once its kills returned: the runner may be
	// seen gone a moment before the line is written.
	testkit.WaitFor(t, 10*time.Second, "node 4's log saying it fenced itself", func() error {
		b, err := os.ReadFile(agent.logPath)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), "fenced: this node killed its VMs") {
			return errors.New("no line \"fenced: this node killed its VMs\" yet")
		}
		return nil
	})
}

// tlsStatusCommit is the revision's commit a server reports.
func tlsStatusCommit(t *testing.T, p *e2ePKI, api string) (string, error) {
	var s struct {
		Revision *struct{ Commit string } `json:"revision"`
	}
	if err := cliJSON(t, &s, p.as("reader", "status", "--server", api)...); err != nil {
		return "", err
	}
	if s.Revision == nil {
		return "", fmt.Errorf("no revision")
	}
	return s.Revision.Commit, nil
}

func vmsOutPath(t *testing.T, p *e2ePKI, api, vm string) string {
	vms, err := tlsVMStates(t, p, api)
	if err != nil {
		return err.Error()
	}
	return vms[vm].outPath
}
