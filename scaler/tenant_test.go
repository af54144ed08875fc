package scaler

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v2"
	clocktesting "k8s.io/utils/clock/testing"
)

// tenantConfig writes a --prometheus-config with one server, url, whose
// tenant setting is the YAML block tenant (indented under the entry).
func tenantConfig(t *testing.T, url, tenant string) string {
	t.Helper()
	return writeFile(t, t.TempDir(), "p.yaml", "servers:\n- url: "+url+"\n  tenant:\n"+indent(tenant, "    "))
}

func indent(s, by string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = by + l
	}
	return strings.Join(lines, "\n") + "\n"
}

const twoTenants = `header: X-Scope-OrgID
namespaces: {team-a: tenant-a, team-b: tenant-b, team-c: tenant-a}
`

// Each workload's queries carry its Namespace's tenant, once, and no other
// value; answers are shared within a tenant and never across tenants
// (issue 10, tenant fencing). The stand-in answers per tenant, so an answer
// shared across tenants would show as a wrong decision too.
func TestTenantFromNamespace(t *testing.T) {
	stub := newCountingStub(t, func(r *http.Request) string {
		if r.Header.Get("X-Scope-OrgID") == "tenant-b" {
			return "10"
		}
		return "0"
	})
	clock := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	servers := mustServers(t, Options{
		ConfigFile:           tenantConfig(t, stub.URL, twoTenants),
		QueryTimeout:         5 * time.Second,
		MaxConcurrentQueries: 4,
		ShareWindow:          500 * time.Millisecond,
		Clock:                clock,
	})
	ask := func(t *testing.T, namespace, query string) bool {
		t.Helper()
		s := mustNew(t, servers, Metadata{Query: query, Threshold: 1, UptimeFilter: `job="x"`, Namespace: namespace}, time.Minute)
		idle, err := s.ShouldScaleToZero(context.Background())
		if err != nil {
			t.Fatalf("%s: %v", namespace, err)
		}
		if _, err := s.IsHealthy(context.Background()); err != nil {
			t.Fatalf("%s health: %v", namespace, err)
		}
		return idle
	}

	t.Run("two tenants, same query: two requests", func(t *testing.T) {
		if !ask(t, "team-a", "q1") {
			t.Error("team-a read tenant-b's value")
		}
		if ask(t, "team-b", "q1") {
			t.Error("team-b read tenant-a's value")
		}
		counts := stub.counts()
		if counts["q1 tenant-a"] != 1 || counts["q1 tenant-b"] != 1 {
			t.Errorf("requests %v, want one per tenant", counts)
		}
	})
	t.Run("same tenant, same query: one request", func(t *testing.T) {
		ask(t, "team-a", "q2")
		if !ask(t, "team-c", "q2") {
			t.Error("team-c read another tenant's value")
		}
		if n := stub.counts()["q2 tenant-a"]; n != 1 {
			t.Errorf("%d requests, want 1 for two Namespaces of one tenant", n)
		}
	})
	t.Run("every request carries one tenant value", func(t *testing.T) {
		reqs := stub.requests()
		if len(reqs) == 0 {
			t.Fatal("no requests")
		}
		for _, r := range reqs {
			got := r.Header["X-Scope-Orgid"]
			if len(got) != 1 || (got[0] != "tenant-a" && got[0] != "tenant-b") {
				t.Errorf("%s: X-Scope-OrgID values %q, want exactly one tenant", r.Query, got)
			}
		}
	})
}

