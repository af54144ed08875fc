package status

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	ktesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
)

var now = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func deployment(ns, name string, replicas int32, ann map[string]string, mutate ...func(*appsv1.Deployment)) *appsv1.Deployment {
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(ns + "-" + name), Annotations: ann},
		Spec:       appsv1.DeploymentSpec{Replicas: ptr.To(replicas)},
	}
	for _, m := range mutate {
		m(d)
	}
	return d
}

func statefulSet(ns, name string, replicas int32, ann map[string]string) *appsv1.StatefulSet {
	return &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(ns + "-" + name), Annotations: ann},
		Spec:       appsv1.StatefulSetSpec{Replicas: ptr.To(replicas)},
	}
}

func event(ns, kind, name, uid, reason string, at time.Time, mutate ...func(*corev1.Event)) *corev1.Event {
	e := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Namespace: ns, Name: name + "." + reason + at.Format("150405")},
		InvolvedObject: corev1.ObjectReference{Kind: kind, Namespace: ns, Name: name, UID: types.UID(uid)},
		Reason:         reason,
		Type:           corev1.EventTypeNormal,
		Source:         corev1.EventSource{Component: Component},
		LastTimestamp:  metav1.NewTime(at),
	}
	for _, m := range mutate {
		m(e)
	}
	return e
}

func managed(extra ...string) map[string]string {
	a := map[string]string{"zeroscaler.io/query": "sum(rate(http_requests_total[5m]))", "zeroscaler.io/threshold": "0.1"}
	for i := 0; i+1 < len(extra); i += 2 {
		a[extra[i]] = extra[i+1]
	}
	return a
}

