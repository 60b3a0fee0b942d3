package pki

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// Role is what a user certificate allows; the API decides what each role
// may do.
type Role string

// The roles, from least to most allowed.
const (
	RoleRead    Role = "read"
	RoleOperate Role = "operate"
	RoleAdmin   Role = "admin"
)

// ParseRole returns the role named s, or an error listing the valid roles.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleRead, RoleOperate, RoleAdmin:
		return r, nil
	}
	return "", fmt.Errorf("role %q is not one of read, operate, admin", s)
}

// Kind says whether a certificate belongs to a node or to a user.
type Kind string

// The kinds of identity.
const (
	KindNode Kind = "node"
	KindUser Kind = "user"
)

// Identity is who a certificate was issued for.
type Identity struct {
	Kind Kind
	// Name is "node-ID" for a node, the user's name for a user.
	Name string
	// Role is the user's role; nodes are always [RoleAdmin].
	Role Role
	// NodeID is the node's id (> 0) for a node, 0 for a user.
	NodeID uint64
}

// The URI SAN scheme and the kinds of values it carries:
// blixard:node:ID, blixard:user:NAME, blixard:role:ROLE.
const (
	uriScheme = "blixard"
	uriNode   = "node"
	uriUser   = "user"
	uriRole   = "role"
)

func nodeURI(id uint64) *url.URL {
	return &url.URL{Scheme: uriScheme, Opaque: uriNode + ":" + strconv.FormatUint(id, 10)}
}

func userURIs(name string, role Role) []*url.URL {
	return []*url.URL{
		{Scheme: uriScheme, Opaque: uriUser + ":" + name},
		{Scheme: uriScheme, Opaque: uriRole + ":" + string(role)},
	}
}

// nodeName is a node's CN and file name.
func nodeName(id uint64) string { return "node-" + strconv.FormatUint(id, 10) }

// userNameRE keeps user names usable as file names and inside an opaque
// URI without escaping; e-mail-like CI names ("ci@example.org") fit.
var userNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)

// nodeNameRE matches the names node certificates use, which a user must
// not take: the files would collide, and a reader of the CN would be misled.
var nodeNameRE = regexp.MustCompile(`^node-[0-9]+$`)

func checkUserName(name string) error {
	if !userNameRE.MatchString(name) {
		return fmt.Errorf("user name %q must be 1–64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit", name)
	}
	if name == "ca" || nodeNameRE.MatchString(name) {
		return fmt.Errorf("user name %q is taken by the CA's or a node's files: choose another name", name)
	}
	return nil
}

// IdentityOf reads who cert was issued for from its blixard URI SANs. It
// does not verify cert: pass a certificate the TLS stack verified against
// the cluster CA (the first certificate of a connection's VerifiedChains),
// never one that was merely presented.
//
// A certificate must carry exactly one node or user URI, a user certificate
// exactly one role URI and a node certificate none; anything else, an
// unknown blixard URI included, is an error, so a certificate from a newer
// or tampered issuer is refused rather than read as less than it claims.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	if cert == nil {
		return Identity{}, errors.New("pki: identity of a nil certificate")
	}
	var nodes, users, roles []string
	for _, u := range cert.URIs {
		if u.Scheme != uriScheme {
			continue
		}
		kind, value, ok := strings.Cut(u.Opaque, ":")
		switch {
		case !ok:
			return Identity{}, fmt.Errorf("pki: certificate %q: malformed URI SAN %q", cert.Subject.CommonName, u)
		case kind == uriNode:
			nodes = append(nodes, value)
		case kind == uriUser:
			users = append(users, value)
		case kind == uriRole:
			roles = append(roles, value)
		default:
			return Identity{}, fmt.Errorf("pki: certificate %q: unknown URI SAN %q", cert.Subject.CommonName, u)
		}
	}
	cn := cert.Subject.CommonName
	switch {
	case len(nodes) == 1 && len(users) == 0:
		if len(roles) != 0 {
			return Identity{}, fmt.Errorf("pki: node certificate %q carries a role; nodes are admin and take none", cn)
		}
		id, err := strconv.ParseUint(nodes[0], 10, 64)
		if err != nil || id == 0 {
			return Identity{}, fmt.Errorf("pki: certificate %q: node id %q is not a number > 0", cn, nodes[0])
		}
		return Identity{Kind: KindNode, Name: nodeName(id), Role: RoleAdmin, NodeID: id}, nil
	case len(users) == 1 && len(nodes) == 0:
		if err := checkUserName(users[0]); err != nil {
			return Identity{}, fmt.Errorf("pki: certificate %q: %w", cn, err)
		}
		if len(roles) != 1 {
			return Identity{}, fmt.Errorf("pki: user certificate %q carries %d roles, want exactly 1", cn, len(roles))
		}
		role, err := ParseRole(roles[0])
		if err != nil {
			return Identity{}, fmt.Errorf("pki: user certificate %q: %w", cn, err)
		}
		return Identity{Kind: KindUser, Name: users[0], Role: role}, nil
	case len(nodes) == 0 && len(users) == 0:
		return Identity{}, fmt.Errorf("pki: certificate %q names no blixard node or user (no blixard:node: or blixard:user: URI SAN); issue one with `blixard cert issue`", cn)
	}
	return Identity{}, fmt.Errorf("pki: certificate %q names %d nodes and %d users, want exactly one of either", cn, len(nodes), len(users))
}
