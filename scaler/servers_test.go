package scaler

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// Credentials given by flags reach the default server and no other.
func TestFlagCredentialsOnlyToDefaultServer(t *testing.T) {
	def := newPromStub(t, reply(200, vector("1")))
	other := newPromStub(t, reply(200, vector("1")))
	token := writeFile(t, t.TempDir(), "token", "s3cret-token\n")
	servers := mustServers(t, testOptions(def.URL, func(o *Options) {
		o.AllowedAddresses = []string{other.URL}
		o.BearerTokenFile = token
		o.Headers = map[string]string{"X-Scope-OrgID": "operator", "X-Api-Key": "operator-key"}
	}))
	workloadHeaders := map[string]string{"X-Team": "shop"}

	tests := []struct {
		name     string
		address  string
		stub     *promStub
		wantCred bool
	}{
		{"default server by omission", "", def, true},
		{"default server by name", def.URL, def, true},
		{"allowed server", other.URL, other, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(tt.stub.requests())
			s := mustNew(t, servers, Metadata{ServerAddress: tt.address, Query: "q_" + tt.name, Threshold: 1, UptimeFilter: fmt.Sprintf("job=%q", tt.name), Headers: workloadHeaders}, time.Minute)
			if _, err := s.ShouldScaleToZero(context.Background()); err != nil {
				t.Fatal(err)
			}
			if _, err := s.IsHealthy(context.Background()); err != nil {
				t.Fatal(err)
			}
			reqs := tt.stub.requests()[before:]
			if len(reqs) != 2 {
				t.Fatalf("server got %d requests, want 2", len(reqs))
			}
			for _, r := range reqs {
				want := map[string]string{"Authorization": "", "X-Scope-Orgid": "", "X-Api-Key": "", "X-Team": "shop"}
				if tt.wantCred {
					want["Authorization"] = "Bearer s3cret-token"
					want["X-Scope-Orgid"] = "operator"
					want["X-Api-Key"] = "operator-key"
				}
				for name, v := range want {
					if got := r.Header.Get(name); got != v {
						t.Errorf("%s: header %s = %q, want %q", r.Query, name, got, v)
					}
				}
			}
		})
	}
}

// A header the operator sets for a server, by flag or in the config file,
// reaches that server exactly once with the operator's value: a workload
// can neither add a second value nor replace it, in any case (issue 9
// item 1). Every value of every header is checked, not Header.Get.
func TestOperatorHeadersExactlyOnce(t *testing.T) {
	flagServer := newPromStub(t, reply(200, vector("1")))
	fileServer := newPromStub(t, reply(200, vector("1")))
	cfg := writeFile(t, t.TempDir(), "p.yaml", "servers:\n- url: "+fileServer.URL+"\n  http_headers:\n    X-Scope-OrgID: {values: [ops]}\n")
	servers := mustServers(t, testOptions(flagServer.URL, func(o *Options) {
		o.ConfigFile = cfg
		o.Headers = map[string]string{"X-Scope-Orgid": "operator"}
	}))
	for _, tt := range []struct {
		name    string
		address string
		stub    *promStub
		want    string
	}{
		{"flag server", "", flagServer, "operator"},
		{"file server", fileServer.URL, fileServer, "ops"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, name := range []string{"X-Scope-OrgID", "x-scope-orgid", "X-SCOPE-ORGID"} {
				if err := servers.CheckWorkloadHeader(tt.address, name); err == nil {
					t.Errorf("CheckWorkloadHeader(%s) accepted the operator's header", name)
				}
				md := Metadata{ServerAddress: tt.address, Query: "q", Threshold: 1, Headers: map[string]string{name: "team-b"}}
				if s, err := New(servers, md, time.Minute); err == nil {
					_, _ = s.ShouldScaleToZero(context.Background())
					t.Errorf("New accepted the workload header %s", name)
				}
			}
			s := mustNew(t, servers, Metadata{ServerAddress: tt.address, Query: "q", Threshold: 1, Headers: map[string]string{"X-Extra": "1"}}, time.Minute)
			if _, err := s.ShouldScaleToZero(context.Background()); err != nil {
				t.Fatal(err)
			}
			if _, err := s.ConfirmIdle(context.Background()); err != nil {
				t.Fatal(err)
			}
			reqs := tt.stub.requests()
			if len(reqs) != 2 {
				t.Errorf("%d requests, want 2", len(reqs))
			}
			for _, r := range reqs {
				if got := r.Header["X-Scope-Orgid"]; !slices.Equal(got, []string{tt.want}) {
					t.Errorf("%s: X-Scope-OrgID values %q, want [%s]", r.Query, got, tt.want)
				}
				if got := r.Header["X-Extra"]; !slices.Equal(got, []string{"1"}) {
					t.Errorf("%s: X-Extra values %q, want [1]", r.Query, got)
				}
				for name, values := range r.Header {
					if len(values) != 1 {
						t.Errorf("%s: header %s sent %d times: %q", r.Query, name, len(values), values)
					}
				}
			}
		})
	}
}

