//go:build !ceph

package ceph

import "testing"

// TestCephNeedsBuildTag fails a run that would otherwise skip every Ceph
// test silently.
func TestCephNeedsBuildTag(t *testing.T) {
	t.Fatal("the Ceph tests need the ceph build tag: go test -tags ceph,pacific ./tests/ceph (scripts/test.sh passes it; install Ceph with scripts/setup-ceph.sh)")
}
