package node_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/stats"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/nodeagent"
	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/tests/microvm"
)

// The qemu lab: the network lab's three `blixard serve --network` nodes
// (lab_helpers_test.go) running the demo's real qemu microVMs
// (examples/demo): each guest's one NIC is on its instance's tap, it gets
// its address by DHCP from its node's dnsmasq and resolves the others'
// names there. The cluster flake is testdata/netqemu/flake.nix; the demo's
// files are copied beside it into the lab's repository, with a
// settings.nix the test rewrites to remove and add VMs.

const qlabCIDR = "10.124.0.0/24"

// qlabFiles are the files of a commit of the qemu lab's repository that
// declares vms (names of testdata/netqemu/flake.nix's VMs).
func qlabFiles(t *testing.T, vms ...string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{"settings.nix": qlabSettings(vms...)}
	read := func(name, path string) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		files[name] = b
	}
	read("flake.nix", filepath.Join("testdata", "netqemu", "flake.nix"))
	for _, f := range []string{"microvm.nix", "build-runner.sh", "guest-init.sh"} {
		read(f, filepath.Join(microvm.DemoDir(), f))
	}
	return files
}

// qlabSettings is settings.nix: the kernel the runners copy (the one
// scripts/setup-microvm.sh unpacked) and the VMs the commit declares.
func qlabSettings(vms ...string) []byte {
	quoted := make([]string, len(vms))
	for i, v := range vms {
		quoted[i] = strconv.Quote(v)
	}
	return fmt.Appendf(nil, "{ kernelDir = %s; vms = [ %s ]; }\n", strconv.Quote(microvm.KernelDir()), strings.Join(quoted, " "))
}

// nsClient is an HTTP client whose connections start inside the named
// network namespace (a node's: it reaches the instances' addresses there).
// A socket belongs to the namespace of the thread that creates it, so each
// dial runs on a goroutine locked to its thread, which enters ns for the
// dial and goes back to its own namespace before it is unlocked. (Leaving
// the thread in ns for Go to discard is not enough: the process's main
// thread is never discarded, and with it in a node's namespace the lab's
// teardown, which kills every process of that namespace, kills the test.)
// One connection per request, as busybox httpd closes every connection
// anyway, so every path measured pays the same. timeout bounds a request.
func nsClient(ns string, timeout time.Duration) *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			own, err := netns.Get()
			if err != nil {
				runtime.UnlockOSThread()
				ch <- result{err: fmt.Errorf("this thread's network namespace: %w", err)}
				return
			}
			defer own.Close()
			h, err := netns.GetFromName(ns)
			if err != nil {
				runtime.UnlockOSThread()
				ch <- result{err: fmt.Errorf("network namespace %s: %w", ns, err)}
				return
			}
			defer h.Close()
			if err := netns.Set(h); err != nil {
				runtime.UnlockOSThread() // setns failed: the thread is where it was
				ch <- result{err: fmt.Errorf("entering network namespace %s: %w", ns, err)}
				return
			}
			// net/http dials on after the request gave up (the
			// connection may serve a later one): without a timeout a
			// SYN to a guest still booting would hold this thread in ns
			// for the kernel's two minutes of retransmissions.
			c, err := (&net.Dialer{Timeout: timeout}).DialContext(ctx, network, addr)
			if netns.Set(own) == nil {
				runtime.UnlockOSThread()
			} // else still locked: Go discards the thread with the goroutine
			ch <- result{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
}

// get fetches url with c (Host header host, when not empty) and returns
// the body; a status other than 200 is an error that carries the body.
func get(c *http.Client, url, host string) (string, error) {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return "", err
	}
	if host != "" {
		req.Host = host
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("GET %s: reading the body: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(b)))
	}
	return string(b), nil
}

// fetchFrom asks the guest at addr (reached from client's namespace) to
// fetch http://target/ through its /cgi-bin/fetch and returns the address
// the guest resolved target to and the body it got.
func fetchFrom(client *http.Client, addr netip.Addr, target string) (resolved, body string, err error) {
	out, err := get(client, "http://"+addr.String()+"/cgi-bin/fetch?"+target, "")
	if err != nil {
		return "", "", err
	}
	first, body, _ := strings.Cut(out, "\n")
	host, _, _ := strings.Cut(target, "/")
	resolved, ok := strings.CutPrefix(first, host+" is ")
	if !ok {
		return "", "", fmt.Errorf("fetch?%s answered %q, want %q first", target, out, host+" is ADDRESS")
	}
	return resolved, strings.TrimSpace(body), nil
}

