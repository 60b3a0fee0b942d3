package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// File names in a CA directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// Default validities.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	LeafValidity = 365 * 24 * time.Hour
)

// backdate is how far before the issuing time a certificate becomes valid:
// a certificate issued on one host must already be valid on a host whose
// clock is a little behind.
const backdate = 5 * time.Minute

// File modes: certificates are public, keys are for their owner only.
const (
	certMode = 0o644
	keyMode  = 0o600
	dirMode  = 0o700
)

// Files are the paths of a certificate and its key.
type Files struct {
	Cert string
	Key  string
}

// An Option changes how a certificate is issued.
type Option func(*options)

type options struct {
	validity time.Duration // 0: the default of what is issued
	now      time.Time     // zero: time.Now()
}

// ValidFor sets how long the certificate is valid (defaults: [CAValidity]
// for the CA, [LeafValidity] for nodes and users).
func ValidFor(d time.Duration) Option { return func(o *options) { o.validity = d } }

// IssuedAt sets the issuing time (default: now); the certificate is valid
// from a few minutes before it. Tests use it to make expired certificates.
func IssuedAt(t time.Time) Option { return func(o *options) { o.now = t } }

func applyOptions(def time.Duration, opts []Option) (options, error) {
	o := options{validity: def}
	for _, opt := range opts {
		opt(&o)
	}
	if o.validity <= 0 {
		return o, fmt.Errorf("validity %s is not positive", o.validity)
	}
	if o.now.IsZero() {
		o.now = time.Now()
	}
	return o, nil
}

