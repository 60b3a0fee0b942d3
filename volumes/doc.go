// Package volumes is Blixard's Ceph edge: it gives a VM's RBD volumes to the
// node that runs the VM, and to that node alone. It is the design's §6 step
// "volumes" and the fencing primitives of §7.
//
// Its jobs, all through librados/librbd (go-ceph):
//
//  1. [Conn.Ensure]: the image exists (created with the features its lock
//     needs: layering and exclusive-lock) and is at least the declared size
//     (grown when the spec grew, never shrunk).
//  2. [Conn.Lock]: this node's client takes the image's exclusive lock and
//     keeps it until [Held.Release]. The lock is librbd's managed
//     exclusive lock (rbd_lock_acquire), not an advisory lock: images with
//     the exclusive-lock feature refuse advisory locks (EBUSY), and only the
//     managed lock is honoured by librbd's own I/O path and by the kernel
//     client (`rbd device map --exclusive` takes the same lock), so one
//     mechanism covers every attacher.
//  3. An [Attacher] exposes a held image at a stable path the VM's runner
//     uses, STATE/NAME/volumes/VOL: [NBDAttacher] serves it over NBD on a
//     unix socket from this process (it runs anywhere, the VM's I/O goes
//     through the node's own Ceph client, so fencing the node fences the
//     VM); [KernelAttacher] maps it with the kernel RBD client (production).
//  4. Fencing: [Conn.Blocklist] and [Conn.Unblocklist] add and lift OSD
//     blocklist entries for a node's client addresses ([Conn.Addrs], which
//     every node registers); [Conn.BreakLock] breaks an image's lock only
//     after its holder is blocklisted.
//
// [Manager] ties them together for the node agent: one lazily connected
// client per node, Attach (ensure, lock, expose) and Detach (unexpose,
// release).
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
