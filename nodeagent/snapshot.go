package nodeagent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/blixard/blixard/vmsnap"
)

// Snapshot-fast cold starts of functions (replicated.Assignment.Snapshot,
// carried by ActStart as Action.Snapshot). How a start of such an instance
// is done, not whether: Decide decides the start as for any VM, and the
// start operation picks one of the snapStart modes (the pure
// planSnapshotStart):
//
//   - save: no snapshot of this runner and qemu in STATE/.snapshots yet.
//     The runner starts with its RAM in a pending snapshot (snapshot.env
//     save mode), the operation probes the instance's health check until it
//     passes, freezes the guest (see Identity), then vmsnap.Save stops it
//     and quits qemu (the backend takes
//     that exit as a stop, not a crash), the snapshot is published, and the
//     instance is started again by a restore. So the first cold start costs
//     a boot, a save and a restore; the instance is reported starting all
//     along, so no request reaches the guest before it was saved.
//   - restore: the runner starts in restore mode (qemu waits on `-incoming
//     defer`), vmsnap.Restore loads the snapshot over its QMP socket and
//     the copy takes the instance's identity, all under the unit's
//     operation lock, so a qemu that exits on a failed load is not
//     restarted as a crash. Any failure kills that qemu and boots fresh; a
//     snapshot refused as mismatched or corrupt is removed, one saved
//     unfrozen is replaced.
//   - boot: anything else (no health check to tell readiness, a runner
//     whose qemu binary cannot be found, the systemd backend, a
//     network.env no identity can be built from): a plain start.
//
// Identity: a restored guest is the saved one (MAC, address, hostname,
// random state, a clock that stood still), so every copy is given its own
// identity through vmsnap's identity channel (a virtio-serial port the
// runner adds in both snapshot modes) before anything reaches it. Before
// the save the agent freezes the guest (its NIC down: no copy ever answers
// with the saved address) and records that in the manifest; a guest that
// does not freeze is not saved. After a restore's `cont` the agent tells
// the copy its committed MAC, hostname, address (network.env), the wall
// clock and a fresh random seed, and reports the instance started only
// once the guest acknowledged them with the committed address; a guest
// that does not is killed and the instance boots. So any instance of the
// function on any node restores from the node's snapshot of its runner,
// each with its own identity; the boot id stays the saved guest's (it
// changes only with a boot).
//
// snapshot.env is removed after every start: a crash restart by the backend
// (which knows nothing of snapshots) must boot, not wait for a load nobody
// sends.

// SnapshotDir is the node's snapshot store under the state directory
// (STATE/.snapshots): a name no VM instance can have, so the backends'
// adoption, which looks for STATE/NAME/pid, passes over it.
const SnapshotDir = ".snapshots"

// identityTimeout bounds the identity exchanges: the freeze before a save
// and, after a restore's cont, the guest's hello and its answer to ident
// (measured under software emulation: 0.1–0.5 s; a DHCP exchange, when
// the identity carries no address, takes longer). Past it the guest is
// taken as unable to take an identity: not saved, or killed and booted.
const identityTimeout = 20 * time.Second

// snapMode is how a start of a snapshot function's instance is done.
type snapMode int

const (
	snapBoot snapMode = iota
	snapSave
	snapRestore
)

func (m snapMode) String() string {
	switch m {
	case snapSave:
		return "save"
	case snapRestore:
		return "restore"
	}
	return "boot"
}

// snapshotFacts is what planSnapshotStart decides from: gathered by the
// I/O in snapshotStart.
type snapshotFacts struct {
	// Supported: the backend can save and restore (the process backend).
	Supported bool
	// Qemu is the runner's qemu binary ("" when it could not be found).
	Qemu string
	// HasHealth: the instance has a health check, which says when a guest
	// being saved is ready.
	HasHealth bool
	// Open is vmsnap.Store.Open's error (nil: a snapshot exists).
	Open error
	// Frozen is the identity protocol the snapshot's guest was frozen
	// through (Manifest.Identity; "" for a guest saved unfrozen).
	Frozen string
	// Identity is nil when the instance's own identity can be given to a
	// restored copy, else why not (a network.env it cannot be built from).
	Identity error
}

