package qemu

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/tests/microvm"
	"github.com/blixard/blixard/vmsnap"
)

// qemuBinary is the qemu the demo's runners exec (PATH=/usr/bin:/bin).
const qemuBinary = "/usr/bin/qemu-system-x86_64"

// runProc is one microvm-run the test started by hand, in its own state
// directory: microvm-run execs qemu, so the process is qemu.
type runProc struct {
	cmd     *exec.Cmd
	dir     string
	port    int
	console string
	done    chan error
}

// startRun starts r's microvm-run in dir with the guest's HTTP forwarded to
// 127.0.0.1:port; the test's cleanup kills it by PID and reaps it.
func startRun(t testing.TB, r runner, dir string, port int) *runProc {
	t.Helper()
	p := &runProc{dir: dir, port: port, console: filepath.Join(dir, "console.log"), done: make(chan error, 1)}
	logf, err := os.Create(p.console)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	p.cmd = exec.Command(filepath.Join(r.out, "bin", "microvm-run"))
	p.cmd.Dir, p.cmd.Stdout, p.cmd.Stderr = dir, logf, logf
	p.cmd.Env = append(os.Environ(), "MICROVM_PORT="+strconv.Itoa(port))
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", p.cmd.Path, err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(p.kill)
	return p
}

// kill ends the run (SIGKILL to its PID) and waits for it; again is a
// no-op (os.Process does not signal a process it has reaped).
func (p *runProc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	err := <-p.done
	p.done <- err
}

// exited waits for the run to end on its own (a Save quits its qemu).
func (p *runProc) exited(t testing.TB) error {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("qemu (pid %d) did not exit within 30s; console:\n%s", p.cmd.Process.Pid, p.log())
		return nil
	}
}

func (p *runProc) log() string {
	b, _ := os.ReadFile(p.console)
	return string(b)
}

func (p *runProc) qmp() string { return filepath.Join(p.dir, "qmp.sock") }

