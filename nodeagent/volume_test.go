package nodeagent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

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