// from_namespace makes the Namespace's name the tenant.
func TestTenantIsNamespaceName(t *testing.T) {
	stub := newPromStub(t, reply(200, vector("1")))
	servers := mustServers(t, Options{
		ConfigFile:           tenantConfig(t, stub.URL, "header: X-Scope-OrgID\nfrom_namespace: true\n"),
		QueryTimeout:         5 * time.Second,
		MaxConcurrentQueries: 4,
	})
	for _, ns := range []string{"shop", "billing"} {
		if err := servers.CheckNamespace("", ns); err != nil {
			t.Errorf("%s: %v", ns, err)
		}
		s := mustNew(t, servers, Metadata{Query: "q", Threshold: 1, Namespace: ns}, time.Minute)
		if _, err := s.ShouldScaleToZero(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	for _, r := range stub.requests() {
		got = append(got, strings.Join(r.Header["X-Scope-Orgid"], ","))
	}
	if !slices.Equal(got, []string{"shop", "billing"}) {
		t.Errorf("tenants sent %q, want [shop billing]", got)
	}
}

// A workload can neither choose nor add a tenant: the tenant header is
// refused from its annotation even when --allowed-workload-header lists it
// (then it may still send it to a server without a tenant setting), and a
// workload whose Namespace has no tenant is refused with an error naming
// the Namespace, the server and the setting.
func TestTenantNotFromWorkload(t *testing.T) {
	fenced := newPromStub(t, reply(200, vector("1")))
	open := newPromStub(t, reply(200, vector("1")))
	servers := mustServers(t, testOptions("", func(o *Options) {
		o.ConfigFile = tenantConfig(t, fenced.URL, twoTenants)
		o.AllowedAddresses = []string{open.URL}
		o.AllowedWorkloadHeaders = []string{"X-Scope-OrgID"}
	}))
	for _, name := range []string{"X-Scope-OrgID", "x-scope-orgid"} {
		for _, addr := range []string{"", fenced.URL} {
			err := servers.CheckWorkloadHeader(addr, name)
			if err == nil || !strings.Contains(err.Error(), "X-Scope-Orgid") || !strings.Contains(err.Error(), "tenant") {
				t.Errorf("CheckWorkloadHeader(%q, %s) = %v; want a refusal naming the tenant header", addr, name, err)
			}
			md := Metadata{ServerAddress: addr, Query: "q", Threshold: 1, Namespace: "team-a", Headers: map[string]string{name: "tenant-b"}}
			if _, err := New(servers, md, time.Minute); err == nil {
				t.Errorf("New accepted the workload header %s for %q", name, addr)
			}
		}
	}
	if err := servers.CheckWorkloadHeader(open.URL, "X-Scope-OrgID"); err != nil {
		t.Errorf("a server without a tenant setting: %v", err)
	}

	err := servers.CheckNamespace("", "team-z")
	if err == nil {
		t.Fatal("a Namespace without a tenant was accepted")
	}
	for _, want := range []string{`"team-z"`, fenced.URL, "tenant.namespaces"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if _, err := New(servers, Metadata{Query: "q", Threshold: 1, Namespace: "team-z"}, time.Minute); err == nil {
		t.Error("New accepted a Namespace without a tenant")
	}
	if err := servers.CheckNamespace(open.URL, "team-z"); err != nil {
		t.Errorf("a server without a tenant setting: %v", err)
	}
	if n := len(fenced.requests()); n != 0 {
		t.Errorf("the fenced server got %d requests", n)
	}
}

// A tenant setting that is wrong stops the daemon at start, with an error
// that names the field.
func TestTenantConfigRejects(t *testing.T) {
	tests := []struct {
		name, tenant, extra, want string
	}{
		{"empty header", "header: \"\"\nfrom_namespace: true", "", "tenant.header is empty"},
		{"no header", "from_namespace: true", "", "tenant.header is empty"},
		{"header with a space", "header: X Scope\nfrom_namespace: true", "", "tenant.header"},
		{"header with a colon", "header: \"X-Scope-OrgID:\"\nfrom_namespace: true", "", "tenant.header"},
		{"header with surrounding space", "header: \" X-Scope-OrgID\"\nfrom_namespace: true", "", "tenant.header"},
		{"credentials header", "header: authorization\nfrom_namespace: true", "", "tenant.header"},
		{"also in http_headers", "header: x-scope-orgid\nfrom_namespace: true", "  http_headers:\n    X-Scope-OrgID: {values: [ops]}\n", "http_headers"},
		{"no tenants", "header: X-Scope-OrgID", "", "tenant: set namespaces"},
		{"both kinds", "header: X-Scope-OrgID\nfrom_namespace: true\nnamespaces: {a: b}", "", "not both"},
		{"empty tenant", "header: X-Scope-OrgID\nnamespaces: {team-a: \"\"}", "", "tenant.namespaces.team-a"},
		{"tenant with a newline", "header: X-Scope-OrgID\nnamespaces: {team-a: \"a\\nb\"}", "", "tenant.namespaces.team-a"},
		{"tenant with NUL", "header: X-Scope-OrgID\nnamespaces: {team-a: \"a\\0b\"}", "", "tenant.namespaces.team-a"},
		{"tenant with surrounding space", "header: X-Scope-OrgID\nnamespaces: {team-a: \"a \"}", "", "tenant.namespaces.team-a"},
		{"not a Namespace name", "header: X-Scope-OrgID\nnamespaces: {Team_A: a}", "", "tenant.namespaces"},
		{"unknown field", "header: X-Scope-OrgID\nfrom_namespace: true\nnamespace: {a: b}", "", "field namespace not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, t.TempDir(), "p.yaml", "servers:\n- url: http://cortex.example/prometheus\n"+tt.extra+"  tenant:\n"+indent(tt.tenant, "    "))
			_, err := NewServers(Options{ConfigFile: path, QueryTimeout: time.Second, MaxConcurrentQueries: 1})
			if err == nil {
				t.Fatal("accepted")
			}
			// YAML's own errors give the line rather than the entry.
			where := strings.Contains(err.Error(), "servers[0]") || strings.Contains(err.Error(), "line 6")
			if !strings.Contains(err.Error(), tt.want) || !where {
				t.Errorf("error %q does not name the entry and %q", err, tt.want)
			}
		})
	}

	// The operator's --prometheus-header cannot set a tenant either.
	path := tenantConfig(t, "http://cortex.example/prometheus", twoTenants)
	_, err := NewServers(Options{ConfigFile: path, Headers: map[string]string{"x-scope-orgid": "ops"}, QueryTimeout: time.Second, MaxConcurrentQueries: 1})
	if err == nil || !strings.Contains(err.Error(), "X-Scope-Orgid") {
		t.Errorf("--prometheus-header with the tenant header: %v", err)
	}
}

// Whatever the tenant block holds, a server is built only from a setting
// whose every tenant is sent as given, once, in a valid header, and never
// in a header that carries credentials.
func FuzzTenantConfig(f *testing.F) {
	f.Add("X-Scope-OrgID", "team-a", "tenant-a", false)
	f.Add("x-scope-orgid", "team-b", "a|b", false)
	f.Add("Authorization", "team-a", "x", false)
	f.Add("X-Scope-OrgID", "", "", true)
	f.Add("X Bad", "Team", "a\r\nb", false)
	f.Fuzz(func(t *testing.T, header, namespace, value string, fromNamespace bool) {
		tc := TenantConfig{Header: header, FromNamespace: fromNamespace}
		if namespace != "" || value != "" {
			tc.Namespaces = map[string]string{namespace: value}
		}
		b, err := yaml.Marshal(FileConfig{Servers: []ServerConfig{{URL: "http://cortex.example", Tenant: &tc}}})
		if err != nil {
			t.Skip(err)
		}
		path := writeFile(t, t.TempDir(), "p.yaml", string(b))
		servers, err := NewServers(Options{ConfigFile: path, QueryTimeout: time.Second, MaxConcurrentQueries: 1})
		if err != nil {
			return
		}
		srv := servers.byAddress["http://cortex.example"]
		if srv == nil || srv.tenant == nil {
			t.Fatal("the tenant setting was lost")
		}
		if err := CheckHeader(srv.tenant.header, ""); err != nil || reservedHeader(srv.tenant.header) || !srv.fixed[srv.tenant.header] {
			t.Fatalf("header %q accepted", srv.tenant.header)
		}
		ns := namespace
		want := value
		if fromNamespace {
			ns, want = "shop", "shop"
		}
		md := Metadata{Query: "q", Threshold: 1, Namespace: ns}
		s, err := New(servers, md, time.Minute)
		if err != nil {
			t.Fatalf("New(%q): %v", ns, err)
		}
		got := s.metric.headers[srv.tenant.header]
		if got != want || len(s.metric.headers) != 1 || checkTenantValue(got) != nil {
			t.Fatalf("headers %v, want only %s=%q", s.metric.headers, srv.tenant.header, want)
		}
		if err := servers.CheckWorkloadHeader("", header); err == nil {
			t.Fatalf("a workload may set the tenant header %q", header)
		}
	})
}
