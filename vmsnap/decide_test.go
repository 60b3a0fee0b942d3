package vmsnap

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestKey(t *testing.T) {
	const runner, qemu = "/nix/store/aaaa-microvm-web", "/usr/bin/qemu-system-x86_64"
	k := Key(runner, qemu)
	for _, tc := range []struct {
		name       string
		other      string
		wantDiffer bool
	}{
		{"the same runner and qemu give the same key", Key(runner, qemu), false},
		{"another runner gives another key", Key("/nix/store/bbbb-microvm-web", qemu), true},
		{"another qemu gives another key", Key(runner, "/nix/store/cccc-qemu/bin/qemu-system-x86_64"), true},
		{"moving a character across the boundary gives another key", Key(runner+"/", strings.TrimPrefix(qemu, "/")), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if (tc.other != k) != tc.wantDiffer {
				t.Errorf("key %s vs %s", tc.other, k)
			}
		})
	}
	if len(k) != 32 || strings.Trim(k, "0123456789abcdef") != "" {
		t.Errorf("key %q: want 32 lowercase hex digits (a directory name)", k)
	}
}

func goodManifest() Manifest {
	const runner, qemu = "/nix/store/aaaa-microvm-web", "/usr/bin/qemu-system-x86_64"
	return Manifest{
		Format: Format, Key: Key(runner, qemu), RunnerOut: runner,
		Qemu:         Binary{Path: qemu, Size: 100, SHA256: "ab"},
		RAM:          RAM{Backend: RAMBackend, Type: "memory-backend-file", Bytes: 128 << 20, Shared: true, File: MemFile},
		IgnoreShared: true,
		State:        File{Bytes: 1000, SHA256: "cd"},
	}
}

func TestManifestCheck(t *testing.T) {
	const runner, qemu = "/nix/store/aaaa-microvm-web", "/usr/bin/qemu-system-x86_64"
	for _, tc := range []struct {
		name          string
		edit          func(*Manifest)
		runner, qemu  string
		want          error
		wantInMessage string
	}{
		{name: "a snapshot of this runner and qemu passes", edit: func(*Manifest) {}, runner: runner, qemu: qemu},
		{name: "a snapshot of runner A is refused for runner B", edit: func(*Manifest) {},
			runner: "/nix/store/bbbb-microvm-web", qemu: qemu, want: ErrMismatch, wantInMessage: "saved from runner /nix/store/aaaa-microvm-web"},
		{name: "a snapshot saved with another qemu is refused", edit: func(*Manifest) {},
			runner: runner, qemu: "/opt/qemu/bin/qemu-system-x86_64", want: ErrMismatch, wantInMessage: "saved with qemu /usr/bin/"},
		{name: "a manifest of another format is refused", edit: func(m *Manifest) { m.Format = 2 },
			runner: runner, qemu: qemu, want: ErrMismatch, wantInMessage: "format 2"},
		{name: "a manifest whose key is not its runner's is refused", edit: func(m *Manifest) { m.Key = Key("/x", qemu) },
			runner: runner, qemu: qemu, want: ErrMismatch, wantInMessage: "key"},
		{name: "a manifest without a state checksum is corrupt", edit: func(m *Manifest) { m.State.SHA256 = "" },
			runner: runner, qemu: qemu, want: ErrCorrupt},
		{name: "a RAM file outside the snapshot is corrupt", edit: func(m *Manifest) { m.RAM.File = "../mem" },
			runner: runner, qemu: qemu, want: ErrCorrupt},
		{name: "a RAM file without x-ignore-shared is corrupt", edit: func(m *Manifest) { m.IgnoreShared = false },
			runner: runner, qemu: qemu, want: ErrCorrupt},
		{name: "RAM in the stream passes", edit: func(m *Manifest) { m.RAM.File, m.IgnoreShared = "", false },
			runner: runner, qemu: qemu},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := goodManifest()
			tc.edit(&m)
			err := m.check(tc.runner, tc.qemu)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("check: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.wantInMessage) {
				t.Errorf("check: %v, want %v with %q", err, tc.want, tc.wantInMessage)
			}
		})
	}
}

