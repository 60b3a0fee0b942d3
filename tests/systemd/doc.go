// Package systemd boots a throw-away real systemd for tests: a minimal
// Debian bookworm in systemd-nspawn (nspawn.sh next to this file), whose
// system bus is reachable from the host, which runs microvm.nix's own host
// units, and which sees the host's /nix/store and a host state directory as
// its /var/lib/microvms.
//
// The units come from microvm.nix's host module at the commit pinned in
// scripts/setup-nixlib.sh, not from a hand-written copy: [Start] evaluates
// tests/nixlib/testdata/microvm-host-units.nix with the real nix against
// the pinned nixpkgs lib and microvm.nix (the cache that script fills,
// checked by NAR hash, as tests/nixlib does; [EvalHostUnits]), realises its
// build derivation (the unit scripts and the programs on the units' PATH;
// the container binds the host's /nix/store), and installs, as rendered:
//
//   - microvm@.service and every unit it requires: microvm-set-booted@,
//     microvm-tap-interfaces@, microvm-macvtap-interfaces@,
//     microvm-pci-devices@ and microvm-virtiofsd@ (in
//     /usr/local/lib/systemd/system);
//   - the module's users (microvm, in group kvm) as sysusers.d lines, made
//     at boot by systemd-sysusers; kvm is NixOS's own static group, which
//     microvm.nix does not declare, so it is created here with an id
//     sysusers picks;
//   - the module's tmpfiles line (/var/lib/microvms as microvm:kvm 0775),
//     applied at boot by systemd-tmpfiles.
//
// So the VM runs as microvm:kvm in STATE/NAME and microvm-set-booted@ (as
// microvm) writes STATE/NAME/booted, as on a NixOS host; the state
// directory keeps microvm.nix's default path, /var/lib/microvms, inside the
// container. [Container.UID] and [Container.GID] are microvm's and kvm's ids
// there, and [Container.Root] is the container's root as the host sees it
// (its /etc/passwd, /proc and journal); the agent's SystemdBackend takes it
// as SystemdOptions.Root.
//
// Nothing of the rendered units is replaced by a stand-in. The units the
// container cannot run honestly (tap and macvtap interfaces, PCI
// passthrough, virtiofsd: no tap device, no devices, no virtiofsd) are
// installed as they are and skip themselves through their own
// ConditionPathExists (current/bin/tap-up, …), because the test runners and
// the demo's VM (qemu user networking, no shares) have none of those
// programs — exactly what happens on a host for such a VM. Two things
// differ from a NixOS host and are stated here:
//   - nodeagent's tests add one drop-in to each installed unit
//     (test-restart.conf): RestartSec=100ms on microvm@ instead of 5s, so
//     crash tests take seconds, and StartLimitIntervalSec=0, because with
//     100ms restarts systemd's default start limit (5 in 10s) would be hit
//     where 5s never hits it. One test adds a per-instance start limit to
//     make a unit give up.
//   - the container has no /dev/kvm: the demo's runner falls back to
//     software emulation (its own choice, see examples/demo).
//
// [Start] boots one container per caller (each in its own run directory
// and cgroup, so test packages running in parallel do not collide) and
// [Container.Stop] tears it down and checks that no process, mount or
// cgroup of it is left. Its tests run the demo's real qemu microVM as a
// microvm@NAME.service unit inside the container and check what the
// harness installs.
//
// Journal: the units' output stays in the container's journal. The host's
// journalctl reads it with --root=[Container.Root] (the container's root
// through /proc/PID/root of its init): that is how [Container.Journal] and
// the SystemdBackend's TailConsole (`blixard logs` under systemd) read it,
// without entering the container's namespaces.
//
// It needs root, systemd-nspawn, busctl and the cached rootfs
// (scripts/setup-systemd.sh), nix (scripts/setup.sh) and the pinned
// third-party sources (scripts/setup-nixlib.sh); a missing one is an error
// that names the script. It must not be imported by non-test code, and it
// must not change the cached rootfs (containers boot it read-only under a
// tmpfs overlay; users and the state directory's owner are made at boot).
package systemd
