package vmsnap

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The tests in this file run the real qemu: a bare microvm machine with no
// kernel (its firmware finds nothing to boot and idles), which starts in
// tens of milliseconds and has everything a save and a restore move: CPU,
// devices, RAM. tests/qemu saves and restores a real guest.

const qemuBinary = "/usr/bin/qemu-system-x86_64"

func requireQemu(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(qemuBinary); err != nil {
		t.Fatalf("%s: %v: run scripts/setup-microvm.sh (as root) to install qemu", qemuBinary, err)
	}
}

// qemuProc is a qemu the test started.
type qemuProc struct {
	cmd    *exec.Cmd
	qmp    string
	stderr *bytes.Buffer
	done   chan error
}

// startQemu starts a kernel-less microvm with extra arguments and its QMP
// socket in dir; the test's cleanup kills it (by PID) and reaps it.
func startQemu(t *testing.T, dir string, extra ...string) *qemuProc {
	t.Helper()
	requireQemu(t)
	qmp := filepath.Join(dir, "qmp.sock")
	args := append([]string{"-M", "microvm", "-accel", "tcg", "-m", "16", "-nodefaults", "-no-user-config",
		"-display", "none", "-qmp", "unix:" + qmp + ",server=on,wait=off"}, extra...)
	p := &qemuProc{cmd: exec.Command(qemuBinary, args...), qmp: qmp, stderr: &bytes.Buffer{}, done: make(chan error, 1)}
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting qemu: %v", err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	})
	return p
}

