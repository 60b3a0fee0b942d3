package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/blixard/blixard/replicated"
	"github.com/blixard/blixard/spec"
)

// Health. An instance's health (replicated.VMStatus.Health) follows its
// phase: it is judged only while the agent reports it running, and is ""
// otherwise. A unit that systemd has not finished starting (a Type=notify
// runner before the guest's READY=1) is reported starting, so it is not
// healthy before READY=1 either (see [Decide]).
//
//   - Without a health check (the assignment's Health is nil) an instance
//     is healthy as soon as it runs, since the pass that first saw it
//     running.
//   - With one, the agent probes it every Interval (HTTP GET: a status
//     200–399 passes; TCP: an accepted connection passes; each bounded by
//     Timeout) and judges by consecutive results ([countProbe]): healthy
//     after HealthyAfter passes in a row, unhealthy after UnhealthyAfter
//     failures in a row, "" (not judged yet) before either.
//
// Probes go to the instance's cluster address (replicated.State.Network)
// when the node runs the cluster network (Options.ClusterNetwork), else to
// 127.0.0.1 (dev mode: runners with user-mode networking that forward the
// port to the host). Each running instance with a check has one probing
// goroutine of its own, so a slow or hanging instance delays nobody else
// and never the agent's loop; the goroutine ends when the instance stops
// running here, its check or address changes, or the agent stops.

// healthRecord is one instance's verdict and its current streak.
type healthRecord struct {
	// State is the verdict ("" until the first one).
	State replicated.HealthState
	// Since is when State began (zero while State is "").
	Since time.Time
	// Err is the last failed probe's error while State is not healthy.
	Err string
	// Passes and Failures count the probes in a row that passed or
	// failed (one of them is 0).
	Passes, Failures int
}

// countProbe is the judgement of one probe: r updated with a probe that
// ended at at and failed with errMsg ("" when it passed), for a check that
// wants healthyAfter passes or unhealthyAfter failures in a row. A verdict
// changes only when its threshold is reached, so a single failed probe of a
// healthy instance (or a single pass of an unhealthy one) changes nothing.
func countProbe(r healthRecord, errMsg string, at time.Time, healthyAfter, unhealthyAfter int) healthRecord {
	if errMsg == "" {
		r.Passes, r.Failures = r.Passes+1, 0
		if r.State != replicated.Healthy && r.Passes >= healthyAfter {
			r.State, r.Since, r.Err = replicated.Healthy, at, ""
		}
		return r
	}
	r.Passes, r.Failures = 0, r.Failures+1
	if r.State != replicated.Healthy {
		r.Err = errMsg
	}
	if r.State != replicated.Unhealthy && r.Failures >= unhealthyAfter {
		r.State, r.Since, r.Err = replicated.Unhealthy, at, errMsg
	}
	return r
}

// probeTarget is what one running instance is judged by.
type probeTarget struct {
	// check is nil for an instance without a health check: healthy while
	// it runs. Otherwise it has its defaults filled in.
	check *spec.HealthCheck
	// addr is where to probe: the instance's cluster address or
	// 127.0.0.1; invalid when the node runs the cluster network but the
	// instance has no address (every probe then fails saying so).
	addr netip.Addr
	// devMode: addr is 127.0.0.1 because the node runs without the
	// cluster network (the probes' errors say so).
	devMode bool
}

func (t probeTarget) equal(u probeTarget) bool {
	if (t.check == nil) != (u.check == nil) || t.addr != u.addr || t.devMode != u.devMode {
		return false
	}
	if t.check == nil {
		return true
	}
	a, b := *t.check, *u.check
	if (a.HTTP == nil) != (b.HTTP == nil) || (a.TCP == nil) != (b.TCP == nil) ||
		(a.HTTP != nil && *a.HTTP != *b.HTTP) || (a.TCP != nil && *a.TCP != *b.TCP) {
		return false
	}
	return a.Interval == b.Interval && a.Timeout == b.Timeout && a.HealthyAfter == b.HealthyAfter &&
		a.UnhealthyAfter == b.UnhealthyAfter
}

// targetOf is the probe target of as, an assignment of this node whose
// instance runs; nw is the committed network (nil before the first plan)
// and cluster whether this node runs it.
func targetOf(as replicated.Assignment, nw *replicated.Network, cluster bool) probeTarget {
	if as.Health == nil {
		return probeTarget{}
	}
	c := as.Health.WithDefaults()
	if !cluster {
		// Dev mode: a runner with user-mode networking forwards the
		// guest's port to the host's loopback.
		return probeTarget{check: &c, addr: netip.AddrFrom4([4]byte{127, 0, 0, 1}), devMode: true}
	}
	t := probeTarget{check: &c}
	if nw != nil {
		if id, ok := nw.Identities[as.VM]; ok {
			t.addr = id.Address
		}
	}
	return t
}

