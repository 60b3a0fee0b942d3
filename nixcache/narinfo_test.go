package nixcache

import (
	"bytes"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Made by nix 2.8: `nix key generate-secret --key-name test-1` and
// `nix key convert-secret-to-public`.
const (
	nixSecret = "test-1:HSbP1/YToFFIZO1z+ibg56gCkG3TWLzYJx8QXDwRq4aiKnNMrjnykL27WN8db7edFraWyS06JUDwKfFXsjgFyQ=="
	nixPublic = "test-1:oipzTK458pC9u1jfHW+3nRa2lsktOiVA8CnxV7I4Bck="
)

func TestKeys(t *testing.T) {
	k, err := ParseSecretKey(nixSecret + "\n")
	if err != nil {
		t.Fatal(err)
	}
	if k.Name != "test-1" || k.Public() != nixPublic || k.String() != nixSecret {
		t.Errorf("nix's key read as %s / %s", k.Name, k.Public())
	}
	sig := k.Sign("1;/nix/store/x;sha256:y;1;")
	if !strings.HasPrefix(sig, "test-1:") || !Verify(nixPublic, "1;/nix/store/x;sha256:y;1;", sig) {
		t.Errorf("signature %s does not verify", sig)
	}
	for name, c := range map[string]struct{ pub, fp, sig string }{
		"other fingerprint": {nixPublic, "1;/nix/store/x;sha256:y;2;", sig},
		"other name":        {"test-2:" + strings.TrimPrefix(nixPublic, "test-1:"), "1;/nix/store/x;sha256:y;1;", sig},
		"bad public key":    {"test-1:AAAA", "1;/nix/store/x;sha256:y;1;", sig},
		"bad signature":     {nixPublic, "1;/nix/store/x;sha256:y;1;", "test-1:AAAA"},
	} {
		if Verify(c.pub, c.fp, c.sig) {
			t.Errorf("%s: verified", name)
		}
	}

	bad := map[string]string{
		"no name":          strings.TrimPrefix(nixSecret, "test-1"),
		"no colon":         "test-1",
		"not base64":       "test-1:!!!",
		"public as secret": nixPublic,
		"halves of two keys": "test-1:" + func() string {
			a, b := newKey(t, "a"), newKey(t, "b")
			sa, sb := strings.TrimPrefix(a.String(), "a:"), strings.TrimPrefix(b.String(), "b:")
			return sa[:44] + sb[44:]
		}(),
	}
	for name, s := range bad {
		if _, err := ParseSecretKey(s); err == nil {
			t.Errorf("ParseSecretKey(%s) accepted %q", name, s)
		}
	}
	if ValidPublicKey(nixPublic) != nil || ValidPublicKey(nixSecret) == nil || ValidPublicKey("x y:AAAA") == nil {
		t.Errorf("ValidPublicKey accepts or refuses the wrong keys")
	}
	if _, err := GenerateKey("a:b"); err == nil {
		t.Errorf("GenerateKey accepted a name with a colon")
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	file := filepath.Join(t.TempDir(), "cache", "secret-key")
	k, created, err := LoadOrCreateKey(file, "blixard-node-3")
	if err != nil || !created || k.Name != "blixard-node-3" {
		t.Fatalf("first start: %v %v %s", err, created, k.Name)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode: %v %v, want 0600", fi.Mode(), err)
	}
	again, created, err := LoadOrCreateKey(file, "blixard-node-3")
	if err != nil || created || again.Public() != k.Public() {
		t.Errorf("second start: %v %v, same key %v", err, created, again.Public() == k.Public())
	}
	// An operator's key keeps its own name.
	if err := os.WriteFile(file, []byte(nixSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if k, _, err := LoadOrCreateKey(file, "blixard-node-3"); err != nil || k.Public() != nixPublic {
		t.Errorf("operator's key: %v %s", err, k.Public())
	}
	if err := os.WriteFile(file, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreateKey(file, "blixard-node-3"); err == nil || !strings.Contains(err.Error(), file) {
		t.Errorf("damaged key file: %v, want an error naming it", err)
	}
}

func TestNix32(t *testing.T) {
	// Vectors from `nix-hash --type sha256 --to-base32`.
	for hx, want := range map[string]string{
		"0000000000000000000000000000000000000000000000000000000000000001": "0080000000000000000000000000000000000000000000000000",
		"ff00000000000000000000000000000000000000000000000000000000000000": "000000000000000000000000000000000000000000000000007z",
	} {
		b, _ := hex.DecodeString(hx)
		if got := nix32(b); got != want {
			t.Errorf("nix32(%s) = %s, want %s", hx, got, want)
		}
		back, err := parseNix32(want, 32)
		if err != nil || !bytes.Equal(back, b) {
			t.Errorf("parseNix32(%s) = %x, %v", want, back, err)
		}
	}
	for _, s := range []string{"e080000000000000000000000000000000000000000000000000", "zz80000000000000000000000000000000000000000000000000", "00"} {
		if _, err := parseNix32(s, 32); err == nil {
			t.Errorf("parseNix32(%s) accepted it", s)
		}
	}
}

func TestNormalizeHash(t *testing.T) {
	const want = "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"
	for _, in := range []string{
		want,
		"sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=", // `nix hash to-sri` of it
		"sha256:ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=",
		"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
	} {
		if got, err := NormalizeHash(in); got != want || err != nil {
			t.Errorf("NormalizeHash(%s) = %s, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"", "md5:abc", "sha256-AAAA", "sha256:abc", "sha512-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="} {
		if got, err := NormalizeHash(in); err == nil {
			t.Errorf("NormalizeHash(%q) = %s, want an error", in, got)
		}
	}
}

func TestNarInfo(t *testing.T) {
	k, _ := ParseSecretKey(nixSecret)
	p := PathInfo{
		Path:       "/nix/store/4yznhfbs039cq2vi09c7jvwq61ljwdr2-runner",
		NarHash:    "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s",
		NarSize:    936,
		References: []string{"/nix/store/4yznhfbs039cq2vi09c7jvwq61ljwdr2-runner", "/nix/store/vmasrh6wpz5fmrmkv9vbpkk9yxshm5vw-runner-lib"},
		Deriver:    "/nix/store/4q6811hf38vywycjhip3zfwi83kp0ddk-runner.drv",
		Sigs:       []string{"cache.nixos.org-1:abc", "test-1:stale"},
	}
	fp := "1;/nix/store/4yznhfbs039cq2vi09c7jvwq61ljwdr2-runner;sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s;936;" +
		"/nix/store/4yznhfbs039cq2vi09c7jvwq61ljwdr2-runner,/nix/store/vmasrh6wpz5fmrmkv9vbpkk9yxshm5vw-runner-lib"
	if p.Fingerprint() != fp {
		t.Errorf("Fingerprint() = %s\nwant %s", p.Fingerprint(), fp)
	}
	want := "StorePath: /nix/store/4yznhfbs039cq2vi09c7jvwq61ljwdr2-runner\n" +
		"URL: nar/4yznhfbs039cq2vi09c7jvwq61ljwdr2.nar\n" +
		"Compression: none\n" +
		"NarHash: sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s\n" +
		"NarSize: 936\n" +
		"References: 4yznhfbs039cq2vi09c7jvwq61ljwdr2-runner vmasrh6wpz5fmrmkv9vbpkk9yxshm5vw-runner-lib\n" +
		"Deriver: 4q6811hf38vywycjhip3zfwi83kp0ddk-runner.drv\n" +
		"Sig: " + k.Sign(fp) + "\n" +
		"Sig: cache.nixos.org-1:abc\n"
	if got := p.NarInfo("nar/4yznhfbs039cq2vi09c7jvwq61ljwdr2.nar", k); got != want {
		t.Errorf("NarInfo:\n%s\nwant\n%s", got, want)
	}
	p.References, p.Deriver, p.Sigs, p.CA = nil, "", nil, "fixed:r:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"
	got := p.NarInfo("nar/x.nar", k)
	if !strings.Contains(got, "References: \n") || strings.Contains(got, "Deriver") || !strings.HasSuffix(got, "CA: "+p.CA+"\n") {
		t.Errorf("NarInfo without references and deriver, with CA:\n%s", got)
	}
}

func TestHashPart(t *testing.T) {
	for in, want := range map[string]string{
		"/nix/store/4yznhfbs039cq2vi09c7jvwq61ljwdr2-runner":  "4yznhfbs039cq2vi09c7jvwq61ljwdr2",
		"4yznhfbs039cq2vi09c7jvwq61ljwdr2-runner":             "4yznhfbs039cq2vi09c7jvwq61ljwdr2",
		"/nix/store/4yznhfbs039cq2vi09c7jvwq61ljwdr2":         "",
		"/nix/store/4yznhfbs039cq2vi09c7jvwq61ljwdre-runner":  "", // e is no nix32 digit
		"/nix/store/4yznhfbs039cq2vi09c7jvwq61ljwdr2x-runner": "",
		"": "",
	} {
		if got := HashPart(in); got != want {
			t.Errorf("HashPart(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseRequest(t *testing.T) {
	const h = "4yznhfbs039cq2vi09c7jvwq61ljwdr2"
	for _, c := range []struct {
		path string
		kind reqKind
		hash string
	}{
		{"/nix-cache-info", reqCacheInfo, ""},
		{"/" + h + ".narinfo", reqNarInfo, h},
		{"/nar/" + h + ".nar", reqNar, h},
		{"/nar/" + h + ".narinfo", reqUnknown, ""},
		{"/x/" + h + ".narinfo", reqUnknown, ""},
		{"/" + h + ".nar", reqUnknown, ""},
		{"/nar/" + h + ".nar.xz", reqUnknown, ""},
		{"/nar/../" + h + ".nar", reqUnknown, ""},
		{"/" + h[:31] + ".narinfo", reqUnknown, ""},
		{"/" + strings.ToUpper(h) + ".narinfo", reqUnknown, ""},
		{"/log/" + h + "-x.drv", reqUnknown, ""},
		{"/", reqUnknown, ""},
	} {
		if kind, hash := parseRequest(c.path); kind != c.kind || hash != c.hash {
			t.Errorf("parseRequest(%q) = %d %q, want %d %q", c.path, kind, hash, c.kind, c.hash)
		}
	}
}

func TestRealStoreDir(t *testing.T) {
	for _, c := range []struct{ url, want string }{
		{"", "/nix/store"},
		{"auto", "/nix/store"},
		{"daemon", "/nix/store"},
		{"unix:///run/nix/socket", "/nix/store"},
		{"local", "/nix/store"},
		{"local?root=/srv/b", "/srv/b/nix/store"},
		{"/srv/b", "/srv/b/nix/store"},
		{"local?root=/srv/b&real=/data/store", "/data/store"},
		{"local?root=/srv/b&store=/gnu/store", "/srv/b/gnu/store"},
		{"ssh://host", "error"},
		{"https://cache.example.org", "error"},
		{"local?root=relative", "error"},
	} {
		got, err := RealStoreDir(c.url, "/nix/store")
		if err != nil {
			got = "error"
		}
		if got != c.want {
			t.Errorf("RealStoreDir(%q) = %q (%v), want %q", c.url, got, err, c.want)
		}
	}
}

func TestParsePathInfoJSON(t *testing.T) {
	// nix 2.8's list and nix 2.19's map of the same path.
	list := `[{"path":"/nix/store/4yznhfbs039cq2vi09c7jvwq61ljwdr2-runner","narHash":"sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=","narSize":936,` +
		`"references":["/nix/store/vmasrh6wpz5fmrmkv9vbpkk9yxshm5vw-runner-lib","/nix/store/4yznhfbs039cq2vi09c7jvwq61ljwdr2-runner"],"deriver":"/nix/store/4q6811hf38vywycjhip3zfwi83kp0ddk-runner.drv","registrationTime":1796163989,"ultimate":true}]`
	object := `{"/nix/store/4yznhfbs039cq2vi09c7jvwq61ljwdr2-runner":{"narHash":"sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=","narSize":936,` +
		`"references":["/nix/store/vmasrh6wpz5fmrmkv9vbpkk9yxshm5vw-runner-lib","/nix/store/4yznhfbs039cq2vi09c7jvwq61ljwdr2-runner"],"deriver":"/nix/store/4q6811hf38vywycjhip3zfwi83kp0ddk-runner.drv","signatures":["a:b"],"ca":null}}`
	for name, in := range map[string]string{"list": list, "object": object} {
		got, err := ParsePathInfoJSON([]byte(in))
		if err != nil || len(got) != 1 {
			t.Fatalf("%s: %v %v", name, got, err)
		}
		p := got[0]
		if p.Path != "/nix/store/4yznhfbs039cq2vi09c7jvwq61ljwdr2-runner" || p.NarHash != "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s" ||
			p.NarSize != 936 || len(p.References) != 2 || p.References[0] != "/nix/store/4yznhfbs039cq2vi09c7jvwq61ljwdr2-runner" ||
			p.Deriver != "/nix/store/4q6811hf38vywycjhip3zfwi83kp0ddk-runner.drv" {
			t.Errorf("%s: %+v", name, p)
		}
	}
	for name, in := range map[string]string{
		"invalid path": `{"/nix/store/4yznhfbs039cq2vi09c7jvwq61ljwdr2-runner":null}`,
		"no size":      `[{"path":"/nix/store/4yznhfbs039cq2vi09c7jvwq61ljwdr2-runner","narHash":"sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="}]`,
		"bad hash":     `[{"path":"/nix/store/4yznhfbs039cq2vi09c7jvwq61ljwdr2-runner","narHash":"md5:x","narSize":1}]`,
		"not json":     `error: something`,
	} {
		if got, err := ParsePathInfoJSON([]byte(in)); err == nil {
			t.Errorf("%s: %+v, want an error", name, got)
		}
	}
}

func TestClosureOf(t *testing.T) {
	infos := map[string]PathInfo{
		"/s/a": {Path: "/s/a", References: []string{"/s/a", "/s/b", "/s/c"}},
		"/s/b": {Path: "/s/b", References: []string{"/s/c"}},
		"/s/c": {Path: "/s/c"},
		"/s/d": {Path: "/s/d", References: []string{"/s/x"}},
	}
	if got, err := closureOf("/s/a", infos); err != nil || strings.Join(got, " ") != "/s/a /s/b /s/c" {
		t.Errorf("closureOf(a) = %v, %v", got, err)
	}
	if got, err := closureOf("/s/c", infos); err != nil || strings.Join(got, " ") != "/s/c" {
		t.Errorf("closureOf(c) = %v, %v", got, err)
	}
	if _, err := closureOf("/s/d", infos); err == nil {
		t.Errorf("closureOf(d) with a missing reference: no error")
	}
}

func TestAvailability(t *testing.T) {
	for _, c := range []struct {
		status   int
		building string
		want     Availability
	}{
		{http.StatusOK, "", Has},
		{http.StatusOK, "building", Has},
		{http.StatusNotFound, "", Missing},
		{http.StatusNotFound, "building", Building},
		{http.StatusNotFound, "queued", Queued},
		{http.StatusNotFound, "soon", Missing},
		{http.StatusServiceUnavailable, "building", Missing},
	} {
		if got := availability(c.status, c.building); got != c.want {
			t.Errorf("availability(%d, %q) = %v, want %v", c.status, c.building, got, c.want)
		}
	}
}
