package scaler

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"maps"
	"net/http"
	"sync"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
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
	// Namespace is the workload's: it chooses the tenant of a server with
	// a tenant setting.
	Namespace string `json:"namespace"`
}

// Metadata is prometheusMetadata under a name other packages can use: the
// informer fills it from annotations.
type Metadata = prometheusMetadata

// prometheusScaler decides from one PromQL query compared with a threshold.
//
// httpClient, cooldownPeriod, defaultServerAddress and defaultHeaders are
// the fields of the seed's shape (scaling-module.md); they are kept so that
// the type reads as documented, while the requests themselves go through
// servers, which owns the clients and shares answers. Of them, httpClient
// and defaultServerAddress are set and never read: they are there for the
// seed's shape alone.
type prometheusScaler struct {
	httpClient           *http.Client
	metadata             *prometheusMetadata
	cooldownPeriod       time.Duration
	defaultServerAddress string
	// defaultHeaders are the operator's headers for the default server;
	// they are empty unless this scaler asks that server.
	defaultHeaders map[string]string

	servers *Servers
	// metric is the workload's query on its resolved server with the
	// headers every request of this scaler carries (the workload's own
	// under the default headers, default server only), its sharing key
	// worked out once.
	metric question

	mu sync.Mutex
	// last is the reading behind the last successful decision; confirmed
	// the last answer of ConfirmIdle.
	last, confirmed Reading
	// lastScalar is set when the last instant answer was a scalar.
	lastScalar bool
}

// ErrCannotConfirm is returned (wrapped) by ConfirmIdle when the question
// cannot be asked of this query or server: a query whose result is a
// scalar, or a server that refuses the subquery. The caller then relies on
// its own readings alone.
var ErrCannotConfirm = errors.New("idleness over the cooldown cannot be confirmed with a subquery")

// New returns the Scaler for one workload. The metadata's ServerAddress must
// be empty (the default server) or already checked with Servers.Allowed.
func New(servers *Servers, md Metadata, cooldown time.Duration) (*prometheusScaler, error) {
	if md.ServerAddress == "" {
		md.ServerAddress = servers.defaultAddress
	}
	norm, err := NormalizeAddress(md.ServerAddress)
	if err != nil {
		return nil, err
	}
	md.ServerAddress = norm
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
	// Parsing refused the workload headers the operator does not allow,
	// or sets for this server; this is a second lock on that door, so that
	// an operator's header (a tenant) reaches the server once, with the
	// operator's value.
	headers := map[string]string{}
	for k, v := range md.Headers {
		if err := servers.CheckWorkloadHeader(md.ServerAddress, k); err != nil {
			return nil, fmt.Errorf("workload header: %w", err)
		}
		headers[http.CanonicalHeaderKey(k)] = v
	}
	maps.Copy(headers, s.defaultHeaders)
	// The tenant header comes last and from the Namespace alone; no other
	// source may set it (CheckWorkloadHeader, NewServers), so it is sent
	// once, and being among the headers it keeps tenants' answers apart.
	name, tenant, err := srv.tenantHeaders(md.Namespace)
	if err != nil {
		return nil, err
	}
	if name != "" {
		headers[name] = tenant
	}
	s.metric = newQuestion(md.ServerAddress, md.Query, headers)
	return s, nil
}

// QuestionHash identifies the workload's question: equal for two workloads
// exactly when they send the same query to the same server with the same
// headers, and so share one answer (it hashes the sharing key).
func (s *prometheusScaler) QuestionHash() uint64 {
	h := fnv.New64a()
	_, _ = io.WriteString(h, s.metric.key)
	return h.Sum64()
}

// IsHealthy asks whether the targets matched by the uptime filter were up
// for the whole cooldown window. A gap in the data counts as down.
func (s *prometheusScaler) IsHealthy(ctx context.Context) (bool, error) {
	q := HealthQuery(s.metadata.UptimeFilter, s.cooldownPeriod)
	a := s.servers.query(ctx, newQuestion(s.metric.server, q, s.metric.headers), healthShareWindow)
	if a.err != nil {
		return false, fmt.Errorf("health query: %w", a.err)
	}
	return a.value == 1, nil
}

