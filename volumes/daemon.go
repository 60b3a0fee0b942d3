package volumes

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/blixard/blixard/spec"
)

// DaemonAttacher serves each volume from a qemu-storage-daemon of its own: a
// process that is not the agent, started in its own session, so that
// restarting or upgrading blixard leaves every VM's disk in place. The daemon
// opens the image with its own librbd client and exports it over NBD on the
// unix socket at the volume's path, STATE/NAME/volumes/VOL; a qemu runner
// opens it with
//
//	-drive if=none,id=d,format=raw,file.driver=nbd,file.server.type=unix,file.server.path=STATE/NAME/volumes/VOL
//
// (the default export, name ""). The socket gets the owner and group of the
// VM's directory STATE/NAME, so a runner that runs as that user (microvm.nix's
// microvm) can connect. Next to the socket it keeps VOL.daemon, the
// daemon's identity (PID and start time, the image, its Ceph client address
// and the socket's inode; see [DaemonIdentity]), and VOL.log, the daemon's
// output.
//
// The lock. The daemon's client takes the image's exclusive lock on its first
// write, and librbd hands such a lock over to any client that asks for it
// (qemu does not call rbd_lock_acquire). So Attach makes the lock this node's
// before the VM can start: it checks that no client holds the lock (a holder
// that the leader fenced is broken, a live one is a *LockedError), starts the
// daemon on a private socket VOL.new, writes the first sector back to itself
// through it (the probe: the daemon's client takes the lock, the data is
// unchanged, and no VM can reach VOL.new), checks that the lock holder is
// the daemon's client (a client that appeared with the daemon), and only then
// renames VOL.new to VOL. From then on every other Attach of the image, on
// any node, sees the holder and waits; a resize (Conn.Ensure, a spec that
// grew) is forwarded by librbd to the holder and leaves the lock where it is.
//
// After an agent restart, Attach adopts a daemon that still runs (same PID
// and start time), serves the same image on the same socket and holds the
// lock, without disturbing it; anything else at the path is stopped and
// replaced. While attached, the daemon is supervised: if it exits, a new one
// is started the same way (the dead one's lock is broken at once, after its
// address is blocklisted: it no longer runs). A VM sees its disk's requests
// fail with EIO from the exit until qemu's NBD client has reconnected to the
// new daemon, which it does by itself (measured here: a new daemon holds
// the lock 0.2-1s after the exit, the guest writes again ~1.1s after it); a
// drive with qemu's nbd reconnect-delay=SECONDS makes the requests wait for
// the new daemon instead of failing. Detach stops the daemon (SIGTERM:
// qemu closes the image and librbd releases the lock; SIGKILL after
// StopTimeout, and then the lock is broken).
//
// It needs Debian's qemu-system-common (qemu-storage-daemon) and
// qemu-block-extra (qemu's rbd driver); unix socket paths are limited to 107
// bytes.
type DaemonAttacher struct {
	// Config is how the daemon's own Ceph client connects (the same as the
	// agent's: ceph.conf, user, keyring).
	Config Config
	// Bin is the qemu-storage-daemon binary (default: found on PATH).
	Bin string
	// Supervise is how often an attached daemon is checked (default 1s);
	// the exit of a daemon this process started is noticed at once.
	Supervise time.Duration
	// StartTimeout bounds starting a daemon up to its socket answering
	// (default Config.Timeout + 10s).
	StartTimeout time.Duration
	// StopTimeout is how long Detach waits after SIGTERM before SIGKILL
	// (default 10s).
	StopTimeout time.Duration
	Logger      *slog.Logger // nil: discard
}

// maxSocketPath is the longest path a unix socket can be bound to.
const maxSocketPath = 107

// Files next to the socket STATE/NAME/volumes/VOL.
const (
	identitySuffix = ".daemon" // DaemonIdentity as JSON
	logSuffix      = ".log"    // the daemon's stdout and stderr, appended
	newSuffix      = ".new"    // the socket while the daemon is probed
	keySuffix      = ".key"    // the cephx key, while the daemon starts
)

