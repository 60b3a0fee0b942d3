package main

import (
	"bytes"
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// TestStatusAndVMShowHealth runs `blixard status` and `blixard vm` against
// a real API server on an in-memory state where node 1's heartbeat reports
// web healthy, db unhealthy with its probe's error, and cache starting.
func TestStatusAndVMShowHealth(t *testing.T) {
	st := testkit.NewStore(nil)
	web, db, cache := testkit.Assign("web", 1, "v1"), testkit.Assign("db", 1, "v1"), testkit.Assign("cache", 1, "v1")
	db.Health = &spec.HealthCheck{TCP: &spec.TCPHealthCheck{Port: 5432}, Interval: 5 * time.Second, Timeout: 2 * time.Second,
		HealthyAfter: 1, UnhealthyAfter: 3}
	since := testkit.T0.Add(time.Minute)
	const probeErr = "connect to 10.100.0.3:5432: connect: connection refused"
	hb := replicated.Command{Type: replicated.CmdNodeHeartbeat, At: since, NodeHeartbeat: &replicated.NodeHeartbeat{ID: 1,
		Statuses: []replicated.VMStatus{
			{VM: "web", Phase: replicated.PhaseRunning, Health: replicated.Healthy, HealthSince: since},
			{VM: "db", Phase: replicated.PhaseRunning, Health: replicated.Unhealthy, HealthSince: since, HealthError: probeErr},
			{VM: "cache", Phase: replicated.PhaseStarting},
		}}}
	for _, cmd := range []replicated.Command{testkit.Register(1), testkit.Plan(0, "c1", cache, db, web), hb} {
		if res, err := st.Propose(context.Background(), cmd); err != nil || !res.OK() {
			t.Fatalf("%s: %v %+v", cmd.Type, err, res)
		}
	}
	srv := httptest.NewServer(api.NewServer(api.Options{Replica: testkit.NewReplica(st, 1, 1), Insecure: true}).Handler())
	defer srv.Close()
	sinceText := since.Local().Format(time.RFC3339)
	for _, tt := range []struct {
		args []string
		want []string
		not  []string
	}{
		{[]string{"status"}, []string{"HEALTH", "healthy", "unhealthy", "db unhealthy since " + sinceText + ": " + probeErr}, nil},
		{[]string{"status", "--json"}, []string{`"health": "healthy"`, `"health": "unhealthy"`, `"healthError": "` + probeErr + `"`,
			`"healthSince": "` + since.Format(time.RFC3339) + `"`}, nil},
		{[]string{"vm", "web"}, []string{"Health:", "healthy since " + sinceText, "Health check:", "none (healthy once running)"}, nil},
		{[]string{"vm", "db"}, []string{"unhealthy since " + sinceText + ": " + probeErr,
			"tcp :5432 every 5s (timeout 2s, healthy after 1, unhealthy after 3)"}, nil},
		{[]string{"vm", "db", "--json"}, []string{`"healthCheck": {`, `"port": 5432`, `"healthError": "` + probeErr + `"`}, nil},
		{[]string{"vm", "cache"}, []string{"Health:", "- (not running)"}, []string{"healthy since"}},
		{[]string{"vm", "cache", "--json"}, nil, []string{`"health"`, `"healthSince"`, `"healthCheck"`}},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var out, errb bytes.Buffer
			if code := run(context.Background(), append(tt.args, "--server", srv.URL), &out, &errb); code != 0 {
				t.Fatalf("exit %d\n%s%s", code, out.String(), errb.String())
			}
			t.Logf("%s", out.String())
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			for _, w := range tt.not {
				if strings.Contains(out.String(), w) {
					t.Errorf("output has %q:\n%s", w, out.String())
				}
			}
		})
	}
}
