package api

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/blixard/blixard/replicated"
)

// A rolling restart (`blixard vm restart NAME`) restarts the instances of
// a VM one at a time, each through the existing restart call for that
// instance alone, and waits for each to run again — and to be healthy, when
// its VM has a health check — before the next. It is orchestrated by the
// client: the cluster keeps no rollout state for it, so an interrupted
// rolling restart leaves the instances not yet restarted as they were.

// RestartOrder lists the instances of name (an instance, or every placed
// instance of a declared VM) in the order a rolling restart takes them:
// by name, numbers compared as numbers (web-2 before web-10). It refuses,
// as the restart call would, when one of them is kept stopped, and when
// none is placed.
func RestartOrder(s *replicated.State, name string) ([]string, error) {
	var out, stopped []string
	for vm, a := range s.Assignments {
		if vm != name && a.Declared != name {
			continue
		}
		out = append(out, vm)
		if a.Stopped != "" {
			stopped = append(stopped, vm)
		}
	}
	slices.SortFunc(out, naturalCompare)
	slices.SortFunc(stopped, naturalCompare)
	if len(stopped) > 0 {
		return nil, fmt.Errorf("cannot restart %s: kept stopped (autostart = false or `blixard vm stop`); start it with `blixard vm start %s`",
			strings.Join(stopped, ", "), stopped[0])
	}
	if len(out) == 0 {
		for _, u := range s.Unschedulable {
			if u.VM == name || u.Declared == name {
				return nil, fmt.Errorf("VM %q has no placed instance to restart (%s: %s)", name, u.VM, u.Reason)
			}
		}
		return nil, fmt.Errorf("VM %q is neither an instance nor a declared VM of the committed plan (see `blixard status`)", name)
	}
	return out, nil
}

// naturalCompare orders names with their digit runs compared as numbers.
func naturalCompare(a, b string) int {
	for a != "" && b != "" {
		da, db := digitPrefix(a), digitPrefix(b)
		if da > 0 && db > 0 {
			na, _ := strconv.ParseUint(a[:da], 10, 64)
			nb, _ := strconv.ParseUint(b[:db], 10, 64)
			if c := cmp.Compare(na, nb); c != 0 {
				return c
			}
			a, b = a[da:], b[db:]
			continue
		}
		if c := cmp.Compare(a[0], b[0]); c != 0 {
			return c
		}
		a, b = a[1:], b[1:]
	}
	return cmp.Compare(len(a), len(b))
}

func digitPrefix(s string) int {
	n := 0
	for n < len(s) && n < 19 && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}

// ErrRestartAbandoned wraps why an instance will not come back from its
// restart as asked: it left the plan, or is now kept stopped.
var ErrRestartAbandoned = errors.New("restart abandoned")

// RestartDone reports whether instance, restarted by the request committed
// at Raft index restart, runs again: its node carried out that restart, it
// is observed running on the node it is assigned to and, when its VM has a
// health check, healthy. Otherwise it says what is awaited, or returns an
// error wrapping ErrRestartAbandoned when waiting is pointless.
func RestartDone(s *replicated.State, instance string, restart uint64) (bool, string, error) {
	a, ok := s.Assignments[instance]
	switch {
	case !ok:
		return false, "", fmt.Errorf("%w: %s is no longer in the committed plan (a new revision removed it)", ErrRestartAbandoned, instance)
	case a.Stopped != "":
		return false, "", fmt.Errorf("%w: %s is now kept stopped (%s)", ErrRestartAbandoned, instance, a.Stopped)
	case a.Restart < restart:
		return false, "the restart request is not applied on this node yet", nil
	}
	o, ok := s.Observed[instance]
	switch {
	case !ok:
		return false, fmt.Sprintf("not reported by node %d yet", a.Node), nil
	case o.Node != a.Node:
		return false, fmt.Sprintf("reported by node %d, assigned to node %d", o.Node, a.Node), nil
	case o.Restart < restart:
		return false, fmt.Sprintf("node %d has not carried out the restart yet (%s)", a.Node, phaseText(o)), nil
	case o.Phase != replicated.PhaseRunning:
		return false, phaseText(o), nil
	case a.Health != nil && o.Health != replicated.Healthy:
		h := string(o.Health)
		if h == "" {
			h = "not judged yet"
		}
		if o.HealthError != "" {
			h += ": " + o.HealthError
		}
		return false, "running, health " + h, nil
	}
	return true, "", nil
}

func phaseText(o replicated.VMStatus) string {
	if o.Message != "" {
		return fmt.Sprintf("%s: %s", o.Phase, o.Message)
	}
	return string(o.Phase)
}

