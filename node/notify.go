package node

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/blixard/blixard/notify"
	"github.com/blixard/blixard/raftstore"
	"github.com/prometheus/client_golang/prometheus"
)

// NotifyConfig is `serve --notify-url …`: webhook receivers of the
// cluster's notable events, sent by whichever node leads (package notify).
type NotifyConfig struct {
	// URLs are the receivers (http:// or https://).
	URLs []string
	// URLFile names a file of more receivers, one URL per line ('#'
	// comments and blank lines skipped), read when the node starts: URLs
	// that carry a token (Slack's, for one) stay out of command lines and
	// the Nix store.
	URLFile string
	// SecretFile holds the HMAC secret that signs every body
	// (X-Blixard-Signature: sha256=…), read when the node starts.
	SecretFile string
	// Kinds select the events sent (default notify.DefaultKinds()).
	Kinds []string
}

func (c NotifyConfig) enabled() bool { return len(c.URLs) > 0 || c.URLFile != "" }

// check refuses what the notifier would (the files are read at start).
func (c NotifyConfig) check() error {
	if !c.enabled() {
		if c.SecretFile != "" || len(c.Kinds) > 0 {
			return errors.New("--notify-secret-file and --notify-kind need a receiver: add --notify-url or --notify-url-file")
		}
		return nil
	}
	for _, u := range c.URLs {
		if err := notify.CheckURL(u); err != nil {
			return err
		}
	}
	for _, k := range c.Kinds {
		if err := notify.CheckKind(k); err != nil {
			return err
		}
	}
	return nil
}

// options reads c's files into the notifier's options (without its
// replica); ok is false when no receiver is configured. It runs before the
// node joins, so a missing file is named at once.
func (c NotifyConfig) options(log *slog.Logger) (o notify.Options, ok bool, err error) {
	if !c.enabled() {
		return o, false, nil
	}
	o = notify.Options{URLs: append([]string(nil), c.URLs...), Kinds: c.Kinds, Logger: log.With("component", "notify")}
	if c.URLFile != "" {
		b, err := os.ReadFile(c.URLFile)
		if err != nil {
			return o, false, fmt.Errorf("--notify-url-file: %w", err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			if err := notify.CheckURL(line); err != nil {
				return o, false, fmt.Errorf("--notify-url-file %s, line %d: %w", c.URLFile, i+1, err)
			}
			o.URLs = append(o.URLs, line)
		}
		if len(o.URLs) == 0 {
			return o, false, fmt.Errorf("--notify-url-file %s holds no URL and no --notify-url is given", c.URLFile)
		}
	}
	if c.SecretFile != "" {
		b, err := os.ReadFile(c.SecretFile)
		if err != nil {
			return o, false, fmt.Errorf("--notify-secret-file: %w", err)
		}
		if o.Secret = []byte(strings.TrimSpace(string(b))); len(o.Secret) == 0 {
			return o, false, fmt.Errorf("--notify-secret-file %s is empty", c.SecretFile)
		}
	}
	return o, true, nil
}

// startNotifier runs the notifier of o on store in g and registers its
// counters with reg (nil: none); the returned function wakes it after
// applied entries (a no-op without receivers).
func startNotifier(g *group, o notify.Options, ok bool, store *raftstore.Store, reg prometheus.Registerer) (func(), error) {
	if !ok {
		return func() {}, nil
	}
	o.Replica = store
	n, err := notify.New(o)
	if err != nil {
		return nil, err
	}
	if reg != nil {
		if err := reg.Register(notifyCollector{n.Stats}); err != nil {
			return nil, fmt.Errorf("registering the notifier's metrics: %w", err)
		}
	}
	g.Go("notifier", n.Run)
	return n.Notify, nil
}

// notifyDesc is the notifier's one counter family.
var notifyDesc = prometheus.NewDesc("blixard_notifications_total",
	"Notifications of this node's notifier over all receivers while it led, by result: sent (a receiver accepted it), "+
		"retried (an attempt failed and was made again), failed (given up), dropped (pushed out of a full queue), "+
		"discarded (queued when leadership moved on; the next leader sends it).",
	[]string{"result"}, nil)

// notifyCollector exports notify.Stats at scrape time.
type notifyCollector struct{ stats func() notify.Stats }

func (c notifyCollector) Describe(ch chan<- *prometheus.Desc) { ch <- notifyDesc }

func (c notifyCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	for _, r := range []struct {
		result string
		n      uint64
	}{{"sent", s.Sent}, {"retried", s.Retried}, {"failed", s.Failed}, {"dropped", s.Dropped}, {"discarded", s.Discarded}} {
		ch <- prometheus.MustNewConstMetric(notifyDesc, prometheus.CounterValue, float64(r.n), r.result)
	}
}
