package vmsnap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// SaveOptions are the inputs of Save that qemu cannot tell.
type SaveOptions struct {
	// RunnerOut is the out path of the runner the VM runs (the agent's
	// STATE/NAME/booted). Required.
	RunnerOut string
	// Now is the clock for the manifest's time (nil: time.Now).
	Now func() time.Time
	// Identity is recorded as Manifest.Identity: IdentityProtocol when the
	// caller froze the guest through the identity channel (IdentityConn.
	// Freeze) right before the save, "" otherwise.
	Identity string
}

// backend is one memory backend qemu has (QOM /objects/ID).
type backend struct {
	ID      string
	Type    string // memory-backend-file, -ram, -memfd
	Bytes   int64
	Shared  bool
	MemPath string // memory-backend-file only
}

// ramLayout is the machine's memory as QOM shows it.
type ramLayout struct {
	// Machine is the id of the machine's RAM backend.
	Machine  string
	Backends []backend
}

func (r ramLayout) machineBackend() (backend, error) {
	for _, b := range r.Backends {
		if b.ID == r.Machine {
			return b, nil
		}
	}
	return backend{}, fmt.Errorf("qemu's machine uses memory backend %q, which /objects does not list", r.Machine)
}

// savePlan is where the RAM goes in a save.
type savePlan struct {
	ram          backend
	ignoreShared bool
	memFile      string // MemFile or ""
	why          string
}

// planSave decides whether a save may leave the RAM out of the stream: only
// when the machine's RAM is a shared file at dir/mem (the pending
// snapshot's mem file) and no other memory is shared, since x-ignore-shared
// leaves out every shared backend, and a shared memfd or a file elsewhere
// would be lost. Otherwise the RAM goes into the stream, which is larger
// and slower to load but restores the same guest.
func planSave(r ramLayout, dir string) (savePlan, error) {
	ram, err := r.machineBackend()
	if err != nil {
		return savePlan{}, err
	}
	p := savePlan{ram: ram}
	want := filepath.Join(dir, MemFile)
	switch {
	case ram.Type != "memory-backend-file":
		p.why = fmt.Sprintf("the RAM is a %s, not a file: it is saved in the stream", ram.Type)
	case !ram.Shared:
		p.why = fmt.Sprintf("the RAM file %s is private (share=off): it is saved in the stream", ram.MemPath)
	case filepath.Clean(ram.MemPath) != want:
		p.why = fmt.Sprintf("the RAM file %s is not the snapshot's %s: it is saved in the stream", ram.MemPath, want)
	default:
		for _, b := range r.Backends {
			if b.ID != ram.ID && b.Shared {
				p.why = fmt.Sprintf("memory backend %s (%s) is shared too, and x-ignore-shared would leave it out: the RAM is saved in the stream", b.ID, b.Type)
				return p, nil
			}
		}
		p.ignoreShared, p.memFile = true, MemFile
		p.why = "the RAM is the shared file " + MemFile + " (x-ignore-shared)"
	}
	return p, nil
}

