package node_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/node"
	"github.com/blixard/blixard/tests/fault"
)

// The network lab: three real `blixard serve --network` processes, each in
// its own network namespace, joined by the routed underlay of tests/fault
// (10.77.X.N). The cluster flake declares web with two replicas (one per
// node: nodes 1 and 2 offer two vCPUs, node 3 none) and an ingress entry
// for web. Its runner (testdata/netlab/runner.sh) is a plain runner: it
// reads STATE/NAME/network.env, puts a veth named like the instance's tap
// in place of the tap (there is no hypervisor to open one), gets its
// address by DHCP from the node's dnsmasq inside a namespace of its own,
// and serves "hello from NAME" over HTTP.

const labCIDR = "10.123.0.0/24"

func labFlake() string {
	return `{
  outputs = { self }: let
    runner = builtins.derivation {
      name = "netlab-runner";
      system = "x86_64-linux";
      builder = "/bin/sh";
      run = builtins.readFile ./runner.sh;
      dhcp = builtins.readFile ./udhcpc.sh;
      args = [ "-c" "/bin/mkdir -p $out/bin && printf '%s' \"$run\" > $out/bin/microvm-run && printf '%s' \"$dhcp\" > $out/bin/udhcpc-script && /bin/chmod +x $out/bin/microvm-run $out/bin/udhcpc-script" ];
    };
  in {
    blixard = {
      cluster = "lab";
      network.cidr = "` + labCIDR + `";
      vms.web = { inherit runner; vcpu = 1; memMiB = 64; replicas = 2; placement.antiAffinity = [ "web" ]; };
      ingress.site = { host = "web.lab.test"; to = "web"; port = 80; };
    };
  };
}
`
}

// lab is one run of the network lab.
type lab struct {
	t    *testing.T
	net  *fault.Net
	root string // a directory everyone may search (dnsmasq rereads as nobody)
	bin  string
	repo string // file:// URL of the bare repository
	cmds map[int]*exec.Cmd
	done map[int]chan error
	mu   sync.Mutex
}

func (l *lab) dir(i int, sub string) string { return filepath.Join(l.root, fmt.Sprintf("n%d", i), sub) }

func (l *lab) api(i int) *api.Client {
	c, err := api.NewClient(l.net.Addr(i)+":7070", api.ClientOptions{Timeout: 10 * time.Second})
	if err != nil {
		l.t.Fatal(err)
	}
	return c
}

func requireLabTools(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the network lab needs root (network namespaces, netlink, nftables): run it as root")
	}
	for _, tool := range []string{"nix", "git", "ip", "sysctl", "dnsmasq", "busybox", "unshare", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: run scripts/setup.sh (Debian: iproute2 procps dnsmasq-base busybox util-linux)", tool)
		}
	}
}