// prober judges the health of this node's running instances (see the
// comment at the top of this file). Safe for concurrent use.
type prober struct {
	now func() time.Time
	log *slog.Logger
	// onChange is called (without the prober's lock) when an instance's
	// verdict or error changed after a probe.
	onChange func(vm string)
	client   *http.Client
	dialer   net.Dialer

	mu  sync.Mutex
	vms map[string]*probed // guarded by mu
	wg  sync.WaitGroup     // the probing goroutines

	// adopted are the runners (name → PID) that already ran when the
	// agent's first pass looked: only their committed verdicts may seed
	// (see syncProbes). Set once, by the first syncProbes; owned by the
	// agent's pass goroutine.
	adopted map[string]int
}

// probed is one running instance the prober judges.
type probed struct {
	target probeTarget
	rec    healthRecord
	// cancel ends its probing goroutine (nil without a check).
	cancel context.CancelFunc
}

func newProber(now func() time.Time, log *slog.Logger, onChange func(vm string)) *prober {
	return &prober{
		now: now, log: log, onChange: onChange,
		client: &http.Client{
			// A probe is one request: no proxy from the environment (the
			// instance is local or on the cluster network), no connection
			// kept for the next one (it comes an interval later), and a
			// redirect is an answer (3xx passes), not followed.
			Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
		vms: map[string]*probed{},
	}
}

// sync makes the prober judge exactly the instances of running (name →
// target): the goroutines of instances no longer running here end and
// their records go; new ones start, from their verdict in seeds when it
// has one (a restarted agent's committed verdict: its instances neither
// leave the ingress rotation nor fail a rollout wave for the time its
// first probes take; the streak counts from zero, so the verdict changes
// after unhealthyAfter failures as always); an instance whose target
// changed keeps its verdict but counts its streak again. An instance
// without a check is healthy from the first sync that lists it.
func (p *prober) sync(ctx context.Context, running map[string]probeTarget, seeds map[string]healthRecord) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name, v := range p.vms {
		if t, ok := running[name]; !ok || !t.equal(v.target) {
			if v.cancel != nil {
				v.cancel()
			}
			if !ok {
				delete(p.vms, name)
			}
		}
	}
	for name, t := range running {
		old := p.vms[name]
		if old != nil && old.target.equal(t) {
			continue
		}
		// A new record, even for a changed target: a result of the old
		// goroutine, which may still come in, then finds itself replaced.
		v := &probed{target: t}
		if old != nil {
			v.rec = old.rec
			v.rec.Passes, v.rec.Failures = 0, 0
		} else if seed, ok := seeds[name]; ok {
			v.rec = seed
		}
		p.vms[name] = v
		if t.check == nil {
			if v.rec.State != replicated.Healthy {
				v.rec = healthRecord{State: replicated.Healthy, Since: p.now()}
			}
			v.rec.Err = ""
			continue
		}
		pctx, cancel := context.WithCancel(ctx)
		v.cancel = cancel
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.run(pctx, name, v, t)
		}()
	}
}

