package systemd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/tests/microvm"
)

// TestSystemdQemuDemoVMRunsAsUnitInContainer runs the demo's real qemu
// microVM (examples/demo/microvm.nix, built on the host with the real nix) as
// microvm.nix's own microvm@NAME.service under the container's systemd, as
// the microvm user, driven by the SystemdBackend over the container's bus:
// it answers HTTP on the host's loopback (the container shares the host's
// network), its console is the unit's journal (what `blixard logs` serves),
// and Stop powers it off through its microvm-shutdown (qemu exits by itself
// with code 0). Then the harness is torn down, twice, leaving nothing.
func TestSystemdQemuDemoVMRunsAsUnitInContainer(t *testing.T) {
	microvm.Require(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	c, err := Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = c.Stop(context.Background())
		}
	})

	const vm = "sdqemu"
	port := microvm.FreePort(t)
	out := microvm.Build(t, microvm.Options{Name: vm, Port: port, Version: "systemd"}).Out
	// What microvm.nix's install-microvm-NAME does (the agent does the same
	// when it switches current): STATE/NAME and current belong to microvm:kvm,
	// whose units write booted, qemu.pid and the QMP socket there.
	dir := filepath.Join(c.StateDir, vm)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(out, filepath.Join(dir, "current")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, filepath.Join(dir, "current")} {
		if err := os.Lchown(p, c.UID, c.GID); err != nil {
			t.Fatal(err)
		}
	}

	b, err := nodeagent.NewSystemdBackend(ctx, nodeagent.SystemdOptions{StateDir: c.StateDir, BusAddress: c.Bus, Root: c.Root})
	if err != nil {
		t.Fatal(err)
	}
	bctx, bcancel := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	go func() { runDone <- b.Run(bctx) }()
	var stopBackend sync.Once
	endBackend := func() {
		stopBackend.Do(func() {
			bcancel()
			if err := <-runDone; err != nil {
				t.Errorf("backend Run: %v", err)
			}
		})
	}
	defer endBackend()

	if err := b.Start(ctx, vm); err != nil {
		t.Fatalf("Start: %v", err)
	}
	body := microvm.WaitHTTP(t, port, 90*time.Second, "journalctl -u microvm@sdqemu inside the container")
	if want := "hello from " + vm; !strings.Contains(body, want) {
		t.Errorf("guest answered %q, want %q", body, want)
	}
	s, err := b.Status(vm)
	if err != nil || !s.Active || s.Booted != out || s.PID == 0 {
		t.Fatalf("Status = %+v, %v; want active, booted %s", s, err, out)
	}
	// qemu (microvm-run execs it) runs as microvm, and booted is
	// microvm-set-booted@'s (it runs as microvm too).
	if uid, err := processUID(c, s.PID); err != nil || uid != c.UID {
		t.Errorf("qemu (pid %d in the container) runs as uid %d (%v), want %s's %d", s.PID, uid, err, UnitUser, c.UID)
	}
	if fi, err := os.Lstat(filepath.Join(dir, "booted")); err != nil || int(fi.Sys().(*syscall.Stat_t).Uid) != c.UID {
		t.Errorf("booted: %v, %v; want a link of uid %d (written by microvm-set-booted@)", fi, err, c.UID)
	}

	if err := b.Stop(ctx, vm); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	s, err = b.Status(vm)
	if err != nil || s.Active || s.Restarting {
		t.Errorf("after Stop: %+v, %v; want inactive", s, err)
	}
	// A clean power-off: the guest saw the power button, qemu exited by itself
	// (systemd had nothing to kill) and the unit ended successfully.
	journal, err := c.Journal(ctx, "microvm@"+vm+".service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"power button pressed; powering off", "microvm-shutdown: qemu", "exited", "Deactivated successfully"} {
		if !strings.Contains(journal, want) {
			t.Errorf("journal of the unit has no %q:\n%s", want, journal)
		}
	}
	for _, bad := range []string{"SIGKILL", "Failed with result", "timed out"} {
		if strings.Contains(journal, bad) {
			t.Errorf("journal of the unit has %q:\n%s", bad, journal)
		}
	}
	// `blixard logs sdqemu`: the guest's serial console, from the journal.
	var console strings.Builder
	if err := nodeagent.TailConsole(ctx, b, c.StateDir, vm, false, &console); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"microvm-run: " + vm, "power button pressed; powering off"} {
		if !strings.Contains(console.String(), want) {
			t.Errorf("TailConsole has no %q:\n%s", want, console.String())
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, "booted")); err == nil {
		t.Errorf("booted still exists after Stop")
	}
	if _, err := microvm.Get(context.Background(), port, "/", time.Second); err == nil {
		t.Errorf("the guest still answers after Stop")
	}

	endBackend()
	stopped = true
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(ctx); err != nil {
		t.Errorf("a second stop: %v", err)
	}
}

// TestContainerRunsMicrovmNixHostUnits checks what the harness installs:
// microvm.nix's rendered units (not a hand-written template), its user and
// group made at boot, and STATE as its tmpfiles line makes it.
func TestContainerRunsMicrovmNixHostUnits(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	c, err := Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.Stop(context.WithoutCancel(ctx)); err != nil {
			t.Error(err)
		}
	}()
	var names []string
	for name := range c.Units.Files {
		names = append(names, name)
	}
	slices.Sort(names)
	want := []string{"microvm-macvtap-interfaces@.service", "microvm-pci-devices@.service", "microvm-set-booted@.service",
		"microvm-tap-interfaces@.service", "microvm-virtiofsd@.service", "microvm@.service"}
	if !slices.Equal(names, want) {
		t.Errorf("installed units %v, want %v", names, want)
	}
	for _, name := range want {
		b, err := os.ReadFile(filepath.Join(c.UnitDir, name))
		if err != nil || string(b) != c.Units.Files[name] {
			t.Errorf("%s in the container: %v; want the module's text", name, err)
		}
	}
	for _, line := range []string{"User=microvm\n", "Group=kvm\n", "WorkingDirectory=/var/lib/microvms/%i\n", "Restart=always\n",
		"RestartSec=5s\n", "Requires=microvm-tap-interfaces@%i.service"} {
		if !strings.Contains(c.Units.Files["microvm@.service"], line) {
			t.Errorf("microvm@.service has no %q", line)
		}
	}
	if !strings.HasPrefix(c.Units.Build, "/nix/store/") {
		t.Errorf("Build = %q, want a realised store path", c.Units.Build)
	}
	if _, err := os.Stat(c.Units.Build); err != nil {
		t.Errorf("what the units run is not realised: %v", err)
	}
	if c.UID == 0 || c.GID == 0 {
		t.Errorf("%s:%s is %d:%d, want a user and group of their own", UnitUser, UnitGroup, c.UID, c.GID)
	}
	fi, err := os.Stat(c.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != c.UID || int(st.Gid) != c.GID || fi.Mode().Perm() != 0o775 {
		t.Errorf("STATE is %d:%d %v, want %d:%d 0775 (microvm.nix's tmpfiles line)", st.Uid, st.Gid, fi.Mode().Perm(), c.UID, c.GID)
	}
}

// processUID is the real uid of pid, a pid of the container's namespace
// (as systemd reports MainPID), read through the container's /proc.
func processUID(c *Container, pid int) (int, error) {
	b, err := os.ReadFile(filepath.Join(c.Root, "proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return -1, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
			return strconv.Atoi(f[1])
		}
	}
	return -1, fmt.Errorf("no Uid: in the status of pid %d", pid)
}
