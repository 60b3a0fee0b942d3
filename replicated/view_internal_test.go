package replicated

import (
	"reflect"
	"testing"

	"github.com/blixard/blixard/spec"
)

// TestSameAssignment: changing any one field of an assignment makes it
// differ, so a field added to Assignment but not to sameAssignment fails
// here (the views would otherwise miss its changes).
func TestSameAssignment(t *testing.T) {
	base := Assignment{VM: "a", Health: &spec.HealthCheck{Interval: 1}, Volumes: []spec.VolumeRef{{Name: "v"}}}
	if !sameAssignment(base, base) {
		t.Fatal("an assignment differs from itself")
	}
	typ := reflect.TypeOf(base)
	for i := range typ.NumField() {
		f := typ.Field(i)
		changed := base
		changed.Volumes = []spec.VolumeRef{{Name: "v"}}
		changed.Health = &spec.HealthCheck{Interval: 1}
		if !sameAssignment(base, changed) {
			t.Fatalf("equal copies (new slice and pointer) differ")
		}
		v := reflect.ValueOf(&changed).Elem().Field(i)
		switch v.Kind() {
		case reflect.String:
			v.SetString(v.String() + "x")
		case reflect.Int, reflect.Int64:
			v.SetInt(v.Int() + 1)
		case reflect.Uint64:
			v.SetUint(v.Uint() + 1)
		case reflect.Bool:
			v.SetBool(!v.Bool())
		case reflect.Slice:
			v.Set(reflect.Append(v, reflect.New(f.Type.Elem()).Elem()))
		case reflect.Pointer:
			changed.Health = &spec.HealthCheck{Interval: 2}
			if f.Name != "Health" {
				t.Fatalf("field %s: a pointer this test does not know how to change", f.Name)
			}
		default:
			t.Fatalf("field %s of kind %s: teach this test (and sameAssignment) about it", f.Name, v.Kind())
		}
		if sameAssignment(base, changed) {
			t.Errorf("field %s changed, but sameAssignment says the assignments are the same: compare it there", f.Name)
		}
	}
}
