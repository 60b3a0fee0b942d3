package gitsync

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"golang.org/x/crypto/ssh"
)

// These tests build SSH signatures in Go, so they run without ssh-keygen;
// TestGitVerifyCommitsSignedBySSHKeygenAndGPG checks the same code against
// signatures made by git, ssh-keygen and gpg.

func newSSHKey(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// sshsig signs message as `ssh-keygen -Y sign -n namespace` would, with
// hashAlg, and returns the armored SSHSIG.
func sshsig(t *testing.T, key ssh.Signer, namespace, hashAlg string, message []byte) string {
	t.Helper()
	var sum []byte
	switch hashAlg {
	case "sha512":
		h := sha512.Sum512(message)
		sum = h[:]
	default:
		h := sha256.Sum256(message)
		sum = h[:]
	}
	signed := append([]byte(sshsigMagic), ssh.Marshal(struct {
		Namespace, Reserved, HashAlg string
		Hash                         []byte
	}{namespace, "", hashAlg, sum})...)
	sig, err := key.Sign(rand.Reader, signed)
	if err != nil {
		t.Fatal(err)
	}
	blob := append([]byte(sshsigMagic), ssh.Marshal(struct {
		Version   uint32
		PublicKey []byte
		Namespace string
		Reserved  string
		HashAlg   string
		Signature []byte
	}{1, key.PublicKey().Marshal(), namespace, "", hashAlg, ssh.Marshal(sig)})...)
	b64 := base64.StdEncoding.EncodeToString(blob)
	var lines []string
	for len(b64) > 70 {
		lines, b64 = append(lines, b64[:70]), b64[70:]
	}
	lines = append(lines, b64)
	return sshsigBegin + "\n" + strings.Join(lines, "\n") + "\n" + sshsigEnd + "\n"
}

// goRepo is a repository whose commits the test writes with go-git, with
// whatever signature it likes.
type goRepo struct {
	t    *testing.T
	dir  string
	repo *git.Repository
	tree plumbing.Hash
	n    int
}

func newGoRepo(t *testing.T) *goRepo {
	t.Helper()
	dir := t.TempDir()
	repo, err := git.PlainInit(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	obj := repo.Storer.NewEncodedObject()
	if err := (&object.Tree{}).Encode(obj); err != nil {
		t.Fatal(err)
	}
	tree, err := repo.Storer.SetEncodedObject(obj)
	if err != nil {
		t.Fatal(err)
	}
	return &goRepo{t: t, dir: dir, repo: repo, tree: tree}
}

// commit writes a commit whose gpgsig header is sign(payload), where
// payload is the commit without the header (nil sign: unsigned).
func (g *goRepo) commit(sign func(payload []byte) string) string {
	g.t.Helper()
	g.n++
	who := object.Signature{Name: "Alice", Email: "alice@example.org", When: time.Unix(1700000000+int64(g.n), 0).UTC()}
	c := &object.Commit{Author: who, Committer: who, Message: "change " + string(rune('a'+g.n)) + "\n", TreeHash: g.tree}
	if sign != nil {
		payload := &plumbing.MemoryObject{}
		if err := c.EncodeWithoutSignature(payload); err != nil {
			g.t.Fatal(err)
		}
		r, err := payload.Reader()
		if err != nil {
			g.t.Fatal(err)
		}
		b, err := io.ReadAll(r)
		if err != nil {
			g.t.Fatal(err)
		}
		c.PGPSignature = sign(b)
	}
	obj := g.repo.Storer.NewEncodedObject()
	if err := c.Encode(obj); err != nil {
		g.t.Fatal(err)
	}
	h, err := g.repo.Storer.SetEncodedObject(obj)
	if err != nil {
		g.t.Fatal(err)
	}
	return h.String()
}

func writeTrustFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func allowedLine(principals, options string, key ssh.Signer) string {
	line := principals + " "
	if options != "" {
		line += options + " "
	}
	return line + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key.PublicKey()))) + " a comment\n"
}

