package nodeagent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/blixard/blixard/vmsnap"
)

func TestPlanSnapshotStart(t *testing.T) {
	id := netIdentity{MAC: "02:00:00:00:00:01", IP: "10.0.0.2"}
	other := netIdentity{MAC: "02:00:00:00:00:02", IP: "10.0.0.3"}
	ok := snapshotFacts{Supported: true, Qemu: "/usr/bin/qemu", HasHealth: true, Saved: id, Now: id, SavedKnown: true}
	with := func(f func(*snapshotFacts)) snapshotFacts { c := ok; f(&c); return c }
	for _, tc := range []struct {
		name   string
		facts  snapshotFacts
		mode   snapMode
		remove bool
	}{
		{"a snapshot of the same identity restores", ok, snapRestore, false},
		{"no user-mode identity on either side restores", with(func(f *snapshotFacts) { f.Saved, f.Now = netIdentity{}, netIdentity{} }), snapRestore, false},
		{"another identity boots and keeps the snapshot", with(func(f *snapshotFacts) { f.Now = other }), snapBoot, false},
		{"an unknown saved identity boots and drops the snapshot", with(func(f *snapshotFacts) { f.SavedKnown = false }), snapBoot, true},
		{"systemd backend boots", with(func(f *snapshotFacts) { f.Supported = false }), snapBoot, false},
		{"unknown qemu boots", with(func(f *snapshotFacts) { f.Qemu = "" }), snapBoot, false},
		{"no snapshot saves", with(func(f *snapshotFacts) { f.Open = fmt.Errorf("x: %w", vmsnap.ErrNotFound) }), snapSave, false},
		{"no snapshot and no health check boots", with(func(f *snapshotFacts) { f.Open = vmsnap.ErrNotFound; f.HasHealth = false }), snapBoot, false},
		{"a mismatched snapshot is dropped and saved again", with(func(f *snapshotFacts) { f.Open = fmt.Errorf("x: %w", vmsnap.ErrMismatch) }), snapSave, true},
		{"a corrupt snapshot is dropped and saved again", with(func(f *snapshotFacts) { f.Open = fmt.Errorf("x: %w", vmsnap.ErrCorrupt) }), snapSave, true},
		{"a corrupt snapshot without health check is dropped, boots", with(func(f *snapshotFacts) { f.Open = vmsnap.ErrCorrupt; f.HasHealth = false }), snapBoot, true},
		{"an unreadable store boots and keeps it", with(func(f *snapshotFacts) { f.Open = errors.New("permission denied") }), snapBoot, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := planSnapshotStart(tc.facts)
			if p.Mode != tc.mode || p.Remove != tc.remove || p.Why == "" {
				t.Errorf("plan %+v, want mode %s remove %v (and a why)", p, tc.mode, tc.remove)
			}
		})
	}
}

func TestDropAfterRestore(t *testing.T) {
	for err, want := range map[error]bool{
		fmt.Errorf("a: %w", vmsnap.ErrCorrupt):      true,
		fmt.Errorf("a: %w", vmsnap.ErrMismatch):     true,
		errors.New("qemu exited"):                   false,
		fmt.Errorf("a: %w", os.ErrDeadlineExceeded): false,
	} {
		if got := dropAfterRestore(err); got != want {
			t.Errorf("dropAfterRestore(%v) = %v, want %v", err, got, want)
		}
	}
}

func TestRunnerQemu(t *testing.T) {
	for _, tc := range []struct {
		name, script string
		want         []string
	}{
		{"demo: bare name in the script's PATH", "#!/bin/sh\nPATH=/usr/bin:/bin\nexport PATH\nexec qemu-system-x86_64 -name x \\\n -M microvm\n",
			[]string{"/usr/bin/qemu-system-x86_64", "/bin/qemu-system-x86_64"}},
		{"microvm.nix: an absolute store path", "#! /nix/store/x-bash/bin/bash -e\nPATH=/nix/store/y/bin\nexec /nix/store/abc-qemu-8/bin/qemu-system-aarch64 -name a\n",
			[]string{"/nix/store/abc-qemu-8/bin/qemu-system-aarch64"}},
		{"quoted", "exec '/q/bin/qemu-system-x86_64' -m 1\n", []string{"/q/bin/qemu-system-x86_64"}},
		{"exec of something else first", "exec 3>&1\nexec /q/bin/qemu-system-x86_64\n", []string{"/q/bin/qemu-system-x86_64"}},
		{"no qemu", "#!/bin/sh\nexec cloud-hypervisor --kernel k\n", nil},
		{"bare name without PATH", "exec qemu-system-x86_64\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := runnerQemu([]byte(tc.script)); !slices.Equal(got, tc.want) {
				t.Errorf("runnerQemu = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestFindRunnerQemuResolvesOnDisk(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "real", "qemu-system-x86_64")
	link := filepath.Join(dir, "b", "qemu-system-x86_64")
	for _, d := range []string{filepath.Dir(bin), filepath.Dir(link), filepath.Join(dir, "out", "bin"), filepath.Join(dir, "a")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(bin, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(bin, link); err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf("PATH=%s:%s\nexec qemu-system-x86_64 -m 1\n", filepath.Join(dir, "a"), filepath.Dir(link))
	if err := os.WriteFile(filepath.Join(dir, "out", "bin", "microvm-run"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	got, err := findRunnerQemu(filepath.Join(dir, "out"))
	if err != nil || got != bin {
		t.Fatalf("findRunnerQemu = %q, %v; want %q (the second PATH entry, link resolved)", got, err, bin)
	}
	if err := os.WriteFile(filepath.Join(dir, "out", "bin", "microvm-run"), []byte("exec qemu-system-x86_64\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := findRunnerQemu(filepath.Join(dir, "out")); err == nil {
		t.Fatal("a runner without a findable qemu: want an error")
	}
}

func TestParseNetIdentity(t *testing.T) {
	got := parseNetIdentity([]byte("BLIXARD_TAP=blxt1\nBLIXARD_MAC=02:AB:00:00:00:01\nBLIXARD_IP=10.1.0.5\nBLIXARD_PREFIX=24\n"))
	if want := (netIdentity{MAC: "02:ab:00:00:00:01", IP: "10.1.0.5"}); got != want {
		t.Errorf("parseNetIdentity = %+v, want %+v", got, want)
	}
	if got := parseNetIdentity(nil); got != (netIdentity{}) {
		t.Errorf("empty file: %+v", got)
	}
}
