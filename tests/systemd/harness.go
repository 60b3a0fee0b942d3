package systemd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

// SetupHint is the command that installs what the harness needs.
const SetupHint = "run scripts/setup-systemd.sh (as root) to install debootstrap and systemd-container and build the rootfs"

// Container is a running throw-away systemd.
type Container struct {
	// RunDir holds everything of the container (removed by Stop).
	RunDir string
	// Bus is the D-Bus address of the container's system bus.
	Bus string
	// StateDir is the host directory the container sees as /var/lib/microvms.
	StateDir string
	// UnitDir is the host directory the container sees as
	// /usr/local/lib/systemd/system: microvm.nix's units (Units.Files);
	// drop-ins written there take effect after systemd's Reload.
	UnitDir string
	// Root is the container's root directory as the host sees it
	// (/proc/PID/root of its init, valid while it runs): its etc/passwd and
	// etc/group name the units' user, its journal holds the units' output.
	Root string
	// Units are the microvm.nix host units, users and tmpfiles lines the
	// container was booted with.
	Units *HostUnits
	// UID and GID of the units' user and group (microvm:kvm) in the
	// container, as systemd-sysusers made them at boot.
	UID, GID int
}

// UnitUser and UnitGroup are the user and group microvm.nix's units run as
// (nodeagent's own copy cannot be imported here: nodeagent's tests import
// this package).
const (
	UnitUser  = "microvm"
	UnitGroup = "kvm"
)

// Script is the path of nspawn.sh.
func Script() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "nspawn.sh")
}

// Start boots a container in a new run directory with microvm.nix's host
// units, users and tmpfiles lines installed ([EvalHostUnits],
// [HostUnits.Write]). The error says what to run when a prerequisite is
// missing.
func Start(ctx context.Context) (*Container, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the systemd harness needs root (it boots a container with systemd-nspawn)")
	}
	for _, p := range []string{"systemd-nspawn", "busctl"} {
		if _, err := exec.LookPath(p); err != nil {
			return nil, fmt.Errorf("%s not found on PATH: %s", p, SetupHint)
		}
	}
	units, err := EvalHostUnits(ctx)
	if err != nil {
		return nil, err
	}
	run, err := os.MkdirTemp("", "blixard-systemd-")
	if err != nil {
		return nil, err
	}
	if err := units.Write(run); err != nil {
		_ = os.RemoveAll(run)
		return nil, fmt.Errorf("writing microvm.nix's units into %s: %w", run, err)
	}
	out, err := script(ctx, "start", run)
	if err != nil {
		_, _ = script(context.WithoutCancel(ctx), "stop", run)
		_ = os.RemoveAll(run)
		return nil, err
	}
	c := &Container{
		RunDir:   run,
		Bus:      lastLine(out),
		StateDir: filepath.Join(run, "state"),
		UnitDir:  filepath.Join(run, "units"),
		Units:    units,
	}
	if !strings.HasPrefix(c.Bus, "unix:path=") {
		_ = c.Stop(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("nspawn.sh start printed %q, want a bus address", out)
	}
	if err := c.findUser(); err != nil {
		_ = c.Stop(context.WithoutCancel(ctx))
		return nil, err
	}
	return c, nil
}

// findUser sets Root, UID and GID once the container has booted.
func (c *Container) findUser() error {
	pid, err := c.initPID()
	if err != nil {
		return err
	}
	c.Root = "/proc/" + pid + "/root"
	if c.UID, err = lookupID(filepath.Join(c.Root, "etc", "passwd"), UnitUser); err != nil {
		return fmt.Errorf("the container has no user %s (systemd-sysusers makes it at boot from microvm.nix's users): %w", UnitUser, err)
	}
	if c.GID, err = lookupID(filepath.Join(c.Root, "etc", "group"), UnitGroup); err != nil {
		return fmt.Errorf("the container has no group %s (systemd-sysusers makes it at boot): %w", UnitGroup, err)
	}
	return nil
}

// lookupID returns the id (third field) of name in a passwd or group file.
func lookupID(file, name string) (int, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) >= 3 && f[0] == name {
			return strconv.Atoi(f[2])
		}
	}
	return 0, fmt.Errorf("%s is not in %s", name, file)
}

// Stop tears the container down and removes RunDir; it fails when a
// process, mount or cgroup of it is left.
func (c *Container) Stop(ctx context.Context) error {
	cg, _ := os.ReadFile(filepath.Join(c.RunDir, "cgroup"))
	if _, err := script(ctx, "stop", c.RunDir); err != nil {
		return err
	}
	if left := Leftovers(c.RunDir, strings.TrimSpace(string(cg))); len(left) > 0 {
		return fmt.Errorf("left after stopping the container: %s", strings.Join(left, "; "))
	}
	return nil
}

// Leftovers lists what is left of a container with run directory run and
// cgroup name cg: processes whose command line names run, mounts under run,
// cgroup directories named cg, and run itself.
func Leftovers(run, cg string) []string {
	var left []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte(run)) && strings.Contains(string(b), "systemd-nspawn") {
			left = append(left, "process "+filepath.Base(filepath.Dir(p))+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	if f, err := os.Open("/proc/self/mounts"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			if fields := strings.Fields(s.Text()); len(fields) > 1 && strings.HasPrefix(fields[1], run) {
				left = append(left, "mount "+fields[1])
			}
		}
		f.Close()
	}
	if cg != "" {
		dirs, _ := filepath.Glob("/sys/fs/cgroup/" + cg)
		more, _ := filepath.Glob("/sys/fs/cgroup/*/" + cg)
		for _, d := range append(dirs, more...) {
			left = append(left, "cgroup "+d)
		}
	}
	if _, err := os.Stat(run); err == nil {
		left = append(left, "directory "+run)
	}
	return left
}

func script(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "bash", append([]string{Script()}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("nspawn.sh %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// initPID is the host pid of the container's init (systemd).
func (c *Container) initPID() (string, error) {
	cg, err := os.ReadFile(filepath.Join(c.RunDir, "cgroup"))
	if err != nil {
		return "", err
	}
	for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd"} {
		b, err := os.ReadFile(filepath.Join(root, strings.TrimSpace(string(cg)), "payload", "init.scope", "cgroup.procs"))
		if err == nil && len(bytes.Fields(b)) > 0 {
			return string(bytes.Fields(b)[0]), nil
		}
	}
	return "", errors.New("cannot find the container's init process")
}

// Journal returns the container's journal of unit (journalctl -u UNIT -o
// cat), read by the host's journalctl through Root.
func (c *Container) Journal(ctx context.Context, unit string) (string, error) {
	cmd := exec.CommandContext(ctx, "journalctl", "--no-pager", "-o", "cat", "--root", c.Root, "-u", unit)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("journalctl -u %s: %w: %s", unit, err, out)
	}
	return string(out), nil
}
