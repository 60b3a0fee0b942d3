package spec

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Health check defaults: Decode fills them in for attributes a `health`
// block leaves out.
const (
	DefaultHealthInterval = 5 * time.Second
	DefaultHealthTimeout  = 2 * time.Second
	DefaultHealthyAfter   = 1
	DefaultUnhealthyAfter = 3
	DefaultHealthPath     = "/"
	// MinHealthInterval bounds interval from below, so that a slip such as
	// "5ms" does not make every node probe hundreds of times a second.
	MinHealthInterval = 100 * time.Millisecond
)

// How duration strings are written, for error messages.
const healthDurationExamples = `"500ms", "5s" or "1m30s"`

// HealthCheck is a VM's `health` attribute: how the node agent judges
// whether a running instance serves. Exactly one of HTTP and TCP is set.
//
// In the flake, durations are strings Go's time.ParseDuration reads
// ("500ms", "5s", "1m"); here they are time.Durations (in the replicated
// state's JSON: nanoseconds).
type HealthCheck struct {
	// HTTP probes with GET http://ADDRESS:PORT/PATH: a status 200–399
	// passes, anything else (another status, no answer within Timeout, a
	// refused connection) fails. Redirects are not followed.
	HTTP *HTTPHealthCheck `json:"http,omitempty"`
	// TCP probes by connecting to ADDRESS:PORT: an accepted connection
	// passes.
	TCP *TCPHealthCheck `json:"tcp,omitempty"`
	// Interval is the time between the starts of two probes (default 5s,
	// at least MinHealthInterval).
	Interval time.Duration `json:"interval"`
	// Timeout bounds one probe (default 2s); it is shorter than Interval,
	// so at most one probe of an instance is in flight.
	Timeout time.Duration `json:"timeout"`
	// HealthyAfter is how many probes in a row must pass before the
	// instance counts as healthy (default 1).
	HealthyAfter int `json:"healthyAfter"`
	// UnhealthyAfter is how many probes in a row must fail before it
	// counts as unhealthy (default 3).
	UnhealthyAfter int `json:"unhealthyAfter"`
}

// healthCheckJSON is HealthCheck without its methods, for MarshalJSON.
type healthCheckJSON HealthCheck

// MarshalJSON writes Interval and Timeout as duration strings ("5s"), as
// the flake does, so the canonical JSON of a spec decodes again with
// Decode and reads well in `--json` output.
func (h HealthCheck) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		healthCheckJSON
		Interval string `json:"interval"`
		Timeout  string `json:"timeout"`
	}{healthCheckJSON(h), h.Interval.String(), h.Timeout.String()})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (h *HealthCheck) UnmarshalJSON(data []byte) error {
	aux := struct {
		*healthCheckJSON
		Interval string `json:"interval"`
		Timeout  string `json:"timeout"`
	}{healthCheckJSON: (*healthCheckJSON)(h)}
	if err := json.Unmarshal(data, &aux); err != nil {
		return err
	}
	var err error
	if h.Interval, err = parseJSONDuration("health interval", aux.Interval); err != nil {
		return err
	}
	h.Timeout, err = parseJSONDuration("health timeout", aux.Timeout)
	return err
}

// parseJSONDuration reads a duration MarshalJSON wrote; "" is zero.
func parseJSONDuration(what, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%s %q: %w", what, s, err)
	}
	return d, nil
}

// HTTPHealthCheck is `health.http`.
type HTTPHealthCheck struct {
	Port int `json:"port"`
	// Path starts with "/" (default "/").
	Path string `json:"path"`
}

// TCPHealthCheck is `health.tcp`.
type TCPHealthCheck struct {
	Port int `json:"port"`
}

// Clone returns a copy of h that shares nothing with it (nil for nil).
func (h *HealthCheck) Clone() *HealthCheck {
	if h == nil {
		return nil
	}
	c := *h
	if h.HTTP != nil {
		x := *h.HTTP
		c.HTTP = &x
	}
	if h.TCP != nil {
		x := *h.TCP
		c.TCP = &x
	}
	return &c
}

// Port is the port the check probes (0 when it names no protocol).
func (h *HealthCheck) Port() int {
	switch {
	case h == nil:
		return 0
	case h.HTTP != nil:
		return h.HTTP.Port
	case h.TCP != nil:
		return h.TCP.Port
	}
	return 0
}

// WithDefaults returns h with the defaults Decode applies in place of zero
// values, for checks built by hand (tests, older states).
func (h HealthCheck) WithDefaults() HealthCheck {
	if h.Interval <= 0 {
		h.Interval = DefaultHealthInterval
	}
	if h.Timeout <= 0 {
		h.Timeout = min(DefaultHealthTimeout, h.Interval/2)
	}
	if h.HealthyAfter <= 0 {
		h.HealthyAfter = DefaultHealthyAfter
	}
	if h.UnhealthyAfter <= 0 {
		h.UnhealthyAfter = DefaultUnhealthyAfter
	}
	if h.HTTP != nil && h.HTTP.Path == "" {
		x := *h.HTTP
		x.Path = DefaultHealthPath
		h.HTTP = &x
	}
	return h
}

