package scaler

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/api"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/config"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v2"
	"golang.org/x/net/http/httpguts"
	"k8s.io/utils/clock"
)

// Options say which Prometheus servers zeroscaler may ask, with which
// credentials, and how hard it may press them.
type Options struct {
	// DefaultAddress is used by workloads that name no server.
	DefaultAddress string
	// AllowedAddresses may be named by workloads; no credentials are sent
	// to them.
	AllowedAddresses []string
	// BearerTokenFile and Headers are credentials for DefaultAddress only.
	// Header names are canonical and distinct (see CheckHeader).
	BearerTokenFile string
	Headers         map[string]string
	// AllowedWorkloadHeaders are the header names, in any case, that
	// workloads may set in zeroscaler.io/headers
	// (--allowed-workload-header). None by default.
	AllowedWorkloadHeaders []string
	// ConfigFile names servers with Prometheus' own HTTP client
	// configuration; each is allowed and gets only its own credentials.
	ConfigFile string
	// QueryTimeout bounds one request to Prometheus.
	QueryTimeout time.Duration
	// MaxConcurrentQueries bounds requests in flight to one server.
	MaxConcurrentQueries int
	// ShareWindow is how long one answer serves every workload asking the
	// same question of the same server with the same headers. Workloads
	// asking the same question check at the same moments (see the handler's
	// firstCheck), so it only needs to cover those moments; it must stay
	// below MaxShareWindow so that no workload ever decides on its own
	// previous answer.
	ShareWindow time.Duration
	// Clock is injected by tests.
	Clock clock.PassiveClock
	// ObserveQuery, if set, is told about every request actually sent.
	ObserveQuery func(server, result string, took time.Duration)
}

// MaxShareWindow is the shortest polling interval allowed; the share window
// must be shorter.
const MaxShareWindow = time.Second

// FileConfig is the format of --prometheus-config.
type FileConfig struct {
	Servers []ServerConfig `yaml:"servers"`
}

// ServerConfig is one Prometheus server and the client configuration used
// for it alone, in the format Prometheus itself uses for scrape targets.
type ServerConfig struct {
	URL              string                  `yaml:"url"`
	HTTPClientConfig config.HTTPClientConfig `yaml:",inline"`
	// Tenant, if set, makes the tenant of each query the workload's
	// Namespace's (see TenantConfig).
	Tenant *TenantConfig `yaml:"tenant,omitempty"`
}

// Servers holds one HTTP client per allowed Prometheus server and shares
// identical queries between workloads.
type Servers struct {
	defaultAddress string
	defaultHeaders map[string]string
	// workloadHeaders are the canonical names on --allowed-workload-header.
	workloadHeaders map[string]bool
	byAddress       map[string]*server
	timeout         time.Duration
	shareWindow     time.Duration
	clock           clock.PassiveClock
	observe         func(server, result string, took time.Duration)
}

// server is one Prometheus with its own transport, concurrency bound and
// shared answers.
type server struct {
	address string
	client  *http.Client
	api     api.Client
	slots   chan struct{}
	// fixed are the canonical names of the headers the operator sets for
	// this server (http_headers in --prometheus-config, --prometheus-header
	// for the default server): each reaches it once, with the operator's
	// value, and no workload may send one.
	fixed map[string]bool
	// tenant, if set, chooses the tenant header's value from the
	// workload's Namespace; its header is among fixed.
	tenant *tenant

	mu      sync.Mutex
	answers map[string]answer
	asking  map[string]*asking // questions in flight
	swept   time.Time          // when stale answers were last dropped
}

// asking is one request in flight; done is closed once a or abandoned is
// set.
type asking struct {
	done      chan struct{}
	a         answer
	abandoned bool
}

type answer struct {
	value float64
	// scalar is set when Prometheus answered with a scalar rather than a
	// vector: such a query cannot be the operand of a subquery.
	scalar bool
	err    error
	at     time.Time
}

