package ingress

import (
	"fmt"
	"net/http"
	"strings"
)

// Kind classifies why ingress could not route a request or connection.
type Kind string

const (
	// NoRoute: no entry routes the request's host and path (HTTP 404).
	NoRoute Kind = "NoRoute"
	// NoInstance: the entry's VM has no running instance (HTTP 503).
	NoInstance Kind = "NoInstance"
	// Unreachable: every running instance refused the connection or failed
	// before answering (HTTP 502).
	Unreachable Kind = "Unreachable"
)

// Error is a request or connection ingress could not pass on, as a value.
type Error struct {
	Kind Kind
	// Host and Path are the request's (canonical host); empty for TCP.
	Host, Path string
	// Entry is the ingress entry that matched ("" for NoRoute); To its VM.
	Entry, To string
	// Tried are the instances tried, in order (Unreachable).
	Tried []string
	// Err is the last instance's error (Unreachable).
	Err error
}

func (e *Error) Error() string {
	switch e.Kind {
	case NoRoute:
		return fmt.Sprintf("no ingress route for host %q and path %q: add an ingress entry with this host and a path that is a prefix of it to the cluster flake", e.Host, e.Path)
	case NoInstance:
		return fmt.Sprintf("no running instance of %s: ingress entry %q routes to it; `blixard status` shows why none runs", e.To, e.Entry)
	}
	return fmt.Sprintf("no instance of %s accepted the connection for ingress entry %q (tried %s): %v; `blixard status` shows whether they run",
		e.To, e.Entry, strings.Join(e.Tried, ", "), e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Status is the HTTP status that answers the request.
func (e *Error) Status() int {
	switch e.Kind {
	case NoRoute:
		return http.StatusNotFound
	case NoInstance:
		return http.StatusServiceUnavailable
	}
	return http.StatusBadGateway
}

// public is what the client reads: the error without the instances'
// cluster addresses, which stay in the node's log.
func (e *Error) public() string {
	if e.Kind == Unreachable {
		return fmt.Sprintf("no instance of %s accepted the connection (tried %d); the ingress node's log says why", e.To, len(e.Tried))
	}
	return e.Error()
}
