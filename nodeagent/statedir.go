package nodeagent

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// The user and group microvm.nix's host module runs microvm@NAME and
// microvm-set-booted@NAME as (hard-coded there), and gives STATE/NAME and
// STATE/NAME/current to (install-microvm-NAME: chown -h microvm:kvm .
// current).
const (
	unitUser  = "microvm"
	unitGroup = "kvm"
)

// stateOwner is who STATE/NAME and its current link belong to.
type stateOwner struct {
	uid, gid int
	// set: the user and group exist. Without them (hosts without
	// microvm.nix's host module: `blixard dev`, the process backend) the
	// agent's files stay its own.
	set bool
}

// unitOwner is implemented by backends that know where their units'
// user is defined ([SystemdBackend] with SystemdOptions.Root).
type unitOwner interface {
	unitOwner() (stateOwner, error)
}

// ownerFor is who b's units run as: b's own answer, else microvm:kvm on
// this host.
func ownerFor(b Backend) (stateOwner, error) {
	if u, ok := b.(unitOwner); ok {
		return u.unitOwner()
	}
	return lookupOwner("")
}

// lookupOwner looks up unitUser and unitGroup by name: on this host (NSS)
// when root is "" or "/", else in root's etc/passwd and etc/group (a
// systemd that runs in a container). A missing user or group is no error:
// the owner is then unset.
func lookupOwner(root string) (stateOwner, error) {
	if root == "" || root == "/" {
		u, err := user.Lookup(unitUser)
		if errors.As(err, new(user.UnknownUserError)) {
			return stateOwner{}, nil
		}
		if err != nil {
			return stateOwner{}, fmt.Errorf("look up user %s: %w", unitUser, err)
		}
		g, err := user.LookupGroup(unitGroup)
		if errors.As(err, new(user.UnknownGroupError)) {
			return stateOwner{}, nil
		}
		if err != nil {
			return stateOwner{}, fmt.Errorf("look up group %s: %w", unitGroup, err)
		}
		return ownerFromIDs(u.Uid, g.Gid)
	}
	uid, err := idInFile(filepath.Join(root, "etc", "passwd"), unitUser)
	if err != nil || uid == "" {
		return stateOwner{}, err
	}
	gid, err := idInFile(filepath.Join(root, "etc", "group"), unitGroup)
	if err != nil || gid == "" {
		return stateOwner{}, err
	}
	return ownerFromIDs(uid, gid)
}

func ownerFromIDs(uid, gid string) (stateOwner, error) {
	u, err := strconv.Atoi(uid)
	if err != nil {
		return stateOwner{}, fmt.Errorf("user %s has uid %q: %w", unitUser, uid, err)
	}
	g, err := strconv.Atoi(gid)
	if err != nil {
		return stateOwner{}, fmt.Errorf("group %s has gid %q: %w", unitGroup, gid, err)
	}
	return stateOwner{uid: u, gid: g, set: true}, nil
}

// idInFile returns the id (third field) of name in a passwd or group file,
// "" when the file or the name is missing.
func idInFile(file, name string) (string, error) {
	f, err := os.Open(file)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("look up %s: %w", name, err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fields := strings.Split(s.Text(), ":"); len(fields) >= 3 && fields[0] == name {
			return fields[2], nil
		}
	}
	if err := s.Err(); err != nil {
		return "", fmt.Errorf("look up %s in %s: %w", name, file, err)
	}
	return "", nil
}

// switchCurrent points STATE/NAME/current at out the way microvm.nix's
// install-microvm-NAME does: STATE/NAME is made when missing, and it and
// current belong to the units' user and group (microvm:kvm) when b's
// system has them, so that microvm-set-booted@NAME, which runs as that
// user in STATE/NAME, can write booted and the runner its sockets there.
// The new link is made aside, given its owner and renamed over current, so
// current is never missing or root's. booted is not touched: the backend
// records it (microvm-set-booted@ under systemd).
func switchCurrent(b Backend, stateDir, name, out string) error {
	owner, err := ownerFor(b)
	if err != nil {
		return fmt.Errorf("state directory of %s: who owns it (microvm.nix's %s:%s): %w (check the host's user database)",
			name, unitUser, unitGroup, err)
	}
	return prepareStateDir(stateDir, name, out, owner)
}

func prepareStateDir(stateDir, name, out string, owner stateOwner) error {
	if err := makeStateRoot(stateDir, owner); err != nil {
		return err
	}
	dir := filepath.Join(stateDir, name)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("state directory: %w", err)
	}
	if err := chownIfNeeded(dir, owner); err != nil {
		return err
	}
	cur := filepath.Join(dir, "current")
	have, err := readLink(cur)
	if err != nil {
		return fmt.Errorf("read %s: %w", cur, err)
	}
	if have == out {
		return chownIfNeeded(cur, owner)
	}
	tmp := cur + ".tmp"
	_ = os.Remove(tmp)
	if err := os.Symlink(out, tmp); err != nil {
		return fmt.Errorf("switch %s: %w", cur, err)
	}
	if err := chownIfNeeded(tmp, owner); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, cur); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("switch %s: %w", cur, err)
	}
	return nil
}

// makeStateRoot makes STATE when it is missing, as microvm.nix's tmpfiles
// line does (microvm:kvm 0775). An existing STATE is host setup's and
// stays as it is.
func makeStateRoot(stateDir string, owner stateOwner) error {
	if err := os.MkdirAll(filepath.Dir(stateDir), 0o755); err != nil {
		return fmt.Errorf("state directory %s: %w (set --state-dir to a writable directory)", stateDir, err)
	}
	mode := os.FileMode(0o755)
	if owner.set {
		mode = 0o775
	}
	err := os.Mkdir(stateDir, mode)
	if errors.Is(err, os.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("state directory %s: %w (set --state-dir to a writable directory)", stateDir, err)
	}
	if !owner.set {
		return nil
	}
	if err := os.Chmod(stateDir, mode); err != nil { // Mkdir applied the umask
		return fmt.Errorf("state directory %s: %w", stateDir, err)
	}
	return chownIfNeeded(stateDir, owner)
}

// ownStateDir gives STATE/NAME and its current link, when they exist, to
// owner: a directory an agent made before it knew of the units' user (or
// made by hand) is repaired before a unit starts in it.
func ownStateDir(stateDir, name string, owner stateOwner) error {
	dir := filepath.Join(stateDir, name)
	for _, p := range []string{dir, filepath.Join(dir, "current")} {
		if err := chownIfNeeded(p, owner); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// chownIfNeeded gives path (not what a link points to) to owner unless it
// has it already or owner is unset.
func chownIfNeeded(path string, owner stateOwner) error {
	if !owner.set {
		return nil
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) == owner.uid && int(st.Gid) == owner.gid {
		return nil
	}
	if err := os.Lchown(path, owner.uid, owner.gid); err != nil {
		return fmt.Errorf("give %s to %s:%s (uid %d, gid %d), as microvm.nix's install-microvm-NAME does: %w (the agent must run as root)",
			path, unitUser, unitGroup, owner.uid, owner.gid, err)
	}
	return nil
}
