package nixrun

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroup is the cgroup of one run, a child of this process's own cgroup:
// everything nix starts, whatever its session or process group, is in it
// and can be killed with it.
type cgroup struct {
	dir string
	// v1 marks a cgroup of the v1 freezer hierarchy (hosts still on the
	// hybrid layout); else it is a cgroup v2 one.
	v1 bool
	// fd (v2) is the open directory nix is cloned into; -1 once closed.
	fd int
}

// newCgroup makes the cgroup of one run: on cgroup v2 when this process's
// own v2 cgroup is writable, else in the v1 freezer hierarchy. The error
// says why there is none.
func newCgroup(mode cgroupMode) (*cgroup, error) {
	if mode == cgroupNone {
		return nil, errors.New("cgroups turned off")
	}
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var why []string
	if mode != cgroupV1Freezer {
		g, err := newCgroupIn(string(own), string(mounts), "")
		if err == nil {
			return g, nil
		}
		why = append(why, "cgroup v2: "+err.Error())
	}
	if mode != cgroupV2 {
		g, err := newCgroupIn(string(own), string(mounts), "freezer")
		if err == nil {
			return g, nil
		}
		why = append(why, "cgroup v1 freezer: "+err.Error())
	}
	return nil, errors.New(strings.Join(why, "; "))
}

// newCgroupIn makes a child of this process's cgroup in the v2 hierarchy
// (controller "") or in the v1 hierarchy of controller.
func newCgroupIn(own, mounts, controller string) (*cgroup, error) {
	parent, err := ownCgroupDir(own, mounts, controller)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(parent, "nixrun-")
	if err != nil {
		return nil, err
	}
	g := &cgroup{dir: dir, v1: controller != "", fd: -1}
	if g.v1 {
		return g, nil
	}
	if _, err := os.Stat(filepath.Join(dir, "cgroup.kill")); err != nil {
		_ = syscall.Rmdir(dir)
		return nil, fmt.Errorf("no cgroup.kill (Linux older than 5.14): %w", err)
	}
	if g.fd, err = syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0); err != nil {
		_ = syscall.Rmdir(dir)
		return nil, fmt.Errorf("open %s: %w", dir, err)
	}
	return g, nil
}

// ownCgroupDir is the directory of this process's cgroup in the v2
// hierarchy (controller "") or the v1 hierarchy of controller, given the
// contents of /proc/self/cgroup and /proc/self/mountinfo.
func ownCgroupDir(own, mounts, controller string) (string, error) {
	var path string
	found := false
	for _, line := range strings.Split(own, "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		if controller == "" && f[0] == "0" && f[1] == "" || controller != "" && slices.Contains(strings.Split(f[1], ","), controller) {
			path, found = f[2], true
			break
		}
	}
	if !found {
		return "", errors.New("this process is in no such cgroup")
	}
	for _, line := range strings.Split(mounts, "\n") {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE SUPEROPTIONS
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 3 {
			continue
		}
		if controller == "" && qf[0] != "cgroup2" ||
			controller != "" && (qf[0] != "cgroup" || !slices.Contains(strings.Split(qf[2], ","), controller)) {
			continue
		}
		root, mountpoint := unescapeMount(pf[3]), unescapeMount(pf[4])
		rel, ok := strings.CutPrefix(path, root)
		if !ok || root != "/" && rel != "" && rel[0] != '/' {
			continue // this mount shows another part of the hierarchy
		}
		return filepath.Join(mountpoint, rel), nil
	}
	return "", errors.New("its hierarchy is not mounted")
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, …).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func (g *cgroup) String() string {
	if g.v1 {
		return "freezer cgroup " + g.dir
	}
	return "cgroup " + g.dir
}

// path is g's directory ("" for no cgroup), for logs.
func (g *cgroup) path() string {
	if g == nil {
		return ""
	}
	return g.dir
}