// Save saves the running VM behind qmpSocket into dir (a pending directory
// from Store.Begin) and ends that qemu:
//
//  1. it reads what to record: qemu's binary and command line (from the
//     socket's peer process), version, machine, vCPUs, accelerator and
//     memory backends;
//  2. it stops the guest and migrates it into dir/state (a descriptor
//     handed to qemu over QMP: `migrate fd:…`), with x-ignore-shared when
//     the RAM is the shared file dir/mem (planSave), and waits until qemu
//     reports the migration completed;
//  3. it writes dir/manifest.json (runner, qemu binary with size, time and
//     SHA-256, arguments, RAM, state size and SHA-256, time, guest);
//  4. it quits qemu: with the RAM in dir/mem a running guest would change
//     the snapshot under every later restore. The caller waits for its
//     qemu process to exit, then publishes dir (Store.Publish).
//
// When the save fails the guest runs on as before (step 2 is undone with
// `cont`) and dir may hold a partial state: Abort it.
func Save(ctx context.Context, qmpSocket, dir string, o SaveOptions) (Manifest, error) {
	if o.RunnerOut == "" {
		return Manifest{}, errors.New("saving a snapshot: SaveOptions.RunnerOut is empty: pass the runner the VM runs")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return Manifest{}, err
	}
	c, err := Dial(ctx, qmpSocket)
	if err != nil {
		return Manifest{}, fmt.Errorf("saving a snapshot: %w", err)
	}
	defer c.Close()
	fail := func(step string, err error) (Manifest, error) {
		return Manifest{}, fmt.Errorf("saving a snapshot of the VM at %s into %s: %s: %w", qmpSocket, dir, step, err)
	}

	// 1. What to record.
	exe, args, err := qemuProcess(c.PID())
	if err != nil {
		return fail("finding qemu's binary", err)
	}
	bin, err := statBinary(exe, true)
	if err != nil {
		return fail("identifying qemu's binary", err)
	}
	bin.Version = c.Version().String()
	var status struct {
		Status string `json:"status"`
	}
	if err := c.Execute(ctx, "query-status", nil, &status); err != nil {
		return fail("reading the VM's status", err)
	}
	if status.Status != "running" && status.Status != "paused" {
		return fail("checking the VM's status", fmt.Errorf("the VM is %q; only a running or paused VM can be saved", status.Status))
	}
	guest, err := guestInfo(ctx, c)
	if err != nil {
		return fail("reading the guest's description", err)
	}
	guest.Status = status.Status
	layout, err := readRAM(ctx, c)
	if err != nil {
		return fail("reading the memory backends", err)
	}
	plan, err := planSave(layout, dir)
	if err != nil {
		return fail("deciding where the RAM goes", err)
	}

	// 2. Stop and migrate; undo the stop on failure.
	if status.Status == "running" {
		if err := c.Execute(ctx, "stop", nil, nil); err != nil {
			return fail("stopping the guest", err)
		}
	}
	undo := func(step string, err error) (Manifest, error) {
		if status.Status == "running" {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if cerr := c.Execute(uctx, "cont", nil, nil); cerr != nil {
				err = fmt.Errorf("%w (and the guest stays paused: %w)", err, cerr)
			}
		}
		return fail(step, err)
	}
	// A stopped guest has nothing to converge, so no bandwidth limit is
	// useful; qemu's default (128 MiB/s) would only slow a stream with RAM.
	if err := c.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}, nil); err != nil {
		return undo("lifting the migration bandwidth limit", err)
	}
	if err := setCapabilities(ctx, c, plan.ignoreShared); err != nil {
		return undo("setting the migration capabilities", err)
	}
	// qemu writes the stream into a descriptor of the state file it gets
	// over QMP. Not `exec:cat > STATE`: when that migration ends qemu
	// closes the pipe and SIGTERMs cat unless it already exited, which
	// loses whatever cat had not written yet (a state of 0 bytes, seen
	// here under load).
	statePath := filepath.Join(dir, StateFile)
	f, err := os.OpenFile(statePath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return undo("creating the state file", err)
	}
	err = c.SendFile(ctx, fdName, f)
	f.Close()
	if err != nil {
		return undo("handing qemu the state file", err)
	}
	if err := c.Execute(ctx, "migrate", map[string]any{"uri": "fd:" + fdName}, nil); err != nil {
		return undo("starting the migration", err)
	}
	if err := waitMigration(ctx, c); err != nil {
		return undo("migrating to "+statePath, err)
	}
	var mig struct {
		TotalTime int64 `json:"total-time"`
		RAM       struct {
			Transferred int64 `json:"transferred"`
		} `json:"ram"`
	}
	if err := c.Execute(ctx, "query-migrate", nil, &mig); err != nil {
		return undo("reading the migration's statistics", err)
	}

	// 3. The manifest.
	fi, err := os.Stat(statePath)
	if err != nil {
		return undo("checking the state file", err)
	}
	sum, err := hashFile(statePath)
	if err != nil {
		return undo("hashing the state file", err)
	}
	m := Manifest{
		Format:    Format,
		Key:       Key(o.RunnerOut, bin.Path),
		RunnerOut: o.RunnerOut,
		Qemu:      bin,
		Args:      args,
		RAM: RAM{Backend: plan.ram.ID, Type: plan.ram.Type, Bytes: plan.ram.Bytes, Shared: plan.ram.Shared,
			File: plan.memFile, Why: plan.why},
		IgnoreShared: plan.ignoreShared,
		State:        File{Bytes: fi.Size(), SHA256: sum},
		SavedAt:      o.Now().UTC(),
		Guest:        guest,
		Migration:    Migration{TotalTimeMs: mig.TotalTime, TransferredBytes: mig.RAM.Transferred},
		Identity:     o.Identity,
	}
	if err := writeManifest(dir, m); err != nil {
		return undo("writing the manifest", err)
	}

	// 4. End this qemu. It may close the socket before its reply arrives.
	if err := c.Execute(ctx, "quit", nil, nil); err != nil && !errors.Is(err, ErrClosed) {
		return fail("quitting qemu after the save (the snapshot is complete; stop qemu before publishing it)", err)
	}
	return m, nil
}

// setCapabilities turns on migration events (waitMigration follows them)
// and sets x-ignore-shared as the snapshot needs it.
func setCapabilities(ctx context.Context, c *Client, ignoreShared bool) error {
	type capability struct {
		Capability string `json:"capability"`
		State      bool   `json:"state"`
	}
	return c.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": []capability{
		{"events", true}, {"x-ignore-shared", ignoreShared},
	}}, nil)
}

// fdName is the name under which qemu holds the state file's descriptor.
const fdName = "vmsnap-state"

