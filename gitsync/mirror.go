package gitsync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/storage"
	"github.com/go-git/go-git/v5/storage/memory"
)

// DefaultRef is the branch tracked when [Options.Ref] is empty.
const DefaultRef = "main"

// ErrRefNotFound means the remote does not have the tracked branch: it was
// deleted, never pushed, or --ref names the wrong branch. The mirror keeps
// its last known commit.
var ErrRefNotFound = errors.New("branch not found at the remote")

// Options configures a [Mirror].
type Options struct {
	// URL of the cluster repository: file://, a plain local path, https://
	// or ssh://. Required.
	URL string
	// Dir is the local mirror, a bare repository. It is created on the first
	// fetch and reused afterwards (also across restarts). Required.
	Dir string
	// Ref is the branch name to track; DefaultRef ("main") when empty.
	// "refs/heads/NAME" is accepted too.
	Ref string
	// Logger receives fetch results and errors; slog.Default() when nil.
	Logger *slog.Logger

	// Credentials. Each is a file, read at every fetch (so a rotated key or
	// a renewed token needs no restart) and refused when every user may
	// access it; their contents never reach logs, errors or the replicated
	// state. A password in URL still works but is discouraged: it is hidden
	// in everything gitsync prints, but it sits in the daemon's
	// configuration and command line.

	// SSHKeyFile is the private key for an ssh:// (or scp-like
	// user@host:path) remote, without passphrase. Required for SSH remotes.
	SSHKeyFile string
	// SSHKnownHostsFile lists the SSH server's host keys (OpenSSH
	// known_hosts format). An SSH remote needs it: Blixard does not connect
	// to a server whose key it cannot check, and never reads
	// ~/.ssh/known_hosts or an SSH agent.
	SSHKnownHostsFile string
	// SSHInsecureIgnoreHostKey connects to an SSH remote without checking
	// its host key, so anyone on the path can serve any commit. Only for
	// throw-away setups; it excludes SSHKnownHostsFile.
	SSHInsecureIgnoreHostKey bool
	// HTTPTokenFile holds an access token for an https:// remote (one
	// line), sent as the password of HTTP basic authentication.
	HTTPTokenFile string
	// HTTPUsername goes with HTTPTokenFile (DefaultHTTPUsername when empty).
	HTTPUsername string

	// caBundle adds trusted CAs for https:// remotes (tests).
	caBundle []byte
}

// Update is the result of one successful fetch.
type Update struct {
	// Commit is the SHA the tracked branch now points at.
	Commit string
	// Previous is the SHA the mirror knew before this fetch ("" on the
	// first fetch into a new mirror).
	Previous string
	// Changed is true when Commit differs from Previous.
	Changed bool
	// Rewritten is true when history was rewritten (a force-push):
	// Previous is not an ancestor of Commit. The new commit is followed.
	Rewritten bool
}

// Mirror is a bare local mirror of one branch of one remote repository.
// Its methods are safe for concurrent use.
type Mirror struct {
	url      string // as given, used for the transport
	safeURL  string // url without credentials, for logs and errors
	redact   redactor
	dir      string // absolute
	branch   plumbing.ReferenceName
	creds    credentials
	caBundle []byte
	logger   *slog.Logger // non-nil

	fetchMu sync.Mutex // serializes Fetch; held for the whole fetch

	mu   sync.Mutex // guards last
	last string     // guarded by mu; last resolved commit
}

