package nixrun

import "testing"

func TestOwnCgroupDir(t *testing.T) {
	hybrid := "9:name=systemd:/\n6:freezer:/\n4:memory:/box/a\n0::/\n"
	hybridMounts := "30 25 0:26 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw\n" +
		"35 25 0:31 / /sys/fs/cgroup/freezer rw,relatime shared:15 - cgroup cgroup rw,freezer\n" +
		"36 25 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:16 - cgroup cgroup rw,cpu,cpuacct\n"
	unified := "0::/system.slice/blixard.service\n"
	unifiedMounts := "28 22 0:25 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
	nested := "0::/system.slice/blixard.service\n"
	nestedMounts := "28 22 0:25 /system.slice /sys/fs/my\\040cg rw shared:4 - cgroup2 cgroup2 rw\n"
	tests := []struct {
		own, mounts, controller, want string
	}{
		{hybrid, hybridMounts, "", "/sys/fs/cgroup/unified"},
		{hybrid, hybridMounts, "freezer", "/sys/fs/cgroup/freezer"},
		{hybrid, hybridMounts, "pids", ""},
		{unified, unifiedMounts, "", "/sys/fs/cgroup/system.slice/blixard.service"},
		{unified, unifiedMounts, "freezer", ""},
		{nested, nestedMounts, "", "/sys/fs/my cg/blixard.service"},
	}
	for _, tt := range tests {
		got, err := ownCgroupDir(tt.own, tt.mounts, tt.controller)
		if got != tt.want || (err != nil) != (tt.want == "") {
			t.Errorf("ownCgroupDir(%q, %q) = %q, %v; want %q", tt.own, tt.controller, got, err, tt.want)
		}
	}
}
