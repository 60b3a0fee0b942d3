// Package volumes is Blixard's Ceph edge: it gives a VM's RBD volumes to the
// node that runs the VM, and to that node alone. It is the design's §6 step
// "volumes" and the fencing primitives of §7.
//
// Its jobs, all through librados/librbd (go-ceph):
//
//  1. [Conn.Ensure]: the image exists (created with the features its lock
//     needs: layering and exclusive-lock) and is at least the declared size
//     (grown when the spec grew, never shrunk).
//  2. The image's exclusive lock, one mechanism for every attacher:
//     librbd's exclusive lock, not an advisory lock (images with the
//     exclusive-lock feature refuse advisory locks with EBUSY). The kernel
//     client (`rbd device map --exclusive`) and [Conn.Lock] take it as a
//     managed lock that is never handed over; a qemu-storage-daemon's
//     client takes it on its first write and hands it to any client that
//     asks, so [DaemonAttacher] makes it take the lock before the VM can
//     start and every attach first checks that no other client holds it.
//  3. An [Attacher] exposes an image at a stable path the VM's runner
//     opens, STATE/NAME/volumes/VOL, with the image's exclusive lock held
//     by a client that is not the agent's, so that restarting or upgrading
//     blixard leaves every VM's disk alone: [KernelAttacher] maps it with
//     the kernel RBD client and links the path to /dev/rbdN (production,
//     what microvm.nix opens); [DaemonAttacher] serves it over NBD on a unix
//     socket at the path from a qemu-storage-daemon of its own, supervised
//     and adopted after an agent restart (where the kernel has no rbd
//     driver). [AttachMode] (serve --volume-attach) picks one.
//  4. Fencing: [Conn.Blocklist] and [Conn.Unblocklist] add and lift OSD
//     blocklist entries for a node's client addresses ([Conn.Addrs], which
//     every node registers, and [Manager.ClientAddrs], the addresses of its
//     volume daemons and kernel mappings, which it reports in every
//     heartbeat); [Conn.BreakLock] breaks an image's lock only after its
//     holder is blocklisted. [Fencer] is the leader's side (Fence, and
//     Unfence once the fenced clients are gone).
//  5. Rejoining: a fenced client stays useless (its requests fail with
//     EBLOCKLISTED, and the manager's errors wrap [ErrFenced]) until
//     [Manager.Reconnect], called when the node is made ready again, stops
//     the fenced attachments and replaces the client ([Conn.Reconnect]: a
//     new address) before it reports the new addresses; a fenced volume
//     daemon is never adopted.
//
// [Manager] ties them together for the node agent: one lazily connected
// client per node, Attach (ensure, lock, expose or adopt), Detach
// (unexpose, release), Reconnect and Close, which leaves the attachments
// serving.
//
// Files that import go-ceph carry the build tag `ceph`; go-ceph itself needs
// `pacific` with Debian 12's libraries. Build and test with
// `-tags ceph,pacific` (librados-dev and librbd-dev installed, see
// scripts/setup-ceph.sh). A build without the tag has the same API, and
// every call that needs Ceph fails with [ErrNotBuilt].
//
// The package must not decide placement, read the replicated state or
// delete an image: data outlives VMs, nodes and removal from the flake.
package volumes