// errMigration is a migration qemu reported failed or cancelled.
var errMigration = errors.New("the migration ended unsuccessfully")

// waitMigration waits for the MIGRATION event that ends the migration.
func waitMigration(ctx context.Context, c *Client) error {
	e, err := c.WaitEvent(ctx, func(e Event) bool {
		if e.Name != "MIGRATION" {
			return false
		}
		switch migrationStatus(e) {
		case "completed", "failed", "cancelled":
			return true
		}
		return false
	})
	if err != nil {
		return err
	}
	if s := migrationStatus(e); s != "completed" {
		// The source side has qemu's reason; a failed incoming qemu 7.2
		// exits instead, with the reason on its stderr.
		var q struct {
			ErrorDesc string `json:"error-desc"`
		}
		if qerr := c.Execute(ctx, "query-migrate", nil, &q); qerr == nil && q.ErrorDesc != "" {
			return fmt.Errorf("%w: %s: %s", errMigration, s, q.ErrorDesc)
		}
		return fmt.Errorf("%w: %s (qemu prints why on its stderr: the runner's console log)", errMigration, s)
	}
	return nil
}

func migrationStatus(e Event) string {
	var d struct {
		Status string `json:"status"`
	}
	_ = json.Unmarshal(e.Data, &d)
	return d.Status
}

// guestInfo asks qemu what it runs.
func guestInfo(ctx context.Context, c *Client) (Guest, error) {
	var g Guest
	var name struct {
		Name string `json:"name"`
	}
	if err := c.Execute(ctx, "query-name", nil, &name); err != nil {
		return g, err
	}
	g.Name = name.Name
	if err := c.Execute(ctx, "qom-get", map[string]any{"path": "/machine", "property": "type"}, &g.Machine); err != nil {
		return g, err
	}
	var cpus []json.RawMessage
	if err := c.Execute(ctx, "query-cpus-fast", nil, &cpus); err != nil {
		return g, err
	}
	g.VCPUs = len(cpus)
	var kvm struct {
		Enabled bool `json:"enabled"`
	}
	if err := c.Execute(ctx, "query-kvm", nil, &kvm); err != nil {
		return g, err
	}
	g.Accel = "tcg"
	if kvm.Enabled {
		g.Accel = "kvm"
	}
	return g, nil
}

// readRAM lists qemu's memory backends (QOM children of /objects) and which
// one is the machine's RAM.
func readRAM(ctx context.Context, c *Client) (ramLayout, error) {
	var r ramLayout
	var path string
	if err := c.Execute(ctx, "qom-get", map[string]any{"path": "/machine", "property": "memory-backend"}, &path); err != nil {
		return r, err
	}
	// qemu 7.2 answers the backend's QOM path; older ones its id.
	r.Machine = strings.TrimPrefix(path, "/objects/")
	var children []struct {
		Name string `json:"name"`
		Type string `json:"type"`
	}
	if err := c.Execute(ctx, "qom-list", map[string]any{"path": "/objects"}, &children); err != nil {
		return r, err
	}
	for _, ch := range children {
		t, ok := strings.CutPrefix(ch.Type, "child<")
		if !ok || !strings.HasPrefix(t, "memory-backend-") {
			continue
		}
		b := backend{ID: ch.Name, Type: strings.TrimSuffix(t, ">")}
		obj := "/objects/" + ch.Name
		if err := c.Execute(ctx, "qom-get", map[string]any{"path": obj, "property": "share"}, &b.Shared); err != nil {
			return r, err
		}
		var size uint64
		if err := c.Execute(ctx, "qom-get", map[string]any{"path": obj, "property": "size"}, &size); err != nil {
			return r, err
		}
		b.Bytes = int64(size)
		if b.Type == "memory-backend-file" {
			if err := c.Execute(ctx, "qom-get", map[string]any{"path": obj, "property": "mem-path"}, &b.MemPath); err != nil {
				return r, err
			}
		}
		r.Backends = append(r.Backends, b)
	}
	return r, nil
}

// qemuProcess reads the binary and command line of qemu's process.
func qemuProcess(pid int) (exe string, args []string, err error) {
	if pid <= 0 {
		return "", nil, errors.New("the kernel did not tell the process behind the QMP socket (SO_PEERCRED)")
	}
	proc := "/proc/" + strconv.Itoa(pid)
	exe, err = os.Readlink(proc + "/exe")
	if err != nil {
		return "", nil, fmt.Errorf("qemu's binary (%s/exe): %w (reading another user's process needs root)", proc, err)
	}
	if strings.HasSuffix(exe, " (deleted)") {
		return "", nil, fmt.Errorf("qemu (pid %d) runs %s, which was replaced since it started: its identity is unknown", pid, exe)
	}
	b, err := os.ReadFile(proc + "/cmdline")
	if err != nil {
		return "", nil, fmt.Errorf("qemu's command line: %w", err)
	}
	return exe, strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00"), nil
}
