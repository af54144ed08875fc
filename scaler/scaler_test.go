package scaler

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/model"
)

func TestDecisions(t *testing.T) {
	const query = `sum(rate(http_requests_total{service="web"}[1m]))`
	tests := []struct {
		name      string
		status    int
		body      string
		threshold float64
		// wantIdle is ShouldScaleToZero's answer; ShouldScaleFromZero must
		// give the opposite. Only read when wantKind is "ok".
		wantIdle  bool
		wantValue float64
		wantIs    error
		wantKind  string
	}{
		{name: "vector of one, idle", status: 200, body: vector("0.02"), threshold: 0.1, wantIdle: true, wantValue: 0.02, wantKind: "ok"},
		{name: "vector of one, active", status: 200, body: vector("5"), threshold: 0.1, wantIdle: false, wantValue: 5, wantKind: "ok"},
		{name: "vector of one, equal to threshold is active", status: 200, body: vector("0.1"), threshold: 0.1, wantIdle: false, wantValue: 0.1, wantKind: "ok"},
		{name: "vector of one, zero with zero threshold is active", status: 200, body: vector("0"), threshold: 0, wantIdle: false, wantValue: 0, wantKind: "ok"},
		{name: "vector of one, negative value", status: 200, body: vector("-3"), threshold: 0, wantIdle: true, wantValue: -3, wantKind: "ok"},
		{name: "vector with warnings", status: 200, body: vector("0")[:len(vector("0"))-1] + `,"warnings":["partial response"]}`, threshold: 1, wantIdle: true, wantValue: 0, wantKind: "ok"},
		{name: "scalar, idle", status: 200, body: scalar("0"), threshold: 1, wantIdle: true, wantValue: 0, wantKind: "ok"},
		{name: "scalar, active", status: 200, body: scalar("42"), threshold: 1, wantIdle: false, wantValue: 42, wantKind: "ok"},
		{name: "empty vector", status: 200, body: vector(), threshold: 1, wantIs: ErrNoData, wantKind: "no_data"},
		{name: "several series", status: 200, body: vector("1", "2", "3"), threshold: 1, wantIs: ErrMultipleSeries, wantKind: "multiple_series"},
		{name: "two series", status: 200, body: vector("0", "0"), threshold: 1, wantIs: ErrMultipleSeries, wantKind: "multiple_series"},
		{name: "vector NaN", status: 200, body: vector("NaN"), threshold: 1, wantIs: ErrNoData, wantKind: "no_data"},
		{name: "vector +Inf", status: 200, body: vector("+Inf"), threshold: 1, wantIs: ErrNoData, wantKind: "no_data"},
		{name: "vector -Inf", status: 200, body: vector("-Inf"), threshold: 1, wantIs: ErrNoData, wantKind: "no_data"},
		{name: "scalar NaN", status: 200, body: scalar("NaN"), threshold: 1, wantIs: ErrNoData, wantKind: "no_data"},
		{name: "scalar +Inf", status: 200, body: scalar("+Inf"), threshold: 1, wantIs: ErrNoData, wantKind: "no_data"},
		{name: "matrix", status: 200, body: matrixBody, threshold: 1, wantKind: "error"},
		{name: "string result", status: 200, body: stringBody, threshold: 1, wantKind: "bad_response"},
		{name: "malformed JSON", status: 200, body: `{"status":"success","data":{"resultType":"vector","result":[`, threshold: 1, wantKind: "bad_response"},
		{name: "not JSON at all", status: 200, body: `<html>proxy login</html>`, threshold: 1, wantKind: "bad_response"},
		{name: "value not a number", status: 200, body: vector("lots"), threshold: 1, wantKind: "bad_response"},
		{name: "Prometheus error body bad_data 400", status: 400, body: badData, threshold: 1, wantKind: "bad_query"},
		{name: "Prometheus error body execution 422", status: 422, body: execError, threshold: 1, wantKind: "bad_query"},
		{name: "500 without body", status: 500, body: "", threshold: 1, wantKind: "server_error"},
		{name: "500 with Prometheus error body", status: 500, body: internal, threshold: 1, wantKind: "server_error"},
		{name: "503 without body", status: 503, body: "Service Unavailable", threshold: 1, wantKind: "server_error"},
		{name: "503 with Prometheus error body", status: 503, body: unavail, threshold: 1, wantKind: "server_error"},
		{name: "404", status: 404, body: "404 page not found", threshold: 1, wantKind: "server_error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stub := newPromStub(t, reply(tt.status, tt.body))
			var (
				mu       sync.Mutex
				observed []string
			)
			servers := mustServers(t, testOptions(stub.URL, func(o *Options) {
				o.ObserveQuery = func(server, result string, _ time.Duration) {
					mu.Lock()
					defer mu.Unlock()
					if server != stub.URL {
						result = "wrong server " + server
					}
					observed = append(observed, result)
				}
			}))
			s := mustNew(t, servers, Metadata{Query: query, Threshold: tt.threshold}, 5*time.Minute)
			ctx := context.Background()

			toZero, errTo := s.ShouldScaleToZero(ctx)
			fromZero, errFrom := s.ShouldScaleFromZero(ctx)

			for _, err := range []error{errTo, errFrom} {
				if got := ResultKind(err); got != tt.wantKind {
					t.Errorf("ResultKind(%v) = %q, want %q", err, got, tt.wantKind)
				}
				if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
					t.Errorf("error %v is not %v", err, tt.wantIs)
				}
			}
			if tt.wantKind == "ok" {
				if errTo != nil || errFrom != nil {
					t.Fatalf("unexpected errors: %v, %v", errTo, errFrom)
				}
				if toZero != tt.wantIdle || fromZero == tt.wantIdle {
					t.Errorf("ShouldScaleToZero = %v, ShouldScaleFromZero = %v; want %v, %v", toZero, fromZero, tt.wantIdle, !tt.wantIdle)
				}
				want := Reading{Query: query, Value: tt.wantValue, Threshold: tt.threshold}
				if got := s.LastReading(); got != want {
					t.Errorf("LastReading = %+v, want %+v", got, want)
				}
			} else {
				if errTo == nil || errFrom == nil {
					t.Fatalf("want errors, got %v, %v", errTo, errFrom)
				}
				if toZero || fromZero {
					t.Errorf("an error must come with false: ShouldScaleToZero = %v, ShouldScaleFromZero = %v", toZero, fromZero)
				}
				if got := s.LastReading(); got != (Reading{}) {
					t.Errorf("LastReading after errors = %+v, want none", got)
				}
			}

			reqs := stub.requests()
			if len(reqs) != 2 {
				t.Fatalf("got %d requests, want 2 (sharing is off)", len(reqs))
			}
			for _, r := range reqs {
				if r.Path != "/api/v1/query" || r.Query != query {
					t.Errorf("request %s query=%q, want /api/v1/query query=%q", r.Path, r.Query, query)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if len(observed) != 2 || observed[0] != tt.wantKind || observed[1] != tt.wantKind {
				t.Errorf("ObserveQuery saw %q, want twice %q", observed, tt.wantKind)
			}
		})
	}
}