// DaemonIdentity is what VOL.daemon, next to a volume's socket, records of
// the qemu-storage-daemon that serves the volume.
type DaemonIdentity struct {
	// PID and Start (clock ticks since boot, /proc/PID/stat field 22) name
	// the process across PID reuse.
	PID   int    `json:"pid"`
	Start uint64 `json:"start"`
	Pool  string `json:"pool"`
	Image string `json:"image"`
	// Addr is the daemon's Ceph client address: the lock holder, reported
	// in the node's heartbeat so that fencing the node fences it.
	Addr string `json:"addr"`
	// SocketIno is the inode of the socket file the daemon listens on.
	SocketIno uint64 `json:"socketIno"`
}

// ReadDaemonIdentity reads the identity of the daemon serving the volume at
// path (the socket's path).
func ReadDaemonIdentity(path string) (DaemonIdentity, error) {
	var id DaemonIdentity
	b, err := os.ReadFile(path + identitySuffix)
	if err != nil {
		return id, err
	}
	if err := json.Unmarshal(b, &id); err != nil {
		return id, fmt.Errorf("%s%s: %w", path, identitySuffix, err)
	}
	return id, nil
}

// Alive reports whether the daemon still runs.
func (id DaemonIdentity) Alive() bool { return id.proc().alive() }

func (id DaemonIdentity) proc() procID { return procID{PID: id.PID, Start: id.Start} }

func (a DaemonAttacher) withDefaults() DaemonAttacher {
	a.Config = a.Config.withDefaults()
	if a.Bin == "" {
		a.Bin = "qemu-storage-daemon"
	}
	if a.Supervise <= 0 {
		a.Supervise = time.Second
	}
	if a.StartTimeout <= 0 {
		a.StartTimeout = a.Config.Timeout + 10*time.Second
	}
	if a.StopTimeout <= 0 {
		a.StopTimeout = 10 * time.Second
	}
	if a.Logger == nil {
		a.Logger = slog.New(slog.DiscardHandler)
	}
	return a
}

// Attach adopts the daemon serving v at path, or starts one; see
// [DaemonAttacher]. conn is the agent's client: it checks and breaks locks
// and reads the holder; the daemon has a client of its own.
func (a DaemonAttacher) Attach(ctx context.Context, conn *Conn, v spec.VolumeRef, path string) (Attachment, error) {
	a = a.withDefaults()
	if len(path)+len(newSuffix) > maxSocketPath {
		return nil, fmt.Errorf("volume socket path %s%s has %d bytes, unix sockets allow %d: use a shorter --state-dir",
			path, newSuffix, len(path)+len(newSuffix), maxSocketPath)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("volume directory: %w", err)
	}
	d := &daemonAttachment{a: a, conn: conn, v: v, path: path,
		log: a.Logger.With("image", v.Pool+"/"+v.Image, "path", path)}
	id, err := ReadDaemonIdentity(path)
	switch {
	case err == nil:
		why, err := d.adoptable(ctx, id)
		if err != nil {
			return nil, err // a daemon that may be serving the VM is left alone
		}
		if why == "" {
			d.id = id
			d.log.Info("volume daemon adopted", "pid", id.PID, "addr", id.Addr)
			d.supervise()
			return d, nil
		}
		d.log.Info("not adopting the recorded volume daemon", "pid", id.PID, "why", why)
		if err := d.retire(ctx, id); err != nil {
			return nil, err
		}
		if id.Pool == v.Pool && id.Image == v.Image {
			d.id = id // start breaks the lock it may have left
		}
	case !errors.Is(err, os.ErrNotExist):
		d.log.Warn("ignoring an unreadable volume daemon identity", "err", err)
	}
	if err := d.start(ctx); err != nil {
		return nil, err
	}
	d.supervise()
	return d, nil
}

