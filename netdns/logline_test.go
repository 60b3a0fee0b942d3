package netdns

import "testing"

func TestSplitLogLine(t *testing.T) {
	for _, tc := range []struct{ line, source, msg string }{
		{"dnsmasq[42]: started, version 2.90 cachesize 150", "dnsmasq", "started, version 2.90 cachesize 150"},
		{"dnsmasq-dhcp[42]: DHCPACK(blixard0) 10.100.0.2 02:00:00:00:00:02 web-0", "dnsmasq-dhcp", "DHCPACK(blixard0) 10.100.0.2 02:00:00:00:00:02 web-0"},
		{"dnsmasq: failed to create listening socket for 10.100.0.1: Cannot assign requested address", "dnsmasq",
			"failed to create listening socket for 10.100.0.1: Cannot assign requested address"},
		{"something else: entirely", "dnsmasq", "something else: entirely"},
		{"no colon at all", "dnsmasq", "no colon at all"},
	} {
		if source, msg := splitLogLine(tc.line); source != tc.source || msg != tc.msg {
			t.Errorf("splitLogLine(%q) = %q, %q; want %q, %q", tc.line, source, msg, tc.source, tc.msg)
		}
	}
}
