package nixcache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/blixard/blixard/nixrun"
)

// Store is the local nix store as the cache reads it. [NixStore] is the
// real one.
type Store interface {
	// Invalid returns those of paths that are not valid in the store.
	Invalid(ctx context.Context, paths []string) ([]string, error)
	// Closure returns the infos of every path in the closures of roots,
	// which must all be valid.
	Closure(ctx context.Context, roots []string) ([]PathInfo, error)
}

// NixStore reads a nix store with nix-store and `nix path-info`, through
// nixrun.
type NixStore struct {
	// Nix is the nix binary (default "nix" from PATH); nix-store is taken
	// from beside it.
	Nix string
	// URL is the store to read (nix's --store; "" nix's default: the
	// host's store). A chroot store "local?root=DIR" keeps its files under
	// DIR (see [RealStoreDir]).
	URL string
	// Timeout bounds each nix run (default 2 minutes).
	Timeout time.Duration
}

// nixFeatures lets `nix path-info` run on hosts whose nix.conf does not
// enable the nix command.
const nixFeatures = "extra-experimental-features = nix-command"

func (s NixStore) run(ctx context.Context, program string, args ...string) ([]byte, error) {
	if s.URL != "" {
		args = append([]string{"--store", s.URL}, args...)
	}
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	out, err := nixrun.Runner{Nix: s.Nix}.Run(ctx, nixrun.Command{Program: program, Args: args, Timeout: timeout, ExtraConfig: nixFeatures})
	if err != nil {
		return nil, fmt.Errorf("reading the local nix store for the binary cache: %w", err)
	}
	return out, nil
}

// Invalid implements [Store].
func (s NixStore) Invalid(ctx context.Context, paths []string) ([]string, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	out, err := s.run(ctx, "nix-store", append([]string{"--check-validity", "--print-invalid"}, paths...)...)
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(out)), nil
}

// Closure implements [Store].
func (s NixStore) Closure(ctx context.Context, roots []string) ([]PathInfo, error) {
	if len(roots) == 0 {
		return nil, nil
	}
	out, err := s.run(ctx, "nix", append([]string{"path-info", "--json", "--recursive"}, roots...)...)
	if err != nil {
		return nil, err
	}
	return ParsePathInfoJSON(out)
}

// pathInfoJSON is one path of `nix path-info --json`.
type pathInfoJSON struct {
	Path       string   `json:"path"`
	NarHash    string   `json:"narHash"`
	NarSize    uint64   `json:"narSize"`
	References []string `json:"references"`
	Deriver    string   `json:"deriver"`
	Signatures []string `json:"signatures"`
	CA         string   `json:"ca"`
}

// ParsePathInfoJSON reads the output of `nix path-info --json`: a list of
// objects with "path" (nix up to 2.18) or an object keyed by path (2.19
// on; null for an invalid path). Hashes are normalised to "sha256:NIX32",
// references sorted; an invalid path is an error.
func ParsePathInfoJSON(b []byte) ([]PathInfo, error) {
	var raw []pathInfoJSON
	trimmed := strings.TrimSpace(string(b))
	switch {
	case strings.HasPrefix(trimmed, "["):
		if err := json.Unmarshal(b, &raw); err != nil {
			return nil, fmt.Errorf("nix path-info --json: %w", err)
		}
	case strings.HasPrefix(trimmed, "{"):
		var byPath map[string]*pathInfoJSON
		if err := json.Unmarshal(b, &byPath); err != nil {
			return nil, fmt.Errorf("nix path-info --json: %w", err)
		}
		for p, info := range byPath {
			if info == nil {
				return nil, fmt.Errorf("nix path-info --json: %s is not valid", p)
			}
			info.Path = p
			raw = append(raw, *info)
		}
	default:
		return nil, fmt.Errorf("nix path-info --json printed neither a list nor an object: %q", clip(trimmed))
	}
	out := make([]PathInfo, 0, len(raw))
	for _, r := range raw {
		if r.Path == "" || r.NarSize == 0 {
			return nil, fmt.Errorf("nix path-info --json: an entry without path or NAR size (%q)", r.Path)
		}
		h, err := NormalizeHash(r.NarHash)
		if err != nil {
			return nil, fmt.Errorf("nix path-info --json: %s: %w", r.Path, err)
		}
		refs := append([]string(nil), r.References...)
		sort.Strings(refs)
		out = append(out, PathInfo{Path: r.Path, NarHash: h, NarSize: r.NarSize, References: refs,
			Deriver: r.Deriver, Sigs: r.Signatures, CA: r.CA})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// RealStoreDir is where the files of storeDir's paths are on disk for the
// nix store URL: storeDir itself for the host's store ("", "auto",
// "daemon", "local", unix://…), ROOT/storeDir for a chroot store
// ("local?root=ROOT", or a plain absolute path, which nix reads as one),
// and the "real" parameter when given.
func RealStoreDir(storeURL, storeDir string) (string, error) {
	switch {
	case storeURL == "" || storeURL == "auto" || storeURL == "daemon" || storeURL == "local":
		return storeDir, nil
	case strings.HasPrefix(storeURL, "/"):
		return path.Join(storeURL, storeDir), nil
	}
	scheme, query, _ := strings.Cut(storeURL, "?")
	if scheme != "local" {
		if strings.HasPrefix(scheme, "unix://") || scheme == "daemon" {
			return storeDir, nil
		}
		return "", fmt.Errorf("store %q: the binary cache serves a local store only (its files are read from disk): use local?root=DIR or the host's store", storeURL)
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return "", fmt.Errorf("store %q: %w", storeURL, err)
	}
	if real := q.Get("real"); real != "" {
		return real, nil
	}
	if root := q.Get("root"); root != "" {
		if !path.IsAbs(root) {
			return "", errors.New("store " + storeURL + ": root must be an absolute path")
		}
		sd := storeDir
		if s := q.Get("store"); s != "" {
			sd = s
		}
		return path.Join(root, sd), nil
	}
	return storeDir, nil
}
