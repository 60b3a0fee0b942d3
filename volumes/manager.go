package volumes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"

	"github.com/blixard/blixard/spec"
)

// ErrFenced is wrapped by the errors of a [Manager] whose Ceph client is
// blocklisted (errors.Is): every request of that client fails with Ceph's
// EBLOCKLISTED (ESHUTDOWN, -108) until it is replaced by [Manager.Reconnect].
var ErrFenced = errors.New("this node's Ceph client is blocklisted: the leader fenced this node after it missed its heartbeats, and it attaches no volume until `blixard node ready` is run for it, which reconnects it with a new client")

// errnoBlocklisted is the error code of every OSD request of a blocklisted
// client: Ceph's EBLOCKLISTED, which it defines as ESHUTDOWN.
const errnoBlocklisted = -108

// Manager is a node's volumes: one lazily connected Ceph client (the
// node's client address, the one it registers for fencing) and the
// attachments of the VMs on this node. It satisfies the node agent's
// Volumes interface. Safe for concurrent use; calls for different paths do
// not wait on each other except while connecting, and all of them wait
// for a Reconnect.
type Manager struct {
	cfg Config
	att Attacher
	log *slog.Logger

	// use is held shared by Attach and Detach and exclusively by Reconnect
	// and Close, which change the set of attachments as a whole.
	use sync.RWMutex

	mu       sync.Mutex
	conn     *Conn                  // guarded by mu; nil until connected
	addrs    []string               // guarded by mu; conn's addresses
	attached map[string]*attachment // by path; guarded by mu
	// fenced: a request of conn failed because it is blocklisted (guarded
	// by mu); Reconnect replaces the client then, even when the blocklist
	// entry is already gone.
	fenced bool
}

type attachment struct {
	ref spec.VolumeRef
	a   Attachment
}

// NewManager returns a manager; it connects on first use. att nil means
// the attacher of cfg.Attach: a [KernelAttacher] or a [DaemonAttacher]
// (AttachAuto: kernel when the kernel has the rbd driver).
func NewManager(cfg Config, att Attacher, log *slog.Logger) *Manager {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	if att == nil {
		mode := cfg.Attach.resolve()
		switch mode {
		case AttachKernel:
			att = KernelAttacher{Config: cfg, Logger: log}
		default:
			att = DaemonAttacher{Config: cfg, Logger: log}
		}
		log.Info("volumes attach", "mode", mode, "asked", cfg.Attach)
	}
	return &Manager{cfg: cfg, att: att, log: log, attached: map[string]*attachment{}}
}

// Conn returns the node's client, connecting when there is none yet. A
// failed attempt is not remembered: the next call tries again.
func (m *Manager) Conn(ctx context.Context) (*Conn, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.conn != nil {
		return m.conn, nil
	}
	c, err := Connect(ctx, m.cfg)
	if err != nil {
		return nil, err
	}
	m.conn = c
	if addrs, err := c.Addrs(); err == nil {
		m.addrs = addrs
		m.log.Info("connected to Ceph", "user", m.cfg.User, "addrs", addrs)
	}
	return c, nil
}

// Addrs returns the node's Ceph client addresses for
// replicated.RegisterNode.CephAddrs, connecting first. Call it at startup;
// on an error register without addresses and log it (the VMs with volumes
// will report Ceph's error themselves).
func (m *Manager) Addrs(ctx context.Context) ([]string, error) {
	c, err := m.Conn(ctx)
	if err != nil {
		return nil, err
	}
	return c.Addrs()
}

// ClientAddrs returns every Ceph client address that writes for this node
// now: its own client's (once connected) and those of the daemons or
// kernel mappings of its attached volumes. The agent reports them in its
// heartbeat (NodeHeartbeat.CephAddrs), so that fencing the node
// blocklists them all. It never blocks on Ceph.
func (m *Manager) ClientAddrs() []string {
	m.mu.Lock()
	out := slices.Clone(m.addrs)
	atts := make([]Attachment, 0, len(m.attached))
	for _, a := range m.attached {
		atts = append(atts, a.a)
	}
	m.mu.Unlock()
	for _, a := range atts {
		for _, addr := range a.Addrs() {
			if !slices.Contains(out, addr) {
				out = append(out, addr)
			}
		}
	}
	slices.Sort(out)
	return out
}