// InitCA creates the cluster CA in dir (created 0700 if missing): ca.crt
// (0644, to copy to every node and client) and ca.key (0600, to keep on this
// machine). It refuses to overwrite either file: a new CA would make every
// certificate the old one signed stop verifying.
func InitCA(dir string, opts ...Option) error {
	o, err := applyOptions(CAValidity, opts)
	if err != nil {
		return fmt.Errorf("pki: init CA in %s: %w", dir, err)
	}
	files := Files{Cert: filepath.Join(dir, CACertFile), Key: filepath.Join(dir, CAKeyFile)}
	if err := prepare(dir, files, "a CA already exists there; every certificate it signed would stop verifying if it were replaced. Keep it, or choose another directory for another cluster"); err != nil {
		return fmt.Errorf("pki: init CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("pki: init CA: generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return fmt.Errorf("pki: init CA: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		// The serial's start tells CAs apart in x509's "signed by unknown
		// authority" messages, which name the CA they tried.
		Subject:               pkix.Name{CommonName: "blixard cluster CA " + hex.EncodeToString(serial.Bytes()[:4]), Organization: []string{"blixard"}},
		NotBefore:             o.now.Add(-backdate),
		NotAfter:              o.now.Add(o.validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// Node and user certificates are signed by the CA itself; no
		// intermediate CA may be made from it.
		MaxPathLen:     0,
		MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("pki: init CA: sign: %w", err)
	}
	if err := writePair(files, der, key); err != nil {
		return fmt.Errorf("pki: init CA: %w", err)
	}
	return nil
}

// IssueNode issues node id's certificate into outDir (created 0700 if
// missing) as node-ID.crt and node-ID.key, signed by the CA in caDir. It is
// both a server and a client certificate: nodes dial each other's Raft
// ports and serve the API. hosts are the host names and IP addresses of the
// node's Raft and API addresses (without ports); peers check the one they
// dial against them, so at least one is needed. It refuses to overwrite
// existing files: to rotate, issue into another directory and replace the
// node's files (docs/security.md).
func IssueNode(caDir, outDir string, id uint64, hosts []string, opts ...Option) (Files, error) {
	if id == 0 {
		return Files{}, errors.New("pki: issue node certificate: node id must be > 0")
	}
	name := nodeName(id)
	dns, ips, err := splitHosts(hosts)
	if err != nil {
		return Files{}, fmt.Errorf("pki: issue %s: %w", name, err)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name, OrganizationalUnit: []string{uriNode}, Organization: []string{"blixard"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    dns,
		IPAddresses: ips,
		URIs:        []*url.URL{nodeURI(id)},
	}
	files, err := issue(caDir, outDir, name, tmpl, opts)
	if err != nil {
		return Files{}, fmt.Errorf("pki: issue %s: %w", name, err)
	}
	return files, nil
}

// IssueUser issues a client certificate for a person or CI job into outDir
// (created 0700 if missing) as NAME.crt and NAME.key, signed by the CA in
// caDir, carrying role. It refuses an unknown role, a name that is not a
// plain file name or is taken by the CA's or a node's files, and existing
// files.
func IssueUser(caDir, outDir, name string, role Role, opts ...Option) (Files, error) {
	if err := checkUserName(name); err != nil {
		return Files{}, fmt.Errorf("pki: issue user certificate: %w", err)
	}
	if _, err := ParseRole(string(role)); err != nil {
		return Files{}, fmt.Errorf("pki: issue user certificate %s: %w", name, err)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name, OrganizationalUnit: []string{uriUser}, Organization: []string{"blixard"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:        userURIs(name, role),
	}
	files, err := issue(caDir, outDir, name, tmpl, opts)
	if err != nil {
		return Files{}, fmt.Errorf("pki: issue user certificate %s: %w", name, err)
	}
	return files, nil
}

// issue completes tmpl (serial, validity, key usage), signs it with the CA
// in caDir and writes outDir/name.crt and outDir/name.key.
func issue(caDir, outDir, name string, tmpl *x509.Certificate, opts []Option) (Files, error) {
	o, err := applyOptions(LeafValidity, opts)
	if err != nil {
		return Files{}, err
	}
	caCert, caKey, err := loadCA(caDir)
	if err != nil {
		return Files{}, err
	}
	notAfter := o.now.Add(o.validity)
	if o.now.Before(caCert.NotBefore) || o.now.After(caCert.NotAfter) {
		return Files{}, fmt.Errorf("the CA in %s is valid from %s to %s, not at %s: create a new CA with `blixard ca init` and reissue every certificate",
			caDir, caCert.NotBefore.Format(time.RFC3339), caCert.NotAfter.Format(time.RFC3339), o.now.Format(time.RFC3339))
	}
	if notAfter.After(caCert.NotAfter) {
		// A certificate outliving its CA would stop verifying with the CA
		// anyway; say so now rather than on that day.
		return Files{}, fmt.Errorf("the CA in %s expires on %s, before this certificate would (%s): issue it for a shorter validity",
			caDir, caCert.NotAfter.Format(time.RFC3339), notAfter.Format(time.RFC3339))
	}
	files := Files{Cert: filepath.Join(outDir, name+".crt"), Key: filepath.Join(outDir, name+".key")}
	if err := prepare(outDir, files, "to rotate a certificate, issue the new one into another directory and replace the files the node or client uses"); err != nil {
		return Files{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Files{}, fmt.Errorf("generate key: %w", err)
	}
	if tmpl.SerialNumber, err = randomSerial(); err != nil {
		return Files{}, err
	}
	tmpl.NotBefore = o.now.Add(-backdate)
	tmpl.NotAfter = notAfter
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		return Files{}, fmt.Errorf("sign with the CA in %s: %w", caDir, err)
	}
	if err := writePair(files, der, key); err != nil {
		return Files{}, err
	}
	return files, nil
}

// splitHosts sorts host names and IP addresses for a certificate's SANs,
// refusing empty entries and ports (peers compare the host alone).
func splitHosts(hosts []string) (dns []string, ips []net.IP, err error) {
	seen := map[string]bool{}
	for _, h := range hosts {
		h = strings.ToLower(strings.TrimSpace(h))
		if h == "" {
			return nil, nil, errors.New("an empty host was given: give the host names or IPs of the node's Raft and API addresses")
		}
		if seen[h] {
			continue
		}
		seen[h] = true
		if ip := net.ParseIP(strings.Trim(h, "[]")); ip != nil {
			ips = append(ips, ip)
			continue
		}
		if strings.ContainsAny(h, ":/ ") {
			return nil, nil, fmt.Errorf("host %q is not a host name or IP address: give it without port or scheme", h)
		}
		dns = append(dns, h)
	}
	if len(dns)+len(ips) == 0 {
		return nil, nil, errors.New("no host given: peers check the host they dial against the certificate; give the host names or IPs of the node's Raft and API addresses")
	}
	return dns, ips, nil
}

// randomSerial returns a random positive 128-bit serial number, as RFC 5280
// allows (at most 20 octets) and browsers' baseline requirements expect
// (unpredictable, at least 64 random bits).
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("random serial number: %w", err)
		}
		// Zero is not a valid serial, and the CA's CN uses the first four
		// bytes, so keep the number at least that long.
		if n.BitLen() > 32 {
			return n, nil
		}
	}
}

// loadCA reads the CA certificate and key from caDir and checks that they
// belong together and that the certificate is a CA.
func loadCA(caDir string) (*x509.Certificate, crypto.Signer, error) {
	certPath := filepath.Join(caDir, CACertFile)
	keyPath := filepath.Join(caDir, CAKeyFile)
	certs, err := readCerts(certPath)
	if err != nil {
		return nil, nil, fmt.Errorf("%w (is %s a CA directory from `blixard ca init`?)", err, caDir)
	}
	cert := certs[0]
	if !cert.IsCA {
		return nil, nil, fmt.Errorf("%s is not a CA certificate: give the directory `blixard ca init` created", certPath)
	}
	if err := checkKeyMode(keyPath); err != nil {
		return nil, nil, err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("read CA key: %w (the CA key stays on the machine that ran `blixard ca init`; issue certificates there)", err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, nil, fmt.Errorf("%s does not belong to %s: restore the pair `blixard ca init` wrote", keyPath, certPath)
	}
	return cert, key, nil
}

func parseKey(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("holds no PEM \"PRIVATE KEY\" block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse key: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key of type %T cannot sign", k)
	}
	return s, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ak, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ak.Equal(b)
}

// readCerts reads every PEM certificate in path; there must be one.
func readCerts(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read certificate: %w", err)
	}
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: parse certificate: %w", path, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate (is it a key, or another format?)", path)
	}
	return certs, nil
}

