package gitsync

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// DefaultHTTPUsername is the user name sent with [Options.HTTPTokenFile]
// when [Options.HTTPUsername] is empty. GitHub and Forgejo/Gitea accept any
// name with a token; GitLab wants "oauth2" for OAuth tokens.
const DefaultHTTPUsername = "git"

// sshDialTimeout bounds the TCP connect and SSH handshake: go-git's SSH
// transport dials without the fetch's context, so without it a silent
// host would hold the fetch (and the leader's pass) for the kernel's
// connect timeout.
const sshDialTimeout = 30 * time.Second

// credentials are the remote's credential files from Options. The files
// are read at every fetch, so a rotated key or a renewed token takes effect
// without a restart.
type credentials struct {
	protocol string // the endpoint's: "ssh", "https", "http", "file", …
	sshUser  string // the URL's user, DefaultSSHUser when it names none
	sshAddr  string // host:port, as known_hosts is searched for it

	sshKeyFile      string
	knownHostsFile  string
	insecureHostKey bool

	tokenFile string
	username  string
}

// DefaultSSHUser is the user of an ssh:// remote whose URL names none.
const DefaultSSHUser = "git"

// newCredentials checks that o's credential options fit the remote's
// protocol. It reads no file.
func newCredentials(o Options, ep *transport.Endpoint) (credentials, error) {
	c := credentials{
		protocol:        ep.Protocol,
		sshKeyFile:      o.SSHKeyFile,
		knownHostsFile:  o.SSHKnownHostsFile,
		insecureHostKey: o.SSHInsecureIgnoreHostKey,
		tokenFile:       o.HTTPTokenFile,
		username:        o.HTTPUsername,
	}
	safe := redactURL(o.URL)
	sshOpts := c.sshKeyFile != "" || c.knownHostsFile != "" || c.insecureHostKey
	httpOpts := c.tokenFile != "" || c.username != ""
	switch c.protocol {
	case "ssh":
		if httpOpts {
			return c, fmt.Errorf("gitsync: %s is an SSH remote: a token file and HTTP user name (--git-token-file, --git-username) are for https:// remotes; use --git-ssh-key", safe)
		}
		if c.sshKeyFile == "" {
			return c, fmt.Errorf("gitsync: SSH remote %s needs a private key: set --git-ssh-key FILE (a key without passphrase, readable only by the daemon's user)", safe)
		}
		if c.knownHostsFile == "" && !c.insecureHostKey {
			return c, fmt.Errorf("gitsync: SSH remote %s needs a known_hosts file to check the server's host key: set --git-known-hosts FILE (for example from `ssh-keyscan HOST`, checked against a fingerprint the host's admin gave you)", safe)
		}
		if c.knownHostsFile != "" && c.insecureHostKey {
			return c, errors.New("gitsync: a known_hosts file and accepting any host key exclude each other: drop one of them")
		}
		c.sshUser = ep.User
		if c.sshUser == "" {
			c.sshUser = DefaultSSHUser
		}
		port := ep.Port
		if port <= 0 {
			port = gitssh.DefaultPort
		}
		c.sshAddr = net.JoinHostPort(ep.Host, strconv.Itoa(port))
	case "https":
		if sshOpts {
			return c, fmt.Errorf("gitsync: %s is an https:// remote: SSH options (--git-ssh-key, --git-known-hosts) are for ssh:// remotes", safe)
		}
		if c.username != "" && c.tokenFile == "" {
			return c, errors.New("gitsync: an HTTP user name without a token: set --git-token-file too, or drop --git-username")
		}
		if c.tokenFile != "" && len(urlSecrets(o.URL)) > 0 {
			return c, fmt.Errorf("gitsync: %s carries credentials and a token file is set too: remove the user information from the URL", safe)
		}
	default:
		if sshOpts || httpOpts {
			return c, fmt.Errorf("gitsync: credentials are set for %s, which is neither ssh:// nor https://: SSH keys go with ssh:// remotes, tokens with https:// remotes (never plain http://, which would send the token in clear text)", safe)
		}
	}
	return c, nil
}

// auth reads the credential files and returns the transport's credential
// (nil when there is none: a local or anonymous remote) and the secrets it
// holds, to be kept out of error messages.
func (c credentials) auth() (transport.AuthMethod, []string, error) {
	switch {
	case c.sshKeyFile != "":
		pemBytes, err := readSecretFile(c.sshKeyFile, "SSH private key", "--git-ssh-key")
		if err != nil {
			return nil, nil, err
		}
		signer, err := ssh.ParsePrivateKey(pemBytes)
		var pass *ssh.PassphraseMissingError
		if errors.As(err, &pass) {
			return nil, nil, fmt.Errorf("SSH private key %s is protected by a passphrase, which a daemon cannot type: give --git-ssh-key a key without passphrase (a deploy key made with `ssh-keygen -t ed25519 -N ''`)", c.sshKeyFile)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("SSH private key %s: %w: check --git-ssh-key (an OpenSSH or PEM private key)", c.sshKeyFile, err)
		}
		hostKeys, algos, err := c.hostKeyCheck()
		if err != nil {
			return nil, nil, err
		}
		return &sshAuth{user: c.sshUser, signer: signer, hostKeys: hostKeys, algos: algos}, nil, nil
	case c.tokenFile != "":
		b, err := readSecretFile(c.tokenFile, "token file", "--git-token-file")
		if err != nil {
			return nil, nil, err
		}
		token := strings.TrimSpace(string(b))
		if token == "" || strings.ContainsAny(token, "\r\n") {
			return nil, nil, fmt.Errorf("token file %s must hold exactly one line, the token: check --git-token-file", c.tokenFile)
		}
		user := c.username
		if user == "" {
			user = DefaultHTTPUsername
		}
		return &githttp.BasicAuth{Username: user, Password: token}, []string{token}, nil
	}
	return nil, nil, nil
}

