package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/klog/v2"
)

// Every problem before the daemon runs is one plain line on stderr and exit
// code 1 (issue 13 item 3), naming what is wrong.
func TestPrepareFailsInOneLine(t *testing.T) {
	dir := t.TempDir()
	kubeconfig := writeTestFile(t, dir, "kubeconfig", testKubeconfig)
	badYAML := writeTestFile(t, dir, "bad.yaml", "servers:\n- url: http://127.0.0.1:9090\n  bearer_tokn: x\n  other: [\n")
	unknownField := writeTestFile(t, dir, "unknown.yaml", "servers:\n- url: http://127.0.0.1:9090\n  bearer_tokn: x\n")
	caseTwice := writeTestFile(t, dir, "twice.yaml", "servers:\n- url: http://127.0.0.1:9090\n  http_headers:\n    X-Scope-OrgID: {values: [a]}\n    x-scope-orgid: {values: [b]}\n")
	tenant := func(name, block string) string {
		return writeTestFile(t, dir, name, "servers:\n- url: http://127.0.0.1:9090\n  tenant:\n    "+strings.ReplaceAll(block, "\n", "\n    ")+"\n")
	}
	tenantNoHeader := tenant("tenant-noheader.yaml", "header: \"\"\nfrom_namespace: true")
	tenantBadHeader := tenant("tenant-badheader.yaml", "header: X Scope\nfrom_namespace: true")
	tenantBadValue := tenant("tenant-badvalue.yaml", "header: X-Scope-OrgID\nnamespaces: {shop: \"a\\r\\nb\"}")
	tests := []struct {
		name string
		args []string
		want []string // in the one line
	}{
		{"missing kubeconfig", []string{"--kubeconfig", filepath.Join(dir, "nope")}, []string{"kubeconfig", "nope"}},
		{"unknown flag", []string{"--kubeconfig", kubeconfig, "--no-such-flag"}, []string{"--no-such-flag"}},
		{"flag without value", []string{"--kubeconfig", kubeconfig, "--default-cooldown-period"}, []string{"default-cooldown-period"}},
		{"header name not a token", []string{"--kubeconfig", kubeconfig, "--prometheus-header", "X Bad=v"}, []string{"--prometheus-header", "X Bad"}},
		{"header without name", []string{"--kubeconfig", kubeconfig, "--prometheus-header", "=v"}, []string{"--prometheus-header"}},
		{"header without =", []string{"--kubeconfig", kubeconfig, "--prometheus-header", "X-A"}, []string{"--prometheus-header"}},
		{"header value with CR LF", []string{"--kubeconfig", kubeconfig, "--prometheus-header", "X-A=a\r\nX-B: b"}, []string{"--prometheus-header"}},
		{"header value with CR", []string{"--kubeconfig", kubeconfig, "--prometheus-header", "X-A=a\rb"}, []string{"--prometheus-header", "X-A"}},
		{"header value with LF", []string{"--kubeconfig", kubeconfig, "--prometheus-header", "X-A=a\nb"}, []string{"--prometheus-header"}},
		{"header value with NUL", []string{"--kubeconfig", kubeconfig, "--prometheus-header", "X-A=a\x00b"}, []string{"--prometheus-header"}},
		{"header twice, other case", []string{"--kubeconfig", kubeconfig, "--prometheus-header", "X-A=1", "--prometheus-header", "x-a=2"}, []string{"--prometheus-header", "twice"}},
		{"workload header carrying credentials", []string{"--kubeconfig", kubeconfig, "--allowed-workload-header", "authorization"}, []string{"--allowed-workload-header", "Authorization"}},
		{"workload header not a token", []string{"--kubeconfig", kubeconfig, "--allowed-workload-header", "X:A"}, []string{"--allowed-workload-header"}},
		{"bad uptime filter", []string{"--kubeconfig", kubeconfig, "--uptime-filter", `job="x`}, []string{"--uptime-filter"}},
		{"missing config file", []string{"--kubeconfig", kubeconfig, "--prometheus-config", filepath.Join(dir, "none.yaml")}, []string{"none.yaml"}},
		{"config file not YAML", []string{"--kubeconfig", kubeconfig, "--prometheus-config", badYAML}, []string{"bad.yaml"}},
		{"config file unknown field", []string{"--kubeconfig", kubeconfig, "--prometheus-config", unknownField}, []string{"unknown.yaml", "bearer_tokn"}},
		{"config file header twice", []string{"--kubeconfig", kubeconfig, "--prometheus-config", caseTwice}, []string{"twice.yaml", "X-Scope-Orgid"}},
		{"tenant header empty", []string{"--kubeconfig", kubeconfig, "--prometheus-config", tenantNoHeader}, []string{"tenant-noheader.yaml", "servers[0]", "tenant.header"}},
		{"tenant header not a token", []string{"--kubeconfig", kubeconfig, "--prometheus-config", tenantBadHeader}, []string{"tenant-badheader.yaml", "tenant.header", "X Scope"}},
		{"tenant not a header value", []string{"--kubeconfig", kubeconfig, "--prometheus-config", tenantBadValue}, []string{"tenant-badvalue.yaml", "tenant.namespaces.shop"}},
		{"tenant header also set by flag", []string{"--kubeconfig", kubeconfig, "--prometheus-config", tenant("tenant-flag.yaml", "header: X-Scope-OrgID\nfrom_namespace: true"), "--prometheus-address", "http://127.0.0.1:9090", "--prometheus-header", "x-scope-orgid=ops"}, []string{"--prometheus-header", "X-Scope-Orgid"}},
		{"polling under the minimum period", []string{"--kubeconfig", kubeconfig, "--default-polling-interval", "999ms"}, []string{"--default-polling-interval", "at least 1s", "999ms"}},
		{"several bad flags", []string{"--kubeconfig", kubeconfig, "--default-cooldown-period", "0s", "--log-format", "xml", "--log-level", "loud"}, []string{"--default-cooldown-period", "--log-format", "--log-level"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			o, _, code := prepare(tt.args, &stdout, &stderr)
			if o != nil || code != 1 {
				t.Fatalf("prepare = %v, exit %d; want nil, exit 1", o != nil, code)
			}
			line := stderr.String()
			if strings.Count(line, "\n") != 1 || !strings.HasSuffix(line, "\n") || !strings.HasPrefix(line, "zeroscaler: ") {
				t.Errorf("stderr is not one line: %q", line)
			}
			for _, w := range tt.want {
				if !strings.Contains(line, w) {
					t.Errorf("stderr %q does not name %q", line, w)
				}
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout: %q", stdout.String())
			}
		})
	}
}

