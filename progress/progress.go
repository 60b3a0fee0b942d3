// Package progress carries reports of long work — nix's latest log line
// while it evaluates or builds — from where the work runs to whoever shows
// it, through a context.Context: the API streams them to `blixard plan`,
// `blixard dev` prints them. A report crosses several packages that know
// nothing of each other (api → reconciler → node → nixeval → nixrun, or
// nodeagent → its builder → nixrun), so it rides on the context like a
// deadline rather than widening every interface on the way.
//
// Its one job is that hand-over: [With] attaches a sink, [Report] and
// [From] reach it. It imports nothing of this module, keeps no state of its
// own and must not format, throttle or print anything: the showing side
// decides that. A sink is called on the goroutine that reads nix's output,
// so it must be quick and safe for concurrent use.
package progress

import "context"

// Func receives one report: a line of nix's log output, without its
// newline.
type Func func(line string)

// key is the context key of the sink; an unexported type, so no other
// package can collide with it.
type key struct{}

// With returns ctx with f as its sink, replacing any sink ctx had: the
// innermost caller that wants reports gets them. A nil f removes the sink.
func With(ctx context.Context, f Func) context.Context {
	return context.WithValue(ctx, key{}, f)
}

// From returns ctx's sink, nil when it has none.
func From(ctx context.Context) Func {
	f, _ := ctx.Value(key{}).(Func)
	return f
}

// Report hands line to ctx's sink, if any.
func Report(ctx context.Context, line string) {
	if f := From(ctx); f != nil {
		f(line)
	}
}
