package gitsync

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"unicode/utf8"

	"github.com/ProtonMail/go-crypto/openpgp"
	"golang.org/x/crypto/ssh"
)

// Trust is the set of keys whose signatures make a commit deployable, read
// from trust files (`serve --trust FILE`, repeatable) by [LoadTrust]. A
// file is either
//
//   - an OpenPGP public keyring (`gpg --armor --export KEYID > FILE`, or
//     binary): commits signed with `git commit -S` by one of its keys (or
//     their signing subkeys) are trusted; or
//   - an SSH allowed_signers file (ssh-keygen(1), "ALLOWED SIGNERS", as
//     git's gpg.ssh.allowedSignersFile): one `principals [options] keytype
//     base64-key [comment]` per line; commits signed with gpg.format=ssh by
//     one of its keys are trusted. The namespaces="…" option is honoured
//     (the line must allow "git"). Lines with cert-authority are ignored,
//     since SSH certificates are not supported yet ([Trust.Warnings] says
//     so); valid-after and valid-before are refused rather than ignored.
//
// Trust files are read once; a change takes effect at the next start. A
// Trust is immutable and safe for concurrent use.
type Trust struct {
	files    []string
	pgp      openpgp.EntityList
	ssh      []allowedSigner
	warnings []string
}

// allowedSigner is one usable line of an allowed_signers file.
type allowedSigner struct {
	principals string
	key        ssh.PublicKey
	namespaces string // pattern list of the namespaces="…" option; "" allows all
	where      string // FILE:LINE
}

const (
	pgpPublicBlock  = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
	pgpPrivateBlock = "-----BEGIN PGP PRIVATE KEY BLOCK-----"
)

// LoadTrust reads the trust files at paths. It fails when there is none,
// when a file cannot be read or parsed (naming the file and line), or when
// a file holds no usable key: a trust file that trusts nobody is a mistake,
// not a policy.
func LoadTrust(paths ...string) (*Trust, error) {
	if len(paths) == 0 {
		return nil, errors.New("gitsync: no trust files: give --trust FILE (an OpenPGP keyring or an SSH allowed_signers file), or none to deploy unsigned commits")
	}
	t := &Trust{files: append([]string(nil), paths...)}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("gitsync: trust file: %w: check --trust", err)
		}
		before := len(t.pgp) + len(t.ssh)
		text := strings.TrimSpace(string(b))
		switch {
		case strings.Contains(text, pgpPrivateBlock):
			return nil, fmt.Errorf("gitsync: trust file %s holds an OpenPGP private key: give the public keys only (gpg --armor --export KEYID), and keep the private key off the nodes", p)
		case strings.HasPrefix(text, pgpPublicBlock):
			if err := t.addArmoredKeyring(p, text); err != nil {
				return nil, err
			}
		case len(b) > 0 && b[0]&0x80 != 0 && !utf8.Valid(b):
			// A binary OpenPGP packet stream (gpg --export without --armor).
			el, err := openpgp.ReadKeyRing(bytes.NewReader(b))
			if err != nil {
				return nil, fmt.Errorf("gitsync: trust file %s: reading it as a binary OpenPGP keyring: %w: export the keys again (gpg --armor --export KEYID)", p, err)
			}
			t.pgp = append(t.pgp, el...)
		default:
			if err := t.addAllowedSigners(p, string(b)); err != nil {
				return nil, err
			}
		}
		if len(t.pgp)+len(t.ssh) == before {
			return nil, fmt.Errorf("gitsync: trust file %s holds no usable key: add an OpenPGP public key or an allowed_signers line (principal ssh-ed25519 AAAA…), or drop the file", p)
		}
	}
	return t, nil
}

// addArmoredKeyring reads every armored public key block of a file (gpg
// writes one block, but files are often concatenated).
func (t *Trust) addArmoredKeyring(path, text string) error {
	for i, block := range strings.SplitAfter(text, "-----END PGP PUBLIC KEY BLOCK-----") {
		block = strings.TrimSpace(block)
		if block == "" {
			continue
		}
		el, err := openpgp.ReadArmoredKeyRing(strings.NewReader(block))
		if err != nil {
			return fmt.Errorf("gitsync: trust file %s: OpenPGP key block %d: %w: export the keys again (gpg --armor --export KEYID)", path, i+1, err)
		}
		t.pgp = append(t.pgp, el...)
	}
	return nil
}

