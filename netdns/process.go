package netdns

// The dnsmasq process the Manager supervises: start, reload, stop, its output.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// proc is one dnsmasq process. Only Run's goroutine uses it, except for
// the channels and the output tail.
type proc struct {
	cmd     *exec.Cmd
	pid     int
	started time.Time
	// configGen and hostsGen are the generations of the files this
	// process has certainly read: those written before it started, and
	// the hosts files of its last SIGHUP.
	configGen, hostsGen uint64
	// ready is closed at dnsmasq's first line of output. dnsmasq installs
	// its signal handlers before it prints anything; before that, SIGHUP
	// would kill it (the default action). It reads the hosts files only
	// after that point, in its event loop, so nothing written before
	// ready is missed.
	ready   chan struct{}
	isReady bool
	// dead is closed when the process has exited but is not reaped yet:
	// its pid, and so its process group id, cannot be reused until reap.
	dead chan struct{}
	// output is closed when everything in the group closed the pipe.
	output chan struct{}

	tailMu sync.Mutex
	tail   []string // the last lines of output; guarded by tailMu
}

// start execs dnsmasq with the files of the given generations, which
// are on disk, after removing the leases dhcp-hosts does not list from
// its lease file (dnsmasq reads it only now).
func (m *Manager) start(configGen, hostsGen uint64) (*proc, error) {
	if err := m.pruneLeaseFile(); err != nil {
		// Run's lease check releases them once dnsmasq runs.
		m.log.Warn("cannot remove stale leases from dnsmasq's lease file before starting it", "err", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("pipe for dnsmasq's output: %w", err)
	}
	cmd := exec.Command(m.binary, "--keep-in-foreground", "--conf-file="+filepath.Join(m.dir, ConfigFile))
	cmd.Dir = "/"
	cmd.Env = []string{"LC_ALL=C"} // messages in English, whatever the agent's locale
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	_ = w.Close() // the child has its copy; EOF comes when it and its children exit
	if err != nil {
		_ = r.Close()
		return nil, fmt.Errorf("start %s: %w", m.binary, err)
	}
	p := &proc{
		cmd:       cmd,
		pid:       cmd.Process.Pid,
		started:   time.Now(),
		configGen: configGen,
		hostsGen:  hostsGen,
		ready:     make(chan struct{}),
		dead:      make(chan struct{}),
		output:    make(chan struct{}),
	}
	m.log.Info("dnsmasq started", "pid", p.pid, "config", filepath.Join(m.dir, ConfigFile))
	go p.copyOutput(r, m.log)
	go p.waitExit()
	return p, nil
}

// waitExit closes dead once the process exited, without reaping it
// (WNOWAIT), so Run can still signal its process group safely.
func (p *proc) waitExit() {
	defer close(p.dead)
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, p.pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			return // exited, or not waitable (then reap reports why)
		}
	}
}

// reap kills what is left of the process group (dnsmasq's TCP children)
// and collects the exit status; it waits for the output to drain.
func (p *proc) reap() error {
	_ = unix.Kill(-p.pid, unix.SIGKILL) // the zombie leader keeps the group id ours
	err := p.cmd.Wait()
	<-p.output
	return err
}

// stop ends the process: SIGTERM, SIGKILL after stopGrace, then reap.
func (p *proc) stop(log *slog.Logger) {
	_ = unix.Kill(p.pid, unix.SIGTERM)
	t := time.NewTimer(stopGrace)
	defer t.Stop()
	select {
	case <-p.dead:
	case <-t.C:
		log.Warn("dnsmasq ignored SIGTERM: killing it", "pid", p.pid, "after", stopGrace)
		_ = unix.Kill(p.pid, unix.SIGKILL)
		<-p.dead
	}
	_ = p.reap()
	log.Info("dnsmasq stopped", "pid", p.pid)
}

// reload sends SIGHUP for the hosts files of generation gen.
func (p *proc) reload(log *slog.Logger, gen uint64) {
	if err := unix.Kill(p.pid, unix.SIGHUP); err != nil {
		log.Warn("cannot signal dnsmasq to reread its hosts files", "pid", p.pid, "err", err)
		return
	}
	p.hostsGen = gen
}

// copyOutput logs dnsmasq's lines ("dnsmasq[PID]: message",
// "dnsmasq-dhcp[PID]: message") and keeps the last few.
func (p *proc) copyOutput(r *os.File, log *slog.Logger) {
	defer close(p.output)
	defer r.Close()
	sc := bufio.NewScanner(r)
	first := true
	for sc.Scan() {
		if first {
			close(p.ready)
			first = false
		}
		if strings.TrimSpace(sc.Text()) == "" {
			continue // dnsmasq starts a fatal error with an empty line
		}
		source, msg := splitLogLine(sc.Text())
		level := slog.LevelInfo
		if lower := strings.ToLower(msg); strings.Contains(lower, "warning") || strings.Contains(lower, "fail") ||
			strings.Contains(lower, "error") || strings.Contains(lower, "cannot") {
			level = slog.LevelWarn
		}
		log.Log(context.Background(), level, msg, "source", source, "pid", p.pid)
		p.tailMu.Lock()
		p.tail = append(p.tail, msg)
		if len(p.tail) > tailLines {
			p.tail = p.tail[1:]
		}
		p.tailMu.Unlock()
	}
	// A line too long for the scanner ends it: keep draining, or dnsmasq
	// would block writing its log.
	_, _ = io.Copy(io.Discard, r)
}

func (p *proc) lastOutput() string {
	p.tailMu.Lock()
	defer p.tailMu.Unlock()
	return strings.Join(p.tail, " | ")
}

// splitLogLine splits "dnsmasq-dhcp[123]: message" (a log line) or
// "dnsmasq: message" (a fatal error) into its program and message; other
// lines are all message.
func splitLogLine(line string) (source, msg string) {
	prog, rest, ok := strings.Cut(line, ": ")
	if i := strings.IndexByte(prog, '['); i > 0 && strings.HasSuffix(prog, "]") {
		prog = prog[:i]
	}
	if ok && strings.HasPrefix(prog, "dnsmasq") && !strings.ContainsAny(prog, " []") {
		return prog, rest
	}
	return "dnsmasq", line
}
