package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
)

// clusterFlake renders a cluster flake whose runners are tiny /bin/sh
// derivations (a long-running sleep). tags[vm] changes that VM's runner (and
// so its out path); the tag "FAIL" gives it a runner whose build fails; a VM
// in omit is left out.
func clusterFlake(tags map[string]string, omit ...string) string {
	vms := []struct {
		name, rest string
	}{
		{"web", "vcpu = 1; memMiB = 512;  replicas = 2;"},
		{"db", "vcpu = 4; memMiB = 4096;"},
		{"cache", "vcpu = 2; memMiB = 2048;"},
		{"worker", "vcpu = 2; memMiB = 1024; replicas = 2;"},
	}
	var b strings.Builder
	for _, vm := range vms {
		if slices.Contains(omit, vm.name) {
			continue
		}
		tag, ok := tags[vm.name]
		if !ok {
			tag = "v1"
		}
		fn := "runner"
		if tag == "FAIL" {
			fn = "failing"
		}
		fmt.Fprintf(&b, "        %s = { runner = %s %q %q; %s };\n", vm.name, fn, vm.name, tag, vm.rest)
	}
	return lightRunnerFlake("e2e", b.String())
}

// lightRunnerFlake is a cluster flake whose VM entries (vms, one per line)
// use `runner NAME TAG`: a tiny /bin/sh derivation whose microvm-run prints
// a line and sleeps; or `failing NAME TAG`, whose build fails.
func lightRunnerFlake(cluster, vms string) string {
	return `{
  outputs = { self }: let
    runner = name: tag: builtins.derivation {
      name = "microvm-${name}";
      system = "x86_64-linux";
      builder = "/bin/sh";
      args = [ "-c" "/bin/mkdir -p $out/bin && printf '#!/bin/sh\\necho booted ${name} ${tag}\\nexec /bin/sleep infinity\\n' > $out/bin/microvm-run && /bin/chmod +x $out/bin/microvm-run" ];
    };
    failing = name: tag: builtins.derivation {
      name = "microvm-${name}";
      system = "x86_64-linux";
      builder = "/bin/sh";
      args = [ "-c" "echo the runner build of ${name} exploded >&2; exit 1" ];
    };
  in {
    blixard = {
      cluster = "` + cluster + `";
      vms = {
` + vms + `      };
    };
  };
}
`
}

const brokenFlake = `{
  outputs = { self }: {
    blixard = {
      cluster = "e2e"
      vms = { };
    };
  };
}
`

type statusJSON struct {
	Leader   uint64 `json:"leader"`
	Revision *struct {
		ID     uint64 `json:"id"`
		Commit string `json:"commit"`
	} `json:"revision"`
	LastError *struct {
		Commit  string `json:"commit"`
		Message string `json:"message"`
	} `json:"lastError"`
	VMs []struct {
		Name    string `json:"name"`
		Node    uint64 `json:"node"`
		OutPath string `json:"outPath"`
		Phase   string `json:"phase"`
	} `json:"vms"`
	Nodes []struct {
		ID       uint64 `json:"id"`
		State    string `json:"state"`
		Capacity struct {
			VCPU   int `json:"vcpu"`
			MemMiB int `json:"memMiB"`
		} `json:"capacity"`
		Allocated struct {
			VCPU   int `json:"vcpu"`
			MemMiB int `json:"memMiB"`
		} `json:"allocated"`
	} `json:"nodes"`
}

func status(t *testing.T, api string) (statusJSON, error) {
	var s statusJSON
	err := cliJSON(t, &s, "status", "--server", api)
	return s, err
}

// assignments maps VM → "node outPath".
func assignments(s statusJSON) map[string]string {
	m := map[string]string{}
	for _, vm := range s.VMs {
		m[vm.Name] = fmt.Sprintf("%d %s", vm.Node, vm.OutPath)
	}
	return m
}

// waitRevision waits until every node reports commit as its revision and
// returns the status seen by the first node.
func waitRevision(t *testing.T, c *cluster, commit string) statusJSON {
	t.Helper()
	var first statusJSON
	testkit.WaitFor(t, 60*time.Second, "revision "+commit[:12]+" on all nodes", func() error {
		for i, n := range c.nodes {
			s, err := status(t, n.api)
			if err != nil {
				return err
			}
			if s.Revision == nil || s.Revision.Commit != commit {
				return fmt.Errorf("node %d has revision %+v", n.id, s.Revision)
			}
			if i == 0 {
				first = s
			} else if fmt.Sprint(assignments(s)) != fmt.Sprint(assignments(first)) {
				return fmt.Errorf("node %d disagrees: %v vs %v", n.id, assignments(s), assignments(first))
			}
		}
		return nil
	})
	return first
}

