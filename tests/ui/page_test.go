package ui

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/blixard/blixard/internal/testkit"
)

// blixardBin is the binary TestMain builds once.
var blixardBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "blixard-ui-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	blixardBin = filepath.Join(dir, "blixard")
	build := exec.Command("go", "build", "-o", blixardBin, "../../cmd/blixard")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building blixard:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// chromium finds Debian's chromium; the test fails (never skips) without it.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium not found: install Debian's chromium (`apt-get install chromium`, or run scripts/setup.sh as root)")
	return ""
}

// flake is a cluster flake whose VMs (name → tag) run a tiny /bin/sh
// runner that prints a line and sleeps.
func flake(vms map[string]string) string {
	var b strings.Builder
	for _, name := range []string{"web", "db", "cache"} {
		if tag, ok := vms[name]; ok {
			fmt.Fprintf(&b, "        %s = { runner = runner %q %q; vcpu = 1; memMiB = 256; };\n", name, name, tag)
		}
	}
	return `{
  outputs = { self }: let
    runner = name: tag: builtins.derivation {
      name = "microvm-${name}";
      system = "x86_64-linux";
      builder = "/bin/sh";
      args = [ "-c" "/bin/mkdir -p $out/bin && printf '#!/bin/sh\\necho booted ${name} ${tag}\\nexec /bin/sleep infinity\\n' > $out/bin/microvm-run && /bin/chmod +x $out/bin/microvm-run" ];
    };
  in {
    blixard = {
      cluster = "ui";
      vms = {
` + b.String() + `      };
    };
  };
}
`
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startDev runs `blixard dev` on dir and returns the status page's URL it
// prints; the process and its VMs are stopped when the test ends.
func startDev(t *testing.T, dir string) string {
	t.Helper()
	dataDir := t.TempDir()
	logPath := filepath.Join(dataDir, "dev.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(blixardBin, "dev", dir, "--data-dir", dataDir, "--api-addr", freeAddr(t),
		"--capacity-vcpu", "8", "--capacity-mem-mib", "4096", "--debounce", "100ms")
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	urls := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`status page: (http://\S+)`)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			fmt.Fprintln(logf, sc.Text())
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case urls <- m[1]:
				default:
				}
			}
		}
		done <- cmd.Wait()
		logf.Close()
	}()
	t.Cleanup(func() {
		// Ctrl-C: dev stops every VM it started, then exits.
		_ = cmd.Process.Signal(syscall.SIGINT)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("blixard dev exited with %v after SIGINT", err)
			}
		case <-time.After(60 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
			t.Errorf("blixard dev did not stop within 60s of SIGINT")
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("dev log:\n%s", b)
		}
	})
	select {
	case u := <-urls:
		return u
	case err := <-done:
		b, _ := os.ReadFile(logPath)
		t.Fatalf("blixard dev exited (%v) before printing the status page's URL:\n%s", err, b)
	case <-time.After(2 * time.Minute):
		t.Fatal("blixard dev printed no status page URL within 2 minutes")
	}
	return ""
}

// pageState is what the test reads from the rendered page.
type pageState struct {
	Revision string            `json:"revision"`
	Commit   string            `json:"commit"`
	Nodes    int               `json:"nodes"`
	VMs      map[string]string `json:"vms"` // instance → phase as shown
	Bars     int               `json:"bars"`
	Conn     string            `json:"conn"`
	Stamp    string            `json:"stamp"`
	History  int               `json:"history"`
	Events   int               `json:"events"`
}

const readPage = `(() => {
  const vms = {};
  for (const tr of document.querySelectorAll("#nodes tr[data-vm]")) vms[tr.dataset.vm] = tr.children[1].textContent;
  const rev = document.getElementById("revision");
  return {revision: rev.dataset.revision || "", commit: rev.dataset.commit || "",
    nodes: document.querySelectorAll("#nodes [data-node]").length, vms,
    bars: document.querySelectorAll("#nodes .bar").length, conn: document.getElementById("conn").textContent,
    stamp: String(window.uiTestStamp || ""), history: document.querySelectorAll("#history tr").length,
    events: document.querySelectorAll("#events tr").length};
})()`

func TestNixChromiumStatusPageFollowsTheCluster(t *testing.T) {
	if _, err := exec.LookPath("nix"); err != nil {
		t.Fatal("nix not found: run scripts/setup.sh")
	}
	exe := chromium(t)
	dir := t.TempDir() // not a git repository: dev evaluates the tree as it is
	flakePath := filepath.Join(dir, "flake.nix")
	if err := os.WriteFile(flakePath, []byte(flake(map[string]string{"web": "v1", "db": "v1"})), 0o644); err != nil {
		t.Fatal(err)
	}
	url := startDev(t, dir)
	if !strings.HasPrefix(url, "http://127.0.0.1:") || !strings.HasSuffix(url, "/ui/") {
		t.Fatalf("dev printed the status page as %q, want http://127.0.0.1:PORT/ui/", url)
	}

	// Headless chromium on loopback only; --no-sandbox because tests run
	// as root, which chromium's sandbox refuses. chromedp's own temporary
	// profile is removed, and its processes killed, on cancel.
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox,
		chromedp.Flag("proxy-server", "direct://"), chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	if _, err := chromedp.Run(bctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("loading %s in chromium: %v", url, err)
	}
	read := func() (pageState, error) {
		ctx, cancel := context.WithTimeout(bctx, 10*time.Second)
		defer cancel()
		return chromedp.Run(ctx, chromedp.Evaluate[pageState](readPage))
	}
	var before pageState
	testkit.WaitFor(t, 3*time.Minute, "the page to show the node and both VMs running", func() error {
		p, err := read()
		if err != nil {
			return err
		}
		if p.Revision == "" || p.Nodes != 1 || p.Bars != 2 || p.VMs["web"] != "running" || p.VMs["db"] != "running" || len(p.VMs) != 2 ||
			p.Conn != "live" || p.History < 1 || p.Events == 0 {
			return fmt.Errorf("page shows %+v", p)
		}
		before = p
		return nil
	})

	// Mark the document: a reload would lose the mark.
	if _, err := chromedp.Run(bctx, chromedp.Evaluate[string](`window.uiTestStamp = "kept"`)); err != nil {
		t.Fatal(err)
	}
	// A working-tree edit: web changes, cache is new.
	if err := os.WriteFile(flakePath, []byte(flake(map[string]string{"web": "v2", "db": "v1", "cache": "v1"})), 0o644); err != nil {
		t.Fatal(err)
	}
	testkit.WaitFor(t, 3*time.Minute, "the page to show the new revision and cache running, without a reload", func() error {
		p, err := read()
		if err != nil {
			return err
		}
		if p.Stamp != "kept" {
			return errors.New("the page was reloaded (its mark is gone)")
		}
		if p.Revision == before.Revision || p.Commit == before.Commit || p.VMs["cache"] != "running" || p.VMs["web"] != "running" || p.History < 2 {
			return fmt.Errorf("page shows %+v (before the edit: revision %s, commit %s)", p, before.Revision, before.Commit)
		}
		return nil
	})
	if stamp, err := chromedp.Run(bctx, chromedp.Evaluate[string](`String(window.uiTestStamp)`)); err != nil || stamp != "kept" {
		t.Errorf("the page was reloaded: mark %q, %v", stamp, err)
	}
}