// snapshotPlan is planSnapshotStart's answer.
type snapshotPlan struct {
	Mode snapMode
	// Remove: remove the snapshot that is there (refused by Open as
	// mismatched or corrupt) before starting.
	Remove bool
	// Why says why, for the log.
	Why string
}

// planSnapshotStart decides how to start a snapshot function's instance.
func planSnapshotStart(f snapshotFacts) snapshotPlan {
	switch {
	case !f.Supported:
		return snapshotPlan{Mode: snapBoot, Why: "the backend cannot save or restore snapshots (the process backend can)"}
	case f.Qemu == "":
		return snapshotPlan{Mode: snapBoot, Why: "the runner's qemu binary is unknown"}
	}
	if f.Open != nil {
		remove := errors.Is(f.Open, vmsnap.ErrMismatch) || errors.Is(f.Open, vmsnap.ErrCorrupt)
		if !f.HasHealth {
			return snapshotPlan{Mode: snapBoot, Remove: remove, Why: "no health check tells when the guest to save is ready"}
		}
		if remove {
			return snapshotPlan{Mode: snapSave, Remove: true, Why: "the snapshot there is refused (" + f.Open.Error() + "): saving a new one"}
		}
		if !errors.Is(f.Open, vmsnap.ErrNotFound) {
			return snapshotPlan{Mode: snapBoot, Why: "the snapshot cannot be read: " + f.Open.Error()}
		}
		return snapshotPlan{Mode: snapSave, Why: "no snapshot of this runner yet"}
	}
	switch {
	case f.Frozen != vmsnap.IdentityProtocol:
		// A copy of a guest saved unfrozen would come up with the saved
		// MAC and address: replace the snapshot by one that can take
		// identities.
		why := fmt.Sprintf("the snapshot's guest was not frozen through %s (it records %q): a restored copy would keep the saved identity", vmsnap.IdentityProtocol, f.Frozen)
		if !f.HasHealth {
			return snapshotPlan{Mode: snapBoot, Remove: true, Why: why + "; no health check tells when a guest to save is ready"}
		}
		return snapshotPlan{Mode: snapSave, Remove: true, Why: why + ": saving a new one"}
	case f.Identity != nil:
		return snapshotPlan{Mode: snapBoot, Why: "this instance's identity cannot be given to a restored copy: " + f.Identity.Error()}
	}
	return snapshotPlan{Mode: snapRestore, Why: "a snapshot of this runner exists"}
}

// dropAfterRestore reports whether a failed restore means the snapshot is
// bad (vmsnap: remove it after ErrCorrupt or ErrMismatch), not just this
// attempt.
func dropAfterRestore(err error) bool {
	return errors.Is(err, vmsnap.ErrCorrupt) || errors.Is(err, vmsnap.ErrMismatch)
}

// runnerQemu finds the qemu binary a runner's bin/microvm-run execs: the
// first word of its `exec` line naming qemu-system-*. An absolute path
// (microvm.nix's runners) is the one candidate; a bare name (the demo's
// runners) is looked up in the directories of the script's own PATH=
// assignment, in order. None when the script execs no qemu.
func runnerQemu(script []byte) []string {
	var path []string
	sc := bufio.NewScanner(bytes.NewReader(script))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if p, ok := strings.CutPrefix(line, "PATH="); ok && path == nil {
			path = strings.Split(strings.Trim(p, `"'`), ":")
			continue
		}
		rest, ok := strings.CutPrefix(line, "exec ")
		if !ok {
			continue
		}
		words := strings.Fields(rest)
		if len(words) == 0 {
			continue
		}
		bin := strings.Trim(words[0], `"'`)
		if !strings.HasPrefix(filepath.Base(bin), "qemu-system-") {
			continue
		}
		if filepath.IsAbs(bin) {
			return []string{bin}
		}
		var out []string
		for _, dir := range path {
			if filepath.IsAbs(dir) {
				out = append(out, filepath.Join(dir, bin))
			}
		}
		return out
	}
	return nil
}

