//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zeroscaler/zeroscaler/test/localstack"
)

// tenantCounter is a reverse proxy in front of Cortex that records the
// tenant header values and the query of every request zeroscaler sends.
type tenantCounter struct {
	*httptest.Server
	mu   sync.Mutex
	seen []tenantRequest
}

type tenantRequest struct {
	tenants []string // every X-Scope-OrgID value, in order
	query   string
}

func newTenantCounter(t *testing.T, target string) *tenantCounter {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	c := &tenantCounter{}
	proxy := httputil.NewSingleHostReverseProxy(u)
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		c.mu.Lock()
		c.seen = append(c.seen, tenantRequest{tenants: r.Header.Values(localstack.TenantHeader), query: r.Form.Get("query")})
		c.mu.Unlock()
		// The form was read from the body; send it on as a new body.
		if r.Method == http.MethodPost {
			body := r.PostForm.Encode()
			r.Body = io.NopCloser(strings.NewReader(body))
			r.ContentLength = int64(len(body))
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(c.Close)
	return c
}

// requests returns what the proxy saw so far.
func (c *tenantCounter) requests() []tenantRequest {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]tenantRequest(nil), c.seen...)
}

// Tenant fencing on a real Cortex (issue 10): two tenants write the same
// series with different values; the operator maps one Namespace to each.
// The workload of tenant-a's Namespace reads its active value and stays
// awake; the workload of tenant-b's Namespace reads its idle value and
// sleeps. A workload that names the other tenant in zeroscaler.io/headers
// (with X-Scope-OrgID on --allowed-workload-header) and one in a Namespace
// without a tenant are refused with InvalidScalingConfig, and no request
// of theirs reaches Cortex. Every request carries exactly one tenant.
func TestTenantFencingOnCortex(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	began := time.Now()
	cx, err := localstack.StartCortex(ctx, localstack.CortexOptions{Tenants: []string{"tenant-a", "tenant-b"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cx.Stop(); err != nil {
			t.Errorf("stop cortex: %v", err)
		}
	})
	t.Logf("cortex and its writer ready in %v", time.Since(began).Round(time.Millisecond))

	// Cortex itself refuses a query that names no tenant.
	resp, err := http.Get(cx.PrometheusURL + "/api/v1/query?query=up")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a query without %s: %s, want 401", localstack.TenantHeader, resp.Status)
	}

	// The same series, active for tenant-a and idle for tenant-b.
	const series = "tenant-web"
	for tenant, v := range map[string]float64{"tenant-a": 5, "tenant-b": 0} {
		if err := cx.SetAndWait(ctx, tenant, series, v); err != nil {
			t.Fatal(err)
		}
	}
	query := cx.Exporters["tenant-a"].Query(series)

	cs := clientset(t)
	nsA, nsB, nsNone := newNamespace(t, cs), newNamespace(t, cs), newNamespace(t, cs)
	counter := newTenantCounter(t, cx.URL)
	server := counter.URL + "/prometheus"
	cfg := filepath.Join(t.TempDir(), "prometheus.yaml")
	err = os.WriteFile(cfg, fmt.Appendf(nil, `servers:
- url: %s
  tenant:
    header: X-Scope-OrgID
    namespaces:
      %s: tenant-a
      %s: tenant-b
`, server, nsA, nsB), 0o600)
	if err != nil {
		t.Fatal(err)
	}

	const selector = "e2e-test=tenant-fencing"
	create := func(ns, name string, ann map[string]string) *workload {
		w := createWorkload(t, cs, deployment, ns, name, 2, ann)
		w.label(t, map[string]*string{"e2e-test": str("tenant-fencing")})
		return w
	}
	// A query of its own for each refused workload: were any of them
	// asked, the proxy would show it.
	awake := create(nsA, "reads-a", annotations(query))
	asleep := create(nsB, "reads-b", annotations(query))
	sneaky := create(nsA, "names-b", annotations(query+" * 1", "zeroscaler.io/headers", "X-Scope-OrgID=tenant-b"))
	homeless := create(nsNone, "no-tenant", annotations(query+" * 2"))

	startDaemon(t, "tenants", "",
		"--prometheus-config", cfg,
		"--prometheus-address", server,
		"--allowed-workload-header", "X-Scope-OrgID",
		"--uptime-filter", fmt.Sprintf("job=%q", localstack.CortexWriterJob),
		"--selector", selector,
	)

	sneaky.waitForEvent(t, reasonInvalidConfig, "Warning", "zeroscaler.io/headers", "X-Scope-Orgid", "tenant")
	homeless.waitForEvent(t, reasonInvalidConfig, "Warning", nsNone, server, "tenant.namespaces")
	asleep.waitAsleep(t, 2)
	holdEach(t, quietPeriod(cooldown, polling), "keeps its replicas", map[*workload]func(snapshot) error{
		awake:    runsUnmarked(2),
		sneaky:   runsUnmarked(2),
		homeless: runsUnmarked(2),
	})

	perTenant := map[string]int{}
	for _, r := range counter.requests() {
		if len(r.tenants) != 1 {
			t.Errorf("a request carried %s %q, want exactly one value: %s", localstack.TenantHeader, r.tenants, r.query)
			continue
		}
		perTenant[r.tenants[0]]++
		if strings.Contains(r.query, query+" * ") {
			t.Errorf("a refused workload's query reached Cortex as %s: %s", r.tenants[0], r.query)
		}
	}
	t.Logf("requests per tenant: %v", perTenant)
	if perTenant["tenant-a"] == 0 || perTenant["tenant-b"] == 0 || len(perTenant) != 2 {
		t.Errorf("requests per tenant %v, want some for tenant-a and tenant-b and no other", perTenant)
	}
}
