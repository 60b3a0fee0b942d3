//go:build ceph

package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/internal/testkit"
)

// volumeFlake declares one VM with a Ceph volume and a light runner.
func volumeFlake() string {
	return strings.Replace(clusterFlake(nil, "web", "db", "worker"), `cache = { runner = runner "cache" "v1"; vcpu = 2; memMiB = 2048; };`,
		`cache = { runner = runner "cache" "v1"; vcpu = 2; memMiB = 2048; volumes.data = { sizeMiB = 16; }; };`, 1)
}

// TestCephNixGitRaftSilentNodeIsFencedBeforeItsVMMoves: three `blixard serve`
// processes with Ceph; the node running a VM with an RBD volume dies (its
// blixard is killed, so its Ceph client's lock stays behind). The leader
// blocklists that node's Ceph addresses, records them, marks it down, and the
// VM starts on another node, whose agent breaks the fenced lock.
func TestCephNixGitRaftSilentNodeIsFencedBeforeItsVMMoves(t *testing.T) {
	requireTools(t, "nix", "git", "ceph-mon", "ceph-osd", "ceph")
	conf := startCeph(t)
	t.Cleanup(func() {
		if out, err := exec.Command("../ceph/ceph.sh", "stop", filepath.Dir(conf)).CombinedOutput(); err != nil {
			t.Errorf("ceph.sh stop: %v: %s", err, out)
		}
	})

	r := newRepo(t)
	flake := volumeFlake()
	if !strings.Contains(flake, "volumes.data") {
		t.Fatal("test flake has no volume")
	}
	commit := r.push(flake, "cache with a volume")
	c := startCluster(t, r.url(), []nodeSpec{{8, 8192, ""}, {8, 8192, ""}, {8, 8192, ""}},
		"--node-timeout", "3s", "--ceph-config-file", conf, "--ceph-keyring-file", filepath.Join(filepath.Dir(conf), "keyring"))
	waitRevision(t, c, commit)
	vms := waitAllRunning(t, c, 1)
	victim := c.nodes[vms["cache"].node-1]

	type nodeJSON struct {
		ID        uint64   `json:"id"`
		State     string   `json:"state"`
		CephAddrs []string `json:"cephAddrs"`
		Fenced    []string `json:"fenced"`
	}
	stateOf := func(api string, id uint64) (nodeJSON, error) {
		var st struct {
			Nodes map[string]nodeJSON `json:"nodes"`
		}
		if err := cliJSONRaw(t, api, "/v1/state", &st); err != nil {
			return nodeJSON{}, err
		}
		return st.Nodes[fmt.Sprint(id)], nil
	}
	before, err := stateOf(c.nodes[0].api, victim.id)
	if err != nil || len(before.CephAddrs) == 0 {
		t.Fatalf("node %d registered no Ceph addresses: %+v %v", victim.id, before, err)
	}

	victim.kill9()
	var other *node
	for _, n := range c.nodes {
		if n != victim {
			other = n
			break
		}
	}
	testkit.WaitFor(t, 90*time.Second, "the victim fenced, down, and cache running elsewhere", func() error {
		n, err := stateOf(other.api, victim.id)
		if err != nil {
			return err
		}
		if n.State != "down" || !slices.Equal(n.Fenced, before.CephAddrs) {
			return fmt.Errorf("node %d: %s, fenced %v (addresses %v)", victim.id, n.State, n.Fenced, before.CephAddrs)
		}
		vms, err := vmStates(t, other.api)
		if err != nil {
			return err
		}
		if vm := vms["cache"]; vm.node == victim.id || vm.phase != "running" {
			return fmt.Errorf("cache: node %d, %s %s", vm.node, vm.phase, vm.message)
		}
		return nil
	})
	// The blocklist really holds the victim's addresses.
	bl, err := exec.Command("ceph", "-c", conf, "osd", "blocklist", "ls").CombinedOutput()
	if err != nil {
		t.Fatalf("ceph osd blocklist ls: %v: %s", err, bl)
	}
	for _, a := range before.CephAddrs {
		if !strings.Contains(string(bl), strings.TrimPrefix(a, "v1:")) {
			t.Errorf("blocklist lacks %s:\n%s", a, bl)
		}
	}
}

// cliJSONRaw GETs a node's API path and decodes its JSON answer.
func cliJSONRaw(t testing.TB, api, path string, out any) error {
	t.Helper()
	resp, err := http.Get("http://" + api + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: HTTP %d", path, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