func TestStates(t *testing.T) {
	tests := []struct {
		name        string
		obj         runtime.Object
		wantOK      bool
		state       string
		problem     string
		asleepSince string
	}{
		{name: "no annotations", obj: deployment("a", "plain", 2, map[string]string{"other.io/x": "y"})},
		{name: "awake", obj: deployment("a", "web", 2, managed()), wantOK: true, state: "awake", asleepSince: none},
		{name: "asleep", obj: deployment("a", "web", 0, managed("zeroscaler.io/original-replicas", "3", "zeroscaler.io/scaled-to-zero-at", "2026-12-01T09:30:00Z")), wantOK: true, state: "asleep", asleepSince: "150m"},
		{name: "asleep without a timestamp", obj: deployment("a", "web", 0, managed("zeroscaler.io/original-replicas", "3")), wantOK: true, state: "asleep", asleepSince: "<unknown>"},
		{name: "asleep with a bad original count", obj: deployment("a", "web", 0, managed("zeroscaler.io/original-replicas", "x", "zeroscaler.io/scaled-to-zero-at", "2026-11-28T12:00:00Z")), wantOK: true, state: "asleep", asleepSince: "3d"},
		{name: "at zero by a person", obj: deployment("a", "web", 0, managed()), wantOK: true, state: "awake", asleepSince: none},
		{name: "woken, marks not yet cleared", obj: deployment("a", "web", 3, managed("zeroscaler.io/original-replicas", "3", "zeroscaler.io/scaled-to-zero-at", "2026-12-01T09:30:00Z")), wantOK: true, state: "awake", asleepSince: none},
		{name: "paused", obj: deployment("a", "web", 2, managed("zeroscaler.io/paused", "true")), wantOK: true, state: "paused", asleepSince: none},
		{name: "paused while asleep", obj: statefulSet("a", "db", 0, managed("zeroscaler.io/paused", "true", "zeroscaler.io/original-replicas", "1", "zeroscaler.io/scaled-to-zero-at", "2026-12-01T11:59:30Z")), wantOK: true, state: "paused", asleepSince: "30s"},
		{name: "not paused", obj: deployment("a", "web", 2, managed("zeroscaler.io/paused", "false")), wantOK: true, state: "awake", asleepSince: none},
		{name: "bad threshold", obj: deployment("a", "web", 2, managed("zeroscaler.io/threshold", "high")), wantOK: true, state: "invalid", problem: `annotation zeroscaler.io/threshold: "high" is not a finite number`, asleepSince: none},
		{name: "two bad annotations", obj: deployment("a", "web", 2, managed("zeroscaler.io/cooldown-period", "5", "zeroscaler.io/paused", "yes")), wantOK: true, state: "invalid", problem: `annotation zeroscaler.io/cooldown-period: "5" is not a Go duration such as 30s or 5m; annotation zeroscaler.io/paused: "yes" is not a boolean ("true" or "false")`, asleepSince: none},
		{name: "bad server address", obj: deployment("a", "web", 2, managed("zeroscaler.io/server-address", "ftp://x")), wantOK: true, state: "invalid", problem: `annotation zeroscaler.io/server-address: "ftp://x" is not an allowed http(s) Prometheus URL: "ftp://x": scheme must be http or https`, asleepSince: none},
		{name: "invalid while asleep", obj: deployment("a", "web", 0, managed("zeroscaler.io/threshold", "", "zeroscaler.io/original-replicas", "2", "zeroscaler.io/scaled-to-zero-at", "2026-12-01T11:00:00Z")), wantOK: true, state: "invalid", problem: `annotation zeroscaler.io/threshold: "" is not a finite number`, asleepSince: "60m"},
		{name: "no query", obj: deployment("a", "web", 2, map[string]string{"zeroscaler.io/threshold": "1"}), wantOK: true, state: "excluded", asleepSince: none},
		{name: "query removed while asleep", obj: deployment("a", "web", 0, map[string]string{"zeroscaler.io/original-replicas": "4", "zeroscaler.io/scaled-to-zero-at": "2026-12-01T11:58:00Z"}), wantOK: true, state: "excluded", asleepSince: "2m"},
		{name: "empty query", obj: deployment("a", "web", 2, managed("zeroscaler.io/query", " ")), wantOK: true, state: "invalid", problem: `annotation zeroscaler.io/query: " " is empty; it must be a PromQL query`, asleepSince: none},
		{name: "default replicas", obj: deployment("a", "web", 0, managed(), func(d *appsv1.Deployment) { d.Spec.Replicas = nil }), wantOK: true, state: "awake", asleepSince: none},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, ok := rowOf(tc.obj)
			if ok != tc.wantOK {
				t.Fatalf("rowOf: ok = %v, want %v", ok, tc.wantOK)
			}
			if !ok {
				return
			}
			if r.State != tc.state || r.Problem != tc.problem {
				t.Errorf("state, problem = %q, %q; want %q, %q", r.State, r.Problem, tc.state, tc.problem)
			}
			if got := asleepSince(r, now); got != tc.asleepSince {
				t.Errorf("ASLEEP-SINCE = %q, want %q", got, tc.asleepSince)
			}
		})
	}
}

