package gitsync

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// requirePrograms fails the test, with the setup command, when a program
// it runs is missing.
func requirePrograms(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Fatalf("%s not found: run scripts/setup.sh (it installs git, gnupg and openssh-client): %v", n, err)
		}
	}
}

// run runs a program and returns its trimmed stdout.
func run(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// sshKeygen makes an Ed25519 key pair without passphrase at dir/name and
// returns the private key's path and the public key.
func sshKeygen(t *testing.T, dir, name string) (string, ssh.PublicKey) {
	t.Helper()
	p := filepath.Join(dir, name)
	run(t, dir, nil, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", p)
	b, err := os.ReadFile(p + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return p, pub
}

// gnupg is a throw-away GnuPG home. Its path is short: gpg-agent's socket
// lives in it, and socket paths are limited to 108 bytes.
type gnupg struct {
	t    *testing.T
	home string
}

func newGnuPG(t *testing.T) *gnupg {
	t.Helper()
	home, err := os.MkdirTemp("", "gpg")
	if err != nil {
		t.Fatal(err)
	}
	g := &gnupg{t: t, home: home}
	t.Cleanup(func() {
		// The agent gpg started for this home; it would outlive the test.
		_ = exec.Command("gpgconf", "--homedir", home, "--kill", "all").Run()
		_ = os.RemoveAll(home)
	})
	return g
}

func (g *gnupg) run(args ...string) string {
	g.t.Helper()
	return run(g.t, "", []string{"GNUPGHOME=" + g.home}, "gpg", append([]string{"--batch", "--no-tty"}, args...)...)
}

// genKey makes a signing key without passphrase and returns its
// fingerprint.
func (g *gnupg) genKey(uid string) string {
	g.t.Helper()
	g.run("--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never")
	for _, line := range strings.Split(g.run("--with-colons", "--list-secret-keys", uid), "\n") {
		if f, ok := strings.CutPrefix(line, "fpr:"); ok {
			return strings.Trim(f, ":")
		}
	}
	g.t.Fatalf("no fingerprint for %s", uid)
	return ""
}

func TestGitVerifyCommitsSignedBySSHKeygenAndGPG(t *testing.T) {
	requirePrograms(t, "git", "ssh-keygen", "gpg", "gpgconf")
	keys := t.TempDir()
	alice, alicePub := sshKeygen(t, keys, "alice")
	bob, bobPub := sshKeygen(t, keys, "bob")
	gpg := newGnuPG(t)
	carol := gpg.genKey("Carol <carol@example.org>")
	mallory := gpg.genKey("Mallory <mallory@example.org>")

	allowed := filepath.Join(keys, "allowed_signers")
	if err := os.WriteFile(allowed, []byte("alice@example.org "+string(ssh.MarshalAuthorizedKey(alicePub))), 0o644); err != nil {
		t.Fatal(err)
	}
	keyring := filepath.Join(keys, "carol.asc")
	if err := os.WriteFile(keyring, []byte(gpg.run("--armor", "--export", carol)), 0o644); err != nil {
		t.Fatal(err)
	}
	trust, err := LoadTrust(allowed, keyring)
	if err != nil {
		t.Fatalf("LoadTrust: %v", err)
	}

	up := newUpstream(t, "main")
	t.Setenv("GNUPGHOME", gpg.home)
	commit := func(msg string, signing ...string) string {
		t.Helper()
		up.n++
		if err := os.WriteFile(filepath.Join(up.work, "flake.nix"), []byte(msg+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		runGit(t, up.work, "add", "flake.nix")
		runGit(t, up.work, append(signing, "commit", "--quiet", "-m", msg)...)
		return runGit(t, up.work, "rev-parse", "HEAD")
	}
	sshSigned := func(key string) []string {
		return []string{"-c", "gpg.format=ssh", "-c", "user.signingkey=" + key, "-c", "commit.gpgsign=true"}
	}
	gpgSigned := func(fpr string) []string {
		return []string{"-c", "gpg.format=openpgp", "-c", "user.signingkey=" + fpr, "-c", "commit.gpgsign=true"}
	}
	aliceSSH := commit("signed by alice (ssh)", sshSigned(alice)...)
	carolGPG := commit("signed by carol (gpg)", gpgSigned(carol)...)
	unsigned := commit("unsigned")
	bobSSH := commit("signed by bob (ssh, untrusted)", sshSigned(bob)...)
	malloryGPG := commit("signed by mallory (gpg, untrusted)", gpgSigned(mallory)...)
	up.push("main")

	// Verify in the mirror, as the leader does.
	m := newMirror(t, Options{URL: up.fileURL(), Dir: filepath.Join(t.TempDir(), "mirror")})
	fetch(t, m)
	v := NewVerifier(m.Dir(), trust)

	aliceKey := "SSH key " + ssh.FingerprintSHA256(alicePub)
	for _, tt := range []struct {
		name    string
		commit  string
		signer  string
		trusted bool
	}{
		{"an ssh-keygen signature by a key in allowed_signers is trusted", aliceSSH, "alice@example.org (" + aliceKey + ")", true},
		{"a gpg signature by a key in the keyring is trusted", carolGPG, "Carol <carol@example.org> (OpenPGP key " + carol + ")", true},
		{"an unsigned commit is refused", unsigned, Unsigned, false},
		{"an ssh-keygen signature by another key is refused", bobSSH, "SSH key " + ssh.FingerprintSHA256(bobPub), false},
		{"a gpg signature by another key is refused", malloryGPG, "OpenPGP key " + mallory, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			signer, err := v.Verify(context.Background(), tt.commit)
			if signer != tt.signer {
				t.Errorf("signer = %q, want %q", signer, tt.signer)
			}
			if tt.trusted {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				return
			}
			var se *SignatureError
			if !errors.As(err, &se) || se.Commit != tt.commit {
				t.Fatalf("Verify: err = %v, want a refusal of %s", err, tt.commit)
			}
		})
	}

	t.Run("a binary keyring (gpg --export without --armor) works too", func(t *testing.T) {
		binary := filepath.Join(keys, "carol.gpg")
		gpg.run("--output", binary, "--export", carol)
		trust, err := LoadTrust(binary)
		if err != nil {
			t.Fatalf("LoadTrust: %v", err)
		}
		if signer, err := NewVerifier(m.Dir(), trust).Verify(context.Background(), carolGPG); err != nil || !strings.Contains(signer, carol) {
			t.Fatalf("Verify = %q, %v; want carol's key", signer, err)
		}
	})

	// git itself agrees on the SSH signatures (it runs ssh-keygen -Y verify).
	verifyCommit := func(c string) error {
		cmd := exec.Command("git", "-c", "gpg.ssh.allowedSignersFile="+allowed, "verify-commit", c)
		cmd.Dir = up.work
		cmd.Env = append(os.Environ(), gitEnv...)
		return cmd.Run()
	}
	if err := verifyCommit(aliceSSH); err != nil {
		t.Errorf("git verify-commit refuses alice's commit, which Verify trusts: %v", err)
	}
	if err := verifyCommit(bobSSH); err == nil {
		t.Error("git verify-commit accepts bob's commit, which Verify refuses")
	}
}