// findRunnerQemu is the first candidate of runnerQemu of out's
// microvm-run that exists, symbolic links resolved (as vmsnap.Key wants
// it: what /proc/PID/exe of the running qemu shows).
func findRunnerQemu(out string) (string, error) {
	script, err := os.ReadFile(filepath.Join(out, "bin", "microvm-run"))
	if err != nil {
		return "", fmt.Errorf("reading the runner: %w", err)
	}
	candidates := runnerQemu(script)
	if len(candidates) == 0 {
		return "", fmt.Errorf("%s/bin/microvm-run execs no qemu-system-* this agent can find", out)
	}
	for _, c := range candidates {
		if fi, err := os.Stat(c); err == nil && !fi.IsDir() {
			return filepath.EvalSymlinks(c)
		}
	}
	return "", fmt.Errorf("%s/bin/microvm-run execs qemu from %v, none of which exists", out, candidates)
}

// snapshotBoot is the bound on a save-mode guest becoming ready.
const snapshotBoot = 3 * time.Minute

// snapshotStart is ActStart of a snapshot function's instance (see the
// comment at the top of this file).
func (a *Agent) snapshotStart(ctx context.Context, act Action) error {
	begin := time.Now()
	name := act.VM
	dir := filepath.Join(a.o.StateDir, name)
	store := vmsnap.Store{Dir: filepath.Join(a.o.StateDir, SnapshotDir)}
	pb, ok := a.o.Backend.(*ProcessBackend)
	facts := snapshotFacts{Supported: ok}
	out, err := readLink(filepath.Join(dir, "current"))
	if err != nil || out == "" {
		out = act.Out
	}
	if ok {
		if q, err := findRunnerQemu(out); err != nil {
			a.log.Warn("snapshot: cannot tell the runner's qemu; booting", "vm", name, "err", err)
		} else {
			facts.Qemu = q
		}
	}
	var target probeTarget
	if st, err := a.o.State.LocalRead(); err == nil {
		if as, ok := st.Assignments[name]; ok {
			target = targetOf(as, st.Network, a.o.ClusterNetwork)
		}
	}
	facts.HasHealth = target.check != nil
	env, err := readNetEnv(dir)
	if err != nil {
		return fmt.Errorf("snapshot start of %s: %w (the network component writes it: check the node's log)", name, err)
	}
	_, _, facts.Identity = restoredIdentity(env, time.Now(), [32]byte{})
	var snap vmsnap.Snapshot
	if facts.Qemu != "" {
		snap, facts.Open = store.Open(out, facts.Qemu)
		facts.Frozen = snap.Manifest.Identity
	}
	plan := planSnapshotStart(facts)
	a.log.Info("snapshot function start", "vm", name, "mode", plan.Mode.String(), "why", plan.Why)
	if plan.Remove {
		a.removeSnapshot(store, out, facts.Qemu)
	}
	switch plan.Mode {
	case snapRestore:
		return a.restoreOrBoot(ctx, pb, store, snap, name, dir, out, facts.Qemu, env, begin)
	case snapSave:
		snap, err := a.saveFirst(ctx, pb, store, name, dir, out, target, env)
		if err != nil {
			// The instance runs (booted, unsaved) or failed to start: the
			// error says which; the next cold start tries saving again.
			return err
		}
		if snap.Dir == "" {
			return nil // saving failed: the booted guest runs on
		}
		return a.restoreOrBoot(ctx, pb, store, snap, name, dir, out, facts.Qemu, env, time.Now())
	}
	return a.plainStart(ctx, name, dir)
}

// plainStart boots: no snapshot hook left over.
func (a *Agent) plainStart(ctx context.Context, name, dir string) error {
	if err := vmsnap.RemoveHook(dir); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	return a.o.Backend.Start(ctx, name)
}

func (a *Agent) removeSnapshot(store vmsnap.Store, out, qemu string) {
	if qemu == "" {
		return
	}
	if err := store.Remove(vmsnap.Key(out, qemu)); err != nil {
		a.log.Warn("snapshot: cannot remove a refused snapshot", "runner", out, "err", err)
	}
}

