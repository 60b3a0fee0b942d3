package gitsync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
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
	// Auth is the optional credential for https:// or ssh:// remotes.
	Auth transport.AuthMethod
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
	url     string // as given, used for the transport
	safeURL string // url without a password, for logs and errors
	dir     string // absolute
	branch  plumbing.ReferenceName
	auth    transport.AuthMethod
	logger  *slog.Logger // non-nil

	fetchMu sync.Mutex // serializes Fetch; held for the whole fetch

	mu   sync.Mutex // guards last
	last string     // guarded by mu; last resolved commit
}

// New validates o and returns a Mirror. It touches neither the disk nor the
// network.
func New(o Options) (*Mirror, error) {
	if o.URL == "" {
		return nil, errors.New("gitsync: no repository URL: set the URL of the cluster repository")
	}
	if _, err := transport.NewEndpoint(o.URL); err != nil {
		return nil, fmt.Errorf("gitsync: invalid repository URL %q: %w: use file://, https://, ssh:// or a local path", redactURL(o.URL), err)
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
	safe := redactURL(o.URL)
	return &Mirror{
		url:     o.URL,
		safeURL: safe,
		dir:     dir,
		branch:  branch,
		auth:    o.Auth,
		logger:  logger.With("repo", safe, "ref", ref),
	}, nil
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

	spec := config.RefSpec(fmt.Sprintf("+%s:%s", m.branch, m.branch))
	err = m.remote(repo.Storer).FetchContext(ctx, &git.FetchOptions{
		RefSpecs: []config.RefSpec{spec},
		Auth:     m.auth,
		Tags:     git.NoTags,
	})
	if err != nil && !errors.Is(err, git.NoErrAlreadyUpToDate) {
		return Update{}, m.fetchError(err, prev)
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
	refs, err := m.remote(memory.NewStorage()).ListContext(ctx, &git.ListOptions{Auth: m.auth})
	if err != nil {
		return m.fetchError(err, "")
	}
	for _, r := range refs {
		if r.Name() == m.branch {
			return nil
		}
	}
	return m.fetchError(git.NoMatchingRefSpecError{}, "")
}

func (m *Mirror) remote(s storage.Storer) *git.Remote {
	return git.NewRemote(s, &config.RemoteConfig{Name: "origin", URLs: []string{m.url}})
}

// fetchError turns a transport error into one that names the URL and says
// what to check. prev is the commit the mirror keeps.
func (m *Mirror) fetchError(err error, prev string) error {
	switch {
	case errors.Is(err, git.NoMatchingRefSpecError{}), errors.Is(err, transport.ErrEmptyRemoteRepository):
		return fmt.Errorf("gitsync: fetch %s from %s: %w (deleted or never pushed?); keeping commit %s: check --ref and push the branch",
			m.branch.Short(), m.safeURL, ErrRefNotFound, orNone(prev))
	case errors.Is(err, transport.ErrAuthenticationRequired), errors.Is(err, transport.ErrAuthorizationFailed):
		return fmt.Errorf("gitsync: fetch %s from %s: %w: check the credentials for this remote", m.branch.Short(), m.safeURL, err)
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

// redactURL hides a password embedded in a URL so it never reaches logs or
// error messages.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}