// New validates o and returns a Mirror. It touches neither the disk nor the
// network: credential files are read by each fetch ([Mirror.CheckCredentials]
// reads them at once).
func New(o Options) (*Mirror, error) {
	if o.URL == "" {
		return nil, errors.New("gitsync: no repository URL: set the URL of the cluster repository")
	}
	red := redactor{raw: o.URL, safe: redactURL(o.URL), secrets: urlSecrets(o.URL)}
	ep, err := transport.NewEndpoint(o.URL)
	if err != nil {
		if len(red.secrets) > 0 {
			// The parser quotes pieces of the URL ("invalid port
			// \":PASSWORD\""), which redaction cannot recognise.
			return nil, fmt.Errorf("gitsync: invalid repository URL %q (the parser's message is not shown: it would show the URL's credentials): check its user information, and put a token in --git-token-file instead", red.safe)
		}
		return nil, fmt.Errorf("gitsync: invalid repository URL %q: %w: use file://, https://, ssh:// or a local path", red.safe, err)
	}
	creds, err := newCredentials(o, ep)
	if err != nil {
		return nil, err
	}
	if o.Dir == "" {
		return nil, errors.New("gitsync: no mirror directory: set the directory for the local bare mirror")
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("gitsync: mirror directory %q: %w", o.Dir, err)
	}
	ref := strings.TrimPrefix(o.Ref, "refs/heads/")
	if ref == "" {
		ref = DefaultRef
	}
	branch := plumbing.NewBranchReferenceName(ref)
	if strings.HasPrefix(ref, "refs/") || branch.Validate() != nil {
		return nil, fmt.Errorf("gitsync: invalid branch name %q: check --ref (a branch name such as %q)", o.Ref, DefaultRef)
	}
	logger := o.Logger
	if logger == nil {
		logger = slog.Default()
	}
	m := &Mirror{
		url:      o.URL,
		safeURL:  red.safe,
		redact:   red,
		dir:      dir,
		branch:   branch,
		creds:    creds,
		caBundle: o.caBundle,
		logger:   logger.With("repo", red.safe, "ref", ref),
	}
	if len(red.secrets) > 0 {
		m.logger.Warn("the repository URL carries a password or token: it is hidden in logs and errors, but it sits in the configuration and on the command line; use a token file (--git-token-file) or an SSH key (--git-ssh-key) instead")
	}
	return m, nil
}

// CheckCredentials reads and parses the credential files of the options
// (SSH key, known_hosts, token), as every fetch does, without touching the
// network: a startup or `--check-config` can report a missing or malformed
// file at once instead of as the first FetchFailed.
func (m *Mirror) CheckCredentials() error {
	if _, _, err := m.creds.auth(); err != nil {
		return fmt.Errorf("gitsync: credentials for %s: %w", m.safeURL, err)
	}
	return nil
}

// Dir returns the absolute path of the bare mirror repository. Evaluate
// [Mirror.FlakeURL] (`git+file://DIR?ref=refs/heads/NAME&rev=SHA`) against it.
func (m *Mirror) Dir() string { return m.dir }

// Ref returns the tracked branch as a full reference name,
// "refs/heads/NAME".
func (m *Mirror) Ref() string { return m.branch.String() }

// FlakeURL returns the flake reference for commit in the mirror,
// "git+file://DIR?ref=refs/heads/NAME&rev=SHA". The ref parameter is not
// optional in practice: nix (2.8) ignores a bare repository's HEAD and
// defaults ref to "master", so a rev-only reference fails on any other
// branch.
func (m *Mirror) FlakeURL(commit string) string {
	return GitFlakeURL(m.dir, m.branch.String(), commit)
}

// Last returns the last resolved commit SHA, or "" before the first
// successful fetch (or before a Fetch has read a reused mirror).
func (m *Mirror) Last() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.last
}

