package nodeagent

import (
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// ownerOf returns path's owner (not its link target's).
func ownerOf(t testing.TB, path string) (uid, gid int, mode os.FileMode) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid), fi.Mode().Perm()
}

func writeUserDB(t *testing.T, passwd, group string) string {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, text := range map[string]string{"passwd": passwd, "group": group} {
		if text == "" {
			continue
		}
		if err := os.WriteFile(filepath.Join(root, "etc", name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestLookupOwnerReadsTheUnitsSystem(t *testing.T) {
	passwd := "root:x:0:0:root:/root:/bin/bash\nmicrovm:x:996:997:MicroVM:/:/usr/sbin/nologin\n"
	group := "root:x:0:\nkvm:x:997:\n"
	cases := []struct {
		name          string
		passwd, group string
		want          stateOwner
	}{
		{"user and group", passwd, group, stateOwner{uid: 996, gid: 997, set: true}},
		{"no microvm user: unset", "root:x:0:0::/root:/bin/sh\n", group, stateOwner{}},
		{"no kvm group: unset", passwd, "root:x:0:\n", stateOwner{}},
		{"no user database: unset", "", "", stateOwner{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := lookupOwner(writeUserDB(t, tc.passwd, tc.group))
			if err != nil || got != tc.want {
				t.Errorf("lookupOwner = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
	if _, err := lookupOwner(writeUserDB(t, "microvm:x:nope:1::/:/bin/sh\n", group)); err == nil {
		t.Error("a non-numeric uid is not an error")
	}

	// This host: the answer follows its user database (NSS).
	got, err := lookupOwner("")
	if err != nil {
		t.Fatal(err)
	}
	u, uerr := user.Lookup(unitUser)
	g, gerr := user.LookupGroup(unitGroup)
	if want := uerr == nil && gerr == nil; got.set != want {
		t.Errorf("lookupOwner(\"\") = %+v; want set=%v (user %v %v, group %v %v)", got, want, u, uerr, g, gerr)
	}
}

func TestSwitchCurrentGivesStateDirToTheUnitsUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (it gives files to another user, as the agent does)")
	}
	owner := stateOwner{uid: 4242, gid: 4343, set: true}
	state := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(state, 0o700); err != nil { // host setup's: kept as it is
		t.Fatal(err)
	}
	out1, out2 := "/nix/store/00000000000000000000000000000000-runner-1", "/nix/store/11111111111111111111111111111111-runner-2"
	if err := prepareStateDir(state, "vm", out1, owner); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(state, "vm")
	for _, p := range []string{dir, filepath.Join(dir, "current")} {
		if uid, gid, _ := ownerOf(t, p); uid != owner.uid || gid != owner.gid {
			t.Errorf("%s belongs to %d:%d, want %d:%d", p, uid, gid, owner.uid, owner.gid)
		}
	}
	if uid, _, mode := ownerOf(t, state); uid != 0 || mode != 0o700 {
		t.Errorf("STATE itself changed: uid %d mode %v", uid, mode)
	}
	if got, _ := readLink(filepath.Join(dir, "current")); got != out1 {
		t.Errorf("current → %q, want %s", got, out1)
	}

	// A switch: a new link, the unit's user's too; booted is the backend's.
	if err := os.Symlink(out1, filepath.Join(dir, "booted")); err != nil {
		t.Fatal(err)
	}
	if err := prepareStateDir(state, "vm", out2, owner); err != nil {
		t.Fatal(err)
	}
	if got, _ := readLink(filepath.Join(dir, "current")); got != out2 {
		t.Errorf("current → %q, want %s", got, out2)
	}
	if uid, gid, _ := ownerOf(t, filepath.Join(dir, "current")); uid != owner.uid || gid != owner.gid {
		t.Errorf("switched current belongs to %d:%d", uid, gid)
	}
	if got, _ := readLink(filepath.Join(dir, "booted")); got != out1 {
		t.Errorf("booted → %q, want %s untouched", got, out1)
	}
	if _, err := os.Lstat(filepath.Join(dir, "current.tmp")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("current.tmp left behind: %v", err)
	}

	// A directory an older agent made as root (the realiser makes it for
	// gcroot first) is given to the user, as install-microvm-NAME does.
	old := filepath.Join(state, "old")
	if err := os.Mkdir(old, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(out1, filepath.Join(old, "current")); err != nil {
		t.Fatal(err)
	}
	if err := prepareStateDir(state, "old", out1, owner); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{old, filepath.Join(old, "current")} {
		if uid, _, _ := ownerOf(t, p); uid != owner.uid {
			t.Errorf("%s belongs to uid %d, want %d", p, uid, owner.uid)
		}
	}
	// ownStateDir (SystemdBackend.Start) repairs the same, and ignores a VM
	// without a directory.
	if err := os.Lchown(old, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := ownStateDir(state, "old", owner); err != nil {
		t.Fatal(err)
	}
	if uid, _, _ := ownerOf(t, old); uid != owner.uid {
		t.Errorf("ownStateDir left %s to uid %d", old, uid)
	}
	if err := ownStateDir(state, "nosuchvm", owner); err != nil {
		t.Errorf("ownStateDir of a VM without a directory: %v", err)
	}
}

func TestSwitchCurrentMakesAMissingStateDirLikeTmpfiles(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (it gives files to another user, as the agent does)")
	}
	owner := stateOwner{uid: 4242, gid: 4343, set: true}
	state := filepath.Join(t.TempDir(), "var", "lib", "microvms")
	if err := prepareStateDir(state, "vm", "/nix/store/00000000000000000000000000000000-runner", owner); err != nil {
		t.Fatal(err)
	}
	// microvm.nix's tmpfiles line: d STATE 0775 microvm kvm.
	if uid, gid, mode := ownerOf(t, state); uid != owner.uid || gid != owner.gid || mode != 0o775 {
		t.Errorf("STATE made as %d:%d %v, want %d:%d 0775", uid, gid, mode, owner.uid, owner.gid)
	}
}

func TestSwitchCurrentWithoutTheUnitsUserKeepsTheAgentsOwnership(t *testing.T) {
	state := t.TempDir()
	out := "/nix/store/00000000000000000000000000000000-runner"
	// A backend whose system has no microvm user: `blixard dev`, the
	// process backend on a host without microvm.nix.
	b := &SystemdBackend{o: SystemdOptions{Root: writeUserDB(t, "root:x:0:0::/root:/bin/sh\n", "root:x:0:\n")}}
	if err := switchCurrent(b, state, "vm", out); err != nil {
		t.Fatal(err)
	}
	me := os.Geteuid()
	for _, p := range []string{filepath.Join(state, "vm"), filepath.Join(state, "vm", "current")} {
		if uid, _, _ := ownerOf(t, p); uid != me {
			t.Errorf("%s belongs to uid %d, want the agent's %d", p, uid, me)
		}
	}
	if _, err := os.Lstat(filepath.Join(state, "vm", "booted")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("switchCurrent wrote booted: %v", err)
	}
	// The process backend asks this host.
	pb := NewProcessBackend(ProcessOptions{StateDir: state, TermTimeout: time.Second})
	if err := switchCurrent(pb, state, "vm2", out); err != nil {
		t.Fatal(err)
	}
}
