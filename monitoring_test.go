package main

// Tests of what an on-call person reads: the alert rules, the Grafana
// dashboard and /metrics. They check that every metric the rules and the
// dashboard use is one the daemon exports, that /metrics passes
// `promtool check metrics`, that the PrometheusRule is the rules file, and
// that every alert has a runbook in the README and promtool tests that see
// it fire and stay silent. The rules' behaviour itself is tested by
// `make test-rules` (promtool test rules).

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/zap"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite "+prometheusRulePath+" from "+rulesPath)

const (
	rulesPath          = "deploy/prometheus/rules.yaml"
	rulesTestPath      = "deploy/prometheus/rules_test.yaml"
	prometheusRulePath = "deploy/prometheus/prometheusrule.yaml"
	dashboardPath      = "deploy/grafana/zeroscaler.json"
	// runbookBase is where every alert's runbook_url points, followed by
	// the anchor of the alert's heading in the README.
	runbookBase = "https://github.com/zeroscaler/zeroscaler/blob/main/README.md#"
)

// exposition returns /metrics as the daemon serves it: the registry built
// by newMetrics, served by serveMetrics' handler.
func exposition(t *testing.T) []byte {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := newMetrics(reg)
	// Series labelled by server appear with the first query sent to that
	// server, which the daemon sends within a polling interval of start.
	m.ObserveQuery("http://127.0.0.1:9090", "ok", 20*time.Millisecond)
	srv, err := serveMetrics("", false, reg, func() bool { return true }, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	srv.Handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", rec.Code, rec.Body)
	}
	return rec.Body.Bytes()
}

// exportedNames returns every series name in an exposition: metric names,
// and a histogram's or summary's _bucket, _sum and _count series.
func exportedNames(t *testing.T, text []byte) map[string]bool {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	names := map[string]bool{}
	for name, f := range families {
		names[name] = true
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM:
			names[name+"_bucket"], names[name+"_sum"], names[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			names[name+"_sum"], names[name+"_count"] = true, true
		}
	}
	return names
}

// promtool finds promtool on PATH or in bin/.
func promtool(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("promtool"); err == nil {
		return p
	}
	if p, err := filepath.Abs(filepath.Join("bin", "promtool")); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatal("promtool not found on PATH or in bin/: install Debian's prometheus package (make prometheus), which ships it")
	return ""
}

func runPromtool(t *testing.T, stdin []byte, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(promtool(t), args...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestMetricsPassPromtoolCheck(t *testing.T) {
	if out, err := runPromtool(t, exposition(t), "check", "metrics"); err != nil {
		t.Errorf("promtool check metrics on /metrics: %v\n%s", err, out)
	}
	// promtool must be able to refuse: a counter without _total.
	bad := []byte("# HELP zeroscaler_sleeps Workloads put to sleep.\n# TYPE zeroscaler_sleeps counter\nzeroscaler_sleeps 1\n")
	if out, err := runPromtool(t, bad, "check", "metrics"); err == nil {
		t.Errorf("promtool check metrics accepted a counter without _total:\n%s", out)
	}
}

// Prometheus rules files, as far as these tests read them.
type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []rule `json:"rules"`
	} `json:"groups"`
}

