// Package nodeagent converges one host towards the plan: it is the per-node
// loop of the design's §6 ("Node agent and the microvm.nix contract").
//
// Its one job is per-host convergence, split the way etcd-raft splits its
// Ready/Advance loop: on every pass (level-triggered: a resync tick,
// [Agent.Notify], a finished operation or a backend event) the agent
//
//  1. observes: the local replica's assignments for this node, the
//     backend's units and their status, STATE/NAME/current, and its own
//     records (what it realised, attached, failed, and has in flight);
//  2. decides with [Decide], a pure function of that [Input] and the time:
//     per VM, the status to report and the [Action]s to run. Decide's
//     documentation holds the ordered steps (realise → volumes → current →
//     unit; stop, then detach, what is no longer assigned here or kept stopped
//     on purpose) and their
//     rules: adoption, crash loops, retries, and that a failing new version
//     never stops the running old one;
//  3. acts: switches of current, cancels and kills run at once; every other
//     action runs in the background as the VM's one operation, whose
//     [Result] is fed back into the records, and the next pass decides
//     again.
//
// The agent owns the node's heartbeat: every Options.Heartbeat and shortly
// after any change of a VM's phase or health it proposes a NodeHeartbeat
// with the complete list of the node's VM statuses. Health is judged only
// while a VM runs: healthy once it runs, or by its assignment's health
// check, probed from goroutines of their own (see health.go).
// Heartbeats are pipelined: each starts on time whether or not the earlier
// ones were answered (a lost proposal is retried
// only after seconds, an election drops every proposal in flight), at most
// max(2, ⌈lease/period⌉) unanswered at once, each given up after the lease.
// So they commit in any order: each carries the agent process's epoch
// (random) and a sequence number, and Apply keeps the statuses of the
// newest only, while every one counts for liveness. A committed one renews
// the lease to its own send time, never backwards; a VM gone from this node
// is forgotten once a heartbeat numbered from its first stopped report on
// committed (Raft then shows it stopped, whichever heartbeat Apply kept).
//
// One copy of each VM. Two rules keep a VM from running on two nodes:
//
//   - self-fencing (Options.Lease): only a committed heartbeat renews the
//     node's lease, and it runs out before the leader's --node-timeout can
//     (it counts from the heartbeat's send, the leader from seeing it
//     applied). A node whose lease ran out is fenced: it kills every runner
//     at once ([Backend.Kill]: SIGKILL, no shutdown) and starts nothing
//     until a heartbeat commits again, so by the time the leader declares
//     it down and places its VMs elsewhere, they no longer run there. Once
//     the fence ends, a VM starts only after a heartbeat made since, saying
//     it is starting, has committed: until then Raft shows it stopped here
//     while a plan may be moving it, and the node taking it over waits
//     only for a report that is not stopped (see moves). A blixard that is
//     frozen (SIGSTOP) or not running cannot fence: its runners keep
//     running until it runs again, and its first pass then kills them (its
//     lease counts from its last committed heartbeat in the local replica);
//   - moves: a VM that another node (not marked down) last reported through
//     Raft in a phase other than stopped is neither attached nor started
//     here, and this node reports nothing of it meanwhile (see [Decide]):
//     the old node stops it once it applies the plan. (A third node's
//     leftover "stopped" does not replace that report in Raft.)
//
// Units are run by a [Backend]: [SystemdBackend] drives microvm.nix's
// `microvm@NAME.service` units over D-Bus (production on NixOS; it reacts to
// PropertiesChanged signals), [ProcessBackend] supervises microvm-run
// processes itself (dev mode, hosts without systemd). Runners outlive the
// agent: an agent that restarts adopts them instead of restarting them.
//
// The layout of STATE (default /var/lib/microvms) is microvm.nix's own, and
// the agent prepares STATE/NAME the way microvm.nix's install-microvm-NAME
// does: the directory and current belong to microvm:kvm when that user and
// group exist (see switchCurrent), so microvm.nix's units, which run as
// microvm, can write booted:
//
//	STATE/NAME/current     → runner out path the plan wants (symlink)
//	STATE/NAME/booted      → runner out path that runs (symlink; under systemd written by
//	                         microvm-set-booted@NAME as microvm, by the process backend otherwise)
//	STATE/NAME/gcroot      → indirect nix GC root of current (nix-store --add-root --indirect)
//	STATE/NAME/pid         → "PID STARTTIME" of the running runner (process backend)
//	STATE/NAME/console.log → the runner's stdout and stderr (process backend; see [LogPath]);
//	                         capped, one older log in console.log.1 (ProcessOptions.MaxLogBytes)
//	STATE/NAME/volumes/VOL → the attached volume VOL (see [VolumePath])
//
// The agent must not decide placement, write assignments or talk to other
// nodes' agents: it acts on the committed plan and only reports what it sees.
package nodeagent
