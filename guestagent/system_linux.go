package guestagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Linux is the System of a Linux guest: system calls and netlink, and the
// DHCP client as a program.
type Linux struct {
	// DHCPCommand is the DHCP client and its arguments (no shell).
	DHCPCommand []string
}

func (Linux) SeedRandom(seed []byte) error {
	// Plain system calls: os.File's poller set-up is more code to run on a
	// restore's path.
	fd, err := unix.Open("/dev/urandom", unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	_, err = unix.Write(fd, seed)
	return err
}

func (Linux) SetHostname(name string) error { return unix.Sethostname([]byte(name)) }

func (Linux) Hostname() (string, error) { return os.Hostname() }

func (Linux) SetClock(t time.Time) error {
	tv := unix.NsecToTimeval(t.UnixNano())
	return unix.Settimeofday(&tv)
}

func (Linux) SetLink(iface string, mac net.HardwareAddr, mtu int, up bool) error {
	fd, err := ioctlSocket()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if mac != nil {
		if err := setHardwareAddr(fd, iface, mac); err != nil {
			return fmt.Errorf("MAC %s: %w", mac, err)
		}
	}
	if mtu > 0 {
		ifr, err := unix.NewIfreq(iface)
		if err != nil {
			return err
		}
		ifr.SetUint32(uint32(mtu))
		if err := unix.IoctlIfreq(fd, unix.SIOCSIFMTU, ifr); err != nil {
			return fmt.Errorf("MTU %d: %w", mtu, err)
		}
	}
	if up {
		if err := setFlag(fd, iface, unix.IFF_UP, true); err != nil {
			return fmt.Errorf("up: %w", err)
		}
	}
	return nil
}

func (Linux) AddAddr(iface string, p netip.Prefix) error {
	fd, err := ioctlSocket()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := setInet4(fd, iface, unix.SIOCSIFADDR, p.Addr().AsSlice()); err != nil {
		return err
	}
	// The netmask after the address: the kernel then adds the prefix's
	// route, as for `ip addr add ADDR/LEN`.
	if err := setInet4(fd, iface, unix.SIOCSIFNETMASK, net.CIDRMask(p.Bits(), 32)); err != nil {
		return fmt.Errorf("netmask /%d: %w", p.Bits(), err)
	}
	return nil
}

func (Linux) ReplaceDefaultRoute(iface string, gw netip.Addr) error {
	fd, err := ioctlSocket()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	dev, err := unix.BytePtrFromString(iface)
	if err != nil {
		return err
	}
	rt := rtentry{Flags: unix.RTF_UP | unix.RTF_GATEWAY, Dev: dev}
	for _, sa := range []*unix.RawSockaddrInet4{&rt.Dst, &rt.Gateway, &rt.Genmask} {
		sa.Family = unix.AF_INET
	}
	rt.Gateway.Addr = gw.As4()
	// The ioctl adds a second default route beside an old one: the old
	// ones go first (none on a restore's path: a freeze removed them).
	for range 16 {
		old := rtentry{Flags: unix.RTF_UP, Dst: rt.Dst, Genmask: rt.Genmask}
		if err := ioctlPtr(fd, unix.SIOCDELRT, unsafe.Pointer(&old)); errors.Is(err, unix.ESRCH) {
			break
		} else if err != nil {
			return fmt.Errorf("removing the old default route: %w", err)
		}
	}
	return ioctlPtr(fd, unix.SIOCADDRT, unsafe.Pointer(&rt))
}

func (Linux) Down(iface string) error {
	fd, err := ioctlSocket()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	// Setting the address 0.0.0.0 removes the interface's first IPv4
	// address; until none is left.
	for range 64 {
		ifr, err := unix.NewIfreq(iface)
		if err != nil {
			return err
		}
		if err := unix.IoctlIfreq(fd, unix.SIOCGIFADDR, ifr); errors.Is(err, unix.EADDRNOTAVAIL) {
			break
		} else if err != nil {
			return fmt.Errorf("reading the address: %w", err)
		}
		if err := setInet4(fd, iface, unix.SIOCSIFADDR, []byte{0, 0, 0, 0}); err != nil {
			return fmt.Errorf("removing the address: %w", err)
		}
	}
	return setFlag(fd, iface, unix.IFF_UP, false)
}

func (Linux) Link(iface string) (string, netip.Addr, error) {
	fd, err := ioctlSocket()
	if err != nil {
		return "", netip.Addr{}, err
	}
	defer unix.Close(fd)
	if len(iface) >= unix.IFNAMSIZ {
		return "", netip.Addr{}, fmt.Errorf("interface name %q too long", iface)
	}
	var hw ifreqHWAddr
	copy(hw.Name[:], iface)
	if err := ioctlPtr(fd, unix.SIOCGIFHWADDR, unsafe.Pointer(&hw)); err != nil {
		return "", netip.Addr{}, fmt.Errorf("reading the MAC: %w", err)
	}
	ifr, err := unix.NewIfreq(iface)
	if err != nil {
		return "", netip.Addr{}, err
	}
	var addr netip.Addr
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFADDR, ifr); err == nil {
		if a, err := ifr.Inet4Addr(); err == nil {
			addr, _ = netip.AddrFromSlice(a)
		}
	} else if !errors.Is(err, unix.EADDRNOTAVAIL) {
		return "", netip.Addr{}, fmt.Errorf("reading the address: %w", err)
	}
	return net.HardwareAddr(hw.Data[:6]).String(), addr, nil
}