type rule struct {
	Alert       string            `json:"alert"`
	Record      string            `json:"record"`
	Expr        string            `json:"expr"`
	For         string            `json:"for"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

func readRules(t *testing.T) []rule {
	t.Helper()
	data, err := os.ReadFile(rulesPath)
	if err != nil {
		t.Fatal(err)
	}
	var f ruleFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		t.Fatalf("%s: %v", rulesPath, err)
	}
	var out []rule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	if len(out) == 0 {
		t.Fatalf("%s holds no rules", rulesPath)
	}
	return out
}

// Grafana dashboard JSON, as far as these tests read it.
type dashboard struct {
	Panels     []dashPanel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource *datasourceRef  `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type dashPanel struct {
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource *datasourceRef `json:"datasource"`
	Targets    []struct {
		Expr       string         `json:"expr"`
		Datasource *datasourceRef `json:"datasource"`
	} `json:"targets"`
	Panels []dashPanel `json:"panels"` // a collapsed row's
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	data, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	return d
}

// panels returns every panel, rows' included.
func (d dashboard) panels() []dashPanel {
	var out []dashPanel
	var walk func([]dashPanel)
	walk = func(ps []dashPanel) {
		for _, p := range ps {
			out = append(out, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// queries returns every PromQL query of the dashboard, by where it is:
// panel targets, and the metric of label_values() variables.
func (d dashboard) queries(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, p := range d.panels() {
		for i, target := range p.Targets {
			if target.Expr != "" {
				out[fmt.Sprintf("panel %q target %d", p.Title, i)] = target.Expr
			}
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			if err := json.Unmarshal(v.Query, &q.Query); err != nil {
				t.Fatalf("variable %s: query is neither an object nor a string", v.Name)
			}
		}
		m := labelValues.FindStringSubmatch(q.Query)
		if m == nil {
			t.Fatalf("variable %s: %q is not label_values(QUERY, LABEL)", v.Name, q.Query)
		}
		out["variable "+v.Name] = m[1]
	}
	return out
}

var labelValues = regexp.MustCompile(`^\s*label_values\((.+),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$`)

// Every metric the dashboard and the alerts use is one the daemon exports.
func TestDashboardAndRulesUseExportedMetrics(t *testing.T) {
	exported := exportedNames(t, exposition(t))
	queries := readDashboard(t).queries(t)
	for _, r := range readRules(t) {
		queries["rule "+r.Alert+r.Record] = r.Expr
	}
	used := map[string]bool{}
	for where, q := range queries {
		names := metricNames(q)
		if len(names) == 0 {
			t.Errorf("%s: no metric name found in %q", where, q)
		}
		for _, n := range names {
			used[n] = true
			if !exported[n] {
				t.Errorf("%s uses %s, which the daemon does not export", where, n)
			}
		}
	}
	// The list: each of these is on the dashboard or in an alert.
	for _, n := range []string{
		"zeroscaler_workloads", "zeroscaler_replicas_asleep", "zeroscaler_sleeps_total",
		"zeroscaler_wakes_total", "zeroscaler_prometheus_query_duration_seconds_bucket",
		"zeroscaler_prometheus_queries_total", "zeroscaler_loop_lag_seconds_bucket",
		"zeroscaler_leader", "zeroscaler_metric_unavailable", "zeroscaler_scale_operations_total",
	} {
		if !used[n] {
			t.Errorf("neither the dashboard nor an alert uses %s", n)
		}
	}
}

// promqlKeywords are identifiers in PromQL that are not metric names,
// aggregation operators included: their label list may come between the
// name and its parenthesis (sum by (job) (...)).
var promqlKeywords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"bool": true, "and": true, "or": true, "unless": true, "offset": true, "inf": true, "nan": true, "atan2": true,
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true, "limitk": true, "limit_ratio": true,
}

// labelLists are keywords followed by a parenthesised list of label names.
var labelLists = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}

// metricNames returns the metric names a PromQL expression selects, in
// order of appearance. It skips strings, label matchers, ranges, label
// lists, function names, numbers, keywords and Grafana's $variables.
func metricNames(expr string) []string {
	var out []string
	s := expr
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			i = skipString(s, i)
		case c == '{':
			i = skipTo(s, i, '}')
		case c == '[':
			i = skipTo(s, i, ']')
		case c == '$':
			i++
			for i < len(s) && (isIdent(s[i]) || s[i] == '{' || s[i] == '}') {
				i++
			}
		case c >= '0' && c <= '9' || c == '.':
			for i < len(s) && (isIdent(s[i]) || s[i] == '.') {
				i++
			}
		case isIdent(c):
			j := i
			for j < len(s) && isIdent(s[j]) {
				j++
			}
			word, next := s[i:j], nextNonSpace(s, j)
			i = j
			switch {
			case labelLists[word] && next < len(s) && s[next] == '(':
				i = skipTo(s, next, ')')
			case promqlKeywords[word]:
			case next < len(s) && s[next] == '(':
				// a function
			default:
				out = append(out, word)
			}
		default:
			i++
		}
	}
	return out
}

func isIdent(c byte) bool {
	return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func nextNonSpace(s string, i int) int {
	for i < len(s) && strings.ContainsRune(" \t\n", rune(s[i])) {
		i++
	}
	return i
}

// skipString returns the index after the string literal starting at i.
func skipString(s string, i int) int {
	quote := s[i]
	for i++; i < len(s); i++ {
		switch {
		case s[i] == '\\' && quote != '`':
			i++
		case s[i] == quote:
			return i + 1
		}
	}
	return i
}

// skipTo returns the index after the close that ends the bracket at i,
// stepping over string literals.
func skipTo(s string, i int, close byte) int {
	open := s[i]
	depth := 0
	for i < len(s) {
		switch s[i] {
		case '"', '\'', '`':
			i = skipString(s, i)
			continue
		case open:
			depth++
		case close:
			depth--
			if depth == 0 {
				return i + 1
			}
		}
		i++
	}
	return i
}

func TestMetricNames(t *testing.T) {
	tests := []struct {
		expr string
		want []string
	}{
		{`up`, []string{"up"}},
		{`sum by (job, namespace) (rate(foo_total{a="b",c=~"x|y"}[5m])) > 0`, []string{"foo_total"}},
		{`sum(rate(a_total[5m])) without (pod) / on (job) group_left (x) b`, []string{"a_total", "b"}},
		{`histogram_quantile(0.99, sum by (le) (rate(lag_bucket{job=~"$job"}[$__rate_interval])))`, []string{"lag_bucket"}},
		{`sum_over_time(sum(asleep{job=~"$job"})[$__range:1m]) / 60 * $__range_s`, []string{"asleep"}},
		{`(sum by (job) (leader) == 0) or absent(leader)`, []string{"leader", "leader"}},
		{`label_replace(x, "dst", "$1", "src", "(.*)") and bool y offset 5m`, []string{"x", "y"}},
		{`rate(m{l="a}b[c"}[1h]) * 1e3 + 0x1f`, []string{"m"}},
		{`job:requests:rate5m{job="a\"b"}`, []string{"job:requests:rate5m"}},
		{`vector(1)`, nil},
	}
	for _, tc := range tests {
		if got := metricNames(tc.expr); !slices.Equal(got, tc.want) {
			t.Errorf("metricNames(%q) = %q, want %q", tc.expr, got, tc.want)
		}
	}
}

// Every dashboard query is valid PromQL once Grafana's variables are
// filled in: promtool checks them as recording rules.
func TestDashboardQueriesParse(t *testing.T) {
	vars := strings.NewReplacer("$__rate_interval", "1m", "$__range_s", "86400", "$__range", "1d", "$__interval", "1m", "$job", ".*")
	var rules []map[string]string
	queries := readDashboard(t).queries(t)
	for _, where := range slices.Sorted(maps.Keys(queries)) {
		rules = append(rules, map[string]string{"record": fmt.Sprintf("dashboard:query%d", len(rules)), "expr": vars.Replace(queries[where])})
	}
	data, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dashboard-rules.yaml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := runPromtool(t, nil, "check", "rules", path); err != nil {
		t.Errorf("promtool check rules on the dashboard's queries: %v\n%s\n%s", err, out, data)
	}
}

func TestDashboardUsesDatasourceVariable(t *testing.T) {
	d := readDashboard(t)
	found := false
	for _, v := range d.Templating.List {
		if v.Name == "datasource" && v.Type == "datasource" {
			found = true
		}
		if v.Type == "query" && (v.Datasource == nil || v.Datasource.UID != "${datasource}") {
			t.Errorf("variable %s does not use ${datasource}", v.Name)
		}
	}
	if !found {
		t.Error("the dashboard has no datasource variable")
	}
	for _, p := range d.panels() {
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q does not use ${datasource}", p.Title)
		}
		for i, target := range p.Targets {
			if target.Datasource != nil && target.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q target %d names a data source of its own", p.Title, i)
			}
		}
	}
}

