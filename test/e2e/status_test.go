//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/zeroscaler/zeroscaler/status"
	"github.com/zeroscaler/zeroscaler/test/localstack"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files in testdata/")

// statusNow is the clock `zeroscaler status` reads in these tests; every
// timestamp is set relative to it, so that ages and times are stable.
var statusNow = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// TestStatus runs `zeroscaler status` against the real API server, on
// workloads in every state and Events written by both Event APIs, and
// compares its output with golden files.
func TestStatus(t *testing.T) {
	cs := clientset(t)
	// Fixed names: they are in the golden files. Each run has a fresh
	// stack.
	for _, ns := range []string{"status-shop", "status-jobs"} {
		fixedNamespace(t, cs, ns)
	}
	ago := func(d time.Duration) string { return statusNow.Add(-d).Format(time.RFC3339) }
	created := map[string]*workload{
		"web":    createWorkload(t, cs, deployment, "status-shop", "web", 0, annotations("sum(rate(http_requests_total{service=\"web\"}[5m]))", annOriginal, "3", annScaledAt, ago(3*time.Hour))),
		"api":    createWorkload(t, cs, deployment, "status-shop", "api", 2, annotations("sum(rate(http_requests_total{service=\"api\"}[5m]))", annThreshold, "lots")),
		"db":     createWorkload(t, cs, statefulSet, "status-shop", "db", 1, annotations("sum(pg_stat_activity_count)", "zeroscaler.io/paused", "true")),
		"cart":   createWorkload(t, cs, deployment, "status-shop", "cart", 4, annotations("sum(rate(http_requests_total{service=\"cart\"}[5m]))", annCooldown, "30m")),
		"report": createWorkload(t, cs, statefulSet, "status-jobs", "report", 0, annotations("sum(report_queue_length)", annOriginal, "1", annScaledAt, ago(26*time.Hour))),
		"worker": createWorkload(t, cs, deployment, "status-jobs", "worker", 1, map[string]string{annThreshold: "1"}),
	}
	// Not annotated: not listed.
	createWorkload(t, cs, deployment, "status-shop", "plain", 1, nil)
	// Annotated, but without the label the -l cases select on.
	createWorkload(t, cs, deployment, "status-shop", "unlabelled", 1, annotations("vector(1)"))
	for _, w := range created {
		w.label(t, map[string]*string{"suite": str("status")})
	}

	uid := func(w *workload) types.UID {
		t.Helper()
		ctx := testContext(t)
		var meta metav1.Object
		var err error
		if w.kind == deployment {
			meta, err = cs.AppsV1().Deployments(w.ns).Get(ctx, w.name, metav1.GetOptions{})
		} else {
			meta, err = cs.AppsV1().StatefulSets(w.ns).Get(ctx, w.name, metav1.GetOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
		return meta.GetUID()
	}
	web, api, cart, report := created["web"], created["api"], created["cart"], created["report"]
	// core/v1 Events, as the daemon's recorder writes them.
	coreEvent(t, cs, web, uid(web), "zeroscaler", corev1.EventTypeNormal, "ScaledToZero", 3*time.Hour)
	coreEvent(t, cs, web, uid(web), "zeroscaler", corev1.EventTypeWarning, "MetricUnavailable", 5*time.Hour)
	// Another component's Event is not zeroscaler's, however recent.
	coreEvent(t, cs, web, uid(web), "deployment-controller", corev1.EventTypeNormal, "ScalingReplicaSet", time.Minute)
	// An Event about an earlier workload of the same name is not cart's.
	coreEvent(t, cs, cart, "0d1c2b3a-0000-4000-8000-000000000000", "zeroscaler", corev1.EventTypeNormal, "ScaledToZero", time.Minute)
	coreEvent(t, cs, cart, uid(cart), "zeroscaler", corev1.EventTypeNormal, "ScaledFromZero", 2*time.Hour)
	coreEvent(t, cs, report, uid(report), "zeroscaler", corev1.EventTypeNormal, "ScaledToZero", 26*time.Hour)
	// An events.k8s.io Event names zeroscaler as its reporting controller
	// only.
	_, err := cs.EventsV1().Events(api.ns).Create(testContext(t), &eventsv1.Event{
		ObjectMeta:          metav1.ObjectMeta{Name: "api.invalid", Namespace: api.ns},
		EventTime:           metav1.NewMicroTime(statusNow.Add(-90 * time.Second)),
		ReportingController: "zeroscaler",
		ReportingInstance:   "zeroscaler-0",
		Action:              "Parse",
		Reason:              "InvalidScalingConfig",
		Regarding:           corev1.ObjectReference{Kind: "Deployment", APIVersion: "apps/v1", Namespace: api.ns, Name: api.name, UID: uid(api)},
		Note:                `annotation zeroscaler.io/threshold: "lots" is not a finite number`,
		Type:                corev1.EventTypeWarning,
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create events.k8s.io event: %v", err)
	}

	tests := []struct {
		golden string
		args   []string
	}{
		{"shop.txt", []string{"-n", "status-shop"}},
		{"shop-wide.txt", []string{"--namespace=status-shop", "-o", "wide"}},
		{"all.txt", []string{"-A", "-l", "suite=status"}},
		{"all-wide.txt", []string{"--all-namespaces", "--selector", "suite=status", "-o", "wide"}},
		{"all.json", []string{"-A", "-l", "suite=status", "-o", "json"}},
		{"jobs.yaml", []string{"-n", "status-jobs", "-o", "yaml"}},
		{"none.txt", []string{"-n", "status-jobs", "-l", "suite=none"}},
	}
	for _, tc := range tests {
		t.Run(tc.golden, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			cmd := status.Command{Stdout: &stdout, Stderr: &stderr, Clock: clocktesting.NewFakePassiveClock(statusNow)}
			args := append([]string{"--kubeconfig", stack.KubeconfigPath}, tc.args...)
			if code := cmd.Run(testContext(t), args); code != status.ExitOK {
				t.Fatalf("zeroscaler status %s: exit %d: %s", strings.Join(tc.args, " "), code, stderr.String())
			}
			// The table goes to stdout, "nothing found" to stderr.
			got := stdout.String() + stderr.String()
			compareGolden(t, filepath.Join("testdata", "status", tc.golden), got)
		})
	}

	t.Run("the binary", func(t *testing.T) {
		bin := daemonBinary(t)
		out, err := exec.Command(bin, "status", "--kubeconfig", stack.KubeconfigPath, "-n", "status-shop").CombinedOutput()
		// The real clock tells the ages: compare the columns before them.
		found := false
		for _, l := range strings.Split(string(out), "\n") {
			found = found || strings.HasPrefix(strings.Join(strings.Fields(l), " "), "Deployment web asleep 0 3 ")
		}
		if err != nil || !found {
			t.Errorf("zeroscaler status -n status-shop: %v\n%s", err, out)
		}
		port, err := localstack.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "status", "--kubeconfig", stack.KubeconfigPath, "--server", "https://127.0.0.1:"+strconv.Itoa(port), "-A")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err = cmd.Run()
		code := cmd.ProcessState.ExitCode()
		msg := stderr.String()
		if code != status.ExitError || stdout.Len() > 0 || strings.Count(msg, "\n") != 1 ||
			!strings.HasPrefix(msg, "zeroscaler status: cannot read workloads from the Kubernetes API at https://127.0.0.1:") {
			t.Errorf("with no API server: %v, exit %d, stdout %q, stderr %q; want exit 1 and one line", err, code, stdout.String(), msg)
		}
	})
}

// fixedNamespace creates namespace name for one test and deletes it
// afterwards.
func fixedNamespace(t *testing.T, cs kubernetes.Interface, name string) {
	t.Helper()
	_, err := cs.CoreV1().Namespaces().Create(testContext(t), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := cs.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
			t.Errorf("delete namespace %s: %v", name, err)
		}
	})
}

// coreEvent writes a core/v1 Event about w from component, last seen ago
// before statusNow.
func coreEvent(t *testing.T, cs kubernetes.Interface, w *workload, uid types.UID, component, eventType, reason string, ago time.Duration) {
	t.Helper()
	at := metav1.NewTime(statusNow.Add(-ago))
	_, err := cs.CoreV1().Events(w.ns).Create(testContext(t), &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: w.name + ".", Namespace: w.ns},
		InvolvedObject: corev1.ObjectReference{Kind: string(w.kind), APIVersion: "apps/v1", Namespace: w.ns, Name: w.name, UID: uid},
		Reason:         reason,
		Message:        reason + " (written by the test)",
		Type:           eventType,
		Source:         corev1.EventSource{Component: component},
		FirstTimestamp: at,
		LastTimestamp:  at,
		Count:          1,
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create event %s on %s: %v", reason, w, err)
	}
}

// compareGolden compares got with the golden file at path, or rewrites the
// file with -update.
func compareGolden(t *testing.T, path, got string) {
	t.Helper()
	if *updateGolden {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run with -update to write it): %v", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (run with -update to rewrite it):\n--- got\n%s--- want\n%s", path, got, want)
	}
}