// Workload headers are an allow-list the operator owns (issue 9 item 2).
func TestWorkloadHeaderAllowList(t *testing.T) {
	servers := mustServers(t, testOptions("http://prom.example:9090", func(o *Options) {
		o.AllowedWorkloadHeaders = []string{"x-scope-orgid"}
	}))
	for _, name := range []string{"X-Scope-OrgID", "x-scope-orgid"} {
		if err := servers.CheckWorkloadHeader("", name); err != nil {
			t.Errorf("%s refused: %v", name, err)
		}
	}
	for _, name := range []string{"X-Forwarded-For", "X-Forwarded-User", "X-Remote-User", "X-Auth-Request-User", "Forwarded", "Set-Cookie", "X-Api-Key", "Te", "Upgrade", "Expect", "Transfer-Encoding", "Authorization", "Cookie"} {
		err := servers.CheckWorkloadHeader("", name)
		if err == nil {
			t.Errorf("%s accepted", name)
			continue
		}
		if !strings.Contains(err.Error(), http.CanonicalHeaderKey(name)) {
			t.Errorf("error %q does not name %s", err, name)
		}
		if !reservedHeader(http.CanonicalHeaderKey(name)) && !strings.Contains(err.Error(), "--allowed-workload-header") {
			t.Errorf("error %q does not name the flag", err)
		}
	}
	none := mustServers(t, testOptions("http://prom.example:9090", func(o *Options) { o.AllowedWorkloadHeaders = nil }))
	if err := none.CheckWorkloadHeader("", "X-Scope-OrgID"); err == nil {
		t.Error("a header was accepted with no --allowed-workload-header")
	}
	for _, bad := range [][]string{{"Authorization"}, {"cookie"}, {"X Bad"}, {""}, {"Host"}} {
		if _, err := NewServers(testOptions("http://prom.example:9090", func(o *Options) { o.AllowedWorkloadHeaders = bad })); err == nil || !strings.Contains(err.Error(), "--allowed-workload-header") {
			t.Errorf("--allowed-workload-header %q: %v", bad, err)
		}
	}
}

// A server that redirects elsewhere must not carry its credentials there.
func TestCredentialsNotFollowedAcrossRedirect(t *testing.T) {
	tests := []struct {
		name    string
		options func(t *testing.T, address string) Options
	}{
		{"flags", func(t *testing.T, address string) Options {
			token := writeFile(t, t.TempDir(), "token", "s3cret-token")
			return testOptions(address, func(o *Options) {
				o.BearerTokenFile = token
				o.Headers = map[string]string{"X-Api-Key": "operator-key"}
			})
		}},
		{"config file", func(t *testing.T, address string) Options {
			cfg := writeFile(t, t.TempDir(), "p.yaml", "servers:\n- url: "+address+"\n  authorization:\n    credentials: s3cret-token\n")
			return Options{ConfigFile: cfg, QueryTimeout: 5 * time.Second, MaxConcurrentQueries: 1}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			elsewhere := newPromStub(t, reply(200, vector("1")))
			def := newPromStub(t, func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, elsewhere.URL+r.URL.RequestURI(), http.StatusTemporaryRedirect)
			})
			servers := mustServers(t, tt.options(t, def.URL))
			s := mustNew(t, servers, Metadata{Query: "q", Threshold: 1}, time.Minute)
			_, _ = s.ShouldScaleToZero(context.Background())
			if len(def.requests()) != 1 {
				t.Fatalf("default server got %d requests, want 1", len(def.requests()))
			}
			if got := def.requests()[0].Header.Get("Authorization"); got != "Bearer s3cret-token" {
				t.Errorf("default server got Authorization %q", got)
			}
			for _, r := range elsewhere.requests() {
				if got := r.Header.Get("Authorization"); got != "" {
					t.Errorf("redirect target got Authorization %q", got)
				}
				if got := r.Header.Get("X-Api-Key"); got != "" {
					t.Errorf("redirect target got X-Api-Key %q", got)
				}
			}
		})
	}
}

