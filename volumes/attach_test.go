package volumes

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/blixard/blixard/spec"
)

// fakeRbd is a stand-in for the rbd program (the test machines' kernels
// have no rbd driver): it appends its arguments to calls, and `device map`
// prints the device named by the file dev, or fails with the message in the
// file fail.
type fakeRbd struct {
	dir, bin string
}

func newFakeRbd(t *testing.T) *fakeRbd {
	t.Helper()
	dir := t.TempDir()
	f := &fakeRbd{dir: dir, bin: filepath.Join(dir, "rbd")}
	script := `#!/bin/sh
echo "$*" >>"` + dir + `/calls"
if [ -f "` + dir + `/fail" ]; then cat "` + dir + `/fail" >&2; exit 22; fi
case "$*" in *"device map"*) cat "` + dir + `/dev" ;; esac
`
	if err := os.WriteFile(f.bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fakeRbd) calls(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.dir, "calls"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Fields(strings.ReplaceAll(strings.TrimSpace(string(b)), " ", "_"))
}

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestKernelAttacherMapsLinksAdoptsAndUnmaps runs the kernel path against a
// stand-in rbd and sysfs: the map command line, the /dev/rbdN link at the
// volume path, the device given to the VM directory's owner, the kernel
// client's address, adoption by a second Attach and the unmap.
func TestKernelAttacherMapsLinksAdoptsAndUnmaps(t *testing.T) {
	rbd := newFakeRbd(t)
	root := t.TempDir()
	dev := filepath.Join(root, "dev", "rbd7") // stands in for /dev/rbd7
	write(t, dev, "")
	write(t, filepath.Join(rbd.dir, "dev"), dev+"\n")
	sysfs := filepath.Join(root, "sys")
	write(t, filepath.Join(sysfs, "7", "pool"), "rbd\n")
	write(t, filepath.Join(sysfs, "7", "name"), "c.db.data\n")
	write(t, filepath.Join(sysfs, "7", "client_addr"), "10.0.0.1:0/3021456\n")
	vmDir := filepath.Join(root, "state", "db")
	if err := os.MkdirAll(vmDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// microvm.nix's VM directories belong to microvm:kvm; the runner runs
	// as that user and must be able to open the device.
	if err := os.Chown(vmDir, 4242, 4343); err != nil {
		t.Fatal(err)
	}
	k := KernelAttacher{Config: Config{ConfigFile: "/etc/ceph/c.conf", User: "blixard", KeyringFile: "/etc/ceph/k"}, Rbd: rbd.bin, Sysfs: sysfs}
	v := spec.VolumeRef{Name: "data", Image: "c.db.data", Pool: "rbd", SizeMiB: 8}
	path := filepath.Join(vmDir, "volumes", "data")
	ctx := context.Background()

	a, err := k.Attach(ctx, nil, v, path)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"--id_blixard_-c_/etc/ceph/c.conf_--keyring_/etc/ceph/k_device_map_--exclusive_rbd/c.db.data"}; !slices.Equal(rbd.calls(t), want) {
		t.Errorf("rbd calls %q, want %q", rbd.calls(t), want)
	}
	if got, err := os.Readlink(path); err != nil || got != dev {
		t.Errorf("%s links to %q (%v), want %s", path, got, err, dev)
	}
	st, err := os.Stat(dev)
	if err != nil {
		t.Fatal(err)
	}
	if s := st.Sys().(*syscall.Stat_t); s.Uid != 4242 || s.Gid != 4343 {
		t.Errorf("device owner %d:%d, want the VM directory's 4242:4343", s.Uid, s.Gid)
	}
	if got := a.Addrs(); !slices.Equal(got, []string{"10.0.0.1:0/3021456"}) {
		t.Errorf("Addrs() = %v, want the kernel client's address from sysfs", got)
	}

	// A restarted agent adopts the mapping: no second map.
	a2, err := k.Attach(ctx, nil, v, path)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(rbd.calls(t)); n != 1 {
		t.Errorf("adopting ran rbd again: %q", rbd.calls(t))
	}
	a.Leave() // the mapping belongs to the kernel: nothing happens
	if err := a2.Detach(ctx); err != nil {
		t.Fatal(err)
	}
	if got := rbd.calls(t); len(got) != 2 || !strings.HasSuffix(got[1], "device_unmap_"+dev) {
		t.Errorf("rbd calls %q, want an unmap of %s last", got, dev)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("link %s after Detach: %v", path, err)
	}
}

func TestKernelAttacherErrorsNameTheImageAndTheWayOut(t *testing.T) {
	rbd := newFakeRbd(t)
	write(t, filepath.Join(rbd.dir, "fail"), "rbd: sysfs write failed\nrbd: map failed: (2) No such file or directory\n")
	k := KernelAttacher{Rbd: rbd.bin, Sysfs: t.TempDir()}
	path := filepath.Join(t.TempDir(), "db", "volumes", "data")
	_, err := k.Attach(context.Background(), nil, spec.VolumeRef{Name: "data", Image: "c.db.data", Pool: "rbd"}, path)
	if err == nil {
		t.Fatal("Attach succeeded although rbd failed")
	}
	for _, want := range []string{"rbd/c.db.data", "map failed: (2) No such file or directory", "modprobe rbd", "--volume-attach=daemon"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("a failed map left %s: %v", path, err)
	}

	// rbd printing something that is not a device is unmapped again.
	os.Remove(filepath.Join(rbd.dir, "fail"))
	write(t, filepath.Join(rbd.dir, "dev"), "mapped\n")
	_, err = k.Attach(context.Background(), nil, spec.VolumeRef{Name: "data", Image: "c.db.data", Pool: "rbd"}, path)
	if err == nil || !strings.Contains(err.Error(), "not a /dev/rbdN device") {
		t.Fatalf("Attach = %v, want an error about rbd's output", err)
	}
	if got := rbd.calls(t); len(got) != 3 || !strings.HasSuffix(got[2], "device_unmap_mapped") {
		t.Errorf("rbd calls %q, want the odd mapping unmapped", got)
	}
}

func TestDaemonArgsAndKeyring(t *testing.T) {
	dir := t.TempDir()
	keyring := filepath.Join(dir, "keyring")
	write(t, keyring, "[client.admin]\n\tkey = AAAA\n[client.blixard]\n\tkey = QkxJWEFSRA==\n\tcaps mon = \"allow r\"\n")
	if key, err := keyringKey(keyring, "client.blixard"); err != nil || key != "QkxJWEFSRA==" {
		t.Errorf("keyringKey = %q, %v", key, err)
	}
	if _, err := keyringKey(keyring, "client.nobody"); err == nil || !strings.Contains(err.Error(), "--ceph-user") {
		t.Errorf("keyringKey of a missing entity = %v, want an error naming --ceph-user", err)
	}
	a := DaemonAttacher{Config: Config{ConfigFile: "/etc/ceph/a,b.conf", User: "blixard"}}
	got := a.args(spec.VolumeRef{Pool: "rbd", Image: "c.db.data"}, "/s/db/volumes/data.new", "/s/db/volumes/data.key")
	want := []string{
		"--object", "secret,id=key,format=base64,file=/s/db/volumes/data.key",
		"--blockdev", "driver=rbd,node-name=disk,pool=rbd,image=c.db.data,user=blixard,cache.direct=on,discard=unmap,conf=/etc/ceph/a,,b.conf,key-secret=key",
		"--nbd-server", "addr.type=unix,addr.path=/s/db/volumes/data.new",
		"--export", "type=nbd,id=export,node-name=disk,writable=on,name=",
	}
	if !slices.Equal(got, want) {
		t.Errorf("args\n got %q\nwant %q", got, want)
	}
}

func TestAttachModes(t *testing.T) {
	for _, m := range []AttachMode{"", AttachAuto, AttachKernel, AttachDaemon} {
		if err := m.Check(); err != nil {
			t.Errorf("%q: %v", m, err)
		}
	}
	if err := AttachMode("nbd").Check(); err == nil || !strings.Contains(err.Error(), "--volume-attach") {
		t.Errorf("Check(nbd) = %v, want an error naming the flag", err)
	}
	if got := AttachKernel.resolve(); got != AttachKernel {
		t.Errorf("kernel resolves to %s", got)
	}
	want := AttachDaemon
	if KernelRBD() {
		want = AttachKernel
	}
	if got := AttachAuto.resolve(); got != want {
		t.Errorf("auto resolves to %s here, want %s", got, want)
	}
}
