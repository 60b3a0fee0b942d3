package nodeagent

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/blixard/blixard/vmsnap"
)

// The identity a restored copy takes: read from the instance's network.env
// and given to the guest over its identity channel (vmsnap.Identity).

// netEnv is what network.env says of an instance: its committed identity.
// Zero without cluster networking (user-mode NICs have no identity to
// clash with another copy's).
type netEnv struct {
	Tap, MAC, Hostname, Domain string
	IP, Gateway, DNS           netip.Addr
	Prefix, MTU                int
}

// readNetEnv reads dir's network.env (the network component writes it
// before a start); zero without the file.
func readNetEnv(dir string) (netEnv, error) {
	b, err := os.ReadFile(filepath.Join(dir, "network.env"))
	if errors.Is(err, os.ErrNotExist) {
		return netEnv{}, nil
	}
	if err != nil {
		return netEnv{}, err
	}
	return parseNetEnv(b)
}

// parseNetEnv reads network.env's KEY=VALUE lines (the host contract in
// docs/architecture.md); keys it does not use are ignored, values it uses
// must parse.
func parseNetEnv(b []byte) (netEnv, error) {
	var e netEnv
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		v = strings.Trim(v, `"'`)
		if v == "" {
			continue
		}
		var err error
		switch k {
		case "BLIXARD_TAP":
			e.Tap = v
		case "BLIXARD_MAC":
			e.MAC = strings.ToLower(v)
		case "BLIXARD_HOSTNAME":
			e.Hostname = v
		case "BLIXARD_DOMAIN":
			e.Domain = v
		case "BLIXARD_IP":
			e.IP, err = netip.ParseAddr(v)
		case "BLIXARD_GATEWAY":
			e.Gateway, err = netip.ParseAddr(v)
		case "BLIXARD_DNS":
			e.DNS, err = netip.ParseAddr(v)
		case "BLIXARD_PREFIX":
			e.Prefix, err = strconv.Atoi(v)
		case "BLIXARD_MTU":
			e.MTU, err = strconv.Atoi(v)
		}
		if err != nil {
			return netEnv{}, fmt.Errorf("network.env: %s=%q: %w", k, v, err)
		}
	}
	return e, nil
}

// restoredIdentity is the identity a copy restored into the instance of
// env takes, with now and seed, and the address it must then report
// (invalid: none is committed). It is checked as the guest will get it
// (vmsnap.Identity.Command), so a bad network.env is found before qemu
// starts.
func restoredIdentity(env netEnv, now time.Time, seed [32]byte) (vmsnap.Identity, netip.Addr, error) {
	id := vmsnap.Identity{MAC: env.MAC, Hostname: env.Hostname, Time: now, Seed: seed}
	if env.IP.IsValid() {
		if env.Prefix <= 0 || env.Prefix > 32 {
			return vmsnap.Identity{}, netip.Addr{}, fmt.Errorf("network.env gives address %s without a prefix length (BLIXARD_PREFIX)", env.IP)
		}
		id.Addr = netip.PrefixFrom(env.IP, env.Prefix)
		id.Gateway, id.DNS, id.Domain, id.MTU = env.Gateway, env.DNS, env.Domain, env.MTU
	}
	if env.IP.IsValid() && env.MAC == "" {
		return vmsnap.Identity{}, netip.Addr{}, fmt.Errorf("network.env gives address %s but no MAC (BLIXARD_MAC): the node's DHCP lease is by MAC", env.IP)
	}
	if _, err := id.Command(); err != nil {
		return vmsnap.Identity{}, netip.Addr{}, fmt.Errorf("network.env: %w", err)
	}
	return id, env.IP, nil
}

// identifyGuest gives the guest behind dir's identity channel env's identity
// (the wall clock now, a fresh seed) and checks its answer. With open (a
// channel the restore pool kept open to a guest it restored ahead, frozen)
// the identity goes over it, without a new connection or hello; open is
// closed.
func identifyGuest(ctx context.Context, dir string, env netEnv, open *vmsnap.IdentityConn) (hello, answer time.Duration, g vmsnap.GuestIdentity, err error) {
	if open != nil {
		defer open.Close()
	}
	var seed [32]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return 0, 0, g, fmt.Errorf("a random seed for the guest: %w", err)
	}
	id, want, err := restoredIdentity(env, time.Now(), seed)
	if err != nil {
		return 0, 0, g, err
	}
	ctx, cancel := context.WithTimeout(ctx, identityTimeout)
	defer cancel()
	// The clock the guest sets is read when the line is sent, not when
	// the restore began.
	id.Time = time.Now()
	if open != nil {
		start := time.Now()
		if st := open.State(); st != vmsnap.GuestFrozen {
			return 0, 0, g, fmt.Errorf("the guest says it is %q, not %q: it was saved without being frozen", st, vmsnap.GuestFrozen)
		}
		r, err := open.Identify(ctx, id)
		if err != nil {
			return 0, 0, g, err
		}
		g, err = vmsnap.CheckIdentified(r, id, want)
		return 0, time.Since(start), g, err
	}
	r, err := vmsnap.IdentifyRestored(ctx, filepath.Join(dir, vmsnap.IdentitySocket), id)
	if err != nil {
		return r.HelloAfter, 0, g, err
	}
	g, err = vmsnap.CheckIdentified(r.Answer, id, want)
	return r.HelloAfter, r.AnswerAfter - r.HelloAfter, g, err
}

// freeze asks the guest behind dir's identity channel to take its NIC down
// before a save.
func freeze(ctx context.Context, dir string) error {
	ctx, cancel := context.WithTimeout(ctx, identityTimeout)
	defer cancel()
	c, err := vmsnap.DialIdentity(ctx, filepath.Join(dir, vmsnap.IdentitySocket))
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Freeze(ctx)
}
