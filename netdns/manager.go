package netdns

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Options are a Manager's fixed settings.
type Options struct {
	// Dir holds dnsmasq's files (see the package documentation). It is
	// created when missing; it and its parents must be searchable by
	// everyone, since dnsmasq rereads its files as "nobody".
	Dir string
	// Binary is the dnsmasq program: a path, or a name looked up in PATH.
	// Default "dnsmasq".
	Binary string
	// Logger receives dnsmasq's output, line by line, and the manager's
	// own events. Default: discard.
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the wait before dnsmasq is started
	// again after it exited: it doubles from MinBackoff (default 1 s) up
	// to MaxBackoff (default 30 s), and starts over from MinBackoff once
	// dnsmasq has run for a minute.
	MinBackoff, MaxBackoff time.Duration
}

// Action is what an Update did.
type Action int

const (
	// Unchanged: every file already had the rendered contents; nothing
	// was written or signalled.
	Unchanged Action = iota
	// Reload: the hosts files changed; dnsmasq rereads them (SIGHUP).
	Reload
	// Restart: the main configuration changed; dnsmasq is restarted.
	Restart
)

func (a Action) String() string {
	switch a {
	case Unchanged:
		return "unchanged"
	case Reload:
		return "reload"
	case Restart:
		return "restart"
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// stopGrace is how long dnsmasq has to exit after SIGTERM (it writes its
// lease file) before it is killed.
const stopGrace = 5 * time.Second

// resetBackoffAfter is how long dnsmasq must have run for its next exit to
// be retried after MinBackoff again.
const resetBackoffAfter = time.Minute

// Lease checks (see leases.go). Run reads dnsmasq's lease file at once
// after dnsmasq started or reread dhcp-hosts, then every leaseCheckEvery:
// cheap (one small file), and it catches what a read during one of
// dnsmasq's rewrites missed. After releasing leases it looks again after
// releaseRecheck, doubling up to leaseCheckEvery, until they are gone.
const (
	leaseCheckEvery = time.Minute
	releaseRecheck  = 100 * time.Millisecond
	// releaseWarnAfter is how many checks in a row may find the same
	// leases still there before it is logged as a warning.
	releaseWarnAfter = 5
)

// Manager owns one dnsmasq: Update writes its files, Run runs it. Update
// may be called from any goroutine, before or while Run runs.
type Manager struct {
	dir        string
	binary     string // resolved path
	log        *slog.Logger
	minBackoff time.Duration
	maxBackoff time.Duration

	// kick tells Run that Update wrote something (capacity 1: Run reads
	// the generations, so one pending kick stands for any number).
	kick    chan struct{}
	running atomic.Bool // a Run is in progress

	mu sync.Mutex
	// files holds what is on disk, per file; guarded by mu.
	files Files
	// written is set once Update wrote every file; guarded by mu.
	written bool
	// network is the Network of the files on disk; guarded by mu.
	network Network
	// configGen and hostsGen count the writes of the main configuration
	// and of the hosts files; guarded by mu.
	configGen, hostsGen uint64
}

// New checks o and prepares Dir. It starts nothing.
func New(o Options) (*Manager, error) {
	m := &Manager{
		log:        o.Logger,
		minBackoff: o.MinBackoff,
		maxBackoff: o.MaxBackoff,
		kick:       make(chan struct{}, 1),
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if m.minBackoff <= 0 {
		m.minBackoff = time.Second
	}
	if m.maxBackoff <= 0 {
		m.maxBackoff = 30 * time.Second
	}
	m.maxBackoff = max(m.maxBackoff, m.minBackoff)
	bin := o.Binary
	if bin == "" {
		bin = "dnsmasq"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("DHCP and DNS for instances need dnsmasq: %w; install it (Debian: apt-get install dnsmasq-base; NixOS: pkgs.dnsmasq in the service's path)", err)
	}
	m.binary = path
	if !filepath.IsAbs(o.Dir) {
		return nil, fmt.Errorf("dnsmasq state directory %q must be an absolute path", o.Dir)
	}
	m.dir = filepath.Clean(o.Dir)
	if err := os.MkdirAll(m.dir, 0o755); err != nil {
		return nil, fmt.Errorf("create dnsmasq state directory: %w", err)
	}
	if err := searchableByAll(m.dir); err != nil {
		return nil, err
	}
	return m, nil
}

// searchableByAll checks that dir and its parents let any user through:
// dnsmasq drops root for "nobody" after it starts and reads the hosts
// files again on every reload as that user.
func searchableByAll(dir string) error {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("dnsmasq state directory: %w", err)
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("dnsmasq rereads its hosts files in %s as user nobody, but %s is not searchable by other users (mode %v): chmod o+x %s, or choose another state directory", dir, d, fi.Mode().Perm(), d)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// Update renders d and writes the files whose contents changed, each
// atomically (a reader sees the old file or the new one). It returns what
// that means for dnsmasq, which Run carries out: Reload (SIGHUP, which
// makes dnsmasq reread both hosts files and clear its cache) or Restart.
// Unchanged means nothing was written and dnsmasq is left alone. An error
// from Render changes nothing; a failed write keeps the files already
// written, and the next Update retries the rest.
func (m *Manager) Update(ctx context.Context, d Desired) (Action, error) {
	if err := ctx.Err(); err != nil {
		return Unchanged, err
	}
	f, err := Render(m.dir, d)
	if err != nil {
		return Unchanged, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	act := Unchanged
	defer func() {
		if act != Unchanged {
			select {
			case m.kick <- struct{}{}:
			default: // a kick is pending; Run reads the newest generations
			}
		}
	}()
	for _, w := range []struct {
		name string
		have *[]byte
		want []byte
	}{
		{DHCPHostsFile, &m.files.DHCPHosts, f.DHCPHosts},
		{HostsFile, &m.files.Hosts, f.Hosts},
	} {
		if m.written && bytes.Equal(*w.have, w.want) {
			continue
		}
		if err := writeAtomic(filepath.Join(m.dir, w.name), w.want); err != nil {
			return act, err
		}
		*w.have = w.want
		if act == Unchanged {
			m.hostsGen++
			act = Reload
		}
	}
	if !m.written || !bytes.Equal(m.files.Config, f.Config) {
		if err := writeAtomic(filepath.Join(m.dir, ConfigFile), f.Config); err != nil {
			return act, err
		}
		m.files.Config = f.Config
		m.configGen++
		act = Restart
	}
	m.written = true
	m.network = d.Network
	if act != Unchanged && len(f.Skipped) > 0 {
		// Logged only when the files change: Update runs on every pass.
		m.log.Warn("dnsmasq files leave entries out", "skipped", f.Skipped)
	}
	return act, nil
}

// generations returns the current write counts, and false before the
// first complete Update.
func (m *Manager) generations() (config, hosts uint64, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.configGen, m.hostsGen, m.written
}

// static returns the dhcp-hosts file on disk and the network it is for.
func (m *Manager) static() ([]byte, Network) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.files.DHCPHosts, m.network
}

// writeAtomic replaces path with data: a temporary file in the same
// directory, synced, made readable by all (dnsmasq rereads as nobody),
// then renamed over path.
func writeAtomic(path string, data []byte) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp.Name())
		}
	}()
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Run starts dnsmasq once the first Update has written its files, and
// keeps it running until ctx ends: after an Update it sends SIGHUP
// (hosts files) or restarts it (main configuration); when it exits it is
// started again after a backoff. When ctx ends it stops dnsmasq (SIGTERM,
// then SIGKILL after 5 s) and returns nil. Only one Run may be in
// progress.
//
// dnsmasq runs in its own process group, so signals meant for the agent
// (a terminal's Ctrl-C) do not reach it, and dies with the thread that
// started it (PR_SET_PDEATHSIG): an agent killed outright leaves no
// dnsmasq holding the ports its successor needs. It is started in the
// network namespace of the thread that calls Run, and so are the
// DHCPRELEASEs through which Run makes it forget the leases of instances
// that left (see the package documentation).
func (m *Manager) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("netdns: Run is already in progress on this Manager")
	}
	defer m.running.Store(false)
	var (
		p       *proc
		retry   *time.Timer
		retryC  <-chan time.Time
		backoff = m.minBackoff
		check   leaseCheck // scheduled only while p runs and is ready
	)
	defer func() {
		if retry != nil {
			retry.Stop()
		}
		check.stop()
		if p != nil {
			p.stop(m.log)
		}
	}()
	for {
		if p == nil && retryC == nil {
			if cfg, hosts, ok := m.generations(); ok {
				var err error
				if p, err = m.start(cfg, hosts); err != nil {
					m.log.Error("cannot start dnsmasq", "err", err, "retry_in", backoff)
					retry = time.NewTimer(backoff)
					retryC = retry.C
					backoff = min(2*backoff, m.maxBackoff)
				}
			}
		}
		var ready <-chan struct{}
		var dead <-chan struct{}
		if p != nil {
			if !p.isReady {
				ready = p.ready
			}
			dead = p.dead
		}
		select {
		case <-ctx.Done():
			return nil
		case <-m.kick:
			if p == nil {
				continue // the next start reads the new files
			}
			cfg, hosts, _ := m.generations()
			if cfg != p.configGen {
				m.log.Info("dnsmasq configuration changed: restarting dnsmasq", "pid", p.pid)
				check.stop()
				p.stop(m.log)
				p = nil
				backoff = m.minBackoff
				continue
			}
			if hosts != p.hostsGen && p.isReady {
				p.reload(m.log, hosts)
				check.after(0) // an instance may have left: forget its lease
			}
		case <-ready:
			p.isReady = true
			// Files written after the start may not have been read:
			// reread them now that dnsmasq handles SIGHUP.
			if _, hosts, _ := m.generations(); hosts != p.hostsGen {
				p.reload(m.log, hosts)
			}
			check.after(0)
		case <-check.C:
			check.C = nil
			m.checkLeases(&check)
		case <-dead:
			check.stop()
			err := p.reap()
			ran := time.Since(p.started)
			if ran >= resetBackoffAfter {
				backoff = m.minBackoff
			}
			m.log.Warn("dnsmasq exited; starting it again", "pid", p.pid, "err", err, "ran", ran.Round(time.Millisecond),
				"retry_in", backoff, "last_output", p.lastOutput())
			p = nil
			retry = time.NewTimer(backoff)
			retryC = retry.C
			backoff = min(2*backoff, m.maxBackoff)
		case <-retryC:
			retry, retryC = nil, nil
		}
	}
}

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

