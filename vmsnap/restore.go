package vmsnap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// RestoreTiming is where a restore's time went.
type RestoreTiming struct {
	// Verify is checking the state file against the manifest's SHA-256.
	Verify time.Duration
	// Connect is waiting for qemu's QMP socket and checking the qemu: when
	// Restore is called right after qemu was started, this is qemu's
	// start-up.
	Connect time.Duration
	// Load is from migrate-incoming until qemu loaded the state.
	Load time.Duration
	// Resume is the `cont` that lets the guest run.
	Resume time.Duration
}

// Total is the whole restore.
func (t RestoreTiming) Total() time.Duration { return t.Verify + t.Connect + t.Load + t.Resume }

// Restore loads snap into the qemu behind qmpSocket, which must have been
// started with RestoreArgs (or RestoreHook) for this snapshot and the
// snapshot's runner, and lets the guest run:
//
//  1. it checks the state file's size and SHA-256 against the manifest
//     (ErrCorrupt), while qemu starts;
//  2. it waits for qemu's QMP socket and checks that this qemu runs the
//     binary the snapshot was saved with (ErrMismatch), waits for an
//     incoming migration (`-incoming defer`) and has its RAM where the
//     snapshot needs it (the mem file, private) (ErrMismatch);
//  3. it sets x-ignore-shared as the save did (qemu 7.2 takes it only over
//     QMP, after `-incoming defer`), hands qemu a descriptor of the state
//     file (QMP getfd; qemu 7.2 has no file: URI) and sends
//     `migrate-incoming fd:…`, and waits until qemu reports the load
//     completed;
//  4. it sends `cont`: a restored VM stays paused until then.
//
// On any error the caller kills that qemu (it waits paused, or it already
// exited: qemu 7.2 exits when a load fails, printing why on its stderr) and
// boots the VM fresh; after ErrCorrupt or ErrMismatch it also removes the
// snapshot.
//
// The restored guest is the saved one: the same MAC, address, boot id,
// random-number state and a clock that stood still since the save. Giving
// each restored copy its own identity is the caller's job, before traffic
// reaches it.
func Restore(ctx context.Context, qmpSocket string, snap Snapshot) (RestoreTiming, error) {
	var t RestoreTiming
	m := snap.Manifest
	fail := func(step string, err error) (RestoreTiming, error) {
		return t, fmt.Errorf("restoring snapshot %s into the qemu at %s: %s: %w", snap.Dir, qmpSocket, step, err)
	}

	// 1.
	start := time.Now()
	sum, err := hashFile(snap.StatePath())
	if err != nil {
		return fail("checking the state file", fmt.Errorf("%w: %w", ErrCorrupt, err))
	}
	if sum != m.State.SHA256 {
		return fail("checking the state file", fmt.Errorf("%w: %s has SHA-256 %s, the manifest says %s: remove the snapshot",
			ErrCorrupt, snap.StatePath(), sum, m.State.SHA256))
	}
	t.Verify = time.Since(start)

	// 2.
	start = time.Now()
	c, err := WaitDial(ctx, qmpSocket)
	if err != nil {
		return fail("connecting", err)
	}
	defer c.Close()
	exe, _, err := qemuProcess(c.PID())
	if err != nil {
		return fail("finding qemu's binary", err)
	}
	if exe != m.Qemu.Path {
		return fail("checking qemu", fmt.Errorf("%w: this qemu runs %s, the snapshot was saved with %s", ErrMismatch, exe, m.Qemu.Path))
	}
	var status struct {
		Status string `json:"status"`
	}
	if err := c.Execute(ctx, "query-status", nil, &status); err != nil {
		return fail("reading the VM's status", err)
	}
	if status.Status != "inmigrate" {
		return fail("checking the VM's status", fmt.Errorf("%w: the VM is %q, not waiting for an incoming migration: start the runner with the restore arguments (RestoreArgs, RestoreHook)",
			ErrMismatch, status.Status))
	}
	layout, err := readRAM(ctx, c)
	if err != nil {
		return fail("reading the memory backends", err)
	}
	if err := checkRestoreRAM(snap, layout); err != nil {
		return fail("checking the RAM", err)
	}
	t.Connect = time.Since(start)

	// 3.
	start = time.Now()
	if err := setCapabilities(ctx, c, m.IgnoreShared); err != nil {
		return fail("setting the migration capabilities", err)
	}
	// The stream comes from a descriptor of the state file handed over
	// QMP, not `exec:cat STATE`: no shell and cat to start, and no child
	// for qemu to reap, which it does by polling every 10 ms. Measured on
	// the bare test VM: load 1.1 ms instead of 6–10 ms.
	f, err := os.Open(snap.StatePath())
	if err != nil {
		return fail("opening the state file", fmt.Errorf("%w: %w", ErrCorrupt, err))
	}
	err = c.SendFile(ctx, fdName, f)
	f.Close()
	if err != nil {
		return fail("handing qemu the state file", err)
	}
	if err := c.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:" + fdName}, nil); err != nil {
		return fail("starting the load", err)
	}
	if err := waitMigration(ctx, c); err != nil {
		// The state passed its checksum, so qemu refused what it says: the
		// snapshot does not fit this qemu or runner, and retrying cannot
		// help. (qemu 7.2 reports the failure and exits; which of the two
		// the client sees first is a race.)
		if errors.Is(err, ErrClosed) || errors.Is(err, errMigration) {
			err = fmt.Errorf("%w: qemu could not load the state and exits (%w): it prints why on its stderr (the runner's console log)", ErrMismatch, err)
		}
		return fail("loading "+snap.StatePath(), err)
	}
	t.Load = time.Since(start)

	// 4.
	start = time.Now()
	if err := c.Execute(ctx, "cont", nil, nil); err != nil {
		return fail("resuming the guest", err)
	}
	t.Resume = time.Since(start)
	return t, nil
}