func TestAllowed(t *testing.T) {
	const notAllowed = "not a Prometheus server the operator allowed (--prometheus-address, --allowed-server-address, --prometheus-config)"
	servers := mustServers(t, testOptions("http://prom.example:9090", func(o *Options) {
		o.AllowedAddresses = []string{"https://thanos.example/query/", "http://10.0.0.7:9090"}
	}))
	tests := []struct {
		addr    string
		want    string
		wantErr string
	}{
		{addr: "http://prom.example:9090", want: "http://prom.example:9090"},
		{addr: "http://prom.example:9090/", want: "http://prom.example:9090"},
		{addr: " http://prom.example:9090 ", want: "http://prom.example:9090"},
		{addr: "https://thanos.example/query", want: "https://thanos.example/query"},
		{addr: "https://thanos.example/query/", want: "https://thanos.example/query"},
		{addr: "http://10.0.0.7:9090/", want: "http://10.0.0.7:9090"},
		{addr: "http://evil.example:9090", wantErr: notAllowed},
		{addr: "http://prom.example:9091", wantErr: notAllowed},
		{addr: "https://prom.example:9090", wantErr: notAllowed},
		{addr: "https://thanos.example", wantErr: notAllowed},
		{addr: "https://thanos.example/query/other", wantErr: notAllowed},
		{addr: "http://user:pass@prom.example:9090", wantErr: "credentials"},
		{addr: "http://user@prom.example:9090", wantErr: "credentials"},
		{addr: "ftp://prom.example:9090", wantErr: "scheme"},
		{addr: "file:///etc/passwd", wantErr: "scheme"},
		{addr: "prom.example:9090", wantErr: "scheme"},
		{addr: "", wantErr: "scheme"},
		{addr: "http://", wantErr: "host"},
		{addr: "http://prom.example:9090?x=1", wantErr: "query"},
		{addr: "http://prom.example:9090#frag", wantErr: "fragment"},
		{addr: "http://prom.example:9090\n", want: "http://prom.example:9090"},
		{addr: "http://prom example", wantErr: "not a URL"},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			got, err := servers.Allowed(tt.addr)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Allowed(%q) = %q, %v; want an error containing %q", tt.addr, got, err, tt.wantErr)
				}
				// Namespace users read this in Events: it names the flag,
				// never the servers on the list.
				for _, a := range servers.Addresses() {
					if tt.wantErr == notAllowed && strings.Contains(err.Error(), a) {
						t.Errorf("error %q lists the allowed server %s", err, a)
					}
				}
				if got != "" {
					t.Errorf("Allowed(%q) returned %q with its error", tt.addr, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Allowed(%q) = %q, %v; want %q", tt.addr, got, err, tt.want)
			}
		})
	}
}

// No request is ever sent to a server nobody allowed.
func TestUnlistedServerNeverAsked(t *testing.T) {
	def := newPromStub(t, reply(200, vector("1")))
	unlisted := newPromStub(t, reply(200, vector("1")))
	servers := mustServers(t, testOptions(def.URL, nil))

	if _, err := servers.Allowed(unlisted.URL); err == nil {
		t.Error("Allowed accepted an unlisted server")
	}
	s, err := New(servers, Metadata{ServerAddress: unlisted.URL, Query: "q", Threshold: 1}, time.Minute)
	if err == nil || s != nil {
		t.Errorf("New accepted an unlisted server: %v, %v", s, err)
	}
	// The second lock on the door, below New.
	if a := servers.query(context.Background(), newQuestion(unlisted.URL, "q", nil), servers.shareWindow); a.err == nil {
		t.Error("query accepted an unlisted server")
	}
	if n := len(unlisted.requests()); n != 0 {
		t.Errorf("unlisted server got %d requests", n)
	}
	if n := len(def.requests()); n != 0 {
		t.Errorf("default server got %d requests", n)
	}
}

