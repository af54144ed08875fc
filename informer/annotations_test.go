package informer

import (
	"errors"
	"maps"
	"math"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql/parser"
	"golang.org/x/net/http/httpguts"

	"github.com/zeroscaler/zeroscaler/handler"
	"github.com/zeroscaler/zeroscaler/scaler"
)

const (
	defaultServer = "http://prometheus.monitoring:9090"
	allowedServer = "http://thanos-query.monitoring:9090/prefix"
	baseQuery     = `sum(rate(nginx_ingress_controller_requests{service="web"}[2m]))`
)

func testDefaults(t testing.TB) Defaults {
	t.Helper()
	servers, err := scaler.NewServers(scaler.Options{
		DefaultAddress:         defaultServer,
		AllowedAddresses:       []string{allowedServer},
		Headers:                map[string]string{"X-Operator": "ops"},
		AllowedWorkloadHeaders: []string{"X-Scope-OrgID", "x-tenant", "X-OK", "X-B", "X-Operator"},
		QueryTimeout:           time.Second,
		MaxConcurrentQueries:   1,
	})
	if err != nil {
		t.Fatal(err)
	}
	return Defaults{
		UptimeFilter:    `job="prometheus"`,
		CooldownPeriod:  5 * time.Minute,
		PollingInterval: 30 * time.Second,
		Servers:         servers,
	}
}