func TestLastEvents(t *testing.T) {
	web := Row{Namespace: "shop", Kind: "Deployment", Name: "web", UID: "web-2"}
	tests := []struct {
		name   string
		events []runtime.Object
		want   string // reason, or "" for none
	}{
		{"none", nil, ""},
		{"the latest", []runtime.Object{
			event("shop", "Deployment", "web", "web-2", "ScaledToZero", now.Add(-time.Hour)),
			event("shop", "Deployment", "web", "web-2", "ScaledFromZero", now.Add(-time.Minute)),
			event("shop", "Deployment", "web", "web-2", "MetricUnavailable", now.Add(-30*time.Minute)),
		}, "ScaledFromZero"},
		{"another component's event is not ours", []runtime.Object{
			event("shop", "Deployment", "web", "web-2", "ScaledToZero", now.Add(-time.Hour)),
			event("shop", "Deployment", "web", "web-2", "ScalingReplicaSet", now.Add(-time.Minute), func(e *corev1.Event) {
				e.Source.Component = "deployment-controller"
			}),
		}, "ScaledToZero"},
		{"reported by the reporting controller only", []runtime.Object{
			event("shop", "Deployment", "web", "web-2", "ScaledToZero", now.Add(-time.Hour)),
			event("shop", "Deployment", "web", "web-2", "WokeOnError", time.Time{}, func(e *corev1.Event) {
				e.Source.Component, e.ReportingController = "", Component
				e.EventTime = metav1.NewMicroTime(now.Add(-time.Minute))
			}),
		}, "WokeOnError"},
		{"an earlier workload of the same name", []runtime.Object{
			event("shop", "Deployment", "web", "web-2", "ScaledToZero", now.Add(-time.Hour)),
			event("shop", "Deployment", "web", "web-1", "InvalidScalingConfig", now.Add(-time.Minute)),
		}, "ScaledToZero"},
		{"another kind of the same name", []runtime.Object{
			event("shop", "StatefulSet", "web", "", "ScaledToZero", now.Add(-time.Minute)),
		}, ""},
		{"an event naming no UID", []runtime.Object{
			event("shop", "Deployment", "web", "web-2", "ScaledToZero", now.Add(-time.Hour)),
			event("shop", "Deployment", "web", "", "ScaledFromZero", now.Add(-time.Minute)),
		}, "ScaledFromZero"},
		{"a repeated event", []runtime.Object{
			event("shop", "Deployment", "web", "web-2", "ScaledToZero", now.Add(-time.Hour)),
			event("shop", "Deployment", "web", "web-2", "MetricUnavailable", now.Add(-2*time.Hour), func(e *corev1.Event) {
				e.Series = &corev1.EventSeries{Count: 3, LastObservedTime: metav1.NewMicroTime(now.Add(-time.Minute))}
			}),
		}, "MetricUnavailable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			es, err := LastEvents(context.Background(), fake.NewClientset(tc.events...), "shop")
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if e := es.For(web); e != nil {
				got = e.Reason
			}
			if got != tc.want {
				t.Errorf("last event = %q, want %q", got, tc.want)
			}
		})
	}
}

// world is what the command's tests read: two namespaces, every state,
// and Events.
func world() []runtime.Object {
	labelled := func(d *appsv1.Deployment) { d.Labels = map[string]string{"team": "shop"} }
	return []runtime.Object{
		deployment("shop", "web", 0, managed("zeroscaler.io/original-replicas", "3", "zeroscaler.io/scaled-to-zero-at", "2026-12-01T09:00:00Z"), labelled),
		deployment("shop", "api", 2, managed("zeroscaler.io/threshold", "lots"), labelled),
		statefulSet("shop", "db", 1, managed("zeroscaler.io/paused", "true", "zeroscaler.io/query", "sum(pg_stat_activity_count{datname=\"shop\"})\n  or vector(0)")),
		deployment("shop", "plain", 1, nil),
		deployment("jobs", "worker", 1, map[string]string{"zeroscaler.io/threshold": "1"}),
		deployment("default", "hello", 1, managed()),
		statefulSet("default", "cache", 3, managed()),
		event("shop", "Deployment", "web", "shop-web", "ScaledToZero", now.Add(-3*time.Hour)),
		event("shop", "Deployment", "api", "shop-api", "InvalidScalingConfig", now.Add(-90*time.Second), func(e *corev1.Event) { e.Type = corev1.EventTypeWarning }),
	}
}

const testKubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: "https://127.0.0.1:1"}
users:
- name: test
  user: {token: x}
contexts:
- name: shop
  context: {cluster: test, user: test, namespace: shop}
- name: jobs
  context: {cluster: test, user: test, namespace: jobs}
current-context: shop
`

// run runs the command on client with a kubeconfig whose current context's
// namespace is shop.
func run(t *testing.T, client kubernetes.Interface, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(testKubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	cmd := Command{
		Stdout:    &out,
		Stderr:    &errOut,
		Clock:     clocktesting.NewFakePassiveClock(now),
		NewClient: func(*rest.Config) (kubernetes.Interface, error) { return client, nil },
	}
	code = cmd.Run(context.Background(), append([]string{"--kubeconfig", kubeconfig}, args...))
	return out.String(), errOut.String(), code
}

func TestCommand(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"the context's namespace", nil, `
KIND          NAME   STATE     REPLICAS   ORIGINAL   ASLEEP-SINCE   LAST-EVENT             EVENT-AGE
Deployment    api    invalid   2          <none>     <none>         InvalidScalingConfig   90s
Deployment    web    asleep    0          3          3h             ScaledToZero           3h
StatefulSet   db     paused    1          <none>     <none>         <none>                 <none>
`},
		{"another context", []string{"--context", "jobs"}, `
