// Command blixard-guest is the agent inside a blixard microVM whose runner
// saves or restores memory snapshots: the guest's side of the identity
// channel (package guestagent). Start it at boot, before the snapshot is
// taken, in the runner's snapshot modes; it runs until the VM stops.
//
//	blixard-guest -net dhcp -dhcp-command "udhcpc -i eth0 -s /etc/udhcpc.script -b"
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/blixard/blixard/guestagent"
	"github.com/blixard/blixard/vmsnap"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "blixard-guest:", err)
		os.Exit(1)
	}
}

func run() error {
	fs := flag.NewFlagSet("blixard-guest", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: blixard-guest [flags]\n\n"+
			"The guest's side of blixard's identity channel: freezes this guest before a snapshot\n"+
			"is saved and gives each copy restored from it its own MAC, hostname, clock, random\n"+
			"seed and address. Runs until the VM stops.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	port := fs.String("port", vmsnap.IdentityPort, "the virtio-serial port's name")
	iface := fs.String("iface", "eth0", "the NIC an identity configures")
	mode := fs.String("net", "user", "dhcp: the NIC takes its address by DHCP on a node's cluster network; user: it has the fixed -addr")
	addr := fs.String("addr", "", "the fixed address reported with -net user (empty: none)")
	dhcp := fs.String("dhcp-command", "", "the DHCP client and its arguments, split at spaces (with -net dhcp)")
	marker := fs.String("static-marker", "", "a file that exists while the address came from the host rather than a lease")
	resolv := fs.String("resolv-conf", "/etc/resolv.conf", "written from the host's dns= and domain=")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			return nil
		}
		return err
	}
	cfg := guestagent.Config{Iface: *iface, StaticMarker: *marker, ResolvConf: *resolv, DHCPAfter: 2 * time.Second}
	switch *mode {
	case "dhcp":
		cfg.DHCP = true
		if *dhcp == "" {
			return fmt.Errorf("-net dhcp needs -dhcp-command")
		}
	case "user":
	default:
		return fmt.Errorf("-net %q: want dhcp or user", *mode)
	}
	if *addr != "" && *addr != "none" {
		a, err := netip.ParseAddr(*addr)
		if err != nil {
			return fmt.Errorf("-addr: %w", err)
		}
		cfg.Addr = a
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("agent", "blixard-guest")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	f, err := guestagent.OpenPort(ctx, *port, 5*time.Second)
	if err != nil {
		return err
	}
	defer f.Close()
	agent := guestagent.New(ctx, cfg, guestagent.Linux{DHCPCommand: strings.Fields(*dhcp)}, log)
	log.Info("identity agent listening", "port", *port, "net", *mode)
	return agent.Serve(ctx, f)
}