// baseConfig is what the base annotations (query and threshold only) parse
// to with testDefaults.
func baseConfig() handler.Config {
	return handler.Config{
		Mode:           handler.Managed,
		CooldownPeriod: 5 * time.Minute,
		PollingPeriod:  30 * time.Second,
		MinReplicas:    1,
		Metadata: scaler.Metadata{
			Query:        baseQuery,
			Threshold:    0.1,
			UptimeFilter: `job="prometheus"`,
		},
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		// set is applied over the base annotations (query and threshold).
		set map[string]string
		// unset removes base annotations.
		unset []string
		// want changes the base configuration into the expected one.
		want func(*handler.Config)
		// wantBad names the annotations reported wrong.
		wantBad []string
	}{
		{name: "defaults when optional annotations are absent"},

		// query
		{name: "query trimmed", set: map[string]string{AnnotationQuery: "  up\n"}, want: func(c *handler.Config) { c.Metadata.Query = "up" }},
		{name: "query with or vector(0)", set: map[string]string{AnnotationQuery: "sum(x) or vector(0)"}, want: func(c *handler.Config) { c.Metadata.Query = "sum(x) or vector(0)" }},
		{name: "query missing", unset: []string{AnnotationQuery}, wantBad: []string{AnnotationQuery}},
		{name: "query empty", set: map[string]string{AnnotationQuery: ""}, wantBad: []string{AnnotationQuery}},
		{name: "query blank", set: map[string]string{AnnotationQuery: " \t\n"}, wantBad: []string{AnnotationQuery}},

		// threshold
		{name: "threshold zero", set: map[string]string{AnnotationThreshold: "0"}, want: func(c *handler.Config) { c.Metadata.Threshold = 0 }},
		{name: "threshold negative", set: map[string]string{AnnotationThreshold: "-1.5"}, want: func(c *handler.Config) { c.Metadata.Threshold = -1.5 }},
		{name: "threshold exponent and spaces", set: map[string]string{AnnotationThreshold: " 1e3 "}, want: func(c *handler.Config) { c.Metadata.Threshold = 1000 }},
		{name: "threshold missing", unset: []string{AnnotationThreshold}, wantBad: []string{AnnotationThreshold}},
		{name: "threshold empty", set: map[string]string{AnnotationThreshold: ""}, wantBad: []string{AnnotationThreshold}},
		{name: "threshold not a number", set: map[string]string{AnnotationThreshold: "abc"}, wantBad: []string{AnnotationThreshold}},
		{name: "threshold with unit", set: map[string]string{AnnotationThreshold: "10rps"}, wantBad: []string{AnnotationThreshold}},
		{name: "threshold NaN", set: map[string]string{AnnotationThreshold: "NaN"}, wantBad: []string{AnnotationThreshold}},
		{name: "threshold Inf", set: map[string]string{AnnotationThreshold: "Inf"}, wantBad: []string{AnnotationThreshold}},
		{name: "threshold -Inf", set: map[string]string{AnnotationThreshold: "-Inf"}, wantBad: []string{AnnotationThreshold}},
		{name: "threshold overflows", set: map[string]string{AnnotationThreshold: "1e400"}, wantBad: []string{AnnotationThreshold}},
		{name: "threshold underflows", set: map[string]string{AnnotationThreshold: "1e-400"}, wantBad: []string{AnnotationThreshold}},
		{name: "threshold underflows, negative", set: map[string]string{AnnotationThreshold: "-2.5e-330"}, wantBad: []string{AnnotationThreshold}},
		{name: "threshold underflows, hex", set: map[string]string{AnnotationThreshold: "0x1p-1100"}, wantBad: []string{AnnotationThreshold}},
		{name: "threshold subnormal", set: map[string]string{AnnotationThreshold: "4e-320"}, wantBad: []string{AnnotationThreshold}},
		{name: "threshold smallest normal", set: map[string]string{AnnotationThreshold: "2.2250738585072014e-308"}, want: func(c *handler.Config) { c.Metadata.Threshold = 0x1p-1022 }},
		{name: "threshold tiny but normal", set: map[string]string{AnnotationThreshold: "1e-300"}, want: func(c *handler.Config) { c.Metadata.Threshold = 1e-300 }},
		{name: "threshold zero with exponent", set: map[string]string{AnnotationThreshold: "0.000e-999"}, want: func(c *handler.Config) { c.Metadata.Threshold = 0 }},
		{name: "threshold hex zero", set: map[string]string{AnnotationThreshold: "0x0p-2000"}, want: func(c *handler.Config) { c.Metadata.Threshold = 0 }},
		{name: "threshold negative zero", set: map[string]string{AnnotationThreshold: "-0"}, want: func(c *handler.Config) { c.Metadata.Threshold = 0 }},

		// server-address
		{name: "server address default", set: map[string]string{AnnotationServerAddress: defaultServer}, want: func(c *handler.Config) { c.Metadata.ServerAddress = defaultServer }},
		{name: "server address default with trailing slash", set: map[string]string{AnnotationServerAddress: defaultServer + "/"}, want: func(c *handler.Config) { c.Metadata.ServerAddress = defaultServer }},
		{name: "server address allowed", set: map[string]string{AnnotationServerAddress: allowedServer + "/"}, want: func(c *handler.Config) { c.Metadata.ServerAddress = allowedServer }},
		{name: "server address not allowed", set: map[string]string{AnnotationServerAddress: "http://attacker.example:9090"}, wantBad: []string{AnnotationServerAddress}},
		{name: "server address other port", set: map[string]string{AnnotationServerAddress: "http://prometheus.monitoring:9091"}, wantBad: []string{AnnotationServerAddress}},
		{name: "server address https of an http server", set: map[string]string{AnnotationServerAddress: "https://prometheus.monitoring:9090"}, wantBad: []string{AnnotationServerAddress}},
		{name: "server address not http", set: map[string]string{AnnotationServerAddress: "ftp://prometheus.monitoring:9090"}, wantBad: []string{AnnotationServerAddress}},
		{name: "server address without scheme", set: map[string]string{AnnotationServerAddress: "prometheus.monitoring:9090"}, wantBad: []string{AnnotationServerAddress}},
		{name: "server address with userinfo", set: map[string]string{AnnotationServerAddress: "http://admin:hunter2@prometheus.monitoring:9090"}, wantBad: []string{AnnotationServerAddress}},
		{name: "server address empty", set: map[string]string{AnnotationServerAddress: ""}, wantBad: []string{AnnotationServerAddress}},
		{name: "server address not allowed, with an allowed header", set: map[string]string{AnnotationServerAddress: "http://attacker.example", AnnotationHeaders: "X-Tenant=a"}, wantBad: []string{AnnotationServerAddress}},

		// uptime-filter
		{name: "uptime filter", set: map[string]string{AnnotationUptimeFilter: ` job="api", namespace="shop" `}, want: func(c *handler.Config) { c.Metadata.UptimeFilter = `job="api", namespace="shop"` }},
		{name: "uptime filter regexp", set: map[string]string{AnnotationUptimeFilter: `job=~"node.*"`}, want: func(c *handler.Config) { c.Metadata.UptimeFilter = `job=~"node.*"` }},
		{name: "uptime filter with braces", set: map[string]string{AnnotationUptimeFilter: `{job="api"}`}, wantBad: []string{AnnotationUptimeFilter}},
		{name: "uptime filter closing brace", set: map[string]string{AnnotationUptimeFilter: `job="api"}) or vector(1`}, wantBad: []string{AnnotationUptimeFilter}},
		{name: "uptime filter with newline", set: map[string]string{AnnotationUptimeFilter: "job=\"api\"\n"}, wantBad: []string{AnnotationUptimeFilter}},
		{name: "uptime filter empty", set: map[string]string{AnnotationUptimeFilter: ""}, wantBad: []string{AnnotationUptimeFilter}},
		{name: "uptime filter blank", set: map[string]string{AnnotationUptimeFilter: "  "}, wantBad: []string{AnnotationUptimeFilter}},
		{name: "uptime filter unterminated string", set: map[string]string{AnnotationUptimeFilter: `job="x`}, wantBad: []string{AnnotationUptimeFilter}},
		{name: "uptime filter without operator", set: map[string]string{AnnotationUptimeFilter: `job`}, wantBad: []string{AnnotationUptimeFilter}},
		{name: "uptime filter unquoted value", set: map[string]string{AnnotationUptimeFilter: `job=api`}, wantBad: []string{AnnotationUptimeFilter}},
		{name: "uptime filter bad regexp", set: map[string]string{AnnotationUptimeFilter: `job=~"("`}, wantBad: []string{AnnotationUptimeFilter}},
		{name: "uptime filter bad label name", set: map[string]string{AnnotationUptimeFilter: `1job="a"`}, wantBad: []string{AnnotationUptimeFilter}},
		{name: "uptime filter trailing comma", set: map[string]string{AnnotationUptimeFilter: `job="a",`}, want: func(c *handler.Config) { c.Metadata.UptimeFilter = `job="a",` }},
		{name: "uptime filter single quotes and not-equal", set: map[string]string{AnnotationUptimeFilter: `job='a', env!="dev", zone!~"x.*"`}, want: func(c *handler.Config) { c.Metadata.UptimeFilter = `job='a', env!="dev", zone!~"x.*"` }},
		{name: "uptime filter escaped quote", set: map[string]string{AnnotationUptimeFilter: `job="a\"b"`}, want: func(c *handler.Config) { c.Metadata.UptimeFilter = `job="a\"b"` }},
		{name: "uptime filter injection", set: map[string]string{AnnotationUptimeFilter: `job="a"} or vector(1) or up{job="b"`}, wantBad: []string{AnnotationUptimeFilter}},

		// headers
		{name: "headers one", set: map[string]string{AnnotationHeaders: "X-Scope-OrgID=team-a"}, want: func(c *handler.Config) {
			c.Metadata.Headers = map[string]string{"X-Scope-Orgid": "team-a"}
		}},
		{name: "headers several with spaces and trailing comma", set: map[string]string{AnnotationHeaders: " X-Scope-OrgID = team-a , x-tenant=b=c,"}, want: func(c *handler.Config) {
			c.Metadata.Headers = map[string]string{"X-Scope-Orgid": "team-a", "X-Tenant": "b=c"}
		}},
		{name: "headers empty", set: map[string]string{AnnotationHeaders: ""}},
		{name: "headers with CR LF", set: map[string]string{AnnotationHeaders: "X-Scope-OrgID=a\r\nAuthorization: Bearer x"}, wantBad: []string{AnnotationHeaders}},
		{name: "headers with LF", set: map[string]string{AnnotationHeaders: "X-Scope-OrgID=a\nb"}, wantBad: []string{AnnotationHeaders}},
		{name: "headers with CR", set: map[string]string{AnnotationHeaders: "X-Scope-OrgID=a\rb"}, wantBad: []string{AnnotationHeaders}},
		{name: "headers with NUL", set: map[string]string{AnnotationHeaders: "X-Scope-OrgID=a\x00b"}, wantBad: []string{AnnotationHeaders}},
		{name: "headers bad name", set: map[string]string{AnnotationHeaders: "X Scope=a"}, wantBad: []string{AnnotationHeaders}},
		{name: "headers name with colon", set: map[string]string{AnnotationHeaders: "X-Scope:OrgID=a"}, wantBad: []string{AnnotationHeaders}},
		{name: "headers empty name", set: map[string]string{AnnotationHeaders: "=a"}, wantBad: []string{AnnotationHeaders}},
		{name: "headers Authorization refused", set: map[string]string{AnnotationHeaders: "Authorization=Bearer stolen"}, wantBad: []string{AnnotationHeaders}},
		{name: "headers authorization lower case refused", set: map[string]string{AnnotationHeaders: "X-Ok=1,authorization=Basic eA=="}, wantBad: []string{AnnotationHeaders}},
		{name: "headers Proxy-Authorization refused", set: map[string]string{AnnotationHeaders: "Proxy-Authorization=x"}, wantBad: []string{AnnotationHeaders}},
		{name: "headers Cookie refused", set: map[string]string{AnnotationHeaders: "Cookie=session=x"}, wantBad: []string{AnnotationHeaders}},
		{name: "headers Host refused", set: map[string]string{AnnotationHeaders: "Host=evil.example"}, wantBad: []string{AnnotationHeaders}},
		{name: "headers missing =", set: map[string]string{AnnotationHeaders: "X-Scope-OrgID"}, wantBad: []string{AnnotationHeaders}},
		{name: "headers names differing in case", set: map[string]string{AnnotationHeaders: "X-Tenant=a,x-tenant=b"}, wantBad: []string{AnnotationHeaders}},
		{name: "headers same name twice", set: map[string]string{AnnotationHeaders: "X-Tenant=a,X-Tenant=a"}, wantBad: []string{AnnotationHeaders}},
		{name: "headers not on --allowed-workload-header", set: map[string]string{AnnotationHeaders: "X-Tenant=a,X-Forwarded-User=admin"}, wantBad: []string{AnnotationHeaders}},
		{name: "headers set by the operator for the server", set: map[string]string{AnnotationHeaders: "x-operator=team-b"}, wantBad: []string{AnnotationHeaders}},
		{name: "headers set by the operator for another server", set: map[string]string{AnnotationServerAddress: allowedServer, AnnotationHeaders: "x-operator=team-b"}, want: func(c *handler.Config) {
			c.Metadata.ServerAddress = allowedServer
			c.Metadata.Headers = map[string]string{"X-Operator": "team-b"}
		}},
		{name: "headers colon instead of =", set: map[string]string{AnnotationHeaders: "X-Scope-OrgID: team-a"}, wantBad: []string{AnnotationHeaders}},

		// cooldown-period
		{name: "cooldown", set: map[string]string{AnnotationCooldownPeriod: "10m"}, want: func(c *handler.Config) { c.CooldownPeriod = 10 * time.Minute }},
		{name: "cooldown minimum", set: map[string]string{AnnotationCooldownPeriod: " 1s "}, want: func(c *handler.Config) { c.CooldownPeriod = time.Second }},
		{name: "cooldown compound", set: map[string]string{AnnotationCooldownPeriod: "1h30m"}, want: func(c *handler.Config) { c.CooldownPeriod = 90 * time.Minute }},
		{name: "cooldown unparsable", set: map[string]string{AnnotationCooldownPeriod: "five minutes"}, wantBad: []string{AnnotationCooldownPeriod}},
		{name: "cooldown without unit", set: map[string]string{AnnotationCooldownPeriod: "300"}, wantBad: []string{AnnotationCooldownPeriod}},
		{name: "cooldown days", set: map[string]string{AnnotationCooldownPeriod: "1d"}, wantBad: []string{AnnotationCooldownPeriod}},
		{name: "cooldown empty", set: map[string]string{AnnotationCooldownPeriod: ""}, wantBad: []string{AnnotationCooldownPeriod}},
		{name: "cooldown under 1s", set: map[string]string{AnnotationCooldownPeriod: "999ms"}, wantBad: []string{AnnotationCooldownPeriod}},
		{name: "cooldown zero", set: map[string]string{AnnotationCooldownPeriod: "0s"}, wantBad: []string{AnnotationCooldownPeriod}},
		{name: "cooldown negative", set: map[string]string{AnnotationCooldownPeriod: "-5m"}, wantBad: []string{AnnotationCooldownPeriod}},

		// polling-interval
		{name: "polling", set: map[string]string{AnnotationPollingInterval: "2s"}, want: func(c *handler.Config) { c.PollingPeriod = 2 * time.Second }},
		{name: "polling minimum", set: map[string]string{AnnotationPollingInterval: "1000ms"}, want: func(c *handler.Config) { c.PollingPeriod = time.Second }},
		{name: "polling unparsable", set: map[string]string{AnnotationPollingInterval: "often"}, wantBad: []string{AnnotationPollingInterval}},
		{name: "polling without unit", set: map[string]string{AnnotationPollingInterval: "30"}, wantBad: []string{AnnotationPollingInterval}},
		{name: "polling under 1s", set: map[string]string{AnnotationPollingInterval: "500ms"}, wantBad: []string{AnnotationPollingInterval}},
		{name: "polling zero", set: map[string]string{AnnotationPollingInterval: "0"}, wantBad: []string{AnnotationPollingInterval}},

		// min-replicas
		{name: "min replicas", set: map[string]string{AnnotationMinReplicas: "3"}, want: func(c *handler.Config) { c.MinReplicas = 3 }},
		{name: "min replicas spaces", set: map[string]string{AnnotationMinReplicas: " 2 "}, want: func(c *handler.Config) { c.MinReplicas = 2 }},
		{name: "min replicas largest int32", set: map[string]string{AnnotationMinReplicas: "2147483647"}, want: func(c *handler.Config) { c.MinReplicas = math.MaxInt32 }},
		{name: "min replicas 0", set: map[string]string{AnnotationMinReplicas: "0"}, wantBad: []string{AnnotationMinReplicas}},
		{name: "min replicas -1", set: map[string]string{AnnotationMinReplicas: "-1"}, wantBad: []string{AnnotationMinReplicas}},
		{name: "min replicas abc", set: map[string]string{AnnotationMinReplicas: "abc"}, wantBad: []string{AnnotationMinReplicas}},
		{name: "min replicas fraction", set: map[string]string{AnnotationMinReplicas: "1.5"}, wantBad: []string{AnnotationMinReplicas}},
		{name: "min replicas empty", set: map[string]string{AnnotationMinReplicas: ""}, wantBad: []string{AnnotationMinReplicas}},
		{name: "min replicas over int32", set: map[string]string{AnnotationMinReplicas: "2147483648"}, wantBad: []string{AnnotationMinReplicas}},

		// paused
		{name: "paused true", set: map[string]string{AnnotationPaused: "true"}, want: func(c *handler.Config) { c.Paused = true }},
		{name: "paused false", set: map[string]string{AnnotationPaused: "false"}},
		{name: "paused TRUE", set: map[string]string{AnnotationPaused: " TRUE "}, want: func(c *handler.Config) { c.Paused = true }},
		{name: "paused yes", set: map[string]string{AnnotationPaused: "yes"}, wantBad: []string{AnnotationPaused}},
		{name: "paused on", set: map[string]string{AnnotationPaused: "on"}, wantBad: []string{AnnotationPaused}},
		{name: "paused empty", set: map[string]string{AnnotationPaused: ""}, wantBad: []string{AnnotationPaused}},

		// every optional annotation at once
		{name: "everything set", set: map[string]string{
			AnnotationServerAddress:   allowedServer,
			AnnotationUptimeFilter:    `job="thanos"`,
			AnnotationHeaders:         "X-Scope-OrgID=team-a",
			AnnotationCooldownPeriod:  "15m",
			AnnotationPollingInterval: "10s",
			AnnotationMinReplicas:     "2",
			AnnotationPaused:          "false",
			"zeroscaler.io/unknown":   "ignored",
			"example.com/other":       "ignored",
		}, want: func(c *handler.Config) {
			c.Metadata.ServerAddress = allowedServer
			c.Metadata.UptimeFilter = `job="thanos"`
			c.Metadata.Headers = map[string]string{"X-Scope-Orgid": "team-a"}
			c.CooldownPeriod = 15 * time.Minute
			c.PollingPeriod = 10 * time.Second
			c.MinReplicas = 2
		}},

		// several wrong at once: all are named
		{name: "several bad", set: map[string]string{
			AnnotationThreshold:       "lots",
			AnnotationServerAddress:   "http://attacker.example",
			AnnotationHeaders:         "Authorization=Bearer x",
			AnnotationCooldownPeriod:  "0s",
			AnnotationPollingInterval: "fast",
			AnnotationMinReplicas:     "0",
			AnnotationPaused:          "maybe",
			AnnotationUptimeFilter:    "{}",
		}, wantBad: []string{
			AnnotationThreshold, AnnotationServerAddress, AnnotationUptimeFilter, AnnotationHeaders,
			AnnotationCooldownPeriod, AnnotationPollingInterval, AnnotationMinReplicas, AnnotationPaused,
		}},
		{name: "no annotations at all", unset: []string{AnnotationQuery, AnnotationThreshold}, wantBad: []string{AnnotationQuery, AnnotationThreshold}},
		{name: "bad among good", set: map[string]string{AnnotationCooldownPeriod: "10m", AnnotationMinReplicas: "-1", AnnotationPaused: "true"}, wantBad: []string{AnnotationMinReplicas}},
	}
	d := testDefaults(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			annotations := map[string]string{AnnotationQuery: baseQuery, AnnotationThreshold: "0.1"}
			for k, v := range tt.set {
				annotations[k] = v
			}
			for _, k := range tt.unset {
				delete(annotations, k)
			}
			given := maps.Clone(annotations)

			cfg, err := Parse(annotations, d)

			if !reflect.DeepEqual(annotations, given) {
				t.Errorf("Parse changed its input: %q, was %q", annotations, given)
			}
			if len(tt.wantBad) == 0 {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				want := baseConfig()
				if tt.want != nil {
					tt.want(&want)
				}
				if !reflect.DeepEqual(cfg, want) {
					t.Errorf("Parse =\n%+v\nwant\n%+v", cfg, want)
				}
				return
			}
			checkBad(t, annotations, cfg, err, tt.wantBad)
		})
	}
}