// The NIC is configured with ioctls rather than netlink: a restored guest
// runs every code path anew under emulation, and these are the shortest.

func ioctlSocket() (int, error) {
	return unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
}

func ioctlPtr(fd int, req uint, p unsafe.Pointer) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(p)); e != 0 {
		return e
	}
	return nil
}

// ifreqHWAddr is struct ifreq with its union as a hardware address.
type ifreqHWAddr struct {
	Name   [unix.IFNAMSIZ]byte
	Family uint16
	Data   [14]byte
	_      [8]byte
}

func setHardwareAddr(fd int, iface string, mac net.HardwareAddr) error {
	if len(iface) >= unix.IFNAMSIZ || len(mac) > 14 {
		return fmt.Errorf("interface %q or MAC %s too long", iface, mac)
	}
	var r ifreqHWAddr
	copy(r.Name[:], iface)
	r.Family = unix.ARPHRD_ETHER
	copy(r.Data[:], mac)
	return ioctlPtr(fd, unix.SIOCSIFHWADDR, unsafe.Pointer(&r))
}

func setFlag(fd int, iface string, flag uint16, on bool) error {
	ifr, err := unix.NewIfreq(iface)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	flags := ifr.Uint16()
	if on {
		flags |= flag
	} else {
		flags &^= flag
	}
	ifr.SetUint16(flags)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

func setInet4(fd int, iface string, req uint, addr []byte) error {
	ifr, err := unix.NewIfreq(iface)
	if err != nil {
		return err
	}
	if err := ifr.SetInet4Addr(addr); err != nil {
		return err
	}
	return unix.IoctlIfreq(fd, req, ifr)
}

// rtentry is struct rtentry of a 64-bit Linux (Go lays the fields out as
// C does there).
type rtentry struct {
	pad1    uint64
	Dst     unix.RawSockaddrInet4
	Gateway unix.RawSockaddrInet4
	Genmask unix.RawSockaddrInet4
	Flags   uint16
	pad2    int16
	pad3    uint64
	pad4    uintptr
	Metric  int16
	Dev     *byte
	MTU     uint64
	Window  uint64
	IRTT    uint16
}

func (l Linux) RunDHCP(ctx context.Context) error {
	if len(l.DHCPCommand) == 0 {
		return errors.New("no DHCP client configured")
	}
	cmd := exec.CommandContext(ctx, l.DHCPCommand[0], l.DHCPCommand[1:]...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(l.DHCPCommand, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// StopDHCP ends the processes named like the client's program.
func (l Linux) StopDHCP(ctx context.Context) error {
	if len(l.DHCPCommand) == 0 {
		return nil
	}
	name := filepath.Base(l.DHCPCommand[0])
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	for {
		pids, err := processesNamed(name)
		if err != nil || len(pids) == 0 {
			return err
		}
		for _, pid := range pids {
			_ = unix.Kill(pid, syscall.SIGTERM)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s (pids %v) still runs: %w", name, pids, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func processesNamed(name string) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err == nil && strings.TrimSpace(string(comm)) == name {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

func (Linux) WriteFile(path string, data []byte) error { return os.WriteFile(path, data, 0o644) }

func (Linux) Remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func (Linux) Get(ctx context.Context, port int, path string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	// HTTP/1.0: the server closes the connection after its answer.
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.0\r\nHost: 127.0.0.1\r\nUser-Agent: blixard-guest-warmup\r\n\r\n"); err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, c)
	return err
}

func (Linux) Greet(gw netip.Addr) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	// Port 9 (discard): nothing is meant to answer.
	return unix.Sendto(fd, []byte{0}, unix.MSG_DONTWAIT, &unix.SockaddrInet4{Port: 9, Addr: gw.As4()})
}

// OpenPort opens the virtio-serial port named name
// (/sys/class/virtio-ports/*/name), waiting up to wait for its device to
// appear (the driver may still be loading). The file is in blocking mode:
// a write blocks until the host is connected and a read returns end of
// file when it leaves, which is what Agent.Serve expects.
func OpenPort(ctx context.Context, name string, wait time.Duration) (*os.File, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for {
		dirs, _ := filepath.Glob("/sys/class/virtio-ports/*")
		for _, d := range dirs {
			b, err := os.ReadFile(filepath.Join(d, "name"))
			if err != nil || strings.TrimSpace(string(b)) != name {
				continue
			}
			dev := "/dev/" + filepath.Base(d)
			fd, err := unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
			if err == nil {
				// os.NewFile keeps a blocking descriptor out of the poller.
				return os.NewFile(uintptr(fd), dev), nil
			}
			if !errors.Is(err, unix.ENOENT) {
				return nil, fmt.Errorf("opening %s (port %s): %w", dev, name, err)
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no virtio-serial port named %s appeared within %s (does qemu run with vmsnap.IdentityArgs, and is virtio_console loaded?)", name, wait)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

var _ = [1]struct{}{}[unsafe.Sizeof(rtentry{})-120] // struct rtentry is 120 bytes on 64-bit Linux