// restoreOrBoot restores snap into a new runner of name and gives the copy
// the instance's identity (env); on any failure it boots fresh (and removes
// a snapshot that is bad). begin is when the start began, for the log.
func (a *Agent) restoreOrBoot(ctx context.Context, pb *ProcessBackend, store vmsnap.Store, snap vmsnap.Snapshot,
	name, dir, out, qemu string, env netEnv, begin time.Time) error {
	if err := vmsnap.WriteHook(dir, vmsnap.RestoreHook(snap)); err != nil {
		a.log.Warn("snapshot: cannot write the restore hook; booting", "vm", name, "err", err)
		return a.plainStart(ctx, name, dir)
	}
	start := time.Now()
	var (
		timing         vmsnap.RestoreTiming
		spawned, ended time.Time
		hello, answer  time.Duration
		guest          vmsnap.GuestIdentity
	)
	// A runner the restore pool started ahead for this instance, with the
	// snapshot restored into it, skips the spawn, qemu's start-up, the
	// load and the guest's first run of a request's code (its warm-up).
	ahead := a.pool.take(ctx, name, out, env.Tap, snap)
	adopted := false
	err := pb.startThen(ctx, name, ahead, func(ctx context.Context) error {
		spawned = time.Now()
		var err error
		// The runner taken from the pool when the backend adopted it (else
		// killed, and this one spawned: its PID is not the pool's).
		adopted = ahead != nil && pb.runs(name, ahead.h.id.PID)
		var open *vmsnap.IdentityConn
		if adopted && ahead.restored {
			open = ahead.takeIdent()
		} else if timing, err = vmsnap.Restore(ctx, filepath.Join(dir, "qmp.sock"), snap); err != nil {
			return err
		}
		if hello, answer, guest, err = identifyGuest(ctx, dir, env, open); err != nil {
			return fmt.Errorf("restored %s from snapshot %s, but the guest did not take its identity: %w", name, snap.Dir, err)
		}
		// qemu's own announcements follow the load (50–450 ms after it);
		// on a loaded host the identity may come after all of them, and
		// until the host learns the new address it reaches the guest only
		// once its DHCP client runs, seconds later (seen with guests
		// restored long before their identity).
		if err := vmsnap.Announce(ctx, filepath.Join(dir, "qmp.sock")); err != nil {
			a.log.Warn("snapshot: cannot announce the restored guest's new identity; the network learns it later", "vm", name, "err", err)
		}
		ended = time.Now()
		return nil
	})
	if herr := vmsnap.RemoveHook(dir); herr != nil && err == nil {
		// A crash restart would wait for a load: say so, it runs now.
		a.log.Warn("snapshot: cannot remove the restore hook; a crash restart of this instance would hang", "vm", name, "err", herr)
	}
	if err == nil {
		// Where the time went, from the start operation to the guest's
		// acknowledgement: planning (store, runner, network.env), the
		// runner's spawn, qemu's start, the load, cont, the guest's hello
		// and its re-identification; then the hook's removal.
		ms := func(d time.Duration) string { return d.Round(100 * time.Microsecond).String() }
		addr := "-"
		if guest.Addr.IsValid() {
			addr = guest.Addr.String()
		}
		a.log.Info("restored from snapshot", "vm", name, "snapshot", snap.Dir, "took", time.Since(begin).Round(time.Millisecond),
			"plan", ms(start.Sub(begin)), "spawn", ms(spawned.Sub(start)), "started_ahead", adopted, "verify", ms(timing.Verify),
			"qemu_start", ms(timing.Connect), "load", ms(timing.Load), "cont", ms(timing.Resume),
			"hello", ms(hello), "identity", ms(answer), "identity_in_guest", ms(guest.Took), "after", ms(time.Since(ended)),
			"mac", guest.MAC, "host", guest.Hostname, "addr", addr)
		a.o.Metrics.ObserveRestore(time.Since(begin), adopted, nil)
		return nil
	}
	if ctx.Err() != nil {
		return err
	}
	a.o.Metrics.ObserveRestore(time.Since(begin), adopted, err)
	a.log.Warn("restoring from snapshot failed; booting fresh", "vm", name, "err", err, "console", LogPath(a.o.StateDir, name))
	if dropAfterRestore(err) {
		a.removeSnapshot(store, out, qemu)
	}
	return a.plainStart(ctx, name, dir)
}

