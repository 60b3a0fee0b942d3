package nixrun

// cgroupMode says which kinds of cgroup a run may get; tests pin one to
// check each way of killing on a host that has several.
type cgroupMode int

const (
	cgroupAny       cgroupMode = iota // v2, else a v1 freezer cgroup
	cgroupV2                          // only v2
	cgroupV1Freezer                   // only a v1 freezer cgroup
	cgroupNone                        // none: the process group only
)
