package gitsync

import (
	"context"
	"errors"
	"net/url"
	"strings"

	"github.com/go-git/go-git/v5/plumbing/transport"
)

// redacted stands in for a secret in everything gitsync prints.
const redacted = "xxxxx"

// minSecretLen is the shortest secret searched for in free text (transport
// error messages). Shorter values would mangle messages (a password "git"
// would hide every "git" in them); they are still hidden in every URL
// gitsync prints, because redactURL works on the URL's structure.
const minSecretLen = 4

// redactURL hides the credentials a repository URL may carry, so it can be
// logged and put into errors: a password always, and for http(s) URLs a
// user name given without a password too, since hosts accept a token there
// (https://TOKEN@github.com/…). An ssh:// user name ("git") is kept: SSH
// URLs carry no secret in it.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return redactUnparsed(s)
	}
	if u.User == nil {
		if u.Scheme == "" || u.Opaque != "" {
			return redactUnparsed(s) // scp-like or a local path
		}
		return s
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), redacted)
	} else if isHTTP(u.Scheme) {
		u.User = url.User(redacted)
	}
	return u.String()
}

// redactUnparsed is redactURL for a string url.Parse refuses (a password
// with a stray '%' or '/') or reads as opaque (an scp-like address):
// everything that could be user information is hidden, erring on the side
// of hiding too much.
func redactUnparsed(s string) string {
	if info := rawUserinfo(s); info != "" {
		return strings.Replace(s, info+"@", redacted+"@", 1)
	}
	return s
}

// rawUserinfo is what could be the user information of s without parsing
// it as a URL: everything between "://" and the last "@" (a password may
// hold '/' or '@'), or for an scp-like user@host:path the user part when it
// holds a ':' (a plain user name is no secret). "" when there is none.
func rawUserinfo(s string) string {
	if _, rest, ok := strings.Cut(s, "://"); ok {
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			return rest[:at]
		}
		return ""
	}
	if at := strings.Index(s, "@"); at > 0 && strings.Contains(s[:at], ":") {
		return s[:at]
	}
	return ""
}

func isHTTP(scheme string) bool {
	return strings.EqualFold(scheme, "https") || strings.EqualFold(scheme, "http")
}

// urlSecrets returns the secrets a repository URL carries: its password,
// and for http(s) a user name given without a password (a token).
func urlSecrets(s string) []string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		if info := rawUserinfo(s); info != "" {
			_, pass, _ := strings.Cut(info, ":")
			return []string{info, pass}
		}
		return nil
	}
	if p, ok := u.User.Password(); ok {
		return []string{p}
	}
	if isHTTP(u.Scheme) {
		return []string{u.User.Username()}
	}
	return nil
}

// redactor hides a mirror's URL credentials and tokens in error text.
type redactor struct {
	raw, safe string   // the URL as given and as printed
	secrets   []string // each also searched for in its URL-escaped forms
}

// text returns s with the raw URL replaced by its redacted form and every
// secret replaced by "xxxxx".
func (r redactor) text(s string, more ...string) string {
	if r.raw != "" && r.raw != r.safe {
		s = strings.ReplaceAll(s, r.raw, r.safe)
	}
	for _, sec := range append(append([]string(nil), r.secrets...), more...) {
		if len(sec) < minSecretLen {
			continue
		}
		for _, form := range []string{sec, url.QueryEscape(sec), url.PathEscape(sec),
			url.User(sec).String(), strings.TrimPrefix(url.UserPassword("", sec).String(), ":")} {
			s = strings.ReplaceAll(s, form, redacted)
		}
	}
	return s
}

// err returns err with its text redacted. The original error is dropped,
// because anything that unwraps it could print its text (a net/http
// url.Error keeps a token given as the URL's user name): only the sentinels
// callers test for, which carry no secret, stay reachable through
// errors.Is and errors.As.
func (r redactor) err(err error, more ...string) error {
	if err == nil {
		return nil
	}
	e := &redactedError{msg: r.text(err.Error(), more...)}
	for _, s := range []error{transport.ErrAuthenticationRequired, transport.ErrAuthorizationFailed,
		transport.ErrRepositoryNotFound, transport.ErrEmptyRemoteRepository, transport.ErrInvalidAuthMethod,
		context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, s) {
			e.kept = append(e.kept, s)
		}
	}
	var hk *HostKeyError
	if errors.As(err, &hk) {
		e.kept = append(e.kept, hk)
	}
	return e
}

// redactedError is an error whose text had its secrets removed; see
// redactor.err.
type redactedError struct {
	msg  string
	kept []error
}

func (e *redactedError) Error() string   { return e.msg }
func (e *redactedError) Unwrap() []error { return e.kept }