func TestCompareBinary(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	rec := Binary{Size: 10, ModTime: t0}
	for _, tc := range []struct {
		name string
		now  Binary
		want binaryVerdict
	}{
		{"the same size and time is the same binary", Binary{Size: 10, ModTime: t0}, binarySame},
		{"another size is another binary", Binary{Size: 11, ModTime: t0}, binaryOther},
		{"another size and time is another binary", Binary{Size: 11, ModTime: t0.Add(time.Hour)}, binaryOther},
		{"the same size at another time is decided by the content", Binary{Size: 10, ModTime: t0.Add(time.Nanosecond)}, binaryHashDiff},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := compareBinary(rec, tc.now); got != tc.want {
				t.Errorf("compareBinary = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestPlanSave(t *testing.T) {
	const dir = "/snap/.pending-1"
	file := backend{ID: "mem", Type: "memory-backend-file", Bytes: 128 << 20, Shared: true, MemPath: dir + "/mem"}
	for _, tc := range []struct {
		name             string
		layout           ramLayout
		wantIgnoreShared bool
		wantWhy          string
		wantErr          string
	}{
		{name: "the shared RAM file in the snapshot is left out of the stream",
			layout: ramLayout{Machine: "mem", Backends: []backend{file}}, wantIgnoreShared: true, wantWhy: "x-ignore-shared"},
		{name: "an unclean path to the same file is the same file",
			layout:           ramLayout{Machine: "mem", Backends: []backend{{ID: "mem", Type: file.Type, Shared: true, MemPath: dir + "//./mem"}}},
			wantIgnoreShared: true},
		{name: "default RAM goes into the stream",
			layout:  ramLayout{Machine: "microvm.ram", Backends: []backend{{ID: "microvm.ram", Type: "memory-backend-ram"}}},
			wantWhy: "memory-backend-ram, not a file"},
		{name: "shared memfd RAM (microvm.nix shares) goes into the stream, or x-ignore-shared would drop it",
			layout:  ramLayout{Machine: "mem", Backends: []backend{{ID: "mem", Type: "memory-backend-memfd", Shared: true}}},
			wantWhy: "memory-backend-memfd"},
		{name: "a private RAM file goes into the stream",
			layout:  ramLayout{Machine: "mem", Backends: []backend{{ID: "mem", Type: file.Type, MemPath: file.MemPath}}},
			wantWhy: "private"},
		{name: "a shared RAM file elsewhere goes into the stream",
			layout:  ramLayout{Machine: "mem", Backends: []backend{{ID: "mem", Type: file.Type, Shared: true, MemPath: "/dev/shm/vm"}}},
			wantWhy: "not the snapshot's"},
		{name: "another shared backend beside the RAM file puts everything into the stream",
			layout:  ramLayout{Machine: "mem", Backends: []backend{file, {ID: "fs", Type: "memory-backend-memfd", Shared: true}}},
			wantWhy: "backend fs"},
		{name: "a private backend beside the RAM file is saved in the stream as usual",
			layout:           ramLayout{Machine: "mem", Backends: []backend{file, {ID: "extra", Type: "memory-backend-ram"}}},
			wantIgnoreShared: true},
		{name: "a machine backend qemu does not list is an error",
			layout: ramLayout{Machine: "gone", Backends: []backend{file}}, wantErr: "does not list"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := planSave(tc.layout, dir)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("planSave: %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.ignoreShared != tc.wantIgnoreShared || (p.memFile == MemFile) != tc.wantIgnoreShared {
				t.Errorf("plan %+v, want ignoreShared=%v", p, tc.wantIgnoreShared)
			}
			if !strings.Contains(p.why, tc.wantWhy) {
				t.Errorf("why %q, want it to say %q", p.why, tc.wantWhy)
			}
		})
	}
}

func TestCheckRestoreRAM(t *testing.T) {
	m := goodManifest()
	snap := Snapshot{Dir: "/snap/KEY", Manifest: m}
	private := backend{ID: "mem", Type: "memory-backend-file", Bytes: m.RAM.Bytes, MemPath: "/snap/KEY/mem"}
	stream := m
	stream.RAM.File, stream.IgnoreShared = "", false
	for _, tc := range []struct {
		name   string
		snap   Snapshot
		layout ramLayout
		want   string // "" = accepted
	}{
		{"the snapshot's file mapped privately is accepted", snap, ramLayout{"mem", []backend{private}}, ""},
		{"the snapshot's file mapped shared is refused: the guest would write into the snapshot", snap,
			ramLayout{"mem", []backend{{ID: "mem", Type: private.Type, Bytes: private.Bytes, Shared: true, MemPath: private.MemPath}}}, "share=on"},
		{"another file is refused", snap,
			ramLayout{"mem", []backend{{ID: "mem", Type: private.Type, Bytes: private.Bytes, MemPath: "/snap/OTHER/mem"}}}, "not the snapshot's"},
		{"plain RAM where the snapshot has a file is refused (the guest would run on empty memory)", snap,
			ramLayout{"mem", []backend{{ID: "mem", Type: "memory-backend-ram", Bytes: private.Bytes}}}, "not the snapshot's file"},
		{"another size is refused", snap,
			ramLayout{"mem", []backend{{ID: "mem", Type: private.Type, Bytes: 64 << 20, MemPath: private.MemPath}}}, "bytes"},
		{"another backend name is refused (qemu loads RAM blocks by name)", snap,
			ramLayout{"microvm.ram", []backend{{ID: "microvm.ram", Type: "memory-backend-ram", Bytes: private.Bytes}}}, "backend is \"microvm.ram\""},
		{"RAM in the stream loads into any backend of its name and size", Snapshot{Dir: "/snap/KEY", Manifest: stream},
			ramLayout{"mem", []backend{{ID: "mem", Type: "memory-backend-memfd", Bytes: private.Bytes, Shared: true}}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkRestoreRAM(tc.snap, tc.layout)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("checkRestoreRAM: %v, want ErrMismatch with %q", err, tc.want)
			}
		})
	}
}

func TestArgs(t *testing.T) {
	snap := Snapshot{Dir: "/var/lib/blixard/snapshots/KEY", Manifest: goodManifest()}
	stream := snap
	stream.Manifest.RAM.File = ""
	for _, tc := range []struct {
		name    string
		args    func() ([]string, error)
		want    []string
		wantErr string
	}{
		{name: "a save maps the pending mem file shared",
			args: func() ([]string, error) { return SaveArgs("/snap/.pending-1/mem", 128) },
			want: []string{"-object", "memory-backend-file,id=mem,size=128M,mem-path=/snap/.pending-1/mem,share=on", "-machine", "memory-backend=mem"}},
		{name: "a restore maps the snapshot's mem file privately and waits for the state",
			args: func() ([]string, error) { return RestoreArgs(snap) },
			want: []string{"-object", "memory-backend-file,id=mem,size=128M,mem-path=/var/lib/blixard/snapshots/KEY/mem,share=off",
				"-machine", "memory-backend=mem", "-incoming", "defer"}},
		{name: "a restore of RAM in the stream only waits for the state",
			args: func() ([]string, error) { return RestoreArgs(stream) }, want: []string{"-incoming", "defer"}},
		{name: "a path with a space is refused (extraArgsScript's output is split into words)",
			args: func() ([]string, error) { return SaveArgs("/my snaps/mem", 128) }, wantErr: "one word"},
		{name: "a path with a comma is refused (qemu would read the next option)",
			args: func() ([]string, error) { return SaveArgs("/snaps/a,share=off/mem", 128) }, wantErr: "one word"},
		{name: "a path with a glob character is refused (the runner's shell globs the output)",
			args: func() ([]string, error) { return SaveArgs("/snaps/*/mem", 128) }, wantErr: "one word"},
		{name: "a relative path is refused (qemu runs in the VM's state directory)",
			args: func() ([]string, error) { return SaveArgs("snaps/mem", 128) }, wantErr: "absolute"},
		{name: "no RAM is refused",
			args: func() ([]string, error) { return SaveArgs("/snaps/mem", 0) }, wantErr: "MiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.args()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("args %q, %v; want an error with %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Errorf("args\n%q, %v\nwant\n%q", got, err, tc.want)
			}
		})
	}
}