// DetachPath stops a daemon that a previous agent left serving path (one
// this process has no attachment for) and releases its lock; nothing at
// path is not an error.
func (a DaemonAttacher) DetachPath(ctx context.Context, conn *Conn, path string) error {
	a = a.withDefaults()
	id, err := ReadDaemonIdentity(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	d := &daemonAttachment{a: a, conn: conn, path: path, log: a.Logger.With("path", path)}
	if err == nil {
		d.v = spec.VolumeRef{Pool: id.Pool, Image: id.Image}
		d.id = id
	}
	return d.Detach(ctx)
}

// daemonAttachment is one attached volume and its daemon.
type daemonAttachment struct {
	a    DaemonAttacher
	conn *Conn
	v    spec.VolumeRef
	path string
	log  *slog.Logger

	mu     sync.Mutex
	id     DaemonIdentity // guarded by mu; the daemon serving now
	exited chan struct{}  // guarded by mu; closed when our child exits, nil when adopted

	cancel context.CancelFunc // ends supervision; nil when not supervising
	done   chan struct{}      // closed when supervision ended
	once   sync.Once
	err    error
}

// adoptable says why the recorded daemon id cannot serve v at path ("" when
// it can): it must run, serve this image on this socket and hold the lock.
// An error (the lock cannot be read) decides nothing.
func (d *daemonAttachment) adoptable(ctx context.Context, id DaemonIdentity) (string, error) {
	switch {
	case id.Pool != d.v.Pool || id.Image != d.v.Image:
		return fmt.Sprintf("it serves %s/%s", id.Pool, id.Image), nil
	case !id.Alive():
		return "it no longer runs", nil
	}
	if args := strings.Join(id.proc().args(), " "); !strings.Contains(args, "--blockdev") || !strings.Contains(args, "image="+qemuOpt(d.v.Image)+",") {
		return "its process is not a qemu-storage-daemon for this image", nil
	}
	st, err := os.Lstat(d.path)
	if err != nil {
		return "its socket is gone: " + err.Error(), nil
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); !ok || st.Mode()&os.ModeSocket == 0 || sys.Ino != id.SocketIno {
		return "the socket at the path is not the one it listens on", nil
	}
	owners, err := d.conn.Owners(ctx, d.v.Pool, d.v.Image)
	if err != nil {
		return "", fmt.Errorf("reading the lock of RBD image %s/%s to adopt its volume daemon (pid %d): %w", d.v.Pool, d.v.Image, id.PID, err)
	}
	if len(owners) != 1 || owners[0].Addr != id.Addr {
		return fmt.Sprintf("it does not hold the image's lock (holders %v, its address %s)", owners, id.Addr), nil
	}
	// A fenced daemon still runs and holds the lock, but its image stays
	// dead for good: it must be replaced, not adopted.
	bl, err := d.conn.Blocklisted(ctx)
	if err != nil {
		return "", fmt.Errorf("reading the OSD blocklist to adopt the volume daemon (pid %d) of RBD image %s/%s: %w", id.PID, d.v.Pool, d.v.Image, err)
	}
	if slices.Contains(bl, id.Addr) {
		return fmt.Sprintf("its Ceph client %s is blocklisted (the node was fenced)", id.Addr), nil
	}
	return "", nil
}

// retire stops a recorded daemon that is not adopted, and breaks the lock
// it may have left.
func (d *daemonAttachment) retire(ctx context.Context, id DaemonIdentity) error {
	if _, err := d.terminate(ctx, id, nil); err != nil {
		return err
	}
	if id.Pool == d.v.Pool && id.Image == d.v.Image {
		return nil // start breaks a lock it left
	}
	_ = os.Remove(d.path + identitySuffix)
	return breakOwnLock(ctx, d.conn, spec.VolumeRef{Pool: id.Pool, Image: id.Image}, id.Addr)
}

// start starts a daemon for d.v (replacing a dead one recorded in d.id),
// makes its client take the lock, and publishes its socket at d.path.
func (d *daemonAttachment) start(ctx context.Context) error {
	d.mu.Lock()
	prev := d.id // the dead daemon this one replaces, if any
	d.mu.Unlock()
	if err := clearLock(ctx, d.conn, d.v, prev.Addr); err != nil {
		return err
	}
	before, err := d.conn.Watchers(ctx, d.v.Pool, d.v.Image)
	if err != nil {
		return err
	}
	tmp := d.path + newSuffix
	_ = os.Remove(tmp)
	keyFile, err := d.writeKey()
	if err != nil {
		return err
	}
	defer os.Remove(keyFile)
	logPath := d.path + logSuffix
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("volume daemon log: %w", err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "%s blixard: starting qemu-storage-daemon for %s/%s\n", time.Now().Format(time.RFC3339), d.v.Pool, d.v.Image)
	logStart, _ := logf.Seek(0, io.SeekEnd) // errors quote what the daemon said after this
	cmd := exec.Command(d.a.Bin, d.a.args(d.v, tmp, keyFile)...)
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own session: the daemon outlives the agent and gets no terminal signals.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start qemu-storage-daemon for RBD image %s/%s: %w (install Debian's qemu-system-common and qemu-block-extra, scripts/setup-ceph.sh, or use --volume-attach=kernel)",
			d.v.Pool, d.v.Image, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }() // our child: reap it whenever it exits
	fail := func(err error) error {
		// SIGTERM first: a daemon that took the lock releases it as it exits.
		if hard, terr := d.terminate(context.WithoutCancel(ctx), DaemonIdentity{PID: cmd.Process.Pid, Start: startOf(cmd.Process.Pid)}, exited); terr != nil || hard {
			_ = cmd.Process.Kill()
			<-exited
		}
		_ = os.Remove(tmp)
		// Keep the dead predecessor on record: its address is how its
		// stale lock is broken on the next try, by this agent or the next.
		if prev.PID != 0 {
			_ = d.record(prev)
		} else {
			_ = os.Remove(d.path + identitySuffix)
		}
		msg := logTail(logPath, logStart)
		return fmt.Errorf("qemu-storage-daemon for RBD image %s/%s: %w%s", d.v.Pool, d.v.Image, err, daemonHint(msg))
	}

	// Our unreaped child cannot vanish, so its identity is stable here.
	pid, err := identify(cmd.Process.Pid)
	if err != nil {
		return fail(err)
	}
	// Recorded at once, so that an agent that dies before the daemon is
	// published finds and stops it (it is not adoptable: no address, no
	// socket) instead of leaving it holding the lock.
	if err := d.record(DaemonIdentity{PID: pid.PID, Start: pid.Start, Pool: d.v.Pool, Image: d.v.Image}); err != nil {
		return fail(err)
	}
	sctx, cancel := context.WithTimeout(ctx, d.a.StartTimeout)
	defer cancel()
	if err := waitSocket(sctx, tmp, exited); err != nil {
		return fail(err)
	}
	if err := nbdProbe(sctx, tmp); err != nil {
		return fail(fmt.Errorf("taking the image's lock with a write through %s: %w", tmp, err))
	}
	addr, err := d.holder(ctx, before)
	if err != nil {
		return fail(err)
	}
	// The runner may run as another user (microvm.nix: microvm, the owner
	// of STATE/NAME): connecting needs write access to the socket.
	if err := giveToVM(tmp, filepath.Dir(filepath.Dir(d.path))); err != nil {
		return fail(fmt.Errorf("give the socket the owner of the VM's directory: %w", err))
	}
	st, err := os.Lstat(tmp)
	if err != nil {
		return fail(err)
	}
	id := DaemonIdentity{PID: pid.PID, Start: pid.Start, Pool: d.v.Pool, Image: d.v.Image, Addr: addr,
		SocketIno: st.Sys().(*syscall.Stat_t).Ino}
	if err := d.record(id); err != nil {
		return fail(err)
	}
	// Publish: from now on the VM's runner reaches this daemon.
	if err := os.Rename(tmp, d.path); err != nil {
		return fail(fmt.Errorf("publish the socket at %s: %w", d.path, err))
	}
	d.mu.Lock()
	d.id, d.exited = id, exited
	d.mu.Unlock()
	d.log.Info("volume daemon started", "pid", id.PID, "addr", addr)
	return nil
}

// record writes the daemon's identity next to the socket.
func (d *daemonAttachment) record(id DaemonIdentity) error {
	b, _ := json.Marshal(id)
	if err := writeFileAtomic(d.path+identitySuffix, append(b, '\n')); err != nil {
		return fmt.Errorf("record the volume daemon: %w", err)
	}
	return nil
}

// holder returns the address of the lock holder after the probe, which
// must be a client that was not watching the image before the daemon
// started: the daemon's. Anything else means another client writes to the
// image.
func (d *daemonAttachment) holder(ctx context.Context, before []string) (string, error) {
	owners, err := d.conn.Owners(ctx, d.v.Pool, d.v.Image)
	if err != nil {
		return "", err
	}
	after, err := d.conn.Watchers(ctx, d.v.Pool, d.v.Image)
	if err != nil {
		return "", err
	}
	if len(owners) != 1 || slices.Contains(before, owners[0].Addr) || !slices.Contains(after, owners[0].Addr) {
		return "", fmt.Errorf("after its first write the image's lock is held by %v, not by the new daemon (watchers before %v, after %v): another client is writing to the image; see `rbd status %s/%s`",
			owners, before, after, d.v.Pool, d.v.Image)
	}
	return owners[0].Addr, nil
}

// args is the daemon's command line: one rbd block node, uncached (a write
// is acknowledged once it is in RADOS, so a killed daemon loses nothing it
// acknowledged), exported writable over NBD as the default export.
func (a DaemonAttacher) args(v spec.VolumeRef, socket, keyFile string) []string {
	var args []string
	node := "driver=rbd,node-name=disk,pool=" + qemuOpt(v.Pool) + ",image=" + qemuOpt(v.Image) +
		",user=" + qemuOpt(a.Config.User) + ",cache.direct=on,discard=unmap"
	if a.Config.ConfigFile != "" {
		node += ",conf=" + qemuOpt(a.Config.ConfigFile)
	}
	if keyFile != "" {
		args = append(args, "--object", "secret,id=key,format=base64,file="+qemuOpt(keyFile))
		node += ",key-secret=key"
	}
	return append(args, "--blockdev", node,
		"--nbd-server", "addr.type=unix,addr.path="+qemuOpt(socket),
		"--export", "type=nbd,id=export,node-name=disk,writable=on,name=")
}

// qemuOpt escapes a value for qemu's key=value option syntax.
func qemuOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// writeKey writes the user's cephx key for the daemon when the keyring is
// not named in ceph.conf (Config.KeyringFile): qemu's rbd driver takes a key,
// not a keyring. It returns "" when there is none to write.
func (d *daemonAttachment) writeKey() (string, error) {
	if d.a.Config.KeyringFile == "" {
		return "", nil
	}
	key, err := keyringKey(d.a.Config.KeyringFile, "client."+d.a.Config.User)
	if err != nil {
		return "", err
	}
	path := d.path + keySuffix
	_ = os.Remove(path)
	if err := os.WriteFile(path, []byte(key), 0o600); err != nil {
		return "", fmt.Errorf("volume daemon key: %w", err)
	}
	return path, nil
}

// keyringKey returns the key of entity in a Ceph keyring file.
func keyringKey(file, entity string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", fmt.Errorf("ceph keyring: %w", err)
	}
	defer f.Close()
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "[") {
			in = strings.TrimSpace(strings.Trim(line, "[]")) == entity
			continue
		}
		if k, v, ok := strings.Cut(line, "="); in && ok && strings.TrimSpace(k) == "key" {
			return strings.TrimSpace(v), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("ceph keyring %s: %w", file, err)
	}
	return "", fmt.Errorf("ceph keyring %s has no key for %s (check --ceph-user and --ceph-keyring-file)", file, entity)
}

