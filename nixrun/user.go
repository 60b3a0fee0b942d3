package nixrun

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"
)

// UserError is the Error.Err of a run that could not switch to
// Runner.User: there is no such user, or this process may not switch
// users.
type UserError struct {
	User string
	Err  error
}

func (e *UserError) Error() string { return e.Err.Error() }
func (e *UserError) Unwrap() error { return e.Err }

// runAs is the user a run switches to (Runner.User).
type runAs struct {
	name string
	home string
	// cred is nil when the run already has that uid: no switch is needed.
	cred *syscall.Credential
}

// lookupUser resolves name (a user name or a numeric uid) to the
// credential a run switches to: its uid, its primary group and its
// supplementary groups. Switching needs root, or CAP_SETUID and CAP_SETGID;
// a process without them can only "switch" to itself. Errors are
// *UserError.
func lookupUser(name string) (*runAs, error) {
	r, err := lookupCredential(name)
	if err != nil {
		return nil, &UserError{User: name, Err: err}
	}
	return r, nil
}

func lookupCredential(name string) (*runAs, error) {
	u, err := user.Lookup(name)
	if _, nerr := strconv.ParseUint(name, 10, 32); err != nil && nerr == nil {
		u, err = user.LookupId(name)
	}
	if err != nil {
		return nil, fmt.Errorf("no user %q: %w", name, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %q has a non-numeric uid %q", name, u.Uid)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %q has a non-numeric gid %q", name, u.Gid)
	}
	r := &runAs{name: u.Username, home: u.HomeDir}
	if euid := os.Geteuid(); uint64(euid) == uid {
		return r, nil
	} else if euid != 0 && !canSwitchUser() {
		return nil, fmt.Errorf("running as user %q (uid %d) needs root or CAP_SETUID and CAP_SETGID; this process runs as uid %d without them",
			u.Username, uid, euid)
	}
	r.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	ids, err := u.GroupIds()
	if err != nil {
		return nil, fmt.Errorf("groups of user %q: %w", name, err)
	}
	for _, id := range ids {
		if g, err := strconv.ParseUint(id, 10, 32); err == nil {
			r.cred.Groups = append(r.cred.Groups, uint32(g))
		}
	}
	// Go sets exactly these supplementary groups (none when empty): the
	// run keeps none of root's.
	return r, nil
}

// canSwitchUser reports whether this process has CAP_SETUID and CAP_SETGID
// in its effective set (a daemon that is not root but was given them, e.g.
// by systemd's AmbientCapabilities).
func canSwitchUser() bool {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			const setgid, setuid = 1 << 6, 1 << 7
			return err == nil && caps&setgid != 0 && caps&setuid != 0
		}
	}
	return false
}

// keptForUser reports whether a variable of this process's environment is
// passed on to a run as another user. Only what nix needs to find programs,
// reach the network (certificates, proxies) and choose its store and
// settings is: the rest of a daemon's environment (credentials, tokens, the
// paths of its own state) is none of the other user's business.
func keptForUser(name string) bool {
	switch name {
	case "PATH", "TZ", "LANG", "LC_ALL", "TERM",
		"NIX_CONFIG", "NIX_REMOTE", "NIX_SSL_CERT_FILE", "SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE",
		"http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy",
		"HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "ALL_PROXY", "NO_PROXY":
		return true
	}
	return strings.HasPrefix(name, "LC_")
}

// userEnviron is the environment of a run as u: the kept variables of
// environ, then HOME, USER and LOGNAME of u (nix keeps its caches under
// HOME).
func userEnviron(environ []string, u *runAs) []string {
	var out []string
	for _, kv := range environ {
		if name, _, ok := strings.Cut(kv, "="); ok && keptForUser(name) {
			out = append(out, kv)
		}
	}
	return append(out, "HOME="+u.home, "USER="+u.name, "LOGNAME="+u.name)
}
