// Package vmsnap saves a running qemu microVM's memory and device state
// into a snapshot and restores new VMs from it, so a cold start loads a
// guest that is already up (about 0.15 s under software emulation) instead
// of booting one (about 2.5 s). It is the host-side edge: a small QMP
// client over qemu's unix socket, Save and Restore, the qemu arguments a
// runner adds for either, a store of snapshots on disk, and the host side
// of the identity channel through which a guest is frozen before its save
// and each restored copy takes its own identity (ident.go).
//
// It must not decide when to save or restore, what to do when a restore
// fails (the node agent decides: boot fresh), or which identity a copy
// takes (the agent gives it the instance's committed one); start, supervise
// or kill qemu processes (their runner and the agent own them: Save ends
// its qemu only through QMP `quit`); or know Raft, the replicated state,
// placement, git or nix. It imports nothing of this module and runs no
// programs.
//
// # Use
//
//  1. Save once per runner and qemu binary: [Store.Begin] makes a pending
//     directory; start the runner with its RAM in PENDING/mem, shared
//     ([SaveArgs] and [IdentityArgs], or [SaveHook] for the demo's
//     runners); once the guest is ready, freeze it ([DialIdentity],
//     [IdentityConn.Freeze]: its NIC goes down), then [Save] (with
//     SaveOptions.Identity, recorded in the manifest) stops it, writes
//     PENDING/state and PENDING/manifest.json and quits qemu; wait for the
//     qemu process to exit, then [Store.Publish] (or [Store.Abort]).
//  2. Restore at a cold start: [Store.Open] (runner out path, qemu binary)
//     finds the snapshot and refuses one of another runner or qemu; start
//     the same runner with [RestoreArgs] and [IdentityArgs] (or
//     [RestoreHook]): qemu waits on `-incoming defer` with its RAM mapped
//     copy-on-write from the mem file; [Restore] loads the state and lets
//     the guest run; [DialIdentity] and [IdentityConn.Identify] give the
//     copy its MAC, hostname, address, clock and a random seed, and
//     [CheckIdentified] checks its answer. Only then may traffic reach it.
//  3. Any error of Open, Restore or the identity exchange means: kill that
//     qemu and boot fresh; after [ErrCorrupt] or [ErrMismatch] also
//     [Store.Remove] the snapshot.
//
// # How the runner gets its arguments
//
// A microvm.nix runner takes run-time qemu arguments from
// `microvm.extraArgsScript`: bin/microvm-run ends in `exec qemu …
// $(extraArgsScript)`, and the script's output is split into words (and
// globbed) by the runner's shell. A script such as
//
//	microvm.extraArgsScript = "${pkgs.writeShellScript "snapshot-args" ''
//	  if [ -f snapshot.args ]; then cat snapshot.args; fi
//	''}";
//
// reads a file the agent writes into the VM's state directory (the runner's
// working directory) before the start: SaveArgs or RestoreArgs and
// IdentityArgs(IdentitySocket) joined by spaces (the guest then needs an
// agent speaking the identity protocol on the port; without one the save
// is refused, since its copies could not take their own identities). That is why every argument here is one word: paths are refused
// when they hold anything but letters, digits and . _ / + @ -. Two
// microvm.nix cases differ: a VM with `microvm.shares` already has its RAM
// in a shared memfd backend named "mem" (for virtiofs), so the script must
// add only `-incoming defer` for a restore (and nothing for a save): Save
// then sees shared RAM that is not the snapshot's file and saves it in the
// stream (x-ignore-shared would drop it), and the runner's own memfd
// backend receives it at the restore. The demo's runners (examples/demo)
// read [HookFile] (snapshot.env) instead and add the same arguments
// themselves.
//
// # What a snapshot is
//
// See [Store] for the layout and [Manifest] for what is recorded. The RAM
// file is written by the saved qemu itself (share=on) and read by every
// restore through a private mapping (share=off), so it never changes once
// published and any number of VMs restore from it at once. The state
// stream is small (tens of KiB: devices and a few ROM pages) and its
// SHA-256 is checked at every restore; the RAM file is only checked for
// its size (hashing 128 MiB would cost more than the restore), and Publish
// flushes it to disk so a host crash cannot leave a half-written one.
//
// qemu 7.2 facts this relies on: there is no file: migration URI, so the
// state file's descriptor is handed to qemu over QMP (getfd, then an fd:
// URI) both ways — `exec:cat > STATE` loses data (when the migration ends
// qemu SIGTERMs a cat that has not exited yet) and `exec:cat STATE` loads
// 5–9 ms slower (qemu polls for the child's exit every 10 ms);
// x-ignore-shared must be set on the restoring side over QMP after
// `-incoming defer`; a qemu whose load failed exits; a restored VM stays
// paused until `cont`; the RAM block's name is its backend's id, so save
// and restore use the same one ([RAMBackend]).
//
// # Identity
//
// Restored copies start as the saved guest: its MAC, address, hostname,
// boot id, random state and a wall clock that stood still since the save.
// The identity channel (ident.go: a virtio-serial port, a line protocol)
// changes all but the boot id, which only a boot changes. The guest's
// kernel mixes the seed into its pool without crediting it and reseeds its
// generator on its own schedule (at most a minute; a second early after
// boot); a copy's first random numbers can still follow the saved state
// (qemu's vmgenid device, whose generation change makes Linux reseed at
// once, is not used: it needs ACPI and fw_cfg support not tried with the
// microvm machine here). VMs with writable
// volumes must not be snapshotted: a restore would run against a disk that
// moved on (functions, the only snapshotted VMs, have no volumes).
package vmsnap