func TestHookRender(t *testing.T) {
	snap := Snapshot{Dir: "/snaps/KEY", Manifest: goodManifest()}
	for _, tc := range []struct {
		name    string
		hook    Hook
		want    string
		wantErr string
	}{
		{name: "a save names the pending mem file", hook: SaveHook("/snaps/.pending-1"),
			want: "BLIXARD_SNAPSHOT=save\nBLIXARD_SNAPSHOT_MEM=/snaps/.pending-1/mem\n"},
		{name: "a restore names the snapshot's mem file", hook: RestoreHook(snap),
			want: "BLIXARD_SNAPSHOT=restore\nBLIXARD_SNAPSHOT_MEM=/snaps/KEY/mem\n"},
		{name: "a restore of RAM in the stream names no file", hook: Hook{Mode: ModeRestore},
			want: "BLIXARD_SNAPSHOT=restore\nBLIXARD_SNAPSHOT_MEM=\n"},
		{name: "a save needs a file", hook: Hook{Mode: ModeSave}, wantErr: "empty path"},
		{name: "an unknown mode is refused", hook: Hook{Mode: "boot", Mem: "/x"}, wantErr: "mode"},
		{name: "a path the runner's shell would split is refused", hook: Hook{Mode: ModeSave, Mem: "/a b/mem"}, wantErr: "one word"},
		{name: "a path the runner's shell would expand is refused", hook: Hook{Mode: ModeSave, Mem: "/$HOME/mem"}, wantErr: "one word"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := tc.hook.Render()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Render: %q, %v; want an error with %q", b, err, tc.wantErr)
				}
				return
			}
			if err != nil || string(b) != tc.want {
				t.Errorf("Render: %q, %v; want %q", b, err, tc.want)
			}
		})
	}
}

// The hook file is read by a shell's `.`: what Render writes is what the
// runner sees.
func TestHookFileReadsBackInAShell(t *testing.T) {
	dir := t.TempDir()
	h := SaveHook(filepath.Join(dir, "snaps", ".pending-x"))
	if err := WriteHook(dir, h); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", `. ./`+HookFile+` && printf '%s|%s' "$BLIXARD_SNAPSHOT" "$BLIXARD_SNAPSHOT_MEM"`)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := "save|" + h.Mem; string(out) != want {
		t.Errorf("sh read %q, want %q", out, want)
	}
	if err := RemoveHook(dir); err != nil {
		t.Fatal(err)
	}
	if err := RemoveHook(dir); err != nil {
		t.Errorf("removing a missing hook: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, HookFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("hook still there: %v", err)
	}
}
