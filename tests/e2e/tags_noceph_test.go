//go:build !ceph

package e2e

// blixardTags are the build tags TestMain builds blixard with: the same Ceph
// support as this test binary.
const blixardTags = ""
