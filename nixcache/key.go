package nixcache

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// SecretKey is a nix signing key: the format of `nix key generate-secret`
// ("NAME:BASE64", the 64-byte ed25519 private key: seed, then public key).
// Nix matches a signature to a trusted public key by NAME.
type SecretKey struct {
	Name string
	key  ed25519.PrivateKey
}

// GenerateKey returns a new key called name.
func GenerateKey(name string) (SecretKey, error) {
	if err := validKeyName(name); err != nil {
		return SecretKey{}, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return SecretKey{}, fmt.Errorf("generating the cache signing key %s: %w", name, err)
	}
	return SecretKey{Name: name, key: priv}, nil
}

// ParseSecretKey reads a secret key in nix's format.
func ParseSecretKey(s string) (SecretKey, error) {
	name, b, err := parseKey(strings.TrimSpace(s), ed25519.PrivateKeySize, "secret key")
	if err != nil {
		return SecretKey{}, err
	}
	priv := ed25519.PrivateKey(b)
	// The second half must be the public key of the first: a key file cut
	// and pasted together from two keys would sign with one and advertise
	// the other.
	if !ed25519.NewKeyFromSeed(priv.Seed()).Equal(priv) {
		return SecretKey{}, fmt.Errorf("secret key %s: its public half does not match its seed (a damaged key file?)", name)
	}
	return SecretKey{Name: name, key: priv}, nil
}

// Valid reports whether k holds a key (the zero SecretKey does not).
func (k SecretKey) Valid() bool { return len(k.key) == ed25519.PrivateKeySize }

// String is the key in nix's secret key format. It is the secret: write it
// only to a file only its owner reads.
func (k SecretKey) String() string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(k.key)
}

// Public is the public key in nix's format ("NAME:BASE64", what
// `nix key convert-secret-to-public` prints and trusted-public-keys lists).
func (k SecretKey) Public() string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(k.key.Public().(ed25519.PublicKey))
}

// Sign signs fingerprint (see [Fingerprint]) and returns the signature as
// a narinfo's Sig field holds it: "NAME:BASE64".
func (k SecretKey) Sign(fingerprint string) string {
	return k.Name + ":" + base64.StdEncoding.EncodeToString(ed25519.Sign(k.key, []byte(fingerprint)))
}

// ValidPublicKey checks a public key in nix's format; nix refuses to start
// with a malformed entry in trusted-public-keys, so keys read from the
// replicated state are checked before they are handed to it.
func ValidPublicKey(s string) error {
	_, _, err := parseKey(s, ed25519.PublicKeySize, "public key")
	return err
}

// Verify reports whether sig ("NAME:BASE64") is a signature of fingerprint
// by publicKey ("NAME:BASE64"), as nix checks one: the names must match too.
func Verify(publicKey, fingerprint, sig string) bool {
	name, pub, err := parseKey(publicKey, ed25519.PublicKeySize, "public key")
	if err != nil {
		return false
	}
	sname, sb, ok := strings.Cut(sig, ":")
	if !ok || sname != name {
		return false
	}
	raw, err := base64.StdEncoding.DecodeString(sb)
	if err != nil || len(raw) != ed25519.SignatureSize {
		return false
	}
	return ed25519.Verify(ed25519.PublicKey(pub), []byte(fingerprint), raw)
}

func parseKey(s string, size int, what string) (string, []byte, error) {
	name, b64, ok := strings.Cut(s, ":")
	if !ok {
		return "", nil, fmt.Errorf("%s %q: want NAME:BASE64 (as `nix key generate-secret` writes)", what, clip(s))
	}
	if err := validKeyName(name); err != nil {
		return "", nil, fmt.Errorf("%s: %w", what, err)
	}
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return "", nil, fmt.Errorf("%s %s: not base64: %w", what, name, err)
	}
	if len(b) != size {
		return "", nil, fmt.Errorf("%s %s: %d bytes, want %d (an ed25519 %s)", what, name, len(b), size, what)
	}
	return name, b, nil
}

func validKeyName(name string) error {
	if name == "" || strings.ContainsAny(name, ": \t\n") {
		return fmt.Errorf("key name %q: want a non-empty name without colons or white space", clip(name))
	}
	return nil
}

func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// LoadOrCreateKey reads the secret key in file, or, when file does not
// exist, generates one called name and writes it there (mode 0600, its
// directory 0700 when created). An existing key keeps its own name, so an
// operator may put a key from `nix key generate-secret` there instead.
func LoadOrCreateKey(file, name string) (key SecretKey, created bool, err error) {
	b, err := os.ReadFile(file)
	switch {
	case err == nil:
		k, err := ParseSecretKey(string(b))
		if err != nil {
			return SecretKey{}, false, fmt.Errorf("cache signing key %s: %w (delete it to have a new one generated)", file, err)
		}
		return k, false, nil
	case !errors.Is(err, os.ErrNotExist):
		return SecretKey{}, false, fmt.Errorf("reading the cache signing key: %w", err)
	}
	k, err := GenerateKey(name)
	if err != nil {
		return SecretKey{}, false, err
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return SecretKey{}, false, fmt.Errorf("cache signing key: %w", err)
	}
	// Written whole under another name and renamed, so a crash never leaves
	// a truncated key that the next start would refuse.
	tmp, err := os.CreateTemp(filepath.Dir(file), ".secret-key-*")
	if err != nil {
		return SecretKey{}, false, fmt.Errorf("cache signing key: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(k.String()); err != nil {
		tmp.Close()
		return SecretKey{}, false, fmt.Errorf("writing the cache signing key %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return SecretKey{}, false, fmt.Errorf("writing the cache signing key %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return SecretKey{}, false, fmt.Errorf("cache signing key: %w", err)
	}
	return k, true, nil
}