// NewServers validates the options and builds one client per server.
func NewServers(o Options) (*Servers, error) {
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if o.ShareWindow >= MaxShareWindow {
		return nil, fmt.Errorf("share window %s must be shorter than %s, the shortest polling interval", o.ShareWindow, MaxShareWindow)
	}
	if o.MaxConcurrentQueries < 1 {
		return nil, fmt.Errorf("max concurrent queries must be at least 1, got %d", o.MaxConcurrentQueries)
	}
	headers := make(map[string]string, len(o.Headers))
	for k, v := range o.Headers {
		if err := CheckHeader(k, v); err != nil {
			return nil, fmt.Errorf("--prometheus-header: %w", err)
		}
		headers[http.CanonicalHeaderKey(k)] = v
	}
	if len(headers) != len(o.Headers) {
		return nil, errors.New("--prometheus-header: a header is given twice (names are not case-sensitive)")
	}
	workloadHeaders, err := workloadHeaderNames(o.AllowedWorkloadHeaders)
	if err != nil {
		return nil, err
	}
	s := &Servers{
		defaultHeaders:  headers,
		workloadHeaders: workloadHeaders,
		byAddress:       map[string]*server{},
		timeout:         o.QueryTimeout,
		shareWindow:     o.ShareWindow,
		clock:           o.Clock,
		observe:         o.ObserveQuery,
	}
	add := func(addr string, cfg config.HTTPClientConfig, t *tenant) error {
		norm, err := NormalizeAddress(addr)
		if err != nil {
			return err
		}
		if _, dup := s.byAddress[norm]; dup {
			return fmt.Errorf("prometheus server %s is configured twice", norm)
		}
		srv, err := newServer(norm, cfg, o.MaxConcurrentQueries)
		if err != nil {
			return fmt.Errorf("prometheus server %s: %w", norm, err)
		}
		if t != nil {
			srv.tenant = t
			srv.fixed[t.header] = true
		}
		s.byAddress[norm] = srv
		return nil
	}

	if o.ConfigFile != "" {
		fc, err := LoadFileConfig(o.ConfigFile)
		if err != nil {
			return nil, err
		}
		for _, sc := range fc.Servers {
			t, err := tenantOf(sc)
			if err != nil {
				// LoadFileConfig checked it; this is for callers that
				// build a FileConfig themselves.
				return nil, fmt.Errorf("prometheus server %s: %w", sc.URL, err)
			}
			if err := add(sc.URL, sc.HTTPClientConfig, t); err != nil {
				return nil, err
			}
		}
		if o.DefaultAddress == "" && len(fc.Servers) > 0 {
			o.DefaultAddress = fc.Servers[0].URL
		}
	}
	if o.DefaultAddress == "" {
		return nil, errors.New("no default Prometheus server: set --prometheus-address or list servers in --prometheus-config")
	}
	def, err := NormalizeAddress(o.DefaultAddress)
	if err != nil {
		return nil, fmt.Errorf("--prometheus-address: %w", err)
	}
	s.defaultAddress = def
	if srv, inFile := s.byAddress[def]; inFile {
		if o.BearerTokenFile != "" {
			return nil, fmt.Errorf("server %s: give its bearer token in --prometheus-config, not --prometheus-bearer-token-file", def)
		}
		for name := range headers {
			if srv.fixed[name] {
				return nil, fmt.Errorf("--prometheus-header %s: server %s sets it in --prometheus-config already", name, def)
			}
		}
	} else {
		cfg := noRedirects()
		if o.BearerTokenFile != "" {
			cfg.Authorization = &config.Authorization{Type: "Bearer", CredentialsFile: o.BearerTokenFile}
		}
		if err := add(def, cfg, nil); err != nil {
			return nil, err
		}
	}
	for name := range headers {
		s.byAddress[def].fixed[name] = true
	}
	for _, a := range o.AllowedAddresses {
		norm, err := NormalizeAddress(a)
		if err != nil {
			return nil, fmt.Errorf("--allowed-server-address: %w", err)
		}
		if _, ok := s.byAddress[norm]; ok {
			continue
		}
		if err := add(norm, noRedirects(), nil); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// noRedirects is the client configuration of a server given by flags. It
// follows no redirect: one would carry the workload's headers, and for the
// default server the flag credentials, to a server nobody allowed. Only a
// --prometheus-config entry may follow redirects, with follow_redirects:
// true.
func noRedirects() config.HTTPClientConfig {
	cfg := config.DefaultHTTPClientConfig
	cfg.FollowRedirects = false
	return cfg
}

// workloadHeaderNames checks --allowed-workload-header and returns the
// canonical names.
func workloadHeaderNames(names []string) (map[string]bool, error) {
	out := make(map[string]bool, len(names))
	for _, n := range names {
		if err := CheckHeader(n, ""); err != nil {
			return nil, fmt.Errorf("--allowed-workload-header: %w", err)
		}
		c := http.CanonicalHeaderKey(n)
		if reservedHeader(c) {
			return nil, fmt.Errorf("--allowed-workload-header %s: zeroscaler never takes this header from a workload (credentials or framing)", c)
		}
		out[c] = true
	}
	return out, nil
}

// reservedHeader reports whether a canonical header name carries
// credentials or framing, which zeroscaler never takes from a workload.
func reservedHeader(canonical string) bool {
	_, reserved := config.ReservedHeaders[canonical]
	return reserved || canonical == "Cookie"
}

// CheckHeader says what is wrong with a header, if anything: its name must
// be an HTTP token and its value free of control characters (CR, LF, NUL
// and the like). It is the one check for headers from flags, files and
// annotations.
func CheckHeader(name, value string) error {
	switch {
	case name == "":
		return errors.New("a header name is empty")
	case !httpguts.ValidHeaderFieldName(name):
		return fmt.Errorf("%q is not a valid header name", name)
	case !httpguts.ValidHeaderFieldValue(value):
		return fmt.Errorf("the value of %s has control characters", name)
	}
	return nil
}

// CheckWorkloadHeader says whether a workload may send the header name to
// the server at address (normalised; empty for the default server): the
// name must be on --allowed-workload-header, and the operator must not set
// that header for that server, in http_headers or as its tenant header.
func (s *Servers) CheckWorkloadHeader(address, name string) error {
	c := http.CanonicalHeaderKey(name)
	if reservedHeader(c) {
		return fmt.Errorf("sets %s, which zeroscaler never takes from a workload", c)
	}
	if address == "" {
		address = s.defaultAddress
	}
	srv, known := s.byAddress[address]
	if known && srv.tenant != nil && srv.tenant.header == c {
		return fmt.Errorf("sets %s, the tenant header of this server, which the operator sets from the Namespace (tenant in --prometheus-config)", c)
	}
	if !s.workloadHeaders[c] {
		return fmt.Errorf("sets %s, which is not on --allowed-workload-header", c)
	}
	if known && srv.fixed[c] {
		return fmt.Errorf("sets %s, which the operator sets for this server", c)
	}
	return nil
}

// LoadFileConfig reads --prometheus-config. Relative file names in it are
// taken relative to the file, as Prometheus does.
func LoadFileConfig(path string) (*FileConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read prometheus config: %w", err)
	}
	fc := &FileConfig{}
	if err := yaml.UnmarshalStrict(b, fc); err != nil {
		return nil, fmt.Errorf("parse prometheus config %s: %w", path, err)
	}
	for i := range fc.Servers {
		sc := &fc.Servers[i]
		if sc.URL == "" {
			return nil, fmt.Errorf("prometheus config %s: servers[%d].url is empty", path, i)
		}
		sc.HTTPClientConfig.SetDirectory(filepath.Dir(path))
		// HTTPClientConfig is inlined, so Prometheus' defaults are not
		// applied: follow_redirects is false unless the entry sets it.
		if err := sc.HTTPClientConfig.Validate(); err != nil {
			return nil, fmt.Errorf("prometheus config %s: servers[%d] (%s): %w", path, i, sc.URL, err)
		}
		if _, err := fileHeaderNames(sc.HTTPClientConfig); err != nil {
			return nil, fmt.Errorf("prometheus config %s: servers[%d] (%s): %w", path, i, sc.URL, err)
		}
		if _, err := tenantOf(*sc); err != nil {
			return nil, fmt.Errorf("prometheus config %s: servers[%d] (%s): %w", path, i, sc.URL, err)
		}
	}
	return fc, nil
}

// fileHeaderNames returns the canonical names a --prometheus-config entry
// sets in http_headers, refusing two that differ only in case: both would
// be sent.
func fileHeaderNames(cfg config.HTTPClientConfig) (map[string]bool, error) {
	out := map[string]bool{}
	if cfg.HTTPHeaders == nil {
		return out, nil
	}
	for name, h := range cfg.HTTPHeaders.Headers {
		c := http.CanonicalHeaderKey(name)
		if out[c] {
			return nil, fmt.Errorf("http_headers sets %s twice (names are not case-sensitive)", c)
		}
		for _, v := range h.Values {
			if err := CheckHeader(name, v); err != nil {
				return nil, fmt.Errorf("http_headers: %w", err)
			}
		}
		out[c] = true
	}
	return out, nil
}

func newServer(addr string, cfg config.HTTPClientConfig, slots int) (*server, error) {
	fixed, err := fileHeaderNames(cfg)
	if err != nil {
		return nil, err
	}
	client, err := config.NewClientFromConfig(cfg, "zeroscaler")
	if err != nil {
		return nil, err
	}
	apiClient, err := api.NewClient(api.Config{Address: addr, Client: client})
	if err != nil {
		return nil, err
	}
	return &server{
		address: addr,
		client:  client,
		api:     apiClient,
		slots:   make(chan struct{}, slots),
		fixed:   fixed,
		answers: map[string]answer{},
		asking:  map[string]*asking{},
	}, nil
}

// NormalizeAddress checks that addr is a plain http(s) base URL and returns
// it without a trailing slash, so that allow-list comparisons are exact.
func NormalizeAddress(addr string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(addr))
	if err != nil {
		return "", fmt.Errorf("%q is not a URL: %w", addr, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return "", fmt.Errorf("%q: scheme must be http or https", addr)
	case u.Host == "":
		return "", fmt.Errorf("%q: host is missing", addr)
	case u.User != nil:
		return "", fmt.Errorf("%q: credentials in the URL are not allowed", addr)
	case u.RawQuery != "" || u.Fragment != "":
		return "", fmt.Errorf("%q: query and fragment are not allowed", addr)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return u.String(), nil
}

// DefaultAddress is the server used by workloads that name none.
func (s *Servers) DefaultAddress() string { return s.defaultAddress }

// Allowed returns the normalized address if addr is a server the operator
// allowed, and an error saying why not otherwise. The error, which reaches
// Events that namespace users read, names the flags that govern the
// allow-list but not the servers on it; Addresses lists them for the
// daemon's log.
func (s *Servers) Allowed(addr string) (string, error) {
	norm, err := NormalizeAddress(addr)
	if err != nil {
		return "", err
	}
	if _, ok := s.byAddress[norm]; !ok {
		return "", errors.New("is not a Prometheus server the operator allowed (--prometheus-address, --allowed-server-address, --prometheus-config)")
	}
	return norm, nil
}

// Addresses lists every allowed server, sorted.
func (s *Servers) Addresses() []string { return s.addresses() }

func (s *Servers) addresses() []string {
	out := make([]string, 0, len(s.byAddress))
	for a := range s.byAddress {
		out = append(out, a)
	}
	sort.Strings(out)
	return out
}

// query returns the answer to q, sending the request only if no answer to
// the same question is fresh enough and none is in flight.
func (s *Servers) query(ctx context.Context, q question, window time.Duration) answer {
	srv, ok := s.byAddress[q.server]
	if !ok {
		// Parsing rejects such addresses; this is a second lock on the door.
		return answer{err: fmt.Errorf("%s is not an allowed Prometheus server", q.server)}
	}
	for {
		srv.mu.Lock()
		if a, ok := srv.freshLocked(q.key, s.clock.Now(), window); ok {
			srv.mu.Unlock()
			return a
		}
		in, inFlight := srv.asking[q.key]
		if !inFlight {
			in = &asking{done: make(chan struct{})}
			srv.asking[q.key] = in
		}
		srv.mu.Unlock()
		if !inFlight {
			return s.askFor(ctx, srv, q, in, window)
		}
		// Someone asks already: wait for that answer, on this goroutine.
		select {
		case <-ctx.Done():
			return answer{err: ctx.Err()}
		case <-in.done:
		}
		if !in.abandoned {
			return in.a
		}
		// The asker stopped before its answer came; ask again.
	}
}

// askFor sends the request for everyone waiting on in. A request whose
// caller stops (its loop ends) is abandoned, not answered: the others
// waiting ask again rather than take the cancellation for an outage.
func (s *Servers) askFor(ctx context.Context, srv *server, q question, in *asking, window time.Duration) answer {
	a := s.ask(ctx, srv, q.headers, q.promql)
	srv.mu.Lock()
	delete(srv.asking, q.key)
	if a.err != nil && ctx.Err() != nil {
		in.abandoned = true
	} else {
		in.a = a
		srv.keepLocked(q.key, a, max(window, s.shareWindow))
	}
	srv.mu.Unlock()
	close(in.done)
	if in.abandoned {
		return answer{err: ctx.Err()}
	}
	return a
}

// keepLocked stores an answer and, once a minute, drops the stale ones, so
// that questions nobody asks any more (a changed query) do not pile up.
func (srv *server) keepLocked(key string, a answer, window time.Duration) {
	srv.answers[key] = a
	if a.at.Sub(srv.swept) < time.Minute {
		return
	}
	for k, old := range srv.answers {
		if a.at.Sub(old.at) >= window {
			delete(srv.answers, k)
		}
	}
	srv.swept = a.at
}

func (srv *server) freshLocked(key string, now time.Time, window time.Duration) (answer, bool) {
	a, ok := srv.answers[key]
	if !ok {
		return answer{}, false
	}
	if now.Sub(a.at) >= window {
		delete(srv.answers, key)
		return answer{}, false
	}
	return a, true
}

// ask sends one request, bounded by the query timeout. A request whose
// caller's ctx ended is not counted: it tells nothing about the server.
func (s *Servers) ask(ctx context.Context, srv *server, headers map[string]string, promql string) answer {
	caller := ctx
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	started := s.clock.Now()
	record := func(err error) {
		if caller.Err() == nil {
			s.record(srv, err, started)
		}
	}
	select {
	case srv.slots <- struct{}{}:
	case <-ctx.Done():
		err := fmt.Errorf("wait for a free query slot: %w", ctx.Err())
		record(err)
		return answer{err: err, at: started}
	}
	defer func() { <-srv.slots }()

	hc := &headerClient{Client: srv.api, headers: headers}
	value, _, _, err := v1.NewAPI(hc).Query(ctx, promql, time.Time{}, v1.WithTimeout(s.timeout))
	var f float64
	switch {
	case err == nil:
		f, err = single(value)
	case hc.status == http.StatusBadRequest || hc.status == http.StatusUnprocessableEntity:
		// Prometheus says bad_data; other backends (VictoriaMetrics) say
		// the same with the status alone.
		err = fmt.Errorf("query %s: %w (%w)", srv.address, err, errBadQuery)
	default:
		err = fmt.Errorf("query %s: %w", srv.address, err)
	}
	record(err)
	_, isScalar := value.(*model.Scalar)
	// An answer is as old as its question: stamped when it was asked, a
	// check one polling interval later never takes it for fresh.
	return answer{value: f, scalar: isScalar && err == nil, err: err, at: started}
}

// errBadQuery marks an answer the server refused with HTTP 400 or 422: the
// query itself is wrong for that server.
var errBadQuery = errors.New("the server refused the query")

func (s *Servers) record(srv *server, err error, started time.Time) {
	if s.observe != nil {
		s.observe(srv.address, ResultKind(err), s.clock.Since(started))
	}
}

// single reduces a query result to one number.
func single(v model.Value) (float64, error) {
	var f float64
	switch v := v.(type) {
	case model.Vector:
		switch len(v) {
		case 0:
			return 0, fmt.Errorf("empty result: %w", ErrNoData)
		case 1:
			f = float64(v[0].Value)
		default:
			return 0, fmt.Errorf("%d series: %w", len(v), ErrMultipleSeries)
		}
	case *model.Scalar:
		f = float64(v.Value)
	default:
		return 0, fmt.Errorf("query returned a %s; it must return a vector of one series or a scalar", v.Type())
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("value %v: %w", f, ErrNoData)
	}
	return f, nil
}

// ResultKind names the outcome of a query for metrics.
func ResultKind(err error) string {
	var apiErr *v1.Error
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrNoData):
		return "no_data"
	case errors.Is(err, ErrMultipleSeries):
		return "multiple_series"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, errBadQuery):
		return "bad_query"
	case errors.As(err, &apiErr):
		switch apiErr.Type {
		case v1.ErrTimeout:
			return "timeout"
		case v1.ErrBadData, v1.ErrExec:
			return "bad_query"
		case v1.ErrBadResponse:
			return "bad_response"
		}
		return "server_error"
	}
	return "error"
}

