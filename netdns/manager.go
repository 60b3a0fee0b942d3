package netdns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
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

const tailLines = 5
