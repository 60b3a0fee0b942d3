//go:build !linux

package nixrun

import (
	"errors"
	"log/slog"
	"os/exec"
)

// cgroup is never made off Linux: runs are killed by process group.
type cgroup struct{}

func newCgroup(cgroupMode) (*cgroup, error) { return nil, errors.New("cgroups exist only on Linux") }

func (g *cgroup) String() string                  { return "" }
func (g *cgroup) path() string                    { return "" }
func (g *cgroup) start(cmd *exec.Cmd) error       { return cmd.Start() }
func (g *cgroup) kill() error                     { return nil }
func (g *cgroup) remove(*slog.Logger, bool) []int { return nil }
