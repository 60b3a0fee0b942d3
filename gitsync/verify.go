package gitsync

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	pgperrors "github.com/ProtonMail/go-crypto/openpgp/errors"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"golang.org/x/crypto/ssh"
)

// Unsigned is the signer of a commit without a signature.
const Unsigned = "unsigned"

const pgpSignatureBlock = "-----BEGIN PGP SIGNATURE-----"

// Verifier checks that commits of a repository (in Blixard, the leader's
// [Mirror]) are signed by a key of a [Trust]. It satisfies the reconciler's
// Verifier interface. It reads the repository on every call and keeps no
// state, so it is safe for concurrent use.
type Verifier struct {
	dir   string
	trust *Trust
}

// NewVerifier returns a Verifier of the commits in the repository at
// repoDir (bare or not; [Mirror.Dir] for the mirror). It reads nothing yet.
func NewVerifier(repoDir string, t *Trust) *Verifier {
	return &Verifier{dir: repoDir, trust: t}
}

// SignatureError says why a commit is not trusted. Retrying cannot help: the
// commit's signature (or its absence) is part of the commit, so only
// another commit (re-signed, or pushed on top) or other trust files can
// change the verdict.
type SignatureError struct {
	Commit string
	// Signer is who signed, as far as the signature says: the key
	// ("SSH key SHA256:…", "OpenPGP key 0123…"), with the trusted name when
	// the key is trusted; [Unsigned] when there is no signature.
	Signer string
	// Reason says why the signature does not make the commit trusted and
	// what to do.
	Reason string
}

func (e *SignatureError) Error() string {
	return fmt.Sprintf("commit %s is not trusted: signer %s: %s", e.Commit, e.Signer, e.Reason)
}

// Temporary is false: a refusal is final for its commit.
func (e *SignatureError) Temporary() bool { return false }

// readError is a commit the verifier could not read; it may be readable
// later (a fetch still writing, a disk error).
type readError struct{ err error }

func (e *readError) Error() string   { return e.err.Error() }
func (e *readError) Unwrap() error   { return e.err }
func (e *readError) Temporary() bool { return true }

// Verify returns who signed commit when the signature verifies against a
// trusted key: the trusted name and the key, such as "alice@example.org
// (SSH key SHA256:…)" or "Alice <alice@example.org> (OpenPGP key 0123…)".
//
// A commit that is unsigned, signed by a key the trust files do not hold,
// or whose signature does not verify gets a *[SignatureError] (Temporary
// false), and signer is its Signer. A commit that cannot be read gets an
// error whose Temporary() is true: it is worth asking again later.
func (v *Verifier) Verify(ctx context.Context, commit string) (signer string, err error) {
	if err := ctx.Err(); err != nil {
		return "", &readError{err}
	}
	c, err := v.readCommit(commit)
	if err != nil {
		return "", err
	}
	refuse := func(signer, reason string) (string, error) {
		return signer, &SignatureError{Commit: commit, Signer: signer, Reason: reason}
	}
	sig := strings.TrimSpace(c.PGPSignature)
	if sig == "" {
		return refuse(Unsigned, "the commit is not signed, and the trust files (--trust) admit only signed commits: sign it with a trusted key (git commit -S, or git commit --amend -S) and push again")
	}
	payload := &plumbing.MemoryObject{}
	if err := c.EncodeWithoutSignature(payload); err != nil {
		return "", &readError{fmt.Errorf("gitsync: encode commit %s of %s: %w", commit, v.dir, err)}
	}
	r, err := payload.Reader()
	if err != nil {
		return "", &readError{fmt.Errorf("gitsync: encode commit %s of %s: %w", commit, v.dir, err)}
	}
	message, err := io.ReadAll(r)
	if err != nil {
		return "", &readError{fmt.Errorf("gitsync: encode commit %s of %s: %w", commit, v.dir, err)}
	}
	switch {
	case strings.HasPrefix(sig, sshsigBegin):
		return v.verifySSH(sig, message, refuse)
	case strings.HasPrefix(sig, pgpSignatureBlock):
		return v.verifyPGP(sig, message, refuse)
	}
	first, _, _ := strings.Cut(sig, "\n")
	return refuse("unknown", fmt.Sprintf("the signature (%q) is neither OpenPGP nor SSH (an X.509 signature from gpgsm?); Blixard verifies OpenPGP and SSH signatures only: sign with gpg.format=openpgp or ssh", first))
}

// readCommit reads commit from the repository.
func (v *Verifier) readCommit(commit string) (*object.Commit, error) {
	if len(commit) != 40 {
		return nil, &SignatureError{Commit: commit, Signer: "unknown", Reason: "not a full commit SHA-1 (40 hex digits)"}
	}
	if _, err := hex.DecodeString(commit); err != nil {
		return nil, &SignatureError{Commit: commit, Signer: "unknown", Reason: "not a full commit SHA-1 (40 hex digits)"}
	}
	repo, err := git.PlainOpen(v.dir)
	if err != nil {
		return nil, &readError{fmt.Errorf("gitsync: verify commit %s: open repository %s: %w: check the mirror directory", commit, v.dir, err)}
	}
	c, err := repo.CommitObject(plumbing.NewHash(commit))
	if err != nil {
		return nil, &readError{fmt.Errorf("gitsync: verify commit %s: read it from %s: %w: it is checked again after the next fetch", commit, v.dir, err)}
	}
	return c, nil
}