// waitSocket waits until the unix socket path accepts connections, the
// process exits (exited closes) or ctx ends.
func waitSocket(ctx context.Context, path string, exited <-chan struct{}) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return errors.New("it exited before serving")
		case <-ctx.Done():
			return fmt.Errorf("it did not serve %s in time: %w", path, ctx.Err())
		case <-t.C:
		}
	}
}

// logTail returns what the daemon wrote to its log since offset (at most
// the last 2 KiB), trimmed.
func logTail(path string, offset int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if end, err := f.Seek(0, io.SeekEnd); err == nil && end-offset > 2048 {
		offset = end - 2048
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(f)
	return strings.TrimSpace(string(b))
}

// daemonHint turns the daemon's output into the end of an error message.
func daemonHint(out string) string {
	if out == "" {
		return ""
	}
	hint := ""
	if strings.Contains(out, "Unknown driver 'rbd'") {
		hint = " (qemu's rbd driver is missing: install Debian's qemu-block-extra, scripts/setup-ceph.sh)"
	}
	return ": it said: " + out + hint
}

// supervise restarts the daemon while the volume is attached.
func (d *daemonAttachment) supervise() {
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel, d.done = cancel, make(chan struct{})
	go func() {
		defer close(d.done)
		t := time.NewTicker(d.a.Supervise)
		defer t.Stop()
		for {
			d.mu.Lock()
			id, exited := d.id, d.exited
			d.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-exited: // nil (adopted): only the ticker
			}
			if id.Alive() {
				continue
			}
			d.log.Warn("volume daemon exited; starting a new one", "pid", id.PID,
				"log", d.path+logSuffix)
			t0 := time.Now()
			if err := d.start(ctx); err != nil {
				if ctx.Err() == nil {
					d.log.Error("cannot restart the volume daemon; trying again", "err", err, "in", d.a.Supervise)
				}
				d.mu.Lock()
				d.exited = nil // wait for the ticker
				d.mu.Unlock()
				continue
			}
			d.log.Info("volume daemon restarted", "took", time.Since(t0).Round(time.Millisecond))
		}
	}()
}

