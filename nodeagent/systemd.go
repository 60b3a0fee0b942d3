package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
)

// SystemdOptions configures a [SystemdBackend].
type SystemdOptions struct {
	// StateDir is STATE as this process sees it (default /var/lib/microvms):
	// the backend reads STATE/NAME/booted there. The units use their own
	// paths (microvm.nix's microvm.stateDir, /var/lib/microvms by default).
	StateDir string
	// BusAddress is the D-Bus address of the bus systemd is on; "" is the
	// system bus. Tests pass unix:path=… of a container's system bus.
	BusAddress string
	// Root is the root directory, as this process sees it, of the system
	// that systemd runs: the units' user and group (microvm:kvm) are looked
	// up in its etc/passwd and etc/group, and their journal is read through
	// it (journalctl --root). "" (the default) is this host: users through
	// NSS, the journal as journalctl finds it. Tests whose systemd runs in a
	// container pass that container's root.
	Root string
	// UnitPrefix names unit NAME UnitPrefix+NAME+".service" (default
	// "microvm@", the instances of microvm.nix's microvm@.service template).
	UnitPrefix string
	Logger     *slog.Logger
}

// SystemdBackend is a [Backend] that runs each VM as a systemd unit,
// microvm@NAME.service, the way microvm.nix's host module does: systemd
// supervises the runner (Restart=always in the template), runs it as
// microvm:kvm in STATE/NAME, keeps its logs (journalctl -u microvm@NAME,
// served by TailConsole) and records STATE/NAME/booted (the template's
// companion microvm-set-booted@NAME.service, also as microvm:kvm: the
// backend never writes booted itself). The agent gives STATE/NAME and
// current to microvm:kvm when it switches current, as microvm.nix's
// install-microvm-NAME does; Start repairs a directory that is still
// root's. The backend starts, restarts and stops units through systemd jobs
// over D-Bus, reads their state from unit properties, and learns of changes
// from PropertiesChanged signals.
//
// Units belong to systemd, not to the agent: ending Run does not touch them,
// and a new backend simply reads them (adoption needs no bookkeeping).
//
// Lifecycle: [NewSystemdBackend] connects and checks that the template
// exists; Run subscribes to unit changes and closes the connection when its
// ctx ends. Call Close instead when Run is never called.
type SystemdBackend struct {
	o      SystemdOptions
	log    *slog.Logger
	conn   *sddbus.Conn // jobs and properties; closed by closeConn
	events chan string
	ready  chan struct{} // closed when Run has subscribed
	done   chan struct{} // closed when Run has returned

	mu  sync.Mutex
	ops map[string]*sync.Mutex // per VM: serialises Start, Stop and Restart; guarded by mu
	// cache holds the last state read of each VM's unit, valid while its
	// generation equals gens[name]; a PropertiesChanged signal of the unit
	// and every job of the backend bump the generation. Guarded by mu.
	cache map[string]cachedState
	gens  map[string]uint64

	runOnce   sync.Once
	closeOnce sync.Once
}

const (
	systemdDest      = "org.freedesktop.systemd1"
	systemdPath      = dbus.ObjectPath("/org/freedesktop/systemd1")
	systemdUnitPath  = dbus.ObjectPath("/org/freedesktop/systemd1/unit")
	systemdUnitIface = "org.freedesktop.systemd1.Unit"
	systemdSvcIface  = "org.freedesktop.systemd1.Service"
	// systemdCallTimeout bounds the D-Bus calls of methods without a ctx.
	systemdCallTimeout = 30 * time.Second
)

