package nodeagent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
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
//     passes, then vmsnap.Save stops it and quits qemu (the backend takes
//     that exit as a stop, not a crash), the snapshot is published, and the
//     instance is started again by a restore. So the first cold start costs
//     a boot, a save and a restore; the instance is reported starting all
//     along, so no request reaches the guest before it was saved.
//   - restore: the runner starts in restore mode (qemu waits on `-incoming
//     defer`) and vmsnap.Restore loads the snapshot over its QMP socket,
//     all under the unit's operation lock, so a qemu that exits on a failed
//     load is not restarted as a crash. Any failure kills that qemu and
//     boots fresh; a snapshot refused as mismatched or corrupt is removed.
//   - boot: anything else (no health check to tell readiness, a runner
//     whose qemu binary cannot be found, the systemd backend, a restore
//     into another network identity): a plain start.
//
// Identity: a restored guest keeps the MAC and address it had when it was
// saved (and its boot id, random state and a clock that stood still). The
// snapshot records the identity of the instance it was saved from
// (snapshotIdentityFile: network.env's MAC and address), and a restore is
// planned only into an instance of that same identity: fn-NAME-0 saved on a
// node restores fn-NAME-0 on that node, while fn-NAME-1 there boots. So at
// most one restored copy runs per node and per runner, and it always holds
// its own committed address. Giving copies new identities (a guest hook
// that renews DHCP with a new MAC) is not built.
//
// snapshot.env is removed after every start: a crash restart by the backend
// (which knows nothing of snapshots) must boot, not wait for a load nobody
// sends.

// SnapshotDir is the node's snapshot store under the state directory
// (STATE/.snapshots): a name no VM instance can have, so the backends'
// adoption, which looks for STATE/NAME/pid, passes over it.
const SnapshotDir = ".snapshots"

// snapshotIdentityFile, in a snapshot's directory beside vmsnap's files,
// is the network identity of the instance it was saved from.
const snapshotIdentityFile = "identity.json"

// netIdentity is what a restored guest keeps of the saved one's network:
// the NIC's MAC and the address it configured. Empty without cluster
// networking (user-mode NICs have no identity to clash).
type netIdentity struct {
	MAC string `json:"mac"`
	IP  string `json:"ip"`
}

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
	// Saved is the snapshot's recorded identity (when Open is nil and the
	// identity file was read), Now the instance's (network.env).
	Saved, Now netIdentity
	// SavedKnown: Saved was read.
	SavedKnown bool
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
	case !f.SavedKnown:
		// Without the identity a restore could bring up a second copy of
		// another instance's address: boot, and let the next save (after
		// the snapshot is removed) record it.
		return snapshotPlan{Mode: snapBoot, Remove: true, Why: "the snapshot does not record the identity it was saved with"}
	case f.Saved != f.Now:
		return snapshotPlan{Mode: snapBoot, Why: fmt.Sprintf("the snapshot was saved as MAC %s address %s, this instance is MAC %s address %s: a restore would keep the saved identity",
			orDefault(f.Saved.MAC, "-"), orDefault(f.Saved.IP, "-"), orDefault(f.Now.MAC, "-"), orDefault(f.Now.IP, "-"))}
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

// readNetIdentity reads the MAC and address of network.env in dir (the
// network component writes it before a start); none without the file.
func readNetIdentity(dir string) (netIdentity, error) {
	b, err := os.ReadFile(filepath.Join(dir, "network.env"))
	if errors.Is(err, os.ErrNotExist) {
		return netIdentity{}, nil
	}
	if err != nil {
		return netIdentity{}, err
	}
	return parseNetIdentity(b), nil
}

// parseNetIdentity takes BLIXARD_MAC and BLIXARD_IP of network.env's
// KEY=VALUE lines.
func parseNetIdentity(b []byte) netIdentity {
	var id netIdentity
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		v = strings.Trim(v, `"'`)
		switch k {
		case "BLIXARD_MAC":
			id.MAC = strings.ToLower(v)
		case "BLIXARD_IP":
			id.IP = v
		}
	}
	return id
}

