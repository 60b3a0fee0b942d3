package e2e

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestServeNotifiesSystemdReadiness plays systemd's side of Type=notify: it
// listens on NOTIFY_SOCKET and expects READY=1 once the node serves.
func TestServeNotifiesSystemdReadiness(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	n := &node{id: 1, api: freeAddr(t), raft: freeAddr(t), dataDir: t.TempDir(), env: []string{"NOTIFY_SOCKET=" + sock}}
	n.logPath = filepath.Join(n.dataDir, "serve.log")
	c := &cluster{t: t, nodes: []*node{n}}
	c.start(n, []string{"serve", "--node-id", "1", "--data-dir", n.dataDir, "--raft-addr", n.raft,
		"--api-addr", n.api, "--state-dir", n.stateDir(), "--agent=false"})
	t.Cleanup(c.stopAll)

	if err := conn.SetReadDeadline(time.Now().Add(60 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	got, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("no sd_notify message within 60s: %v", err)
	}
	msg := string(buf[:got])
	if !strings.Contains(msg, "READY=1") || !strings.Contains(msg, "STATUS=") {
		t.Fatalf("sd_notify message %q lacks READY=1 and STATUS=", msg)
	}
	// READY means the API answers.
	if _, stderr, code := cli(t, "", "nodes", "--server", n.api); code != 0 {
		t.Fatalf("nodes after READY: exit %d: %s", code, stderr)
	}
}