// prometheusRule renders rules.yaml as a PrometheusRule: a header, then the
// file's groups under spec, comments and formatting kept.
func prometheusRule(rules []byte) []byte {
	var b bytes.Buffer
	b.WriteString(`# Generated from rules.yaml by ` + "`go test . -run TestPrometheusRuleIsRulesFile -update`" + `;
# edit rules.yaml, not this file. Add the labels your Prometheus Operator's
# ruleSelector wants (kube-prometheus-stack: release: <its release name>).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: zeroscaler
  namespace: zeroscaler-system
  labels:
    app.kubernetes.io/name: zeroscaler
spec:
`)
	lines := strings.Split(strings.TrimRight(string(rules), "\n"), "\n")
	// The file's leading comment is about the file; skip it.
	for len(lines) > 0 && (strings.HasPrefix(lines[0], "#") || strings.TrimSpace(lines[0]) == "") {
		lines = lines[1:]
	}
	for _, l := range lines {
		if l != "" {
			b.WriteString("  ")
		}
		b.WriteString(l + "\n")
	}
	return b.Bytes()
}

func TestPrometheusRuleIsRulesFile(t *testing.T) {
	rules, err := os.ReadFile(rulesPath)
	if err != nil {
		t.Fatal(err)
	}
	want := prometheusRule(rules)
	if *update {
		if err := os.WriteFile(prometheusRulePath, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(prometheusRulePath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is not %s rendered: run go test . -run TestPrometheusRuleIsRulesFile -update", prometheusRulePath, rulesPath)
	}
	// The rendering keeps the rules: spec.groups is the file's groups.
	var file, crd map[string]any
	if err := yaml.Unmarshal(rules, &file); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(got, &crd); err != nil {
		t.Fatal(err)
	}
	spec, _ := crd["spec"].(map[string]any)
	if !reflect.DeepEqual(spec["groups"], file["groups"]) || file["groups"] == nil {
		t.Errorf("%s spec.groups differ from %s groups", prometheusRulePath, rulesPath)
	}
}

// githubAnchor is the anchor GitHub gives a Markdown heading.
func githubAnchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
		}
	}
	return b.String()
}