type refuseFunc func(signer, reason string) (string, error)

// verifySSH checks an SSHSIG signature of message: well-formed, in the git
// namespace, valid for its own key, and that key listed in an
// allowed_signers trust file for the git namespace.
func (v *Verifier) verifySSH(armored string, message []byte, refuse refuseFunc) (string, error) {
	s, err := parseArmoredSSHSig(armored)
	if err != nil {
		return refuse("unknown", err.Error()+": sign the commit again (git commit --amend -S)")
	}
	key := "SSH key " + ssh.FingerprintSHA256(s.key)
	if _, ok := s.key.(*ssh.Certificate); ok {
		return refuse(key, "the commit is signed with an SSH certificate; certificates (cert-authority) are not supported yet: sign with a plain key listed in an allowed_signers trust file")
	}
	if s.namespace != gitNamespace {
		return refuse(key, fmt.Sprintf("the signature was made for namespace %q, not %q, so it is not a commit signature: sign with git commit -S (gpg.format=ssh)", s.namespace, gitNamespace))
	}
	if err := s.verify(message); err != nil {
		return refuse(key, err.Error())
	}
	want := s.key.Marshal()
	var excluded []string
	for _, a := range v.trust.ssh {
		if !bytes.Equal(a.key.Marshal(), want) {
			continue
		}
		if !a.allows(gitNamespace) {
			excluded = append(excluded, fmt.Sprintf("%s (namespaces=%q)", a.where, a.namespaces))
			continue
		}
		return fmt.Sprintf("%s (%s)", a.principals, key), nil
	}
	if len(excluded) > 0 {
		return refuse(key, fmt.Sprintf("the key is trusted for other namespaces only (%s): add git to its namespaces option", strings.Join(excluded, ", ")))
	}
	return refuse(key, "the key is in no allowed_signers trust file (--trust): sign with a trusted key, or add this key to an allowed_signers file if its owner may deploy")
}

// verifyPGP checks an OpenPGP signature of message against the trusted
// keyrings. Expired and revoked keys and expired signatures are refused,
// by the leader's clock at verification time.
func (v *Verifier) verifyPGP(armored string, message []byte, refuse refuseFunc) (string, error) {
	if n := strings.Count(armored, pgpSignatureBlock); n > 1 {
		return refuse("unknown", fmt.Sprintf("the commit carries %d OpenPGP signature blocks; a commit has one: sign it again (git commit --amend -S)", n))
	}
	issuer := pgpIssuer(armored)
	if len(v.trust.pgp) == 0 {
		return refuse(issuer, "the commit has an OpenPGP signature, but no trust file (--trust) is an OpenPGP keyring: add the signer's public key (gpg --armor --export KEYID) as a trust file, or sign with a trusted SSH key")
	}
	entity, err := openpgp.CheckArmoredDetachedSignature(v.trust.pgp, bytes.NewReader(message), strings.NewReader(armored), nil)
	if entity != nil {
		issuer = pgpName(entity)
	}
	switch {
	case err == nil:
		return issuer, nil
	case errors.Is(err, pgperrors.ErrUnknownIssuer):
		return refuse(issuer, "the key is in no OpenPGP trust file (--trust): sign with a trusted key, or add this key's public key to a trust file if its owner may deploy")
	case errors.Is(err, pgperrors.ErrKeyRevoked):
		return refuse(issuer, "the key is revoked: sign with a current trusted key")
	case errors.Is(err, pgperrors.ErrKeyExpired):
		return refuse(issuer, "the key has expired: extend it (gpg --quick-set-expire) and export it to the trust file again, or sign with a current key")
	case errors.Is(err, pgperrors.ErrSignatureExpired):
		return refuse(issuer, "the signature has expired: sign the commit again (git commit --amend -S)")
	}
	return refuse(issuer, fmt.Sprintf("the OpenPGP signature does not verify (%v): the commit was changed after it was signed, or the signature is corrupt", err))
}

// pgpIssuer names the key an armored OpenPGP signature claims to be made
// by, for a refusal: its fingerprint when the signature carries one, else
// its key ID.
func pgpIssuer(armored string) string {
	const unknown = "OpenPGP key (unknown)"
	block, err := armor.Decode(strings.NewReader(armored))
	if err != nil {
		return unknown
	}
	p, err := packet.NewReader(block.Body).Next()
	if err != nil {
		return unknown
	}
	sig, ok := p.(*packet.Signature)
	switch {
	case !ok:
		return unknown
	case len(sig.IssuerFingerprint) > 0:
		return "OpenPGP key " + strings.ToUpper(hex.EncodeToString(sig.IssuerFingerprint))
	case sig.IssuerKeyId != nil:
		return fmt.Sprintf("OpenPGP key %016X", *sig.IssuerKeyId)
	}
	return unknown
}

// pgpName names a trusted entity: its primary user ID and the primary
// key's fingerprint.
func pgpName(e *openpgp.Entity) string {
	key := "OpenPGP key " + strings.ToUpper(hex.EncodeToString(e.PrimaryKey.Fingerprint))
	if id := e.PrimaryIdentity(); id != nil && id.Name != "" {
		return fmt.Sprintf("%s (%s)", id.Name, key)
	}
	return key
}
