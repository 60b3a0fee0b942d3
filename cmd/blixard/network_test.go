package main

import (
	"bytes"
	"context"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/blixard/blixard/api"
	"github.com/blixard/blixard/internal/testkit"
	"github.com/blixard/blixard/replicated"
)

func TestServeNetworkFlags(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		want string // "" : valid
	}{
		{"--network with the defaults is valid", []string{"--network"}, ""},
		{"every network flag is taken", []string{"--network", "--bridge", "br-x", "--vxlan-id", "7", "--vxlan-port", "8472",
			"--underlay-addr", "100.64.0.2", "--ingress-addr", ":8080", "--dns-dir", "/run/dns", "--masquerade=false"}, ""},
		{"a VXLAN id beyond 24 bits is refused", []string{"--network", "--vxlan-id", "16777216"}, "--vxlan-id 16777216"},
		{"an underlay that is no IP address is refused", []string{"--network", "--underlay-addr", "node2"}, "--underlay-addr \"node2\""},
		{"an ingress address without --network is refused", []string{"--ingress-addr", ":80"}, "--ingress-addr needs --network"},
		{"a bridge without --network is refused", []string{"--bridge", "br0"}, "--bridge needs --network"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			args := append([]string{"serve", "--node-id", "2", "--raft-addr", "10.0.0.2:7001", "--insecure", "--check-config"}, tt.args...)
			code := run(context.Background(), args, &out, &errb)
			if tt.want == "" && code != 0 {
				t.Fatalf("exit %d: %s%s", code, out.String(), errb.String())
			}
			if tt.want != "" && (code != 1 || !strings.Contains(errb.String(), tt.want)) {
				t.Fatalf("exit %d, want 1 and %q: %s%s", code, tt.want, out.String(), errb.String())
			}
		})
	}
	o := serveOptions{nodeID: 2, raftAddr: "10.0.0.2:7001", apiAddr: "127.0.0.1:7070", dataDir: "/d", insecure: true, underlayAddr: "100.64.0.2"}
	o.network.Enable, o.network.IngressAddr, o.network.Masquerade = true, ":8080", true
	c, err := o.config(false)
	if err != nil {
		t.Fatal(err)
	}
	if n := c.Network; !n.Enable || n.UnderlayAddr != netip.MustParseAddr("100.64.0.2") || n.IngressAddr != ":8080" || !n.Masquerade {
		t.Errorf("network config %+v", n)
	}
}

// TestVMShowsIdentityAndNames runs `blixard vm` against a real API server
// on an in-memory state whose plan gave web its network identity.
func TestVMShowsIdentityAndNames(t *testing.T) {
	st := testkit.NewStore(nil)
	plan := testkit.Plan(0, "c1", testkit.Assign("web", 1, "v1"))
	for _, cmd := range []replicated.Command{testkit.Register(1), plan} {
		st.Propose(context.Background(), cmd)
	}
	s, _ := st.LocalRead()
	id, ok := s.Identity("web")
	if !ok {
		t.Fatal("the plan gave web no network identity")
	}
	srv := httptest.NewServer(api.NewServer(api.Options{Replica: testkit.NewReplica(st, 1, 1), Insecure: true}).Handler())
	defer srv.Close()
	for _, tt := range []struct {
		args []string
		code int
		want []string
	}{
		{[]string{"vm", "web"}, 0, []string{"Instance:", "web (VM web)", "Node:", "Address:", id.Address.String() + "/16", id.MAC.String(), id.Tap,
			"web.t.internal (once it runs)"}},
		{[]string{"vm", "show", "web", "--json"}, 0, []string{`"address": "` + id.Address.String() + `"`, `"tap": "` + id.Tap + `"`,
			`"dnsNames": [`, `"resolvable": false`}},
		{[]string{"vm", "ghost"}, 1, []string{`"ghost" is neither an instance nor a declared VM`}},
		{[]string{"status"}, 0, []string{"ADDRESS", id.Address.String()}},
		{[]string{"status", "--json"}, 0, []string{`"address": "` + id.Address.String() + `"`}},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(context.Background(), append(tt.args, "--server", srv.URL), &out, &errb)
			if code != tt.code {
				t.Fatalf("exit %d, want %d\n%s%s", code, tt.code, out.String(), errb.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(out.String()+errb.String(), w) {
					t.Errorf("output lacks %q:\n%s%s", w, out.String(), errb.String())
				}
			}
		})
	}
}