// Every alert has a severity, a summary, a description, a runbook_url
// that is a heading of the README, and promtool tests that see it fire and
// see it stay silent.
func TestAlertsHaveRunbooksAndTests(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, l := range strings.Split(string(readme), "\n") {
		if h, ok := strings.CutPrefix(l, "#"); ok {
			anchors[githubAnchor(strings.TrimLeft(h, "#"))] = true
		}
	}
	fires, silent := promtoolCases(t)
	for _, r := range readRules(t) {
		if r.Alert == "" {
			continue
		}
		if s := r.Labels["severity"]; s != "warning" && s != "critical" {
			t.Errorf("%s: severity %q, want warning or critical", r.Alert, s)
		}
		for _, a := range []string{"summary", "description"} {
			if strings.TrimSpace(r.Annotations[a]) == "" {
				t.Errorf("%s has no %s", r.Alert, a)
			}
		}
		anchor, ok := strings.CutPrefix(r.Annotations["runbook_url"], runbookBase)
		switch {
		case !ok:
			t.Errorf("%s: runbook_url %q does not start with %s", r.Alert, r.Annotations["runbook_url"], runbookBase)
		case !anchors[anchor]:
			t.Errorf("%s: runbook_url anchor #%s is no heading of README.md", r.Alert, anchor)
		}
		if !fires[r.Alert] {
			t.Errorf("%s: no test in %s sees it fire", r.Alert, rulesTestPath)
		}
		if !silent[r.Alert] {
			t.Errorf("%s: no test in %s sees it stay silent", r.Alert, rulesTestPath)
		}
	}
}

// promtoolCases reads rules_test.yaml: which alerts some test expects to
// fire, and which some test expects to stay silent.
func promtoolCases(t *testing.T) (fires, silent map[string]bool) {
	t.Helper()
	data, err := os.ReadFile(rulesTestPath)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `json:"alertname"`
				ExpAlerts []any  `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(data, &f); err != nil {
		t.Fatalf("%s: %v", rulesTestPath, err)
	}
	fires, silent = map[string]bool{}, map[string]bool{}
	for _, tc := range f.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				silent[a.Alertname] = true
			}
		}
	}
	return fires, silent
}
