package localstack

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Exporter names: the gauge and its one label.
const (
	ExporterMetric = "zeroscaler_e2e_value"
	ExporterLabel  = "series"
)

// Exporter serves the gauge zeroscaler_e2e_value{series="NAME"} on /metrics.
// Tests set the value that a workload's query reads.
type Exporter struct {
	// Addr is the host:port it listens on.
	Addr string

	gauge  *prometheus.GaugeVec
	srv    *http.Server
	served chan struct{} // closed when Serve has returned
}

func startExporter() (*Exporter, error) {
	reg := prometheus.NewRegistry()
	gauge := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: ExporterMetric,
		Help: "A value set by the end-to-end tests.",
	}, []string{ExporterLabel})
	reg.MustRegister(gauge)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for exporter: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	e := &Exporter{
		Addr:   l.Addr().String(),
		gauge:  gauge,
		srv:    &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second},
		served: make(chan struct{}),
	}
	go func() {
		defer close(e.served)
		_ = e.srv.Serve(l) // returns http.ErrServerClosed after close
	}()
	return e, nil
}

// Set sets the value of a series, creating it if needed.
func (e *Exporter) Set(series string, v float64) {
	e.gauge.WithLabelValues(series).Set(v)
}

// Delete removes a series, so that Prometheus marks it stale and queries for
// it return nothing.
func (e *Exporter) Delete(series string) {
	e.gauge.DeleteLabelValues(series)
}

// Query returns the PromQL selector for a series, such as
// zeroscaler_e2e_value{series="web"}.
func (e *Exporter) Query(series string) string {
	return fmt.Sprintf("%s{%s=%q}", ExporterMetric, ExporterLabel, series)
}

func (e *Exporter) close() error {
	err := e.srv.Close()
	<-e.served
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("close exporter: %w", err)
	}
	return nil
}
