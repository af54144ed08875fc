package scaler

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/common/model"
)

// prometheusMetadata is the Prometheus part of one workload's configuration,
// as parsed from its annotations.
type prometheusMetadata struct {
	ServerAddress string            `json:"serverAddress"`
	Query         string            `json:"query"`
	Threshold     float64           `json:"threshold,string"`
	UptimeFilter  string            `json:"uptimeFilter"`
	Headers       map[string]string `json:"headers"`
}

// Metadata is prometheusMetadata under a name other packages can use: the
// informer fills it from annotations.
type Metadata = prometheusMetadata

// prometheusScaler decides from one PromQL query compared with a threshold.
type prometheusScaler struct {
	httpClient           *http.Client
	metadata             *prometheusMetadata
	cooldownPeriod       time.Duration
	defaultServerAddress string
	// defaultHeaders are the operator's headers for the default server;
	// they are empty unless this scaler asks that server.
	defaultHeaders map[string]string

	servers *Servers
	// metric is the workload's query with the headers every request of
	// this scaler carries (the workload's own under the default headers,
	// default server only), its sharing key worked out once.
	metric question

	mu   sync.Mutex
	last Reading
}

// New returns the Scaler for one workload. The metadata's ServerAddress must
// be empty (the default server) or already checked with Servers.Allowed.
func New(servers *Servers, md Metadata, cooldown time.Duration) (*prometheusScaler, error) {
	if md.ServerAddress == "" {
		md.ServerAddress = servers.defaultAddress
	}
	srv, ok := servers.byAddress[md.ServerAddress]
	if !ok {
		return nil, fmt.Errorf("%s is not an allowed Prometheus server", md.ServerAddress)
	}
	s := &prometheusScaler{
		httpClient:           srv.client,
		metadata:             &md,
		cooldownPeriod:       cooldown,
		defaultServerAddress: servers.defaultAddress,
		servers:              servers,
	}
	if md.ServerAddress == servers.defaultAddress {
		s.defaultHeaders = servers.defaultHeaders
	}
	// The operator's headers win over a workload's of the same name, so
	// that a header fencing tenants (X-Scope-OrgID) cannot be overridden.
	headers := map[string]string{}
	for _, h := range []map[string]string{md.Headers, s.defaultHeaders} {
		for k, v := range h {
			headers[http.CanonicalHeaderKey(k)] = v
		}
	}
	s.metric = newQuestion(md.Query, headers)
	return s, nil
}

// IsHealthy asks whether the targets matched by the uptime filter were up
// for the whole cooldown window. A gap in the data counts as down.
func (s *prometheusScaler) IsHealthy(ctx context.Context) (bool, error) {
	q := HealthQuery(s.metadata.UptimeFilter, s.cooldownPeriod)
	v, err := s.servers.query(ctx, s.metadata.ServerAddress, newQuestion(q, s.metric.headers), healthShareWindow)
	if err != nil {
		return false, fmt.Errorf("health query: %w", err)
	}
	return v == 1, nil
}

// healthShareWindow is how long a health answer serves every workload with
// the same server, filter and window. Workloads with different queries
// check at different moments, so this window is longer than the one for
// metric answers. Being a few seconds old is harmless: it covers the whole
// cooldown window, and a reading taken while Prometheus is down is unknown,
// which restarts the cooldown anyway.
const healthShareWindow = 10 * time.Second

// HealthQuery is the PromQL behind IsHealthy: 1 only if `up{filter}` was 1
// at every step of the window.
func HealthQuery(filter string, window time.Duration) string {
	return fmt.Sprintf("min_over_time((max(up{%s}) or vector(0))[%s:])", filter, model.Duration(window))
}

// ShouldScaleToZero reports whether the value is below the threshold.
func (s *prometheusScaler) ShouldScaleToZero(ctx context.Context) (bool, error) {
	r, err := s.read(ctx)
	if err != nil {
		return false, err
	}
	return r.Idle(), nil
}

// ShouldScaleFromZero reports whether the value is at or above the
// threshold.
func (s *prometheusScaler) ShouldScaleFromZero(ctx context.Context) (bool, error) {
	r, err := s.read(ctx)
	if err != nil {
		return false, err
	}
	return !r.Idle(), nil
}

// LastReading returns the reading behind the last successful decision.
func (s *prometheusScaler) LastReading() Reading {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// Close releases nothing: connections belong to the shared server clients.
func (s *prometheusScaler) Close(context.Context) error { return nil }

func (s *prometheusScaler) read(ctx context.Context) (Reading, error) {
	v, err := s.servers.query(ctx, s.metadata.ServerAddress, s.metric, s.servers.shareWindow)
	if err != nil {
		return Reading{}, err
	}
	r := Reading{Query: s.metadata.Query, Value: v, Threshold: s.metadata.Threshold}
	s.mu.Lock()
	s.last = r
	s.mu.Unlock()
	return r, nil
}
