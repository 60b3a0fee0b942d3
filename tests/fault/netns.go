package fault

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// OwnerDir holds one file per subnet in use (10.77.X.0/24: the file X names
// the owning process and its start time) and the lock taken while one is
// picked, so concurrent runs get different subnets and a run that died
// (kill -9 of `go test`) is cleaned up by the next one.
const OwnerDir = "/run/blixard-fault"

// Net is the network of one run: a namespace per node, routed through a
// hub namespace, reachable from the root namespace at [Net.HostAddr].
//
//	root ns: bxfX-root 10.77.X.254/24 ──veth── hub ns: "host"  (proxy ARP, forwarding)
//	node N ns: eth0 10.77.X.N/24      ──veth── hub ns: "nN"    (/32 route; blackhole rules)
//
// Every node has permanent neighbour entries pointing at the hub, so a
// partition drops packets silently (the hub's blackhole rules) instead of
// failing ARP.
type Net struct {
	Octet int // the third octet of 10.77.X.0/24
	Nodes int

	mu      sync.Mutex
	blocked map[[2]int]bool // guarded by mu: from → to pairs dropped in the hub
}

// NewNet picks a free subnet, removes what a dead earlier run left on it
// and builds the network for nodes nodes.
func NewNet(nodes int) (*Net, error) {
	if nodes < 1 || nodes > 250 {
		return nil, fmt.Errorf("%d nodes: want 1–250", nodes)
	}
	for _, tool := range []string{"ip", "sysctl"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found: install iproute2 and procps (apt-get install -y iproute2 procps)", tool)
		}
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("network namespaces need root: run the fault tests as root")
	}
	if err := os.MkdirAll(OwnerDir, 0o755); err != nil {
		return nil, err
	}
	lock, err := os.OpenFile(filepath.Join(OwnerDir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return nil, err
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	for octet := 0; octet < 255; octet++ {
		owner := filepath.Join(OwnerDir, strconv.Itoa(octet))
		if b, err := os.ReadFile(owner); err == nil {
			if ownerAlive(string(b)) {
				continue
			}
			stale := &Net{Octet: octet}
			if err := stale.Teardown(); err != nil {
				return nil, fmt.Errorf("removing the network a dead run left on 10.77.%d.0/24: %w", octet, err)
			}
		}
		if out, _ := exec.Command("ip", "-4", "route", "show", "to", "match", fmt.Sprintf("10.77.%d.1", octet)).Output(); strings.Contains(string(out), fmt.Sprintf("10.77.%d.", octet)) {
			continue // someone else routes this subnet
		}
		if err := os.WriteFile(owner, []byte(selfIdentity()), 0o644); err != nil {
			return nil, err
		}
		n := &Net{Octet: octet, Nodes: nodes, blocked: map[[2]int]bool{}}
		if err := n.setup(); err != nil {
			_ = n.Teardown()
			return nil, err
		}
		return n, nil
	}
	return nil, fmt.Errorf("no free subnet in 10.77.0.0/16 (see %s)", OwnerDir)
}

func (n *Net) prefix() string { return fmt.Sprintf("bxf%d-", n.Octet) }

// NS is node i's namespace (i from 1).
func (n *Net) NS(i int) string { return fmt.Sprintf("%sn%d", n.prefix(), i) }

func (n *Net) hub() string { return n.prefix() + "hub" }

// Addr is node i's address.
func (n *Net) Addr(i int) string { return fmt.Sprintf("10.77.%d.%d", n.Octet, i) }

// HostAddr is the root namespace's address on the network.
func (n *Net) HostAddr() string { return fmt.Sprintf("10.77.%d.254", n.Octet) }

// hubMAC is the MAC of the hub's end of node i's veth (i = 254: the root's).
func (n *Net) hubMAC(i int) string { return fmt.Sprintf("02:77:%02x:00:01:%02x", n.Octet, i) }

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (n *Net) sysctl(ns string, settings ...string) error {
	args := append([]string{"netns", "exec", ns, "sysctl", "-qw"}, settings...)
	return ipCmd(args...)
}

func (n *Net) setup() error {
	hub := n.hub()
	steps := [][]string{
		{"netns", "add", hub},
		{"-n", hub, "link", "set", "lo", "up"},
		{"-n", hub, "addr", "add", fmt.Sprintf("10.77.%d.253/32", n.Octet), "dev", "lo"},
	}
	for _, s := range steps {
		if err := ipCmd(s...); err != nil {
			return err
		}
	}
	if err := n.sysctl(hub, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
		"net.ipv4.conf.all.send_redirects=0"); err != nil {
		return err
	}
	link := func(hubEnd string, i int, addRoute string) error {
		for _, s := range [][]string{
			{"-n", hub, "link", "set", hubEnd, "up"},
			{"-n", hub, "route", "add", addRoute + "/32", "dev", hubEnd},
		} {
			if err := ipCmd(s...); err != nil {
				return err
			}
		}
		return n.sysctl(hub, "net.ipv4.conf."+hubEnd+".proxy_arp=1", "net.ipv4.conf."+hubEnd+".rp_filter=0")
	}
	for i := 1; i <= n.Nodes; i++ {
		ns, hubEnd := n.NS(i), fmt.Sprintf("n%d", i)
		for _, s := range [][]string{
			{"netns", "add", ns},
			{"-n", ns, "link", "set", "lo", "up"},
			{"link", "add", "name", hubEnd, "netns", hub, "address", n.hubMAC(i), "type", "veth", "peer", "name", "eth0", "netns", ns},
			{"-n", ns, "addr", "add", n.Addr(i) + "/24", "dev", "eth0"},
			{"-n", ns, "link", "set", "eth0", "up"},
		} {
			if err := ipCmd(s...); err != nil {
				return err
			}
		}
		if err := link(hubEnd, i, n.Addr(i)); err != nil {
			return err
		}
		for j := 1; j <= n.Nodes; j++ {
			if j != i {
				if err := ipCmd("-n", ns, "neigh", "replace", n.Addr(j), "lladdr", n.hubMAC(i), "dev", "eth0", "nud", "permanent"); err != nil {
					return err
				}
			}
		}
		if err := ipCmd("-n", ns, "neigh", "replace", n.HostAddr(), "lladdr", n.hubMAC(i), "dev", "eth0", "nud", "permanent"); err != nil {
			return err
		}
	}
	root := n.prefix() + "root"
	for _, s := range [][]string{
		{"link", "add", "name", root, "type", "veth", "peer", "name", "host", "address", n.hubMAC(254), "netns", hub},
		{"addr", "add", n.HostAddr() + "/24", "dev", root},
		{"link", "set", root, "up"},
	} {
		if err := ipCmd(s...); err != nil {
			return err
		}
	}
	return link("host", 254, n.HostAddr())
}

// Block drops packets from node a to node b (one way) until Unblock.
func (n *Net) Block(a, b int) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.blocked[[2]int{a, b}] {
		return nil
	}
	if err := ipCmd("-n", n.hub(), "rule", "add", "from", n.Addr(a), "to", n.Addr(b), "blackhole", "pref", "100"); err != nil {
		return err
	}
	n.blocked[[2]int{a, b}] = true
	return nil
}

