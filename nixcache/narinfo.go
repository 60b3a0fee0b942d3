package nixcache

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"path"
	"strconv"
	"strings"
)

// PathInfo is what the store knows of one valid path, as a narinfo
// carries it.
type PathInfo struct {
	// Path is the full store path (/nix/store/HASH-NAME).
	Path string
	// NarHash is the SHA-256 of the path's NAR serialisation, as
	// "sha256:NIX32" (nix's base-32); [NormalizeHash] turns nix's other
	// spellings into it.
	NarHash string
	NarSize uint64
	// References are full store paths, sorted.
	References []string
	// Deriver is the full path of the .drv that built it ("" unknown).
	Deriver string
	// Sigs are signatures the store already has for it ("NAME:BASE64"),
	// e.g. cache.nixos.org's for paths substituted from there.
	Sigs []string
	// CA is the content address of a content-addressed path ("" none).
	CA string
}

// Fingerprint is what a narinfo signature signs, exactly as nix computes
// it: "1;PATH;NARHASH;NARSIZE;REF1,REF2,…" with full store paths.
func (p PathInfo) Fingerprint() string {
	return "1;" + p.Path + ";" + p.NarHash + ";" + strconv.FormatUint(p.NarSize, 10) + ";" + strings.Join(p.References, ",")
}

// HashPart is the hash part of a store path: the 32 characters of its
// base name before the first '-' ("" when path is not a store path).
func HashPart(storePath string) string {
	base := path.Base(storePath)
	if len(base) < hashPartLen+2 || base[hashPartLen] != '-' || !validHashPart(base[:hashPartLen]) {
		return ""
	}
	return base[:hashPartLen]
}

const hashPartLen = 32

func validHashPart(s string) bool {
	if len(s) != hashPartLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(nix32Alphabet, s[i]) < 0 {
			return false
		}
	}
	return true
}

// NarInfo renders p as a narinfo file served with the NAR at url
// (relative to the cache's root), uncompressed, signed by key: key's
// signature comes first, then the store's own signatures of the path.
func (p PathInfo) NarInfo(url string, key SecretKey) string {
	var b strings.Builder
	b.WriteString("StorePath: " + p.Path + "\n")
	b.WriteString("URL: " + url + "\n")
	b.WriteString("Compression: none\n")
	b.WriteString("NarHash: " + p.NarHash + "\n")
	b.WriteString("NarSize: " + strconv.FormatUint(p.NarSize, 10) + "\n")
	refs := make([]string, len(p.References))
	for i, r := range p.References {
		refs[i] = path.Base(r)
	}
	b.WriteString("References: " + strings.Join(refs, " ") + "\n")
	if p.Deriver != "" {
		b.WriteString("Deriver: " + path.Base(p.Deriver) + "\n")
	}
	own := key.Sign(p.Fingerprint())
	b.WriteString("Sig: " + own + "\n")
	for _, s := range p.Sigs {
		// A key of the same name must not be listed twice: nix keeps one
		// signature per key name, and the store's could be stale.
		if name, _, _ := strings.Cut(s, ":"); name != key.Name {
			b.WriteString("Sig: " + s + "\n")
		}
	}
	if p.CA != "" {
		b.WriteString("CA: " + p.CA + "\n")
	}
	return b.String()
}

// nix32Alphabet is nix's base-32 alphabet (no e, o, u, t).
const nix32Alphabet = "0123456789abcdfghijklmnpqrsvwxyz"

// nix32 encodes b as nix does: the last character holds the lowest bits
// of the first byte.
func nix32(b []byte) string {
	n := (len(b)*8-1)/5 + 1
	out := make([]byte, n)
	for i := n - 1; i >= 0; i-- {
		bit := i * 5
		j, k := bit/8, uint(bit%8)
		c := b[j] >> k
		if j+1 < len(b) {
			c |= b[j+1] << (8 - k)
		}
		out[n-1-i] = nix32Alphabet[c&0x1f]
	}
	return string(out)
}

// parseNix32 decodes a nix base-32 string of a size-byte hash.
func parseNix32(s string, size int) ([]byte, error) {
	if len(s) != (size*8-1)/5+1 {
		return nil, fmt.Errorf("base-32 hash %q: %d characters, want %d", s, len(s), (size*8-1)/5+1)
	}
	b := make([]byte, size)
	for i := 0; i < len(s); i++ {
		d := strings.IndexByte(nix32Alphabet, s[len(s)-1-i])
		if d < 0 {
			return nil, fmt.Errorf("base-32 hash %q: %q is not a nix base-32 digit", s, s[len(s)-1-i])
		}
		bit := i * 5
		j, k := bit/8, uint(bit%8)
		b[j] |= byte(d << k)
		carry := byte(d >> (8 - k))
		if j+1 < size {
			b[j+1] |= carry
		} else if carry != 0 {
			return nil, fmt.Errorf("base-32 hash %q: too large for %d bytes", s, size)
		}
	}
	return b, nil
}

// NormalizeHash turns a SHA-256 hash in any of nix's spellings —
// "sha256:NIX32", "sha256:HEX", "sha256:BASE64" or SRI "sha256-BASE64"
// (what `nix path-info --json` prints since 2.4) — into "sha256:NIX32",
// the form a narinfo's NarHash and its signed fingerprint need.
func NormalizeHash(h string) (string, error) {
	var (
		raw []byte
		err error
	)
	switch {
	case strings.HasPrefix(h, "sha256-"):
		raw, err = base64.StdEncoding.DecodeString(h[len("sha256-"):])
	case strings.HasPrefix(h, "sha256:"):
		v := h[len("sha256:"):]
		switch len(v) {
		case 52:
			raw, err = parseNix32(v, 32)
		case 64:
			raw, err = hex.DecodeString(v)
		case 44:
			raw, err = base64.StdEncoding.DecodeString(v)
		default:
			err = fmt.Errorf("%d characters is no encoding of a SHA-256 hash", len(v))
		}
	default:
		return "", fmt.Errorf("hash %q: want a sha256 hash (sha256:… or sha256-…)", clip(h))
	}
	if err == nil && len(raw) != 32 {
		err = fmt.Errorf("%d bytes, want 32", len(raw))
	}
	if err != nil {
		return "", fmt.Errorf("hash %q: %w", clip(h), err)
	}
	return "sha256:" + nix32(raw), nil
}