// checkKeyMode refuses a key file that users other than its owner and
// group can read or write: such a key is no longer secret. (Group access is
// allowed for secret managers that hand keys to a service's group.)
func checkKeyMode(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("key file: %w", err)
	}
	if fi.Mode().Perm()&0o007 != 0 {
		return fmt.Errorf("key file %s is accessible to every user (mode %04o): run `chmod 600 %s` and consider it leaked if others could read it",
			path, fi.Mode().Perm(), path)
	}
	return nil
}

// prepare creates dir if missing and checks that neither file exists, so
// that a half-written pair never replaces a good one.
func prepare(dir string, files Files, hint string) error {
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return fmt.Errorf("create directory: %w", err)
	}
	for _, p := range []string{files.Cert, files.Key} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s exists; refusing to overwrite it: %s", p, hint)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("check %s: %w", p, err)
		}
	}
	return nil
}

// writePair writes the key (0600) and then the certificate (0644); if the
// certificate cannot be written the key is removed again.
func writePair(files Files, der []byte, key *ecdsa.PrivateKey) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode key: %w", err)
	}
	if err := writeNew(files.Key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), keyMode); err != nil {
		return err
	}
	if err := writeNew(files.Cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), certMode); err != nil {
		os.Remove(files.Key)
		return err
	}
	return nil
}

// writeNew creates path with exactly mode (O_EXCL: never over an existing
// file or through a symlink planted there) and removes it again when the
// write fails.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	// The umask may have narrowed the mode; ca.crt must stay readable by
	// everyone who is handed it, and a key must be exactly 0600.
	err = f.Chmod(mode)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
