package replicated

import (
	"bytes"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fill sets every field reachable from v to a non-zero value derived from
// seed: strings, numbers, bools, one-entry maps and slices, allocated
// pointers, times. New fields added to the types are filled too, so the
// clone and snapshot tests notice fields the code forgets.
func fill(t *testing.T, v reflect.Value, seed int) {
	t.Helper()
	if v.Type() == reflect.TypeOf(time.Time{}) {
		v.Set(reflect.ValueOf(time.Date(2025, 1, 1, 0, 0, seed, 0, time.UTC)))
		return
	}
	if v.Type() == reflect.TypeOf(netip.Addr{}) {
		v.Set(reflect.ValueOf(netip.AddrFrom4([4]byte{10, 0, 0, byte(seed)})))
		return
	}
	if v.Type() == reflect.TypeOf(netip.Prefix{}) {
		v.Set(reflect.ValueOf(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(seed), 0, 0}), 16)))
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString("s" + strings.Repeat("x", seed))
	case reflect.Int, reflect.Int64, reflect.Int32:
		v.SetInt(int64(seed))
	case reflect.Uint64, reflect.Uint32, reflect.Uint, reflect.Uint8:
		v.SetUint(uint64(seed))
	case reflect.Bool:
		v.SetBool(seed%2 == 1)
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		fill(t, p.Elem(), seed)
		v.Set(p)
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if !v.Type().Field(i).IsExported() {
				t.Fatalf("fill: %s has unexported field %s", v.Type(), v.Type().Field(i).Name)
			}
			fill(t, v.Field(i), seed)
		}
	case reflect.Array:
		for i := 0; i < v.Len(); i++ {
			fill(t, v.Index(i), seed)
		}
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 1, 1)
		fill(t, s.Index(0), seed)
		v.Set(s)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		k := reflect.New(v.Type().Key()).Elem()
		fill(t, k, seed)
		e := reflect.New(v.Type().Elem()).Elem()
		fill(t, e, seed)
		m.SetMapIndex(k, e)
		v.Set(m)
	default:
		t.Fatalf("fill: unsupported kind %s", v.Kind())
	}
}

func filledState(t *testing.T, seed int) *State {
	var s State
	fill(t, reflect.ValueOf(&s).Elem(), seed)
	return &s
}

func TestCloneIsDeepAndComplete(t *testing.T) {
	s := filledState(t, 1)
	c := s.Clone()
	if !reflect.DeepEqual(s, c) {
		t.Fatalf("clone differs:\n%s\n%s", mustJSON(t, s), mustJSON(t, c))
	}
	want := mustJSON(t, c)
	// Overwrite everything reachable from s, in place where it is shared.
	fill(t, reflect.ValueOf(s).Elem(), 2)
	for _, n := range s.Nodes {
		n.Labels["k"] = "v"
	}
	if got := mustJSON(t, c); got != want {
		t.Fatalf("clone changed with the original:\n got %s\nwant %s", got, want)
	}
	// Nodes are pointers: mutate the originals' pointees, not the map.
	s2 := filledState(t, 3)
	c2 := s2.Clone()
	for _, n := range s2.Nodes {
		n.ID = 99
		n.Labels["s"+strings.Repeat("x", 3)] = "changed"
		n.CephAddrs[0] = "changed"
	}
	s2.Desired.VMs["sxxx"].Placement.Labels["sxxx"] = "changed"
	s2.Desired.VMs["sxxx"].Placement.Nodes[0] = 99
	for _, n := range c2.Nodes {
		if n.ID == 99 || n.Labels["sxxx"] == "changed" || n.CephAddrs[0] == "changed" {
			t.Fatal("clone shares a node with the original")
		}
	}
	if c2.Desired.VMs["sxxx"].Placement.Labels["sxxx"] == "changed" || c2.Desired.VMs["sxxx"].Placement.Nodes[0] == 99 {
		t.Fatal("clone shares the desired spec with the original")
	}
	if (*State)(nil).Clone() != nil {
		t.Fatal("Clone of nil is not nil")
	}
}

func snapshotRoundTrip(t *testing.T, st *State) *State {
	t.Helper()
	var buf bytes.Buffer
	if err := EncodeSnapshot(&buf, st); err != nil {
		t.Fatal(err)
	}
	fresh, err := DecodeSnapshot(&buf)
	if err != nil {
		t.Fatal(err)
	}
	return fresh
}

func TestSnapshotRoundTripIsExact(t *testing.T) {
	t.Run("a state built by commands round-trips exactly", func(t *testing.T) {
		s := NewState()
		applyAll(t, s, sampleCommands()[0], reg(2), reg(3),
			plan(0, "abc", asg("web", 1, "v1"), asg("db", 2, "v1")),
			sampleCommands()[1], evalErr("x", "boom"), setState(3, NodeCordoned),
			cmdAt(time.Now(), hb(2, VMStatus{VM: "db", Phase: PhaseRunning, ObservedAt: time.Now()})))
		got := snapshotRoundTrip(t, s)
		if !reflect.DeepEqual(s, got) {
			t.Fatalf("snapshot round trip differs:\n%s\n%s", mustJSON(t, s), mustJSON(t, got))
		}
	})
	t.Run("a state with every field set round-trips exactly", func(t *testing.T) {
		s := filledState(t, 1)
		got := snapshotRoundTrip(t, s)
		if !reflect.DeepEqual(s, got) {
			t.Fatalf("snapshot round trip differs:\n%s\n%s", mustJSON(t, s), mustJSON(t, got))
		}
	})
	t.Run("the empty state round-trips exactly", func(t *testing.T) {
		s := NewState()
		if got := snapshotRoundTrip(t, s); !reflect.DeepEqual(s, got) {
			t.Fatalf("got %+v", got)
		}
	})
}