// stopSupervising ends supervision and waits for it.
func (d *daemonAttachment) stopSupervising() {
	if d.cancel != nil {
		d.cancel()
		<-d.done
	}
}

// Addrs is the daemon's Ceph client address.
func (d *daemonAttachment) Addrs() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.id.Addr == "" {
		return nil
	}
	return []string{d.id.Addr}
}

// Grow grows the image to sizeMiB through conn. librbd forwards the resize
// to the lock holder, the daemon, so the lock stays where it is; the VM
// sees the new size after its disk reconnects to a new daemon (its next
// attach).
func (d *daemonAttachment) Grow(ctx context.Context, conn *Conn, sizeMiB int) (bool, error) {
	res, err := conn.Ensure(ctx, d.v.Pool, d.v.Image, sizeMiB)
	return res.Grown, err
}

// Leave stops supervising and leaves the daemon serving: the agent exits,
// the VM keeps its disk and the next agent adopts the daemon.
func (d *daemonAttachment) Leave() { d.stopSupervising() }

// Detach stops the daemon and releases the lock: SIGTERM (qemu closes the
// image, librbd releases the lock), SIGKILL after StopTimeout, and then
// the dead daemon's lock is broken. It removes the socket and the
// identity; the log stays.
func (d *daemonAttachment) Detach(ctx context.Context) error {
	d.once.Do(func() {
		d.stopSupervising()
		d.mu.Lock()
		id, exited := d.id, d.exited
		d.mu.Unlock()
		hard, err := d.terminate(ctx, id, exited)
		if err != nil {
			d.err = err
			return
		}
		if hard && d.v.Image != "" {
			if d.conn == nil {
				d.err = fmt.Errorf("the volume daemon (pid %d) of %s did not exit cleanly and its lock on RBD image %s/%s cannot be checked without a Ceph connection",
					id.PID, d.path, d.v.Pool, d.v.Image)
				return
			}
			if err := breakOwnLock(ctx, d.conn, d.v, id.Addr); err != nil {
				d.err = err
				return
			}
		}
		d.err = d.removeFiles()
		if id.PID > 0 {
			d.log.Info("volume daemon stopped", "pid", id.PID)
		}
	})
	return d.err
}