func TestNixGitRaftServeFollowsPushes(t *testing.T) {
	requireTools(t, "nix", "git")
	r := newRepo(t)
	first := r.push(clusterFlake(nil), "six VMs")

	c := startCluster(t, r.url(), []nodeSpec{{6, 4096, "zone=a"}, {6, 4096, "zone=b"}, {6, 4096, "zone=c"}})

	// 1. The pushed flake becomes the same plan on all three replicas, within capacity.
	s := waitRevision(t, c, first)
	if len(s.VMs) != 6 {
		t.Fatalf("want 6 assignments, got %d: %v", len(s.VMs), assignments(s))
	}
	for _, n := range s.Nodes {
		if n.Allocated.VCPU > n.Capacity.VCPU || n.Allocated.MemMiB > n.Capacity.MemMiB {
			t.Errorf("node %d over capacity: %+v > %+v", n.ID, n.Allocated, n.Capacity)
		}
	}
	before := assignments(s)

	// 2. `blixard plan` on the work tree: no changes yet (exit 0) …
	api := c.nodes[1].api // a follower or the leader; any node answers
	out, errOut, code := cli(t, r.work, "plan", "--server", api)
	if code != 0 {
		t.Fatalf("plan of the pushed tree: exit %d, want 0\n%s%s", code, out, errOut)
	}
	// … and a local, uncommitted edit to one VM shows exactly that change (exit 2).
	r.write(clusterFlake(map[string]string{"cache": "v2"}))
	out, errOut, code = cli(t, r.work, "plan", "--server", api)
	if code != 2 {
		t.Fatalf("plan of an edited tree: exit %d, want 2\n%s%s", code, out, errOut)
	}
	if !strings.Contains(out, "cache") || strings.Contains(out, "db") {
		t.Errorf("plan output should name only cache:\n%s", out)
	}
	var pv struct {
		HasChanges bool `json:"hasChanges"`
		Plan       struct {
			Added, Removed, Changed, Moved []struct {
				VM string `json:"vm"`
			}
		} `json:"plan"`
	}
	stdout, _, code := cli(t, r.work, "plan", "--server", api, "--json")
	if code != 2 {
		t.Fatalf("plan --json: exit %d, want 2", code)
	}
	if err := jsonUnmarshal(stdout, &pv); err != nil {
		t.Fatal(err)
	}
	if len(pv.Plan.Changed) != 1 || pv.Plan.Changed[0].VM != "cache" || len(pv.Plan.Added)+len(pv.Plan.Removed)+len(pv.Plan.Moved) != 0 {
		t.Fatalf("plan --json should change exactly cache: %s", stdout)
	}

	// 3. Pushing that change commits a plan that changes exactly that VM.
	second := r.push(clusterFlake(map[string]string{"cache": "v2"}), "cache v2")
	s = waitRevision(t, c, second)
	after := assignments(s)
	for vm, a := range before {
		if vm == "cache" {
			if after[vm] == a {
				t.Errorf("cache did not change: %s", a)
			}
			continue
		}
		if after[vm] != a {
			t.Errorf("%s changed: %s → %s", vm, a, after[vm])
		}
	}

	// `plan --commit` asks the cluster to evaluate a pushed commit: the
	// current one changes nothing (exit 0), the first one reverts cache (exit 2).
	if out, errOut, code := cli(t, "", "plan", "--server", api, "--commit", second); code != 0 {
		t.Errorf("plan --commit of the committed revision: exit %d, want 0\n%s%s", code, out, errOut)
	}
	out, errOut, code = cli(t, "", "plan", "--server", api, "--commit", first)
	if code != 2 || !strings.Contains(out, "cache") {
		t.Errorf("plan --commit of the previous commit: exit %d, want 2 and cache listed\n%s%s", code, out, errOut)
	}

	// 4. A broken flake: no new revision, status shows nix's error with the file name.
	broken := r.push(brokenFlake, "broken")
	testkit.WaitFor(t, 60*time.Second, "the eval error of the broken commit", func() error {
		s, err := status(t, c.nodes[2].api)
		if err != nil {
			return err
		}
		if s.LastError == nil || s.LastError.Commit != broken {
			return fmt.Errorf("lastError = %+v", s.LastError)
		}
		if !strings.Contains(s.LastError.Message, "flake.nix") {
			t.Errorf("eval error should name flake.nix: %q", s.LastError.Message)
		}
		if s.Revision.Commit != second {
			t.Errorf("revision moved to %s after a broken push", s.Revision.Commit)
		}
		return nil
	})
	// 5. An unreachable repository: every node's status shows the leader's
	// fetch error, and the revision stays.
	if err := os.Rename(r.bare, r.bare+".gone"); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.nodes {
		testkit.WaitFor(t, 30*time.Second, fmt.Sprintf("node %d to report the fetch error", n.id), func() error {
			var st struct {
				Revision   struct{ Commit string } `json:"revision"`
				Reconciler *struct {
					FetchError string `json:"fetchError"`
				} `json:"reconciler"`
			}
			if err := cliJSON(t, &st, "status", "--server", n.api); err != nil {
				return err
			}
			if st.Reconciler == nil || !strings.Contains(st.Reconciler.FetchError, "cluster.git") {
				return fmt.Errorf("reconciler status %+v", st.Reconciler)
			}
			if st.Revision.Commit != second {
				t.Errorf("revision moved to %s while the repository was unreachable", st.Revision.Commit)
			}
			return nil
		})
	}
	if err := os.Rename(r.bare+".gone", r.bare); err != nil {
		t.Fatal(err)
	}

	out, _, _ = cli(t, "", "status", "--server", c.nodes[0].api)
	if !strings.Contains(out, "Last error") || !strings.Contains(out, "flake.nix") {
		t.Errorf("human status should show the eval error:\n%s", out)
	}
	out, _, code = cli(t, "", "history", "--server", c.nodes[0].api)
	if code != 0 || !strings.Contains(out, second[:12]) || !strings.Contains(out, first[:12]) {
		t.Errorf("history should list both revisions (exit %d):\n%s", code, out)
	}
	out, _, code = cli(t, "", "nodes", "--server", c.nodes[0].api)
	if code != 0 || strings.Count(out, "ready") != 3 {
		t.Errorf("nodes should list 3 ready nodes (exit %d):\n%s", code, out)
	}
}

