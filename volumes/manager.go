package volumes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/blixard/blixard/spec"
)

// Manager is a node's volumes: one lazily connected Ceph client (the
// node's client address, the one it registers for fencing) and the
// attachments of the VMs on this node. It satisfies the node agent's
// Volumes interface. Safe for concurrent use; calls for different paths do
// not wait on each other except while connecting.
type Manager struct {
	cfg Config
	att Attacher
	log *slog.Logger

	mu       sync.Mutex
	conn     *Conn                  // guarded by mu; nil until connected
	addrs    []string               // guarded by mu; conn's addresses
	attached map[string]*attachment // by path; guarded by mu
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
	m.mu.Lock()
	cur := m.attached[path]
	m.mu.Unlock()
	if cur != nil && cur.ref.Pool == v.Pool && cur.ref.Image == v.Image {
		return m.grow(ctx, cur, v)
	}
	if cur != nil {
		if err := m.Detach(ctx, path); err != nil {
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