// removeFiles removes the socket, the identity and the temporary files;
// the log stays.
func (d *daemonAttachment) removeFiles() error {
	var err error
	for _, suffix := range []string{"", identitySuffix, newSuffix, keySuffix} {
		if e := os.Remove(d.path + suffix); e != nil && !errors.Is(e, os.ErrNotExist) {
			err = e
		}
	}
	return err
}

// abandon stops the daemon of a fenced client (see Manager.Reconnect): it
// stops supervising it, terminates it (SIGTERM, SIGKILL after StopTimeout)
// and removes its files, but leaves the lock it may hold alone: the
// agent's client that would break it was fenced too. On an error the
// daemon may still run; a later Detach is a no-op after a success.
func (d *daemonAttachment) abandon(ctx context.Context) error {
	d.stopSupervising()
	d.mu.Lock()
	id, exited := d.id, d.exited
	d.mu.Unlock()
	if _, err := d.terminate(ctx, id, exited); err != nil {
		return err
	}
	if err := d.removeFiles(); err != nil {
		return err
	}
	d.once.Do(func() {}) // nothing left to detach
	d.log.Info("fenced volume daemon stopped", "pid", id.PID, "addr", id.Addr)
	return nil
}

// terminate stops the daemon id: SIGTERM, then SIGKILL after StopTimeout.
// exited, when not nil, closes when it has exited (our child). hard reports
// that it may have left its lock behind: it was killed, or it had exited
// before (a crash).
func (d *daemonAttachment) terminate(ctx context.Context, id DaemonIdentity, exited <-chan struct{}) (hard bool, err error) {
	p := id.proc()
	if !p.alive() {
		return id.PID > 0, nil
	}
	if err := p.signal(syscall.SIGTERM); err != nil {
		return false, fmt.Errorf("stop the volume daemon (pid %d) of %s: %w", id.PID, d.path, err)
	}
	if waitExit(ctx, p, exited, d.a.StopTimeout) {
		return false, nil
	}
	d.log.Warn("volume daemon ignored SIGTERM; killing it", "pid", id.PID, "after", d.a.StopTimeout)
	if err := p.signal(syscall.SIGKILL); err != nil {
		return true, fmt.Errorf("kill the volume daemon (pid %d) of %s: %w", id.PID, d.path, err)
	}
	if !waitExit(ctx, p, exited, 5*time.Second) {
		return true, fmt.Errorf("the volume daemon (pid %d) of %s still runs after SIGKILL", id.PID, d.path)
	}
	return true, nil
}