// exited waits for qemu to exit on its own and returns how.
func (p *qemuProc) exited(t *testing.T) error {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("qemu (pid %d) did not exit within 30s; stderr: %s", p.cmd.Process.Pid, p.stderr)
		return nil
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestQemuQMPClientTalksToARealQemu(t *testing.T) {
	dir := t.TempDir()
	p := startQemu(t, dir)
	ctx := testCtx(t)
	c, err := WaitDial(ctx, p.qmp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	if c.PID() != p.cmd.Process.Pid {
		t.Errorf("PID() = %d, want qemu's %d", c.PID(), p.cmd.Process.Pid)
	}
	if v := c.Version(); v.Major < 7 {
		t.Errorf("greeting version %s, want qemu 7 or newer", v)
	}

	// A refusal carries qemu's class and description.
	err = c.Execute(ctx, "no-such-command", nil, nil)
	var qerr *Error
	if !errors.As(err, &qerr) || qerr.Class != "CommandNotFound" || qerr.Command != "no-such-command" || qerr.Desc == "" {
		t.Fatalf("unknown command: %v, want a CommandNotFound *Error", err)
	}
	if err := c.Execute(ctx, "qom-get", map[string]any{"path": "/machine", "property": "no-such-property"}, nil); !errors.As(err, &qerr) || qerr.Class != "GenericError" {
		t.Errorf("bad property: %v, want a GenericError *Error", err)
	}

	// Events that come with replies are kept for WaitEvent, in order.
	if err := c.Execute(ctx, "stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Execute(ctx, "cont", nil, nil); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, name := range []string{"STOP", "RESUME"} {
		e, err := c.WaitEvent(ctx, func(e Event) bool { return e.Name == name })
		if err != nil {
			t.Fatalf("waiting for %s: %v", name, err)
		}
		if e.Time.IsZero() {
			t.Errorf("%s has no timestamp", name)
		}
		got = append(got, e.Name)
	}
	if strings.Join(got, ",") != "STOP,RESUME" {
		t.Errorf("events %v", got)
	}

	// A wait for an event that does not come ends with its context.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err = c.WaitEvent(short, func(e Event) bool { return e.Name == "NEVER" })
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitEvent after its deadline: %v, want context.DeadlineExceeded", err)
	}
	// The stream may have been cut mid-message: the session refuses more.
	if err := c.Execute(ctx, "query-status", nil, nil); err == nil {
		t.Errorf("Execute after a cancelled call succeeded; want the session refused")
	}

	// quit: qemu answers or hangs up, then exits. (qemu serves one QMP
	// client at a time: the next session starts once this one is closed.)
	c.Close()
	c2, err := Dial(ctx, p.qmp)
	if err != nil {
		t.Fatalf("second session: %v", err)
	}
	defer c2.Close()
	if err := c2.Execute(ctx, "quit", nil, nil); err != nil && !errors.Is(err, ErrClosed) {
		t.Fatalf("quit: %v", err)
	}
	p.exited(t)
	if _, err := c2.WaitEvent(ctx, func(e Event) bool { return e.Name == "NEVER" }); !errors.Is(err, ErrClosed) {
		t.Errorf("WaitEvent after qemu exited: %v, want ErrClosed", err)
	}
}

func TestQemuWaitDialWaitsForTheSocket(t *testing.T) {
	dir := t.TempDir()
	qmp := filepath.Join(dir, "qmp.sock")
	ctx := testCtx(t)
	// A stale socket file nobody listens on is what a runner finds after
	// a crash: WaitDial keeps trying through ECONNREFUSED too.
	if err := os.WriteFile(qmp, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	type result struct {
		c   *Client
		err error
	}
	res := make(chan result, 1)
	go func() {
		c, err := WaitDial(ctx, qmp)
		res <- result{c, err}
	}()
	os.Remove(qmp)
	p := startQemu(t, dir)
	r := <-res
	if r.err != nil {
		t.Fatalf("WaitDial: %v; qemu stderr: %s", r.err, p.stderr)
	}
	r.c.Close()

	// Without a qemu it gives up with its context, saying what it waited for.
	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	_, err := WaitDial(short, filepath.Join(dir, "nobody.sock"))
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "nobody.sock") {
		t.Errorf("WaitDial without qemu: %v", err)
	}
}

// saveBare starts a bare microvm with its RAM in a pending snapshot, saves
// it and publishes the snapshot.
func saveBare(t *testing.T, store Store, runnerOut string) Snapshot {
	t.Helper()
	pending, err := store.Begin()
	if err != nil {
		t.Fatal(err)
	}
	args, err := SaveArgs(filepath.Join(pending, MemFile), 16)
	if err != nil {
		t.Fatal(err)
	}
	p := startQemu(t, t.TempDir(), append(args, "-name", "bare")...)
	ctx := testCtx(t)
	c, err := WaitDial(ctx, p.qmp)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	saved := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	m, err := Save(ctx, p.qmp, pending, SaveOptions{RunnerOut: runnerOut, Now: func() time.Time { return saved }})
	if err != nil {
		t.Fatalf("Save: %v; qemu stderr: %s", err, p.stderr)
	}
	if err := p.exited(t); err != nil {
		t.Errorf("qemu after Save: %v, want a clean exit (quit)", err)
	}
	if !m.IgnoreShared || m.RAM.File != MemFile || m.RAM.Bytes != 16<<20 || m.RAM.Backend != RAMBackend || !m.RAM.Shared {
		t.Errorf("manifest RAM %+v ignoreShared=%v: want the 16 MiB shared file %s left out of the stream", m.RAM, m.IgnoreShared, MemFile)
	}
	if m.Qemu.Path != qemuBinary || m.Qemu.SHA256 == "" || m.Qemu.Size == 0 || !strings.HasPrefix(m.Qemu.Version, "7.") && !strings.HasPrefix(m.Qemu.Version, "8.") {
		t.Errorf("manifest qemu %+v", m.Qemu)
	}
	if m.Guest != (Guest{Name: "bare", Machine: "microvm-machine", VCPUs: 1, Accel: "tcg", Status: "running"}) {
		t.Errorf("manifest guest %+v", m.Guest)
	}
	if !m.SavedAt.Equal(saved) || m.RunnerOut != runnerOut || m.Key != Key(runnerOut, qemuBinary) {
		t.Errorf("manifest %+v", m)
	}
	if len(m.Args) == 0 || m.Args[0] != qemuBinary || !strings.Contains(strings.Join(m.Args, " "), "share=on") {
		t.Errorf("manifest args %q, want qemu's command line", m.Args)
	}
	// x-ignore-shared keeps the stream to devices and a few ROM pages.
	if m.State.Bytes <= 0 || m.State.Bytes > 4<<20 {
		t.Errorf("state of %d bytes; with the RAM left out it should be well under 4 MiB", m.State.Bytes)
	}
	snap, err := store.Publish(pending)
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func TestQemuSaveAndRestoreABareMicroVM(t *testing.T) {
	store := Store{Dir: t.TempDir()}
	const runner = "/nix/store/00000000000000000000000000000000-microvm-bare"
	saveBare(t, store, runner)

	snap, err := store.Open(runner, qemuBinary)
	if err != nil {
		t.Fatal(err)
	}
	restore := func(t *testing.T) *qemuProc {
		args, err := RestoreArgs(snap)
		if err != nil {
			t.Fatal(err)
		}
		p := startQemu(t, t.TempDir(), args...)
		timing, err := Restore(testCtx(t), p.qmp, snap)
		if err != nil {
			t.Fatalf("Restore: %v; qemu stderr: %s", err, p.stderr)
		}
		if timing.Load <= 0 || timing.Connect <= 0 || timing.Total() < timing.Load {
			t.Errorf("timing %+v", timing)
		}
		return p
	}
	for i := range 2 {
		p := restore(t)
		c, err := Dial(testCtx(t), p.qmp)
		if err != nil {
			t.Fatal(err)
		}
		var st struct {
			Status string `json:"status"`
		}
		if err := c.Execute(testCtx(t), "query-status", nil, &st); err != nil || st.Status != "running" {
			t.Errorf("restore %d: status %q, %v; want running", i, st.Status, err)
		}
		c.Close()
	}
	// Restores map the file privately: it is as saved.
	if sum, _ := hashFile(snap.StatePath()); sum != snap.Manifest.State.SHA256 {
		t.Errorf("the state changed under the restores")
	}
}

func TestQemuRestoreRefusesWhatItCannotLoad(t *testing.T) {
	store := Store{Dir: t.TempDir()}
	const runner = "/nix/store/11111111111111111111111111111111-microvm-bare"
	snap := saveBare(t, store, runner)
	restoreArgs, err := RestoreArgs(snap)
	if err != nil {
		t.Fatal(err)
	}
	shared, err := SaveArgs(snap.MemPath(), 16)
	if err != nil {
		t.Fatal(err)
	}

	// A copy of the snapshot whose state stream is damaged in a way only
	// qemu notices (its manifest updated to match, as if saved that way):
	// qemu's load fails and qemu exits.
	broken := Store{Dir: t.TempDir()}
	bdir := filepath.Join(broken.Dir, snap.Manifest.Key)
	if err := os.MkdirAll(bdir, 0o755); err != nil {
		t.Fatal(err)
	}
	state, err := os.ReadFile(snap.StatePath())
	if err != nil {
		t.Fatal(err)
	}
	copy(state[100:], bytes.Repeat([]byte{0xff}, 64)) // inside the first RAM block's name
	if err := os.WriteFile(filepath.Join(bdir, StateFile), state, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(snap.MemPath(), filepath.Join(bdir, MemFile)); err != nil {
		t.Fatal(err)
	}
	bm := snap.Manifest
	bm.State.SHA256, _ = hashFile(filepath.Join(bdir, StateFile))
	if err := writeManifest(bdir, bm); err != nil {
		t.Fatal(err)
	}
	bsnap, err := broken.Open(runner, qemuBinary)
	if err != nil {
		t.Fatal(err)
	}
	bargs, err := RestoreArgs(bsnap)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		args []string
		snap Snapshot
		// corrupt damages the state file before the restore.
		corrupt bool
		want    error
		wantMsg string
		exits   bool
	}{
		{name: "a state file that differs from its manifest is ErrCorrupt before qemu reads it",
			args: restoreArgs, snap: snap, corrupt: true, want: ErrCorrupt, wantMsg: "SHA-256"},
		{name: "a qemu that boots instead of waiting for the state is ErrMismatch",
			args: snap16Args(t, snap), snap: snap, want: ErrMismatch, wantMsg: "not waiting for an incoming migration"},
		{name: "a restore onto the shared file is ErrMismatch (the guest would write into the snapshot)",
			args: append(shared, "-incoming", "defer"), snap: snap, want: ErrMismatch, wantMsg: "share=on"},
		{name: "a stream qemu cannot load makes qemu exit and Restore say so",
			args: bargs, snap: bsnap, want: ErrMismatch, wantMsg: "qemu could not load the state", exits: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.snap
			if tc.corrupt {
				dir := t.TempDir()
				if err := os.WriteFile(filepath.Join(dir, StateFile), append([]byte{}, state...), 0o644); err != nil {
					t.Fatal(err)
				}
				s = Snapshot{Dir: dir, Manifest: snap.Manifest}
			}
			p := startQemu(t, t.TempDir(), tc.args...)
			_, err := Restore(testCtx(t), p.qmp, s)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("Restore: %v\nwant %v with %q", err, tc.want, tc.wantMsg)
			}
			if tc.exits {
				if err := p.exited(t); err == nil {
					t.Errorf("qemu exited cleanly after a failed load; want a failure")
				}
				if !strings.Contains(p.stderr.String(), "load of migration failed") {
					t.Errorf("qemu's stderr %q does not say the load failed", p.stderr)
				}
			}
		})
	}
}

