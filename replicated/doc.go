// Package replicated is Blixard's replicated state as pure data: the nodes,
// the current revision and its bounded history, the desired spec, the
// assignments with the planner's whole outcome (instance specs, generations,
// unschedulable instances), the network identities of the instances
// (address, MAC, tap, hostname) and the nodes' overlay addresses
// ([AllocateNetwork]), the observed VM
// statuses, the operators' run-state choices (`blixard vm
// start|stop|restart`), the source's conditions (FetchFailed, EvalFailed),
// the count of requests for a fetch (RequestSync: how a node that does not
// lead passes a push webhook on to the leader), the API's bearer tokens
// (hashes only) and a bounded event log that names who asked for each
// change made through the API ([Command.Actor]); the versioned commands that
// change it; and its snapshot encoding.
//
// [DecodeCommand] turns a Raft entry into a [Command]; [State.Apply] (or
// [State.ApplyEntry] on raw bytes) changes the state and returns a [Result].
// The Raft shell that replicates it lives in package raftstore, so the
// planner and the agent link no Dragonboat.
//
// What it must not do: [State.Apply] must not call time.Now, read
// randomness, the environment or files, or do any other I/O. It reads only
// the command and the current state; timestamps travel inside commands
// ([Command.At]). A rejected command changes nothing but [State.Applied], and
// an undecodable entry is a rejected command, never a panic. The package
// imports no Dragonboat, does not decide placement (reconciler) nor touch
// hosts (nodeagent).
package replicated
