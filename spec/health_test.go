package spec

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// vmWithHealth is the JSON of a cluster whose VM web has the given health
// attribute.
func vmWithHealth(health string) string {
	return `{"vms": {"web": {"runner": ` + testRunnerJSON + `, "vcpu": 1, "memMiB": 64, "health": ` + health + `}}}`
}

func TestDecodeHealth(t *testing.T) {
	defaults := func(h HealthCheck) *HealthCheck {
		if h.Interval == 0 {
			h.Interval = DefaultHealthInterval
		}
		if h.Timeout == 0 {
			h.Timeout = DefaultHealthTimeout
		}
		if h.HealthyAfter == 0 {
			h.HealthyAfter = DefaultHealthyAfter
		}
		if h.UnhealthyAfter == 0 {
			h.UnhealthyAfter = DefaultUnhealthyAfter
		}
		return &h
	}
	tests := []struct {
		name   string
		health string
		want   *HealthCheck // when the decode succeeds
		errs   []string     // the error's lines, exactly, when it fails
	}{
		{"http with the defaults", `{"http": {"port": 8080}}`,
			defaults(HealthCheck{HTTP: &HTTPHealthCheck{Port: 8080, Path: "/"}}), nil},
		{"http with everything", `{"http": {"port": 8080, "path": "/healthz"}, "interval": "10s", "timeout": "1500ms", "healthyAfter": 2, "unhealthyAfter": 5}`,
			&HealthCheck{HTTP: &HTTPHealthCheck{Port: 8080, Path: "/healthz"}, Interval: 10 * time.Second,
				Timeout: 1500 * time.Millisecond, HealthyAfter: 2, UnhealthyAfter: 5}, nil},
		{"tcp", `{"tcp": {"port": 5432}, "interval": "1m30s"}`,
			defaults(HealthCheck{TCP: &TCPHealthCheck{Port: 5432}, Interval: 90 * time.Second}), nil},
		{"both protocols decode (Validate refuses them)", `{"http": {"port": 1}, "tcp": {"port": 2}}`,
			defaults(HealthCheck{HTTP: &HTTPHealthCheck{Port: 1, Path: "/"}, TCP: &TCPHealthCheck{Port: 2}}), nil},
		{"no protocol decodes (Validate refuses it)", `{}`, defaults(HealthCheck{}), nil},
		{"not an attribute set", `true`, nil,
			[]string{`vms.web.health: expected an attribute set, got boolean true`}},
		{"unknown attribute, with a suggestion", `{"http": {"port": 80}, "intervall": "5s"}`, nil,
			[]string{`vms.web.health.intervall: unknown field "intervall"; did you mean "interval"? (known fields: http, tcp, interval, timeout, healthyAfter, unhealthyAfter)`}},
		{"an integer duration", `{"tcp": {"port": 80}, "interval": 5}`, nil,
			[]string{`vms.web.health.interval: expected a duration string such as "500ms", "5s" or "1m30s", got integer 5`}},
		{"a duration Go cannot read", `{"tcp": {"port": 80}, "timeout": "2 seconds"}`, nil,
			[]string{`vms.web.health.timeout: "2 seconds" is not a duration: write it as "500ms", "5s" or "1m30s"`}},
		{"http without a port", `{"http": {"path": "/"}}`, nil,
			[]string{`vms.web.health.http.port: missing required field (the port the instance answers HTTP on, 1–65535)`}},
		{"tcp without a port", `{"tcp": {}}`, nil,
			[]string{`vms.web.health.tcp.port: missing required field (the port the instance accepts TCP connections on, 1–65535)`}},
		{"unknown http attribute", `{"http": {"port": 80, "host": "x"}}`, nil,
			[]string{`vms.web.health.http.host: unknown field "host"; did you mean "port"? (known fields: port, path)`}},
		{"wrong types everywhere, all reported", `{"http": {"port": "80", "path": 1}, "healthyAfter": "2", "unhealthyAfter": 1.5}`, nil,
			[]string{
				`vms.web.health.healthyAfter: expected an integer, got string "2"`,
				`vms.web.health.http.path: expected a string, got integer 1`,
				`vms.web.health.http.port: expected an integer, got string "80"`,
				`vms.web.health.unhealthyAfter: expected an integer, got float 1.5`,
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Decode([]byte(vmWithHealth(tt.health)))
			if tt.errs != nil {
				var e *Error
				if !errors.As(err, &e) {
					t.Fatalf("Decode = %v, want an *Error with %q", err, tt.errs)
				}
				if got := strings.Split(e.Error(), "\n"); !reflect.DeepEqual(got, tt.errs) {
					t.Fatalf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.errs, "\n"))
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if got := c.VMs["web"].Health; !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("health = %+v, want %+v", got, tt.want)
			}
		})
	}
	// Without a health attribute there is no check: healthy once running.
	c, err := Decode([]byte(`{"vms": {"web": {"runner": ` + testRunnerJSON + `, "vcpu": 1, "memMiB": 64}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if h := c.VMs["web"].Health; h != nil {
		t.Errorf("health without the attribute = %+v, want nil", h)
	}
}

func TestValidateHealth(t *testing.T) {
	valid := func() *HealthCheck {
		return &HealthCheck{HTTP: &HTTPHealthCheck{Port: 8080, Path: "/healthz"}, Interval: 5 * time.Second,
			Timeout: 2 * time.Second, HealthyAfter: 1, UnhealthyAfter: 3}
	}
	tests := []struct {
		name string
		edit func(h *HealthCheck)
		want []string // the error's lines; nil: valid
	}{
		{"http passes", func(h *HealthCheck) {}, nil},
		{"tcp passes", func(h *HealthCheck) { h.HTTP, h.TCP = nil, &TCPHealthCheck{Port: 22} }, nil},
		{"the smallest interval passes", func(h *HealthCheck) { h.Interval, h.Timeout = MinHealthInterval, time.Millisecond }, nil},
		{"port 65535 passes", func(h *HealthCheck) { h.HTTP.Port = 65535 }, nil},
		{"neither protocol", func(h *HealthCheck) { h.HTTP = nil },
			[]string{`vms.web.health: set exactly one of http = { port; path; } or tcp = { port; }, got neither`}},
		{"both protocols", func(h *HealthCheck) { h.TCP = &TCPHealthCheck{Port: 1} },
			[]string{`vms.web.health: set exactly one of http and tcp, got both`}},
		{"port 0", func(h *HealthCheck) { h.HTTP.Port = 0 },
			[]string{`vms.web.health.http.port: must be a port between 1 and 65535, got 0`}},
		{"tcp port too large", func(h *HealthCheck) { h.HTTP, h.TCP = nil, &TCPHealthCheck{Port: 65536} },
			[]string{`vms.web.health.tcp.port: must be a port between 1 and 65535, got 65536`}},
		{"relative path", func(h *HealthCheck) { h.HTTP.Path = "healthz" },
			[]string{`vms.web.health.http.path: must start with "/", got "healthz"`}},
		{"interval below the minimum", func(h *HealthCheck) { h.Interval, h.Timeout = 50*time.Millisecond, 10*time.Millisecond },
			[]string{`vms.web.health.interval: must be at least 100ms, got 50ms`}},
		{"timeout as long as the interval", func(h *HealthCheck) { h.Timeout = h.Interval },
			[]string{`vms.web.health.timeout: must be shorter than interval (5s), got 5s: a probe must end before the next one starts`}},
		{"zero timeout", func(h *HealthCheck) { h.Timeout = 0 },
			[]string{`vms.web.health.timeout: must be > 0, got 0s`}},
		{"negative interval", func(h *HealthCheck) { h.Interval = -time.Second },
			[]string{`vms.web.health.interval: must be at least 100ms, got -1s`}},
		{"zero thresholds", func(h *HealthCheck) { h.HealthyAfter, h.UnhealthyAfter = 0, -1 },
			[]string{`vms.web.health.healthyAfter: must be >= 1, got 0`, `vms.web.health.unhealthyAfter: must be >= 1, got -1`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := cluster(func(c *Cluster) {
				h := valid()
				tt.edit(h)
				editVM(c, "web", func(vm *VM) { vm.Health = h })
			})
			err := c.Validate()
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate passed, want %q", tt.want)
			}
			if got := strings.Split(err.Error(), "\n"); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

// TestDecodedHealthValidates: what Decode makes of a flake's health block,
// defaults included, passes Validate.
func TestDecodedHealthValidates(t *testing.T) {
	c, err := Decode([]byte(vmWithHealth(`{"http": {"port": 8080, "path": "/healthz"}}`)))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
}

func TestHealthCheckCloneAndJSON(t *testing.T) {
	h := &HealthCheck{HTTP: &HTTPHealthCheck{Port: 8080, Path: "/healthz"}, TCP: &TCPHealthCheck{Port: 9},
		Interval: 5 * time.Second, Timeout: 2 * time.Second, HealthyAfter: 1, UnhealthyAfter: 3}
	c := h.Clone()
	if !reflect.DeepEqual(c, h) {
		t.Fatalf("clone %+v differs from %+v", c, h)
	}
	c.HTTP.Path, c.TCP.Port, c.Interval = "/other", 10, time.Minute
	if h.HTTP.Path != "/healthz" || h.TCP.Port != 9 || h.Interval != 5*time.Second {
		t.Errorf("changing the clone changed the original: %+v", h)
	}
	if (*HealthCheck)(nil).Clone() != nil {
		t.Error("Clone of nil is not nil")
	}
	// The replicated state stores checks as JSON: they come back the same.
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	var back HealthCheck
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&back, h) {
		t.Errorf("JSON round trip: %+v, want %+v (%s)", back, h, b)
	}
	if got := (&HealthCheck{TCP: &TCPHealthCheck{Port: 5432}, Interval: 5 * time.Second, Timeout: time.Second,
		HealthyAfter: 1, UnhealthyAfter: 3}).String(); got != "tcp :5432 every 5s (timeout 1s, healthy after 1, unhealthy after 3)" {
		t.Errorf("String = %q", got)
	}
}
