package scaler

import (
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// TenantConfig is how a multi-tenant store behind one --prometheus-config
// entry (Cortex, Mimir, Thanos' receive) learns whose data a query reads:
// the operator names the header and the tenant of each Namespace, and every
// query a workload sends to that server carries its Namespace's tenant in
// that header, once, and no other value. No workload can set or change it.
type TenantConfig struct {
	// Header is the tenant header, such as X-Scope-OrgID.
	Header string `yaml:"header"`
	// Namespaces maps a Namespace's name to its tenant.
	Namespaces map[string]string `yaml:"namespaces,omitempty"`
	// FromNamespace makes the Namespace's name its tenant.
	FromNamespace bool `yaml:"from_namespace,omitempty"`
}

// tenant is a checked TenantConfig.
type tenant struct {
	// header is canonical.
	header        string
	namespaces    map[string]string
	fromNamespace bool
}

// of returns the tenant of a Namespace.
func (t *tenant) of(namespace string) (string, bool) {
	if t.fromNamespace {
		return namespace, namespace != ""
	}
	v, ok := t.namespaces[namespace]
	return v, ok
}

// check says what is wrong with a tenant setting, naming the field; fixed
// are the canonical names the same entry sets in http_headers.
func (c *TenantConfig) check(fixed map[string]bool) (*tenant, error) {
	name := strings.TrimSpace(c.Header)
	switch {
	case name == "":
		return nil, errors.New("tenant.header is empty; name the tenant header, such as X-Scope-OrgID")
	case name != c.Header || !validHeaderName(name):
		return nil, fmt.Errorf("tenant.header: %q is not a valid header name", c.Header)
	}
	canonical := http.CanonicalHeaderKey(name)
	if reservedHeader(canonical) {
		return nil, fmt.Errorf("tenant.header: %s carries credentials or framing, not a tenant", canonical)
	}
	if fixed[canonical] {
		return nil, fmt.Errorf("tenant.header %s is also set in http_headers; the tenant comes from the Namespace alone", canonical)
	}
	switch {
	case c.FromNamespace && len(c.Namespaces) > 0:
		return nil, errors.New("tenant: set either namespaces or from_namespace, not both")
	case !c.FromNamespace && len(c.Namespaces) == 0:
		return nil, errors.New("tenant: set namespaces (a map from Namespace to tenant) or from_namespace: true")
	}
	t := &tenant{header: canonical, fromNamespace: c.FromNamespace, namespaces: make(map[string]string, len(c.Namespaces))}
	for _, ns := range sortedKeys(c.Namespaces) {
		v := c.Namespaces[ns]
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			return nil, fmt.Errorf("tenant.namespaces: %q is not a Namespace name", ns)
		}
		if err := checkTenantValue(v); err != nil {
			return nil, fmt.Errorf("tenant.namespaces.%s: %w", ns, err)
		}
		t.namespaces[ns] = v
	}
	return t, nil
}

// checkTenantValue says what is wrong with a tenant, if anything: it is
// sent as a header value, so it must be one, and it must not be empty or
// start or end with white space, which a server would trim.
func checkTenantValue(v string) error {
	switch {
	case v == "":
		return errors.New("the tenant is empty")
	case strings.TrimSpace(v) != v:
		return fmt.Errorf("the tenant %q starts or ends with white space", v)
	case CheckHeader("X-Tenant", v) != nil:
		return fmt.Errorf("the tenant %q is not a valid header value (control characters)", v)
	}
	return nil
}

func validHeaderName(name string) bool { return CheckHeader(name, "") == nil }

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// CheckNamespace says whether workloads in namespace may query the server
// at address (normalized; empty for the default server): a server with a
// tenant setting answers only Namespaces that have a tenant. The error
// names the Namespace, the server and the setting; it reads on its own.
func (s *Servers) CheckNamespace(address, namespace string) error {
	if address == "" {
		address = s.defaultAddress
	}
	srv, ok := s.byAddress[address]
	if !ok || srv.tenant == nil {
		return nil
	}
	if _, ok := srv.tenant.of(namespace); ok {
		return nil
	}
	return fmt.Errorf("namespace %q has no tenant for Prometheus server %s: the operator maps Namespaces to tenants in --prometheus-config (tenant.namespaces)", namespace, address)
}

// tenantHeaders returns the tenant header a workload of namespace sends to
// srv, if srv has a tenant setting.
func (srv *server) tenantHeaders(namespace string) (name, value string, err error) {
	if srv.tenant == nil {
		return "", "", nil
	}
	v, ok := srv.tenant.of(namespace)
	if !ok {
		return "", "", fmt.Errorf("namespace %q has no tenant for Prometheus server %s (tenant.namespaces in --prometheus-config)", namespace, srv.address)
	}
	return srv.tenant.header, v, nil
}

// tenantOf checks an entry's tenant setting, if it has one.
func tenantOf(sc ServerConfig) (*tenant, error) {
	if sc.Tenant == nil {
		return nil, nil
	}
	fixed, err := fileHeaderNames(sc.HTTPClientConfig)
	if err != nil {
		return nil, err
	}
	return sc.Tenant.check(fixed)
}
