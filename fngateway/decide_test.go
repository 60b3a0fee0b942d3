package fngateway

import (
	"testing"
	"time"
)

func TestPick(t *testing.T) {
	ready := func(local bool, inflight int) Candidate {
		return Candidate{Local: local, Ready: true, InFlight: inflight}
	}
	tests := []struct {
		name        string
		cands       []Candidate
		concurrency int
		turn        uint64
		want        int
	}{
		{"no instances", nil, 4, 0, -1},
		{"the only instance, free", []Candidate{ready(false, 0)}, 1, 0, 0},
		{"the only instance, at concurrency", []Candidate{ready(false, 1)}, 1, 0, -1},
		{"not ready is never picked", []Candidate{{Ready: false}}, 4, 0, -1},
		{"down is never picked", []Candidate{{Ready: true, Down: true}}, 4, 0, -1},
		{"tried by this request is never picked", []Candidate{{Ready: true, Tried: true}}, 4, 0, -1},
		{"least in flight wins", []Candidate{ready(false, 3), ready(false, 1), ready(false, 2)}, 4, 0, 1},
		{"local wins over fewer in flight elsewhere", []Candidate{ready(false, 0), ready(true, 3)}, 4, 0, 1},
		{"local at concurrency gives way to a remote one", []Candidate{ready(false, 2), ready(true, 4)}, 4, 0, 0},
		{"least in flight among the local ones", []Candidate{ready(true, 2), ready(false, 0), ready(true, 1)}, 4, 0, 2},
		{"ties go to the first from turn on", []Candidate{ready(false, 0), ready(false, 0), ready(false, 0)}, 4, 1, 1},
		{"turn wraps around", []Candidate{ready(false, 0), ready(false, 0), ready(false, 0)}, 4, 5, 2},
		{"turn does not beat fewer in flight", []Candidate{ready(false, 0), ready(false, 1), ready(false, 1)}, 4, 1, 0},
		{"skips unusable ones to a usable one", []Candidate{{Ready: true, Down: true}, {Ready: false}, ready(false, 3), {Ready: true, Tried: true}}, 4, 0, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Pick(tt.cands, tt.concurrency, tt.turn); got != tt.want {
				t.Fatalf("Pick = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestAdmit(t *testing.T) {
	tests := []struct {
		name string
		in   AdmitInput
		want Admission
	}{
		{"a free instance serves", AdmitInput{Free: true, Ready: 1, QueueLimit: 10}, Serve},
		{"a free instance serves even after a failed start", AdmitInput{Free: true, Ready: 1, StartFailed: true}, Serve},
		{"nothing free: queue", AdmitInput{Ready: 2, Queued: 3, QueueLimit: 10}, Queue},
		{"nothing at all yet: queue (a cold start)", AdmitInput{QueueLimit: 10}, Queue},
		{"queue at its limit: 503", AdmitInput{Ready: 2, Queued: 10, QueueLimit: 10}, QueueIsFull},
		{"failed start and nothing ready: 502", AdmitInput{StartFailed: true, Starting: 1, QueueLimit: 10}, FailStart},
		{"failed start but a busy ready instance: queue", AdmitInput{StartFailed: true, Ready: 1, QueueLimit: 10}, Queue},
		{"failed start wins over a full queue", AdmitInput{StartFailed: true, Queued: 10, QueueLimit: 10}, FailStart},
		{"every ready instance refused, none starting: 502", AdmitInput{Ready: 2, TriedAll: true, QueueLimit: 10}, FailUnreachable},
		{"every ready instance refused, one starting: queue", AdmitInput{Ready: 2, Starting: 1, TriedAll: true, QueueLimit: 10}, Queue},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Admit(tt.in); got != tt.want {
				t.Fatalf("Admit(%+v) = %s, want %s", tt.in, got, tt.want)
			}
		})
	}
}

func TestDesiredAndScaleOut(t *testing.T) {
	tests := []struct {
		name                                      string
		inFlight, queued, concurrency, minI, maxI int
		want                                      int
		ready, starting                           int
		scaleOut                                  bool
	}{
		{"idle at zero", 0, 0, 4, 0, 10, 0, 0, 0, false},
		{"idle keeps minInstances", 0, 0, 4, 2, 10, 2, 2, 0, false},
		{"one request wakes one instance", 0, 1, 4, 0, 10, 1, 0, 0, true},
		{"one request while one starts: enough", 0, 1, 4, 0, 10, 1, 0, 1, false},
		{"exactly concurrency × ready: enough", 8, 0, 4, 0, 10, 2, 2, 0, false},
		{"one more than concurrency × ready: scale out", 8, 1, 4, 0, 10, 3, 2, 0, true},
		{"bounded by maxInstances", 100, 100, 4, 0, 8, 8, 8, 0, false},
		{"concurrency below 1 counts as 1", 3, 0, 0, 0, 10, 3, 1, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Desired(tt.inFlight, tt.queued, tt.concurrency, tt.minI, tt.maxI)
			if got != tt.want {
				t.Fatalf("Desired = %d, want %d", got, tt.want)
			}
			d := Demand{InFlight: tt.inFlight, Queued: tt.queued, Ready: tt.ready, Starting: tt.starting, Want: got}
			if d.ScaleOut() != tt.scaleOut {
				t.Fatalf("%+v.ScaleOut() = %t, want %t", d, d.ScaleOut(), tt.scaleOut)
			}
		})
	}
}

func TestScaleIn(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	idle := time.Minute
	tests := []struct {
		name                            string
		now                             time.Time
		inFlight, queued, running, minI int
		want                            int
		ok                              bool
	}{
		{"idle long enough: down to minInstances", t0.Add(idle), 0, 0, 3, 0, 0, true},
		{"idle long enough, minInstances kept", t0.Add(2 * idle), 0, 0, 3, 1, 1, true},
		{"not idle long enough", t0.Add(idle - time.Second), 0, 0, 3, 0, 3, false},
		{"a request in flight", t0.Add(2 * idle), 1, 0, 3, 0, 3, false},
		{"a request waiting", t0.Add(2 * idle), 0, 1, 0, 0, 0, false},
		{"already at minInstances", t0.Add(2 * idle), 0, 0, 1, 1, 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ScaleIn(tt.now, t0, idle, tt.inFlight, tt.queued, tt.running, tt.minI)
			if got != tt.want || ok != tt.ok {
				t.Fatalf("ScaleIn = %d, %t; want %d, %t", got, ok, tt.want, tt.ok)
			}
		})
	}
}