func TestVerifySSHSignatures(t *testing.T) {
	alice, bob, carol := newSSHKey(t), newSSHKey(t), newSSHKey(t)
	trustFile := writeTrustFile(t, "allowed_signers",
		"# deployers\n\n"+allowedLine("alice@example.org", "", alice)+
			allowedLine(`"carol@example.org"`, `namespaces="file,ssh*"`, carol))
	trust, err := LoadTrust(trustFile)
	if err != nil {
		t.Fatalf("LoadTrust: %v", err)
	}
	g := newGoRepo(t)
	v := NewVerifier(g.dir, trust)
	aliceKey := "SSH key " + ssh.FingerprintSHA256(alice.PublicKey())
	for _, tt := range []struct {
		name       string
		sign       func(payload []byte) string
		wantSigner string
		wantReason string // "" = trusted
	}{
		{"a commit signed by a trusted key in namespace git is trusted, with the principal and key",
			func(p []byte) string { return sshsig(t, alice, "git", "sha512", p) },
			"alice@example.org (" + aliceKey + ")", ""},
		{"sha256 works too",
			func(p []byte) string { return sshsig(t, alice, "git", "sha256", p) },
			"alice@example.org (" + aliceKey + ")", ""},
		{"an unsigned commit is refused as unsigned",
			nil, Unsigned, "not signed"},
		{"a key in no allowed_signers file is refused with its fingerprint",
			func(p []byte) string { return sshsig(t, bob, "git", "sha512", p) },
			"SSH key " + ssh.FingerprintSHA256(bob.PublicKey()), "in no allowed_signers trust file"},
		{"a trusted key's signature over other content is refused",
			func(p []byte) string { return sshsig(t, alice, "git", "sha512", append(p, "evil"...)) },
			aliceKey, "does not verify"},
		{"a signature in another namespace is refused",
			func(p []byte) string { return sshsig(t, alice, "file", "sha512", p) },
			aliceKey, `namespace "file"`},
		{"a key whose line excludes the git namespace is refused",
			func(p []byte) string { return sshsig(t, carol, "git", "sha512", p) },
			"SSH key " + ssh.FingerprintSHA256(carol.PublicKey()), "other namespaces only"},
		{"an unknown hash algorithm is refused",
			func(p []byte) string { return sshsigWithHash(t, alice, p, "md5") },
			aliceKey, "hash algorithm"},
		{"two signature blocks are refused",
			func(p []byte) string {
				return sshsig(t, alice, "git", "sha512", p) + sshsig(t, alice, "git", "sha512", p)
			},
			"unknown", "exactly one"},
		{"an X.509 signature is refused as unsupported",
			func([]byte) string {
				return "-----BEGIN SIGNED MESSAGE-----\nMIAGCSqGSIb3\n-----END SIGNED MESSAGE-----\n"
			},
			"unknown", "neither OpenPGP nor SSH"},
		{"an OpenPGP signature without an OpenPGP trust file is refused",
			func([]byte) string { return "-----BEGIN PGP SIGNATURE-----\n\niQ==\n-----END PGP SIGNATURE-----\n" },
			"OpenPGP key (unknown)", "no trust file (--trust) is an OpenPGP keyring"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			commit := g.commit(tt.sign)
			signer, err := v.Verify(context.Background(), commit)
			if signer != tt.wantSigner {
				t.Errorf("signer = %q, want %q", signer, tt.wantSigner)
			}
			if tt.wantReason == "" {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				return
			}
			var se *SignatureError
			if !errors.As(err, &se) {
				t.Fatalf("Verify: err = %v, want a *SignatureError", err)
			}
			if se.Commit != commit || se.Signer != tt.wantSigner || !strings.Contains(se.Reason, tt.wantReason) {
				t.Errorf("refusal %+v, want commit %s, signer %q and a reason containing %q", se, commit, tt.wantSigner, tt.wantReason)
			}
			if msg := err.Error(); !strings.Contains(msg, commit) || !strings.Contains(msg, tt.wantSigner) {
				t.Errorf("error %q does not name the commit and the signer", msg)
			}
			if se.Temporary() {
				t.Error("a refusal is Temporary")
			}
		})
	}
}

// sshsigWithHash is sshsig with an arbitrary hash algorithm name (the hash
// itself is sha256, which the verifier must not get to).
func sshsigWithHash(t *testing.T, key ssh.Signer, message []byte, alg string) string {
	t.Helper()
	armored := sshsig(t, key, "git", "sha256", message)
	s, err := parseArmoredSSHSig(armored)
	if err != nil {
		t.Fatal(err)
	}
	blob := append([]byte(sshsigMagic), ssh.Marshal(struct {
		Version   uint32
		PublicKey []byte
		Namespace string
		Reserved  string
		HashAlg   string
		Signature []byte
	}{1, s.key.Marshal(), "git", "", alg, ssh.Marshal(s.sig)})...)
	return sshsigBegin + "\n" + base64.StdEncoding.EncodeToString(blob) + "\n" + sshsigEnd + "\n"
}