// checkRestoreRAM checks that the waiting qemu has its RAM where the
// snapshot needs it: with a mem file, that very file, private (share=off:
// a shared mapping would write the guest's changes into the snapshot), of
// the saved size; without one, a backend of the saved name and size for
// the stream to fill. A mismatch would load "successfully" and run a guest
// on the wrong memory, so it is refused before the load.
func checkRestoreRAM(snap Snapshot, r ramLayout) error {
	m := snap.Manifest
	ram, err := r.machineBackend()
	if err != nil {
		return err
	}
	if ram.ID != m.RAM.Backend {
		return fmt.Errorf("%w: the RAM backend is %q, the snapshot's is %q (qemu loads RAM blocks by name)", ErrMismatch, ram.ID, m.RAM.Backend)
	}
	if ram.Bytes != m.RAM.Bytes {
		return fmt.Errorf("%w: the RAM has %d bytes, the snapshot's %d", ErrMismatch, ram.Bytes, m.RAM.Bytes)
	}
	if m.RAM.File == "" {
		return nil
	}
	switch {
	case ram.Type != "memory-backend-file":
		return fmt.Errorf("%w: the RAM is a %s, not the snapshot's file %s: start the runner with RestoreArgs", ErrMismatch, ram.Type, snap.MemPath())
	case filepath.Clean(ram.MemPath) != filepath.Clean(snap.MemPath()):
		return fmt.Errorf("%w: the RAM file is %s, not the snapshot's %s", ErrMismatch, ram.MemPath, snap.MemPath())
	case ram.Shared:
		return fmt.Errorf("%w: the RAM file %s is shared (share=on): the guest would write into the snapshot; restore with share=off", ErrMismatch, ram.MemPath)
	}
	return nil
}

// Announce asks the qemu behind qmpSocket to announce the guest's NICs on
// their networks now (QMP announce-self: qemu's RARP frames with the NIC's
// MAC and, for a guest that negotiated it, the guest's own gratuitous ARPs
// for its addresses), as qemu does by itself right after an incoming
// migration. A copy restored long before it took its identity has had
// those announcements already, with the saved identity.
func Announce(ctx context.Context, qmpSocket string) error {
	c, err := Dial(ctx, qmpSocket)
	if err != nil {
		return err
	}
	defer c.Close()
	// qemu's defaults for the announcements after a migration.
	args := map[string]any{"initial": 50, "max": 550, "rounds": 5, "step": 100}
	if err := c.Execute(ctx, "announce-self", args, nil); err != nil {
		return fmt.Errorf("announcing the guest's NICs: %w", err)
	}
	return nil
}