// Unblock undoes Block(a, b).
func (n *Net) Unblock(a, b int) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.blocked[[2]int{a, b}] {
		return nil
	}
	if err := ipCmd("-n", n.hub(), "rule", "del", "from", n.Addr(a), "to", n.Addr(b), "blackhole", "pref", "100"); err != nil {
		return err
	}
	delete(n.blocked, [2]int{a, b})
	return nil
}

// Cut drops packets both ways between a and b.
func (n *Net) Cut(a, b int) error {
	return errors.Join(n.Block(a, b), n.Block(b, a))
}

// Isolate cuts node a from every other node (not from the root namespace:
// the harness keeps reaching its API).
func (n *Net) Isolate(a int) error {
	var errs []error
	for b := 1; b <= n.Nodes; b++ {
		if b != a {
			errs = append(errs, n.Cut(a, b))
		}
	}
	return errors.Join(errs...)
}

// HealAll removes every block.
func (n *Net) HealAll() error {
	n.mu.Lock()
	pairs := make([][2]int, 0, len(n.blocked))
	for p := range n.blocked {
		pairs = append(pairs, p)
	}
	n.mu.Unlock()
	var errs []error
	for _, p := range pairs {
		errs = append(errs, n.Unblock(p[0], p[1]))
	}
	return errors.Join(errs...)
}

