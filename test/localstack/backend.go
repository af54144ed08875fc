package localstack

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
)

// Backend names a metrics backend the stack can run: a real binary that
// scrapes the stack's targets itself and answers Prometheus' query API.
type Backend string

const (
	// Prometheus2 is Debian's Prometheus (2.42): bin/prometheus if it
	// exists, else prometheus on PATH.
	Prometheus2 Backend = "prometheus2"
	// Prometheus3 is bin/prometheus3, built by make tools.
	Prometheus3 Backend = "prometheus3"
	// VictoriaMetrics is single-node bin/victoria-metrics, built by make
	// tools. It answers in MetricsQL.
	VictoriaMetrics Backend = "victoriametrics"
)

// Backends lists every backend, in the order the e2e matrix runs them.
var Backends = []Backend{Prometheus3, Prometheus2, VictoriaMetrics}

// ParseBackends reads a comma-separated list of backend names, such as
// "prometheus3,victoriametrics".
func ParseBackends(list string) ([]Backend, error) {
	var out []Backend
	for name := range strings.SplitSeq(list, ",") {
		b := Backend(strings.TrimSpace(name))
		if b == "" {
			continue
		}
		if !b.known() {
			return nil, fmt.Errorf("unknown metrics backend %q (known: %s)", b, joinBackends(Backends))
		}
		if strings.Contains(","+joinBackends(out)+",", ","+string(b)+",") {
			return nil, fmt.Errorf("metrics backend %q listed twice", b)
		}
		out = append(out, b)
	}
	if len(out) == 0 {
		return nil, errors.New("no metrics backend listed")
	}
	return out, nil
}

func joinBackends(bs []Backend) string {
	names := make([]string, len(bs))
	for i, b := range bs {
		names[i] = string(b)
	}
	return strings.Join(names, ",")
}

func (b Backend) known() bool {
	switch b {
	case Prometheus2, Prometheus3, VictoriaMetrics:
		return true
	}
	return false
}

// defaultSettingsScrapeInterval is each job's scrape interval on a backend
// run with its default settings, unless MetricsOptions say otherwise.
const defaultSettingsScrapeInterval = 5 * time.Second

// MetricsOptions configures one metrics backend.
type MetricsOptions struct {
	// Backend is the kind of server; empty means Prometheus2.
	Backend Backend
	// Path is its binary. Empty means the backend's default (see the
	// Backend constants), looked up in the stack's BinDir.
	Path string
	// DefaultSettings runs the backend with its own defaults instead of the
	// stack's lab settings (1s global scrape and evaluation intervals, and
	// VictoriaMetrics' latency offset lowered to 1s): no global section in
	// the scrape configuration, only each job's scrape_interval
	// (ScrapeInterval). Prometheus then evaluates subqueries without a step
	// at its default evaluation_interval, 1m.
	DefaultSettings bool
	// ScrapeInterval is each job's scrape interval with DefaultSettings;
	// empty means 5s.
	ScrapeInterval time.Duration
}

// MetricsServer is a running metrics backend that scrapes the stack's
// exporter, itself ("prometheus") and any jobs added.
type MetricsServer struct {
	// Backend is its kind.
	Backend Backend
	// URL is its base URL, such as http://127.0.0.1:40123. It stays the
	// same across Stop and Start.
	URL string
	// API queries it.
	API v1.API

	p *promServer
}

func newMetricsServer(path string, mo MetricsOptions, dir, exporterAddr string, jobs []ScrapeJob) (*MetricsServer, error) {
	p, err := newPromServer(path, mo, dir, exporterAddr, jobs)
	if err != nil {
		return nil, err
	}
	promAPI, err := p.api()
	if err != nil {
		return nil, err
	}
	return &MetricsServer{Backend: mo.Backend, URL: p.url, API: promAPI, p: p}, nil
}

// Start starts the backend again after Stop, on the same address with the
// same storage, and waits until it is ready and has scraped the exporter. It
// does nothing if the backend is running.
func (m *MetricsServer) Start(ctx context.Context) error {
	startedAt := time.Now()
	if err := m.p.spawn(); err != nil {
		if errors.Is(err, errRunning) {
			return nil
		}
		return err
	}
	return m.p.waitReady(ctx, m.API, startedAt)
}

// Stop stops the backend (SIGTERM, then SIGKILL after 15 s) to simulate an
// outage. It does nothing if the backend is not running.
func (m *MetricsServer) Stop() error {
	return m.p.stop()
}

// StartMetrics starts another metrics backend beside the stack's own, with
// the same exporter and the jobs given, and waits as Start does. Stack.Stop
// stops it.
func (s *Stack) StartMetrics(ctx context.Context, mo MetricsOptions, jobs ...ScrapeJob) (*MetricsServer, error) {
	mo.Backend = backendOrDefault(mo.Backend)
	path, err := resolveBackend(mo, s.binDir)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	n := len(s.extra)
	s.mu.Unlock()
	dir := filepath.Join(s.Dir, fmt.Sprintf("%s-%d", mo.Backend, n+1))
	m, err := newMetricsServer(path, mo, dir, s.Exporter.Addr, jobs)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.extra = append(s.extra, m)
	s.mu.Unlock()
	if err := m.Start(ctx); err != nil {
		return nil, err
	}
	return m, nil
}

func backendOrDefault(b Backend) Backend {
	if b == "" {
		return Prometheus2
	}
	return b
}

// resolveBackend finds the binary of a backend.
func resolveBackend(mo MetricsOptions, binDir string) (string, error) {
	if mo.Path != "" {
		return mo.Path, nil
	}
	switch mo.Backend {
	case Prometheus2:
		return resolvePrometheus("", binDir)
	case Prometheus3, VictoriaMetrics:
		name := map[Backend]string{Prometheus3: "prometheus3", VictoriaMetrics: "victoria-metrics"}[mo.Backend]
		p := filepath.Join(binDir, name)
		if !isExecutable(p) {
			return "", fmt.Errorf("find %s in %s (run make tools): %w", name, binDir, exec.ErrNotFound)
		}
		return p, nil
	}
	return "", fmt.Errorf("unknown metrics backend %q", mo.Backend)
}
