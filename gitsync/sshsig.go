package gitsync

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"strings"

	"golang.org/x/crypto/ssh"
)

// SSH signatures as git makes them (gpg.format=ssh: `ssh-keygen -Y sign -n
// git`), in OpenSSH's SSHSIG format (PROTOCOL.sshsig). The commit's gpgsig
// header holds the armored blob:
//
//	byte[6] "SSHSIG"  uint32 version (1)  string publickey  string namespace
//	string reserved   string hash_algorithm  string signature
//
// and the key signed
//
//	byte[6] "SSHSIG"  string namespace  string reserved  string hash_algorithm
//	string H(message)
//
// where the message is the commit without its gpgsig header.

const (
	sshsigMagic   = "SSHSIG"
	sshsigVersion = 1
	sshsigBegin   = "-----BEGIN SSH SIGNATURE-----"
	sshsigEnd     = "-----END SSH SIGNATURE-----"
	// gitNamespace is the namespace git signs commits and tags in; a
	// signature made for another purpose (a file, a login) must not pass
	// as a commit signature.
	gitNamespace = "git"
)

// sshSignature is a parsed SSHSIG blob.
type sshSignature struct {
	key       ssh.PublicKey
	namespace string
	reserved  string
	hashAlg   string
	sig       *ssh.Signature
}

// parseArmoredSSHSig parses one armored SSHSIG block; anything around or
// after it (a second signature) is an error.
func parseArmoredSSHSig(armored string) (*sshSignature, error) {
	body, ok := strings.CutPrefix(strings.TrimSpace(armored), sshsigBegin)
	if !ok {
		return nil, errors.New("the SSH signature does not start with " + sshsigBegin)
	}
	body, ok = strings.CutSuffix(body, sshsigEnd)
	if !ok || strings.Contains(body, "-----") {
		return nil, errors.New("the SSH signature is not exactly one " + sshsigBegin + " block")
	}
	raw, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(body), ""))
	if err != nil {
		return nil, fmt.Errorf("the SSH signature is not valid base64: %w", err)
	}
	return parseSSHSig(raw)
}

// parseSSHSig parses a binary SSHSIG blob.
func parseSSHSig(raw []byte) (*sshSignature, error) {
	rest, ok := bytes.CutPrefix(raw, []byte(sshsigMagic))
	if !ok {
		return nil, errors.New("the SSH signature does not start with the SSHSIG magic")
	}
	var blob struct {
		Version   uint32
		PublicKey []byte
		Namespace string
		Reserved  string
		HashAlg   string
		Signature []byte
	}
	if err := ssh.Unmarshal(rest, &blob); err != nil {
		return nil, fmt.Errorf("the SSH signature is malformed: %w", err)
	}
	if blob.Version != sshsigVersion {
		return nil, fmt.Errorf("the SSH signature has version %d; only version %d exists", blob.Version, sshsigVersion)
	}
	key, err := ssh.ParsePublicKey(blob.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("the SSH signature's public key: %w", err)
	}
	sig := new(ssh.Signature)
	if err := ssh.Unmarshal(blob.Signature, sig); err != nil {
		return nil, fmt.Errorf("the SSH signature's signature field is malformed: %w", err)
	}
	return &sshSignature{key: key, namespace: blob.Namespace, reserved: blob.Reserved, hashAlg: blob.HashAlg, sig: sig}, nil
}

// verify checks the signature over message with the blob's own key. It
// does not say whether that key is trusted.
func (s *sshSignature) verify(message []byte) error {
	var h hash.Hash
	switch s.hashAlg {
	case "sha256":
		h = sha256.New()
	case "sha512":
		h = sha512.New()
	default:
		return fmt.Errorf("the SSH signature uses hash algorithm %q; SSHSIG allows sha256 and sha512", s.hashAlg)
	}
	if s.key.Type() == ssh.KeyAlgoRSA && s.sig.Format == ssh.KeyAlgoRSA {
		// SHA-1 RSA signatures are refused by OpenSSH for SSHSIG too.
		return errors.New("the SSH signature is an RSA signature with SHA-1 (ssh-rsa), which SSHSIG does not accept")
	}
	h.Write(message)
	signed := append([]byte(sshsigMagic), ssh.Marshal(struct {
		Namespace string
		Reserved  string
		HashAlg   string
		Hash      []byte
	}{s.namespace, s.reserved, s.hashAlg, h.Sum(nil)})...)
	if err := s.key.Verify(signed, s.sig); err != nil {
		return fmt.Errorf("the SSH signature does not verify (%v): the commit was changed after it was signed, or the signature is corrupt", err)
	}
	return nil
}
