package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
)

// orderFlake is a cluster of web with three replicas whose runner appends
// "start INSTANCE" to STATE/order.log when it starts and "stop INSTANCE
// NANOSECONDS" (since the epoch) when it is told to stop: the process
// backend runs each in STATE/INSTANCE, so the log of one node records the
// order of every start and stop there, written by the runners themselves.
// The stop's SIGTERM goes to the runner and to its group; the trap ignores
// the second, which would otherwise run the trap again in the subshell of
// the time's command substitution.
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
        trap 'trap "" TERM; echo "stop $n $(/bin/date +%s%N)" >> ../order.log; exit 0' TERM
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
	// stopped and started again, the stops one after the other.
	testkit.WaitFor(t, 30*time.Second, "the runners' log of the restarts", func() error {
		if got := orderLog(t, n); len(got) < len(started)+2*len(instances) {
			return fmt.Errorf("order.log %v", got)
		}
		return nil
	})
	got := orderLog(t, n)[len(started):]
	if err := checkRollingOrder(got, instances, func(name string) (time.Time, error) {
		fi, err := os.Stat(filepath.Join(n.stateDir(), name, "pid"))
		if err != nil {
			return time.Time{}, err
		}
		return fi.ModTime(), nil
	}); err != nil {
		t.Fatalf("stops and starts %v after %v: %v", got, started, err)
	}
}

// checkRollingOrder checks the runners' log lines of a rolling restart of
// instances (in order): each stopped once and started again after its
// stop, the stops in order, and each instance after the first stopped
// only once the one before it ran again. A runner is seen running as soon
// as its process is and writes its start line a moment later, possibly
// after the next instance's stop line; so "ran again" is when the agent
// recorded the new runner's pid file (started: its time), which the
// next stop's own time must follow.
func checkRollingOrder(lines, instances []string, started func(name string) (time.Time, error)) error {
	stopAt, startAt := map[string]int{}, map[string]int{}
	stopTime := map[string]time.Time{}
	for i, line := range lines {
		f := strings.Fields(line)
		switch {
		case len(f) == 3 && f[0] == "stop":
			ns, err := strconv.ParseInt(f[2], 10, 64)
			if err != nil {
				return fmt.Errorf("line %q: no time", line)
			}
			if _, twice := stopAt[f[1]]; twice {
				return fmt.Errorf("%s stopped twice", f[1])
			}
			stopAt[f[1]], stopTime[f[1]] = i, time.Unix(0, ns)
		case len(f) == 2 && f[0] == "start":
			if _, twice := startAt[f[1]]; twice {
				return fmt.Errorf("%s started twice", f[1])
			}
			startAt[f[1]] = i
		default:
			return fmt.Errorf("line %q is neither a start nor a stop", line)
		}
	}
	for i, name := range instances {
		stop, stopped := stopAt[name]
		start, ok := startAt[name]
		switch {
		case !stopped || !ok:
			return fmt.Errorf("%s: not stopped and started again once each", name)
		case start < stop:
			return fmt.Errorf("%s started again before it stopped", name)
		case i > 0 && stop < stopAt[instances[i-1]]:
			return fmt.Errorf("%s stopped before %s", name, instances[i-1])
		}
		if i == 0 {
			continue
		}
		prev := instances[i-1]
		ran, err := started(prev)
		if err != nil {
			return fmt.Errorf("%s's new runner: %w", prev, err)
		}
		if !stopTime[name].After(ran) {
			return fmt.Errorf("%s stopped at %s, before %s ran again (%s): not one instance at a time",
				name, stopTime[name].Format(time.RFC3339Nano), prev, ran.Format(time.RFC3339Nano))
		}
	}
	if len(stopAt) != len(instances) || len(startAt) != len(instances) {
		return fmt.Errorf("want a stop and a start of each of %v only", instances)
	}
	return nil
}

func TestCheckRollingOrder(t *testing.T) {
	instances := []string{"web-0", "web-1", "web-2"}
	base := time.Unix(1000, 0)
	at := func(ms int) string {
		return strconv.FormatInt(base.Add(time.Duration(ms)*time.Millisecond).UnixNano(), 10)
	}
	// The new runners' pid files: web-0 at 10 ms, web-1 at 30 ms.
	ran := map[string]time.Time{"web-0": base.Add(10 * time.Millisecond), "web-1": base.Add(30 * time.Millisecond)}
	started := func(name string) (time.Time, error) {
		if t, ok := ran[name]; ok {
			return t, nil
		}
		return time.Time{}, os.ErrNotExist
	}
	for _, tc := range []struct {
		name  string
		lines []string
		fails string // "" for none
	}{
		{"in order", []string{"stop web-0 " + at(0), "start web-0", "stop web-1 " + at(20), "start web-1", "stop web-2 " + at(40), "start web-2"}, ""},
		{"a start line after the next stop line", []string{"stop web-0 " + at(0), "stop web-1 " + at(20), "start web-0", "start web-1", "stop web-2 " + at(40), "start web-2"}, ""},
		{"next stopped before the previous ran again", []string{"stop web-0 " + at(0), "stop web-1 " + at(5), "start web-0", "start web-1", "stop web-2 " + at(40), "start web-2"}, "before web-0 ran again"},
		{"stops out of order", []string{"stop web-1 " + at(20), "stop web-0 " + at(0), "start web-0", "start web-1", "stop web-2 " + at(40), "start web-2"}, "web-1 stopped before web-0"},
		{"started before its stop", []string{"start web-0", "stop web-0 " + at(0), "stop web-1 " + at(20), "start web-1", "stop web-2 " + at(40), "start web-2"}, "web-0 started again before it stopped"},
		{"one not restarted", []string{"stop web-0 " + at(0), "start web-0", "stop web-1 " + at(20), "start web-1"}, "web-2: not stopped"},
		{"stopped twice", []string{"stop web-0 " + at(0), "stop web-0 " + at(1)}, "web-0 stopped twice"},
		{"stop without a time", []string{"stop web-0"}, "neither a start nor a stop"},
		{"another instance", []string{"stop web-0 " + at(0), "start web-0", "stop web-1 " + at(20), "start web-1", "stop web-2 " + at(40), "start web-2", "start web-3"}, "want a stop and a start"},
	} {
		err := checkRollingOrder(tc.lines, instances, started)
		switch {
		case tc.fails == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.fails != "" && (err == nil || !strings.Contains(err.Error(), tc.fails)):
			t.Errorf("%s: error %v, want one with %q", tc.name, err, tc.fails)
		}
	}
}
