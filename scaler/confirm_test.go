package scaler

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// ConfirmIdle asks for the highest value over the whole cooldown, at the
// explicit step, with the workload's headers, of the workload's server.
func TestConfirmIdle(t *testing.T) {
	const query = `sum(rate(http_requests_total{service="web"}[1m]))`
	tests := []struct {
		name          string
		cooldown      time.Duration
		status        int
		body          string
		wantQuery     string
		want          bool
		wantErr       error // nil: no error
		wantAnyErr    bool  // an error that is neither ErrNoData nor ErrCannotConfirm
		wantConfirmed bool  // LastConfirmation is set
	}{
		{name: "idle all along", cooldown: 5 * time.Minute, status: 200, body: vector("0.02"),
			wantQuery: `max_over_time((` + query + `)[5m:5s])`, want: true, wantConfirmed: true},
		{name: "a spike inside the cooldown", cooldown: 30 * time.Second, status: 200, body: vector("3"),
			wantQuery: `max_over_time((` + query + `)[30s:1s])`, want: false, wantConfirmed: true},
		{name: "exactly the threshold is active", cooldown: time.Hour, status: 200, body: vector("0.1"),
			wantQuery: `max_over_time((` + query + `)[1h:15s])`, want: false, wantConfirmed: true},
		{name: "no data in the window", cooldown: time.Minute, status: 200, body: vector(),
			wantQuery: `max_over_time((` + query + `)[1m:1s])`, wantErr: ErrNoData},
		{name: "NaN", cooldown: time.Minute, status: 200, body: vector("NaN"),
			wantQuery: `max_over_time((` + query + `)[1m:1s])`, wantErr: ErrNoData},
		{name: "subquery refused (bad_data, 400)", cooldown: time.Minute, status: 400, body: badData,
			wantQuery: `max_over_time((` + query + `)[1m:1s])`, wantErr: ErrCannotConfirm},
		{name: "subquery refused (422, no errorType)", cooldown: time.Minute, status: 422, body: `{"status":"error","errorType":"422","error":"unsupported"}`,
			wantQuery: `max_over_time((` + query + `)[1m:1s])`, wantErr: ErrCannotConfirm},
		{name: "too many samples (422 execution)", cooldown: time.Minute, status: 422, body: execError,
			wantQuery: `max_over_time((` + query + `)[1m:1s])`, wantErr: ErrCannotConfirm},
		{name: "server down is unknown", cooldown: time.Minute, status: 503, body: unavail,
			wantQuery: `max_over_time((` + query + `)[1m:1s])`, wantAnyErr: true},
		{name: "several series", cooldown: time.Minute, status: 200, body: vector("0", "0"),
			wantQuery: `max_over_time((` + query + `)[1m:1s])`, wantErr: ErrMultipleSeries},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stub := newPromStub(t, reply(tt.status, tt.body))
			servers := mustServers(t, testOptions(stub.URL, nil))
			s := mustNew(t, servers, Metadata{Query: query, Threshold: 0.1, Headers: map[string]string{"X-Scope-OrgID": "team-a"}}, tt.cooldown)
			got, err := s.ConfirmIdle(context.Background())
			switch {
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("ConfirmIdle = %v, %v; want %v", got, err, tt.wantErr)
				}
			case tt.wantAnyErr:
				if err == nil || errors.Is(err, ErrCannotConfirm) || errors.Is(err, ErrNoData) {
					t.Fatalf("ConfirmIdle = %v, %v; want another error", got, err)
				}
			case err != nil || got != tt.want:
				t.Fatalf("ConfirmIdle = %v, %v; want %v", got, err, tt.want)
			}
			if err != nil && got {
				t.Errorf("ConfirmIdle said idle with an error")
			}
			reqs := stub.requests()
			if len(reqs) != 1 || reqs[0].Query != tt.wantQuery {
				t.Fatalf("requests %+v, want one with query %s", reqs, tt.wantQuery)
			}
			if got := reqs[0].Header.Values("X-Scope-Orgid"); len(got) != 1 || got[0] != "team-a" {
				t.Errorf("X-Scope-OrgID = %q, want [team-a]", got)
			}
			c := s.LastConfirmation()
			if tt.wantConfirmed {
				if c.Query != tt.wantQuery || c.Threshold != 0.1 || c.Idle() != tt.want {
					t.Errorf("LastConfirmation = %+v", c)
				}
			} else if c != (Reading{}) {
				t.Errorf("LastConfirmation = %+v after an error", c)
			}
			if r := s.LastReading(); r != (Reading{}) {
				t.Errorf("ConfirmIdle changed LastReading to %+v", r)
			}
		})
	}
}

