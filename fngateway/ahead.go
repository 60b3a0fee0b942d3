package fngateway

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// AheadPath is where one gateway tells another that it is proposing a
// scale-out whose plan places an instance on the other's node
// (POST AheadPath?function=NAME&want=N&from=NODE): the receiving node may
// start it while the proposal commits ([Options.Ahead]). It is honoured
// only from the addresses of [Gateway.SetPeers], like [HeaderInstance];
// anyone else gets 404, as for any path without a route. The path is
// reserved on every host of the ingress listener.
const AheadPath = "/.blixard/ahead"

// AheadNotice is what a peer's POST to [AheadPath] says.
type AheadNotice struct {
	Function string
	Want     int
	// From is the node whose gateway proposes the scale-out (its receiving
	// node, which the plan is made for).
	From uint64
}

// aheadTimeout bounds sending a notice: it is worth something only while
// the commit it runs ahead of has not landed (a few milliseconds).
const aheadTimeout = 500 * time.Millisecond

// serveAhead answers a POST to AheadPath.
func (g *Gateway) serveAhead(w http.ResponseWriter, r *http.Request) {
	if g.o.Ahead == nil || !g.fromPeer(r) {
		g.writeError(w, &Error{Kind: NoRoute, Host: r.Host, Path: r.URL.Path})
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writePlain(w, http.StatusMethodNotAllowed, "only POST "+AheadPath)
		return
	}
	n, err := parseAhead(r.URL.Query())
	if err == nil {
		if _, ok := g.cur.Load().fns[n.Function]; !ok {
			err = fmt.Errorf("no function %q here", n.Function)
		}
	}
	if err != nil {
		writePlain(w, http.StatusBadRequest, "ahead notice: "+err.Error())
		return
	}
	g.o.Ahead(r.Context(), n)
	w.WriteHeader(http.StatusAccepted)
}

// parseAhead reads a notice from its query (pure).
func parseAhead(q url.Values) (AheadNotice, error) {
	n := AheadNotice{Function: q.Get("function")}
	if n.Function == "" {
		return n, fmt.Errorf("no function")
	}
	want, err := strconv.Atoi(q.Get("want"))
	if err != nil || want < 1 {
		return n, fmt.Errorf("want %q is not a positive number", q.Get("want"))
	}
	from, err := strconv.ParseUint(q.Get("from"), 10, 64)
	if err != nil || from == 0 {
		return n, fmt.Errorf("from %q is not a node id", q.Get("from"))
	}
	n.Want, n.From = want, from
	return n, nil
}

// SendAhead posts n to the gateway at via (host:port), bounded by
// aheadTimeout, on the connections the gateway keeps to other gateways;
// it returns once the receiver took it (Options.Ahead returned there).
func (g *Gateway) SendAhead(ctx context.Context, via string, n AheadNotice) error {
	ctx, cancel := context.WithTimeout(ctx, aheadTimeout)
	defer cancel()
	q := url.Values{"function": {n.Function}, "want": {strconv.Itoa(n.Want)}, "from": {strconv.FormatUint(n.From, 10)}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+via+AheadPath+"?"+q.Encode(), http.NoBody)
	if err != nil {
		return err
	}
	resp, err := g.conns.RoundTrip(req)
	if err != nil {
		return fmt.Errorf("ahead notice to %s: %w", via, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("ahead notice to %s: %s", via, resp.Status)
	}
	return nil
}