func TestNewServersRejects(t *testing.T) {
	dir := t.TempDir()
	token := writeFile(t, dir, "token", "t")
	inFile := writeFile(t, dir, "inFile.yaml", "servers:\n- url: http://a.example:9090\n")
	dup := writeFile(t, dir, "dup.yaml", "servers:\n- url: http://a.example:9090\n- url: http://a.example:9090/\n")
	noURL := writeFile(t, dir, "nourl.yaml", "servers:\n- basic_auth: {username: u, password: p}\n")
	unknown := writeFile(t, dir, "unknown.yaml", "servers:\n- url: http://a.example:9090\n  bearer_tokn: x\n")
	badURL := writeFile(t, dir, "badurl.yaml", "servers:\n- url: http://u:p@a.example:9090\n")
	twoAuth := writeFile(t, dir, "twoauth.yaml", "servers:\n- url: http://a.example:9090\n  basic_auth: {username: u, password: p}\n  authorization: {credentials: c}\n")

	tests := []struct {
		name   string
		mutate func(*Options)
	}{
		{"no default server", func(o *Options) { o.DefaultAddress = "" }},
		{"zero concurrent queries", func(o *Options) { o.MaxConcurrentQueries = 0 }},
		{"default with userinfo", func(o *Options) { o.DefaultAddress = "http://u:p@prom.example" }},
		{"default not http", func(o *Options) { o.DefaultAddress = "unix:///prom.sock" }},
		{"allowed not http", func(o *Options) { o.AllowedAddresses = []string{"gopher://x"} }},
		{"allowed with userinfo", func(o *Options) { o.AllowedAddresses = []string{"https://u:p@x"} }},
		{"missing config file", func(o *Options) { o.ConfigFile = dir + "/nope.yaml" }},
		{"bearer token flag for a server in the config file", func(o *Options) {
			o.DefaultAddress, o.ConfigFile, o.BearerTokenFile = "http://a.example:9090/", inFile, token
		}},
		{"server twice in the config file", func(o *Options) { o.ConfigFile = dup }},
		{"server without url", func(o *Options) { o.ConfigFile = noURL }},
		{"unknown field", func(o *Options) { o.ConfigFile = unknown }},
		{"url with userinfo in the config file", func(o *Options) { o.ConfigFile = badURL }},
		{"two kinds of auth", func(o *Options) { o.ConfigFile = twoAuth }},
		{"--prometheus-header name not a token", func(o *Options) { o.Headers = map[string]string{"X Bad": "v"} }},
		{"--prometheus-header empty name", func(o *Options) { o.Headers = map[string]string{"": "v"} }},
		{"--prometheus-header value with CR", func(o *Options) { o.Headers = map[string]string{"X-A": "a\rb"} }},
		{"--prometheus-header value with LF", func(o *Options) { o.Headers = map[string]string{"X-A": "a\nb"} }},
		{"--prometheus-header value with NUL", func(o *Options) { o.Headers = map[string]string{"X-A": "a\x00b"} }},
		{"--prometheus-header twice, other case", func(o *Options) { o.Headers = map[string]string{"X-A": "1", "x-a": "2"} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if s, err := NewServers(testOptions("http://prom.example:9090", tt.mutate)); err == nil {
				t.Errorf("NewServers accepted it; servers %v", s.addresses())
			}
		})
	}
}

// Servers from --prometheus-config get their own credentials and TLS
// settings, and nothing of another server's.
func TestConfigFileCredentialsAndTLS(t *testing.T) {
	basic := newPromStub(t, reply(200, vector("1")))
	secure := newTLSPromStub(t, reply(200, vector("1")))
	plain := newPromStub(t, reply(200, vector("1")))

	dir := t.TempDir()
	writeFile(t, dir, "alice-password", "wonderland\n")
	writeFile(t, dir, "secure-token", "tls-token\n")
	writeFile(t, dir, "ca.pem", caPEM(secure))
	// Relative file names are relative to the configuration file.
	cfg := writeFile(t, dir, "prometheus.yaml", fmt.Sprintf(`servers:
- url: %s
  basic_auth:
    username: alice
    password_file: alice-password
- url: %s/
  authorization:
    credentials_file: secure-token
  tls_config:
    ca_file: ca.pem
`, basic.URL, secure.URL))

	servers := mustServers(t, Options{
		ConfigFile:           cfg,
		AllowedAddresses:     []string{plain.URL},
		QueryTimeout:         5 * time.Second,
		MaxConcurrentQueries: 2,
	})
	if got := servers.DefaultAddress(); got != basic.URL {
		t.Errorf("DefaultAddress = %q, want the first server in the file %q", got, basic.URL)
	}
	wantBasic := "Basic " + base64.StdEncoding.EncodeToString([]byte("alice:wonderland"))

	tests := []struct {
		name     string
		address  string
		stub     *promStub
		wantAuth string
	}{
		{"basic auth server by omission", "", basic, wantBasic},
		{"basic auth server", basic.URL, basic, wantBasic},
		{"TLS server with bearer token", secure.URL, secure, "Bearer tls-token"},
		{"allowed server without credentials", plain.URL, plain, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := tt.address
			if addr != "" {
				var err error
				if addr, err = servers.Allowed(addr); err != nil {
					t.Fatal(err)
				}
			}
			before := len(tt.stub.requests())
			s := mustNew(t, servers, Metadata{ServerAddress: addr, Query: "q_" + tt.name, Threshold: 1}, time.Minute)
			if idle, err := s.ShouldScaleToZero(context.Background()); err != nil || idle {
				t.Fatalf("ShouldScaleToZero = %v, %v; want false, nil", idle, err)
			}
			reqs := tt.stub.requests()[before:]
			if len(reqs) != 1 {
				t.Fatalf("got %d requests, want 1", len(reqs))
			}
			if got := reqs[0].Header.Get("Authorization"); got != tt.wantAuth {
				t.Errorf("Authorization = %q, want %q", got, tt.wantAuth)
			}
		})
	}
}