// waitExit waits up to timeout for p to exit.
func waitExit(ctx context.Context, p procID, exited <-chan struct{}, timeout time.Duration) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for p.alive() {
		select {
		case <-exited:
		case <-t.C:
		case <-deadline.C:
			return !p.alive()
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// clearLock makes sure nobody holds v's lock before a new daemon or mapping
// takes it. A holder that cannot write any more is blocklisted and its lock
// broken at once: dead, the address of this volume's own daemon that no
// longer runs, and any holder that no longer watches the image (a client
// that died or lost the cluster; librbd breaks such locks the same way, but
// only after a request to the holder timed out). Any other holder's lock is
// broken only when the holder is fenced (blocklisted, as the leader does
// before it moves a silent node's VMs); a live holder is a *LockedError:
// another node runs the VM, wait for it.
func clearLock(ctx context.Context, conn *Conn, v spec.VolumeRef, dead string) error {
	owners, err := conn.Owners(ctx, v.Pool, v.Image)
	if err != nil || len(owners) == 0 {
		return err
	}
	watching, err := conn.Watchers(ctx, v.Pool, v.Image)
	if err != nil {
		return err
	}
	var gone []string
	for _, o := range owners {
		if o.Addr == dead || !slices.Contains(watching, o.Addr) {
			gone = append(gone, o.Addr)
		}
	}
	if len(gone) > 0 {
		if err := conn.Blocklist(ctx, gone, DefaultFenceExpiry); err != nil {
			return fmt.Errorf("blocklisting %v, which hold the lock of RBD image %s/%s but no longer run: %w", gone, v.Pool, v.Image, err)
		}
	}
	if err := conn.BreakLock(ctx, v.Pool, v.Image); err != nil {
		var nf *NotFencedError
		if errors.As(err, &nf) {
			return &LockedError{Pool: v.Pool, Image: v.Image, Owners: owners}
		}
		return fmt.Errorf("breaking the fenced lock of RBD image %s/%s: %w", v.Pool, v.Image, err)
	}
	return nil
}

// breakOwnLock breaks v's lock when addr, a daemon of ours that no longer
// runs, still holds it (it was killed); a lock held by anyone else is left
// alone.
func breakOwnLock(ctx context.Context, conn *Conn, v spec.VolumeRef, addr string) error {
	if addr == "" {
		return nil
	}
	owners, err := conn.Owners(ctx, v.Pool, v.Image)
	if err != nil {
		return err
	}
	if len(owners) == 1 && owners[0].Addr == addr {
		return clearLock(ctx, conn, v, addr)
	}
	return nil
}

// writeFileAtomic writes path through a temporary file renamed over it.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