// String describes the check as `blixard vm` shows it: "http :8080/healthz
// every 5s (timeout 2s, healthy after 1, unhealthy after 3)".
func (h *HealthCheck) String() string {
	if h == nil {
		return "none (healthy once running)"
	}
	what := "no protocol"
	switch {
	case h.HTTP != nil:
		what = fmt.Sprintf("http :%d%s", h.HTTP.Port, h.HTTP.Path)
	case h.TCP != nil:
		what = fmt.Sprintf("tcp :%d", h.TCP.Port)
	}
	return fmt.Sprintf("%s every %s (timeout %s, healthy after %d, unhealthy after %d)",
		what, h.Interval, h.Timeout, h.HealthyAfter, h.UnhealthyAfter)
}

var healthFields = []string{"http", "tcp", "interval", "timeout", "healthyAfter", "unhealthyAfter"}

// health decodes a VM's `health` attribute set, with the defaults for what
// it leaves out; Validate checks the values.
func (d *decoder) health(path string, v any) *HealthCheck {
	h := &HealthCheck{Interval: DefaultHealthInterval, Timeout: DefaultHealthTimeout,
		HealthyAfter: DefaultHealthyAfter, UnhealthyAfter: DefaultUnhealthyAfter}
	m, ok := d.object(path, v, healthFields...)
	if !ok {
		return h
	}
	if x, ok := m["http"]; ok {
		hp := attrPath(path, "http")
		h.HTTP = &HTTPHealthCheck{Path: DefaultHealthPath}
		if hm, ok := d.object(hp, x, "port", "path"); ok {
			if x, ok := d.required(hm, hp, "port", "the port the instance answers HTTP on, 1–65535"); ok {
				h.HTTP.Port = d.int(attrPath(hp, "port"), x)
			}
			if x, ok := hm["path"]; ok {
				h.HTTP.Path = d.str(attrPath(hp, "path"), x)
			}
		}
	}
	if x, ok := m["tcp"]; ok {
		tp := attrPath(path, "tcp")
		h.TCP = &TCPHealthCheck{}
		if tm, ok := d.object(tp, x, "port"); ok {
			if x, ok := d.required(tm, tp, "port", "the port the instance accepts TCP connections on, 1–65535"); ok {
				h.TCP.Port = d.int(attrPath(tp, "port"), x)
			}
		}
	}
	if x, ok := m["interval"]; ok {
		h.Interval = d.healthDuration(attrPath(path, "interval"), x)
	}
	if x, ok := m["timeout"]; ok {
		h.Timeout = d.healthDuration(attrPath(path, "timeout"), x)
	}
	if x, ok := m["healthyAfter"]; ok {
		h.HealthyAfter = d.int(attrPath(path, "healthyAfter"), x)
	}
	if x, ok := m["unhealthyAfter"]; ok {
		h.UnhealthyAfter = d.int(attrPath(path, "unhealthyAfter"), x)
	}
	return h
}

// healthDuration decodes a duration string such as "5s".
func (d *decoder) healthDuration(path string, v any) time.Duration {
	s, ok := v.(string)
	if !ok {
		d.ps.addf(path, "expected a duration string such as %s, got %s", healthDurationExamples, describe(v))
		return 0
	}
	dur, err := time.ParseDuration(s)
	if err != nil {
		d.ps.addf(path, "%q is not a duration: write it as %s", s, healthDurationExamples)
		return 0
	}
	return dur
}

// validateHealth checks a VM's health check (nil: none, valid).
func validateHealth(ps *problems, path string, h *HealthCheck) {
	if h == nil {
		return
	}
	switch {
	case h.HTTP == nil && h.TCP == nil:
		ps.addf(path, "set exactly one of http = { port; path; } or tcp = { port; }, got neither")
	case h.HTTP != nil && h.TCP != nil:
		ps.addf(path, "set exactly one of http and tcp, got both")
	}
	if h.HTTP != nil {
		hp := attrPath(path, "http")
		validateHealthPort(ps, attrPath(hp, "port"), h.HTTP.Port)
		if !strings.HasPrefix(h.HTTP.Path, "/") {
			ps.addf(attrPath(hp, "path"), "must start with \"/\", got %q", h.HTTP.Path)
		}
	}
	if h.TCP != nil {
		validateHealthPort(ps, attrPath(attrPath(path, "tcp"), "port"), h.TCP.Port)
	}
	if h.Interval < MinHealthInterval {
		ps.addf(attrPath(path, "interval"), "must be at least %s, got %s", MinHealthInterval, h.Interval)
	}
	switch {
	case h.Timeout <= 0:
		ps.addf(attrPath(path, "timeout"), "must be > 0, got %s", h.Timeout)
	case h.Timeout >= h.Interval && h.Interval > 0:
		ps.addf(attrPath(path, "timeout"), "must be shorter than interval (%s), got %s: a probe must end before the next one starts",
			h.Interval, h.Timeout)
	}
	if h.HealthyAfter < 1 {
		ps.addf(attrPath(path, "healthyAfter"), "must be >= 1, got %d", h.HealthyAfter)
	}
	if h.UnhealthyAfter < 1 {
		ps.addf(attrPath(path, "unhealthyAfter"), "must be >= 1, got %d", h.UnhealthyAfter)
	}
}

func validateHealthPort(ps *problems, path string, port int) {
	if port < 1 || port > 65535 {
		ps.addf(path, "must be a port between 1 and 65535, got %d", port)
	}
}