func TestTimeout(t *testing.T) {
	stub, unblock := newBlockingStub(t, nil)

	servers := mustServers(t, testOptions(stub.URL, func(o *Options) { o.QueryTimeout = 50 * time.Millisecond }))
	s := mustNew(t, servers, Metadata{Query: "up", Threshold: 1}, time.Minute)

	tests := []struct {
		name string
		call func(context.Context) (bool, error)
	}{
		{"ShouldScaleToZero", s.ShouldScaleToZero},
		{"ShouldScaleFromZero", s.ShouldScaleFromZero},
		{"IsHealthy", s.IsHealthy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			got, err := within(t, 5*time.Second, unblock, func() (bool, error) { return tt.call(context.Background()) })
			if err == nil || got {
				t.Fatalf("got %v, %v; want false and an error", got, err)
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("error %v is not context.DeadlineExceeded", err)
			}
			if kind := ResultKind(err); kind != "timeout" {
				t.Errorf("ResultKind = %q, want timeout", kind)
			}
			if took := time.Since(start); took > 3*time.Second {
				t.Errorf("took %v; the 50ms query timeout did not bound it", took)
			}
		})
	}
}

func TestCallerContextCancelled(t *testing.T) {
	stub, unblock := newBlockingStub(t, nil)
	servers := mustServers(t, testOptions(stub.URL, nil))
	s := mustNew(t, servers, Metadata{Query: "up", Threshold: 1}, time.Minute)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	got, err := within(t, 5*time.Second, unblock, func() (bool, error) { return s.ShouldScaleFromZero(ctx) })
	if got || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, %v; want false, context.DeadlineExceeded", got, err)
	}
	if kind := ResultKind(err); kind != "timeout" {
		t.Errorf("ResultKind = %q, want timeout", kind)
	}
}

func TestIsHealthy(t *testing.T) {
	const wantQuery = `min_over_time((max(up{job="prometheus"}) or vector(0))[5m:5s])`
	tests := []struct {
		name    string
		status  int
		body    string
		want    bool
		wantErr bool
	}{
		{name: "up for the whole window", status: 200, body: vector("1"), want: true},
		{name: "down at some point", status: 200, body: vector("0"), want: false},
		{name: "scalar 1", status: 200, body: scalar("1"), want: true},
		{name: "fraction is not healthy", status: 200, body: vector("0.5"), want: false},
		{name: "no data", status: 200, body: vector(), wantErr: true},
		{name: "server error", status: 500, body: "", wantErr: true},
		{name: "bad filter", status: 400, body: badData, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stub := newPromStub(t, reply(tt.status, tt.body))
			servers := mustServers(t, testOptions(stub.URL, nil))
			s := mustNew(t, servers, Metadata{Query: "sum(x)", Threshold: 1, UptimeFilter: `job="prometheus"`}, 5*time.Minute)
			got, err := s.IsHealthy(context.Background())
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("IsHealthy = %v, %v; want %v, error %v", got, err, tt.want, tt.wantErr)
			}
			reqs := stub.requests()
			if len(reqs) != 1 || reqs[0].Query != wantQuery {
				t.Fatalf("requests %+v, want one with query %s", reqs, wantQuery)
			}
			if got := s.LastReading(); got != (Reading{}) {
				t.Errorf("the health query changed LastReading to %+v", got)
			}
		})
	}
}