// addAllowedSigners parses an allowed_signers file.
func (t *Trust) addAllowedSigners(path, text string) error {
	for n, line := range strings.Split(text, "\n") {
		where := fmt.Sprintf("%s:%d", path, n+1)
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s, ignored, err := parseAllowedSigner(line)
		if err != nil {
			return fmt.Errorf("gitsync: trust file %s: %w (format: principals [options] keytype base64-key [comment], see ssh-keygen(1) ALLOWED SIGNERS)", where, err)
		}
		if ignored != "" {
			t.warnings = append(t.warnings, where+": "+ignored)
			continue
		}
		s.where = where
		t.ssh = append(t.ssh, s)
	}
	return nil
}

// parseAllowedSigner parses one non-empty, non-comment line. ignored, when
// set, says why a well-formed line is not used.
func parseAllowedSigner(line string) (s allowedSigner, ignored string, err error) {
	var rest string
	if strings.HasPrefix(line, `"`) {
		end := strings.Index(line[1:], `"`)
		if end < 0 {
			return s, "", errors.New("the principals' closing quote is missing")
		}
		s.principals, rest = line[1:end+1], line[end+2:]
	} else {
		i := strings.IndexAny(line, " \t")
		if i < 0 {
			return s, "", errors.New("no key after the principals")
		}
		s.principals, rest = line[:i], line[i:]
	}
	if s.principals == "" {
		return s, "", errors.New("the principals are empty")
	}
	// The rest is "[options] keytype base64-key [comment]", which is the
	// authorized_keys syntax, options included.
	key, _, options, _, err := ssh.ParseAuthorizedKey([]byte(strings.TrimSpace(rest)))
	if err != nil {
		return s, "", fmt.Errorf("no valid public key after the principals: %w", err)
	}
	if _, ok := key.(*ssh.Certificate); ok {
		return s, "", errors.New("the key is a certificate; list the signer's plain public key")
	}
	s.key = key
	for _, opt := range options {
		name, value, _ := strings.Cut(opt, "=")
		switch strings.ToLower(name) {
		case "cert-authority":
			return s, "cert-authority line ignored: SSH certificates are not supported yet; list the signers' own keys instead", nil
		case "namespaces":
			s.namespaces = strings.Trim(value, `"`)
		case "valid-after", "valid-before":
			return s, "", fmt.Errorf("option %s is not supported yet: remove it, and remove the line when the key must no longer be trusted", name)
		default:
			return s, "", fmt.Errorf("unknown option %q", opt)
		}
	}
	return s, "", nil
}

// allows reports whether the line's namespaces option admits ns: any
// namespace without the option, else OpenSSH's pattern-list rules (comma
// separated, * and ? wildcards, a matching !pattern denies).
func (s allowedSigner) allows(ns string) bool {
	if s.namespaces == "" {
		return true
	}
	ok := false
	for _, p := range strings.Split(s.namespaces, ",") {
		p = strings.TrimSpace(p)
		if neg, found := strings.CutPrefix(p, "!"); found {
			if wildcardMatch(neg, ns) {
				return false
			}
			continue
		}
		ok = ok || wildcardMatch(p, ns)
	}
	return ok
}

// wildcardMatch is OpenSSH's match_pattern: '*' matches any run, '?' one
// character; nothing else is special.
func wildcardMatch(pattern, s string) bool {
	if pattern == "" {
		return s == ""
	}
	switch pattern[0] {
	case '*':
		for i := 0; i <= len(s); i++ {
			if wildcardMatch(pattern[1:], s[i:]) {
				return true
			}
		}
		return false
	case '?':
		return s != "" && wildcardMatch(pattern[1:], s[1:])
	}
	return s != "" && s[0] == pattern[0] && wildcardMatch(pattern[1:], s[1:])
}

// Files returns the trust files the keys came from.
func (t *Trust) Files() []string { return append([]string(nil), t.files...) }

// Warnings lists the lines of the trust files that were ignored, each with
// the file, the line and why; log them at startup.
func (t *Trust) Warnings() []string { return append([]string(nil), t.warnings...) }

// String summarises the trusted keys for a startup log line.
func (t *Trust) String() string {
	return fmt.Sprintf("%d SSH keys and %d OpenPGP keys from %s", len(t.ssh), len(t.pgp), strings.Join(t.files, ", "))
}
