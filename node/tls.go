package node

import (
	"crypto/tls"
	"fmt"
	"net"

	"github.com/blixard/blixard/pki"
	"github.com/blixard/blixard/raftstore"
)

// apiTLS are the API's TLS configurations: server accepts clients that
// present a certificate of the CA, or none (bearer tokens); peer presents
// this node's certificate to other nodes' APIs.
type apiTLS struct {
	server, peer *tls.Config
}

// loadAPITLS loads the node's files for its API, before Raft starts, so a
// wrong file fails the start with its name: the certificate must verify
// against the CA, be node id's, and name the host clients dial (apiAddr's,
// unless that is a wildcard). Raft checks the same files for its own
// address when it starts.
func loadAPITLS(f raftstore.TLSFiles, id uint64, apiAddr string) (apiTLS, error) {
	server, err := pki.ServerTLSClientCertIfGiven(f.CAFile, f.CertFile, f.KeyFile)
	if err != nil {
		return apiTLS{}, fmt.Errorf("API TLS: %w", err)
	}
	peer, err := pki.ClientTLS(f.CAFile, f.CertFile, f.KeyFile)
	if err != nil {
		return apiTLS{}, fmt.Errorf("API TLS: %w", err)
	}
	leaf := server.Certificates[0].Leaf
	issue := fmt.Sprintf("issue one with `blixard cert issue --ca DIR --node %d --host HOST …`", id)
	who, err := pki.IdentityOf(leaf)
	if err != nil {
		return apiTLS{}, fmt.Errorf("API TLS: %s: %w; %s", f.CertFile, err, issue)
	}
	if who.Kind != pki.KindNode || who.NodeID != id {
		return apiTLS{}, fmt.Errorf("API TLS: %s is the certificate of %s %s, not of node %d: %s", f.CertFile, who.Kind, who.Name, id, issue)
	}
	if host, _, err := net.SplitHostPort(apiAddr); err == nil && !wildcard(host) {
		if err := leaf.VerifyHostname(host); err != nil {
			return apiTLS{}, fmt.Errorf("API TLS: %s does not name %s, the host of --api-addr %s, which clients check: issue it again with --host %s: %w",
				f.CertFile, host, apiAddr, host, err)
		}
	}
	return apiTLS{server: server, peer: peer}, nil
}

func wildcard(host string) bool {
	return host == "" || host == "0.0.0.0" || host == "::"
}
