package fngateway

import (
	"testing"

	"github.com/blixard/blixard/ingress"
)

func TestUseFunction(t *testing.T) {
	noRoute := &ingress.Error{Kind: ingress.NoRoute}
	noInstance := &ingress.Error{Kind: ingress.NoInstance}
	for _, tc := range []struct {
		name  string
		ir    ingress.Route
		ierr  error
		fpath string
		fok   bool
		want  bool
	}{
		{"no function route", ingress.Route{Path: "/"}, nil, "", false, false},
		{"only a function route", ingress.Route{}, noRoute, "/fn", true, true},
		{"ingress shorter prefix", ingress.Route{Path: "/"}, nil, "/fn", true, true},
		{"ingress longer prefix", ingress.Route{Path: "/fn/api"}, nil, "/fn", true, false},
		{"ingress without instance, longer", ingress.Route{Path: "/fn/api"}, noInstance, "/fn", true, false},
		{"ingress without instance, shorter", ingress.Route{Path: "/"}, noInstance, "/fn", true, true},
		{"neither", ingress.Route{}, noRoute, "", false, false},
	} {
		if got := UseFunction(tc.ir, tc.ierr, tc.fpath, tc.fok); got != tc.want {
			t.Errorf("%s: UseFunction = %v, want %v", tc.name, got, tc.want)
		}
	}
}
