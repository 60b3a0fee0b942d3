// Package qemu tests the real-microVM demo (examples/demo): its runners,
// built with the real nix, boot a Debian cloud kernel under qemu's microvm
// machine, answer HTTP through a forwarded loopback port and power off
// cleanly through microvm-shutdown, all supervised by the real node agent
// and its process backend.
//
// It needs nix (scripts/setup.sh) and qemu, socat, busybox-static, cpio and
// the unpacked cloud kernel (scripts/setup-microvm.sh); a missing one fails
// the tests with the command to run. It holds tests only: it must not be
// imported, and it must not change the demo's files.
package qemu
