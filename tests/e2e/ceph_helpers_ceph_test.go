//go:build ceph

package e2e

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// startCeph starts a throw-away Ceph cluster (tests/ceph/ceph.sh) and
// returns its ceph.conf; a failure names ceph.sh's own message.
func startCeph(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("../ceph/ceph.sh", "start").Output()
	if err != nil {
		var ee *exec.ExitError
		msg := ""
		if errors.As(err, &ee) {
			msg = strings.TrimSpace(string(ee.Stderr))
		}
		t.Fatalf("tests/ceph/ceph.sh start: %v: %s (run scripts/setup-ceph.sh)", err, msg)
	}
	return strings.TrimSpace(string(out))
}
