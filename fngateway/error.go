package fngateway

import (
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Kind classifies why the gateway could not pass a request on.
type Kind string

const (
	// NoRoute: no function routes the request's host and path (404).
	NoRoute Kind = "NoRoute"
	// QueueFull: no instance was free and the function's queue was full
	// (503 with Retry-After).
	QueueFull Kind = "QueueFull"
	// Timeout: no instance became free within Options.QueueTimeout (504).
	Timeout Kind = "Timeout"
	// StartFailed: the function's last start failed and no instance is
	// ready (502).
	StartFailed Kind = "StartFailed"
	// Unreachable: every ready instance refused the connection and none is
	// starting (502).
	Unreachable Kind = "Unreachable"
)

// Error is a request the gateway could not pass on, as a value.
type Error struct {
	Kind Kind
	// Function is the function routed to ("" for NoRoute).
	Function string
	// Host and Path are the request's.
	Host, Path string
	// Waited is how long the request waited in the queue.
	Waited time.Duration
	// Reason says what was missing (Timeout) or the instance source's
	// reason (StartFailed).
	Reason string
	// Tried are the instances that refused the connection (Unreachable).
	Tried []string
	// Err is the last connection error (Unreachable).
	Err error
}

func (e *Error) Error() string {
	switch e.Kind {
	case NoRoute:
		return fmt.Sprintf("no function routes host %q and path %q: check the functions' http.host and http.path in the cluster flake", e.Host, e.Path)
	case QueueFull:
		return fmt.Sprintf("function %s: no instance free and the queue is full (Options.QueueLimit); the function may need a higher maxInstances or concurrency", e.Function)
	case Timeout:
		return fmt.Sprintf("function %s: no instance became free within %s: %s", e.Function, e.Waited.Round(time.Millisecond), e.Reason)
	case StartFailed:
		return fmt.Sprintf("function %s: its last instance start failed: %s", e.Function, e.Reason)
	}
	return fmt.Sprintf("function %s: no instance accepted the connection (tried %s): %v; `blixard status` shows whether they run",
		e.Function, strings.Join(e.Tried, ", "), e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Status is the HTTP status that answers the request.
func (e *Error) Status() int {
	switch e.Kind {
	case NoRoute:
		return http.StatusNotFound
	case QueueFull:
		return http.StatusServiceUnavailable
	case Timeout:
		return http.StatusGatewayTimeout
	}
	return http.StatusBadGateway
}

// public is what the client reads: what happened to its request, without
// instance names, addresses or a start failure's details (those stay in
// the node's log, Stats and the cluster's events).
func (e *Error) public() string {
	switch e.Kind {
	case NoRoute:
		return fmt.Sprintf("nothing here: no function answers host %q and path %q", e.Host, e.Path)
	case QueueFull:
		return fmt.Sprintf("function %s is at capacity; retry later", e.Function)
	case Timeout:
		return fmt.Sprintf("function %s had no free instance within %s: %s; retry later", e.Function, e.Waited.Round(time.Second), e.Reason)
	case StartFailed:
		return fmt.Sprintf("function %s could not start; the cluster's events say why", e.Function)
	}
	return fmt.Sprintf("function %s could not be reached; the gateway node's log says why", e.Function)
}
