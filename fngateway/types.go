package fngateway

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/blixard/blixard/spec"
)

// Function is one function as the gateway serves it at one moment: its
// route, its limits, and its instances as the instance source knows them.
type Function struct {
	// Name is the function's name (functions.NAME).
	Name string
	// Host and Path are its route: requests for Host (any case, any
	// port) whose path lies under Path (whole segments), as ingress
	// routes. Unique across functions (spec validation).
	Host, Path string
	// Concurrency is how many requests one instance serves at once
	// (values below 1 count as 1).
	Concurrency int
	// MinInstances and MaxInstances bound the instances (Demand.Want).
	MinInstances, MaxInstances int
	// Instances are the function's instances: ready, or still starting.
	Instances []Instance
	// StartFailure is why the function's most recent instance start
	// failed, while no newer start is under way; "" otherwise. With it,
	// and no ready instance, requests are answered 502 at once instead of
	// waiting for a start that is not coming (the reason goes to the
	// node's log and Stats, not to the client).
	StartFailure string
}

// Instance is one instance of a function.
type Instance struct {
	// Name is the instance's name (unique within the function).
	Name string
	// Addr is where it answers HTTP: its cluster address and the
	// function's http.port. An instance without a valid Addr is never
	// picked.
	Addr netip.AddrPort
	// Node is the node it runs on: instances on the gateway's own node
	// (Options.Node) are preferred.
	Node uint64
	// Ready: it serves requests (started and, when the function has a
	// health check, healthy). Instances not ready count as starting.
	Ready bool
	// Via is the gateway of the instance's node (host:port) when it is
	// another node's: requests go there, naming the instance in
	// [HeaderInstance], and that gateway, through which every request for
	// the instance passes, holds them to the function's concurrency. Empty:
	// straight to Addr (an instance of this node, or a node that does not
	// say where its gateway listens).
	Via string
}

// HeaderInstance names, on a request one gateway passes to another, the
// instance the request is for: the receiving gateway (the instance's
// node's) serves it there, waiting for a free slot in the function's
// queue, and never passes it on again. It is honoured only from the
// addresses of [Gateway.SetPeers]; the instance does not see it.
const HeaderInstance = "Blixard-Instance"

// FromSpec returns the functions of a cluster spec as the gateway routes
// them, sorted by name, without instances: the instance source fills in
// Instances and StartFailure.
func FromSpec(fns map[string]spec.Function) []Function {
	out := make([]Function, 0, len(fns))
	for name, f := range fns {
		out = append(out, Function{Name: name, Host: f.HTTP.Host, Path: f.HTTP.Path, Concurrency: f.Concurrency,
			MinInstances: f.MinInstances, MaxInstances: f.MaxInstances})
	}
	slices.SortFunc(out, func(a, b Function) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// Scaler is told when a function needs more instances than it has. The
// Raft-backed scaler (later) commits the start of instances; tests stand
// in for it. Want is called on the request path: it must not block (hand
// the decision to a goroutine of its own), and it is called once for every
// request that has to wait, so it must be idempotent in d.Want (start
// instances until ready + starting reaches it, no more). Update calls it
// too, after releasing its locks, while requests wait for more instances
// than are ready or starting; a Want that calls Update itself must change
// something first, or the two call each other without end.
type Scaler interface {
	Want(fn string, d Demand)
}

// Demand is a function's load as this gateway sees it.
type Demand struct {
	// InFlight is the requests this gateway has in flight at the
	// function's instances; Queued those waiting for one.
	InFlight, Queued int
	// Ready and Starting count the function's instances.
	Ready, Starting int
	// Want is the instances the demand needs (Desired); a request
	// refused because the last start failed counts in it.
	Want int
}

// ScaleOut reports whether the demand needs more instances than are
// ready or starting.
func (d Demand) ScaleOut() bool { return d.Want > d.Ready+d.Starting }

// Stats is a snapshot of one function's bookkeeping on this gateway: what
// `blixard functions` shows and the scaler's idle decision reads
// (ScaleIn with LastActive).
type Stats struct {
	Function string
	// Ready, Starting: its instances; InFlight, Queued: its requests now
	// (not those other gateways passed on: they count there).
	Ready, Starting, InFlight, Queued int
	// LastActive is when a request last arrived or ended, or when the
	// gateway first learned of the function if none has.
	LastActive time.Time
	// Requests counts every request routed to the function; ColdStarts
	// those that waited in the queue (whatever their outcome).
	Requests, ColdStarts uint64
	// Refused requests: QueueFull (503), TimedOut (504), StartFailed and
	// Unreachable (502); Canceled: the client left while it waited.
	QueueFull, TimedOut, StartFailed, Unreachable, Canceled uint64
	// QueueWaitP50 and QueueWaitP99 are over the last waits that ended
	// with an instance (up to waitWindow of them); 0 when none did.
	QueueWaitP50, QueueWaitP99 time.Duration
	// StartFailure is the instance source's last word on a failed start.
	StartFailure string
}

// Metrics receives a gateway's latencies, e.g. as Prometheus histograms
// (package metrics). Calls must be quick: the queue's lock may be held.
type Metrics interface {
	// ObserveQueueWait: a request of function fn waited d in the queue
	// before an instance took it.
	ObserveQueueWait(fn string, d time.Duration)
	// ObserveRequest: a request of function fn took d through the front,
	// from arrival to the end of the answer, whatever the outcome.
	ObserveRequest(fn string, d time.Duration)
}