// waitAnswer polls the guest's / every 5 ms until it answers (the interval
// bounds the measurement's error, not a synchronisation).
func (p *runProc) waitAnswer(t testing.TB) string {
	t.Helper()
	deadline := time.Now().Add(bootTimeout)
	for {
		body, err := microvm.Get(context.Background(), p.port, "/", time.Second)
		if err == nil {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("no HTTP answer on 127.0.0.1:%d within %s: %v; console:\n%s", p.port, bootTimeout, err, p.log())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (p *runProc) bootID(t testing.TB) string {
	t.Helper()
	id, err := microvm.Get(context.Background(), p.port, "/boot-id", 5*time.Second)
	if err != nil {
		t.Fatalf("GET /boot-id: %v; console:\n%s", err, p.log())
	}
	return strings.TrimSpace(id)
}

func snapCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// saveSnapshot boots r with its RAM in a pending snapshot, waits for HTTP,
// saves and publishes it, and returns it with the saved guest's boot id.
func saveSnapshot(t testing.TB, store vmsnap.Store, r runner) (vmsnap.Snapshot, string) {
	t.Helper()
	pending, err := store.Begin()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := vmsnap.WriteHook(dir, vmsnap.SaveHook(pending)); err != nil {
		t.Fatal(err)
	}
	p := startRun(t, r, dir, r.port)
	p.waitAnswer(t)
	id := p.bootID(t)
	m, err := vmsnap.Save(snapCtx(t), p.qmp(), pending, vmsnap.SaveOptions{RunnerOut: r.out})
	if err != nil {
		t.Fatalf("Save: %v; console:\n%s", err, p.log())
	}
	if err := p.exited(t); err != nil {
		t.Fatalf("the saved qemu: %v, want a clean exit after quit; console:\n%s", err, p.log())
	}
	start := time.Now()
	snap, err := store.Publish(pending)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("saved %s: state %d bytes (qemu: %d ms, %d bytes sent), RAM %s; published (flushed to disk) in %s",
		r.out, m.State.Bytes, m.Migration.TotalTimeMs, m.Migration.TransferredBytes, m.RAM.Why, time.Since(start).Round(time.Millisecond))
	if m.RunnerOut != r.out || m.Qemu.Path != qemuBinary || !m.IgnoreShared || m.RAM.Bytes != 128<<20 ||
		m.RAM.File != vmsnap.MemFile || m.Guest.Name != r.name() || m.Guest.Machine != "microvm-machine" {
		t.Errorf("manifest %+v", m)
	}
	return snap, id
}

func (r runner) name() string {
	base := filepath.Base(r.out) // HASH-microvm-NAME
	return base[strings.Index(base, "-microvm-")+len("-microvm-"):]
}

// restoreRun starts r with the restore hook of snap in a new state
// directory, forwarding the guest to port, and restores the snapshot.
func restoreRun(t testing.TB, r runner, snap vmsnap.Snapshot, port int) (*runProc, vmsnap.RestoreTiming, error) {
	t.Helper()
	dir := t.TempDir()
	if err := vmsnap.WriteHook(dir, vmsnap.RestoreHook(snap)); err != nil {
		t.Fatal(err)
	}
	p := startRun(t, r, dir, port)
	timing, err := vmsnap.Restore(snapCtx(t), p.qmp(), snap)
	return p, timing, err
}

func TestQemuSnapshotRestoresTheSameGuestAndConcurrentCopies(t *testing.T) {
	microvm.Require(t)
	r := buildRunner(t, "snapweb", "snap-1")
	store := vmsnap.Store{Dir: filepath.Join(t.TempDir(), "snapshots")}
	saved, savedID := saveSnapshot(t, store, r)
	memBefore := fileSum(t, saved.MemPath())

	snap, err := store.Open(r.out, qemuBinary)
	if err != nil {
		t.Fatal(err)
	}
	p, timing, err := restoreRun(t, r, snap, r.port)
	if err != nil {
		t.Fatalf("Restore: %v; console:\n%s", err, p.log())
	}
	body := p.waitAnswer(t)
	if want := "hello from snapweb, version snap-1"; !strings.Contains(body, want) {
		t.Errorf("the restored guest answered %q, want %q", body, want)
	}
	if id := p.bootID(t); id != savedID {
		t.Errorf("restored boot id %s, want the saved guest's %s (a restore must not boot)", id, savedID)
	}
	if strings.Contains(p.log(), "Linux version") {
		t.Errorf("the restored runner's console shows a kernel boot:\n%s", p.log())
	}
	t.Logf("restore: %+v", timing)
	p.kill()

	// Two copies from one snapshot at once, each on its own port.
	var wg sync.WaitGroup
	procs := make([]*runProc, 2)
	errs := make([]error, 2)
	for i := range procs {
		port := microvm.FreePort(t)
		dir := t.TempDir()
		if err := vmsnap.WriteHook(dir, vmsnap.RestoreHook(snap)); err != nil {
			t.Fatal(err)
		}
		procs[i] = startRun(t, r, dir, port)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = vmsnap.Restore(snapCtx(t), procs[i].qmp(), snap)
		}()
	}
	wg.Wait()
	for i, p := range procs {
		if errs[i] != nil {
			t.Fatalf("concurrent restore %d: %v; console:\n%s", i, errs[i], p.log())
		}
	}
	for i, p := range procs {
		p.waitAnswer(t)
		if id := p.bootID(t); id != savedID {
			t.Errorf("concurrent restore %d: boot id %s, want %s", i, id, savedID)
		}
	}
	for _, p := range procs {
		p.kill()
	}
	// share=off: the guests' writes stayed private, the file is as saved.
	if sum := fileSum(t, saved.MemPath()); sum != memBefore {
		t.Errorf("the snapshot's RAM file changed under the restores")
	}
}

func TestQemuSnapshotOfAnotherRunnerIsRefusedAndACorruptOneFallsBackToABoot(t *testing.T) {
	microvm.Require(t)
	a := buildRunner(t, "snapa", "snap-1")
	b := buildRunner(t, "snapb", "snap-1")
	store := vmsnap.Store{Dir: filepath.Join(t.TempDir(), "snapshots")}
	snapA, savedID := saveSnapshot(t, store, a)

	// Runner B has no snapshot; A's, found under B's key, is refused by its
	// manifest.
	if _, err := store.Open(b.out, qemuBinary); !errors.Is(err, vmsnap.ErrNotFound) {
		t.Fatalf("Open of runner B: %v, want ErrNotFound", err)
	}
	linkSnapshot(t, snapA.Dir, filepath.Join(store.Dir, vmsnap.Key(b.out, qemuBinary)))
	_, err := store.Open(b.out, qemuBinary)
	if !errors.Is(err, vmsnap.ErrMismatch) || !strings.Contains(err.Error(), a.out) {
		t.Fatalf("Open of runner B holding runner A's snapshot: %v, want ErrMismatch naming %s", err, a.out)
	}
	if err := store.Remove(vmsnap.Key(b.out, qemuBinary)); err != nil {
		t.Fatal(err)
	}

	// A damaged state file: Restore fails with ErrCorrupt before qemu loads
	// anything, and the caller kills that qemu and boots fresh.
	corrupt := vmsnap.Store{Dir: filepath.Join(t.TempDir(), "snapshots")}
	cdir := filepath.Join(corrupt.Dir, snapA.Manifest.Key)
	linkSnapshot(t, snapA.Dir, cdir)
	state := filepath.Join(cdir, vmsnap.StateFile)
	data, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	if err := os.Remove(state); err != nil { // a link to A's state: replace, do not write through
		t.Fatal(err)
	}
	if err := os.WriteFile(state, data, 0o644); err != nil {
		t.Fatal(err)
	}
	snap, err := corrupt.Open(a.out, qemuBinary)
	if err != nil {
		t.Fatalf("Open checks sizes only; the damage is for Restore to find: %v", err)
	}
	p, _, err := restoreRun(t, a, snap, a.port)
	if !errors.Is(err, vmsnap.ErrCorrupt) || !strings.Contains(err.Error(), "SHA-256") {
		t.Fatalf("Restore of a damaged state: %v, want ErrCorrupt", err)
	}
	t.Logf("Restore of a damaged state: %v", err)
	p.kill()
	if err := corrupt.Remove(snap.Manifest.Key); err != nil {
		t.Fatal(err)
	}
	if err := vmsnap.RemoveHook(p.dir); err != nil {
		t.Fatal(err)
	}
	fresh := startRun(t, a, p.dir, a.port)
	body := fresh.waitAnswer(t)
	if !strings.Contains(body, "hello from snapa") {
		t.Errorf("the fresh boot answered %q", body)
	}
	if id := fresh.bootID(t); id == savedID {
		t.Errorf("the fallback boot has the snapshot's boot id %s: it did not boot", id)
	}
	if !strings.Contains(fresh.log(), "Linux version") {
		t.Errorf("the fallback's console shows no kernel boot:\n%s", fresh.log())
	}
	// The good snapshot still restores after all this.
	good, _, err := restoreRun(t, a, snapA, microvm.FreePort(t))
	if err != nil {
		t.Fatalf("Restore of the good snapshot: %v; console:\n%s", err, good.log())
	}
	good.waitAnswer(t)
	if id := good.bootID(t); id != savedID {
		t.Errorf("boot id %s, want %s", id, savedID)
	}
}

// linkSnapshot makes dst a copy of the snapshot directory src (hard links:
// the RAM file is 128 MiB).
func linkSnapshot(t testing.TB, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if err := os.Link(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
}

func fileSum(t testing.TB, path string) string {
	t.Helper()
	out, err := exec.Command("sha256sum", path).Output()
	if err != nil {
		t.Fatalf("sha256sum %s: %v", path, err)
	}
	return strings.Fields(string(out))[0]
}

// BenchmarkQemuSnapshot measures the demo guest's cold start to its first
// HTTP answer: a full boot of microvm-run against a restore of a snapshot
// of the same runner (microvm-run with the restore hook, then
// vmsnap.Restore). The restore is split into qemu's start (until its QMP
// answers and is checked), loading the state, `cont`, and from `cont` to
// the answer. The snapshot is saved once, untimed; each run is stopped by
// SIGKILL outside the timed part.
//
//	go test -run '^$' -bench BenchmarkQemuSnapshot -benchtime 7x ./tests/qemu
func BenchmarkQemuSnapshot(b *testing.B) {
	microvm.Require(b)
	r := buildRunner(b, "snapbench", "bench")
	store := vmsnap.Store{Dir: filepath.Join(b.TempDir(), "snapshots")}
	saveSnapshot(b, store, r)
	snap, err := store.Open(r.out, qemuBinary)
	if err != nil {
		b.Fatal(err)
	}
	var boot, restore time.Duration

	b.Run("boot", func(b *testing.B) {
		var total time.Duration
		for range b.N {
			b.StopTimer()
			dir := b.TempDir()
			b.StartTimer()
			start := time.Now()
			p := startRun(b, r, dir, r.port)
			p.waitAnswer(b)
			total += time.Since(start)
			b.StopTimer()
			p.kill()
			b.StartTimer()
		}
		boot = total / time.Duration(b.N)
		b.ReportMetric(ms(boot), "ms-to-http")
	})

	b.Run("restore", func(b *testing.B) {
		var total, qemuStart, load, cont, toAnswer time.Duration
		for range b.N {
			b.StopTimer()
			dir := b.TempDir()
			if err := vmsnap.WriteHook(dir, vmsnap.RestoreHook(snap)); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			start := time.Now()
			p := startRun(b, r, dir, r.port)
			timing, err := vmsnap.Restore(snapCtx(b), p.qmp(), snap)
			resumed := time.Now()
			if err != nil {
				b.Fatalf("Restore: %v; console:\n%s", err, p.log())
			}
			p.waitAnswer(b)
			total += time.Since(start)
			toAnswer += time.Since(resumed)
			qemuStart += timing.Connect
			load += timing.Load
			cont += timing.Resume
			b.StopTimer()
			p.kill()
			b.StartTimer()
		}
		n := time.Duration(b.N)
		restore = total / n
		b.ReportMetric(ms(restore), "ms-to-http")
		b.ReportMetric(ms(qemuStart/n), "ms-qemu-start")
		b.ReportMetric(ms(load/n), "ms-load")
		b.ReportMetric(ms(cont/n), "ms-cont")
		b.ReportMetric(ms(toAnswer/n), "ms-cont-to-http")
		if boot > 0 {
			b.ReportMetric(float64(boot)/float64(restore), "x-faster-than-boot")
		}
	})

	if boot > 0 && restore > 0 {
		b.Logf("cold start to first HTTP answer: boot %s, restore %s: restore is %.1f× faster",
			boot.Round(time.Millisecond), restore.Round(time.Millisecond), float64(boot)/float64(restore))
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