// NewSystemdBackend connects to systemd and checks that it has the unit
// template (UnitPrefix+".service", microvm@.service by default). It fails
// when systemd cannot be reached or the template is missing, saying which
// NixOS option provides it. It starts no goroutine of its own; call Run, or
// Close when Run will not be called.
func NewSystemdBackend(ctx context.Context, o SystemdOptions) (*SystemdBackend, error) {
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if o.UnitPrefix == "" {
		o.UnitPrefix = "microvm@"
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	conn, err := sddbus.NewConnection(func() (*dbus.Conn, error) { return dialSystemd(o.BusAddress) })
	if err != nil {
		return nil, fmt.Errorf("nodeagent: connect to systemd on %s: %w (is this host running systemd? otherwise use --backend process)",
			busName(o.BusAddress), err)
	}
	b := &SystemdBackend{
		o:      o,
		log:    log.With("backend", "systemd"),
		conn:   conn,
		events: make(chan string, 256),
		ready:  make(chan struct{}),
		done:   make(chan struct{}),
		ops:    map[string]*sync.Mutex{},
		cache:  map[string]cachedState{},
		gens:   map[string]uint64{},
	}
	if err := b.checkTemplate(ctx); err != nil {
		b.closeConn()
		return nil, err
	}
	return b, nil
}

// dialSystemd opens a connection to the bus at addr ("" = the system bus),
// authenticated with EXTERNAL and registered with Hello.
func dialSystemd(addr string) (*dbus.Conn, error) {
	var (
		c   *dbus.Conn
		err error
	)
	if addr == "" {
		c, err = dbus.SystemBusPrivate()
	} else {
		c, err = dbus.Dial(addr)
	}
	if err != nil {
		return nil, err
	}
	if err := c.Auth([]dbus.Auth{dbus.AuthExternal(strconv.Itoa(os.Getuid()))}); err != nil {
		c.Close()
		return nil, fmt.Errorf("authenticate: %w", err)
	}
	if err := c.Hello(); err != nil {
		c.Close()
		return nil, fmt.Errorf("hello: %w", err)
	}
	return c, nil
}

func busName(addr string) string {
	if addr == "" {
		return "the system bus"
	}
	return addr
}

// checkTemplate fails unless systemd can load an instance of the template.
func (b *SystemdBackend) checkTemplate(ctx context.Context) error {
	template := b.o.UnitPrefix + ".service"
	probe := b.unit("probe")
	p, err := b.conn.GetUnitPropertyContext(ctx, probe, "LoadState")
	state := ""
	if err == nil {
		state, _ = p.Value.Value().(string)
	}
	if err != nil || state != "loaded" {
		why := fmt.Sprintf("LoadState of %s is %q", probe, state)
		if err != nil {
			why = fmt.Sprintf("reading %s: %v", probe, err)
		}
		return fmt.Errorf("nodeagent: systemd has no %s template (%s): it comes from microvm.nix's host module: "+
			"import microvm.nixosModules.host in the host's NixOS configuration and set microvm.host.enable = true "+
			"(or run the agent with --backend process)", template, why)
	}
	return nil
}

// Events implements [Backend]: names of units whose state changed
// (PropertiesChanged of their org.freedesktop.systemd1.Unit interface).
func (b *SystemdBackend) Events() <-chan string { return b.events }

// Run implements [Backend]. It subscribes to the units' PropertiesChanged
// signals and forwards the names of this backend's units to Events until
// ctx ends; then it unsubscribes and closes the connections. Units keep
// running. It may be called once; it fails when the bus connection is lost.
func (b *SystemdBackend) Run(ctx context.Context) error {
	first := false
	b.runOnce.Do(func() { first = true })
	if !first {
		return errors.New("nodeagent: SystemdBackend.Run called twice")
	}
	defer close(b.done)
	defer b.closeConn()

	sig, err := dialSystemd(b.o.BusAddress)
	if err != nil {
		close(b.ready)
		return fmt.Errorf("nodeagent: connect to systemd on %s for signals: %w", busName(b.o.BusAddress), err)
	}
	defer sig.Close()
	// Changes of the Unit interface (ActiveState, SubState, …) and of the
	// Service interface (MainPID, Result, NRestarts, …) of every unit: a
	// match per unit would hit the bus's limit on match rules, so units are
	// filtered here by name.
	var matches [][]dbus.MatchOption
	for _, iface := range []string{systemdUnitIface, systemdSvcIface} {
		m := []dbus.MatchOption{
			dbus.WithMatchInterface("org.freedesktop.DBus.Properties"),
			dbus.WithMatchMember("PropertiesChanged"),
			dbus.WithMatchPathNamespace(systemdUnitPath),
			dbus.WithMatchArg(0, iface),
		}
		if err := sig.AddMatchSignal(m...); err != nil {
			close(b.ready)
			return fmt.Errorf("nodeagent: subscribe to systemd unit changes: %w", err)
		}
		matches = append(matches, m)
	}
	// A daemon-reload may change what units are (their unit files) without
	// PropertiesChanged: every cached state is dropped when one ends.
	reloading := []dbus.MatchOption{
		dbus.WithMatchObjectPath(systemdPath),
		dbus.WithMatchInterface("org.freedesktop.systemd1.Manager"),
		dbus.WithMatchMember("Reloading"),
	}
	if err := sig.AddMatchSignal(reloading...); err != nil {
		close(b.ready)
		return fmt.Errorf("nodeagent: subscribe to systemd reloads: %w", err)
	}
	matches = append(matches, reloading)
	ch := make(chan *dbus.Signal, 256)
	sig.Signal(ch)
	defer sig.RemoveSignal(ch)
	// systemd sends unit signals on the bus only while a client subscribed.
	mgr := sig.Object(systemdDest, systemdPath)
	if err := mgr.CallWithContext(ctx, "org.freedesktop.systemd1.Manager.Subscribe", 0).Store(); err != nil {
		close(b.ready)
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("nodeagent: subscribe to systemd: %w", err)
	}
	if names, err := b.list(ctx); err == nil && len(names) > 0 {
		b.log.Info("units already known to systemd", "units", names)
	}
	close(b.ready)

	for {
		select {
		case <-ctx.Done():
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			_ = mgr.CallWithContext(uctx, "org.freedesktop.systemd1.Manager.Unsubscribe", 0).Store()
			for _, m := range matches {
				_ = sig.RemoveMatchSignal(m...)
			}
			cancel()
			return nil
		case s, ok := <-ch:
			if !ok {
				return fmt.Errorf("nodeagent: lost the connection to systemd on %s", busName(b.o.BusAddress))
			}
			if s.Name == "org.freedesktop.systemd1.Manager.Reloading" {
				b.invalidateAll()
				continue
			}
			name, ok := b.nameFromPath(s.Path)
			if !ok {
				continue
			}
			b.invalidate(name)
			if len(s.Body) > 0 && s.Body[0] == systemdUnitIface {
				select {
				case b.events <- name:
				default:
				}
			}
		}
	}
}

// Close releases the connection of a backend whose Run is never called.
// It is not needed after Run, which closes it itself.
func (b *SystemdBackend) Close() { b.closeConn() }

func (b *SystemdBackend) closeConn() {
	b.closeOnce.Do(func() { b.conn.Close() })
}

// waitReady waits until Run has subscribed.
func (b *SystemdBackend) waitReady(ctx context.Context) error {
	return waitRunning(ctx, b.ready, b.done)
}

// unit is the unit name of VM name.
func (b *SystemdBackend) unit(name string) string {
	return b.o.UnitPrefix + name + ".service"
}

// checkName rejects names that are not valid in a unit name.
func (b *SystemdBackend) checkName(name string) error {
	if name == "" || len(b.unit(name)) > 255 || strings.IndexFunc(name, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(":_.-", r))
	}) >= 0 {
		return fmt.Errorf("nodeagent: %q cannot name a systemd unit (%s): use letters, digits, ':', '_', '.' and '-'",
			name, b.unit(name))
	}
	return nil
}

