package nixcache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"
)

// Serve serves h (a [Cache]) over plain HTTP on ln until ctx ends, then
// shuts down (NARs in flight get 5 seconds). ln is closed. It returns nil
// after ctx ended, else the error that stopped the server.
//
// Plain HTTP because nix can authenticate a substituter only with netrc
// passwords and trusts only the CA bundle of its ssl-cert-file, which
// replaces the host's: integrity comes from the signatures, and the port
// belongs behind the cluster's firewall like the Raft and VXLAN ports.
// There is no write timeout: a NAR may be gigabytes; Options.MaxStreams
// bounds how many clients can hold a stream.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("binary cache on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	if err := <-done; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Availability is what a peer's cache says of one store path.
type Availability int

const (
	// Missing: the peer does not serve it and is not producing it (or
	// could not be asked).
	Missing Availability = iota
	// Has: the peer serves it now.
	Has
	// Queued: the peer is a builder that means to build it.
	Queued
	// Building: the peer is building it.
	Building
)

func (a Availability) String() string {
	switch a {
	case Has:
		return "has"
	case Queued:
		return "queued"
	case Building:
		return "building"
	}
	return "missing"
}

// Probe asks the cache at cacheURL about storePath: its narinfo (200:
// [Has]), or the [BuildingHeader] of its 404 ([Building], [Queued], else
// [Missing]). An unreachable cache or any other answer (a 503 of a cache
// that could not read its store) is [Missing] with an error saying why.
func Probe(ctx context.Context, client *http.Client, cacheURL, storePath string) (Availability, error) {
	h := HashPart(storePath)
	if h == "" {
		return Missing, fmt.Errorf("probe: %q is not a store path", storePath)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, strings.TrimSuffix(cacheURL, "/")+"/"+h+".narinfo", nil)
	if err != nil {
		return Missing, fmt.Errorf("probe of cache %s: %w", cacheURL, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return Missing, fmt.Errorf("probe of cache %s: %w", cacheURL, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNotFound {
		return Missing, fmt.Errorf("probe of cache %s: it answered %s", cacheURL, resp.Status)
	}
	return availability(resp.StatusCode, resp.Header.Get(BuildingHeader)), nil
}

// availability reads a narinfo answer's status and BuildingHeader.
func availability(status int, building string) Availability {
	switch {
	case status == http.StatusOK:
		return Has
	case status == http.StatusNotFound && building == "building":
		return Building
	case status == http.StatusNotFound && building == "queued":
		return Queued
	}
	return Missing
}
