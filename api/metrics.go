package api

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/blixard/blixard/metrics"
)

// metricsHandler serves GET /metrics (read role, like every read): the
// node's registry ([Options.Metrics]: its parts' histograms, the local
// replica's gauges, the Go runtime and process), or, without one, a
// registry of the replica's gauges alone; plus the function gateway's
// series. promhttp negotiates the format (text, OpenMetrics, protobuf) and
// compression with the scraper.
//
// A scrape when the local replica cannot be read is 503, like every read
// (why goes to the node's log only, see [Server.internalError]): a scraper
// then records the target as down rather than a cluster without VMs.
func (s *Server) metricsHandler() http.Handler {
	g := s.o.Metrics
	if g == nil {
		g = metrics.New(metrics.Options{Replica: s.o.Replica}).Gatherer()
	}
	gs := prometheus.Gatherers{g, prometheus.GathererFunc(s.gatherFunctions)}
	h := promhttp.HandlerFor(gs, promhttp.HandlerOpts{
		ErrorLog: promLog{s.log},
		// A replica that fails between this check and the gathering
		// costs the state's series, not the whole scrape.
		ErrorHandling: promhttp.ContinueOnError,
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := s.localRead(w, r); !ok {
			return
		}
		h.ServeHTTP(w, r)
	})
}

// gatherFunctions is the function gateway's series, as WriteFunctionMetrics
// renders them from the local replica and this node's gateway, parsed into
// families so that they join the registry's in one exposition.
// TODO(functions): register them as a collector through
// metrics.Metrics.Registerer and drop this adapter.
func (s *Server) gatherFunctions() ([]*dto.MetricFamily, error) {
	st, err := s.o.Replica.LocalRead()
	if err != nil {
		return nil, nil // the state's own collector reports it
	}
	var buf bytes.Buffer
	WriteFunctionMetrics(&buf, st, s.localFunctions())
	if buf.Len() == 0 {
		return nil, nil
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(&buf)
	if err != nil {
		return nil, fmt.Errorf("function metrics: %w", err)
	}
	out := make([]*dto.MetricFamily, 0, len(fams))
	for _, f := range fams {
		out = append(out, f)
	}
	return out, nil
}

// promLog routes promhttp's error messages to the node's log.
type promLog struct{ log *slog.Logger }

func (l promLog) Println(v ...any) {
	l.log.Warn("serving /metrics: " + fmt.Sprint(v...))
}