// TestKernelNixQemuGuestsAcrossNodes runs real qemu guests on the cluster
// network of three real nodes: guest front fetches from guest back by DNS
// name across the VXLAN; draining back's node moves back to the empty node
// 3 with the same address, where front reaches it again; removing back
// from the flake frees its address for the next instance. It also measures
// what node 3's ingress adds to a request to back (logged, not asserted).
func TestKernelNixQemuGuestsAcrossNodes(t *testing.T) {
	microvm.Require(t)
	l := newLab(t, labConfig{
		files: qlabFiles(t, "front", "back"),
		vcpu:  func(int) int { return 2 },
		// The runners' builds read host files (qemu, the kernel): no sandbox.
		env: []string{"NIX_CONFIG=" + strings.TrimPrefix(os.Getenv("NIX_CONFIG")+"\n", "\n") + microvm.NixConfig},
	})
	began := time.Now()
	for i := 1; i <= 3; i++ {
		l.start(i)
	}
	c := l.api(1)
	ctx := context.Background()

	// front and back run on nodes 1 and 2 (anti-affinity, lowest ids
	// first), each with its committed address; node 3 runs nothing.
	where := map[string]int{}
	addr := map[string]netip.Addr{}
	testkit.WaitFor(t, 5*time.Minute, "front and back running with addresses", func() error {
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
	t.Logf("front and back running %v after the nodes started", time.Since(began).Round(time.Millisecond))
	if where["front"] == where["back"] || where["front"] == 3 || where["back"] == 3 {
		t.Fatalf("placement %v: want front and back on nodes 1 and 2", where)
	}
	cidr := netip.MustParsePrefix(qlabCIDR)
	for name, a := range addr {
		if !cidr.Contains(a) {
			t.Errorf("%s has address %s outside %s", name, a, cidr)
		}
	}

	// Each guest booted on its tap and got its committed address by DHCP,
	// and its hostname (the console's READY line says so).
	for _, name := range []string{"front", "back"} {
		waitReady(t, l, where[name], name, addr[name])
	}
	t.Logf("both guests configured by DHCP %v after the nodes started", time.Since(began).Round(time.Millisecond))

	// Health through the real network: each node probes its guest at the
	// guest's cluster address over the tap. front's page answers; back's
	// check asks for a page the guest does not have.
	testkit.WaitFor(t, 2*time.Minute, "front healthy and back unhealthy (404)", func() error {
		st, err := c.Status(ctx)
		if err != nil {
			return err
		}
		got := map[string]api.VMView{}
		for _, vm := range st.VMs {
			got[vm.Name] = vm
		}
		if f := got["front"]; f.Health != replicated.Healthy {
			return fmt.Errorf("front: health %q (%s)", f.Health, f.HealthError)
		}
		if b := got["back"]; b.Health != replicated.Unhealthy || !strings.Contains(b.HealthError, "404") {
			return fmt.Errorf("back: health %q, error %q; want unhealthy with a 404", b.Health, b.HealthError)
		}
		return nil
	})

	// front fetches from back by name: the DNS server DHCP gave it is its
	// node's dnsmasq; the packets cross the VXLAN to back's node.
	front := nsClient(l.net.NS(where["front"]), 30*time.Second)
	testkit.WaitFor(t, 2*time.Minute, "front fetching http://back.qlab.internal/", func() error {
		resolved, body, err := fetchFrom(front, addr["front"], "back.qlab.internal")
		if err != nil {
			return err
		}
		if resolved != addr["back"].String() || !strings.HasPrefix(body, "hello from back, version 1") {
			return fmt.Errorf("back.qlab.internal is %s (want %s), answer %q", resolved, addr["back"], body)
		}
		return nil
	})
	t.Logf("front reached back by name %v after the nodes started", time.Since(began).Round(time.Millisecond))
	// Names outside the cluster's fail with what went wrong.
	if _, _, err := fetchFrom(front, addr["front"], "nothing.qlab.internal"); err == nil || !strings.Contains(err.Error(), "cannot resolve nothing.qlab.internal") {
		t.Errorf("fetching an unknown name: %v, want \"cannot resolve\"", err)
	}

	var vms []api.VMDetail
	if _, err := c.Get(ctx, "/v1/vms/back", &vms); err != nil {
		t.Fatal(err)
	}
	if len(vms) != 1 || vms[0].Hostname != "back" || vms[0].Tap == "" || !slices.Contains(vms[0].DNSNames, "back.qlab.internal") ||
		!slices.ContainsFunc(vms[0].Ingress, func(e string) bool { return strings.HasPrefix(e, "back: back.qlab.test") }) {
		t.Fatalf("vm back: %+v", vms)
	}
	backTap := vms[0].Tap

	measureIngress(t, l, where["back"], addr["back"])

	// Drain back's node: back moves to node 3, keeps its address, and
	// front reaches the new copy (a new boot id) by name again.
	_, oldBoot, err := fetchFrom(front, addr["front"], "back.qlab.internal/boot-id")
	if err != nil || oldBoot == "" {
		t.Fatalf("back's boot id: %q %v", oldBoot, err)
	}
	from := where["back"]
	moved := time.Now()
	if _, err := c.SetNodeState(ctx, uint64(from), replicated.NodeDraining); err != nil {
		t.Fatalf("node drain %d: %v", from, err)
	}
	// Milestones of the move, for the log: node 3 reports back running
	// (its qemu started), and back's new copy answers HTTP on node 3.
	runningOn3 := watchRunning(t, c, "back", 3, moved)
	var answersOn3 time.Duration
	on3 := nsClient(l.net.NS(3), 300*time.Millisecond)
	testkit.WaitFor(t, 3*time.Minute, "front reaching the moved back", func() error {
		if answersOn3 == 0 {
			// Directly first, with a short timeout: front's wget would wait
			// out TCP's SYN retransmissions (1 s, 2 s, …) to the guest
			// while it boots. Until the new copy answers, the address
			// leads to the old one (the old boot id) or nowhere.
			boot, err := get(on3, "http://"+addr["back"].String()+"/boot-id", "")
			if err != nil {
				return fmt.Errorf("back's new copy does not answer on node 3 yet: %w", err)
			}
			if strings.TrimSpace(boot) == oldBoot {
				return errors.New("the old copy still answers")
			}
			answersOn3 = time.Since(moved)
		}
		resolved, boot, err := fetchFrom(front, addr["front"], "back.qlab.internal/boot-id")
		if err != nil {
			return err
		}
		if resolved != addr["back"].String() {
			return fmt.Errorf("back.qlab.internal is %s, want its committed address %s", resolved, addr["back"])
		}
		if boot == oldBoot {
			return errors.New("front reaches the old copy")
		}
		return nil
	})
	reachable := time.Since(moved)
	t.Logf("move → reachable: %s (from the drain of node %d until front fetched from back's new copy by name; "+
		"node 3 reported back running after %s, its guest answered HTTP after %s)", reachable.Round(time.Millisecond), from,
		runningOn3().Round(time.Millisecond), answersOn3.Round(time.Millisecond))
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range st.VMs {
		if vm.Name == "back" && (vm.Node != 3 || vm.Address != addr["back"] || vm.Phase != "running") {
			t.Errorf("back after the move: node %d, address %s, %s; want node 3, %s, running", vm.Node, vm.Address, vm.Phase, addr["back"])
		}
	}
	waitReady(t, l, 3, "back", addr["back"])
	// The old node gave the tap up once the old copy stopped.
	testkit.WaitFor(t, time.Minute, "back's tap gone from node "+strconv.Itoa(from), func() error {
		if out, err := l.net.Command(from, "ip", "link", "show", backTap).CombinedOutput(); err == nil {
			return fmt.Errorf("node %d still has %s", from, out)
		}
		return nil
	})

	// A push without back: it stops, and its address is no longer held.
	commit := l.push(map[string][]byte{"settings.nix": qlabSettings("front")}, "remove back")
	l.waitRevision(1, commit, 2*time.Minute)
	s, err := c.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.Network == nil {
		t.Fatal("the state after the removal has no network")
	}
	if id, ok := s.Network.Identities["back"]; ok {
		t.Errorf("back still has identity %+v after the plan that removed it", id)
	}
	for name, id := range s.Network.Identities {
		if id.Address == addr["back"] {
			t.Errorf("%s holds back's address %s", name, id.Address)
		}
	}
	var apiErr *api.Error
	if _, err := c.Get(ctx, "/v1/vms/back", &vms); !errors.As(err, &apiErr) || apiErr.Code != http.StatusNotFound {
		t.Errorf("GET /v1/vms/back after its removal: %v, want 404", err)
	}
	backDir := filepath.Join(l.dir(3, "state"), "back")
	testkit.WaitFor(t, time.Minute, "back's qemu gone from node 3", func() error {
		if _, err := os.Stat(filepath.Join(backDir, "qemu.pid")); err == nil {
			return errors.New("qemu.pid is still there")
		}
		return fileHas(nodeagent.LogPath(l.dir(3, "state"), "back"), "microvm[back]: power button pressed; powering off")
	})
	testkit.WaitFor(t, time.Minute, "back.qlab.internal unknown to front", func() error {
		_, _, err := fetchFrom(front, addr["front"], "back.qlab.internal")
		if err == nil || !strings.Contains(err.Error(), "cannot resolve back.qlab.internal") {
			return fmt.Errorf("fetch: %v", err)
		}
		return nil
	})

	// The next new instance gets the freed address (the lowest free one)
	// once node 3 reported back stopped (until then it is retiring: no
	// other instance gets it).
	testkit.WaitFor(t, time.Minute, "node 3 reports back stopped", func() error {
		s, err := c.State(ctx)
		if err != nil {
			return err
		}
		if obs, ok := s.Observed["back"]; ok && obs.Phase != replicated.PhaseStopped && obs.Phase != replicated.PhaseFailed {
			return fmt.Errorf("back: %s", obs.Phase)
		}
		return nil
	})
	commit = l.push(map[string][]byte{"settings.nix": qlabSettings("front", "spare")}, "add spare")
	l.waitRevision(1, commit, 2*time.Minute)
	if s, err = c.State(ctx); err != nil {
		t.Fatal(err)
	}
	if s.Network == nil {
		t.Fatal("the state after adding spare has no network")
	}
	if got := s.Network.Identities["spare"].Address; got != addr["back"] {
		t.Errorf("spare got address %v, want back's freed %s", got, addr["back"])
	}
}

// watchRunning polls c's status (every 50 ms) until instance name is
// reported running on node, and returns a function that stops the watch
// and answers how long after since that was seen (0: not seen). The watch
// stops when the test ends at the latest.
func watchRunning(t *testing.T, c *api.Client, name string, node uint64, since time.Time) func() time.Duration {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan time.Duration, 1)
	go func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				done <- 0
				return
			case <-tick.C:
			}
			st, err := c.Status(ctx)
			if err != nil {
				continue
			}
			for _, vm := range st.VMs {
				if vm.Name == name && vm.Node == node && vm.Phase == replicated.PhaseRunning {
					done <- time.Since(since)
					return
				}
			}
		}
	}()
	stop := sync.OnceValue(func() time.Duration {
		cancel()
		return <-done
	})
	t.Cleanup(func() { stop() })
	return stop
}

