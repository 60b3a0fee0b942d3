package nixcache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSubstituteFromPeer is the test: node A builds a runner in
// its store and serves it; node B, with a store of its own (a chroot
// store), substitutes the whole closure from A with nothing built; a NAR
// changed on the way and a path signed by a key B does not trust are
// refused.
func TestSubstituteFromPeer(t *testing.T) {
	requireNix(t)
	r := instantiate(t, 64<<10)
	r.build(t)
	keyA := newKey(t, "blixard-node-1")
	cache, err := NewCache(Options{Key: keyA})
	if err != nil {
		t.Fatal(err)
	}
	cache.SetRoots([]string{r.out})
	urlA := serveCache(t, cache)

	t.Run("substituted, not built", func(t *testing.T) {
		b := newPeerStore(t)
		log, err := b.substitute(urlA, []string{keyA.Public()}, r.out)
		if err != nil {
			t.Fatalf("node B could not substitute %s from A: %v\n%s", r.out, err, log)
		}
		t.Logf("nix's log on node B:\n%s", log)
		for _, p := range []string{r.out, r.lib} {
			if want := "copying path '" + p + "' from '" + urlA + "'"; !strings.Contains(log, want) {
				t.Errorf("nix's log does not say %q", want)
			}
			if !b.valid(t, p) {
				t.Errorf("%s is not valid in node B's store", p)
			}
		}
		if strings.Contains(log, "building '") {
			t.Errorf("node B built something:\n%s", log)
		}
		// Nix recorded A's signature and the NAR hash it checked; B's own
		// copy verifies against it.
		infos, err := ParsePathInfoJSON([]byte(run(t, nil, "nix", "path-info", "--store", b.url, "--json", r.out)))
		if err != nil || len(infos) != 1 {
			t.Fatalf("path-info of B's copy: %v (%d infos)", err, len(infos))
		}
		signed := false
		for _, s := range infos[0].Sigs {
			signed = signed || Verify(keyA.Public(), infos[0].Fingerprint(), s)
		}
		if !signed {
			t.Errorf("B's copy carries no valid signature of A's key: %v", infos[0].Sigs)
		}
		run(t, nil, "nix", "store", "verify", "--store", b.url, "--no-trust", "--recursive", r.out)
		// The files are A's, byte for byte.
		want, _ := os.ReadFile(filepath.Join(r.lib, "share", "blob"))
		got, err := os.ReadFile(filepath.Join(b.root, r.lib, "share", "blob"))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("B's copy of %s/share/blob differs from A's (%v)", r.lib, err)
		}
	})

	t.Run("tampered NAR refused", func(t *testing.T) {
		b := newPeerStore(t)
		proxy := serveTampering(t, urlA)
		log, err := b.substitute(proxy, []string{keyA.Public()}, r.out)
		t.Logf("nix's log on node B:\n%s", log)
		if err == nil {
			t.Fatalf("node B accepted a NAR changed on the way")
		}
		if !strings.Contains(log, "hash mismatch") {
			t.Errorf("nix's log does not name a hash mismatch")
		}
		for _, p := range []string{r.out, r.lib} {
			if b.valid(t, p) {
				t.Errorf("%s is valid in B's store after a tampered download", p)
			}
		}
	})

	t.Run("other key refused", func(t *testing.T) {
		b := newPeerStore(t)
		other := newKey(t, "blixard-node-1") // same name, another key
		log, err := b.substitute(urlA, []string{other.Public()}, r.out)
		t.Logf("nix's log on node B:\n%s", log)
		if err == nil {
			t.Fatalf("node B accepted paths signed by a key it does not trust")
		}
		if b.valid(t, r.out) || b.valid(t, r.lib) {
			t.Errorf("a path signed by another key became valid in B's store")
		}
		if strings.Contains(log, "copying path") {
			t.Errorf("nix copied a path it should have refused:\n%s", log)
		}
		if !strings.Contains(log, "is not signed by any of the keys in 'trusted-public-keys'") {
			t.Errorf("nix's log does not say the path is not signed by a trusted key")
		}
	})
}