// Attachment returns the attachment at path, nil when this manager has
// none there (yet: an agent's first Attach after a restart adopts it).
func (m *Manager) Attachment(path string) Attachment {
	m.mu.Lock()
	defer m.mu.Unlock()
	if a := m.attached[path]; a != nil {
		return a.a
	}
	return nil
}

// Attach makes v ready for its VM at path: the image exists and has at
// least v.SizeMiB ([Conn.Ensure]), this node holds its exclusive lock and it
// is exposed at path by the attacher, which adopts what a previous agent
// left attached there. A path already attached to the same image is left
// as it is (a larger size grows the image in place where the attacher can).
func (m *Manager) Attach(ctx context.Context, v spec.VolumeRef, path string) error {
	if v.Image == "" {
		return fmt.Errorf("volume %s has no valid image name", v.Name)
	}
	m.use.RLock()
	defer m.use.RUnlock()
	return m.noteFenced(m.attach(ctx, v, path))
}

func (m *Manager) attach(ctx context.Context, v spec.VolumeRef, path string) error {
	m.mu.Lock()
	cur := m.attached[path]
	m.mu.Unlock()
	if cur != nil && cur.ref.Pool == v.Pool && cur.ref.Image == v.Image {
		return m.grow(ctx, cur, v)
	}
	if cur != nil {
		if err := m.detach(ctx, path); err != nil {
			return err
		}
	}
	c, err := m.Conn(ctx)
	if err != nil {
		return err
	}
	res, err := c.Ensure(ctx, v.Pool, v.Image, v.SizeMiB)
	if err != nil {
		return err
	}
	switch {
	case res.Created:
		m.log.Info("RBD image created", "image", v.Pool+"/"+v.Image, "sizeMiB", v.SizeMiB)
	case res.Grown:
		m.log.Info("RBD image grown", "image", v.Pool+"/"+v.Image, "sizeMiB", v.SizeMiB)
	}
	a, err := m.att.Attach(ctx, c, v, path)
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.attached[path] = &attachment{ref: v, a: a}
	m.mu.Unlock()
	m.log.Info("volume attached", "image", v.Pool+"/"+v.Image, "path", path)
	return nil
}

// grow grows an attached image when v is larger, where the attachment can
// (a daemon's: librbd has the lock holder resize it); otherwise the image
// grows at its next attach.
func (m *Manager) grow(ctx context.Context, cur *attachment, v spec.VolumeRef) error {
	if v.SizeMiB <= cur.ref.SizeMiB {
		return nil
	}
	g, ok := cur.a.(interface {
		Grow(ctx context.Context, conn *Conn, sizeMiB int) (bool, error)
	})
	if !ok {
		return nil // grown at the next attach
	}
	c, err := m.Conn(ctx)
	if err != nil {
		return err
	}
	grown, err := g.Grow(ctx, c, v.SizeMiB)
	if err != nil {
		return err
	}
	if grown {
		m.log.Info("RBD image grown while attached", "image", v.Pool+"/"+v.Image, "sizeMiB", v.SizeMiB)
	}
	m.mu.Lock()
	cur.ref.SizeMiB = v.SizeMiB
	m.mu.Unlock()
	return nil
}

// Detach unexposes path and releases its image's lock; a path that is not
// attached is not an error, and what a previous agent left attached there
// is detached too. Call it after the VM stopped.
func (m *Manager) Detach(ctx context.Context, path string) error {
	m.use.RLock()
	defer m.use.RUnlock()
	return m.noteFenced(m.detach(ctx, path))
}

func (m *Manager) detach(ctx context.Context, path string) error {
	m.mu.Lock()
	cur := m.attached[path]
	delete(m.attached, path)
	m.mu.Unlock()
	if cur == nil {
		// Without a client the attacher does what it can (stop a daemon
		// that exits cleanly, unmap) and fails only if it needs one.
		c, cerr := m.Conn(ctx)
		if err := m.att.DetachPath(ctx, c, path); err != nil {
			return errors.Join(err, cerr)
		}
		return nil
	}
	if err := cur.a.Detach(ctx); err != nil {
		return fmt.Errorf("detach %s/%s from %s: %w", cur.ref.Pool, cur.ref.Image, path, err)
	}
	m.log.Info("volume detached", "image", cur.ref.Pool+"/"+cur.ref.Image, "path", path)
	return nil
}