func run(t testing.TB, dir string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=lab", "GIT_AUTHOR_EMAIL=lab@example.org",
		"GIT_COMMITTER_NAME=lab", "GIT_COMMITTER_EMAIL=lab@example.org")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func newLab(t *testing.T) *lab {
	requireLabTools(t)
	root, err := os.MkdirTemp("", "blixard-netlab-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	l := &lab{t: t, root: root, cmds: map[int]*exec.Cmd{}, done: map[int]chan error{}}
	t.Cleanup(func() {
		if t.Failed() {
			for i := 1; i <= 3; i++ {
				if b, err := os.ReadFile(filepath.Join(root, fmt.Sprintf("n%d.log", i))); err == nil {
					t.Logf("--- node %d log (tail) ---\n%s", i, tail(string(b), 60))
				}
			}
		}
		_ = os.RemoveAll(root)
	})
	l.bin = filepath.Join(root, "blixard")
	run(t, ".", "go", "build", "-o", l.bin, "../cmd/blixard")

	work, bare := filepath.Join(root, "work"), filepath.Join(root, "cluster.git")
	run(t, root, "git", "init", "-q", "--bare", "-b", "main", bare)
	run(t, root, "git", "init", "-q", "-b", "main", work)
	for _, f := range []string{"runner.sh", "udhcpc.sh"} {
		b, err := os.ReadFile(filepath.Join("testdata", "netlab", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(work, f), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(work, "flake.nix"), []byte(labFlake()), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, work, "git", "add", ".")
	run(t, work, "git", "commit", "-q", "-m", "network lab")
	run(t, work, "git", "push", "-q", bare, "HEAD:refs/heads/main")
	l.repo = "file://" + bare

	if l.net, err = fault.NewNet(3); err != nil {
		t.Fatalf("building the namespaces: %v", err)
	}
	// Registered after the namespaces: cleanups run last in, first out, so
	// the guests and nodes stop before their namespaces go.
	t.Cleanup(func() {
		if err := l.net.Teardown(); err != nil {
			t.Errorf("tearing the namespaces down: %v", err)
		}
	})
	t.Cleanup(l.killGuests)
	t.Cleanup(func() {
		for i := 1; i <= 3; i++ {
			l.stop(i)
		}
	})
	for i := 1; i <= 3; i++ {
		// The instances' outbound traffic is routed from the bridge to the
		// uplink: a host setting (NixOS: the module sets it).
		if out, err := l.net.Command(i, "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
			t.Fatalf("sysctl in node %d: %v: %s", i, err, out)
		}
	}
	return l
}

func tail(s string, lines int) string {
	ls := strings.Split(s, "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// start runs node i: nodes 1 and 2 offer two vCPUs, node 3 none (it runs
// no instance: its ingress reaches both over the overlay).
func (l *lab) start(i int) {
	var members []string
	for j := 1; j <= 3; j++ {
		members = append(members, fmt.Sprintf("%d=%s:7001", j, l.net.Addr(j)))
	}
	vcpu := "2"
	if i == 3 {
		vcpu = "0"
	}
	for _, d := range []string{"data", "state", "netdns"} {
		if err := os.MkdirAll(l.dir(i, d), 0o755); err != nil {
			l.t.Fatal(err)
		}
	}
	args := []string{"serve", "--node-id", strconv.Itoa(i), "--data-dir", l.dir(i, "data"),
		"--raft-addr", l.net.Addr(i) + ":7001", "--api-addr", l.net.Addr(i) + ":7070", "--members", strings.Join(members, ","),
		"--repo", l.repo, "--poll", "500ms", "--heartbeat", "500ms", "--node-timeout", "30s",
		"--capacity-vcpu", vcpu, "--capacity-mem-mib", "1024", "--state-dir", l.dir(i, "state"), "--backend", "process",
		"--insecure", "--insecure-i-know", "--log-level", "debug",
		"--network", "--dns-dir", l.dir(i, "netdns"), "--ingress-addr", l.net.Addr(i) + ":8080"}
	logf, err := os.OpenFile(filepath.Join(l.root, fmt.Sprintf("n%d.log", i)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		l.t.Fatal(err)
	}
	cmd := l.net.Command(i, l.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); logf.Close() }()
	l.mu.Lock()
	l.cmds[i], l.done[i] = cmd, done
	l.mu.Unlock()
}

// stop ends node i with SIGTERM (SIGKILL after 20 s) and waits for it.
func (l *lab) stop(i int) {
	l.mu.Lock()
	cmd, done := l.cmds[i], l.done[i]
	delete(l.cmds, i)
	l.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
		l.t.Errorf("node %d did not stop within 20 s of SIGTERM", i)
	}
}

// killGuests kills the runners' guest processes, which live in namespaces
// of their own (fault.Net's teardown finds only the nodes').
func (l *lab) killGuests() {
	files, _ := filepath.Glob(filepath.Join(l.root, "n*", "state", "*", "guest.pids"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, p := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(p); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
}

// guest runs a command in instance name's guest on node i.
func (l *lab) guest(i int, name string, args ...string) (string, error) {
	b, err := os.ReadFile(filepath.Join(l.dir(i, "state"), name, "guest.pids"))
	if err != nil {
		return "", err
	}
	pids := strings.Fields(string(b))
	if len(pids) < 2 {
		return "", fmt.Errorf("%s has no HTTP server yet (guest.pids %q)", name, b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", append([]string{"-t", pids[0], "-n", "-m"}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s: %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// lookup resolves name in instance's guest with the server of its
// resolv.conf, and returns the addresses, sorted.
func (l *lab) lookup(i int, instance, name string) ([]string, error) {
	out, err := l.guest(i, instance, "busybox", "nslookup", "-type=a", name)
	if err != nil {
		return nil, err
	}
	var addrs []string
	inAnswer := false
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && f[0] == "Name:":
			inAnswer = true
		case inAnswer && len(f) >= 2 && f[0] == "Address:":
			addrs = append(addrs, f[1])
		}
	}
	slices.SortFunc(addrs, func(a, b string) int { return netip.MustParseAddr(a).Compare(netip.MustParseAddr(b)) })
	return addrs, nil
}

// httpGet fetches http://hostPort/ from instance's guest and returns the
// body. (busybox nc, not wget: the static busybox's wget crashes in libc.)
func (l *lab) httpGet(i int, instance, hostPort string) (string, error) {
	host, port, err := net.SplitHostPort(hostPort)
	if err != nil {
		return "", err
	}
	out, err := l.guest(i, instance, "sh", "-c", `printf 'GET / HTTP/1.0\r\nHost: '"$1"'\r\n\r\n' | busybox nc -w 3 "$1" "$2"`, "sh", host, port)
	if err != nil {
		return "", err
	}
	head, body, ok := strings.Cut(out, "\r\n\r\n")
	if !ok || !strings.Contains(head, " 200 ") {
		return "", fmt.Errorf("GET http://%s/ from %s: %q", hostPort, instance, out)
	}
	return body, nil
}

// TestKernelNixDnsmasqNetworkAcrossNodes runs the network component for
// real: netlink bridges and VXLAN in three namespaces, dnsmasq, nftables,
// the ingress proxy, nix-built plain runners.
func TestKernelNixDnsmasqNetworkAcrossNodes(t *testing.T) {
	l := newLab(t)
	began := time.Now()
	for i := 1; i <= 3; i++ {
		l.start(i)
	}
	c := l.api(1)
	ctx := context.Background()

	// Both replicas run, on nodes 1 and 2, each with its committed address.
	where := map[string]int{}
	addr := map[string]netip.Addr{}
	testkit.WaitFor(t, 4*time.Minute, "web-0 and web-1 running with addresses", func() error {
		st, err := c.Status(ctx)
		if err != nil {
			return err
		}
		for _, vm := range st.VMs {
			if vm.Phase != "running" || !vm.Address.IsValid() {
				return fmt.Errorf("%s: %s, address %v (%s)", vm.Name, vm.Phase, vm.Address, vm.Message)
			}
			where[vm.Name], addr[vm.Name] = int(vm.Node), vm.Address
		}
		if len(st.VMs) != 2 {
			return fmt.Errorf("%d VMs, want 2 (unschedulable: %v)", len(st.VMs), st.Unschedulable)
		}
		return nil
	})
	t.Logf("both replicas running %v after the nodes started", time.Since(began).Round(time.Millisecond))
	if where["web-0"] == where["web-1"] || where["web-0"] == 3 || where["web-1"] == 3 {
		t.Fatalf("placement %v: want web-0 and web-1 on nodes 1 and 2", where)
	}
	cidr := netip.MustParsePrefix(labCIDR)
	for name, a := range addr {
		if !cidr.Contains(a) {
			t.Errorf("%s has address %s outside %s", name, a, cidr)
		}
	}

	// The identity reached the runner, and DHCP gave the guest the same
	// address.
	env, err := os.ReadFile(filepath.Join(l.dir(where["web-0"], "state"), "web-0", node.NetworkEnvFile))
	if err != nil || !strings.Contains(string(env), "BLIXARD_IP="+addr["web-0"].String()+"\n") ||
		!strings.Contains(string(env), "BLIXARD_GATEWAY=10.123.0.1\n") || !strings.Contains(string(env), "BLIXARD_DOMAIN=lab.internal\n") {
		t.Errorf("web-0's network.env: %v\n%s", err, env)
	}
	testkit.WaitFor(t, time.Minute, "web-0's guest configured by DHCP", func() error {
		out, err := l.guest(where["web-0"], "web-0", "ip", "-4", "-o", "addr", "show", "dev", "eth0")
		if err != nil {
			return err
		}
		if !strings.Contains(out, " "+addr["web-0"].String()+"/24 ") {
			return fmt.Errorf("eth0: %s", out)
		}
		return nil
	})

	// web-0 reaches web-1 on the other node by name: DNS from the gateway
	// (the node's dnsmasq, which DHCP named in the guest's resolv.conf),
	// HTTP across the VXLAN. (busybox's own resolver, not wget's: the
	// static busybox's libc lookup crashes.)
	testkit.WaitFor(t, time.Minute, "web-0 fetching http://web-1.lab.internal/", func() error {
		got, err := l.lookup(where["web-0"], "web-0", "web-1.lab.internal")
		if err != nil {
			return err
		}
		if len(got) != 1 || got[0] != addr["web-1"].String() {
			return fmt.Errorf("web-1.lab.internal is %v, want %s", got, addr["web-1"])
		}
		out, err := l.httpGet(where["web-0"], "web-0", got[0]+":80")
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "hello from web-1" {
			return fmt.Errorf("answer %q", out)
		}
		return nil
	})
	t.Logf("web-0 reached web-1 by name %v after the nodes started", time.Since(began).Round(time.Millisecond))
	// The declared VM's name gives both replicas.
	if got, err := l.lookup(where["web-1"], "web-1", "web.lab.internal"); err != nil || !slices.Equal(got, []string{addr["web-0"].String(), addr["web-1"].String()}) {
		t.Errorf("web.lab.internal: %v %v, want both replicas %s and %s", got, err, addr["web-0"], addr["web-1"])
	}

	// Outbound: the guest reaches a server outside the cluster network,
	// which sees the node's underlay address (masquerade).
	seen := make(chan string, 16)
	ln, err := net.Listen("tcp", l.net.HostAddr()+":0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		select {
		case seen <- host:
		default:
		}
		_, _ = io.WriteString(w, "outside\n")
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	out, err := l.httpGet(where["web-1"], "web-1", ln.Addr().String())
	if err != nil || strings.TrimSpace(out) != "outside" {
		t.Errorf("web-1 reaching %s: %v %q", ln.Addr(), err, out)
	} else if got := <-seen; got != l.net.Addr(where["web-1"]) {
		t.Errorf("the outside server saw %s, want node %d's address %s (masqueraded)", got, where["web-1"], l.net.Addr(where["web-1"]))
	}

	// Ingress on node 3, which runs no instance of web, reaches both
	// replicas over the overlay.
	answers := map[string]int{}
	testkit.WaitFor(t, time.Minute, "both replicas answering through node 3's ingress", func() error {
		req, err := http.NewRequest("GET", "http://"+l.net.Addr(3)+":8080/", nil)
		if err != nil {
			return err
		}
		req.Host = "web.lab.test"
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", resp.Status, b)
		}
		answers[strings.TrimSpace(string(b))]++
		if answers["hello from web-0"] == 0 || answers["hello from web-1"] == 0 {
			return fmt.Errorf("answers so far %v", answers)
		}
		return nil
	})

	// `blixard vm web-1` shows the identity and the DNS names.
	var vms []api.VMDetail
	if _, err := c.Get(ctx, "/v1/vms/web-1", &vms); err != nil {
		t.Fatal(err)
	}
	if len(vms) != 1 || vms[0].Address != addr["web-1"] || int(vms[0].Node) != where["web-1"] || !vms[0].Resolvable ||
		strings.Join(vms[0].DNSNames, ",") != "web-1.lab.internal,web.lab.internal" || vms[0].Tap == "" {
		t.Errorf("vm web-1: %+v", vms)
	}

	// A node that stops removes its masquerade (and leaves the bridge to
	// the VMs that keep running).
	i := where["web-1"]
	if !hasNATTable(t, l.net.NS(i)) {
		t.Errorf("node %d has no nft table ip %s while it runs", i, node.NATTable)
	}
	l.stop(i)
	if hasNATTable(t, l.net.NS(i)) {
		t.Errorf("node %d kept nft table ip %s after it stopped", i, node.NATTable)
	}
}

// hasNATTable reports whether the named network namespace has the node's
// nftables table.
func hasNATTable(t *testing.T, ns string) bool {
	t.Helper()
	f, err := os.Open(filepath.Join("/run/netns", ns))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatalf("listing nft tables in %s: %v", ns, err)
	}
	for _, tb := range tables {
		if tb.Name == node.NATTable {
			return true
		}
	}
	return false
}
