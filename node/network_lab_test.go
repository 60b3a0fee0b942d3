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
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/node"
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

// newNetLab is the network lab of this file: the flake above with the
// plain runner beside it; nodes 1 and 2 offer two vCPUs, node 3 none (it
// runs no instance: its ingress reaches both over the overlay).
func newNetLab(t *testing.T) *lab {
	files := map[string][]byte{"flake.nix": []byte(labFlake())}
	for _, f := range []string{"runner.sh", "udhcpc.sh"} {
		b, err := os.ReadFile(filepath.Join("testdata", "netlab", f))
		if err != nil {
			t.Fatal(err)
		}
		files[f] = b
	}
	return newLab(t, labConfig{files: files, vcpu: func(i int) int {
		if i == 3 {
			return 0
		}
		return 2
	}})
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
	l := newNetLab(t)
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
	bothAnswer := func(what string) {
		t.Helper()
		answers := map[string]int{}
		testkit.WaitFor(t, time.Minute, what, func() error {
			body, err := ingressGet(l.net.Addr(3), "web.lab.test")
			if err != nil {
				return err
			}
			answers[body]++
			if answers["hello from web-0"] == 0 || answers["hello from web-1"] == 0 {
				return fmt.Errorf("answers so far %v", answers)
			}
			return nil
		})
	}
	bothAnswer("both replicas answering through node 3's ingress")

	// `blixard vm web-1` shows the identity and the DNS names.
	var vms []api.VMDetail
	if _, err := c.Get(ctx, "/v1/vms/web-1", &vms); err != nil {
		t.Fatal(err)
	}
	if len(vms) != 1 || vms[0].Address != addr["web-1"] || int(vms[0].Node) != where["web-1"] || !vms[0].Resolvable ||
		strings.Join(vms[0].DNSNames, ",") != "web-1.lab.internal,web.lab.internal" || vms[0].Tap == "" {
		t.Errorf("vm web-1: %+v", vms)
	}

	// `blixard vm stop web-1`: node 3's ingress keeps answering, from
	// web-0 alone; `blixard vm start web-1` brings it back.
	if _, err := c.SetVMRunState(ctx, "web-1", api.VMStop); err != nil {
		t.Fatalf("vm stop web-1: %v", err)
	}
	testkit.WaitFor(t, time.Minute, "web-1 stopped", func() error {
		st, err := l.api(3).Status(ctx)
		if err != nil {
			return err
		}
		for _, vm := range st.VMs {
			if vm.Name == "web-1" && vm.Phase != "stopped" {
				return fmt.Errorf("web-1: %s (%s)", vm.Phase, vm.Message)
			}
		}
		return nil
	})
	const series = 20
	for n := range series {
		body, err := ingressGet(l.net.Addr(3), "web.lab.test")
		if err != nil || body != "hello from web-0" {
			t.Fatalf("request %d of %d through node 3's ingress while web-1 is stopped: %q, %v; want web-0's answer", n+1, series, body, err)
		}
	}
	if _, err := c.SetVMRunState(ctx, "web-1", api.VMStart); err != nil {
		t.Fatalf("vm start web-1: %v", err)
	}
	bothAnswer("both replicas answering through node 3's ingress after vm start web-1")

	// A route of the host that overlaps the overlay is refused (nothing
	// changed) and is node 3's "network" problem in the cluster's status,
	// until it is gone.
	overlap := netip.MustParsePrefix("10.123.0.128/30") // in labCIDR, between the instances' and the nodes' addresses
	ipIn := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"-n", l.net.NS(3)}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v in node 3's namespace: %v: %s", args, err, out)
		}
	}
	problem := func() (string, error) {
		st, err := c.Status(ctx)
		if err != nil {
			return "", err
		}
		for _, n := range st.Nodes {
			if n.ID == 3 {
				return n.Problems["network"].Message, nil
			}
		}
		return "", fmt.Errorf("node 3 is not in the status")
	}
	ipIn("route", "add", overlap.String(), "dev", "lo")
	routeAdded := time.Now()
	testkit.WaitFor(t, time.Minute, "node 3's network problem in the status", func() error {
		p, err := problem()
		if err != nil {
			return err
		}
		if !strings.Contains(p, "route "+overlap.String()+" dev lo overlaps the overlay network") {
			return fmt.Errorf("node 3's network problem: %q", p)
		}
		return nil
	})
	t.Logf("a route overlapping the overlay on node 3 was in the status %v after it was added", time.Since(routeAdded).Round(time.Millisecond))
	ipIn("route", "del", overlap.String(), "dev", "lo")
	testkit.WaitFor(t, time.Minute, "node 3's network problem cleared", func() error {
		if p, err := problem(); err != nil || p != "" {
			return fmt.Errorf("node 3's network problem: %q, %v", p, err)
		}
		return nil
	})

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

// ingressGet fetches / for host through the HTTP ingress of the node at
// addr (port 8080) and returns the body, trimmed; a status other than 200
// is an error.
func ingressGet(addr, host string) (string, error) {
	req, err := http.NewRequest("GET", "http://"+addr+":8080/", nil)
	if err != nil {
		return "", err
	}
	req.Host = host
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("ingress %s for %s: %s: %s", addr, host, resp.Status, b)
	}
	return strings.TrimSpace(string(b)), nil
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
