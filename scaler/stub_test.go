package scaler

import (
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// request is what a Prometheus stand-in saw of one request.
type request struct {
	Method string
	Path   string
	Query  string
	Header http.Header
}

// promStub is a Prometheus stand-in that records every request it gets and
// answers with h.
type promStub struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []request
}

func newPromStub(t *testing.T, h http.HandlerFunc) *promStub {
	return startStub(t, h, httptest.NewServer)
}

func newTLSPromStub(t *testing.T, h http.HandlerFunc) *promStub {
	return startStub(t, h, httptest.NewTLSServer)
}

func startStub(t *testing.T, h http.HandlerFunc, serve func(http.Handler) *httptest.Server) *promStub {
	t.Helper()
	p := &promStub{}
	p.Server = serve(p.handler(h))
	t.Cleanup(p.Close)
	return p
}

func (p *promStub) handler(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		p.mu.Lock()
		p.reqs = append(p.reqs, request{Method: r.Method, Path: r.URL.Path, Query: r.Form.Get("query"), Header: r.Header.Clone()})
		p.mu.Unlock()
		h(w, r)
	}
}

func (p *promStub) requests() []request {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]request(nil), p.reqs...)
}

// reply answers every request with status and body, as Prometheus does.
func reply(status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/query" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	}
}

// vector is a Prometheus instant-vector answer with one series per value.
func vector(values ...string) string {
	series := make([]string, len(values))
	for i, v := range values {
		series[i] = fmt.Sprintf(`{"metric":{"__name__":"http_requests","pod":"web-%d"},"value":[1700000000.123,%q]}`, i, v)
	}
	return `{"status":"success","data":{"resultType":"vector","result":[` + strings.Join(series, ",") + `]}}`
}

// scalar is a Prometheus scalar answer.
func scalar(v string) string {
	return fmt.Sprintf(`{"status":"success","data":{"resultType":"scalar","result":[1700000000.123,%q]}}`, v)
}

const (
	matrixBody = `{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"pod":"web-0"},"values":[[1700000000,"1"],[1700000015,"2"]]}]}}`
	stringBody = `{"status":"success","data":{"resultType":"string","result":[1700000000,"hello"]}}`
	badData    = `{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:5: parse error: unexpected end of input"}`
	execError  = `{"status":"error","errorType":"execution","error":"query processing would load too many samples into memory in query execution"}`
	internal   = `{"status":"error","errorType":"internal","error":"something broke"}`
	unavail    = `{"status":"error","errorType":"unavailable","error":"Service Unavailable"}`
)

// testWorkloadHeaders are the headers the tests' workloads may set.
var testWorkloadHeaders = []string{"X-Scope-OrgID", "x-team", "X-Extra"}

// testOptions are Options good enough for one stand-in, changed by mutate.
func testOptions(address string, mutate func(*Options)) Options {
	o := Options{
		DefaultAddress:         address,
		QueryTimeout:           5 * time.Second,
		MaxConcurrentQueries:   4,
		AllowedWorkloadHeaders: testWorkloadHeaders,
	}
	if mutate != nil {
		mutate(&o)
	}
	return o
}

func mustServers(t *testing.T, o Options) *Servers {
	t.Helper()
	s, err := NewServers(o)
	if err != nil {
		t.Fatalf("NewServers: %v", err)
	}
	return s
}

func mustNew(t *testing.T, s *Servers, md Metadata, cooldown time.Duration) *prometheusScaler {
	t.Helper()
	sc, err := New(s, md, cooldown)
	if err != nil {
		t.Fatalf("New(%+v): %v", md, err)
	}
	return sc
}

// writeFile writes content to name in dir and returns its path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// caPEM is the certificate of a TLS stand-in, PEM-encoded.
func caPEM(p *promStub) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.Certificate().Raw}))
}

// newBlockingStub is a stand-in that holds every request until unblock is
// called (at the latest in cleanup, before the server closes) or the client
// gives up. arrived gets one value per request, if there is room.
func newBlockingStub(t *testing.T, arrived chan<- struct{}) (stub *promStub, unblock func()) {
	t.Helper()
	release := make(chan struct{})
	var once sync.Once
	unblock = func() { once.Do(func() { close(release) }) }
	stub = newPromStub(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case arrived <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		reply(200, vector("1"))(w, r)
	})
	t.Cleanup(unblock)
	return stub, unblock
}

// within runs call and fails the test if it does not return within limit,
// then unblocks the stand-in so that nothing is left running.
func within(t *testing.T, limit time.Duration, unblock func(), call func() (bool, error)) (bool, error) {
	t.Helper()
	type result struct {
		ok  bool
		err error
	}
	done := make(chan result, 1)
	go func() {
		ok, err := call()
		done <- result{ok, err}
	}()
	select {
	case r := <-done:
		return r.ok, r.err
	case <-time.After(limit):
		unblock()
		<-done
		t.Fatalf("call did not return within %v", limit)
		return false, nil
	}
}
