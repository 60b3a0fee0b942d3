package netdns

import (
	"bufio"
	"bytes"
	"net/netip"
	"strings"
)

// ParseResolvConf returns the nameserver addresses of a resolv.conf(5)
// file, in order, on port 53: the host's resolvers, for
// Network.Upstreams. Lines it cannot read are ignored, as the C library
// ignores them. Loopback stubs (systemd-resolved's 127.0.0.53) are kept:
// see the package documentation for why.
func ParseResolvConf(data []byte) []netip.AddrPort {
	var out []netip.AddrPort
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(fields[1])
		if err != nil {
			continue
		}
		out = append(out, netip.AddrPortFrom(a.Unmap(), 53))
	}
	return out
}