func TestConfigFileTLSWithoutCAFails(t *testing.T) {
	secure := newTLSPromStub(t, reply(200, vector("1")))
	dir := t.TempDir()
	cfg := writeFile(t, dir, "prometheus.yaml", fmt.Sprintf("servers:\n- url: %s\n  authorization:\n    credentials: tls-token\n", secure.URL))
	servers := mustServers(t, Options{ConfigFile: cfg, QueryTimeout: 5 * time.Second, MaxConcurrentQueries: 1})
	s := mustNew(t, servers, Metadata{Query: "q", Threshold: 1}, time.Minute)
	_, err := s.ShouldScaleFromZero(context.Background())
	if err == nil {
		t.Fatal("query over TLS to an unknown CA succeeded")
	}
	if !strings.Contains(err.Error(), "certificate") {
		t.Errorf("error %q does not mention the certificate", err)
	}
	if n := len(secure.requests()); n != 0 {
		t.Errorf("server handled %d requests", n)
	}
}

// countingStub answers value(r) and counts requests per query and header.
type countingStub struct {
	*promStub
	mu    sync.Mutex
	count map[string]int
}

func newCountingStub(t *testing.T, value func(*http.Request) string) *countingStub {
	c := &countingStub{count: map[string]int{}}
	c.promStub = newPromStub(t, func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		c.count[r.Form.Get("query")+" "+r.Header.Get("X-Scope-OrgID")]++
		c.mu.Unlock()
		reply(200, vector(value(r)))(w, r)
	})
	return c
}

func (c *countingStub) counts() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for k, v := range c.count {
		out[k] = v
	}
	return out
}

func (c *countingStub) total() int {
	n := 0
	for _, v := range c.counts() {
		n += v
	}
	return n
}

