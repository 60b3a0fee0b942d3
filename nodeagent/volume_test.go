package nodeagent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

func TestNixProcessVMWithVolumesFailsWithoutCephSettings(t *testing.T) {
	e := newEnv(t)
	r := makeRunner(t, runnerSpec{marker: "m"}).build(t)
	e.state.assign("plain", testNode, r)
	e.state.put(replicated.Assignment{VM: "vol", Declared: "vol", Node: testNode, Drv: r.drv, OutPath: r.out,
		Volumes: []spec.VolumeRef{{Name: "data", Image: "t.vol.data", Pool: "rbd", SizeMiB: 4}}})
	e.start(nil) // no Options.Volumes

	s := e.waitPhase("vol", replicated.PhaseFailed, nil)
	if !strings.Contains(s.Message, "--ceph-config-file") {
		t.Errorf("message %q does not name the Ceph flags", s.Message)
	}
	e.waitPhase("plain", replicated.PhaseRunning, nil)
	if _, err := os.Lstat(filepath.Join(e.dir, "vol", "booted")); !os.IsNotExist(err) {
		t.Errorf("the VM without its volume was started: %v", err)
	}
}

// fakeVolumes is a Volumes whose client addresses the test sets and which
// records the paths it attached and detached.
type fakeVolumes struct {
	mu       sync.Mutex
	addrs    []string
	attached []string
	detached []string
}

func (f *fakeVolumes) Attach(_ context.Context, _ spec.VolumeRef, path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attached = append(f.attached, path)
	return nil
}

func (f *fakeVolumes) Detach(_ context.Context, path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.detached = append(f.detached, path)
	return nil
}

func (f *fakeVolumes) calls() (attached, detached []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.attached), slices.Clone(f.detached)
}

func (f *fakeVolumes) ClientAddrs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.addrs)
}

func (f *fakeVolumes) set(addrs ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addrs = addrs
}

// TestHeartbeatCarriesTheVolumesClientAddrs: the heartbeat reports the Ceph
// clients of the node's volumes (its own and its volume daemons'), and the
// replicated state adds each to the node's addresses, so that fencing the
// node covers a daemon that replaced another one too.
func TestHeartbeatCarriesTheVolumesClientAddrs(t *testing.T) {
	e := newEnv(t)
	vols := &fakeVolumes{}
	vols.set("10.0.0.7:0/1", "10.0.0.7:0/2")
	e.start(func(o *Options) { o.Volumes = vols; o.Heartbeat = 50 * time.Millisecond })
	nodeAddrs := func() []string {
		st, _ := e.state.LocalRead()
		return st.Nodes[testNode].CephAddrs
	}
	testkit.WaitFor(t, waitTimeout, "the heartbeat's addresses in the node's", testkit.Detail(func() (bool, string) {
		got := nodeAddrs()
		return slices.Equal(got, []string{"10.0.0.7:0/1", "10.0.0.7:0/2"}), fmt.Sprint(got)
	}))
	vols.set("10.0.0.7:0/1", "10.0.0.7:0/3") // a daemon replaced by a new one
	testkit.WaitFor(t, waitTimeout, "the new daemon's address added", testkit.Detail(func() (bool, string) {
		got := nodeAddrs()
		return slices.Equal(got, []string{"10.0.0.7:0/1", "10.0.0.7:0/2", "10.0.0.7:0/3"}), fmt.Sprint(got)
	}))
	if hbs := e.state.ProposedOf(replicated.CmdNodeHeartbeat); !slices.Equal(hbs[len(hbs)-1].NodeHeartbeat.CephAddrs, []string{"10.0.0.7:0/1", "10.0.0.7:0/3"}) {
		t.Errorf("the last heartbeat carries %v, want what Volumes reports now", hbs[len(hbs)-1].NodeHeartbeat.CephAddrs)
	}
}

// TestNixRestartedAgentReleasesVolumesLeftByThePreviousOne: volumes outlive
// the agent. A restarted agent finds what the previous one left exposed:
// the volume of a VM moved away meanwhile is detached (else its lock would
// stay and the VM's new node would wait forever), and the volume of a VM
// still assigned is attached again, which adopts it.
func TestNixRestartedAgentReleasesVolumesLeftByThePreviousOne(t *testing.T) {
	e := newEnv(t)
	r := makeRunner(t, runnerSpec{marker: "m"}).build(t)
	for _, vm := range []string{"gone", "kept"} {
		dir := filepath.Join(e.dir, vm, "volumes")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		// What an attacher leaves: the exposed path and its own files.
		if err := os.Symlink("/dev/null", filepath.Join(dir, "data")); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "data.daemon"), []byte("{}"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	e.state.put(replicated.Assignment{VM: "kept", Declared: "kept", Node: testNode, Drv: r.drv, OutPath: r.out,
		Volumes: []spec.VolumeRef{{Name: "data", Image: "t.kept.data", Pool: "rbd", SizeMiB: 4}}})
	vols := &fakeVolumes{}
	e.start(func(o *Options) { o.Volumes = vols })

	e.waitPhase("kept", replicated.PhaseRunning, nil)
	testkit.WaitFor(t, waitTimeout, "the moved VM's volume detached", testkit.Detail(func() (bool, string) {
		attached, detached := vols.calls()
		return slices.Contains(detached, VolumePath(e.dir, "gone", "data")),
			fmt.Sprintf("attached %v, detached %v", attached, detached)
	}))
	attached, detached := vols.calls()
	if !slices.Contains(attached, VolumePath(e.dir, "kept", "data")) {
		t.Errorf("the assigned VM's volume was not attached (adopted) again: attached %v", attached)
	}
	if slices.Contains(detached, VolumePath(e.dir, "kept", "data")) {
		t.Errorf("the assigned VM's volume was detached: %v", detached)
	}
}
