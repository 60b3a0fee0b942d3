package spec

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestDecodeUpdate(t *testing.T) {
	vmJSON := func(update string) string {
		return `{"vms": {"web": {"runner": ` + testRunnerJSON + `, "vcpu": 1, "memMiB": 64, "replicas": 4, "update": ` + update + `}}}`
	}
	tests := []struct {
		name   string
		update string
		want   Update
		errs   []string // the problems, in order; nil: decodes
	}{
		{"an empty block gets every default", `{}`,
			Update{MaxUnavailable: 1, Canary: 0, MinHealthySeconds: 10, ProgressDeadline: 5 * time.Minute, AutoRevert: false}, nil},
		{"every attribute", `{"maxUnavailable": 3, "canary": 1, "minHealthySeconds": 0, "progressDeadline": "90s", "autoRevert": true}`,
			Update{MaxUnavailable: 3, Canary: 1, MinHealthySeconds: 0, ProgressDeadline: 90 * time.Second, AutoRevert: true}, nil},
		{"a compound duration", `{"progressDeadline": "1h30m"}`,
			Update{MaxUnavailable: 1, MinHealthySeconds: 10, ProgressDeadline: 90 * time.Minute}, nil},
		{"an unknown attribute is named with a suggestion", `{"maxUnavailble": 2}`, Update{},
			[]string{`vms.web.update.maxUnavailble: unknown field "maxUnavailble"; did you mean "maxUnavailable"?`}},
		{"a number as the deadline", `{"progressDeadline": 300}`, Update{},
			[]string{`vms.web.update.progressDeadline: expected a duration string such as "5m" or "90s", got integer 300`}},
		{"a deadline without a unit", `{"progressDeadline": "300"}`, Update{},
			[]string{`vms.web.update.progressDeadline: "300" is not a duration: write it as "5m", "90s" or "1h30m"`}},
		{"wrong types", `{"maxUnavailable": "1", "autoRevert": "yes"}`, Update{},
			[]string{`vms.web.update.autoRevert: expected a boolean, got string "yes"`,
				`vms.web.update.maxUnavailable: expected an integer, got string "1"`}},
		{"not an attribute set", `true`, Update{},
			[]string{`vms.web.update: expected an attribute set, got boolean true`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Decode([]byte(vmJSON(tt.update)))
			if tt.errs != nil {
				var se *Error
				if !errors.As(err, &se) {
					t.Fatalf("Decode = %v, want problems %q", err, tt.errs)
				}
				got := strings.Split(se.Error(), "\n")
				for _, want := range tt.errs {
					if !containsLine(got, want) {
						t.Errorf("Decode error\n%s\nlacks %q", se.Error(), want)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if got := c.VMs["web"].Update; got != tt.want {
				t.Fatalf("update = %+v, want %+v", got, tt.want)
			}
			if err := c.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
		})
	}
}

func containsLine(lines []string, want string) bool {
	for _, l := range lines {
		if strings.Contains(l, want) {
			return true
		}
	}
	return false
}

func TestDecodeWithoutUpdateIsTheZeroUpdate(t *testing.T) {
	c, err := Decode([]byte(`{"vms": {"web": {"runner": ` + testRunnerJSON + `, "vcpu": 1, "memMiB": 64}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if u := c.VMs["web"].Update; u.Enabled() {
		t.Fatalf("a VM without an update block has %+v, want the zero Update (every instance at once)", u)
	}
	// The replicated state stores the spec as JSON: no block stays no block.
	b, err := json.Marshal(c.VMs["web"])
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "update") {
		t.Fatalf("a VM without an update block marshals with one: %s", b)
	}
	var back VM
	if err := json.Unmarshal(b, &back); err != nil || back.Update.Enabled() {
		t.Fatalf("round trip: %+v, %v", back.Update, err)
	}
}

func TestValidateUpdate(t *testing.T) {
	valid := Update{MaxUnavailable: 1, MinHealthySeconds: 10, ProgressDeadline: 5 * time.Minute}
	tests := []struct {
		name string
		edit func(u *Update)
		want []string // prefixes of the error's lines; nil means valid
	}{
		{"the defaults pass", func(u *Update) {}, nil},
		{"a canary of every replica passes", func(u *Update) { u.Canary = 4 }, nil},
		{"no minimum health time passes", func(u *Update) { u.MinHealthySeconds = 0 }, nil},
		{"maxUnavailable above replicas passes (one wave)", func(u *Update) { u.MaxUnavailable = 9 }, nil},
		{"zero maxUnavailable is refused", func(u *Update) { u.MaxUnavailable = 0 },
			[]string{"vms.web.update.maxUnavailable: must be >= 1, got 0: a wave moves at least one instance"}},
		{"a negative canary is refused", func(u *Update) { u.Canary = -1 },
			[]string{"vms.web.update.canary: must be >= 0, got -1"}},
		{"a canary above replicas is refused", func(u *Update) { u.Canary = 5 },
			[]string{"vms.web.update.canary: must be at most replicas (4), got 5"}},
		{"negative minHealthySeconds is refused", func(u *Update) { u.MinHealthySeconds = -1 },
			[]string{"vms.web.update.minHealthySeconds: must be between 0 and 86400, got -1"}},
		{"a zero deadline is refused", func(u *Update) { u.ProgressDeadline = 0 },
			[]string{"vms.web.update.progressDeadline: must be > 0, got 0s"}},
		{"a deadline within minHealthySeconds is refused", func(u *Update) { u.ProgressDeadline = 10 * time.Second },
			[]string{"vms.web.update.progressDeadline: must be longer than minHealthySeconds (10s), got 10s"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := cluster(func(c *Cluster) {
				editVM(c, "web", func(vm *VM) {
					vm.Replicas = 4
					vm.Update = valid
					tt.edit(&vm.Update)
				})
			})
			err := c.Validate()
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate = nil, want %q", tt.want)
			}
			lines := strings.Split(err.Error(), "\n")
			for _, w := range tt.want {
				found := false
				for _, l := range lines {
					found = found || strings.HasPrefix(strings.TrimSpace(l), w)
				}
				if !found {
					t.Errorf("Validate error\n%s\nlacks a line starting %q", err, w)
				}
			}
		})
	}
}

func TestUpdateString(t *testing.T) {
	for _, tt := range []struct {
		u    Update
		want string
	}{
		{Update{}, "none (every instance at once)"},
		{Update{MaxUnavailable: 1, MinHealthySeconds: 10, ProgressDeadline: 5 * time.Minute}, "waves of 1, healthy for 10s within 5m0s"},
		{Update{MaxUnavailable: 2, Canary: 1, MinHealthySeconds: 2, ProgressDeadline: time.Minute, AutoRevert: true},
			"waves of 2 after a canary of 1, healthy for 2s within 1m0s, auto-revert"},
	} {
		if got := tt.u.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.u, got, tt.want)
		}
	}
}
