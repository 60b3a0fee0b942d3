package node_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
)

// healthLabFlake is the network lab's cluster (network_lab_test.go) with a
// health check on web: GET / on port 80 of each replica's cluster address,
// which the guest's busybox httpd answers from STATE/NAME/www.
const healthLabFlake = `{
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
      network.cidr = "10.124.0.0/24";
      vms.web = {
        inherit runner; vcpu = 1; memMiB = 64; replicas = 2; placement.antiAffinity = [ "web" ];
        health = { http = { port = 80; path = "/"; }; interval = "500ms"; timeout = "400ms"; unhealthyAfter = 2; };
      };
    };
  };
}
`

// TestKernelNixHealthProbesClusterAddresses runs three `blixard serve
// --network` nodes whose agents probe their instances over the cluster
// network: from the host, across the node's bridge and the instance's
// tap (a veth here) into the guest's namespace. Both replicas become
// healthy; one's endpoint then answers 404 and `status` shows it unhealthy
// with the probe's error naming its cluster address, then healthy again
// once it answers.
func TestKernelNixHealthProbesClusterAddresses(t *testing.T) {
	files := map[string][]byte{"flake.nix": []byte(healthLabFlake)}
	for _, f := range []string{"runner.sh", "udhcpc.sh"} {
		b, err := os.ReadFile(filepath.Join("testdata", "netlab", f))
		if err != nil {
			t.Fatal(err)
		}
		files[f] = b
	}
	l := newLab(t, labConfig{files: files, vcpu: func(i int) int {
		if i == 3 {
			return 0
		}
		return 2
	}})
	for i := 1; i <= 3; i++ {
		l.start(i)
	}
	c := l.api(3) // a node that runs neither replica: health comes through Raft
	ctx := context.Background()

	// waitHealth waits until both replicas run with the wanted health and
	// returns them by name.
	waitHealth := func(what string, want map[string]replicated.HealthState) map[string]api.VMView {
		t.Helper()
		vms := map[string]api.VMView{}
		testkit.WaitFor(t, 4*time.Minute, what, func() error {
			st, err := c.Status(ctx)
			if err != nil {
				return err
			}
			if len(st.VMs) != 2 {
				return fmt.Errorf("%d VMs, want 2 (unschedulable: %v)", len(st.VMs), st.Unschedulable)
			}
			for _, vm := range st.VMs {
				if vm.Phase != replicated.PhaseRunning || vm.Health != want[vm.Name] {
					return fmt.Errorf("%s: %s, health %q (%s%s)", vm.Name, vm.Phase, vm.Health, vm.Message, vm.HealthError)
				}
				vms[vm.Name] = vm
			}
			return nil
		})
		return vms
	}
	began := time.Now()
	up := waitHealth("both replicas running and healthy", map[string]replicated.HealthState{
		"web-0": replicated.Healthy, "web-1": replicated.Healthy})
	t.Logf("both replicas healthy %v after the nodes started", time.Since(began).Round(time.Millisecond))

	// web-0's endpoint answers 404: its node judges it unhealthy, web-1
	// stays healthy.
	index := filepath.Join(l.dir(int(up["web-0"].Node), "state"), "web-0", "www", "index.html")
	if err := os.Remove(index); err != nil {
		t.Fatal(err)
	}
	sick := waitHealth("web-0 unhealthy", map[string]replicated.HealthState{"web-0": replicated.Unhealthy, "web-1": replicated.Healthy})
	if want := "GET http://" + up["web-0"].Address.String() + ":80/: status 404"; !strings.Contains(sick["web-0"].HealthError, want) {
		t.Errorf("web-0's health error %q does not say %q", sick["web-0"].HealthError, want)
	}
	if !sick["web-0"].HealthSince.After(up["web-0"].HealthSince) {
		t.Errorf("web-0 unhealthy since %s, not after healthy since %s", sick["web-0"].HealthSince, up["web-0"].HealthSince)
	}
	if err := os.WriteFile(index, []byte("hello again\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitHealth("web-0 healthy again", map[string]replicated.HealthState{"web-0": replicated.Healthy, "web-1": replicated.Healthy})
}
