package vmsnap_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/netip"
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

// The identity channel against the demo's real guest (examples/demo: the
// Debian cloud kernel and a busybox initramfs whose /init runs the identity
// agent in the runner's snapshot modes), under qemu's user-mode network, so
// no namespace or tap is needed: each copy's HTTP server is forwarded to a
// port of its own, and /cgi-bin/ident tells who the copy is.

// guestRun is one microvm-run the test started.
type guestRun struct {
	cmd  *exec.Cmd
	dir  string
	port int
	done chan error
}

func startGuest(t *testing.T, out, dir string, port int) *guestRun {
	t.Helper()
	logf, err := os.Create(filepath.Join(dir, "console.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	g := &guestRun{cmd: exec.Command(filepath.Join(out, "bin", "microvm-run")), dir: dir, port: port, done: make(chan error, 1)}
	g.cmd.Dir, g.cmd.Stdout, g.cmd.Stderr = dir, logf, logf
	g.cmd.Env = append(os.Environ(), "MICROVM_PORT="+strconv.Itoa(port))
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { g.done <- g.cmd.Wait() }()
	t.Cleanup(func() {
		_ = g.cmd.Process.Signal(syscall.SIGKILL)
		err := <-g.done
		g.done <- err
	})
	return g
}

func (g *guestRun) console() string {
	b, _ := os.ReadFile(filepath.Join(g.dir, "console.log"))
	return string(b)
}

// ident reads the guest's /cgi-bin/ident as a map.
func (g *guestRun) ident(t *testing.T) map[string]string {
	t.Helper()
	body, err := microvm.Get(context.Background(), g.port, "/cgi-bin/ident", 10*time.Second)
	if err != nil {
		t.Fatalf("GET /cgi-bin/ident: %v; console:\n%s", err, g.console())
	}
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(body), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m
}

// Both identity agents of the demo's guest: blixard's guest agent
// (cmd/blixard-guest, system calls in one running process) and the shell's
// (guest-init.sh's identd, a runner built without the agent).
func TestQemuIdentityRestoredCopiesTakeTheirOwnIdentity(t *testing.T) {
	microvm.Require(t)
	t.Run("blixard-guest", func(t *testing.T) {
		testRestoredCopies(t, microvm.Options{Name: "identweb", Port: microvm.FreePort(t), Version: "ident-1", GuestAgent: microvm.GuestAgent(t)})
	})
	t.Run("shell", func(t *testing.T) {
		testRestoredCopies(t, microvm.Options{Name: "identweb", Port: microvm.FreePort(t), Version: "ident-1"})
	})
}

func testRestoredCopies(t *testing.T, o microvm.Options) {
	r := microvm.Build(t, o)
	store := vmsnap.Store{Dir: filepath.Join(t.TempDir(), "snapshots")}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// Save: boot in save mode, freeze through the channel, save.
	pending, err := store.Begin()
	if err != nil {
		t.Fatal(err)
	}
	sdir := t.TempDir()
	if err := vmsnap.WriteHook(sdir, vmsnap.SaveHook(pending)); err != nil {
		t.Fatal(err)
	}
	saved := startGuest(t, r.Out, sdir, microvm.FreePort(t))
	microvm.WaitHTTP(t, saved.port, 3*time.Minute, "console: "+filepath.Join(sdir, "console.log"))
	before := saved.ident(t)
	c, err := vmsnap.DialIdentity(ctx, filepath.Join(sdir, vmsnap.IdentitySocket))
	if err != nil {
		t.Fatalf("DialIdentity of the booted guest: %v; console:\n%s", err, saved.console())
	}
	if c.State() != vmsnap.GuestRunning {
		t.Errorf("the booted guest says state %q, want running", c.State())
	}
	if err := c.Freeze(ctx); err != nil {
		t.Fatalf("Freeze: %v; console:\n%s", err, saved.console())
	}
	c.Close()
	if _, err := vmsnap.Save(ctx, filepath.Join(sdir, "qmp.sock"), pending, vmsnap.SaveOptions{RunnerOut: r.Out, Identity: vmsnap.IdentityProtocol}); err != nil {
		t.Fatalf("Save: %v; console:\n%s", err, saved.console())
	}
	if err := <-saved.done; err != nil {
		t.Fatalf("the saved qemu: %v", err)
	}
	saved.done <- nil
	snap, err := store.Publish(pending)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Manifest.Identity != vmsnap.IdentityProtocol {
		t.Errorf("manifest identity %q, want %q", snap.Manifest.Identity, vmsnap.IdentityProtocol)
	}

	// Two copies at once, each told another MAC, hostname and clock.
	type copyResult struct {
		g       *guestRun
		id      vmsnap.Identity
		restore vmsnap.RestoreTiming
		hello   time.Duration
		ident   time.Duration
		warm    time.Duration
		guest   vmsnap.GuestIdentity
		err     error
	}
	now := time.Now()
	res := make([]copyResult, 2)
	for i := range res {
		var seed [32]byte
		_, _ = rand.Read(seed[:])
		res[i].id = vmsnap.Identity{
			MAC:      fmt.Sprintf("02:b1:00:00:00:%02x", i+1),
			Hostname: fmt.Sprintf("copy-%d", i+1),
			// Days apart from the host's clock and from each other, so
			// that the guest's clock shows it was set.
			Time: now.Add(time.Duration(i+1) * 48 * time.Hour),
			Seed: seed,
		}
		dir := t.TempDir()
		if err := vmsnap.WriteHook(dir, vmsnap.RestoreHook(snap)); err != nil {
			t.Fatal(err)
		}
		res[i].g = startGuest(t, r.Out, dir, microvm.FreePort(t))
	}
	var wg sync.WaitGroup
	for i := range res {
		wg.Add(1)
		go func(cr *copyResult) {
			defer wg.Done()
			cr.restore, cr.err = vmsnap.Restore(ctx, filepath.Join(cr.g.dir, "qmp.sock"), snap)
			if cr.err != nil {
				return
			}
			// Copy 2 warms up first, as the restore pool's guests do.
			if cr == &res[1] {
				c, err := vmsnap.DialIdentity(ctx, filepath.Join(cr.g.dir, vmsnap.IdentitySocket))
				if err != nil {
					cr.err = err
					return
				}
				cr.warm, cr.err = c.Warm(ctx, 80, "/")
				c.Close()
				if cr.err != nil {
					return
				}
			}
			r, err := vmsnap.IdentifyRestored(ctx, filepath.Join(cr.g.dir, vmsnap.IdentitySocket), cr.id)
			if err != nil {
				cr.err = err
				return
			}
			cr.hello, cr.ident = r.HelloAfter, r.AnswerAfter
			// User-mode network: the guest keeps 10.0.2.15.
			cr.guest, cr.err = vmsnap.CheckIdentified(r.Answer, cr.id, netip.MustParseAddr("10.0.2.15"))
		}(&res[i])
	}
	wg.Wait()
	for i, cr := range res {
		if cr.err != nil {
			t.Fatalf("copy %d: %v; console:\n%s", i+1, cr.err, cr.g.console())
		}
		got := cr.g.ident(t)
		if got["mac"] != cr.id.MAC || got["host"] != cr.id.Hostname {
			t.Errorf("copy %d answers mac=%s host=%s, want %s %s", i+1, got["mac"], got["host"], cr.id.MAC, cr.id.Hostname)
		}
		if got["boot_id"] != before["boot_id"] {
			t.Errorf("copy %d has boot id %s, the saved guest %s: a restore keeps it (it changes only with a boot)", i+1, got["boot_id"], before["boot_id"])
		}
		date, err := strconv.ParseInt(got["date"], 10, 64)
		if err != nil || date < cr.id.Time.Unix() || date > cr.id.Time.Add(time.Minute).Unix() {
			t.Errorf("copy %d's clock says %s, want at or just after %d (the time it was given)", i+1, got["date"], cr.id.Time.Unix())
		}
		t.Logf("copy %d: restore %s (qemu start %s, load %s), warm-up %s in the guest, then hello %s → identity acknowledged %s (%s in the guest); /cgi-bin/ident: %v",
			i+1, cr.restore.Total().Round(time.Millisecond), cr.restore.Connect.Round(time.Millisecond),
			cr.restore.Load.Round(time.Millisecond), cr.warm, cr.hello.Round(time.Millisecond), cr.ident.Round(time.Millisecond), cr.guest.Took, got)
	}
	if before["mac"] == res[0].id.MAC || before["host"] == res[0].id.Hostname {
		t.Errorf("the saved guest already had the identity the test gives copy 1: %v", before)
	}
}