KIND         NAME     STATE      REPLICAS   ORIGINAL   ASLEEP-SINCE   LAST-EVENT   EVENT-AGE
Deployment   worker   excluded   1          <none>     <none>         <none>       <none>
`},
		{"-n", []string{"-n", "default"}, `
KIND          NAME    STATE   REPLICAS   ORIGINAL   ASLEEP-SINCE   LAST-EVENT   EVENT-AGE
Deployment    hello   awake   1          <none>     <none>         <none>       <none>
StatefulSet   cache   awake   3          <none>     <none>         <none>       <none>
`},
		{"-A", []string{"-A"}, `
NAMESPACE   KIND          NAME     STATE      REPLICAS   ORIGINAL   ASLEEP-SINCE   LAST-EVENT             EVENT-AGE
default     Deployment    hello    awake      1          <none>     <none>         <none>                 <none>
default     StatefulSet   cache    awake      3          <none>     <none>         <none>                 <none>
jobs        Deployment    worker   excluded   1          <none>     <none>         <none>                 <none>
shop        Deployment    api      invalid    2          <none>     <none>         InvalidScalingConfig   90s
shop        Deployment    web      asleep     0          3          3h             ScaledToZero           3h
shop        StatefulSet   db       paused     1          <none>     <none>         <none>                 <none>
`},
		{"-A -l", []string{"--all-namespaces", "-l", "team=shop"}, `
NAMESPACE   KIND         NAME   STATE     REPLICAS   ORIGINAL   ASLEEP-SINCE   LAST-EVENT             EVENT-AGE
shop        Deployment   api    invalid   2          <none>     <none>         InvalidScalingConfig   90s
shop        Deployment   web    asleep    0          3          3h             ScaledToZero           3h
`},
		{"-o wide", []string{"-o", "wide"}, `
KIND          NAME   STATE     REPLICAS   ORIGINAL   ASLEEP-SINCE   LAST-EVENT             EVENT-AGE   THRESHOLD   QUERY
Deployment    api    invalid   2          <none>     <none>         InvalidScalingConfig   90s         lots        sum(rate(http_requests_total[5m]))
Deployment    web    asleep    0          3          3h             ScaledToZero           3h          0.1         sum(rate(http_requests_total[5m]))
StatefulSet   db     paused    1          <none>     <none>         <none>                 <none>      0.1         sum(pg_stat_activity_count{datname="shop"}) or vector(0)
`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := run(t, fake.NewClientset(world()...), tc.args...)
			if code != ExitOK || stderr != "" {
				t.Fatalf("exit %d, stderr %q", code, stderr)
			}
			if want := strings.TrimPrefix(tc.want, "\n"); stdout != want {
				t.Errorf("stdout:\n%s\nwant:\n%s", stdout, want)
			}
		})
	}
}

func TestCommandJSON(t *testing.T) {
	stdout, _, code := run(t, fake.NewClientset(world()...), "-n", "shop", "-o", "json")
	if code != ExitOK {
		t.Fatalf("exit %d", code)
	}
	var got list
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("-o json is not JSON: %v\n%s", err, stdout)
	}
	want := []string{"api invalid", "web asleep", "db paused"}
	if len(got.Items) != len(want) {
		t.Fatalf("%d items, want %d:\n%s", len(got.Items), len(want), stdout)
	}
	for i, w := range want {
		if g := got.Items[i].Name + " " + got.Items[i].State; g != w {
			t.Errorf("item %d = %s, want %s", i, g, w)
		}
	}
	web := got.Items[1]
	if web.AsleepSince == nil || !web.AsleepSince.Equal(now.Add(-3*time.Hour)) || web.OriginalReplicas != "3" {
		t.Errorf("web: asleepSince %v, originalReplicas %q; want %v, 3", web.AsleepSince, web.OriginalReplicas, now.Add(-3*time.Hour))
	}
	if e := web.LastEvent; e == nil || e.Reason != "ScaledToZero" || !e.Time.Equal(now.Add(-3*time.Hour)) {
		t.Errorf("web: lastEvent %+v, want ScaledToZero 3h ago", e)
	}
	if p := got.Items[0].Problem; p != `annotation zeroscaler.io/threshold: "lots" is not a finite number` {
		t.Errorf("api: problem %q", p)
	}
}

func TestCommandYAML(t *testing.T) {
	stdout, _, code := run(t, fake.NewClientset(world()...), "-n", "jobs", "-o", "yaml")
	want := `items:
