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

// orderFlake is a cluster of web with three replicas whose runner appends
// "start INSTANCE" to STATE/order.log when it starts and "stop INSTANCE"
// when it is told to stop (SIGTERM): the process backend runs each in
// STATE/INSTANCE, so the log of one node records the order of every start
// and stop there, written by the runners themselves.
func orderFlake(tag string) string {
	return `{
  outputs = { self }: let
    runner = name: tag: builtins.derivation {
      name = "microvm-${name}";
      system = "x86_64-linux";
      builder = "/bin/sh";
      script = ''
        #!/bin/sh
        n=''${PWD##*/}
        trap 'echo "stop $n" >> ../order.log; exit 0' TERM
        echo "start $n" >> ../order.log
        echo booted ${name} ${tag}
        /bin/sleep infinity &
        wait
      '';
      passAsFile = [ "script" ];
      args = [ "-c" "/bin/mkdir -p $out/bin && /bin/cp $scriptPath $out/bin/microvm-run && /bin/chmod +x $out/bin/microvm-run" ];
    };
  in {
    blixard = {
      cluster = "e2e";
      vms = {
        web = { runner = runner "web" "` + tag + `"; vcpu = 1; memMiB = 256; replicas = 3; };
      };
    };
  };
}
`
}

// orderLog is the node's order.log, line by line.
func orderLog(t *testing.T, n *node) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(n.stateDir(), "order.log"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if s := strings.TrimSpace(string(b)); s != "" {
		return strings.Split(s, "\n")
	}
	return nil
}

// TestNixGitRaftVMRestartRollsOneInstanceAtATime restarts a VM of three
// replicas with `blixard vm restart`: the runners' own log shows each
// instance stopped and started again before the next one is stopped, and
// the command's JSON result lists the three, restarted in order.
func TestNixGitRaftVMRestartRollsOneInstanceAtATime(t *testing.T) {
	requireTools(t, "nix", "git")
	r := newRepo(t)
	commit := r.push(orderFlake("v1"), "web with three replicas")
	c := startCluster(t, r.url(), []nodeSpec{{4, 4096, ""}})
	n := c.nodes[0]
	waitRevision(t, c, commit)
	instances := []string{"web-0", "web-1", "web-2"}
	testkit.WaitFor(t, 90*time.Second, "three instances running", func() error {
		vms, err := vmRuns(t, n.api)
		if err != nil {
			return err
		}
		for _, name := range instances {
			if vms[name].Phase != "running" {
				return fmt.Errorf("%s: %+v", name, vms[name])
			}
		}
		if got := orderLog(t, n); len(got) != 3 {
			return fmt.Errorf("order.log %v", got)
		}
		return nil
	})
	started := orderLog(t, n)

	stdout, stderr, code := cli(t, "", "vm", "restart", "web", "--json", "--instance-timeout", "60s", "--server", n.api)
	if code != 0 {
		t.Fatalf("vm restart web: exit %d\n%s%s", code, stdout, stderr)
	}
	var res struct {
		VM        string
		Done      bool
		Instances []struct {
			Instance, Status string
			Restart          uint64
			Seconds          float64
		}
	}
	if err := jsonUnmarshal(stdout, &res); err != nil || !res.Done || len(res.Instances) != 3 {
		t.Fatalf("vm restart --json: %+v %v\n%s", res, err, stdout)
	}
	for i, s := range res.Instances {
		if s.Instance != instances[i] || s.Status != "restarted" || (i > 0 && s.Restart <= res.Instances[i-1].Restart) {
			t.Errorf("instance %d: %+v", i, s)
		}
		if want := fmt.Sprintf("[%d/3] %s runs again on node 1", i+1, instances[i]); !strings.Contains(stderr, want) {
			t.Errorf("progress lacks %q:\n%s", want, stderr)
		}
		t.Logf("%s: restart request to running again: %.2fs", s.Instance, s.Seconds)
	}

	// The runners' own record: after the three first starts, each instance
	// stopped and started again, one after the other. (A runner is seen
	// running as soon as its process is; it may write its line a moment
	// later.)
	var want []string
	for _, name := range instances {
		want = append(want, "stop "+name, "start "+name)
	}
	testkit.WaitFor(t, 30*time.Second, "the runners' log of the restarts", func() error {
		if got := orderLog(t, n); len(got) < len(started)+len(want) {
			return fmt.Errorf("order.log %v", got)
		}
		return nil
	})
	if got := orderLog(t, n); !slices.Equal(got[len(started):], want) {
		t.Fatalf("stops and starts %v after %v, want %v: one instance at a time", got[len(started):], started, want)
	}
}
