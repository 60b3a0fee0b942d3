// Package systemd boots a throw-away real systemd for tests: a minimal
// Debian bookworm in systemd-nspawn (nspawn.sh next to this file), whose
// system bus is reachable from the host, which runs an equivalent of
// microvm.nix's microvm@.service template, and which sees the host's
// /nix/store and a host state directory as its /var/lib/microvms.
//
// [Start] boots one container per caller (each in its own run directory
// and cgroup, so test packages running in parallel do not collide) and
// [Container.Stop] tears it down and checks that no process, mount or
// cgroup of it is left. Its tests run the demo's real qemu microVM as a
// microvm@NAME.service unit inside the container.
//
// It needs root, systemd-nspawn, busctl and the cached rootfs
// (scripts/setup-systemd.sh); a missing one is an error that names that
// script. It must not be imported by non-test code, and it must not change
// the cached rootfs (containers boot it read-only under a tmpfs overlay).
package systemd