// Fetch brings the tracked branch of the remote into the mirror and resolves
// it to a commit. It creates the bare mirror on first use and reuses an
// existing one. A force-push is followed (and logged as a warning, with
// Update.Rewritten set). On error nothing changes: the mirror and Last keep
// the last known commit. A branch missing at the remote wraps
// ErrRefNotFound.
func (m *Mirror) Fetch(ctx context.Context) (Update, error) {
	m.fetchMu.Lock()
	defer m.fetchMu.Unlock()

	repo, err := m.open(ctx)
	if err != nil {
		return Update{}, err
	}

	// The local branch is the durable "last known commit": it survives
	// restarts, and a failed fetch does not move it.
	prev, err := m.localCommit(repo)
	if err != nil {
		return Update{}, err
	}
	m.setLast(prev)

	auth, secrets, err := m.creds.auth()
	if err != nil {
		return Update{}, fmt.Errorf("gitsync: fetch %s from %s: %w; keeping commit %s", m.branch.Short(), m.safeURL, err, orNone(prev))
	}
	spec := config.RefSpec(fmt.Sprintf("+%s:%s", m.branch, m.branch))
	err = m.remote(repo.Storer).FetchContext(ctx, &git.FetchOptions{
		RefSpecs: []config.RefSpec{spec},
		Auth:     auth,
		Tags:     git.NoTags,
		CABundle: m.caBundle,
	})
	if err != nil && !errors.Is(err, git.NoErrAlreadyUpToDate) {
		return Update{}, m.fetchError(err, prev, secrets)
	}

	cur, err := m.localCommit(repo)
	if err != nil {
		return Update{}, err
	}
	if cur == "" {
		// The fetch succeeded but did not write the ref: treat like a
		// missing branch rather than reporting an empty commit.
		return Update{}, fmt.Errorf("gitsync: fetch %s from %s: %w: check --ref", m.branch.Short(), m.safeURL, ErrRefNotFound)
	}

	u := Update{Commit: cur, Previous: prev, Changed: cur != prev}
	if u.Changed && prev != "" {
		u.Rewritten = !m.isAncestor(repo, prev, cur)
	}
	m.setLast(cur)

	switch {
	case u.Rewritten:
		m.logger.Warn("history rewritten (force-push): following the new commit", "previous", prev, "commit", cur)
	case u.Changed:
		m.logger.Info("new commit", "previous", orNone(prev), "commit", cur)
	default:
		m.logger.Debug("no new commit", "commit", cur)
	}
	return u, nil
}

// open opens the bare mirror. When it does not exist yet it is created, but
// only after the remote answered and has the branch, so a bad URL or ref
// leaves nothing on disk. HEAD is pointed at the tracked branch so tools
// that read the default branch (nix without ?ref=) see it.
func (m *Mirror) open(ctx context.Context) (*git.Repository, error) {
	repo, err := git.PlainOpen(m.dir)
	if errors.Is(err, git.ErrRepositoryNotExists) {
		if !isEmptyDir(m.dir) {
			return nil, fmt.Errorf("gitsync: mirror directory %s exists and is not a git repository: remove it or choose another mirror directory", m.dir)
		}
		if err := m.probe(ctx); err != nil {
			return nil, err
		}
		repo, err = git.PlainInitWithOptions(m.dir, &git.PlainInitOptions{
			Bare:        true,
			InitOptions: git.InitOptions{DefaultBranch: m.branch},
		})
		if err != nil {
			return nil, fmt.Errorf("gitsync: create bare mirror in %s: %w: check that the directory is writable", m.dir, err)
		}
		m.logger.Info("created bare mirror", "dir", m.dir)
	} else if err != nil {
		return nil, fmt.Errorf("gitsync: open mirror %s: %w: remove the directory to recreate the mirror", m.dir, err)
	}

	cfg, err := repo.Config()
	if err != nil {
		return nil, fmt.Errorf("gitsync: read config of mirror %s: %w: remove the directory to recreate the mirror", m.dir, err)
	}
	if !cfg.Core.IsBare {
		return nil, fmt.Errorf("gitsync: mirror directory %s is a non-bare repository: choose an empty directory for the mirror", m.dir)
	}

	head, err := repo.Storer.Reference(plumbing.HEAD)
	if err != nil || head.Type() != plumbing.SymbolicReference || head.Target() != m.branch {
		if err := repo.Storer.SetReference(plumbing.NewSymbolicReference(plumbing.HEAD, m.branch)); err != nil {
			return nil, fmt.Errorf("gitsync: point HEAD of mirror %s at %s: %w", m.dir, m.branch, err)
		}
	}
	return repo, nil
}

