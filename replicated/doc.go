// Package replicated is Blixard's replicated state: one Dragonboat v4 shard
// whose deterministic state machine holds the nodes, the current revision and
// its bounded history, the desired spec, the assignments, the observed VM
// statuses and a bounded event log.
//
// It is split into a pure core and a thin shell:
//
//   - command.go, apply.go and clone.go are the core. [DecodeCommand] turns a
//     Raft entry into a [Command]; [State.Apply] changes the state and returns a
//     [Result]. They import nothing from Dragonboat.
//   - statemachine.go adapts the core to Dragonboat's IStateMachine; store.go
//     owns the NodeHost ([Start], [Store.Propose], [Store.Read], …).
//
// What it must not do: the state machine's Update (and therefore
// [State.Apply]) must not call time.Now, read randomness, the environment or
// files, or do any other I/O. It reads only the entry and the current state;
// timestamps travel inside commands ([Command.At]). A rejected command changes
// nothing but [State.Applied], and an undecodable entry is a rejected command,
// never a panic or an error that halts the shard. The package does not decide
// placement (reconciler) nor touch hosts (nodeagent).
//
// Callers follow these steps:
//
//  1. [Start] a [Store] on every voter with the same Members map (or Join,
//     and NonVoting to match, for a replica added later with
//     [Store.AddReplica]); it returns once the shard has a leader.
//  2. [Store.Propose] commands from any replica; followers forward them to the
//     leader. A CommitPlan is a compare-and-set on the current revision:
//     re-read with [Store.Read] and re-plan on [ResultStaleParent].
//  3. Read with [Store.Read] (linearizable, for the CLI and the reconciler) or
//     [Store.LocalRead] (the local replica, possibly stale, for agents).
//  4. [Store.Close] when done.
package replicated