- kind: Deployment
  name: worker
  namespace: jobs
  replicas: 1
  state: excluded
  threshold: "1"
`
	if code != ExitOK || stdout != want {
		t.Errorf("exit %d, stdout:\n%s\nwant:\n%s", code, stdout, want)
	}
}

func TestCommandNothingFound(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		wantStdout string
		wantStderr string
	}{
		{[]string{"-n", "empty"}, "", "No workloads with zeroscaler.io/ annotations found in namespace empty.\n"},
		{[]string{"-A", "-l", "team=none"}, "", "No workloads with zeroscaler.io/ annotations found in any namespace matching team=none.\n"},
		{[]string{"-n", "empty", "-o", "json"}, "{\n    \"items\": []\n}\n", ""},
	} {
		stdout, stderr, code := run(t, fake.NewClientset(world()...), tc.args...)
		if code != ExitOK || stdout != tc.wantStdout || stderr != tc.wantStderr {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want 0, %q, %q", tc.args, code, stdout, stderr, tc.wantStdout, tc.wantStderr)
		}
	}
}

func TestCommandErrors(t *testing.T) {
	t.Run("the API cannot be read", func(t *testing.T) {
		client := fake.NewClientset(world()...)
		client.PrependReactor("list", "deployments", func(ktesting.Action) (bool, runtime.Object, error) {
			return true, nil, errors.New("dial tcp 127.0.0.1:1: connect: connection refused\nand more")
		})
		stdout, stderr, code := run(t, client)
		want := "zeroscaler status: cannot read workloads from the Kubernetes API at https://127.0.0.1:1: list deployments: dial tcp 127.0.0.1:1: connect: connection refused and more\n"
		if code != ExitError || stdout != "" || stderr != want {
			t.Errorf("exit %d, stdout %q, stderr %q; want 1, nothing, %q", code, stdout, stderr, want)
		}
	})
	t.Run("events cannot be read", func(t *testing.T) {
		client := fake.NewClientset(world()...)
		client.PrependReactor("list", "events", func(ktesting.Action) (bool, runtime.Object, error) {
			return true, nil, errors.New(`events is forbidden: User "dev" cannot list resource "events"`)
		})
		stdout, stderr, code := run(t, client, "-n", "shop")
		if code != ExitOK || !strings.Contains(stdout, "web    asleep") || !strings.Contains(stderr, "warning: cannot read events") {
			t.Errorf("exit %d, stdout %q, stderr %q; want 0, the table, a warning", code, stdout, stderr)
		}
	})
	for _, args := range [][]string{{"-o", "table"}, {"web"}, {"--no-such-flag"}} {
		_, stderr, code := run(t, fake.NewClientset(), args...)
		if code != ExitUsage || strings.Count(stderr, "\n") < 1 {
			t.Errorf("%v: exit %d, stderr %q; want 2 and a message", args, code, stderr)
		}
	}
	t.Run("no kubeconfig", func(t *testing.T) {
		var stderr bytes.Buffer
		code := Command{Stdout: &bytes.Buffer{}, Stderr: &stderr}.Run(context.Background(), []string{"--kubeconfig", filepath.Join(t.TempDir(), "missing")})
		if code != ExitError || !strings.HasPrefix(stderr.String(), "zeroscaler status: load kubeconfig: ") || strings.Count(stderr.String(), "\n") != 1 {
			t.Errorf("exit %d, stderr %q; want 1 and one line", code, stderr.String())
		}
	})
}