func TestSharing(t *testing.T) {
	const window = 500 * time.Millisecond
	// The answer depends on the tenant, so a shared answer across tenants
	// would show as a wrong decision.
	stub := newCountingStub(t, func(r *http.Request) string {
		if r.Header.Get("X-Scope-OrgID") == "busy" {
			return "10"
		}
		return "0"
	})
	clock := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	servers := mustServers(t, testOptions(stub.URL, func(o *Options) {
		o.ShareWindow = window
		o.Clock = clock
	}))

	// run asks from n scalers per header set at once and returns each
	// scaler's ShouldScaleToZero answer per tenant.
	run := func(t *testing.T, query string, tenants []string, n int) map[string][]bool {
		t.Helper()
		type result struct {
			tenant string
			idle   bool
			err    error
		}
		results := make(chan result, len(tenants)*n)
		var wg sync.WaitGroup
		for _, tenant := range tenants {
			var h map[string]string
			if tenant != "" {
				h = map[string]string{"X-Scope-OrgID": tenant}
			}
			for range n {
				s := mustNew(t, servers, Metadata{Query: query, Threshold: 1, Headers: h}, time.Minute)
				wg.Go(func() {
					idle, err := s.ShouldScaleToZero(context.Background())
					results <- result{tenant, idle, err}
				})
			}
		}
		wg.Wait()
		close(results)
		out := map[string][]bool{}
		for r := range results {
			if r.err != nil {
				t.Errorf("tenant %q: %v", r.tenant, r.err)
			}
			out[r.tenant] = append(out[r.tenant], r.idle)
		}
		return out
	}

	t.Run("same question asked 50 times is one request", func(t *testing.T) {
		got := run(t, "q1", []string{"team-a"}, 50)
		if n := stub.counts()["q1 team-a"]; n != 1 {
			t.Errorf("%d requests, want 1", n)
		}
		if len(got["team-a"]) != 50 {
			t.Errorf("%d answers, want 50", len(got["team-a"]))
		}
		for _, idle := range got["team-a"] {
			if !idle {
				t.Error("a shared answer was wrong")
			}
		}
	})

	t.Run("different headers are asked separately", func(t *testing.T) {
		got := run(t, "q2", []string{"", "quiet", "busy"}, 10)
		counts := stub.counts()
		for _, k := range []string{"q2 ", "q2 quiet", "q2 busy"} {
			if counts[k] != 1 {
				t.Errorf("%q asked %d times, want 1", k, counts[k])
			}
		}
		for tenant, answers := range got {
			wantIdle := tenant != "busy"
			for _, idle := range answers {
				if idle != wantIdle {
					t.Errorf("tenant %q got idle=%v, want %v: answer shared across headers", tenant, idle, wantIdle)
				}
			}
		}
	})

	t.Run("different queries are asked separately", func(t *testing.T) {
		run(t, "q3a", []string{"team-a"}, 5)
		run(t, "q3b", []string{"team-a"}, 5)
		counts := stub.counts()
		if counts["q3a team-a"] != 1 || counts["q3b team-a"] != 1 {
			t.Errorf("counts %v, want one request per query", counts)
		}
	})

	t.Run("answer is reused within the window and renewed after it", func(t *testing.T) {
		before := stub.total()
		run(t, "q4", []string{"team-a"}, 3)
		clock.Step(window - time.Millisecond)
		run(t, "q4", []string{"team-a"}, 3)
		if n := stub.counts()["q4 team-a"]; n != 1 {
			t.Errorf("within the window: %d requests, want 1", n)
		}
		clock.Step(time.Millisecond)
		run(t, "q4", []string{"team-a"}, 3)
		if n := stub.counts()["q4 team-a"]; n != 2 {
			t.Errorf("after the window: %d requests, want 2", n)
		}
		if d := stub.total() - before; d != 2 {
			t.Errorf("%d requests in all, want 2", d)
		}
	})

	t.Run("health query shared by filter and window", func(t *testing.T) {
		ask := func(filter string, cooldown time.Duration) {
			s := mustNew(t, servers, Metadata{Query: "q5", Threshold: 1, UptimeFilter: filter}, cooldown)
			if _, err := s.IsHealthy(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		ask(`job="p"`, 5*time.Minute)
		// Workloads with other queries check at other moments: the health
		// answer outlives the metric share window.
		clock.Step(healthShareWindow - time.Millisecond)
		ask(`job="p"`, 5*time.Minute)
		ask(`job="p"`, 10*time.Minute)
		ask(`job="q"`, 5*time.Minute)
		counts := stub.counts()
		for _, k := range []string{
			`min_over_time((max(up{job="p"}) or vector(0))[5m:5s]) `,
			`min_over_time((max(up{job="p"}) or vector(0))[10m:10s]) `,
			`min_over_time((max(up{job="q"}) or vector(0))[5m:5s]) `,
		} {
			if counts[k] != 1 {
				t.Errorf("%s asked %d times, want 1", k, counts[k])
			}
		}
		clock.Step(time.Millisecond)
		ask(`job="p"`, 5*time.Minute)
		if n := stub.counts()[`min_over_time((max(up{job="p"}) or vector(0))[5m:5s]) `]; n != 2 {
			t.Errorf("after the health window: asked %d times, want 2", n)
		}
	})
}

// Errors are shared like answers: a failing Prometheus is not asked once
// per workload.
func TestSharingErrors(t *testing.T) {
	var n atomic.Int32
	stub := newPromStub(t, func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		reply(503, "")(w, r)
	})
	clock := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	servers := mustServers(t, testOptions(stub.URL, func(o *Options) {
		o.ShareWindow = 500 * time.Millisecond
		o.Clock = clock
	}))
	for range 5 {
		s := mustNew(t, servers, Metadata{Query: "q", Threshold: 1}, time.Minute)
		if _, err := s.ShouldScaleFromZero(context.Background()); err == nil {
			t.Fatal("want an error")
		}
	}
	if got := n.Load(); got != 1 {
		t.Errorf("%d requests, want 1", got)
	}
}

func TestMaxConcurrentQueries(t *testing.T) {
	const limit, queries = 2, 6
	var inFlight, peak, total atomic.Int32
	arrived := make(chan struct{}, queries)
	release := make(chan struct{})
	stub := newPromStub(t, func(w http.ResponseWriter, r *http.Request) {
		now := inFlight.Add(1)
		for {
			p := peak.Load()
			if now <= p || peak.CompareAndSwap(p, now) {
				break
			}
		}
		total.Add(1)
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		inFlight.Add(-1)
		reply(200, vector("1"))(w, r)
	})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)

	servers := mustServers(t, testOptions(stub.URL, func(o *Options) {
		o.MaxConcurrentQueries = limit
		o.QueryTimeout = 30 * time.Second
	}))
	errs := make(chan error, queries)
	var wg sync.WaitGroup
	for i := range queries {
		s := mustNew(t, servers, Metadata{Query: fmt.Sprintf("q%d", i), Threshold: 1}, time.Minute)
		wg.Go(func() {
			_, err := s.ShouldScaleFromZero(context.Background())
			errs <- err
		})
	}
	for range limit {
		select {
		case <-arrived:
		case <-time.After(10 * time.Second):
			unblock()
			t.Fatalf("only %d requests arrived, want %d in flight", total.Load(), limit)
		}
	}
	// Give a request over the limit the chance to arrive.
	select {
	case <-arrived:
		t.Errorf("a request over the limit of %d arrived", limit)
	case <-time.After(200 * time.Millisecond):
	}
	unblock()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got := peak.Load(); got != limit {
		t.Errorf("peak in flight %d, want %d", got, limit)
	}
	if got := total.Load(); got != queries {
		t.Errorf("%d requests, want %d", got, queries)
	}
}