const tailLines = 5

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

// leaseCheck is Run's timer for lease checks.
type leaseCheck struct {
	t *time.Timer
	// C delivers when a check is due; nil while none is scheduled.
	C <-chan time.Time
	// tries counts the checks in a row that found stale leases.
	tries int
}

// after schedules the next check in d, replacing any scheduled one.
func (c *leaseCheck) after(d time.Duration) {
	if c.t == nil {
		c.t = time.NewTimer(d)
	} else {
		c.t.Reset(d) // since Go 1.23 no stale tick can follow a Reset
	}
	c.C = c.t.C
}

// stop cancels the scheduled check (dnsmasq is not running: its next
// start prunes the lease file instead).
func (c *leaseCheck) stop() {
	if c.t != nil {
		c.t.Stop()
	}
	c.C, c.tries = nil, 0
}

// pruneLeaseFile removes the leases dhcp-hosts does not list from the
// lease file; dnsmasq must not be running.
func (m *Manager) pruneLeaseFile() error {
	hosts, _ := m.static()
	path := filepath.Join(m.dir, LeasesFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // a first start
	}
	if err != nil {
		return fmt.Errorf("read dnsmasq's lease file: %w", err)
	}
	kept, stale := PruneLeases(data, hosts)
	if len(stale) == 0 {
		return nil
	}
	if err := writeAtomic(path, kept); err != nil {
		return err
	}
	m.log.Info("removed the DHCP leases of instances this node no longer serves before starting dnsmasq", "leases", describeLeases(stale))
	return nil
}