// start starts cmd with its process inside g from its first instruction,
// so nothing it forks can escape.
func (g *cgroup) start(cmd *exec.Cmd) error {
	if !g.v1 {
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, g.fd
		err := cmd.Start()
		g.closeFD()
		return err
	}
	// v1 has no CLONE_INTO_CGROUP, but a v1 cgroup holds threads: the
	// thread that forks nix joins g first and leaves again after, and nix
	// inherits the cgroup of that thread.
	errc := make(chan error, 1)
	go func() {
		// Unlocked only once out of g again: should the thread fail to
		// leave, Go ends it with this goroutine instead of running other
		// goroutines inside g (and Go starts no new threads from a locked
		// one).
		runtime.LockOSThread()
		tid := strconv.Itoa(syscall.Gettid())
		if err := writeCgroupFile(filepath.Join(g.dir, "tasks"), tid); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		err := cmd.Start()
		if writeCgroupFile(filepath.Join(filepath.Dir(g.dir), "tasks"), tid) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

func (g *cgroup) closeFD() {
	if g.fd >= 0 {
		_ = syscall.Close(g.fd)
		g.fd = -1
	}
}

// kill sends SIGKILL to every process in g.
func (g *cgroup) kill() error {
	if !g.v1 {
		// One write kills the whole cgroup, forks in flight included.
		return writeCgroupFile(filepath.Join(g.dir, "cgroup.kill"), "1")
	}
	self := os.Getpid()
	pids, err := readProcs(g.dir)
	if err != nil {
		return err
	}
	if slices.Contains(pids, self) {
		// A thread of ours is still inside (leaving, or ending after it
		// failed to leave): freezing it could stop this whole process.
		return signalAll(pids, self)
	}
	// Frozen, nothing in g can fork between reading the list and the kill.
	state := filepath.Join(g.dir, "freezer.state")
	if err := writeCgroupFile(state, "FROZEN"); err != nil {
		return err
	}
	// A task in uninterruptible sleep delays freezing; kill anyway after a
	// while and let the caller retry what survives.
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if s, err := os.ReadFile(state); err != nil || strings.TrimSpace(string(s)) == "FROZEN" {
			break
		}
	}
	pids, err = readProcs(g.dir)
	if err == nil {
		err = signalAll(pids, self)
	}
	// Frozen tasks act on SIGKILL only once thawed.
	return errors.Join(err, writeCgroupFile(state, "THAWED"))
}

// remove kills whatever is still in g (nothing, when killedAlready and the
// kill worked, once the dying are gone), waits until g is empty and removes
// it. It returns the processes still alive after cleanupTimeout; g is then
// left in place.
func (g *cgroup) remove(log *slog.Logger, killedAlready bool) []int {
	g.closeFD()
	deadline := time.Now().Add(cleanupTimeout)
	logged := killedAlready
	for {
		pids, err := readProcs(g.dir)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err == nil && len(pids) == 0 {
			// EBUSY: the last process left cgroup.procs but not yet g.
			if err = syscall.Rmdir(g.dir); err == nil || errors.Is(err, syscall.ENOENT) {
				return nil
			}
		}
		if len(pids) > 0 {
			if !logged {
				log.Info("killing the processes a nix run left behind", "cgroup", g.dir, "pids", pids)
				logged = true
			}
			if kerr := g.kill(); kerr != nil {
				err = kerr
			}
		}
		if time.Now().After(deadline) {
			log.Error("cannot remove the cgroup of a nix run", "cgroup", g.dir, "pids", pids, "err", err)
			return pids
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func readProcs(dir string) ([]int, error) {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(data)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// signalAll sends SIGKILL to pids, except to this process.
func signalAll(pids []int, self int) error {
	var errs []error
	for _, pid := range pids {
		if pid == self {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("kill %d: %w", pid, err))
		}
	}
	return errors.Join(errs...)
}

// writeCgroupFile writes value to a cgroup control file, which must not be
// created or truncated.
func writeCgroupFile(name, value string) error {
	f, err := os.OpenFile(name, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	return errors.Join(err, f.Close())
}