// Waiting for a free slot counts against the query timeout: a queued query
// fails within its timeout, not after the one ahead of it plus its own.
func TestQueuedQueryBoundedByTimeout(t *testing.T) {
	const timeout = 500 * time.Millisecond
	arrived := make(chan struct{}, 2)
	stub, unblock := newBlockingStub(t, arrived)
	servers := mustServers(t, testOptions(stub.URL, func(o *Options) {
		o.MaxConcurrentQueries = 1
		o.QueryTimeout = timeout
	}))
	first := mustNew(t, servers, Metadata{Query: "first", Threshold: 1}, time.Minute)
	second := mustNew(t, servers, Metadata{Query: "second", Threshold: 1}, time.Minute)
	done := make(chan error, 1)
	go func() {
		_, err := first.ShouldScaleFromZero(context.Background())
		done <- err
	}()
	<-arrived
	start := time.Now()
	_, err := within(t, 5*time.Second, unblock, func() (bool, error) { return second.ShouldScaleFromZero(context.Background()) })
	took := time.Since(start)
	if kind := ResultKind(err); kind != "timeout" {
		t.Errorf("second query: %v (%s), want a timeout", err, kind)
	}
	if took > timeout*9/5 {
		t.Errorf("second query took %v; waiting for the slot was not bounded by the %v timeout", took, timeout)
	}
	if err := <-done; ResultKind(err) != "timeout" {
		t.Errorf("first query: %v, want a timeout", err)
	}
}

func TestQuestionKey(t *testing.T) {
	tests := []struct {
		name string
		a, b func() (string, string, map[string]string)
		same bool
	}{
		{"different server", q("up"), func() (string, string, map[string]string) { return "http://b", "up", nil }, false},
		{"no server smuggled into the query", func() (string, string, map[string]string) { return "http://a\" \"b", "up", nil }, func() (string, string, map[string]string) { return "http://a", "b\" \"up", nil }, false},
		{"same", q("up", "A", "1"), q("up", "A", "1"), true},
		{"header order irrelevant", q("up", "A", "1", "B", "2"), q("up", "B", "2", "A", "1"), true},
		{"nil and empty headers", q("up"), func() (string, string, map[string]string) { return "http://a", "up", map[string]string{} }, true},
		{"different query", q("up", "A", "1"), q("down", "A", "1"), false},
		{"different value", q("up", "A", "1"), q("up", "A", "2"), false},
		{"extra header", q("up", "A", "1"), q("up", "A", "1", "B", "2"), false},
		{"no header smuggled into the query", q("up\x00A=1"), q("up", "A", "1"), false},
		{"no header smuggled into a value", q("up", "A", "1\x00B=2"), q("up", "A", "1", "B", "2"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ka := questionKey(tt.a())
			kb := questionKey(tt.b())
			if (ka == kb) != tt.same {
				t.Errorf("keys %q and %q: same=%v, want %v", ka, kb, ka == kb, tt.same)
			}
		})
	}
}

func q(query string, kv ...string) func() (string, string, map[string]string) {
	return func() (string, string, map[string]string) {
		var h map[string]string
		for i := 0; i+1 < len(kv); i += 2 {
			if h == nil {
				h = map[string]string{}
			}
			h[kv[i]] = kv[i+1]
		}
		return "http://a", query, h
	}
}