// Statuses of a [RestartStep].
const (
	RestartPending    = "pending"    // not restarted yet
	RestartRestarting = "restarting" // asked, waiting for it to run again
	RestartRestarted  = "restarted"  // runs again (and is healthy)
	RestartFailed     = "failed"     // did not run again in time, or left the plan
)

// RestartStep is one instance of a rolling restart.
type RestartStep struct {
	Instance string `json:"instance"`
	Node     uint64 `json:"node"`
	// Restart is the Raft index of its restart request (0 before).
	Restart uint64 `json:"restart,omitempty"`
	Status  string `json:"status"`
	// Message says what was awaited last (restarting, failed).
	Message string `json:"message,omitempty"`
	// Seconds from the request until it ran again.
	Seconds float64 `json:"seconds,omitempty"`
}

// RollingRestart is the outcome of a rolling restart.
type RollingRestart struct {
	VM        string        `json:"vm"`
	Instances []RestartStep `json:"instances"`
	// Done: every instance was restarted and runs again.
	Done bool `json:"done"`
}

// RollingOptions configure [Client.RestartRolling].
type RollingOptions struct {
	// InstanceTimeout bounds the wait for one instance to run again
	// (default 5m); the rolling restart stops at the first that does not.
	InstanceTimeout time.Duration
	// Poll is how often the state is read while waiting (default 500ms).
	Poll time.Duration
	// Progress, when set, is called when an instance's step starts and
	// when it ends.
	Progress func(step RestartStep, i, n int)
}

// RestartRolling restarts the instances of name one at a time (see
// RestartOrder), each through POST /v1/vms/INSTANCE/restart, and waits for
// each to run again (RestartDone) before the next. It returns the outcome
// and, when an instance did not come back in time or ctx ended, an error
// naming it; the instances after it are left as they were.
func (c *Client) RestartRolling(ctx context.Context, name string, o RollingOptions) (RollingRestart, error) {
	if o.InstanceTimeout <= 0 {
		o.InstanceTimeout = 5 * time.Minute
	}
	if o.Poll <= 0 {
		o.Poll = 500 * time.Millisecond
	}
	progress := func(RestartStep, int, int) {}
	if o.Progress != nil {
		progress = o.Progress
	}
	out := RollingRestart{VM: name}
	st, err := c.State(ctx)
	if err != nil {
		return out, err
	}
	order, err := RestartOrder(st, name)
	if err != nil {
		return out, err
	}
	for _, inst := range order {
		out.Instances = append(out.Instances, RestartStep{Instance: inst, Node: st.Assignments[inst].Node, Status: RestartPending})
	}
	for i := range out.Instances {
		step := &out.Instances[i]
		step.Status = RestartRestarting
		progress(*step, i, len(order))
		err := c.restartOne(ctx, step, o)
		if err != nil {
			step.Status, step.Message = RestartFailed, err.Error()
			progress(*step, i, len(order))
			var rest []string
			for _, s := range out.Instances[i+1:] {
				rest = append(rest, s.Instance)
			}
			if len(rest) > 0 {
				err = fmt.Errorf("%w; not restarted: %s", err, strings.Join(rest, ", "))
			}
			return out, err
		}
		step.Status, step.Message = RestartRestarted, ""
		progress(*step, i, len(order))
	}
	out.Done = true
	return out, nil
}

// restartOne restarts step's instance and waits until it runs again.
func (c *Client) restartOne(ctx context.Context, step *RestartStep, o RollingOptions) error {
	before, err := c.State(ctx)
	if err != nil {
		return err
	}
	prev := before.Assignments[step.Instance].Restart
	start := time.Now()
	if _, err := c.SetVMRunState(ctx, step.Instance, VMRestart); err != nil {
		return fmt.Errorf("restarting %s: %w", step.Instance, err)
	}
	wctx, cancel := context.WithTimeout(ctx, o.InstanceTimeout)
	defer cancel()
	step.Message = "the restart request is not applied on this node yet"
	for {
		st, err := c.State(wctx)
		if err == nil {
			a := st.Assignments[step.Instance]
			if step.Restart == 0 && a.Restart > prev {
				step.Restart = a.Restart
			}
			if a.Node != 0 {
				step.Node = a.Node
			}
			if step.Restart != 0 {
				done, why, err := RestartDone(st, step.Instance, step.Restart)
				if err != nil {
					return err
				}
				if done {
					step.Seconds = time.Since(start).Seconds()
					return nil
				}
				step.Message = why
			}
		} else if wctx.Err() == nil {
			step.Message = "reading the state: " + err.Error()
		}
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return fmt.Errorf("%s: interrupted while %s", step.Instance, step.Message)
			}
			return fmt.Errorf("%s did not run again within %v (%s); see `blixard vm %s` and `blixard logs %s`",
				step.Instance, o.InstanceTimeout, step.Message, step.Instance, step.Instance)
		case <-time.After(o.Poll):
		}
	}
}