func TestPrepareHelpAndVersion(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"--version"}} {
		var stdout, stderr bytes.Buffer
		o, _, code := prepare(args, &stdout, &stderr)
		if o != nil || code != 0 || stdout.Len() == 0 || stderr.Len() != 0 {
			t.Errorf("%v: exit %d, stdout %d bytes, stderr %q", args, code, stdout.Len(), stderr.String())
		}
	}
}

// With only --prometheus-config, the default server is the file's first
// (issue 9 item 6); --prometheus-address, when given, wins.
func TestDefaultServer(t *testing.T) {
	dir := t.TempDir()
	kubeconfig := writeTestFile(t, dir, "kubeconfig", testKubeconfig)
	cfg := writeTestFile(t, dir, "p.yaml", "servers:\n- url: http://first.example:9090/\n- url: http://second.example:9090\n")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no flag", nil, "http://localhost:9090"},
		{"flag", []string{"--prometheus-address", "http://other.example:9090"}, "http://other.example:9090"},
		{"config file only", []string{"--prometheus-config", cfg}, "http://first.example:9090"},
		{"config file and flag", []string{"--prometheus-config", cfg, "--prometheus-address", "http://second.example:9090"}, "http://second.example:9090"},
		{"config file and the flag's default given", []string{"--prometheus-config", cfg, "--prometheus-address", "http://localhost:9090"}, "http://localhost:9090"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			o, servers, code := prepare(append([]string{"--kubeconfig", kubeconfig}, tt.args...), &stdout, &stderr)
			if o == nil || code != 0 {
				t.Fatalf("prepare failed: %s", stderr.String())
			}
			if got := servers.DefaultAddress(); got != tt.want {
				t.Errorf("default server %s, want %s", got, tt.want)
			}
		})
	}
}

const testKubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "https://127.0.0.1:6443"}
users:
- name: me
  user: {token: t}
contexts:
- name: local
  context: {cluster: local, user: me}
