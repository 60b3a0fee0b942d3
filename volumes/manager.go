package volumes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	attached map[string]*attachment // by path; guarded by mu
}

type attachment struct {
	ref spec.VolumeRef
	a   Attachment
}

// NewManager returns a manager; it connects on first use. att nil means
// NBDAttacher.
func NewManager(cfg Config, att Attacher, log *slog.Logger) *Manager {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if att == nil {
		att = NBDAttacher{Logger: log}
	}
	return &Manager{cfg: cfg.withDefaults(), att: att, log: log, attached: map[string]*attachment{}}
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

// Attach makes v ready for its VM at path: the image exists and has at
// least v.SizeMiB ([Conn.Ensure]), this node holds its exclusive lock and it
// is exposed at path by the attacher. A path already attached to the same
// image is left as it is.
func (m *Manager) Attach(ctx context.Context, v spec.VolumeRef, path string) error {
	if v.Image == "" {
		return fmt.Errorf("volume %s has no valid image name", v.Name)
	}
	m.mu.Lock()
	cur := m.attached[path]
	m.mu.Unlock()
	if cur != nil && cur.ref.Pool == v.Pool && cur.ref.Image == v.Image {
		if v.SizeMiB <= cur.ref.SizeMiB {
			return nil
		}
		g, ok := cur.a.(interface {
			Grow(ctx context.Context, sizeMiB int) (bool, error)
		})
		if !ok {
			return nil // grown at the next attach
		}
		grown, err := g.Grow(ctx, v.SizeMiB)
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

// Detach unexposes path and releases its image's lock; a path that is not
// attached is not an error. Call it after the VM stopped.
func (m *Manager) Detach(ctx context.Context, path string) error {
	m.mu.Lock()
	cur := m.attached[path]
	delete(m.attached, path)
	m.mu.Unlock()
	if cur == nil {
		return nil
	}
	if err := cur.a.Detach(ctx); err != nil {
		return fmt.Errorf("detach %s/%s from %s: %w", cur.ref.Pool, cur.ref.Image, path, err)
	}
	m.log.Info("volume detached", "image", cur.ref.Pool+"/"+cur.ref.Image, "path", path)
	return nil
}

// Close detaches every volume and ends the client session. Call it after
// the VMs stopped, or at exit: NBD attachments cannot outlive the process.
func (m *Manager) Close(ctx context.Context) error {
	m.mu.Lock()
	paths := make([]string, 0, len(m.attached))
	for p := range m.attached {
		paths = append(paths, p)
	}
	m.mu.Unlock()
	var errs []error
	for _, p := range paths {
		errs = append(errs, m.Detach(ctx, p))
	}
	m.mu.Lock()
	if m.conn != nil {
		m.conn.Close()
		m.conn = nil
	}
	m.mu.Unlock()
	return errors.Join(errs...)
}