// waitReady waits for instance name's READY line on node i's console: it
// booted with address a (by DHCP) and its hostname.
func waitReady(t *testing.T, l *lab, i int, name string, a netip.Addr) {
	t.Helper()
	console := nodeagent.LogPath(l.dir(i, "state"), name)
	want := fmt.Sprintf("microvm[%s]: READY name=%s version=1 http=%s:80 hostname=%s", name, name, a, name)
	testkit.WaitFor(t, 2*time.Minute, name+"'s guest ready on node "+strconv.Itoa(i), func() error {
		return fileHas(console, want)
	})
}

func fileHas(path, s string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !strings.Contains(string(b), s) {
		return fmt.Errorf("%s has no %q (tail: %s)", path, s, tail(string(b), 5))
	}
	return nil
}

// ingressRequests is how many requests measureIngress sends on each path.
const ingressRequests = 200

// measureIngress logs the latency of GET / on the guest at a (running on
// node i) three ways, interleaved so that the load of the machine weighs
// on all alike: directly from node i's namespace; from node 3's namespace
// over the VXLAN; and through node 3's ingress proxy from node 3's
// namespace (the overlay hop plus the proxy). Only logged: a number for
// docs/benchmarks.md, never an assertion.
func measureIngress(t *testing.T, l *lab, i int, a netip.Addr) {
	t.Helper()
	direct, remote := nsClient(l.net.NS(i), 30*time.Second), nsClient(l.net.NS(3), 30*time.Second)
	ingressURL := "http://" + l.net.Addr(3) + ":8080/"
	testkit.WaitFor(t, time.Minute, "back answering through node 3's ingress", func() error {
		_, err := get(remote, ingressURL, "back.qlab.test")
		return err
	})
	paths := []struct {
		name string
		do   func() (string, error)
		took []time.Duration
	}{
		{name: fmt.Sprintf("direct from node %d", i), do: func() (string, error) { return get(direct, "http://"+a.String()+"/", "") }},
		{name: "node 3 over the VXLAN", do: func() (string, error) { return get(remote, "http://"+a.String()+"/", "") }},
		{name: "node 3's ingress", do: func() (string, error) { return get(remote, ingressURL, "back.qlab.test") }},
	}
	for n := 0; n < ingressRequests; n++ {
		for k := range paths {
			p := &paths[k]
			start := time.Now()
			body, err := p.do()
			took := time.Since(start)
			if err != nil || !strings.HasPrefix(body, "hello from back") {
				t.Fatalf("request %d %s: %q %v", n, p.name, body, err)
			}
			p.took = append(p.took, took)
		}
	}
	for k := range paths {
		slices.Sort(paths[k].took)
	}
	for _, p := range paths {
		t.Logf("GET / of back, %s: p50 %v p99 %v (%d requests)", p.name,
			stats.Quantile(p.took, 0.50).Round(time.Microsecond), stats.Quantile(p.took, 0.99).Round(time.Microsecond), len(p.took))
	}
	d, g := paths[0].took, paths[2].took
	t.Logf("ingress added latency (node 3's ingress − direct): p50 %v p99 %v",
		(stats.Quantile(g, 0.50) - stats.Quantile(d, 0.50)).Round(time.Microsecond), (stats.Quantile(g, 0.99) - stats.Quantile(d, 0.99)).Round(time.Microsecond))
}