// Blocked lists the blocked pairs, sorted.
func (n *Net) Blocked() [][2]int {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out [][2]int
	for p := range n.blocked {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b [2]int) int {
		if a[0] != b[0] {
			return a[0] - b[0]
		}
		return a[1] - b[1]
	})
	return out
}

// Command runs name inside node i's namespace (`ip netns exec`, which
// execs name: the process's PID is name's).
func (n *Net) Command(i int, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.NS(i), name}, args...)...)
}

// PIDs lists the processes in node i's namespace: blixard, its runners and
// anything they started.
func (n *Net) PIDs(i int) ([]int, error) { return pidsInNS(n.NS(i)) }

func pidsInNS(ns string) ([]int, error) {
	fi, err := os.Stat(filepath.Join("/run/netns", ns))
	if err != nil {
		return nil, err
	}
	want := fmt.Sprintf("net:[%d]", fi.Sys().(*syscall.Stat_t).Ino)
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		// Never this process: /proc/SELF/ns/net is its main thread's, and
		// a test that dials into a node's namespace from a locked thread
		// may have the main thread there for a moment (a dial net/http
		// keeps going after its request gave up). Killing it would kill
		// the test run, not a node.
		if err != nil || pid == self {
			continue
		}
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); err == nil && l == want {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// Signal sends sig to every process in node i's namespace and returns
// their PIDs.
func (n *Net) Signal(i int, sig syscall.Signal) ([]int, error) {
	pids, err := n.PIDs(i)
	if err != nil {
		return nil, err
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, sig)
	}
	return pids, nil
}

// Teardown kills (by PID) every process left in the run's namespaces,
// deletes them (their veths go with them) and frees the subnet.
func (n *Net) Teardown() error {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return fmt.Errorf("ip netns list: %w", err)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], n.prefix()) {
			names = append(names, f[0])
		}
	}
	var errs []error
	for _, ns := range names {
		deadline := time.Now().Add(10 * time.Second)
		for {
			pids, err := pidsInNS(ns)
			if err != nil || len(pids) == 0 {
				break
			}
			if time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("namespace %s: processes %v did not die", ns, pids))
				break
			}
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			time.Sleep(50 * time.Millisecond) // processes take a moment to die; poll
		}
	}
	for _, ns := range names {
		if err := ipCmd("netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	// The root veth's peer lives in the hub namespace: deleting that
	// namespace makes the kernel remove the pair a moment later, so the
	// link may vanish between the look and the delete.
	root := n.prefix() + "root"
	if exec.Command("ip", "link", "show", root).Run() == nil {
		if err := ipCmd("link", "del", root); err != nil && exec.Command("ip", "link", "show", root).Run() == nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(filepath.Join(OwnerDir, strconv.Itoa(n.Octet))); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// selfIdentity is "PID STARTTIME" of this process, for the owner file.
func selfIdentity() string {
	return fmt.Sprintf("%d %s", os.Getpid(), startTime(os.Getpid()))
}

// startTime is field 22 of /proc/PID/stat ("" when the process is gone).
func startTime(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+1:]
	}
	f := strings.Fields(s)
	if len(f) < 20 {
		return ""
	}
	return f[19] // fields after "(comm)" start at field 3
}

// ownerAlive tells whether the owner file's process still runs.
func ownerAlive(id string) bool {
	f := strings.Fields(id)
	if len(f) != 2 {
		return false
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil {
		return false
	}
	return startTime(pid) == f[1]
}