// hostKeyCheck returns the host key callback for the remote and the host
// key algorithms to ask for. The algorithms matter: without them the server
// may pick a key type known_hosts does not list for it (an ECDSA key when
// the file has the host's Ed25519 key), which would look like a changed key.
func (c credentials) hostKeyCheck() (ssh.HostKeyCallback, []string, error) {
	if c.insecureHostKey {
		return ssh.InsecureIgnoreHostKey(), nil, nil
	}
	// go-git's helper silently skips a missing file and then suggests an
	// environment variable; name our file instead.
	if _, err := os.Stat(c.knownHostsFile); err != nil {
		return nil, nil, fmt.Errorf("known_hosts file: %w: check --git-known-hosts", err)
	}
	db, err := gitssh.NewKnownHostsDb(c.knownHostsFile)
	if err != nil {
		return nil, nil, fmt.Errorf("known_hosts file %s: %w: fix the line it names (OpenSSH known_hosts format)", c.knownHostsFile, err)
	}
	check := db.HostKeyCallback()
	file := c.knownHostsFile
	cb := func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		err := check(hostname, remote, key)
		if err == nil {
			return nil
		}
		var keyErr *knownhosts.KeyError
		changed := errors.As(err, &keyErr) && len(keyErr.Want) > 0
		return &HostKeyError{Host: hostname, Key: key.Type() + " " + ssh.FingerprintSHA256(key), File: file, Changed: changed, err: err}
	}
	return cb, db.HostKeyAlgorithms(c.sshAddr), nil
}

// HostKeyError is an SSH server's host key the known_hosts file does not
// vouch for: the host is not listed, it is listed with another key
// (Changed), or the key is marked @revoked.
type HostKeyError struct {
	Host    string // host:port as dialed
	Key     string // the key the server presented: type and SHA256 fingerprint
	File    string // the known_hosts file
	Changed bool
	err     error
}

func (e *HostKeyError) Error() string {
	var keyErr *knownhosts.KeyError
	var revoked *knownhosts.RevokedError
	switch {
	case errors.As(e.err, &revoked):
		return fmt.Sprintf("the host key of %s (%s) is marked @revoked in known_hosts file %s: refusing to connect; ask the host's admin for its current key",
			e.Host, e.Key, e.File)
	case e.Changed && errors.As(e.err, &keyErr) && len(keyErr.Want) > 0:
		return fmt.Sprintf("the host key of %s does not match known_hosts file %s (%s:%d lists another key; the server presents %s): refusing to connect; if the key really changed, check the new one with the host's admin and update %s",
			e.Host, e.File, keyErr.Want[0].Filename, keyErr.Want[0].Line, e.Key, e.File)
	case errors.As(e.err, &keyErr):
		host, port, _ := net.SplitHostPort(e.Host)
		return fmt.Sprintf("%s is not in known_hosts file %s (the server presents %s): refusing to connect; check the key with the host's admin, then add it: ssh-keyscan -p %s %s >> %s",
			e.Host, e.File, e.Key, port, host, e.File)
	}
	return fmt.Sprintf("checking the host key of %s (%s) against known_hosts file %s: %v", e.Host, e.Key, e.File, e.err)
}

func (e *HostKeyError) Unwrap() error { return e.err }

// readSecretFile reads a credential file, refusing one that every user may
// access (as package pki does for TLS keys). what and flag name it in
// errors; its content never appears in them.
func readSecretFile(path, what, flag string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: check %s", what, err, flag)
	}
	if fi.Mode().Perm()&0o007 != 0 {
		return nil, fmt.Errorf("%s %s is accessible by every user (mode %04o): run `chmod o-rwx %s`", what, path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: check %s", what, err, flag)
	}
	return b, nil
}

// sshAuth is go-git's SSH credential with the checks Blixard insists on:
// the host key callback of the configured known_hosts file (go-git would
// otherwise fall back to ~/.ssh/known_hosts and an SSH agent) and a dial
// timeout.
type sshAuth struct {
	user     string
	signer   ssh.Signer
	hostKeys ssh.HostKeyCallback
	algos    []string
}

func (a *sshAuth) Name() string   { return gitssh.PublicKeysName }
func (a *sshAuth) String() string { return fmt.Sprintf("user: %s, name: %s", a.user, a.Name()) }

func (a *sshAuth) ClientConfig() (*ssh.ClientConfig, error) {
	return &ssh.ClientConfig{
		User:              a.user,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(a.signer)},
		HostKeyCallback:   a.hostKeys,
		HostKeyAlgorithms: a.algos,
		Timeout:           sshDialTimeout,
	}, nil
}