// snap16Args are the RAM arguments of a restore without -incoming defer.
func snap16Args(t *testing.T, snap Snapshot) []string {
	t.Helper()
	args, err := RestoreArgs(snap)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(args); n < 2 || args[n-2] != "-incoming" {
		t.Fatalf("RestoreArgs %q do not end in -incoming defer", args)
	}
	return args[:len(args)-2]
}

func TestQemuSaveKeepsTheGuestRunningWhenItFails(t *testing.T) {
	store := Store{Dir: t.TempDir()}
	pending, err := store.Begin()
	if err != nil {
		t.Fatal(err)
	}
	args, err := SaveArgs(filepath.Join(pending, MemFile), 16)
	if err != nil {
		t.Fatal(err)
	}
	p := startQemu(t, t.TempDir(), args...)
	ctx := testCtx(t)
	c, err := WaitDial(ctx, p.qmp)
	if err != nil {
		t.Fatal(err)
	}
	// QMP serves one client at a time: Save needs the socket.
	c.Close()
	// A full disk: every write of qemu's stream fails with ENOSPC.
	if err := os.Symlink("/dev/full", filepath.Join(pending, StateFile)); err != nil {
		t.Fatal(err)
	}
	_, err = Save(ctx, p.qmp, pending, SaveOptions{RunnerOut: "/nix/store/x-runner"})
	if !errors.Is(err, errMigration) {
		t.Fatalf("Save onto a full disk: %v, want a failed migration", err)
	}
	t.Logf("Save onto a full disk: %v", err)
	c3, err := Dial(ctx, p.qmp)
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	var st struct {
		Status string `json:"status"`
	}
	if err := c3.Execute(ctx, "query-status", nil, &st); err != nil || st.Status != "running" {
		t.Errorf("after the failed save the VM is %q (%v), want running again", st.Status, err)
	}
	if err := c3.Execute(ctx, "quit", nil, nil); err != nil && !errors.Is(err, ErrClosed) {
		t.Fatal(err)
	}
	if err := p.exited(t); err != nil {
		t.Errorf("qemu: %v", err)
	}
}

func TestQemuAnnounceSendsTheNICsAnnouncements(t *testing.T) {
	dir := t.TempDir()
	dump := filepath.Join(dir, "nic.pcap")
	p := startQemu(t, dir, "-netdev", "user,id=n0", "-device", "virtio-net-device,netdev=n0,mac=02:00:00:00:00:2a",
		"-object", "filter-dump,id=f0,netdev=n0,file="+dump)
	ctx := testCtx(t)
	c, err := WaitDial(ctx, p.qmp)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	// A RARP frame (ethertype 0x8035) from the NIC's MAC, as qemu sends
	// after a migration.
	rarp := []byte{0x02, 0, 0, 0, 0, 0x2a, 0x80, 0x35}
	if b, _ := os.ReadFile(dump); bytes.Contains(b, rarp) {
		t.Fatalf("the NIC announced itself before Announce")
	}
	if err := Announce(ctx, p.qmp); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(dump)
		if n := bytes.Count(b, rarp); n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no RARP frame from 02:00:00:00:00:2a in %s within 10s of Announce", dump)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := Announce(ctx, filepath.Join(dir, "no.sock")); err == nil {
		t.Errorf("Announce to a socket that does not exist succeeded")
	}
}