// nameFromPath maps a unit object path to the VM name when it is one of ours.
func (b *SystemdBackend) nameFromPath(p dbus.ObjectPath) (string, bool) {
	s, ok := strings.CutPrefix(string(p), string(systemdUnitPath)+"/")
	if !ok {
		return "", false
	}
	unit := unescapeBusPath(s)
	name, ok := strings.CutPrefix(unit, b.o.UnitPrefix)
	if !ok {
		return "", false
	}
	name, ok = strings.CutSuffix(name, ".service")
	return name, ok && name != ""
}

// unescapeBusPath reverses systemd's object path escaping (_XX → byte).
func unescapeBusPath(s string) string {
	var out strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '_' && i+2 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				out.WriteByte(byte(v))
				i += 2
				continue
			}
		}
		out.WriteByte(s[i])
	}
	return out.String()
}

func (b *SystemdBackend) op(name string) *sync.Mutex {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := b.ops[name]
	if m == nil {
		m = &sync.Mutex{}
		b.ops[name] = m
	}
	return m
}

// Status implements [Backend]. ActiveState/SubState map as: active,
// reloading, deactivating and activating with a main process → Active
// (activating also → Activating: waiting for READY=1 or ExecStartPost);
// activating (auto-restart) → Restarting, NextRestart = the state change
// plus RestartSec, Restarts = NRestarts; inactive and failed → neither,
// with Result and ExitCode from the service's Result/ExecMainCode/
// ExecMainStatus. Booted is STATE/NAME/booted while Active or Restarting
// (while restarting and booted is briefly missing: current, which the
// restart boots).
func (b *SystemdBackend) Status(name string) (UnitStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), systemdCallTimeout)
	defer cancel()
	if err := b.waitReady(ctx); err != nil {
		return UnitStatus{}, err
	}
	if err := b.checkName(name); err != nil {
		return UnitStatus{}, err
	}
	unit := b.unit(name)
	s, err := b.cachedStateOf(ctx, name)
	if err != nil {
		return UnitStatus{}, fmt.Errorf("nodeagent: %w", err)
	}
	if s.LoadState != "loaded" {
		return UnitStatus{}, nil
	}
	us := UnitStatus{
		Active:     s.running(),
		Activating: s.running() && s.ActiveState == "activating",
		Restarting: s.restarting(),
		Restarts:   s.NRestarts,
		ExitCode:   s.exitCode(),
		Result:     s.result(unit),
		Since:      s.Changed,
	}
	if us.Active {
		us.PID = s.MainPID
	}
	if us.Restarting {
		us.NextRestart = s.Changed.Add(s.RestartDelay)
	}
	if us.Active || us.Restarting {
		us.Booted, _ = readLink(filepath.Join(b.o.StateDir, name, "booted"))
		if us.Booted == "" && us.Restarting {
			// The restart job restarts the template's companion first, which
			// removes booted and links it to current again.
			us.Booted, _ = readLink(filepath.Join(b.o.StateDir, name, "current"))
		}
	}
	return us, nil
}

