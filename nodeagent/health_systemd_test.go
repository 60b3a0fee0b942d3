package nodeagent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/replicated"
)

// TestSystemdNotifyUnitIsNotRunningBeforeReady runs microvm.nix's
// microvm@ unit as Type=notify (what host.useNotifySockets = true renders,
// NotifyAccess=all as microvm.nix sets it) with a runner whose "guest"
// sends READY=1 only once the test lets it. While systemd shows the unit
// activating, the agent that started it and an agent restarted meanwhile
// (which adopts the unit) report it starting, never running nor healthy;
// after READY=1 it is running and healthy.
func TestSystemdNotifyUnitIsNotRunningBeforeReady(t *testing.T) {
	const vm = "sd-notify"
	c := systemdContainer(t)
	dropIn := filepath.Join(c.UnitDir, "microvm@"+vm+".service.d")
	if err := os.MkdirAll(dropIn, 0o755); err != nil {
		t.Fatal(err)
	}
	// Registered before the env's cleanup, so it runs after the unit stopped.
	t.Cleanup(func() {
		if err := os.RemoveAll(dropIn); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := reloadSystemd(ctx, c); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if err := os.WriteFile(filepath.Join(dropIn, "notify.conf"), []byte("[Service]\nType=notify\nNotifyAccess=all\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := reloadSystemd(t.Context(), c); err != nil {
		t.Fatal(err)
	}
	e := newSystemdEnv(t, vm)

	// The guest is ready once STATE/NAME/ready exists (the unit's working
	// directory). systemd-notify runs as a child of the runner and exits at
	// once; systemd may read its message after it exited and then cannot
	// tell its unit, so it repeats until the unit is active.
	r := systemdRunnerScripts(t, `#!/bin/sh
echo notify-runner
while [ ! -e ready ]; do /bin/sleep 0.05; done
( while :; do /usr/bin/systemd-notify --ready; /bin/sleep 0.2; done ) &
exec /bin/sleep 1000
`, "#!/bin/sh\nkill \"$MAINPID\"\n")
	e.state.assign(vm, testNode, r)
	first := e.startAgent()
	b := e.backend()
	waitUnit(t, b, vm, "activating (waiting for READY=1)", func(s UnitStatus) bool { return s.Active && s.Activating && s.PID > 0 })
	e.waitPhase(vm, replicated.PhaseStarting, nil)

	// A restarted agent adopts the activating unit: starting, with why.
	first.stop(t)
	e.newAgent()
	e.startAgent()
	s := e.waitPhase(vm, replicated.PhaseStarting, func(s replicated.VMStatus) bool { return strings.Contains(s.Message, "READY=1") })
	if s.Health != "" {
		t.Errorf("an activating unit is reported with health %q", s.Health)
	}
	if us, err := b.Status(vm); err != nil || !us.Activating {
		t.Fatalf("unit %+v (err %v) is no longer activating: the test's guest sent READY=1 too early", us, err)
	}
	e.since = 0 // both agents' heartbeats
	if e.ever(vm, replicated.PhaseRunning) {
		t.Errorf("%s was reported running before READY=1", vm)
	}
	for _, hb := range e.state.heartbeats(0) {
		for _, st := range hb {
			if st.VM == vm && st.Health != "" {
				t.Errorf("%s was reported %s before READY=1", vm, st.Health)
			}
		}
	}

	// READY=1: active, running and healthy (no health check: healthy once
	// it runs).
	if err := os.WriteFile(filepath.Join(e.dir, vm, "ready"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	waitUnit(t, b, vm, "active after READY=1", func(s UnitStatus) bool { return s.Active && !s.Activating })
	up := e.waitPhase(vm, replicated.PhaseRunning, func(s replicated.VMStatus) bool { return s.Health == replicated.Healthy })
	if up.HealthSince.IsZero() || up.Message != "" {
		t.Errorf("running after READY=1: %+v", up)
	}
}
