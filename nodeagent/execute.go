package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/blixard/blixard/progress"
)

// How a pass's decision is carried out: statuses first, then each VM's
// actions (background operations, one per VM at a time, whose results come
// back through Agent.done), kills last and all at once.

// execute applies a decision: the statuses, then each VM's actions in
// order. Background actions become the VM's operation; their results come
// back through a.done. Kills run last, all at once, and execute waits for
// them.
func (a *Agent) execute(ctx context.Context, d Decision) killReport {
	keep := make(map[string]bool, len(d.VMs))
	var kills []string
	for _, vd := range d.VMs {
		keep[vd.VM] = true
		a.set(vd)
	actions:
		for _, act := range vd.Actions {
			switch act.Kind {
			case ActKill:
				kills = append(kills, act.VM)
			case ActCancel:
				a.rec.cancel(act.VM)
			case ActSwitchCurrent:
				if err := switchCurrent(a.o.Backend, a.o.StateDir, act.VM, act.Out); err != nil {
					a.log.Warn("switching the runner failed", "vm", act.VM, "out", act.Out, "err", err)
					a.rec.failed(act.VM, act.Kind, act.Out, err, a.o.Now())
					a.Notify() // decide again at once: it reports the failure
					break actions
				}
			case ActStart:
				if a.startsHeld() {
					break actions // started by a pass after the heartbeat commits
				}
				a.startOp(ctx, act)
			default:
				a.startOp(ctx, act)
			}
		}
	}
	a.rec.prune(keep)
	return a.kill(ctx, kills)
}

// killTimeout bounds one pass's kills: SIGKILL takes milliseconds; a
// runner stuck in the kernel is reported and killed again next pass.
const killTimeout = 5 * time.Second

// killReport is what one pass's kills did.
type killReport struct {
	killed, failed int
	took           time.Duration
}

// kill kills the units of names in parallel and waits for them: a fenced
// node must be rid of every runner as fast as the slowest one dies.
func (a *Agent) kill(ctx context.Context, names []string) killReport {
	if len(names) == 0 {
		return killReport{}
	}
	start := a.o.Now()
	kctx, cancel := context.WithTimeout(ctx, killTimeout)
	defer cancel()
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() { errs[i] = a.o.Backend.Kill(kctx, name) })
	}
	wg.Wait()
	now := a.o.Now()
	r := killReport{took: now.Sub(start)}
	for i, err := range errs {
		if err != nil {
			r.failed++
			a.log.Error("killing a VM of a fenced node failed; it may still run", "vm", names[i], "err", err)
			a.rec.failed(names[i], ActKill, "", err, now)
			continue
		}
		r.killed++
		a.rec.killed(names[i])
	}
	return r
}

// startOp runs act in the background as its VM's one operation.
func (a *Agent) startOp(ctx context.Context, act Action) {
	octx, cancel := context.WithCancel(ctx)
	op := a.rec.begin(act, cancel)
	fn := a.operation(act, op)
	go func() {
		start := time.Now()
		err := fn(octx)
		if octx.Err() == nil {
			observeOp(a.o.Metrics, act.VM, act.Kind, time.Since(start), op.progress.Load() != nil, err)
		}
		cancel()
		a.done <- Result{VM: act.VM, Kind: act.Kind, Out: act.Out, Volumes: act.Volumes, Err: err}
	}()
}

// operation is the I/O of a background action.
func (a *Agent) operation(act Action, op *opState) func(ctx context.Context) error {
	name := act.VM
	switch act.Kind {
	case ActRealise:
		return func(ctx context.Context) error {
			root := filepath.Join(a.o.StateDir, name, "gcroot")
			if err := os.MkdirAll(filepath.Dir(root), 0o755); err != nil {
				return fmt.Errorf("state directory: %w", err)
			}
			if a.o.Realise != nil {
				return a.o.Realise(ctx, act.Out)
			}
			br := newBuildReporter(name, a.o.OnBuild, a.o.Now)
			if br != nil {
				ctx = progress.With(ctx, br.line)
			}
			err := a.real.realise(ctx, root, act.Drv, act.Out, act.Commit, act.Declared, func(how string) {
				op.progress.Store(&how)
				br.start(how)
				a.Notify()
			})
			br.done(err)
			return err
		}
	case ActAttach:
		return func(ctx context.Context) error { return a.attachVolumes(ctx, name, act.Volumes) }
	case ActDetach:
		return func(ctx context.Context) error { return a.detachVolumes(ctx, name, act.Volumes) }
	case ActStart:
		return func(ctx context.Context) error {
			began := time.Now()
			if err := a.prepare(ctx, name); err != nil {
				return err
			}
			prepared := time.Since(began)
			var err error
			if act.Snapshot {
				err = a.snapshotStart(ctx, act)
			} else {
				err = a.o.Backend.Start(ctx, name)
			}
			// Where a cold start's time on this node goes.
			a.log.Debug("start operation", "vm", name, "prepare", prepared, "start", time.Since(began)-prepared, "err", err)
			return err
		}
	case ActRestart:
		a.log.Info("restarting VM (new runner or `blixard vm restart`)", "vm", name, "out", act.Out, "restart", act.Restart)
		return func(ctx context.Context) error {
			if err := a.prepare(ctx, name); err != nil {
				return err
			}
			return a.o.Backend.Restart(ctx, name)
		}
	case ActStop:
		a.log.Info("stopping VM (no longer assigned here, or kept stopped)", "vm", name)
		return func(ctx context.Context) error {
			// A VM that moved runs on until its new node has the runner.
			a.real.share.awaitSuccessor(ctx, name, a.o.Now)
			return a.o.Backend.Stop(ctx, name)
		}
	}
	return func(context.Context) error { return fmt.Errorf("nodeagent: %s is not a background action", act.Kind) }
}

// prepare runs Options.Prepare for vm, bounded by PrepareTimeout.
func (a *Agent) prepare(ctx context.Context, vm string) error {
	if a.o.Prepare == nil {
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, a.o.PrepareTimeout)
	defer cancel()
	if err := a.o.Prepare(pctx, vm); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	return nil
}

// finish feeds an operation's result back into the records.
func (a *Agent) finish(r Result) {
	switch {
	case errors.Is(r.Err, context.Canceled):
	case r.Err != nil:
		a.log.Warn(r.Kind.String()+" failed", "vm", r.VM, "out", r.Out, "err", r.Err)
	case r.Kind == ActStart:
		a.log.Info("VM started", "vm", r.VM, "out", r.Out)
	case r.Kind == ActStop:
		a.log.Info("VM stopped", "vm", r.VM)
	}
	a.rec.finish(r, a.o.Now())
}
