package fault

import (
	"fmt"
	"strings"
)

// vmDecl is one VM of the test flake.
type vmDecl struct {
	name string
	rest string // vcpu, memory, replicas
}

// testVMs are six instances of one vCPU (web-0, web-1, db, cache,
// worker-0, worker-1) on nodes of three: they fill two nodes, and two nodes
// hold them all while the third is down (more down at once leaves some
// unschedulable until a node is readied). web's replicas never share a
// node.
var testVMs = []vmDecl{
	{"web", "vcpu = 1; memMiB = 256; replicas = 2; placement.antiAffinity = [ \"web\" ];"},
	{"db", "vcpu = 1; memMiB = 512;"},
	{"cache", "vcpu = 1; memMiB = 256;"},
	{"worker", "vcpu = 1; memMiB = 256; replicas = 2;"},
}

// runnerScript is every runner's bin/microvm-run (a Nix ” string: no
// dollar-brace in it). It appends `start NODE INSTANCE PID UPTIME OUT` to
// its node's record file, and `stop …` when it is terminated (SIGTERM,
// SIGINT, SIGHUP: how the process backend stops it); a SIGKILL leaves no
// stop line, which the harness writes for the runners it kills and notices
// for the ones that vanish. /proc/uptime is CLOCK_BOOTTIME, one clock for
// every namespace. The instance is the directory the agent runs it in
// (STATE/NAME), the out path is two levels above $0.
const runnerScript = `#!/bin/sh
# blixard fault-harness runner @TAG@
out=$(/usr/bin/dirname "$(/usr/bin/dirname "$0")")
name=$(/usr/bin/basename "$PWD")
rec="$FAULT_RECORDS/node-$FAULT_NODE.log"
# No command substitution for the time: a subshell killed by a SIGKILL to
# the group could leave a record without one. read is a builtin, and one
# short echo with >> is one append.
read -r up rest < /proc/uptime
echo "start $FAULT_NODE $name $$ $up $out" >> "$rec"
echo "booted $name @TAG@ on node $FAULT_NODE"
child=
bye() {
  read -r up rest < /proc/uptime
  echo "stop $FAULT_NODE $name $$ $up $out" >> "$rec"
  if [ -n "$child" ]; then kill "$child" 2>/dev/null; fi
  exit 0
}
trap bye TERM INT HUP
/bin/sleep 1000000 &
child=$!
wait "$child"
bye
`

// clusterFlake renders the cluster flake with each VM's runner at
// versions[vm] (default 1). A new version is a new runner (out path).
func clusterFlake(versions map[string]int) string {
	var b strings.Builder
	for _, vm := range testVMs {
		v := versions[vm.name]
		if v == 0 {
			v = 1
		}
		fmt.Fprintf(&b, "        %s = { runner = runner %q \"v%d\"; %s };\n", vm.name, vm.name, v, vm.rest)
	}
	return `{
  outputs = { self }: let
    script = tag: builtins.replaceStrings [ "@TAG@" ] [ tag ] ''
` + indent(runnerScript, "      ") + `    '';
    runner = name: tag: builtins.derivation {
      name = "microvm-${name}";
      system = "x86_64-linux";
      builder = "/bin/sh";
      script = script "${name} ${tag}";
      args = [ "-c" "/bin/mkdir -p $out/bin && printf '%s' \"$script\" > $out/bin/microvm-run && /bin/chmod +x $out/bin/microvm-run" ];
    };
  in {
    blixard = {
      cluster = "fault";
      vms = {
` + b.String() + `      };
    };
  };
}
`
}

// brokenFlake does not evaluate (a missing semicolon): the cluster must
// keep its revision and show the error.
func brokenFlake(n int) string {
	return fmt.Sprintf(`{
  # broken push %d
  outputs = { self }: {
    blixard = {
      cluster = "fault"
      vms = { };
    };
  };
}
`, n)
}

func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = prefix + l
		}
	}
	return strings.Join(lines, "\n") + "\n"
}
