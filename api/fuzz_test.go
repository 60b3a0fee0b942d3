package api

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
)

// requestBodies are the JSON bodies the API decodes, by endpoint.
var requestBodies = []struct {
	path     string
	optional bool // decodeOptional: an empty body is fine
	new      func() any
}{
	{"/v1/nodes/1/state", false, func() any { return new(NodeStateRequest) }},
	{"/v1/plan", false, func() any { return new(PlanRequest) }},
	{"/v1/members", false, func() any { return new(MemberRequest) }},
	{"/v1/tokens", false, func() any { return new(TokenRequest) }},
	{"/v1/vms/web/stop", true, func() any { return new(VMRunStateRequest) }},
}

// FuzzDecodeRequest feeds arbitrary bodies to the decoding of every
// endpoint's request. Whatever the body, decoding never panics, and either
// accepts exactly one JSON value that re-encodes to an equal request, or
// answers 400 or 413 with a JSON error that names the endpoint.
func FuzzDecodeRequest(f *testing.F) {
	for _, seed := range []string{
		`{"state": "draining"}`, `{"commit": "` + strings.Repeat("a", 40) + `"}`,
		`{"id": 4, "raftAddr": "10.0.0.4:7001", "nonVoting": true}`, `{"name": "ci", "role": "operate"}`,
		``, `{}`, `{} {}`, `{}}`, `[]`, `null`, `{"state": 1}`, `{"x": 1}`, "{\"name\": \"\xff\"}", `{"id": 1e400}`,
		`{"state": "ready"}` + strings.Repeat(" ", 64),
	} {
		for i := range requestBodies {
			f.Add(uint8(i), []byte(seed))
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		rb := requestBodies[int(which)%len(requestBodies)]
		v := rb.new()
		w := httptest.NewRecorder()
		r := httptest.NewRequest("POST", rb.path, bytes.NewReader(body))
		var ok bool
		if rb.optional {
			ok = decodeOptional(w, r, v, "a request")
		} else {
			ok = decode(w, r, v, "a request")
		}
		if !ok {
			if w.Code != http.StatusBadRequest && w.Code != http.StatusRequestEntityTooLarge {
				t.Fatalf("refused body %q answered HTTP %d, want 400 or 413", body, w.Code)
			}
			var e ErrorBody
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || !strings.Contains(e.Error, rb.path) {
				t.Fatalf("refusal of %q is no JSON error naming %s: %s (%v)", body, rb.path, w.Body.Bytes(), err)
			}
			return
		}
		if w.Body.Len() != 0 {
			t.Fatalf("accepted body %q, but an answer was written: %s", body, w.Body.Bytes())
		}
		if len(bytes.TrimSpace(body)) == 0 {
			if !rb.optional {
				t.Fatalf("an empty body was accepted for %s", rb.path)
			}
			return
		}
		if !json.Valid(body) {
			t.Fatalf("accepted %q, which is not one JSON value", body)
		}
		// What was accepted means the same when encoded again.
		again, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		w2 := httptest.NewRecorder()
		v2 := rb.new()
		if !decode(w2, httptest.NewRequest("POST", rb.path, bytes.NewReader(again)), v2, "a request") || !reflect.DeepEqual(v, v2) {
			t.Fatalf("%q decoded to %+v, which re-encodes to %s and decodes to %+v", body, v, again, v2)
		}
	})
}