func readSavedIdentity(snapDir string) (netIdentity, error) {
	b, err := os.ReadFile(filepath.Join(snapDir, snapshotIdentityFile))
	if err != nil {
		return netIdentity{}, err
	}
	var id netIdentity
	if err := json.Unmarshal(b, &id); err != nil {
		return netIdentity{}, fmt.Errorf("%s: %w", filepath.Join(snapDir, snapshotIdentityFile), err)
	}
	return id, nil
}

// snapshotBoot is the bound on a save-mode guest becoming ready.
const snapshotBoot = 3 * time.Minute

// snapshotStart is ActStart of a snapshot function's instance (see the
// comment at the top of this file).
func (a *Agent) snapshotStart(ctx context.Context, act Action) error {
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
	if facts.Now, err = readNetIdentity(dir); err != nil {
		return fmt.Errorf("snapshot start of %s: %w", name, err)
	}
	var snap vmsnap.Snapshot
	if facts.Qemu != "" {
		snap, facts.Open = store.Open(out, facts.Qemu)
		if facts.Open == nil {
			if id, err := readSavedIdentity(snap.Dir); err == nil {
				facts.Saved, facts.SavedKnown = id, true
			}
		}
	}
	plan := planSnapshotStart(facts)
	a.log.Info("snapshot function start", "vm", name, "mode", plan.Mode.String(), "why", plan.Why)
	if plan.Remove {
		a.removeSnapshot(store, out, facts.Qemu)
	}
	switch plan.Mode {
	case snapRestore:
		return a.restoreOrBoot(ctx, pb, store, snap, name, dir, out, facts.Qemu)
	case snapSave:
		snap, err := a.saveFirst(ctx, pb, store, name, dir, out, target, facts.Now)
		if err != nil {
			// The instance runs (booted, unsaved) or failed to start: the
			// error says which; the next cold start tries saving again.
			return err
		}
		if snap.Dir == "" {
			return nil // saving failed: the booted guest runs on
		}
		return a.restoreOrBoot(ctx, pb, store, snap, name, dir, out, facts.Qemu)
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

// restoreOrBoot restores snap into a new runner of name; on any failure it
// boots fresh (and removes a snapshot that is bad).
func (a *Agent) restoreOrBoot(ctx context.Context, pb *ProcessBackend, store vmsnap.Store, snap vmsnap.Snapshot,
	name, dir, out, qemu string) error {
	if err := vmsnap.WriteHook(dir, vmsnap.RestoreHook(snap)); err != nil {
		a.log.Warn("snapshot: cannot write the restore hook; booting", "vm", name, "err", err)
		return a.plainStart(ctx, name, dir)
	}
	start := time.Now()
	var timing vmsnap.RestoreTiming
	err := pb.startThen(ctx, name, func(ctx context.Context) error {
		var err error
		timing, err = vmsnap.Restore(ctx, filepath.Join(dir, "qmp.sock"), snap)
		return err
	})
	if herr := vmsnap.RemoveHook(dir); herr != nil && err == nil {
		// A crash restart would wait for a load: say so, it runs now.
		a.log.Warn("snapshot: cannot remove the restore hook; a crash restart of this instance would hang", "vm", name, "err", herr)
	}
	if err == nil {
		a.log.Info("restored from snapshot", "vm", name, "snapshot", snap.Dir, "took", time.Since(start).Round(time.Millisecond),
			"qemu_start", timing.Connect.Round(time.Millisecond), "load", timing.Load.Round(time.Millisecond))
		return nil
	}
	if ctx.Err() != nil {
		return err
	}
	a.log.Warn("restoring from snapshot failed; booting fresh", "vm", name, "err", err, "console", LogPath(a.o.StateDir, name))
	if dropAfterRestore(err) {
		a.removeSnapshot(store, out, qemu)
	}
	return a.plainStart(ctx, name, dir)
}

// saveFirst boots name with its RAM in a pending snapshot, waits until its
// health check passes, saves it (qemu quits) and publishes the snapshot
// with the instance's identity. A failed save leaves the guest running and
// returns an empty snapshot; an error means the instance does not run.
func (a *Agent) saveFirst(ctx context.Context, pb *ProcessBackend, store vmsnap.Store, name, dir, out string,
	target probeTarget, id netIdentity) (vmsnap.Snapshot, error) {
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
	// The hook is read at qemu's start: gone now, a crash restart boots
	// with its RAM in memory and the save below fails (and is aborted).
	_ = vmsnap.RemoveHook(dir)
	fail := func(what string, err error) (vmsnap.Snapshot, error) {
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
	var m vmsnap.Manifest
	err = pb.stopBy(ctx, name, func(ctx context.Context) error {
		var err error
		m, err = vmsnap.Save(ctx, filepath.Join(dir, "qmp.sock"), pending, vmsnap.SaveOptions{RunnerOut: out})
		return err
	})
	if err != nil {
		return fail("saving failed", err)
	}
	b, err := json.Marshal(id)
	if err == nil {
		err = os.WriteFile(filepath.Join(pending, snapshotIdentityFile), b, 0o644)
	}
	if err != nil {
		abort()
		// The guest is gone (Save quit it): restart it by booting.
		a.log.Warn("snapshot: cannot record the identity; booting", "vm", name, "err", err)
		return vmsnap.Snapshot{}, a.plainStart(ctx, name, dir)
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

// startThen starts unit name and runs then (a restore) under the unit's
// operation lock, with the runner's exit counted as a stop, not a crash:
// a qemu that exits on a failed load must not be restarted by the backend
// with the restore hook. When then fails the runner is killed and the unit
// ends stopped; the error is then's.
func (b *ProcessBackend) startThen(ctx context.Context, name string, then func(context.Context) error) error {
	if err := b.waitReady(ctx); err != nil {
		return err
	}
	u := b.unit(name)
	u.op.Lock()
	defer u.op.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	running := u.h != nil
	u.stopping = !running
	b.mu.Unlock()
	if running {
		return nil // as Start: it runs already
	}
	defer func() {
		b.mu.Lock()
		u.stopping = false
		b.mu.Unlock()
	}()
	if err := b.startOpLocked(u); err != nil {
		return err
	}
	err := then(ctx)
	if err == nil {
		return nil
	}
	b.mu.Lock()
	h, exited := u.h, u.exited
	if h != nil {
		_ = h.signal(syscall.SIGKILL, true)
	}
	b.mu.Unlock()
	if h != nil {
		select {
		case <-exited:
		case <-ctx.Done():
		}
	}
	b.clearStoppedLocked(u)
	return err
}

// stopBy stops unit name by running stop (a save that quits qemu) under
// the unit's operation lock and waits for the runner to exit: that exit is
// a stop, not a crash. When stop fails the runner runs on.
func (b *ProcessBackend) stopBy(ctx context.Context, name string, stop func(context.Context) error) error {
	if err := b.waitReady(ctx); err != nil {
		return err
	}
	u := b.unit(name)
	u.op.Lock()
	defer u.op.Unlock()
	b.mu.Lock()
	h, exited := u.h, u.exited
	if h == nil {
		b.mu.Unlock()
		return fmt.Errorf("stop %s: the runner does not run", name)
	}
	u.stopping = true
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		u.stopping = false
		b.mu.Unlock()
	}()
	if err := stop(ctx); err != nil {
		return err
	}
	select {
	case <-exited:
	case <-ctx.Done():
		return fmt.Errorf("stop %s: runner (pid %d) still running after the save quit qemu: %w", name, h.id.PID, ctx.Err())
	}
	b.clearStoppedLocked(u)
	return nil
}

// clearStoppedLocked records u stopped after its runner exited (as
// stopOpLocked does). u.op must be held.
func (b *ProcessBackend) clearStoppedLocked(u *procUnit) {
	b.mu.Lock()
	gone := u.h == nil
	if gone {
		u.booted = ""
		u.restarts, u.backoff = 0, 0
		u.since = b.o.Clock.Now()
	}
	b.mu.Unlock()
	if !gone {
		return
	}
	dir := filepath.Join(b.o.StateDir, u.name)
	for _, p := range []string{filepath.Join(dir, "booted"), filepath.Join(dir, "pid")} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			b.log.Warn("cannot remove a stopped runner's record", "vm", u.name, "path", p, "err", err)
		}
	}
}