// stop ends every probing goroutine and waits for them.
func (p *prober) stop() {
	p.mu.Lock()
	for name, v := range p.vms {
		if v.cancel != nil {
			v.cancel()
		}
		delete(p.vms, name)
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// stamp sets st's health from the prober's record of its instance: ""
// unless st says running and the instance is judged.
func (p *prober) stamp(st *replicated.VMStatus) {
	st.Health, st.HealthSince, st.HealthError = "", time.Time{}, ""
	if st.Phase != replicated.PhaseRunning {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if v := p.vms[st.VM]; v != nil {
		st.Health, st.HealthSince, st.HealthError = v.rec.State, v.rec.Since, v.rec.Err
	}
}

// startingProbe is how often probes start while none has passed (see
// run).
const startingProbe = 100 * time.Millisecond

// startingRetry is how long after a failed probe that took took the next
// starts while none has passed (pure): startingProbe after the failed one
// began (at most the interval), and at least 10 ms after it ended. A probe
// that timed out is not followed by another full wait: a restored guest's
// first answer under software emulation can take longer than a function's
// 80 ms timeout once and come at once the next time.
func startingRetry(took, interval time.Duration) time.Duration {
	return max(min(startingProbe, interval)-took, 10*time.Millisecond)
}

// run probes vm every interval until ctx ends, the first time at once.
// Probes never overlap: each ends within the check's timeout, which is
// shorter than the interval.
//
// Until the first probe passes (of a new instance: not one whose verdict
// was seeded), failed probes are retried so that one starts every
// startingProbe (startingRetry), without being counted, and a failure is
// counted once per interval as before: an instance that is up a moment
// after the first probe (a restored guest's first ARP and SYN under
// software emulation) is judged healthy then, not an interval later, and
// one that takes long is judged no sooner than before.
func (p *prober) run(ctx context.Context, vm string, v *probed, t probeTarget) {
	tick := time.NewTicker(t.check.Interval)
	defer tick.Stop()
	// A verdict seeded from the committed state (a restarted agent) is no
	// start: its probes count at once.
	p.mu.Lock()
	passed := v.rec.State != ""
	p.mu.Unlock()
	counted := time.Now()
	for {
		began := time.Now()
		err := p.probe(ctx, vm, t)
		if ctx.Err() != nil {
			return // stopped: the result says nothing about the instance
		}
		if err != nil && !passed && time.Since(counted) < t.check.Interval {
			select {
			case <-ctx.Done():
				return
			case <-time.After(startingRetry(time.Since(began), t.check.Interval)):
			}
			continue
		}
		passed = passed || err == nil
		counted = time.Now()
		msg := ""
		if err != nil {
			msg = clipHealthError(err.Error())
		}
		p.record(vm, v, msg)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// record counts one probe of vm and reports a changed verdict or error.
func (p *prober) record(vm string, v *probed, errMsg string) {
	p.mu.Lock()
	if p.vms[vm] != v {
		p.mu.Unlock()
		return // replaced or gone meanwhile
	}
	before := v.rec
	v.rec = countProbe(v.rec, errMsg, p.now(), v.target.check.HealthyAfter, v.target.check.UnhealthyAfter)
	after := v.rec
	p.mu.Unlock()
	if after.State == before.State && after.Err == before.Err {
		return
	}
	if after.State != before.State {
		p.log.Info("health changed", "vm", vm, "health", after.State, "was", orDefault(string(before.State), "not judged"),
			"err", after.Err)
	}
	p.onChange(vm)
}

// probe runs one probe of vm against t, bounded by the check's timeout.
func (p *prober) probe(ctx context.Context, vm string, t probeTarget) error {
	c := t.check
	if !t.addr.IsValid() {
		return fmt.Errorf("no cluster address for %s in the committed network: nothing to probe (it gets one with the next plan)", vm)
	}
	pctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	hostPort := net.JoinHostPort(t.addr.String(), strconv.Itoa(c.Port()))
	var err error
	switch {
	case c.HTTP != nil:
		err = p.probeHTTP(pctx, "http://"+hostPort+c.HTTP.Path)
	case c.TCP != nil:
		err = p.probeTCP(pctx, hostPort)
	default:
		return errors.New("the health check names neither http nor tcp")
	}
	if err != nil && errors.Is(pctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
		err = fmt.Errorf("%w (no answer within the timeout, %s)", err, c.Timeout)
	}
	if err != nil && t.devMode {
		err = fmt.Errorf("%w (probed on 127.0.0.1: this node runs without the cluster network, serve --network)", err)
	}
	return err
}

// maxHealthError bounds a probe's error in statuses: every heartbeat
// carries it, for every unhealthy instance of the node.
const maxHealthError = 300

func clipHealthError(s string) string {
	if len(s) <= maxHealthError {
		return s
	}
	cut := maxHealthError
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// maxHealthBody is how much of a health answer's body is read (and thrown
// away) so that the server is not cut off mid-write.
const maxHealthBody = 4 << 10

func (p *prober) probeHTTP(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	req.Header.Set("User-Agent", "blixard-health")
	resp, err := p.client.Do(req)
	if err != nil {
		return err // *url.Error: "Get "URL": what happened"
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxHealthBody))
	_ = resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 399 {
		return fmt.Errorf("GET %s: status %s (healthy is 200–399)", url, resp.Status)
	}
	return nil
}

func (p *prober) probeTCP(ctx context.Context, hostPort string) error {
	conn, err := p.dialer.DialContext(ctx, "tcp", hostPort)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", hostPort, err)
	}
	_ = conn.Close()
	return nil
}

// syncProbes makes the prober judge the VMs d reports running that are
// assigned here (a fenced node runs none); nw is the committed network.
func (a *Agent) syncProbes(ctx context.Context, in Input, d Decision, nw *replicated.Network) {
	if a.probes.adopted == nil {
		a.probes.adopted = map[string]int{}
		for name, o := range in.VMs {
			if o.Unit.Active && o.Unit.PID != 0 {
				a.probes.adopted[name] = o.Unit.PID
			}
		}
	}
	running := map[string]probeTarget{}
	seeds := map[string]healthRecord{}
	if in.Fenced == "" {
		for _, vd := range d.VMs {
			if vd.Status == nil || vd.Status.Phase != replicated.PhaseRunning {
				continue
			}
			if as, ok := in.Assignments[vd.VM]; ok && as.Node == in.Node {
				running[vd.VM] = targetOf(as, nw, a.o.ClusterNetwork)
				// A committed verdict is about the runner that ran when this
				// agent started, not about one started since (a stop and a
				// start of the same instance, a crash restart).
				if o := in.VMs[vd.VM]; o.Judged.Health != "" && o.Unit.Booted == as.OutPath && o.Unit.PID != 0 &&
					a.probes.adopted[vd.VM] == o.Unit.PID {
					seeds[vd.VM] = healthRecord{State: o.Judged.Health, Since: o.Judged.Since, Err: o.Judged.Err}
				}
			}
		}
	}
	a.probes.sync(ctx, running, seeds)
}

// healthChanged takes a probe's new verdict or error into vm's status; a
// new verdict is reported at once (the reporter's debounce), a new error
// of the same verdict with the next heartbeat.
func (a *Agent) healthChanged(vm string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.statuses[vm]
	if s == nil {
		return
	}
	was := s.VMStatus
	a.probes.stamp(&s.VMStatus)
	if s.Health != was.Health {
		if becameReady(&was, s.VMStatus) {
			a.signalReadiedLocked()
		}
		a.signalChangedLocked()
	}
}
