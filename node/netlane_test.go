package node

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/hostnet"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// TestSideLane: a start whose tap is in place writes its identity while a
// pass holds hostMu (the test holds it), unless that pass may delete the
// tap or the tap is not as the instance wants it; then it waits for the
// pass as before. The side lane changes nothing on the host, so the test
// needs none: what it decides on is the plan and the records of the Syncs.
func TestSideLane(t *testing.T) {
	const vm = "fn-f-0"
	before := fnState(nil, 3, spec.Placement{}) // fn-f-0's tap is node 1's spare
	spare, ok := planNetwork(before, settingsOf(1), inputsOf(1))
	if !ok || len(spare.spares) != 1 {
		t.Fatalf("the fixture has no spare tap: %v", spare.spares)
	}
	tap := spare.want.LocalTaps[0]
	other := tap
	other.Name = "bxsomeoneelse"
	multiQueue := tap
	multiQueue.MultiQueue = true

	tests := []struct {
		name    string
		assign  uint64 // fn-f-0's node in the state the lane reads
		synced  []hostnet.Tap
		syncing bool
		keeps   []hostnet.Tap // the syncing pass's plan; nil: not planned yet
		noSync  bool          // no Sync succeeded yet
		ready   bool
	}{
		{name: "another start holds hostMu: the spare the last Sync made is trusted",
			assign: 1, synced: []hostnet.Tap{tap}, ready: true},
		{name: "a pass syncing that keeps the tap",
			assign: 1, synced: []hostnet.Tap{tap}, syncing: true, keeps: []hostnet.Tap{other, tap}, ready: true},
		{name: "a pass that has not planned yet may delete it: wait",
			assign: 1, synced: []hostnet.Tap{tap}, syncing: true},
		{name: "a pass syncing without the tap deletes it: wait",
			assign: 1, synced: []hostnet.Tap{tap}, syncing: true, keeps: []hostnet.Tap{other}},
		{name: "a pass syncing that makes the tap otherwise: wait",
			assign: 1, synced: []hostnet.Tap{tap}, syncing: true, keeps: []hostnet.Tap{multiQueue}},
		{name: "the last Sync did not make the tap: wait (the fast lane makes it)",
			assign: 1, synced: []hostnet.Tap{other}},
		{name: "the last Sync made it with other settings: wait",
			assign: 1, synced: []hostnet.Tap{multiQueue}},
		{name: "the instance runs on another node: nothing to write",
			assign: 2, synced: []hostnet.Tap{tap}},
		{name: "before the first Sync succeeded: wait",
			assign: 1, synced: []hostnet.Tap{tap}, noSync: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			after := fnState(map[string]uint64{vm: tc.assign}, 3, spec.Placement{})
			dir := t.TempDir()
			in := inputsOf(1)
			n := &network{cfg: Config{NodeID: 1, StateDir: dir}, set: settingsOf(1),
				read: func() (*replicated.State, error) { return after, nil },
				log:  slog.New(slog.NewTextHandler(io.Discard, nil)), written: map[string][]byte{}, passDone: make(chan struct{}),
				mtu: 1450, synced: !tc.noSync, laneIn: &in, syncedTaps: tapsByName(tc.synced), syncing: tc.syncing}
			if tc.keeps != nil {
				n.keeps = tapsByName(tc.keeps)
			}
			n.hostMu.Lock() // a pass, or another start's fast lane
			defer n.hostMu.Unlock()

			got := n.startLane(context.Background(), vm)
			env, err := os.ReadFile(filepath.Join(dir, vm, NetworkEnvFile))
			if got != tc.ready {
				t.Fatalf("startLane = %t, want %t (network.env: %q, %v)", got, tc.ready, env, err)
			}
			if !tc.ready {
				if err == nil {
					t.Fatalf("network.env written though the lane did not make %s ready: %q", vm, env)
				}
				return
			}
			if err != nil || !strings.Contains(string(env), "BLIXARD_TAP="+tap.Name+"\n") || !strings.Contains(string(env), "BLIXARD_MTU=1450\n") {
				t.Fatalf("network.env = %q, %v; want fn-f-0's identity on tap %s", env, err, tap.Name)
			}
			// Published: WaitReady returns at once, though hostMu is held.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := n.WaitReady(ctx, vm); err != nil {
				t.Fatalf("WaitReady after the side lane: %v", err)
			}
		})
	}
}

// TestWaitReadyWaitsForThePassWhenTheSideLaneCannot: an untrusted tap
// leaves the start to the pass, whose publication WaitReady waits for.
func TestWaitReadyWaitsForThePassWhenTheSideLaneCannot(t *testing.T) {
	const vm = "fn-f-0"
	after := fnState(map[string]uint64{vm: 1}, 3, spec.Placement{})
	in := inputsOf(1)
	n := &network{cfg: Config{NodeID: 1, StateDir: t.TempDir()}, set: settingsOf(1),
		read: func() (*replicated.State, error) { return after, nil },
		log:  slog.New(slog.NewTextHandler(io.Discard, nil)), written: map[string][]byte{}, passDone: make(chan struct{}),
		mtu: 1450, synced: true, laneIn: &in, syncing: true, kick: make(chan struct{}, 1)}
	n.hostMu.Lock()
	done := make(chan error, 1)
	go func() { done <- n.WaitReady(context.Background(), vm) }()
	select {
	case err := <-done:
		t.Fatalf("WaitReady returned (%v) while a pass that has not planned holds hostMu", err)
	case <-time.After(100 * time.Millisecond):
	}
	// The pass writes the identity and publishes it.
	p, _ := planNetwork(after, settingsOf(1), in)
	n.envMu.Lock()
	if _, err := n.writeEnv(p.env, true); err != nil {
		t.Fatal(err)
	}
	n.publishReady()
	n.envMu.Unlock()
	n.hostMu.Unlock()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("WaitReady: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitReady did not return after the pass published the identity")
	}
}