func TestVerifyUnreadableCommitIsTemporary(t *testing.T) {
	alice := newSSHKey(t)
	trust, err := LoadTrust(writeTrustFile(t, "allowed_signers", allowedLine("alice", "", alice)))
	if err != nil {
		t.Fatal(err)
	}
	g := newGoRepo(t)
	_, err = NewVerifier(g.dir, trust).Verify(context.Background(), strings.Repeat("ab", 20))
	var tmp interface{ Temporary() bool }
	if !errors.As(err, &tmp) || !tmp.Temporary() {
		t.Fatalf("Verify of a commit the mirror does not have: err = %v, want a temporary error", err)
	}
	var se *SignatureError
	if errors.As(err, &se) {
		t.Fatalf("a missing commit was refused for good: %v", err)
	}
}

func TestLoadTrust(t *testing.T) {
	alice := newSSHKey(t)
	line := allowedLine("alice@example.org", "", alice)
	for _, tt := range []struct {
		name     string
		content  string
		wantErr  string // "" = loads
		ssh      int
		warnings int
	}{
		{"plain lines, comments and blank lines load", "# comment\n\n" + line + allowedLine("bob,carol", "", newSSHKey(t)), "", 2, 0},
		{"namespaces option loads", allowedLine("alice", `namespaces="git"`, alice), "", 1, 0},
		{"quoted principals load", allowedLine(`"alice@example.org,ops@example.org"`, "", alice), "", 1, 0},
		{"a cert-authority line is ignored with a warning", line + allowedLine("*@example.org", "cert-authority", newSSHKey(t)), "", 1, 1},
		{"only cert-authority lines are an error", allowedLine("*@example.org", "cert-authority", alice), "no usable key", 0, 0},
		{"valid-before is refused, not ignored", allowedLine("alice", `valid-before="20300101"`, alice), "valid-before is not supported", 0, 0},
		{"an unknown option is refused", allowedLine("alice", "no-touch-required", alice), "unknown option", 0, 0},
		{"a line without a key is refused with its line number", line + "bob\n", ":2:", 0, 0},
		{"a broken key is refused", "alice ssh-ed25519 AAAAnotbase64!!\n", "no valid public key", 0, 0},
		{"an empty file is an error", "\n# nobody\n", "no usable key", 0, 0},
		{"an OpenPGP private key is refused", "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nxx\n-----END PGP PRIVATE KEY BLOCK-----\n", "private key", 0, 0},
		{"a broken OpenPGP keyring is refused", "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nxx\n-----END PGP PUBLIC KEY BLOCK-----\n", "OpenPGP key block 1", 0, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := writeTrustFile(t, "trust", tt.content)
			trust, err := LoadTrust(p)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), p) {
					t.Fatalf("LoadTrust: err = %v, want one naming %s and containing %q", err, p, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("LoadTrust: %v", err)
			}
			if len(trust.ssh) != tt.ssh || len(trust.Warnings()) != tt.warnings {
				t.Errorf("%d SSH keys and warnings %q, want %d keys and %d warnings", len(trust.ssh), trust.Warnings(), tt.ssh, tt.warnings)
			}
			for _, w := range trust.Warnings() {
				if !strings.Contains(w, "not supported yet") || !strings.Contains(w, p+":") {
					t.Errorf("warning %q does not name the line and say why", w)
				}
			}
		})
	}
	if _, err := LoadTrust(); err == nil {
		t.Error("LoadTrust() without files succeeded")
	}
	if _, err := LoadTrust(filepath.Join(t.TempDir(), "missing")); err == nil || !strings.Contains(err.Error(), "--trust") {
		t.Errorf("LoadTrust of a missing file: err = %v, want one naming --trust", err)
	}
}

func TestNamespacePatterns(t *testing.T) {
	for _, tt := range []struct {
		namespaces string
		want       bool
	}{
		{"", true},
		{"git", true},
		{"file,git", true},
		{"file", false},
		{"g?t", true},
		{"*", true},
		{"*,!git", false},
		{"!git,*", false},
		{"gi", false},
		{"git*", true},
	} {
		if got := (allowedSigner{namespaces: tt.namespaces}).allows("git"); got != tt.want {
			t.Errorf("namespaces=%q allows git = %t, want %t", tt.namespaces, got, tt.want)
		}
	}
}