// List implements [Backend]: the loaded units UnitPrefix*.service that are
// not inactive (running, activating, auto-restarting, stopping or failed).
func (b *SystemdBackend) List() ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), systemdCallTimeout)
	defer cancel()
	if err := b.waitReady(ctx); err != nil {
		return nil, err
	}
	return b.list(ctx)
}

func (b *SystemdBackend) list(ctx context.Context) ([]string, error) {
	units, err := b.conn.ListUnitsByPatternsContext(ctx, nil, []string{b.o.UnitPrefix + "*.service"})
	if err != nil {
		return nil, fmt.Errorf("nodeagent: list %s*.service units: %w", b.o.UnitPrefix, err)
	}
	var names []string
	for _, u := range units {
		if u.ActiveState == "inactive" || u.LoadState != "loaded" {
			continue
		}
		name, ok := strings.CutPrefix(u.Name, b.o.UnitPrefix)
		if !ok {
			continue
		}
		if name, ok = strings.CutSuffix(name, ".service"); ok && name != "" {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names, nil
}

// Start implements [Backend]. A unit that runs, or that systemd is starting
// or about to restart (activating, auto-restart), is left alone. Otherwise a
// failed unit is reset first (a start limit would refuse the start) and the
// unit is started with a restart job: on an inactive unit it starts it, and
// unlike a start job it also restarts the template's companion that records
// STATE/NAME/booted, which a unit that failed on its own left behind.
// Start waits for the job; the unit then runs or has already exited (a
// runner that crashes at once shows up later as Restarting or failed,
// through Events).
func (b *SystemdBackend) Start(ctx context.Context, name string) error {
	return b.startOrRestart(ctx, name, false)
}

// Restart implements [Backend]: a restart job (microvm-shutdown of the booted
// runner, then current/bin/microvm-run; booted follows).
func (b *SystemdBackend) Restart(ctx context.Context, name string) error {
	return b.startOrRestart(ctx, name, true)
}

func (b *SystemdBackend) startOrRestart(ctx context.Context, name string, restart bool) error {
	if err := b.waitReady(ctx); err != nil {
		return err
	}
	if err := b.checkName(name); err != nil {
		return err
	}
	m := b.op(name)
	m.Lock()
	defer m.Unlock()
	unit := b.unit(name)
	verb := "start"
	if restart {
		verb = "restart"
	}
	s, err := b.state(ctx, unit)
	if err != nil {
		return fmt.Errorf("%s %s: %w", verb, unit, err)
	}
	if s.LoadState != "loaded" {
		return fmt.Errorf("%s %s: LoadState is %q (is the microvm@.service template still installed? see systemctl status %s)",
			verb, unit, s.LoadState, unit)
	}
	if !restart && (s.running() || s.ActiveState == "activating") {
		return nil
	}
	// microvm-set-booted@ and the runner write in STATE/NAME as the units'
	// user: a directory an older agent made as root would fail the start.
	owner, err := b.unitOwner()
	if err == nil {
		err = ownStateDir(b.o.StateDir, name, owner)
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", verb, unit, err)
	}
	if s.ActiveState == "failed" {
		err := b.conn.ResetFailedUnitContext(ctx, unit)
		b.invalidate(name)
		if err != nil {
			return fmt.Errorf("%s %s: reset-failed: %w", verb, unit, err)
		}
	}
	if err := b.job(ctx, verb, unit, func(ch chan<- string) (int, error) {
		return b.conn.RestartUnitContext(ctx, unit, "replace", ch)
	}); err != nil {
		return err
	}
	s, err = b.state(ctx, unit)
	if err != nil {
		return fmt.Errorf("%s %s: %w", verb, unit, err)
	}
	switch {
	case s.running() || s.restarting():
		b.log.Info("unit "+verb+"ed", "unit", unit, "pid", s.MainPID)
		return nil
	case !s.ConditionResult && s.ActiveState == "inactive":
		return fmt.Errorf("%s %s: its condition failed: %s does not exist (the agent links current to the runner first)",
			verb, unit, filepath.Join(b.o.StateDir, name, "current", "bin", "microvm-run"))
	default:
		return fmt.Errorf("%s %s: unit is %s (%s) after its start: %s", verb, unit, s.ActiveState, s.SubState,
			orDefault(s.result(unit), "journalctl -u "+unit))
	}
}

// Stop implements [Backend]: a stop job (booted/bin/microvm-shutdown, then
// systemd's SIGTERM and SIGKILL after the unit's timeout). A unit that ends
// failed (its shutdown failed, or it was failed already) is reset so that
// it is no longer listed; the failure is logged.
func (b *SystemdBackend) Stop(ctx context.Context, name string) error {
	if err := b.waitReady(ctx); err != nil {
		return err
	}
	if err := b.checkName(name); err != nil {
		return err
	}
	m := b.op(name)
	m.Lock()
	defer m.Unlock()
	unit := b.unit(name)
	err := b.job(ctx, "stop", unit, func(ch chan<- string) (int, error) {
		return b.conn.StopUnitContext(ctx, unit, "replace", ch)
	})
	if noSuchUnit(err) {
		return nil
	}
	if err != nil {
		return err
	}
	s, err := b.state(ctx, unit)
	if err != nil {
		return fmt.Errorf("stop %s: %w", unit, err)
	}
	if s.ActiveState == "failed" {
		b.log.Warn("unit stopped failed; resetting it", "unit", unit, "result", s.result(unit))
		err := b.conn.ResetFailedUnitContext(ctx, unit)
		b.invalidate(name)
		if err != nil && !noSuchUnit(err) { // a Kill reset it first
			return fmt.Errorf("stop %s: reset-failed: %w", unit, err)
		}
	}
	return nil
}

// Kill implements [Backend]. It enqueues a stop job first: once a stop job
// is pending, systemd does not restart the unit when its processes die
// (Restart=always would otherwise start it again after RestartSec). Then it
// sends SIGKILL to every process of the unit (KillUnit with who=all: the
// runner and a microvm-shutdown that hangs in ExecStop alike), and waits
// for the stop job, which ends once they are gone. It does not take the
// unit's op lock, which a graceful Stop holds while its job waits on
// ExecStop and TimeoutStopSec: systemd merges the two stop jobs, and both
// callers learn the result. A unit that ends failed (killed by a signal) is
// reset, as Stop does; microvm-set-booted@NAME stops with it (PartOf) and
// removes booted.
func (b *SystemdBackend) Kill(ctx context.Context, name string) error {
	if err := b.waitReady(ctx); err != nil {
		return err
	}
	if err := b.checkName(name); err != nil {
		return err
	}
	unit := b.unit(name)
	err := b.job(ctx, "kill", unit, func(ch chan<- string) (int, error) {
		id, err := b.conn.StopUnitContext(ctx, unit, "replace", ch)
		if err != nil {
			return id, err
		}
		if err := b.conn.KillUnitWithTarget(ctx, unit, sddbus.All, int32(syscall.SIGKILL)); err != nil && !noSuchUnit(err) {
			// The stop job goes on, gracefully: the caller kills again.
			return id, fmt.Errorf("SIGKILL to its processes: %w", err)
		}
		return id, nil
	})
	if noSuchUnit(err) {
		return nil
	}
	if err != nil {
		return err
	}
	s, err := b.state(ctx, unit)
	if err != nil {
		return fmt.Errorf("kill %s: %w", unit, err)
	}
	switch {
	case s.running():
		return fmt.Errorf("kill %s: the unit is %s (%s) again: a start raced the kill", unit, s.ActiveState, s.SubState)
	case s.ActiveState == "failed":
		err := b.conn.ResetFailedUnitContext(ctx, unit)
		b.invalidate(name)
		// A Stop waiting on the same job may have reset it first, and
		// systemd then unloads the unit.
		if err != nil && !noSuchUnit(err) {
			return fmt.Errorf("kill %s: reset-failed: %w", unit, err)
		}
	}
	return nil
}

// noSuchUnit: err is systemd's answer for a unit it has not loaded (an
// instance that never ran, or one collected after it stopped).
func noSuchUnit(err error) bool {
	var de dbus.Error
	return errors.As(err, &de) && de.Name == "org.freedesktop.systemd1.NoSuchUnit"
}

// job enqueues a job with call and waits for its result.
func (b *SystemdBackend) job(ctx context.Context, verb, unit string, call func(ch chan<- string) (int, error)) error {
	if name, ok := strings.CutPrefix(unit, b.o.UnitPrefix); ok {
		defer b.invalidate(strings.TrimSuffix(name, ".service"))
	}
	ch := make(chan string, 1) // buffered: go-systemd delivers while holding a lock
	if _, err := call(ch); err != nil {
		return fmt.Errorf("%s %s: %w", verb, unit, err)
	}
	select {
	case r := <-ch:
		if r == "done" {
			return nil
		}
		msg := fmt.Sprintf("%s %s: job %s", verb, unit, r)
		if r == "dependency" {
			// microvm-set-booted@, -tap-interfaces@, … of the same instance.
			inst := strings.TrimSuffix(strings.TrimPrefix(unit, b.o.UnitPrefix), ".service")
			return fmt.Errorf("%s: a unit it requires failed (journalctl -u 'microvm-*@%s.service')", msg, inst)
		}
		if s, err := b.state(ctx, unit); err == nil {
			if res := s.result(unit); res != "" {
				return fmt.Errorf("%s: %s", msg, res)
			}
		}
		return fmt.Errorf("%s (journalctl -u %s)", msg, unit)
	case <-ctx.Done():
		return fmt.Errorf("%s %s: waiting for the job: %w", verb, unit, ctx.Err())
	}
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// LogHint is where a unit's console output goes: the journal.
func (b *SystemdBackend) LogHint(name string) string {
	return "journalctl -u " + b.unit(name)
}

// unitOwner implements [unitOwner]: microvm:kvm of the system systemd runs.
func (b *SystemdBackend) unitOwner() (stateOwner, error) {
	return lookupOwner(b.o.Root)
}