// Every health query carries an explicit step: without one, Prometheus
// steps by its evaluation_interval and finds no point in a short window.
func TestHealthQuery(t *testing.T) {
	tests := []struct {
		filter string
		window time.Duration
		want   string
	}{
		{`job="prometheus"`, 5 * time.Minute, `min_over_time((max(up{job="prometheus"}) or vector(0))[5m:5s])`},
		{`job="api",namespace="shop"`, 90 * time.Second, `min_over_time((max(up{job="api",namespace="shop"}) or vector(0))[1m30s:2s])`},
		{`job=~"node.*"`, time.Hour, `min_over_time((max(up{job=~"node.*"}) or vector(0))[1h:15s])`},
		{`job="p"`, 30 * time.Second, `min_over_time((max(up{job="p"}) or vector(0))[30s:1s])`},
		{`job="p"`, time.Second, `min_over_time((max(up{job="p"}) or vector(0))[1s:1s])`},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := HealthQuery(tt.filter, tt.window); got != tt.want {
				t.Errorf("HealthQuery(%q, %v) = %s, want %s", tt.filter, tt.window, got, tt.want)
			}
		})
	}
}

func TestSubqueryStep(t *testing.T) {
	tests := []struct {
		window, want time.Duration
	}{
		{time.Second, time.Second},
		{30 * time.Second, time.Second},
		{89 * time.Second, time.Second},
		{90 * time.Second, 2 * time.Second},
		{5 * time.Minute, 5 * time.Second},
		{15 * time.Minute, 15 * time.Second},
		{16 * time.Minute, 15 * time.Second},
		{24 * time.Hour, 15 * time.Second},
	}
	for _, tt := range tests {
		if got := SubqueryStep(tt.window); got != tt.want {
			t.Errorf("SubqueryStep(%v) = %v, want %v", tt.window, got, tt.want)
		}
	}
}

// Whatever the window, the step is whole seconds within [1s, 15s], gives
// at least one point and at most one per second, and both subqueries carry
// it.
func FuzzSubqueryStep(f *testing.F) {
	for _, s := range []int64{1, 30, 59, 61, 90, 299, 300, 899, 900, 901, 86400} {
		f.Add(s * int64(time.Second))
	}
	f.Add(int64(1500 * time.Millisecond))
	f.Fuzz(func(t *testing.T, ns int64) {
		window := time.Duration(ns)
		if window < time.Second {
			t.Skip("cooldowns are at least 1s")
		}
		step := SubqueryStep(window)
		if step < time.Second || step > 15*time.Second || step%time.Second != 0 || step > window {
			t.Fatalf("SubqueryStep(%v) = %v", window, step)
		}
		suffix := ":" + model.Duration(step).String() + "])"
		if q := HealthQuery(`job="x"`, window); !strings.HasSuffix(q, suffix) {
			t.Errorf("HealthQuery(%v) = %s, want the step %v", window, q, step)
		}
		if q := ConfirmQuery("x", window); !strings.HasSuffix(q, suffix) {
			t.Errorf("ConfirmQuery(%v) = %s, want the step %v", window, q, step)
		}
	})
}

func TestReading(t *testing.T) {
	tests := []struct {
		r        Reading
		wantIdle bool
		want     string
	}{
		{Reading{Query: "q", Value: 0.02, Threshold: 0.1}, true, "q = 0.02 < 0.1"},
		{Reading{Query: "q", Value: 0.1, Threshold: 0.1}, false, "q = 0.1 >= 0.1"},
		{Reading{Query: "q", Value: 5, Threshold: 0.001}, false, "q = 5 >= 0.001"},
		{Reading{Query: "sum(rate(x[1m]))", Value: 0, Threshold: 1}, true, "sum(rate(x[1m])) = 0 < 1"},
		{Reading{Query: "q", Value: 1e21, Threshold: 1}, false, "q = 1e+21 >= 1"},
		{Reading{Query: "q", Value: -2.5, Threshold: 0}, true, "q = -2.5 < 0"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := tt.r.Idle(); got != tt.wantIdle {
				t.Errorf("Idle() = %v, want %v", got, tt.wantIdle)
			}
			if got := tt.r.String(); got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
		})
	}
}