// Close ends the client session and forgets the attachments without
// detaching them: their daemons or kernel mappings keep serving the VMs,
// and the next agent's Attach adopts them. The agent detaches the volumes
// of the VMs it stops itself (StopOnExit) before.
func (m *Manager) Close(context.Context) error {
	m.use.Lock()
	defer m.use.Unlock()
	m.mu.Lock()
	atts := m.attached
	m.attached = map[string]*attachment{}
	m.mu.Unlock()
	for _, a := range atts {
		a.a.Leave()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.conn != nil {
		m.conn.Close()
		m.conn, m.addrs = nil, nil
	}
	return nil
}

// noteFenced marks the manager fenced when err says its client is
// blocklisted, and wraps err with ErrFenced, which says what to do.
func (m *Manager) noteFenced(err error) error {
	if err == nil || Errno(err) != errnoBlocklisted || errors.Is(err, ErrFenced) {
		return err
	}
	m.mu.Lock()
	first := !m.fenced
	m.fenced = true
	m.mu.Unlock()
	if first {
		m.log.Warn("this node's Ceph client is blocklisted (fenced by the leader); volumes stay cut off until the node is made ready again", "err", err)
	}
	return fmt.Errorf("%w: %w", ErrFenced, err)
}

// Reconnected says what [Manager.Reconnect] did.
type Reconnected struct {
	// Fenced are this node's client addresses Reconnect found on the OSD
	// blocklist. When it is empty and Addrs is too, the node's clients
	// were not fenced and Reconnect changed nothing.
	Fenced []string
	// Addrs are the addresses of the node's new client (none when it kept
	// the old one).
	Addrs []string
	// Stopped are the paths whose attachments were stopped and forgotten
	// because their clients were blocklisted: the VM's disk behind each is
	// gone. The agent must treat those volumes as detached (and stop a VM
	// still running on one) so that its normal logic attaches them again.
	Stopped []string
}

// Reconnect gives a fenced node working volumes again without a restart.
// The node wiring calls it when this node is no longer down in the local
// replica (`blixard node ready` after the leader fenced it), and again
// while the replica still lists fenced addresses for this node and an
// earlier call failed: when none of this node's clients is on the OSD
// blocklist (and no request failed as fenced) it changes nothing, at the
// cost of one monitor command.
//
// A fenced node is reconnected in this order, so that no client with a
// fenced address is alive once the node reports a new one:
//
//  1. The attachments whose clients are blocklisted are stopped (a volume
//     daemon: SIGTERM, SIGKILL after its StopTimeout; a kernel mapping:
//     unmapped) and forgotten; their paths are returned in Stopped. Such a
//     client never writes again (librbd keeps an image that a blocklisted
//     client opened failing), but it would hold its lock and be adopted.
//     Attachments whose clients are not blocklisted stay.
//  2. The node's own client is replaced ([Conn.Reconnect]): a new client
//     address, the old session shut down. (A librados client that is
//     still open works again once its blocklist entry is lifted.)
//  3. The locks the stopped clients still hold are broken through the new
//     client, while they are still blocklisted ([Conn.BreakLock] allows
//     nothing else), so the next Attach does not wait for them.
//  4. The new addresses are published: [Manager.ClientAddrs] reports
//     them, the agent's heartbeat carries them, and the leader, seeing
//     that the node no longer reports any fenced address, lifts their
//     blocklist entries ([Fencer.Unfence]).
//
// It waits for the Attach and Detach calls in flight and holds new ones
// until it is done. An error leaves the manager fenced (an attachment that
// could not be stopped is still reported, so the leader keeps its fence);
// call Reconnect again.
func (m *Manager) Reconnect(ctx context.Context) (Reconnected, error) {
	var res Reconnected
	m.use.Lock()
	defer m.use.Unlock()
	m.mu.Lock()
	c, own, fenced := m.conn, slices.Clone(m.addrs), m.fenced
	atts := maps.Clone(m.attached)
	m.mu.Unlock()
	if c == nil {
		return res, nil // not connected yet: the first use connects a new client
	}
	bl, err := c.Blocklisted(ctx)
	if err != nil {
		return res, fmt.Errorf("reading the OSD blocklist to see whether this node's Ceph clients are fenced: %w", err)
	}
	res.Fenced = intersect(own, bl)
	dead := map[string]*attachment{}
	for path, a := range atts {
		if hit := intersect(a.a.Addrs(), bl); len(hit) > 0 {
			res.Fenced = append(res.Fenced, hit...)
			dead[path] = a
		}
	}
	if len(res.Fenced) == 0 && !fenced {
		return Reconnected{}, nil
	}
	slices.Sort(res.Fenced)
	res.Fenced = slices.Compact(res.Fenced)
	m.log.Warn("this node's Ceph clients were fenced; reconnecting", "fenced", res.Fenced, "attachments", len(dead))

	// 1. Stop the fenced attachments.
	var errs []error
	var stale []staleLock
	for _, path := range slices.Sorted(maps.Keys(dead)) {
		a := dead[path]
		if err := abandon(ctx, a.a); err != nil {
			errs = append(errs, fmt.Errorf("stopping the fenced attachment of RBD image %s/%s at %s: %w", a.ref.Pool, a.ref.Image, path, err))
			continue
		}
		m.mu.Lock()
		delete(m.attached, path)
		m.mu.Unlock()
		res.Stopped = append(res.Stopped, path)
		stale = append(stale, staleLock{ref: a.ref, addrs: a.a.Addrs()})
		m.log.Info("fenced volume attachment stopped", "image", a.ref.Pool+"/"+a.ref.Image, "path", path)
	}
	// 2. A new client for the node.
	if err := c.Reconnect(ctx); err != nil {
		return res, errors.Join(append(errs, fmt.Errorf("reconnecting this node's Ceph client: %w", err))...)
	}
	addrs, err := c.Addrs()
	if err != nil {
		return res, errors.Join(append(errs, err)...)
	}
	// 3. Break the stopped clients' locks while they are blocklisted.
	for _, s := range stale {
		if err := breakStaleLock(ctx, c, s); err != nil {
			// Not fatal: the next Attach breaks a lock whose holder no
			// longer watches the image.
			m.log.Warn("cannot break the lock a fenced volume client left; the next attach tries again", "image", s.ref.Pool+"/"+s.ref.Image, "err", err)
		}
	}
	// 4. Publish.
	m.mu.Lock()
	m.addrs, m.fenced = addrs, len(errs) > 0
	m.mu.Unlock()
	res.Addrs = addrs
	m.log.Info("reconnected to Ceph with a new client", "addrs", addrs, "fenced", res.Fenced)
	return res, errors.Join(errs...)
}

// staleLock is the image of a stopped attachment and the addresses of its
// client, which may still hold the image's lock.
type staleLock struct {
	ref   spec.VolumeRef
	addrs []string
}

// breakStaleLock breaks s's image lock when only s's addresses hold it
// (BreakLock also refuses unless they are blocklisted). A lock held by
// anyone else (the node the VM moved to) is left alone.
func breakStaleLock(ctx context.Context, c *Conn, s staleLock) error {
	owners, err := c.Owners(ctx, s.ref.Pool, s.ref.Image)
	if err != nil {
		return err
	}
	for _, o := range owners {
		if !slices.Contains(s.addrs, o.Addr) {
			return nil
		}
	}
	if len(owners) == 0 {
		return nil
	}
	return c.BreakLock(ctx, s.ref.Pool, s.ref.Image)
}

// abandoner is an attachment that can stop serving without releasing its
// lock through the agent's client (both were fenced).
type abandoner interface {
	abandon(ctx context.Context) error
}

// abandon stops a fenced attachment: its own way when it has one, else by
// detaching it (a kernel mapping is unmapped).
func abandon(ctx context.Context, a Attachment) error {
	if ab, ok := a.(abandoner); ok {
		return ab.abandon(ctx)
	}
	return a.Detach(ctx)
}

// intersect returns the elements of a that are in b.
func intersect(a, b []string) []string {
	var out []string
	for _, x := range a {
		if slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}
