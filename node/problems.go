package node

import (
	"context"
	"sync"
	"time"

	"github.com/blixard/blixard/replicated"
)

// problemRetry is how long a failed SetNodeProblem proposal waits before
// the reporter tries again.
const problemRetry = 5 * time.Second

// problemReporter commits one part's problem on this node
// (replicated.SetNodeProblem) whenever it changes, from its own goroutine,
// so the part never waits on Raft: a part without a quorum keeps
// converging and its problem is committed once the quorum is back. Only the
// newest message counts; nothing is proposed while the replicated record
// already says it.
type problemReporter struct {
	self    uint64
	part    string
	propose func(context.Context, replicated.Command) (replicated.Result, error)
	read    func() (*replicated.State, error)

	mu   sync.Mutex
	want *string // the newest message ("": none); nil before the first set
	kick chan struct{}
}

func newProblemReporter(self uint64, part string, propose func(context.Context, replicated.Command) (replicated.Result, error),
	read func() (*replicated.State, error)) *problemReporter {
	return &problemReporter{self: self, part: part, propose: propose, read: read, kick: make(chan struct{}, 1)}
}

// set says the part's problem now ("" when it has none); it never blocks,
// and the same message again costs nothing.
func (r *problemReporter) set(msg string) {
	r.mu.Lock()
	same := r.want != nil && *r.want == msg
	r.want = &msg
	r.mu.Unlock()
	if same {
		return
	}
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// recorded is the part's problem as the local replica (or view) has it.
func (r *problemReporter) recorded() (string, bool) {
	st, err := r.read()
	if err != nil {
		return "", false
	}
	n := st.Nodes[r.self]
	if n == nil {
		return "", false
	}
	return n.Problems[r.part].Message, true
}

// Run proposes the newest message when it changed and differs from the
// recorded one, until ctx ends; a proposal that fails or is refused is
// tried again every problemRetry, with the message newest by then.
func (r *problemReporter) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.kick:
		}
		for !r.sync(ctx) {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(problemRetry):
			}
		}
	}
}

// sync commits the newest message unless it is recorded already; false
// when that failed.
func (r *problemReporter) sync(ctx context.Context) bool {
	r.mu.Lock()
	want := r.want
	r.mu.Unlock()
	if want == nil {
		return true
	}
	if have, ok := r.recorded(); ok && have == *want {
		return true
	}
	pctx, cancel := context.WithTimeout(ctx, fnProposeTimeout)
	defer cancel()
	res, err := r.propose(pctx, replicated.Command{Type: replicated.CmdSetNodeProblem, At: time.Now(),
		SetNodeProblem: &replicated.SetNodeProblem{ID: r.self, Part: r.part, Message: *want}})
	return err == nil && res.OK()
}
