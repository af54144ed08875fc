package main

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/api"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/zeroscaler/zeroscaler/scaler"
)

const benchQuery = `zs_bench{set="n1000-k1000",q="7"}`

// The stand-in must read the queries the daemon really sends: they are
// built here by the daemon's own functions.
func TestParseSubquery(t *testing.T) {
	for _, tc := range []struct {
		name    string
		query   string
		isSub   bool
		wantErr string
		want    subquery
	}{
		{name: "workload query", query: benchQuery},
		{name: "health query, 10s window", query: scaler.HealthQuery(`job="prometheus"`, 10*time.Second), isSub: true,
			want: subquery{fn: "min_over_time", inner: `max(up{job="prometheus"}) or vector(0)`, window: 10 * time.Second, step: time.Second}},
		{name: "confirmation query, 10s window", query: scaler.ConfirmQuery(benchQuery, 10*time.Second), isSub: true,
			want: subquery{fn: "max_over_time", inner: benchQuery, window: 10 * time.Second, step: time.Second}},
		{name: "confirmation query, 30m window", query: scaler.ConfirmQuery(benchQuery, 30*time.Minute), isSub: true,
			want: subquery{fn: "max_over_time", inner: benchQuery, window: 30 * time.Minute, step: scaler.SubqueryStep(30 * time.Minute)}},
		{name: "no step", query: `min_over_time((up)[5m:])`, isSub: true, wantErr: "explicit step"},
		{name: "range, not subquery", query: `max_over_time(up[5m])`, isSub: true, wantErr: "parenthesised"},
		{name: "no range", query: `max_over_time(up)`, isSub: true, wantErr: "needs a subquery"},
		{name: "bad window", query: `max_over_time((up)[5x:1s])`, isSub: true, wantErr: "window"},
		{name: "bad step", query: `max_over_time((up)[5m:0s])`, isSub: true, wantErr: "step"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, isSub, err := parseSubquery(tc.query)
			if isSub != tc.isSub {
				t.Fatalf("isSub = %v, want %v", isSub, tc.isSub)
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.isSub && got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// fakeClock is a settable clock for the stand-in.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

// at is a moment n seconds after the Unix epoch.
func at(n float64) time.Time { return time.UnixMilli(int64(n * 1000)) }

func TestStandinAnswers(t *testing.T) {
	clk := &fakeClock{t: at(50)}
	s := newStandin(5)
	s.now = clk.now
	other := `zs_bench{set="n1000-k1000",q="8"}`
	confirm := func(q string) string { return scaler.ConfirmQuery(q, 10*time.Second) }

	ask := func(q string, when float64) (float64, bool) {
		t.Helper()
		clk.t = at(when)
		v, ok, err := s.answer(q, clk.t)
		if err != nil {
			t.Fatalf("%s at %v: %v", q, when, err)
		}
		return v, ok
	}
	want := func(q string, when, wantV float64) {
		t.Helper()
		if v, ok := ask(q, when); !ok || v != wantV {
			t.Errorf("%s at %v: %v (ok %v), want %v", q, when, v, ok, wantV)
		}
	}

	want(benchQuery, 60, 5)
	clk.t = at(100)
	s.setAll(0)
	want(benchQuery, 100, 0)
	// Steps 96 … 105: 96 to 99 were still 5.
	want(confirm(benchQuery), 105.5, 5)
	// Steps 101 … 110 (the window is open on the left): all 0.
	want(confirm(benchQuery), 110, 0)
	want(confirm(benchQuery), 110.2, 0)

	clk.t = at(103)
	s.set(benchQuery, 7)
	want(benchQuery, 103.5, 7)
	want(other, 103.5, 0)
	want(confirm(benchQuery), 110.2, 7)
	want(confirm(other), 110.2, 0)
	// A setAll overrides every earlier set.
	clk.t = at(104)
	s.setAll(0)
	want(benchQuery, 104, 0)
	want(confirm(benchQuery), 113.5, 0) // steps 104 … 113
	want(confirm(benchQuery), 112.5, 7) // step 103 still held the 7

	// A window shorter than a step may hold none: an empty result.
	if v, ok := ask(scaler.ConfirmQuery(benchQuery, 500*time.Millisecond), 120.9); ok {
		t.Errorf("confirmation over 0.5s at 120.9 with 1s steps = %v, want an empty result", v)
	}
	want(scaler.HealthQuery(`job="prometheus"`, 10*time.Second), 121, 1)

	c := s.snapshot()
	if c.total != 5 || c.confirm != 8 || c.health != 1 || c.bad != 0 || c.distinct != 2 {
		t.Errorf("counts %+v, want 5 workload requests over 2 queries, 8 confirmations, 1 health, 0 bad", c)
	}
	// Since the last setAll (at 104), benchQuery was answered idle first
	// at 104 and confirmed first at 113.5 (nothing since 104 was active).
	if got, ok := s.idle(benchQuery); !ok || !got.Equal(at(104)) {
		t.Errorf("idle(%s) = %v, %v; want %v", benchQuery, got, ok, at(104))
	}
	if got, ok := s.confirmed(benchQuery); !ok || !got.Equal(at(113.5)) {
		t.Errorf("confirmed(%s) = %v, %v; want %v", benchQuery, got, ok, at(113.5))
	}
	if _, ok := s.active(benchQuery); ok {
		t.Errorf("active(%s) set, but no answer since 104 was active", benchQuery)
	}
	if _, ok := s.idle(other); ok {
		t.Errorf("idle(%s) set, but it was not asked since 104", other)
	}
}

// Over HTTP, through Prometheus' own client, as the daemon asks.
func TestStandinHTTP(t *testing.T) {
	s := newStandin(0)
	srv := httptest.NewServer(http.HandlerFunc(s.query))
	t.Cleanup(srv.Close)
	client, err := api.NewClient(api.Config{Address: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	papi := v1.NewAPI(client)
	ctx := context.Background()
	for _, tc := range []struct {
		query string
		want  float64
		empty bool
	}{
		{query: benchQuery, want: 0},
		{query: scaler.HealthQuery(`job="prometheus"`, 10*time.Second), want: 1},
		{query: scaler.ConfirmQuery(benchQuery, 10*time.Second), want: 0},
		{query: scaler.ConfirmQuery(benchQuery, 500*time.Millisecond), empty: true},
	} {
		// A 0.5 s window holds a 1 s step half the time: only check the
		// shape of what comes back then.
		res, _, _, err := papi.Query(ctx, tc.query, time.Time{})
		if err != nil {
			t.Fatalf("%s: %v", tc.query, err)
		}
		vec, ok := res.(model.Vector)
		if !ok {
			t.Fatalf("%s: %T, want a vector", tc.query, res)
		}
		if tc.empty {
			if len(vec) > 1 {
				t.Errorf("%s: %d samples, want at most one", tc.query, len(vec))
			}
			continue
		}
		if len(vec) != 1 || float64(vec[0].Value) != tc.want {
			t.Errorf("%s: %v, want one sample %v", tc.query, vec, tc.want)
		}
	}
	_, _, _, err = papi.Query(ctx, `max_over_time((up)[5m:])`, time.Time{})
	var apiErr *v1.Error
	if err == nil || !errors.As(err, &apiErr) || apiErr.Type != v1.ErrBadData {
		t.Errorf("subquery without a step: %v, want bad_data", err)
	}
	if c := s.snapshot(); c.bad != 1 {
		t.Errorf("bad = %d, want 1", c.bad)
	}
}