current-context: local
`

func writeTestFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestClientGoLogsThroughZap: what client-go logs through klog (an Event the
// API server refused, a reflector's error) reaches the daemon's logger as
// one structured line at its level, without a stack trace, also in the
// console format (whose development mode would panic on a malformed call).
func TestClientGoLogsThroughZap(t *testing.T) {
	for _, format := range []string{"json", "console"} {
		t.Run(format, func(t *testing.T) { testClientGoLogsThroughZap(t, format) })
	}
}

func testClientGoLogsThroughZap(t *testing.T, format string) {
	core, logs := observer.New(zapcore.InfoLevel)
	log, err := newLogger("info", format, zap.WrapCore(func(zapcore.Core) zapcore.Core { return core }))
	if err != nil {
		t.Fatal(err)
	}
	routeKlog(log)
	t.Cleanup(klog.ClearLogger)

	klog.ErrorS(errors.New("context deadline exceeded"), "Server rejected event (will not retry!)", "reason", "ScaledFromZero")
	klog.InfoS("odd key-value pairs", "reason") // zapr calls DPanic on this
	klog.Flush()

	refused := logs.FilterMessage("Server rejected event (will not retry!)").All()
	if len(refused) != 1 {
		t.Fatalf("got %d entries for the refused Event, want 1: %+v", len(refused), logs.All())
	}
	if logs.FilterMessage("odd key-value pairs").Len() != 1 {
		t.Errorf("the malformed klog line was lost: %+v", logs.All())
	}
	e := refused[0]
	if e.Level != zapcore.ErrorLevel || e.LoggerName != "client-go" || e.Message != "Server rejected event (will not retry!)" {
		t.Errorf("entry = level %s, logger %q, message %q; want error, client-go, the klog message", e.Level, e.LoggerName, e.Message)
	}
	if e.Stack != "" {
		t.Errorf("entry carries a stack trace:\n%s", e.Stack)
	}
	if got := e.ContextMap()["reason"]; got != "ScaledFromZero" {
		t.Errorf("reason = %v, want the key-value pair klog was given", got)
	}
}

// Issue 13, item 2: the errors expected in operation, a conflict and a
// timeout, are one log line each, without a stack trace, in either format
// and at any level the daemon logs them at.
func TestLogLinesCarryNoStackTrace(t *testing.T) {
	conflict := apierrors.NewConflict(schema.GroupResource{Group: "apps", Resource: "deployments"}, "web", errors.New("the object has been modified"))
	timeout := fmt.Errorf("patch shop/web: %w", context.DeadlineExceeded)
	for _, format := range []string{"json", "console"} {
		t.Run(format, func(t *testing.T) {
			cfg, err := loggerConfig("debug", format)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "log")
			cfg.OutputPaths, cfg.ErrorOutputPaths = []string{path}, []string{path}
			log, err := cfg.Build()
			if err != nil {
				t.Fatal(err)
			}
			log.Debug("workload changed while deciding", zap.Error(conflict))
			log.Warn("write failed", zap.Error(timeout))
			log.Error("write failed", zap.Error(conflict))
			log.Error("zeroscaler stopped", zap.Error(timeout))
			if err := log.Sync(); err != nil {
				t.Fatal(err)
			}
			out, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
			if len(lines) != 4 || strings.Contains(string(out), "stacktrace") || strings.Contains(string(out), "main.TestLogLinesCarryNoStackTrace") {
				t.Errorf("want 4 lines without a stack trace, got %d:\n%s", len(lines), out)
			}
		})
	}
}

// The allowed servers are in the daemon's log, once at start (issue 9 item
// 4: Events never list them, so the operator reads them here).
func TestServersLoggedAtStart(t *testing.T) {
	dir := t.TempDir()
	kubeconfig := writeTestFile(t, dir, "kubeconfig", testKubeconfig)
	var stdout, stderr bytes.Buffer
	_, servers, code := prepare([]string{"--kubeconfig", kubeconfig, "--prometheus-address", "http://prom.example:9090",
		"--allowed-server-address", "https://thanos.example/query"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("prepare: %s", stderr.String())
	}
	core, logs := observer.New(zapcore.InfoLevel)
	logServers(zap.New(core), servers)
	lines := logs.FilterMessage("prometheus servers").All()
	if len(lines) != 1 {
		t.Fatalf("%d lines naming the servers, want 1: %+v", len(lines), logs.All())
	}
	fields := lines[0].ContextMap()
	if got := fields["default"]; got != "http://prom.example:9090" {
		t.Errorf("default = %v, want http://prom.example:9090", got)
	}
	allowed := fmt.Sprint(fields["allowed"])
	for _, want := range []string{"http://prom.example:9090", "https://thanos.example/query"} {
		if !strings.Contains(allowed, want) {
			t.Errorf("allowed = %s, want it to list %s", allowed, want)
		}
	}
}