// checkLeases makes the running dnsmasq forget the leases dhcp-hosts does
// not list (a DHCPRELEASE each, sent from the calling thread's network
// namespace, which is dnsmasq's), and schedules the next check.
func (m *Manager) checkLeases(c *leaseCheck) {
	hosts, n := m.static()
	data, err := os.ReadFile(filepath.Join(m.dir, LeasesFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		m.log.Warn("cannot read dnsmasq's lease file to find leases of instances that left", "err", err)
		c.after(leaseCheckEvery)
		return
	}
	stale := StaleLeases(data, hosts)
	if len(stale) == 0 {
		if c.tries > 0 {
			m.log.Info("dnsmasq forgot the DHCP leases of instances this node no longer serves")
		}
		c.tries = 0
		c.after(leaseCheckEvery)
		return
	}
	c.tries++
	switch c.tries {
	case 1:
		m.log.Info("releasing the DHCP leases of instances this node no longer serves", "leases", describeLeases(stale))
	case releaseWarnAfter:
		m.log.Warn("dnsmasq keeps DHCP leases of instances this node no longer serves although they were released; "+
			"their addresses cannot be given to other instances here until the leases expire", "leases", describeLeases(stale),
			"expire_within", LeaseTime)
	}
	if err := sendReleases(n, stale); err != nil {
		m.log.Warn("cannot release DHCP leases of instances this node no longer serves", "err", err)
	}
	c.after(min(releaseRecheck<<(c.tries-1), leaseCheckEvery))
}

// sendReleases sends dnsmasq a DHCPRELEASE for each lease, as its client
// would. The socket is bound to the bridge (SO_BINDTODEVICE): the packet
// to the bridge's own address is delivered through loopback, and the
// kernel then reports the bridge as its interface (IP_PKTINFO), which
// dnsmasq serves. It goes once to each of the bridge's addresses in the
// cluster network: dnsmasq accepts only the one it uses as server
// identifier (the first, the node's own address where it has one) and
// ignores the others.
func sendReleases(n Network, leases []Lease) error {
	ifi, err := net.InterfaceByName(n.Bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", n.Bridge, err)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return fmt.Errorf("addresses of bridge %s: %w", n.Bridge, err)
	}
	var servers []netip.Addr
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(ipn.IP.To4()); ok && n.CIDR.Contains(ip) {
				servers = append(servers, ip)
			}
		}
	}
	if len(servers) == 0 {
		return fmt.Errorf("bridge %s has no address in %s, so dnsmasq serves nothing on it yet", n.Bridge, n.CIDR)
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, n.Bridge)
		}); err != nil {
			return err
		}
		return serr
	}}
	conn, err := lc.ListenPacket(context.Background(), "udp4", "0.0.0.0:0")
	if err != nil {
		return fmt.Errorf("socket on bridge %s: %w", n.Bridge, err)
	}
	defer conn.Close()
	var errs []error
	for _, l := range leases {
		for _, s := range servers {
			if _, err := conn.WriteTo(releasePacket(l, s), &net.UDPAddr{IP: s.AsSlice(), Port: dhcpServerPort}); err != nil {
				errs = append(errs, fmt.Errorf("release %s %s: %w", l.MAC, l.Address, err))
			}
		}
	}
	return errors.Join(errs...)
}

// describeLeases is leases for a log line: "MAC ADDRESS" each.
func describeLeases(leases []Lease) []string {
	out := make([]string, len(leases))
	for i, l := range leases {
		out[i] = l.MAC.String() + " " + l.Address.String()
	}
	return out
}