// checkBad asserts that err names exactly the wanted annotations, each as a
// *FieldError with its value, and that cfg is only Mode Invalid.
func checkBad(t *testing.T, annotations map[string]string, cfg handler.Config, err error, wantBad []string) {
	t.Helper()
	if err == nil {
		t.Fatalf("Parse accepted %q: %+v", annotations, cfg)
	}
	if !reflect.DeepEqual(cfg, handler.Config{Mode: handler.Invalid}) {
		t.Errorf("config with an error = %+v, want only Mode Invalid", cfg)
	}
	var first *FieldError
	if !errors.As(err, &first) {
		t.Fatalf("error %v (%T) is not a *FieldError", err, err)
	}
	if first.Annotation != wantBad[0] {
		t.Errorf("first FieldError names %s, want %s", first.Annotation, wantBad[0])
	}
	var got []string
	for _, fe := range fieldErrors(t, err) {
		got = append(got, fe.Annotation)
		if fe.Value != annotations[fe.Annotation] {
			t.Errorf("FieldError for %s has value %q, want %q", fe.Annotation, fe.Value, annotations[fe.Annotation])
		}
		if fe.Reason == "" {
			t.Errorf("FieldError for %s has no reason", fe.Annotation)
		}
	}
	if !slices.Equal(got, wantBad) {
		t.Errorf("annotations named %q, want %q", got, wantBad)
	}
	msg := err.Error()
	for _, a := range wantBad {
		if !strings.Contains(msg, a) {
			t.Errorf("message %q does not name %s", msg, a)
		}
	}
	if strings.ContainsAny(msg, "\r\n") {
		t.Errorf("message %q is not one line", msg)
	}
}