// saveFirst boots name with its RAM in a pending snapshot, waits until its
// health check passes, freezes the guest through its identity channel,
// saves it (qemu quits) and publishes the snapshot. A failed save leaves
// the guest running (given its identity back when it was frozen) and
// returns an empty snapshot; an error means the instance does not run.
func (a *Agent) saveFirst(ctx context.Context, pb *ProcessBackend, store vmsnap.Store, name, dir, out string,
	target probeTarget, env netEnv) (vmsnap.Snapshot, error) {
	pending, err := store.Begin()
	if err != nil {
		a.log.Warn("snapshot: cannot make a pending snapshot; booting", "vm", name, "err", err)
		return vmsnap.Snapshot{}, a.plainStart(ctx, name, dir)
	}
	abort := func() {
		if err := store.Abort(pending); err != nil {
			a.log.Warn("snapshot: cannot remove a pending snapshot", "dir", pending, "err", err)
		}
	}
	if err := vmsnap.WriteHook(dir, vmsnap.SaveHook(pending)); err != nil {
		abort()
		a.log.Warn("snapshot: cannot write the save hook; booting", "vm", name, "err", err)
		return vmsnap.Snapshot{}, a.plainStart(ctx, name, dir)
	}
	start := time.Now()
	if err := a.o.Backend.Start(ctx, name); err != nil {
		abort()
		_ = vmsnap.RemoveHook(dir)
		return vmsnap.Snapshot{}, err
	}
	// The runner reads the hook when it starts, which may be after Start
	// returned: it is removed once the guest is up (or the save given up),
	// so that a crash restart after that boots plainly.
	fail := func(what string, err error) (vmsnap.Snapshot, error) {
		_ = vmsnap.RemoveHook(dir)
		abort()
		if ctx.Err() != nil {
			return vmsnap.Snapshot{}, ctx.Err()
		}
		a.log.Warn("snapshot: "+what+"; the booted instance runs on unsaved", "vm", name, "err", err)
		return vmsnap.Snapshot{}, nil
	}
	if err := a.waitHealthy(ctx, name, target); err != nil {
		return fail("the guest to save did not become ready", err)
	}
	booted := time.Since(start)
	_ = vmsnap.RemoveHook(dir)
	if err := freeze(ctx, dir); err != nil {
		// Unfrozen, its copies would keep its MAC and address.
		return fail("the guest did not freeze through its identity channel, so its copies could not take their own identities", err)
	}
	var m vmsnap.Manifest
	err = pb.stopBy(ctx, name, func(ctx context.Context) error {
		var err error
		m, err = vmsnap.Save(ctx, filepath.Join(dir, "qmp.sock"), pending, vmsnap.SaveOptions{RunnerOut: out, Identity: vmsnap.IdentityProtocol})
		return err
	})
	if err != nil {
		// The guest runs on, frozen: give it its own identity back.
		if _, _, _, ierr := identifyGuest(ctx, dir, env, nil); ierr != nil {
			a.log.Warn("snapshot: the frozen guest did not take its identity back after the failed save; killing it", "vm", name, "err", ierr)
			abort()
			if kerr := a.o.Backend.Kill(ctx, name); kerr != nil {
				return vmsnap.Snapshot{}, fmt.Errorf("start %s: the save failed (%w) and the frozen guest could not be killed: %w", name, err, kerr)
			}
			return vmsnap.Snapshot{}, fmt.Errorf("start %s: the save failed (%w) and the frozen guest did not take its identity back (%w): killed, the next start boots", name, err, ierr)
		}
		return fail("saving failed", err)
	}
	snap, err := store.Publish(pending)
	if errors.Is(err, os.ErrExist) {
		// Another instance of this runner saved first: use that one.
		abort()
		if snap, err = store.Open(out, m.Qemu.Path); err == nil {
			return snap, nil
		}
	}
	if err != nil {
		abort()
		a.log.Warn("snapshot: publishing failed; booting", "vm", name, "err", err)
		return vmsnap.Snapshot{}, a.plainStart(ctx, name, dir)
	}
	a.log.Info("saved snapshot", "vm", name, "snapshot", snap.Dir, "boot_to_ready", booted.Round(time.Millisecond),
		"save_ms", m.Migration.TotalTimeMs, "state_bytes", m.State.Bytes)
	return snap, nil
}

// waitHealthy probes name with its health check until one probe passes.
// Polling is the only way to know: the guest says nothing when it is up.
func (a *Agent) waitHealthy(ctx context.Context, name string, t probeTarget) error {
	ctx, cancel := context.WithTimeout(ctx, snapshotBoot)
	defer cancel()
	every := min(t.check.Interval, 100*time.Millisecond)
	for {
		err := a.probes.probe(ctx, name, t)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no passing health check within %s: %w (last: %v)", snapshotBoot, ctx.Err(), err)
		case <-time.After(every):
		}
	}
}