func TestResultKind(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{nil, "ok"},
		{fmt.Errorf("x: %w", ErrNoData), "no_data"},
		{fmt.Errorf("x: %w", ErrMultipleSeries), "multiple_series"},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), "timeout"},
		{errors.New("something"), "error"},
	}
	for _, tt := range tests {
		if got := ResultKind(tt.err); got != tt.want {
			t.Errorf("ResultKind(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
}

// An answer is stamped when it was asked, so a workload polling at the
// shortest interval asks again at every check even if the answer took a
// while, and a share window of a second or more is refused.
func TestAnswerStampedWhenAsked(t *testing.T) {
	clock := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	var n atomic.Int32
	stub := newPromStub(t, func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		clock.Step(300 * time.Millisecond) // the answer takes a while
		reply(200, vector("1"))(w, r)
	})
	servers := mustServers(t, testOptions(stub.URL, func(o *Options) {
		o.ShareWindow = 500 * time.Millisecond
		o.Clock = clock
	}))
	s := mustNew(t, servers, Metadata{Query: "q", Threshold: 1}, time.Minute)
	for i := range 4 {
		if _, err := s.ShouldScaleFromZero(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := int(n.Load()); got != i+1 {
			t.Fatalf("after %d checks one interval apart, %d requests; want %d", i+1, got, i+1)
		}
		clock.Step(time.Second - 300*time.Millisecond) // next check, 1s after the last began
	}
	if _, err := NewServers(testOptions(stub.URL, func(o *Options) { o.ShareWindow = time.Second })); err == nil {
		t.Error("a share window of 1s was accepted")
	}
}

// A workload whose loop stops while it asks for others abandons the request;
// those waiting ask again instead of reading the cancellation as an outage.
func TestAbandonedQuestionAskedAgain(t *testing.T) {
	arrived := make(chan struct{}, 4)
	stub, unblock := newBlockingStub(t, arrived)
	servers := mustServers(t, testOptions(stub.URL, nil))
	md := Metadata{Query: "up", Threshold: 1}
	stopping, waiting := mustNew(t, servers, md, time.Minute), mustNew(t, servers, md, time.Minute)

	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() {
		_, err := stopping.ShouldScaleFromZero(ctx)
		stopped <- err
	}()
	<-arrived
	type result struct {
		active bool
		err    error
	}
	waited := make(chan result, 1)
	go func() {
		active, err := waiting.ShouldScaleFromZero(context.Background())
		waited <- result{active, err}
	}()
	time.Sleep(100 * time.Millisecond) // let it join the request in flight
	cancel()
	if err := <-stopped; !errors.Is(err, context.Canceled) {
		t.Fatalf("stopped caller got %v, want context.Canceled", err)
	}
	select {
	case <-arrived:
	case r := <-waited:
		t.Fatalf("waiting caller returned %v, %v without asking again", r.active, r.err)
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting caller did not ask again")
	}
	unblock()
	if r := <-waited; r.err != nil || !r.active {
		t.Errorf("waiting caller got %v, %v; want true, nil", r.active, r.err)
	}
}

// Redirects are followed only for a --prometheus-config entry that sets
// follow_redirects: true; never for a server given by flags (issue 9 item
// 3): a redirect would carry the workload's headers to a server nobody
// allowed.
func TestRedirects(t *testing.T) {
	tests := []struct {
		name       string
		options    func(t *testing.T, def, redirecting string) Options
		wantFollow bool
	}{
		{"--allowed-server-address", func(t *testing.T, def, redirecting string) Options {
			return testOptions(def, func(o *Options) { o.AllowedAddresses = []string{redirecting} })
		}, false},
		{"--prometheus-address", func(t *testing.T, def, redirecting string) Options {
			return testOptions(redirecting, nil)
		}, false},
		{"config file, follow_redirects unset", func(t *testing.T, def, redirecting string) Options {
			cfg := writeFile(t, t.TempDir(), "p.yaml", "servers:\n- url: "+redirecting+"\n")
			return testOptions(def, func(o *Options) { o.ConfigFile = cfg })
		}, false},
		{"config file, follow_redirects: false", func(t *testing.T, def, redirecting string) Options {
			cfg := writeFile(t, t.TempDir(), "p.yaml", "servers:\n- url: "+redirecting+"\n  follow_redirects: false\n")
			return testOptions(def, func(o *Options) { o.ConfigFile = cfg })
		}, false},
		{"config file, follow_redirects: true", func(t *testing.T, def, redirecting string) Options {
			cfg := writeFile(t, t.TempDir(), "p.yaml", "servers:\n- url: "+redirecting+"\n  follow_redirects: true\n")
			return testOptions(def, func(o *Options) { o.ConfigFile = cfg })
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			def := newPromStub(t, reply(200, vector("1")))
			target := newPromStub(t, reply(200, vector("1")))
			redirecting := newPromStub(t, func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, target.URL+r.URL.RequestURI(), http.StatusTemporaryRedirect)
			})
			servers := mustServers(t, tt.options(t, def.URL, redirecting.URL))
			s := mustNew(t, servers, Metadata{ServerAddress: redirecting.URL, Query: "q", Threshold: 1, Headers: map[string]string{"X-Team": "a"}}, time.Minute)
			_, err := s.ShouldScaleToZero(context.Background())
			if n := len(redirecting.requests()); n != 1 {
				t.Fatalf("redirecting server got %d requests, want 1", n)
			}
			got := len(target.requests())
			switch {
			case tt.wantFollow && (got != 1 || err != nil):
				t.Errorf("redirect not followed: target got %d requests, error %v", got, err)
			case !tt.wantFollow && got != 0:
				t.Errorf("redirect followed: target got %d requests", got)
			case !tt.wantFollow && err == nil:
				t.Error("a redirect answer was taken for a reading")
			}
		})
	}
}