func TestServeRejectsBadInput(t *testing.T) {
	// A build with Ceph support accepts Ceph settings; the same case then
	// checks that a missing keyring file stops the daemon at start.
	cephArgs, cephWant := []string{"--ceph-user", "admin"}, "without Ceph support"
	if blixardTags != "" {
		cephArgs, cephWant = []string{"--ceph-user", "admin", "--ceph-keyring-file", "DATA/nokeyring"}, "--ceph-keyring-file"
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"missing node id", []string{"serve", "--data-dir", "DATA"}, "--node-id"},
		{"members not ID=ADDR", []string{"serve", "--node-id", "1", "--data-dir", "DATA", "--members", "x"}, "ID=HOST:PORT"},
		{"node missing from members", []string{"serve", "--node-id", "4", "--data-dir", "DATA", "--members", "1=127.0.0.1:1"}, "--raft-addr"},
		{"bad labels", []string{"serve", "--node-id", "1", "--data-dir", "DATA", "--raft-addr", "127.0.0.1:1", "--labels", "nolabel"}, "KEY=VALUE"},
		{"plan without a flake", []string{"plan", "--flake", "DATA"}, "no flake.nix"},
		{"systemd backend on a host without systemd", []string{"serve", "--node-id", "1", "--data-dir", "DATA",
			"--raft-addr", "127.0.0.1:1", "--api-addr", "127.0.0.1:0", "--backend", "systemd", "--state-dir", "DATA"}, "--backend process"},
		{"Ceph settings (in a build without Ceph support)", append([]string{"serve", "--node-id", "1", "--data-dir", "DATA",
			"--raft-addr", "127.0.0.1:1", "--api-addr", "127.0.0.1:0"}, cephArgs...), cephWant},
		{"unknown backend", []string{"serve", "--node-id", "1", "--data-dir", "DATA", "--raft-addr", "127.0.0.1:1",
			"--backend", "docker"}, "want process or systemd"},
		{"status with nobody listening", []string{"status", "--server", "127.0.0.1:1"}, "cannot reach"},
		{"unknown command", []string{"frobnicate"}, "unknown command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			args := make([]string, len(tt.args))
			for i, a := range tt.args {
				args[i] = strings.ReplaceAll(a, "DATA", filepath.Join(dir, "d"))
			}
			os.MkdirAll(filepath.Join(dir, "d"), 0o755)
			_, stderr, code := cli(t, dir, args...)
			if code != 1 {
				t.Fatalf("exit %d, want 1; stderr: %s", code, stderr)
			}
			if !strings.Contains(stderr, tt.want) {
				t.Fatalf("stderr %q should mention %q", stderr, tt.want)
			}
		})
	}
}
