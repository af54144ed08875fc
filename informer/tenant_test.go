package informer

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zeroscaler/zeroscaler/handler"
	"github.com/zeroscaler/zeroscaler/scaler"
)

// tenantDefaults are Defaults whose default server chooses the tenant per
// Namespace, with X-Scope-OrgID on --allowed-workload-header.
func tenantDefaults(t *testing.T) Defaults {
	t.Helper()
	path := filepath.Join(t.TempDir(), "p.yaml")
	cfg := "servers:\n- url: " + defaultServer + "\n  tenant:\n    header: X-Scope-OrgID\n    namespaces: {team-a: tenant-a}\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	servers, err := scaler.NewServers(scaler.Options{
		ConfigFile:             path,
		AllowedAddresses:       []string{allowedServer},
		AllowedWorkloadHeaders: []string{"X-Scope-OrgID", "X-Team"},
		QueryTimeout:           time.Second,
		MaxConcurrentQueries:   1,
	})
	if err != nil {
		t.Fatal(err)
	}
	d := testDefaults(t)
	d.Servers = servers
	return d
}

// The workload's Namespace reaches the scaler; a Namespace without a
// tenant, and a tenant header in zeroscaler.io/headers, make the workload
// invalid for a server with a tenant setting (issue 10).
func TestParseTenant(t *testing.T) {
	d := tenantDefaults(t)
	base := map[string]string{AnnotationQuery: baseQuery, AnnotationThreshold: "0.1"}
	with := func(kv ...string) map[string]string {
		out := map[string]string{}
		for k, v := range base {
			out[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	tests := []struct {
		name      string
		own, ns   map[string]string
		namespace string
		// want are the words the error must hold; none for a valid one.
		want []string
		// field is the annotation the error must blame, if any.
		field string
	}{
		{name: "mapped Namespace", own: base, namespace: "team-a"},
		{name: "other header allowed", own: with(AnnotationHeaders, "X-Team=shop"), namespace: "team-a"},
		{name: "Namespace without a tenant", own: base, namespace: "team-z", want: []string{`"team-z"`, defaultServer, "tenant.namespaces"}},
		{name: "tenant header in the annotation", own: with(AnnotationHeaders, "X-Scope-OrgID=tenant-b"), namespace: "team-a", want: []string{"X-Scope-Orgid", "tenant"}, field: AnnotationHeaders},
		{name: "tenant header in lower case", own: with(AnnotationHeaders, "x-scope-orgid=tenant-a"), namespace: "team-a", want: []string{"X-Scope-Orgid"}, field: AnnotationHeaders},
		{name: "tenant header inherited from the Namespace", own: base, ns: map[string]string{AnnotationHeaders: "X-Scope-OrgID=tenant-b"}, namespace: "team-a", want: []string{"X-Scope-Orgid", "team-a"}, field: AnnotationHeaders},
		{name: "server without a tenant setting", own: with(AnnotationServerAddress, allowedServer, AnnotationHeaders, "X-Scope-OrgID=tenant-b"), namespace: "team-z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parse(tt.own, tt.ns, tt.namespace, d)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if cfg.Metadata.Namespace != tt.namespace {
					t.Errorf("Metadata.Namespace = %q, want %q", cfg.Metadata.Namespace, tt.namespace)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted: %+v", cfg)
			}
			if cfg.Mode != handler.Invalid {
				t.Errorf("mode %v, want Invalid", cfg.Mode)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %s", err, w)
				}
			}
			var fe *FieldError
			if tt.field != "" && (!errors.As(err, &fe) || fe.Annotation != tt.field) {
				t.Errorf("error %q does not blame %s", err, tt.field)
			}
		})
	}
}
