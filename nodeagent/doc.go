// Package nodeagent converges one host towards the plan: it is the per-node
// loop of the design's §6 ("Node agent and the microvm.nix contract").
//
// Its one job is per-host convergence. On every pass (level-triggered: a
// resync tick, [Agent.Notify], a finished build or a backend event) it reads
// the local replica's state and, for every assignment whose Node is this
// node, runs the ordered steps below; the first step that fails or has to
// wait ends the VM's pass, and the next pass starts again from step 1:
//
//  1. realise: the runner's out path is made valid in the local store (already
//     valid or substitutable → the assignment's .drv when it exists locally →
//     [Builder]) and rooted against garbage collection at STATE/NAME/gcroot;
//     the realised path must equal the plan's out path. Builds run in the
//     background, one at a time per VM, and a failure is retried only after
//     Options.BuildRetry. Sets phase building (or failed with the build's
//     error); a failing new version never stops the running old one.
//  2. volumes (VMs that declare any): [Volumes.Attach] for each, in name
//     order: the RBD image is created or grown, this node takes its
//     exclusive lock, and it is attached at STATE/NAME/volumes/VOL. Runs in
//     the background; sets pending ("attaching volumes"), or failed with
//     Ceph's error (another node's lock included), retried after
//     Options.VolumeRetry. The unit never starts before this step passed.
//  3. state directory: STATE/NAME/current → out path, switched atomically
//     (a new symlink renamed over the old one). Sets failed on I/O errors.
//  4. unit: start it when it is not running, restart it when
//     STATE/NAME/booted (what runs) differs from current. Sets starting,
//     running, or failed (the backend's error or a crash loop).
//
// VMs the backend runs that are no longer assigned to this node are stopped
// (phase stopping, then stopped), and only then their volumes are detached
// and their locks released; their state directories and images are kept.
//
// The agent owns the node's heartbeat: every Options.Heartbeat and shortly
// after any phase change it proposes a NodeHeartbeat with the complete list
// of the node's VM statuses.
//
// Units are run by a [Backend]: [SystemdBackend] drives microvm.nix's
// `microvm@NAME.service` units over D-Bus (production on NixOS; it reacts to
// PropertiesChanged signals), [ProcessBackend] supervises microvm-run
// processes itself (dev mode, hosts without systemd). Runners outlive the
// agent: an agent that restarts adopts them instead of restarting them.
//
// The layout of STATE (default /var/lib/microvms) is microvm.nix's own:
//
//	STATE/NAME/current     → runner out path the plan wants (symlink)
//	STATE/NAME/booted      → runner out path that runs (symlink, written by the backend)
//	STATE/NAME/gcroot      → indirect nix GC root of current (nix-store --add-root --indirect)
//	STATE/NAME/pid         → "PID STARTTIME" of the running runner (process backend)
//	STATE/NAME/console.log → the runner's stdout and stderr (process backend; see [LogPath])
//	STATE/NAME/volumes/VOL → the attached volume VOL (see [VolumePath])
//
// The agent must not decide placement, write assignments or talk to other
// nodes' agents: it acts on the committed plan and only reports what it sees.
package nodeagent