// serveTampering serves a proxy to the cache at target that flips one byte
// in the middle of every NAR it passes on.
func serveTampering(t testing.TB, target string) string {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := httputil.NewSingleHostReverseProxy(u)
	p.ModifyResponse = func(resp *http.Response) error {
		if !strings.HasPrefix(resp.Request.URL.Path, "/nar/") || resp.StatusCode != http.StatusOK {
			return nil
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		b[len(b)/2] ^= 0x01
		resp.Body = io.NopCloser(bytes.NewReader(b))
		return nil
	}
	return serveHandler(t, p)
}

// TestServesOnlyTheRootsClosures: a valid path outside the roots' closures
// is not served, a root is served from the moment it is valid, and a root
// this node produces answers with BuildingHeader.
func TestServesOnlyTheRootsClosures(t *testing.T) {
	requireNix(t)
	served := instantiate(t, 1024)
	served.build(t)
	other := instantiate(t, 1024)
	other.build(t)
	later := instantiate(t, 1024)
	cache, err := NewCache(Options{Key: newKey(t, "blixard-node-1")})
	if err != nil {
		t.Fatal(err)
	}
	cache.SetRoots([]string{served.out, later.out})
	base := serveCache(t, cache)
	get := func(p string) (int, string, http.Header) {
		t.Helper()
		resp, err := http.Get(base + p)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}
	narinfo := func(p string) string { return "/" + HashPart(p) + ".narinfo" }

	for _, p := range []string{served.out, served.lib} {
		if code, _, _ := get(narinfo(p)); code != http.StatusOK {
			t.Errorf("narinfo of %s in a root's closure: %d, want 200", p, code)
		}
	}
	for _, p := range []string{other.out, other.lib, later.out} {
		if code, _, h := get(narinfo(p)); code != http.StatusNotFound || h.Get(BuildingHeader) != "" {
			t.Errorf("narinfo of %s: %d %q, want a plain 404", p, code, h.Get(BuildingHeader))
		}
		if code, _, _ := get("/nar/" + HashPart(p) + ".nar"); code != http.StatusNotFound {
			t.Errorf("NAR of %s: %d, want 404", p, code)
		}
	}
	cache.SetProducing(map[string]string{later.out: "building"})
	if code, _, h := get(narinfo(later.out)); code != http.StatusNotFound || h.Get(BuildingHeader) != "building" {
		t.Errorf("narinfo of a root being built: %d %s=%q, want 404 with building", code, BuildingHeader, h.Get(BuildingHeader))
	}
	if a, err := Probe(context.Background(), http.DefaultClient, base, later.out); a != Building || err != nil {
		t.Errorf("Probe of a root being built: %v %v, want building", a, err)
	}
	later.build(t)
	code, body, _ := get(narinfo(later.out))
	if code != http.StatusOK || !strings.Contains(body, "StorePath: "+later.out+"\n") {
		t.Errorf("narinfo of a root once built: %d\n%s", code, body)
	}
	if a, err := Probe(context.Background(), http.DefaultClient, base, later.lib); a != Has || err != nil {
		t.Errorf("Probe of a path in a built root's closure: %v %v, want has", a, err)
	}
	cache.SetRoots([]string{later.out})
	if code, _, _ := get(narinfo(served.lib)); code != http.StatusNotFound {
		t.Errorf("narinfo of a removed root's closure: %d, want 404", code)
	}
	if roots, paths := cache.Closures(); roots != 1 || paths != 2 {
		t.Errorf("Closures() = %d roots, %d paths; want 1, 2", roots, paths)
	}
	if code, body, _ := get("/nix-cache-info"); code != http.StatusOK || body != "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n" {
		t.Errorf("nix-cache-info: %d %q", code, body)
	}
	resp, err := http.Post(base+"/nix-cache-info", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d, want 405", resp.StatusCode)
	}
}

// TestWriteNARMatchesNix: the Go serialisation is nix's, byte for byte, and
// hashes to the NarHash nix recorded.
func TestWriteNARMatchesNix(t *testing.T) {
	requireNix(t)
	r := instantiate(t, 100_003) // not a multiple of 8: padding
	r.build(t)
	for _, p := range []string{r.out, r.lib} {
		want := run(t, nil, "nix-store", "--dump", p)
		var got bytes.Buffer
		if err := WriteNAR(&got, p); err != nil {
			t.Fatal(err)
		}
		if got.String() != want {
			t.Errorf("WriteNAR(%s): %d bytes differ from nix-store --dump's %d", p, got.Len(), len(want))
		}
		infos, err := NixStore{}.Closure(context.Background(), []string{p})
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(got.Bytes())
		for _, i := range infos {
			if i.Path == p && i.NarHash != "sha256:"+nix32(sum[:]) {
				t.Errorf("sha256 of WriteNAR(%s) = sha256:%s, nix recorded %s", p, nix32(sum[:]), i.NarHash)
			}
		}
	}
}

// TestClosureAgreesWithNix: NixStore.Closure lists what nix-store
// --query --requisites lists, with nix's own narinfo-relevant fields.
func TestClosureAgreesWithNix(t *testing.T) {
	requireNix(t)
	r := instantiate(t, 10)
	r.build(t)
	infos, err := NixStore{}.Closure(context.Background(), []string{r.out})
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Fields(run(t, nil, "nix-store", "--query", "--requisites", r.out))
	if len(infos) != len(want) {
		t.Fatalf("closure of %s: %d infos, nix-store lists %v", r.out, len(infos), want)
	}
	for _, i := range infos {
		if h := strings.TrimSpace(run(t, nil, "nix-store", "--query", "--hash", i.Path)); h != i.NarHash {
			t.Errorf("%s: NarHash %s, nix-store --query --hash says %s", i.Path, i.NarHash, h)
		}
		var raw []map[string]any
		_ = json.Unmarshal([]byte(run(t, nil, "nix", "path-info", "--json", i.Path)), &raw)
		if len(raw) == 1 && raw[0]["deriver"] != i.Deriver {
			t.Errorf("%s: deriver %q, nix says %v", i.Path, i.Deriver, raw[0]["deriver"])
		}
	}
	if invalid, err := (NixStore{}).Invalid(context.Background(), []string{r.out, "/nix/store/00000000000000000000000000000000-none"}); err != nil ||
		len(invalid) != 1 || invalid[0] != "/nix/store/00000000000000000000000000000000-none" {
		t.Errorf("Invalid = %v, %v; want only the made-up path", invalid, err)
	}
}