// probe lists the remote's refs without touching the disk and checks that
// the tracked branch is there.
func (m *Mirror) probe(ctx context.Context) error {
	auth, secrets, err := m.creds.auth()
	if err != nil {
		return fmt.Errorf("gitsync: fetch %s from %s: %w", m.branch.Short(), m.safeURL, err)
	}
	refs, err := m.remote(memory.NewStorage()).ListContext(ctx, &git.ListOptions{Auth: auth, CABundle: m.caBundle})
	if err != nil {
		return m.fetchError(err, "", secrets)
	}
	for _, r := range refs {
		if r.Name() == m.branch {
			return nil
		}
	}
	return m.fetchError(git.NoMatchingRefSpecError{}, "", nil)
}

func (m *Mirror) remote(s storage.Storer) *git.Remote {
	return git.NewRemote(s, &config.RemoteConfig{Name: "origin", URLs: []string{m.url}})
}

// fetchError turns a transport error into one that names the URL and says
// what to check. prev is the commit the mirror keeps; secrets are the
// credentials of this fetch. The transport's text is redacted (see
// redactor.err): net/http and go-git print a URL's user name, which may be
// a token.
func (m *Mirror) fetchError(err error, prev string, secrets []string) error {
	if errors.Is(err, git.NoMatchingRefSpecError{}) || errors.Is(err, transport.ErrEmptyRemoteRepository) {
		return fmt.Errorf("gitsync: fetch %s from %s: %w (deleted or never pushed?); keeping commit %s: check --ref and push the branch",
			m.branch.Short(), m.safeURL, ErrRefNotFound, orNone(prev))
	}
	err = m.redact.err(err, secrets...)
	var hk *HostKeyError
	switch {
	case errors.As(err, &hk):
		// The host key error says what to do itself.
		return fmt.Errorf("gitsync: fetch %s from %s: %w", m.branch.Short(), m.safeURL, err)
	case errors.Is(err, transport.ErrAuthenticationRequired), errors.Is(err, transport.ErrAuthorizationFailed),
		strings.Contains(err.Error(), "ssh: unable to authenticate"):
		return fmt.Errorf("gitsync: fetch %s from %s: %w: check the credentials for this remote (--git-ssh-key, --git-token-file)", m.branch.Short(), m.safeURL, err)
	default:
		return fmt.Errorf("gitsync: fetch %s from %s: %w: check that the URL is right and the repository is reachable", m.branch.Short(), m.safeURL, err)
	}
}

// localCommit returns the commit the mirror's branch points at, or "" when
// the mirror does not have the branch yet.
func (m *Mirror) localCommit(repo *git.Repository) (string, error) {
	ref, err := repo.Storer.Reference(m.branch)
	if errors.Is(err, plumbing.ErrReferenceNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("gitsync: read %s in mirror %s: %w: remove the directory to recreate the mirror", m.branch, m.dir, err)
	}
	return ref.Hash().String(), nil
}

// isAncestor reports whether prev is an ancestor of (or equal to) cur. When
// it cannot tell (prev's objects are gone), it reports false: the caller
// then treats the move as a rewrite, which only adds a warning.
func (m *Mirror) isAncestor(repo *git.Repository, prev, cur string) bool {
	pc, err := repo.CommitObject(plumbing.NewHash(prev))
	if err != nil {
		m.logger.Warn("previous commit not in mirror; cannot check ancestry", "previous", prev, "err", err)
		return false
	}
	cc, err := repo.CommitObject(plumbing.NewHash(cur))
	if err != nil {
		m.logger.Warn("fetched commit not readable in mirror", "commit", cur, "err", err)
		return false
	}
	ok, err := pc.IsAncestor(cc)
	if err != nil {
		m.logger.Warn("ancestry check failed", "previous", prev, "commit", cur, "err", err)
		return false
	}
	return ok
}

func (m *Mirror) setLast(c string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.last = c
}

func isEmptyDir(dir string) bool {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return true
	}
	return err == nil && len(ents) == 0
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