// fieldErrors flattens err into its *FieldErrors, failing on anything else.
func fieldErrors(t testing.TB, err error) []*FieldError {
	t.Helper()
	var fe *FieldError
	if errors.As(err, &fe) && err == error(fe) { //nolint:errorlint // err itself, not one it wraps
		return []*FieldError{fe}
	}
	multi, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("error %v (%T) is neither a *FieldError nor a list of them", err, err)
	}
	var out []*FieldError
	for _, e := range multi.Unwrap() {
		out = append(out, fieldErrors(t, e)...)
	}
	return out
}

// Parse takes its defaults from Defaults, not from constants.
func TestParseOtherDefaults(t *testing.T) {
	d := testDefaults(t)
	d.UptimeFilter = `job="kube-prometheus"`
	d.CooldownPeriod = time.Hour
	d.PollingInterval = 7 * time.Second
	cfg, err := Parse(map[string]string{AnnotationQuery: "up", AnnotationThreshold: "1"}, d)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Metadata.UptimeFilter != d.UptimeFilter || cfg.CooldownPeriod != time.Hour || cfg.PollingPeriod != 7*time.Second {
		t.Errorf("defaults not applied: %+v", cfg)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(baseQuery, "0.1", "", "", "", "", "", "", "", uint16(0b11))
	f.Add("up", "1", defaultServer+"/", `job="api"`, "X-Scope-OrgID=a,X-B=c", "5m", "30s", "2", "true", uint16(0x1ff))
	f.Add("sum(x)", "NaN", "http://u:p@x", "{}", "Authorization=x", "0s", "500ms", "0", "yes", uint16(0x1ff))
	f.Add(" ", "1e400", "ftp://x", "a\nb", "X=a\r\nB: c", "1d", "-1s", "-1", "", uint16(0x1ff))
	f.Add("q", "-0", allowedServer, "", "=,", "1s", "1s", "2147483647", "F", uint16(0x1ff))
	f.Add("up", "1", "", "", "", "999ms", "1s", "1", "false", uint16(483))
	f.Add("q\x00", "0x1p-2", "http://[::1]:9090", `a="}"`, "Cookie=a", "9223372036854775807ns", "1h", "1.0", "1", uint16(0x1ff))
	f.Add("up", "1e-400", "", `job="x`, "X-Tenant=a,x-tenant=b", "1s", "1s", "1", "false", uint16(0x1ff))
	f.Add("up", "4e-320", "", `job=~"("`, "X-Forwarded-User=admin", "1s", "1s", "1", "false", uint16(0x1ff))
	f.Add("up", "-0x1p-1074", "", "", "X-Operator=b", "1s", "1s", "1", "false", uint16(0x1ff))
	f.Add("up", "0.0e-999", "", `job="a",env!~"dev|test"`, "X-Scope-OrgID=a", "1s", "1s", "1", "false", uint16(0x1ff))
	f.Add("up", "2.2250738585072014e-308", "", `__name__="x"`, "X-B=1", "1s", "1s", "1", "false", uint16(0x1ff))

	d := testDefaults(f)
	names := []string{
		AnnotationQuery, AnnotationThreshold, AnnotationServerAddress, AnnotationUptimeFilter, AnnotationHeaders,
		AnnotationCooldownPeriod, AnnotationPollingInterval, AnnotationMinReplicas, AnnotationPaused,
	}
	allowed := []string{"", defaultServer, allowedServer}
	f.Fuzz(func(t *testing.T, query, threshold, server, filter, headers, cooldown, polling, minReplicas, paused string, present uint16) {
		values := []string{query, threshold, server, filter, headers, cooldown, polling, minReplicas, paused}
		annotations := map[string]string{}
		for i, name := range names {
			if present&(1<<i) != 0 {
				annotations[name] = values[i]
			}
		}
		cfg, err := Parse(annotations, d)
		if err != nil {
			if !reflect.DeepEqual(cfg, handler.Config{Mode: handler.Invalid}) {
				t.Errorf("config with an error = %+v, want only Mode Invalid", cfg)
			}
			fes := fieldErrors(t, err)
			if len(fes) == 0 {
				t.Fatalf("error %v names no annotation", err)
			}
			for _, fe := range fes {
				if !slices.Contains(names, fe.Annotation) {
					t.Errorf("FieldError names unknown annotation %q", fe.Annotation)
				}
			}
			if strings.ContainsAny(err.Error(), "\r\n") {
				t.Errorf("message %q is not one line", err.Error())
			}
			return
		}
		if cfg.Mode != handler.Managed {
			t.Errorf("Mode = %v, want Managed", cfg.Mode)
		}
		if cfg.CooldownPeriod < time.Second || cfg.PollingPeriod < time.Second {
			t.Errorf("periods %v, %v under 1s", cfg.CooldownPeriod, cfg.PollingPeriod)
		}
		if cfg.MinReplicas < 1 {
			t.Errorf("MinReplicas = %d", cfg.MinReplicas)
		}
		if th := cfg.Metadata.Threshold; math.IsNaN(th) || math.IsInf(th, 0) || (th != 0 && math.Abs(th) < 0x1p-1022) {
			t.Errorf("threshold %v is not finite or is subnormal", th)
		}
		if cfg.Metadata.Threshold == 0 && strings.ContainsAny(strings.Split(strings.ToLower(threshold), "e")[0], "123456789") && !strings.Contains(strings.ToLower(threshold), "x") {
			t.Errorf("threshold %q read as 0", threshold)
		}
		if q := cfg.Metadata.Query; q == "" || q != strings.TrimSpace(q) {
			t.Errorf("query %q is empty or untrimmed", q)
		}
		if !slices.Contains(allowed, cfg.Metadata.ServerAddress) {
			t.Errorf("server address %q is not allowed", cfg.Metadata.ServerAddress)
		}
		if strings.ContainsAny(cfg.Metadata.UptimeFilter, "{}\r\n") {
			t.Errorf("uptime filter %q has braces or line breaks", cfg.Metadata.UptimeFilter)
		}
		if _, err := parser.NewParser(parser.Options{}).ParseExpr(scaler.HealthQuery(cfg.Metadata.UptimeFilter, cfg.CooldownPeriod)); err != nil {
			t.Errorf("health query for filter %q is not PromQL: %v", cfg.Metadata.UptimeFilter, err)
		}
		for name, value := range cfg.Metadata.Headers {
			if !httpguts.ValidHeaderFieldName(name) || name != http.CanonicalHeaderKey(name) {
				t.Errorf("header name %q is not a canonical token", name)
			}
			if strings.ContainsAny(value, "\r\n\x00") || !httpguts.ValidHeaderFieldValue(value) {
				t.Errorf("header %s value %q has control characters", name, value)
			}
			switch name {
			case "Authorization", "Proxy-Authorization", "Cookie", "Host":
				t.Errorf("header %s accepted", name)
			}
		}
	})
}
