// Package raftstore runs Blixard's replicated state on Dragonboat v4: one
// NodeHost with one shard whose state machine is [replicated.State].
//
// Its one job is the Raft shell around the pure state: starting and joining
// the shard, proposing commands with per-attempt timeouts and retries,
// linearizable and local reads, membership changes, and snapshots through
// the state's own encoding. It must not decide placement, evaluate Nix, touch
// hosts, or change the state other than through [replicated.State.ApplyEntry]
// (the state machine's Update stays deterministic: no clock, no I/O).
//
// With [Config.TLS] every Raft connection is mutual TLS with the cluster
// PKI's node certificates (package pki): a host without a certificate from
// the cluster CA can neither join the shard nor send it messages.
//
// Timing is for real, busy hosts, like etcd's: the leader heartbeats every
// 100 ms and a follower campaigns after 1–2 s without one
// ([DefaultRTTMillisecond], [DefaultHeartbeatRTT], [DefaultElectionRTT];
// [Config] can change them). CheckQuorum and PreVote stay on. Every attempt
// of a proposal or read outlasts a leader change and is retried while its
// context lasts.
//
// Callers follow these steps:
//
//  1. [Start] a [Store] on every voter with the same Members map (or Join
//     for a replica added later with [Store.AddReplica], which adds it as
//     a learner: without NonVoting, Start returns once it has promoted
//     itself to voter); it returns once the shard has a leader. A replica
//     whose Raft data is lost or damaged gets [ErrDataLost] instead (see
//     members.go for both).
//  2. [Store.Propose] commands from any replica; followers forward them to the
//     leader. A CommitPlan is a compare-and-set on the current revision:
//     re-read with [Store.Read] and re-plan on ResultStaleParent.
//     [Store.ProposeOK] keeps proposing until the outcome is known.
//  3. Read with [Store.Read] (linearizable, for the CLI and the reconciler) or
//     [Store.LocalRead] (the local replica, possibly stale, for agents).
//  4. [Store.Close] when done.
package raftstore