// question is a query sent to one server with the headers it is sent with,
// and the key its answer is shared under.
type question struct {
	server  string
	promql  string
	headers map[string]string
	key     string
}

func newQuestion(server, promql string, headers map[string]string) question {
	return question{server: server, promql: promql, headers: headers, key: questionKey(server, promql, headers)}
}

// questionKey is the one definition of "the same question": the resolved
// server address, the query and the headers actually sent (canonical
// names). Two workloads share an answer, and check on the same grid (see
// prometheusScaler.QuestionHash), only if their keys are equal.
func questionKey(server, promql string, headers map[string]string) string {
	names := make([]string, 0, len(headers))
	for k := range headers {
		names = append(names, k)
	}
	sort.Strings(names)
	// Quoted, so that no query can spell another question's server or
	// headers.
	var b strings.Builder
	b.WriteString(strconv.Quote(server))
	b.WriteByte(' ')
	b.WriteString(strconv.Quote(promql))
	for _, k := range names {
		b.WriteByte(' ')
		b.WriteString(strconv.Quote(k))
		b.WriteByte('=')
		b.WriteString(strconv.Quote(headers[k]))
	}
	return b.String()
}

// headerClient adds a workload's non-secret headers to each request and
// remembers the status of the last response.
type headerClient struct {
	api.Client
	headers map[string]string
	status  int
}

func (c *headerClient) Do(ctx context.Context, req *http.Request) (*http.Response, []byte, error) {
	for k, v := range c.headers {
		req.Header.Set(k, v)
	}
	resp, body, err := c.Client.Do(ctx, req)
	if resp != nil {
		c.status = resp.StatusCode
	}
	return resp, body, err
}
