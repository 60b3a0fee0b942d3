package api

import (
	"fmt"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/blixard/blixard/metrics"
)

// metricsHandler serves GET /metrics (read role, like every read): the
// node's registry ([Options.Metrics]: its parts' histograms, the local
// replica's gauges, the Go runtime and process), or, without one, a
// registry of the replica's gauges alone; plus the functions' series
// (functionCollector). promhttp negotiates the format (text, OpenMetrics, protobuf) and
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
	fns := prometheus.NewRegistry()
	fns.MustRegister(functionCollector{state: s.o.Replica.LocalRead, local: s.localFunctions})
	gs := prometheus.Gatherers{g, fns}
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

// promLog routes promhttp's error messages to the node's log.
type promLog struct{ log *slog.Logger }

func (l promLog) Println(v ...any) {
	l.log.Warn("serving /metrics: " + fmt.Sprint(v...))
}
