package nodeagent

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/vmsnap"
)

func TestPlanSnapshotStart(t *testing.T) {
	ok := snapshotFacts{Supported: true, Qemu: "/usr/bin/qemu", HasHealth: true, Frozen: vmsnap.IdentityProtocol}
	with := func(f func(*snapshotFacts)) snapshotFacts { c := ok; f(&c); return c }
	for _, tc := range []struct {
		name   string
		facts  snapshotFacts
		mode   snapMode
		remove bool
	}{
		// Any instance restores: each copy takes its own identity.
		{"a snapshot of a frozen guest restores", ok, snapRestore, false},
		{"a snapshot of an unfrozen guest is replaced", with(func(f *snapshotFacts) { f.Frozen = "" }), snapSave, true},
		{"a snapshot of another identity protocol is replaced", with(func(f *snapshotFacts) { f.Frozen = "blixard.identity/0" }), snapSave, true},
		{"an unfrozen snapshot without health check is dropped, boots", with(func(f *snapshotFacts) { f.Frozen = ""; f.HasHealth = false }), snapBoot, true},
		{"an identity that cannot be given boots and keeps the snapshot", with(func(f *snapshotFacts) { f.Identity = errors.New("bad MAC") }), snapBoot, false},
		{"systemd backend boots", with(func(f *snapshotFacts) { f.Supported = false }), snapBoot, false},
		{"unknown qemu boots", with(func(f *snapshotFacts) { f.Qemu = "" }), snapBoot, false},
		{"no snapshot saves", with(func(f *snapshotFacts) { f.Open = fmt.Errorf("x: %w", vmsnap.ErrNotFound); f.Frozen = "" }), snapSave, false},
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

func TestParseNetEnv(t *testing.T) {
	full := "BLIXARD_TAP=blxt1\nBLIXARD_MAC=02:AB:00:00:00:01\nBLIXARD_IP=10.1.0.5\nBLIXARD_PREFIX=24\nBLIXARD_GATEWAY=10.1.0.1\n" +
		"BLIXARD_DNS=10.1.0.1\nBLIXARD_HOSTNAME=fn-a-1\nBLIXARD_DOMAIN=c.internal\nBLIXARD_MTU=1450\n"
	for _, tc := range []struct {
		name, in string
		want     netEnv
		wantErr  string
	}{
		{"every key", full, netEnv{Tap: "blxt1", MAC: "02:ab:00:00:00:01", Hostname: "fn-a-1", Domain: "c.internal", IP: netip.MustParseAddr("10.1.0.5"),
			Gateway: netip.MustParseAddr("10.1.0.1"), DNS: netip.MustParseAddr("10.1.0.1"), Prefix: 24, MTU: 1450}, ""},
		{"no file content", "", netEnv{}, ""},
		{"empty values are absent (MTU not known yet)", "BLIXARD_MTU=\nBLIXARD_MAC='02:00:00:00:00:09'\n", netEnv{MAC: "02:00:00:00:00:09"}, ""},
		{"a bad address", "BLIXARD_IP=10.1.0\n", netEnv{}, "BLIXARD_IP"},
		{"a bad MTU", "BLIXARD_MTU=big\n", netEnv{}, "BLIXARD_MTU"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseNetEnv([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseNetEnv: %v, want an error naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("parseNetEnv = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestRestoredIdentity(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	seed := [32]byte{1, 2, 3}
	full := netEnv{MAC: "02:ab:00:00:00:01", Hostname: "fn-a-1", Domain: "c.internal", IP: netip.MustParseAddr("10.1.0.5"),
		Gateway: netip.MustParseAddr("10.1.0.1"), DNS: netip.MustParseAddr("10.1.0.1"), Prefix: 24, MTU: 1450}
	with := func(f func(*netEnv)) netEnv { e := full; f(&e); return e }
	for _, tc := range []struct {
		name     string
		env      netEnv
		wantLine string
		wantAddr string
		wantErr  string
	}{
		{"cluster network: MAC, host and the address with its settings", full,
			"ident mac=02:ab:00:00:00:01 host=fn-a-1 time=1767323045 seed=0102030000000000000000000000000000000000000000000000000000000000 ip=10.1.0.5/24 gw=10.1.0.1 dns=10.1.0.1 domain=c.internal mtu=1450",
			"10.1.0.5", ""},
		{"user-mode network: keep the NIC, clock and seed only", netEnv{},
			"ident mac=- host=- time=1767323045 seed=0102030000000000000000000000000000000000000000000000000000000000", "", ""},
		{"MTU not known yet", with(func(e *netEnv) { e.MTU = 0 }),
			"ident mac=02:ab:00:00:00:01 host=fn-a-1 time=1767323045 seed=0102030000000000000000000000000000000000000000000000000000000000 ip=10.1.0.5/24 gw=10.1.0.1 dns=10.1.0.1 domain=c.internal",
			"10.1.0.5", ""},
		{"an address without a prefix", with(func(e *netEnv) { e.Prefix = 0 }), "", "", "BLIXARD_PREFIX"},
		{"an address without a MAC", with(func(e *netEnv) { e.MAC = "" }), "", "", "BLIXARD_MAC"},
		{"a MAC that is not one", with(func(e *netEnv) { e.MAC = "02:ab" }), "", "", "MAC"},
		{"a hostname that is not a label", with(func(e *netEnv) { e.Hostname = "a b" }), "", "", "hostname"},
		{"an IPv6 address", with(func(e *netEnv) { e.IP = netip.MustParseAddr("fd00::5") }), "", "", "IPv4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, addr, err := restoredIdentity(tc.env, now, seed)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("restoredIdentity: %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			line, err := id.Command()
			if err != nil || line != tc.wantLine {
				t.Errorf("command %q, %v\nwant    %q", line, err, tc.wantLine)
			}
			if got := addr.String(); (tc.wantAddr == "" && addr.IsValid()) || (tc.wantAddr != "" && got != tc.wantAddr) {
				t.Errorf("address to check %s, want %q", addr, tc.wantAddr)
			}
		})
	}
}
