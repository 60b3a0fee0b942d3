// Package guestagent is the guest's side of blixard's identity channel
// (vmsnap, protocol blixard.identity/1): the agent that runs inside a VM
// whose runner saves or restores memory snapshots, freezes the guest before
// a save and gives every copy restored from a snapshot its own identity
// (MAC, hostname, clock, random seed, address) before traffic reaches it.
//
// It is one long-running process (cmd/blixard-guest) that does its work
// with system calls and netlink, so a restore's identity costs no program
// start inside the guest: under software emulation every program a
// restored guest starts is translated anew (the demo's shell agent, four
// busybox programs, took 150–330 ms of a restore under TCG).
//
// The agent is a loop around a pure-ish core: Agent.Handle turns one line
// of the host into one answer through a System, the small set of changes an
// identity makes; the Linux System is in system_linux.go.
//
// It must not know the host's side (the node agent, Raft, the replicated
// state, git, nix or Ceph) nor pull in large libraries: it runs inside
// every snapshot guest, and on a restore's path every code path it takes
// is translated anew under emulation.
package guestagent