// A query answered with a scalar cannot be subqueried: ConfirmIdle says so
// without asking.
func TestConfirmIdleScalar(t *testing.T) {
	stub := newPromStub(t, reply(200, scalar("0")))
	servers := mustServers(t, testOptions(stub.URL, nil))
	s := mustNew(t, servers, Metadata{Query: "scalar(sum(x))", Threshold: 1}, time.Minute)
	if idle, err := s.ShouldScaleToZero(context.Background()); err != nil || !idle {
		t.Fatalf("ShouldScaleToZero = %v, %v", idle, err)
	}
	idle, err := s.ConfirmIdle(context.Background())
	if !errors.Is(err, ErrCannotConfirm) || idle {
		t.Fatalf("ConfirmIdle = %v, %v; want ErrCannotConfirm", idle, err)
	}
	if n := len(stub.requests()); n != 1 {
		t.Errorf("%d requests, want 1 (the reading only)", n)
	}
	// A server answering the subquery with a scalar cannot confirm either.
	s2 := mustNew(t, servers, Metadata{Query: "vector(0)", Threshold: 1}, time.Minute)
	if idle, err := s2.ConfirmIdle(context.Background()); !errors.Is(err, ErrCannotConfirm) || idle {
		t.Fatalf("ConfirmIdle on a scalar answer = %v, %v; want ErrCannotConfirm", idle, err)
	}
}

// The confirmation is shared like any other question: workloads asking the
// same one at the same moment send one request.
func TestConfirmIdleShared(t *testing.T) {
	stub := newCountingStub(t, func(*http.Request) string { return "0" })
	clock := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	servers := mustServers(t, testOptions(stub.URL, func(o *Options) {
		o.ShareWindow = 500 * time.Millisecond
		o.Clock = clock
	}))
	for range 3 {
		s := mustNew(t, servers, Metadata{Query: "q", Threshold: 1}, time.Minute)
		if idle, err := s.ConfirmIdle(context.Background()); err != nil || !idle {
			t.Fatalf("ConfirmIdle = %v, %v", idle, err)
		}
	}
	if n := stub.total(); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}

// The same question is the same whether a workload names the default
// server or names none: one hash, one request.
func TestQuestionHash(t *testing.T) {
	def := newCountingStub(t, func(*http.Request) string { return "0" })
	other := newPromStub(t, reply(200, vector("0")))
	servers := mustServers(t, testOptions(def.URL, func(o *Options) {
		o.AllowedAddresses = []string{other.URL}
		o.ShareWindow = 500 * time.Millisecond
		o.Clock = clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	}))
	named, err := servers.Allowed(def.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	md := Metadata{Query: "q", Threshold: 1, Headers: map[string]string{"x-team": "a"}}
	byOmission := mustNew(t, servers, md, time.Minute)
	md.ServerAddress = named
	byName := mustNew(t, servers, md, time.Minute)
	md.ServerAddress = def.URL + "/" // not normalised by the caller
	byRawName := mustNew(t, servers, md, time.Minute)
	if byOmission.QuestionHash() != byName.QuestionHash() || byName.QuestionHash() != byRawName.QuestionHash() {
		t.Errorf("hashes differ: %x, %x, %x", byOmission.QuestionHash(), byName.QuestionHash(), byRawName.QuestionHash())
	}
	for _, s := range []*prometheusScaler{byOmission, byName, byRawName} {
		if _, err := s.ShouldScaleToZero(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if n := def.total(); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}

	differ := map[string]Metadata{
		"another server":       {ServerAddress: other.URL, Query: "q", Threshold: 1, Headers: map[string]string{"X-Team": "a"}},
		"another query":        {Query: "q2", Threshold: 1, Headers: map[string]string{"X-Team": "a"}},
		"another header value": {Query: "q", Threshold: 1, Headers: map[string]string{"X-Team": "b"}},
		"no header":            {Query: "q", Threshold: 1},
	}
	for name, md := range differ {
		if h := mustNew(t, servers, md, time.Minute).QuestionHash(); h == byOmission.QuestionHash() {
			t.Errorf("%s: same hash %x", name, h)
		}
	}
	// The threshold and the cooldown are not part of the question.
	same := mustNew(t, servers, Metadata{Query: "q", Threshold: 7, Headers: map[string]string{"X-TEAM": "a"}}, time.Hour)
	if same.QuestionHash() != byOmission.QuestionHash() {
		t.Error("threshold, cooldown or header-name case changed the hash")
	}
}
