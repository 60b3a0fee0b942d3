package fngateway

import "time"

// The gateway's decisions, as pure functions of what it knows at the
// moment of a request: which instance takes it (Pick), what happens to a
// request no instance can take now (Admit), how many instances the demand
// needs (Desired) and when an idle function may shrink (ScaleIn). The
// Gateway only gathers their inputs under its lock and acts on the result.

// Candidate is one instance of a function at the moment of a choice.
type Candidate struct {
	// Local: the instance runs on the gateway's own node.
	Local bool
	// Ready: the instance source says it serves.
	Ready bool
	// InFlight is the requests this gateway has in flight there.
	InFlight int
	// Down: it refused a connection a moment ago (Options.DownFor).
	Down bool
	// Tried: it refused a connection for this very request.
	Tried bool
}

// Pick returns the index of the instance that takes the next request, or
// -1 when none can: among the ready instances that are not down, not
// tried by this request and below concurrency in flight, one on this node
// if there is one (no hop over the cluster network), else any; the one
// with the fewest in flight among those; ties go to the first at or after
// index turn (mod the number of candidates), so idle instances take turns.
func Pick(cands []Candidate, concurrency int, turn uint64) int {
	n := len(cands)
	if n == 0 {
		return -1
	}
	best := -1
	start := int(turn % uint64(n))
	for k := range n {
		i := (start + k) % n
		c := cands[i]
		if !c.Ready || c.Down || c.Tried || c.InFlight >= concurrency {
			continue
		}
		if best < 0 {
			best = i
			continue
		}
		b := cands[best]
		if c.Local != b.Local {
			if c.Local {
				best = i
			}
			continue
		}
		if c.InFlight < b.InFlight {
			best = i
		}
	}
	return best
}

// Admission is what happens to a request.
type Admission int

const (
	// Serve: an instance takes it now.
	Serve Admission = iota
	// Queue: it waits for an instance to become ready or free.
	Queue
	// QueueIsFull: the function's queue is full (503 with Retry-After).
	QueueIsFull
	// FailStart: the function's last start failed and no instance is
	// ready, so waiting would only end in a timeout (502).
	FailStart
	// FailUnreachable: every ready instance refused this request's
	// connection and none is starting (502).
	FailUnreachable
)

func (a Admission) String() string {
	switch a {
	case Serve:
		return "serve"
	case Queue:
		return "queue"
	case QueueIsFull:
		return "queue full"
	case FailStart:
		return "start failed"
	case FailUnreachable:
		return "unreachable"
	}
	return "unknown"
}

// AdmitInput is what Admit decides on.
type AdmitInput struct {
	// Free: Pick found an instance (and nobody is queued before it).
	Free bool
	// Ready and Starting count the function's instances.
	Ready, Starting int
	// Queued is the requests waiting now; QueueLimit the most that may.
	Queued, QueueLimit int
	// StartFailed: the instance source reports that the function's last
	// start failed.
	StartFailed bool
	// TriedAll: this request's connection was refused by every ready
	// instance.
	TriedAll bool
}

// Admit decides what happens to a request: served when an instance is
// free; refused at once when waiting cannot help (the last start failed
// and nothing is ready, or every ready instance refused it and nothing is
// starting); refused when the queue is full; queued otherwise.
func Admit(in AdmitInput) Admission {
	switch {
	case in.Free:
		return Serve
	case in.StartFailed && in.Ready == 0:
		return FailStart
	case in.TriedAll && in.Starting == 0:
		return FailUnreachable
	case in.Queued >= in.QueueLimit:
		return QueueIsFull
	}
	return Queue
}

// Desired is how many instances a function needs for its requests in
// flight and waiting, at concurrency requests per instance, within
// [minInstances, maxInstances]. The scaler scales out while it exceeds
// the ready and starting instances (Demand.ScaleOut).
func Desired(inFlight, queued, concurrency, minInstances, maxInstances int) int {
	concurrency = max(concurrency, 1)
	need := (inFlight + queued + concurrency - 1) / concurrency
	return min(max(need, minInstances), max(maxInstances, minInstances))
}

// ScaleIn reports whether a function should shrink to minInstances and
// to how many: when nothing is in flight or waiting, it has gone idle
// (no request arrived or ended) since lastActive for at least idle, and
// more than minInstances instances run or start.
func ScaleIn(now, lastActive time.Time, idle time.Duration, inFlight, queued, running, minInstances int) (int, bool) {
	if inFlight > 0 || queued > 0 || running <= minInstances || now.Sub(lastActive) < idle {
		return running, false
	}
	return minInstances, true
}
