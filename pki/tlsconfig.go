package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// ServerTLS returns a server configuration that presents certFile/keyFile
// and requires every client to present a certificate the CA in caFile
// signed (tls.RequireAndVerifyClientCert). Nodes' peer-to-peer listeners
// use it. The configuration's Certificates[0].Leaf is the parsed
// certificate.
func ServerTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	return serverTLS(caFile, certFile, keyFile, tls.RequireAndVerifyClientCert)
}

// ServerTLSClientCertIfGiven is [ServerTLS] for the API, which also accepts
// bearer tokens: a client may present no certificate, but one it presents
// must verify against the CA (tls.VerifyClientCertIfGiven). The handler
// reads a verified certificate's [Identity] with [IdentityOf].
func ServerTLSClientCertIfGiven(caFile, certFile, keyFile string) (*tls.Config, error) {
	return serverTLS(caFile, certFile, keyFile, tls.VerifyClientCertIfGiven)
}

func serverTLS(caFile, certFile, keyFile string, auth tls.ClientAuthType) (*tls.Config, error) {
	pool, err := loadPool(caFile)
	if err != nil {
		return nil, fmt.Errorf("pki: server TLS: %w", err)
	}
	pair, err := loadPair(pool, caFile, certFile, keyFile, x509.ExtKeyUsageServerAuth)
	if err != nil {
		return nil, fmt.Errorf("pki: server TLS: %w", err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		ClientCAs:    pool,
		ClientAuth:   auth,
		// Every client is ours (the CLI, nodes, curl in CI): no reason to
		// speak anything older.
		MinVersion: tls.VersionTLS13,
	}, nil
}

// ClientTLS returns a client configuration that trusts only the CA in
// caFile and presents certFile/keyFile. With both certFile and keyFile
// empty it presents no certificate (a client that authenticates with a
// bearer token still checks the server against the CA). The caller or
// net/http sets ServerName from the address it dials.
func ClientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	pool, err := loadPool(caFile)
	if err != nil {
		return nil, fmt.Errorf("pki: client TLS: %w", err)
	}
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}
	switch {
	case certFile == "" && keyFile == "":
		return cfg, nil
	case certFile == "" || keyFile == "":
		return nil, fmt.Errorf("pki: client TLS: give both a certificate and a key file, or neither (certificate %q, key %q)", certFile, keyFile)
	}
	pair, err := loadPair(pool, caFile, certFile, keyFile, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, fmt.Errorf("pki: client TLS: %w", err)
	}
	cfg.Certificates = []tls.Certificate{pair}
	return cfg, nil
}

func loadPool(caFile string) (*x509.CertPool, error) {
	if caFile == "" {
		return nil, errors.New("no CA file given: give the cluster's ca.crt (from `blixard ca init`)")
	}
	certs, err := readCerts(caFile)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		if !c.IsCA {
			return nil, fmt.Errorf("CA file %s holds %q, which is not a CA certificate: give the cluster's ca.crt", caFile, c.Subject.CommonName)
		}
		pool.AddCert(c)
	}
	return pool, nil
}

// loadPair loads the key pair, with its Leaf set, and checks it now, so
// that a wrong file fails at start with its name instead of as a failed
// handshake later: the key is private, and the certificate verifies
// against pool for usage.
func loadPair(pool *x509.CertPool, caFile, certFile, keyFile string, usage x509.ExtKeyUsage) (tls.Certificate, error) {
	if certFile == "" || keyFile == "" {
		return tls.Certificate{}, fmt.Errorf("give both a certificate and a key file (certificate %q, key %q)", certFile, keyFile)
	}
	if err := checkKeyMode(keyFile); err != nil {
		return tls.Certificate{}, err
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("load certificate %s with key %s (do they belong together? both come from one `blixard cert issue`): %w", certFile, keyFile, err)
	}
	if pair.Leaf == nil { // callers, raftstore among them, read the leaf from the pair
		if pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return tls.Certificate{}, fmt.Errorf("parse certificate %s: %w", certFile, err)
		}
	}
	leaf := pair.Leaf
	inter := x509.NewCertPool()
	for _, der := range pair.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate %s does not verify against the CA in %s: %w (%s)", certFile, caFile, err, verifyHint(err, usage))
	}
	return pair, nil
}

func verifyHint(err error, usage x509.ExtKeyUsage) string {
	var inv x509.CertificateInvalidError
	if errors.As(err, &inv) {
		switch inv.Reason {
		case x509.Expired:
			return "it is expired or not yet valid: issue a new one with `blixard cert issue` and replace the files (see docs/security.md); check the clock if it is not yet valid"
		case x509.IncompatibleUsage:
			if usage == x509.ExtKeyUsageServerAuth {
				return "it is a client-only certificate: a server needs a node certificate (`blixard cert issue --node ID`)"
			}
			return "it is not a client certificate"
		}
	}
	var unknown x509.UnknownAuthorityError
	if errors.As(err, &unknown) {
		return "it was signed by another CA: issue it with this cluster's CA, or give this cluster's ca.crt"
	}
	return "issue it again with `blixard cert issue --ca DIR`"
}
