// Package microvm is test support for the tests that run the demo's real
// qemu microVM (examples/demo/microvm.nix) under the process backend, under
// systemd and on a Ceph volume: checking its prerequisites, building its
// runner with the real nix, and talking to the guest's HTTP server.
//
// It needs nix (scripts/setup.sh) and qemu, socat, busybox-static, cpio and a
// Debian cloud kernel (scripts/setup-microvm.sh); Require fails a test that
// lacks them, it never skips.
package microvm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Setup hints for missing prerequisites.
const (
	SetupNix     = "run scripts/setup.sh (as root) to install nix"
	SetupMicrovm = "run scripts/setup-microvm.sh (as root) to install qemu, socat, busybox-static, cpio and the cloud kernel"
)

// NixConfig is appended to the caller's NIX_CONFIG for every nix run.
const NixConfig = "experimental-features = nix-command flakes\nsandbox = false\nsubstituters ="

// KernelDir is where scripts/setup-microvm.sh unpacks the guest kernel
// (BLIXARD_KERNEL_DIR overrides it).
func KernelDir() string {
	if d := os.Getenv("BLIXARD_KERNEL_DIR"); d != "" {
		return d
	}
	return "/var/cache/blixard/kernel"
}

// DemoDir is the absolute path of examples/demo.
func DemoDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "examples", "demo")
}

// NixEnv is the environment of nix runs: the project's settings appended
// to the caller's NIX_CONFIG.
func NixEnv() []string {
	cfg := NixConfig
	if v := os.Getenv("NIX_CONFIG"); v != "" {
		cfg = v + "\n" + NixConfig
	}
	return append(os.Environ(), "NIX_CONFIG="+cfg)
}

// Require fails the test when nix or something the demo's runners need is
// missing. The runners run with PATH=/usr/bin:/bin.
func Require(t testing.TB) {
	t.Helper()
	for _, p := range []string{"nix", "nix-store", "nix-instantiate"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("%s not found on PATH: %s", p, SetupNix)
		}
	}
	for _, f := range []string{"/usr/bin/qemu-system-x86_64", "/usr/bin/socat", "/usr/bin/cpio", "/bin/busybox",
		filepath.Join(KernelDir(), "vmlinuz"), filepath.Join(KernelDir(), "modules", "kernel")} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%s: %v: %s", f, err, SetupMicrovm)
		}
	}
}

// Runner is a built runner derivation.
type Runner struct {
	Drv, Out string
}

// Options are the arguments of the demo's `(import ./microvm.nix).runner`.
type Options struct {
	Name    string
	Port    int    // the guest's HTTP server is forwarded to 127.0.0.1:Port
	Version string // "" = the demo's default
	Volumes []string
	// GuestAgent is a static blixard-guest (GuestAgent builds one) the
	// initramfs runs as its identity agent; "": the shell's.
	GuestAgent string
}

// GuestAgent builds cmd/blixard-guest statically (the guest's libc is
// none) into a temporary directory and returns its path. The build is
// reproducible (-trimpath, no VCS stamp), so a runner built with it
// changes only when the agent's code does.
func GuestAgent(t testing.TB) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go toolchain is not on PATH: it builds the guest agent (cmd/blixard-guest): %v", err)
	}
	out := filepath.Join(t.TempDir(), "blixard-guest")
	cmd := exec.Command(gobin, "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w", "-o", out, "./cmd/blixard-guest")
	cmd.Dir = filepath.Join(DemoDir(), "..", "..")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the guest agent: %v\n%s", err, b)
	}
	return out
}

// Build instantiates and realises the demo's runner with the real nix.
func Build(t testing.TB, o Options) Runner {
	t.Helper()
	args := fmt.Sprintf("name = %q; port = %d; kernelDir = %q;", o.Name, o.Port, KernelDir())
	if o.Version != "" {
		args += fmt.Sprintf(" version = %q;", o.Version)
	}
	if o.GuestAgent != "" {
		// A path literal: nix copies the file into the store.
		args += fmt.Sprintf(" guestAgent = %s;", o.GuestAgent)
	}
	if len(o.Volumes) > 0 {
		vols := make([]string, len(o.Volumes))
		for i, v := range o.Volumes {
			vols[i] = strconv.Quote(v)
		}
		args += " volumes = [ " + strings.Join(vols, " ") + " ];"
	}
	expr := fmt.Sprintf(`(import %s).runner { %s }`, filepath.Join(DemoDir(), "microvm.nix"), args)
	drv := nix(t, "nix-instantiate", "-E", expr)
	return Runner{Drv: drv, Out: nix(t, "nix-store", "--realise", drv)}
}

func nix(t testing.TB, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = NixEnv()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s\n(if a host tool or the kernel is missing: %s)", bin, strings.Join(args, " "), err, stderr.String(), SetupMicrovm)
	}
	return strings.TrimSpace(string(out))
}

// FreePort returns a TCP port on 127.0.0.1 that nothing listens on.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Get fetches path from the guest's HTTP server on 127.0.0.1:port within
// timeout; a status other than 200 is an error (the body is still returned).
func Get(ctx context.Context, port int, path string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", port, path), nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: HTTP %s: %q", path, resp.Status, b)
	}
	return string(b), nil
}

// WaitHTTP polls the guest's / until it answers and returns the body; after
// timeout it fails the test, with hint (where to look) in the message.
func WaitHTTP(t testing.TB, port int, timeout time.Duration, hint string) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		body, err := Get(context.Background(), port, "/", time.Second)
		if err == nil {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest did not answer HTTP on 127.0.0.1:%d within %s: %v (%s)", port, timeout, err, hint)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
}
