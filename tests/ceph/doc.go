// Package ceph tests Blixard's Ceph RBD volumes (package volumes, and the
// node agent's volumes step) against a real throw-away Ceph cluster that
// ceph.sh in this directory starts on 127.0.0.1 once per test run.
//
// The tests need the `ceph` build tag (go test -tags ceph,pacific
// ./tests/ceph), the Ceph daemons and libraries, qemu-storage-daemon with
// qemu's rbd driver (the volume daemons) and qemu-io (scripts/setup-ceph.sh)
// and, for the agent tests, nix (scripts/setup.sh); the qemu tests also need
// a real microVM's parts (scripts/setup-microvm.sh). Without the tag a single
// test fails and says so. The package has no non-test code besides this doc.
package ceph