// healthShareWindow is how long a health answer serves every workload with
// the same server, filter and window. Workloads with different queries
// check at different moments, so this window is longer than the one for
// metric answers. Being a few seconds old is harmless: it covers the whole
// cooldown window, and a reading taken while Prometheus is down is unknown,
// which restarts the cooldown anyway.
const healthShareWindow = 10 * time.Second

// HealthQuery is the PromQL behind IsHealthy: 1 only if `up{filter}` was 1
// at every step of the window. The step is explicit (SubqueryStep): without
// one, Prometheus uses its evaluation_interval (1m by default), which
// misses short outages and gives no point at all for windows under it.
func HealthQuery(filter string, window time.Duration) string {
	return fmt.Sprintf("min_over_time((max(up{%s}) or vector(0))[%s:%s])", filter, model.Duration(window), model.Duration(SubqueryStep(window)))
}

// SubqueryStep is the step of the subqueries over a window (the health
// query and ConfirmIdle): a sixtieth of the window, rounded to whole
// seconds and kept within [1s, 15s]. At most 15s, every scrape is seen
// whatever the scrape interval at or above 15s, so an outage or a burst of
// one scrape is not stepped over; at least 1s, a window of any length costs
// at most window/1s points, and a window of 1s or more always holds one.
func SubqueryStep(window time.Duration) time.Duration {
	return min(max((window/60).Round(time.Second), minSubqueryStep), maxSubqueryStep)
}

const (
	minSubqueryStep = time.Second
	maxSubqueryStep = 15 * time.Second
)

// ConfirmQuery is the PromQL behind ConfirmIdle: the highest value of query
// at every step of the window.
func ConfirmQuery(query string, window time.Duration) string {
	return fmt.Sprintf("max_over_time((%s)[%s:%s])", query, model.Duration(window), model.Duration(SubqueryStep(window)))
}

// ConfirmIdle asks Prometheus whether the metric stayed below the threshold
// over the whole cooldown window, so that a burst between two checks keeps
// the workload awake. It is asked once per decision to sleep and shared
// like any other question. It returns ErrNoData (wrapped) when the window
// holds no usable value, and ErrCannotConfirm (wrapped) when the query
// gives a scalar or the server refuses the subquery.
func (s *prometheusScaler) ConfirmIdle(ctx context.Context) (bool, error) {
	s.mu.Lock()
	scalar := s.lastScalar
	s.mu.Unlock()
	if scalar {
		return false, fmt.Errorf("the query returns a scalar: %w", ErrCannotConfirm)
	}
	q := ConfirmQuery(s.metadata.Query, s.cooldownPeriod)
	a := s.servers.query(ctx, newQuestion(s.metric.server, q, s.metric.headers), s.servers.shareWindow)
	var apiErr *v1.Error
	switch {
	case errors.Is(a.err, errBadQuery), errors.As(a.err, &apiErr) && apiErr.Type == v1.ErrBadData:
		return false, fmt.Errorf("confirmation query: %w: %w", ErrCannotConfirm, a.err)
	case a.err != nil:
		return false, fmt.Errorf("confirmation query: %w", a.err)
	case a.scalar:
		return false, fmt.Errorf("confirmation query returned a scalar: %w", ErrCannotConfirm)
	}
	r := Reading{Query: q, Value: a.value, Threshold: s.metadata.Threshold}
	s.mu.Lock()
	s.confirmed = r
	s.mu.Unlock()
	return r.Idle(), nil
}

// LastConfirmation returns the reading behind the last answer of
// ConfirmIdle; its Query is the subquery.
func (s *prometheusScaler) LastConfirmation() Reading {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.confirmed
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
	a := s.servers.query(ctx, s.metric, s.servers.shareWindow)
	if a.err != nil {
		return Reading{}, a.err
	}
	r := Reading{Query: s.metadata.Query, Value: a.value, Threshold: s.metadata.Threshold}
	s.mu.Lock()
	s.last, s.lastScalar = r, a.scalar
	s.mu.Unlock()
	return r, nil
}
