//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/zeroscaler/zeroscaler/test/localstack"
)

// The annotations and event reasons are spelled out rather than imported
// from the daemon's packages: users write these strings, so a rename in the
// code must fail these tests.
const (
	annQuery     = "zeroscaler.io/query"
	annThreshold = "zeroscaler.io/threshold"
	annCooldown  = "zeroscaler.io/cooldown-period"
	annPolling   = "zeroscaler.io/polling-interval"
	annPaused    = "zeroscaler.io/paused"
	annOriginal  = "zeroscaler.io/original-replicas"
	annScaledAt  = "zeroscaler.io/scaled-to-zero-at"
	annPrefix    = "zeroscaler.io/"

	reasonScaledToZero      = "ScaledToZero"
	reasonScaledFromZero    = "ScaledFromZero"
	reasonWokeOnError       = "WokeOnError"
	reasonInvalidConfig     = "InvalidScalingConfig"
	reasonMetricUnavailable = "MetricUnavailable"
)

const (
	// cooldown and polling are what the scenarios use unless they say
	// otherwise; every daemon also gets them as its defaults.
	cooldown = 4 * time.Second
	polling  = time.Second

	// pollEvery is how often the tests look at the API or Prometheus.
	pollEvery = 200 * time.Millisecond
	// settle bounds a wait for something the daemon should do within a
	// few checks (waking, writing an event).
	settle = 30 * time.Second
	// patience bounds a wait that includes a cooldown, or a Prometheus
	// restart, on a loaded two-core machine.
	patience = 60 * time.Second
)

// quietPeriod is how long a negative assertion watches: several times the
// cooldown plus the polling interval, so that a daemon that would wrongly
// act has had every chance to.
func quietPeriod(cooldown, polling time.Duration) time.Duration {
	return 3 * (cooldown + polling)
}

// remaining is how much longer a negative assertion must watch, beside a
// workload the daemon has just scaled: the rest of the quiet period since
// began (when the daemon was started), and at least another cooldown and
// two checks, however slowly the daemon came up.
func remaining(began time.Time) time.Duration {
	return max(quietPeriod(cooldown, polling)-time.Since(began), cooldown+2*polling)
}

// --- the daemon under test ---

var daemonBuild struct {
	once sync.Once
	path string
	err  error
}

// daemonBinary builds the real zeroscaler binary, with the race detector,
// once per package run. It goes under the stack's directory, which Stop
// removes when TestMain ends.
func daemonBinary(t *testing.T) string {
	t.Helper()
	daemonBuild.once.Do(func() {
		dir, err := os.MkdirTemp(stack.Dir, "daemon-")
		if err != nil {
			daemonBuild.err = err
			return
		}
		began := time.Now()
		daemonBuild.path, daemonBuild.err = localstack.BuildDaemon(dir, "-race")
		t.Logf("built the daemon in %v", time.Since(began).Round(time.Millisecond))
	})
	if daemonBuild.err != nil {
		t.Fatalf("build daemon: %v", daemonBuild.err)
	}
	return daemonBuild.path
}

// daemon is one zeroscaler process started by a test.
type daemon struct {
	*localstack.Daemon
	name       string
	metricsURL string
	killed     bool
}

// startDaemon starts zeroscaler against the shared stack, watching
// namespace ns (all namespaces if ns is empty), and waits until its caches
// have synced. When the test ends the daemon gets SIGTERM and must exit 0
// without a data race; if the test failed, its output is logged.
func startDaemon(t *testing.T, name, ns string, extra ...string) *daemon {
	t.Helper()
	return startDaemonOn(t, stack.PrometheusURL, name, ns, extra...)
}

// startDaemonOn is startDaemon with promURL as --prometheus-address.
func startDaemonOn(t *testing.T, promURL, name, ns string, extra ...string) *daemon {
	t.Helper()
	port, err := localstack.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	args := []string{
		"--kubeconfig", stack.KubeconfigPath,
		"--prometheus-address", promURL,
		"--leader-elect=false",
		"--metrics-address", addr,
		"--log-level", "debug",
		"--default-polling-interval", polling.String(),
		"--default-cooldown-period", cooldown.String(),
	}
	if ns != "" {
		args = append(args, "--watch-namespace", ns)
	}
	args = append(args, extra...)
	p, err := localstack.StartDaemon(daemonBinary(t), filepath.Join(t.TempDir(), name+".log"), args...)
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{Daemon: p, name: name, metricsURL: "http://" + addr}
	t.Cleanup(func() { d.finish(t) })

	waitFor(t, settle, "daemon "+name+" to be ready", func(ctx context.Context) (bool, string, error) {
		select {
		case <-d.Done():
			return false, "", errors.New("daemon exited")
		default:
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.metricsURL+"/readyz", nil)
		if err != nil {
			return false, "", err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, err.Error(), nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status, nil
	})
	return d
}

// kill ends the daemon with SIGKILL, as a crash would.
func (d *daemon) kill(t *testing.T) {
	t.Helper()
	d.killed = true
	if err := d.Kill(); err != nil {
		t.Fatal(err)
	}
}

func (d *daemon) finish(t *testing.T) {
	if !d.killed {
		code, err := d.Stop(10 * time.Second)
		switch {
		case err != nil:
			t.Errorf("daemon %s: %v", d.name, err)
		case code != 0:
			t.Errorf("daemon %s exited with code %d after SIGTERM, want 0", d.name, code)
		}
	}
	out := d.Output()
	if strings.Contains(out, "WARNING: DATA RACE") {
		t.Errorf("daemon %s reported a data race", d.name)
	}
	if t.Failed() {
		t.Logf("output of daemon %s:\n%s", d.name, out)
	}
}

// metric returns the sum of the daemon's own metric name over the series
// whose labels pass keep (all if keep is nil): a counter's or gauge's value,
// a histogram's sample count.
func (d *daemon) metric(ctx context.Context, name string, keep func(labels map[string]string) bool) (float64, error) {
	return localstack.ScrapeSum(ctx, d.metricsURL, name, keep)
}

// mustMetric is metric for the test goroutine.
func (d *daemon) mustMetric(t *testing.T, name string, keep func(map[string]string) bool) float64 {
	t.Helper()
	v, err := d.metric(testContext(t), name, keep)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// checks is how many workload checks the daemon has run, over all loops.
func (d *daemon) checks(t *testing.T) float64 {
	t.Helper()
	return d.mustMetric(t, "zeroscaler_loop_lag_seconds", nil)
}

func label(name, value string) func(map[string]string) bool {
	return func(l map[string]string) bool { return l[name] == value }
}

// waitForState waits until the daemon counts n workloads in state.
func (d *daemon) waitForState(t *testing.T, state string, n int) {
	t.Helper()
	waitFor(t, settle, fmt.Sprintf("daemon %s to count %d workloads %s", d.name, n, state), func(ctx context.Context) (bool, string, error) {
		v, err := d.metric(ctx, "zeroscaler_workloads", label("state", state))
		return v == float64(n), fmt.Sprintf("%v %s", v, state), err
	})
}

// --- metrics in Prometheus ---

// setMetric sets a series on the exporter and waits until Prometheus
// answers with the new value. The series is deleted when the test ends.
func setMetric(t *testing.T, series string, v float64) {
	t.Helper()
	stack.Exporter.Set(series, v)
	t.Cleanup(func() { stack.Exporter.Delete(series) })
	if err := stack.WaitForValue(testContext(t), stack.Exporter.Query(series), v); err != nil {
		t.Fatal(err)
	}
}

// --- workloads ---

type kind string

const (
	deployment  kind = "Deployment"
	statefulSet kind = "StatefulSet"
)

// workload is a Deployment or StatefulSet created by a test.
type workload struct {
	cs   kubernetes.Interface
	kind kind
	ns   string
	name string
}

// snapshot is what the tests look at of a workload.
type snapshot struct {
	replicas        int32
	annotations     map[string]string // the zeroscaler.io/ ones only
	resourceVersion string
}

func (s snapshot) String() string {
	keys := slices.Sorted(maps.Keys(s.annotations))
	var b strings.Builder
	fmt.Fprintf(&b, "replicas=%d rv=%s", s.replicas, s.resourceVersion)
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%q", k, s.annotations[k])
	}
	return b.String()
}

func (s snapshot) asleep() bool {
	_, ok := s.annotations[annOriginal]
	return s.replicas == 0 && ok
}

func (s snapshot) marked() bool {
	_, a := s.annotations[annOriginal]
	_, b := s.annotations[annScaledAt]
	return a || b
}

// annotations returns a workload's scaling annotations for query: the
// threshold is 1, with the default cooldown and polling; kv pairs add or
// override annotations.
func annotations(query string, kv ...string) map[string]string {
	a := map[string]string{
		annQuery:     query,
		annThreshold: "1",
		annCooldown:  cooldown.String(),
		annPolling:   polling.String(),
	}
	for i := 0; i+1 < len(kv); i += 2 {
		a[kv[i]] = kv[i+1]
	}
	return a
}

func createWorkload(t *testing.T, cs kubernetes.Interface, k kind, ns, name string, replicas int32, ann map[string]string) *workload {
	t.Helper()
	ctx := testContext(t)
	sel, tmpl := podTemplate(name)
	meta := metav1.ObjectMeta{Name: name, Annotations: ann}
	var err error
	switch k {
	case deployment:
		_, err = cs.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
			ObjectMeta: meta,
			Spec:       appsv1.DeploymentSpec{Replicas: ptr.To(replicas), Selector: sel, Template: tmpl},
		}, metav1.CreateOptions{})
	case statefulSet:
		_, err = cs.AppsV1().StatefulSets(ns).Create(ctx, &appsv1.StatefulSet{
			ObjectMeta: meta,
			Spec:       appsv1.StatefulSetSpec{Replicas: ptr.To(replicas), Selector: sel, Template: tmpl},
		}, metav1.CreateOptions{})
	default:
		t.Fatalf("unknown kind %q", k)
	}
	if err != nil {
		t.Fatalf("create %s %s/%s: %v", k, ns, name, err)
	}
	return &workload{cs: cs, kind: k, ns: ns, name: name}
}

func (w *workload) String() string { return fmt.Sprintf("%s %s/%s", w.kind, w.ns, w.name) }

func (w *workload) get(ctx context.Context) (snapshot, error) {
	var (
		meta     metav1.ObjectMeta
		replicas *int32
	)
	switch w.kind {
	case deployment:
		d, err := w.cs.AppsV1().Deployments(w.ns).Get(ctx, w.name, metav1.GetOptions{})
		if err != nil {
			return snapshot{}, err
		}
		meta, replicas = d.ObjectMeta, d.Spec.Replicas
	case statefulSet:
		s, err := w.cs.AppsV1().StatefulSets(w.ns).Get(ctx, w.name, metav1.GetOptions{})
		if err != nil {
			return snapshot{}, err
		}
		meta, replicas = s.ObjectMeta, s.Spec.Replicas
	}
	s := snapshot{replicas: ptr.Deref(replicas, -1), annotations: map[string]string{}, resourceVersion: meta.ResourceVersion}
	for k, v := range meta.Annotations {
		if strings.HasPrefix(k, annPrefix) {
			s.annotations[k] = v
		}
	}
	return s, nil
}

func (w *workload) mustGet(t *testing.T) snapshot {
	t.Helper()
	s, err := w.get(testContext(t))
	if err != nil {
		t.Fatalf("get %s: %v", w, err)
	}
	return s
}

// annotate sets annotations, or removes those whose value is nil, as a
// user would with kubectl annotate.
func (w *workload) annotate(t *testing.T, set map[string]*string) {
	t.Helper()
	w.patchMetadata(t, "annotations", set)
}

// label sets labels, or removes those whose value is nil, as kubectl label
// would.
func (w *workload) label(t *testing.T, set map[string]*string) {
	t.Helper()
	w.patchMetadata(t, "labels", set)
}

func (w *workload) patchMetadata(t *testing.T, field string, set map[string]*string) {
	t.Helper()
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{field: set}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	switch w.kind {
	case deployment:
		_, err = w.cs.AppsV1().Deployments(w.ns).Patch(ctx, w.name, types.MergePatchType, patch, metav1.PatchOptions{})
	case statefulSet:
		_, err = w.cs.AppsV1().StatefulSets(w.ns).Patch(ctx, w.name, types.MergePatchType, patch, metav1.PatchOptions{})
	}
	if err != nil {
		t.Fatalf("patch the %s of %s: %v", field, w, err)
	}
}

// scale sets replicas through the scale subresource, as kubectl scale does.
func (w *workload) scale(t *testing.T, replicas int32) {
	t.Helper()
	ctx := testContext(t)
	err := wait.PollUntilContextTimeout(ctx, pollEvery, settle, true, func(ctx context.Context) (bool, error) {
		var err error
		switch w.kind {
		case deployment:
			var sc *autoscalingv1.Scale
			sc, err = w.cs.AppsV1().Deployments(w.ns).GetScale(ctx, w.name, metav1.GetOptions{})
			if err == nil {
				sc.Spec.Replicas = replicas
				_, err = w.cs.AppsV1().Deployments(w.ns).UpdateScale(ctx, w.name, sc, metav1.UpdateOptions{})
			}
		case statefulSet:
			var sc *autoscalingv1.Scale
			sc, err = w.cs.AppsV1().StatefulSets(w.ns).GetScale(ctx, w.name, metav1.GetOptions{})
			if err == nil {
				sc.Spec.Replicas = replicas
				_, err = w.cs.AppsV1().StatefulSets(w.ns).UpdateScale(ctx, w.name, sc, metav1.UpdateOptions{})
			}
		}
		if apierrors.IsConflict(err) {
			return false, nil // the daemon wrote in between: read again
		}
		return err == nil, err
	})
	if err != nil {
		t.Fatalf("scale %s to %d: %v", w, replicas, err)
	}
}

// waitUntil waits until the workload satisfies ok and returns it.
func (w *workload) waitUntil(t *testing.T, timeout time.Duration, what string, ok func(snapshot) bool) snapshot {
	t.Helper()
	var got snapshot
	waitFor(t, timeout, fmt.Sprintf("%s %s", w, what), func(ctx context.Context) (bool, string, error) {
		s, err := w.get(ctx)
		if err != nil {
			return false, "", err
		}
		got = s
		return ok(s), s.String(), nil
	})
	return got
}

// waitAsleep waits until the daemon has put the workload to sleep and
// checks that it recorded the original count.
func (w *workload) waitAsleep(t *testing.T, original int32) snapshot {
	t.Helper()
	s := w.waitUntil(t, patience, "to be scaled to zero", func(s snapshot) bool { return s.replicas == 0 })
	if got, want := s.annotations[annOriginal], strconv.Itoa(int(original)); got != want {
		t.Fatalf("%s at zero with %s = %q, want %q (%s)", w, annOriginal, got, want, s)
	}
	if _, err := time.Parse(time.RFC3339, s.annotations[annScaledAt]); err != nil {
		t.Fatalf("%s at zero with %s = %q, want an RFC 3339 time (%s)", w, annScaledAt, s.annotations[annScaledAt], s)
	}
	return s
}

// waitAwake waits until the workload has replicas again, checks that it
// woke to exactly want, and waits until the sleep marks are gone.
func (w *workload) waitAwake(t *testing.T, timeout time.Duration, want int32) {
	t.Helper()
	s := w.waitUntil(t, timeout, "to be woken", func(s snapshot) bool { return s.replicas != 0 })
	if s.replicas != want {
		t.Fatalf("%s woke to %d replicas, want %d (%s)", w, s.replicas, want, s)
	}
	s = w.waitUntil(t, settle, "to lose its sleep annotations", func(s snapshot) bool { return !s.marked() })
	if s.replicas != want {
		t.Fatalf("%s has %d replicas after waking, want %d (%s)", w, s.replicas, want, s)
	}
}

// holdStill checks the workload throughout d: ok must hold at every look.
// It fails at once when it does not.
func (w *workload) holdStill(t *testing.T, d time.Duration, what string, ok func(snapshot) error) {
	t.Helper()
	holdEach(t, d, what, map[*workload]func(snapshot) error{w: ok})
}

// holdEach checks several workloads throughout d: each one's check must
// hold at every look. It fails at once when one does not.
func holdEach(t *testing.T, d time.Duration, what string, checks map[*workload]func(snapshot) error) {
	t.Helper()
	hold(t, d, func(ctx context.Context) error {
		for w, ok := range checks {
			s, err := w.get(ctx)
			if err != nil {
				t.Logf("get %s: %v", w, err) // a hiccup, not a move
				continue
			}
			if err := ok(s); err != nil {
				return fmt.Errorf("%s %s: %w (%s)", w, what, err, s)
			}
		}
		return nil
	})
}

// runsUnmarked passes while the workload runs n replicas and carries no
// sleep marks: let go, it stays as it was woken.
func runsUnmarked(n int32) func(snapshot) error {
	return func(s snapshot) error {
		if s.replicas != n || s.marked() {
			return fmt.Errorf("moved: want %d replicas and no sleep marks", n)
		}
		return nil
	}
}

// unchanged passes while the workload is exactly as before: same
// resourceVersion, so nothing at all was written to it.
func unchanged(before snapshot) func(snapshot) error {
	return func(s snapshot) error {
		if s.resourceVersion != before.resourceVersion {
			return fmt.Errorf("was written to (was %s)", before)
		}
		return nil
	}
}

// --- waiting ---

// waitFor polls cond until it reports done, or fails the test after
// timeout. cond also describes what it saw, for the failure message; its
// errors are treated as "not yet" (and described).
func waitFor(t *testing.T, timeout time.Duration, what string, cond func(ctx context.Context) (done bool, seen string, err error)) {
	t.Helper()
	var last string
	err := wait.PollUntilContextTimeout(t.Context(), pollEvery, timeout, true, func(ctx context.Context) (bool, error) {
		done, seen, err := cond(ctx)
		last = seen
		if err != nil {
			last = strings.TrimSpace(seen + " " + err.Error())
		}
		return done && err == nil, nil
	})
	if err != nil {
		t.Fatalf("waited %v for %s: %v; last seen: %s", timeout, what, err, last)
	}
}

// hold calls check every pollEvery for d and fails the test at the first
// error.
func hold(t *testing.T, d time.Duration, check func(ctx context.Context) error) {
	t.Helper()
	began := time.Now()
	for {
		ctx, cancel := context.WithTimeout(t.Context(), settle)
		err := check(ctx)
		cancel()
		if err != nil {
			t.Fatalf("after %v of %v: %v", time.Since(began).Round(time.Millisecond), d, err)
		}
		if time.Since(began) >= d {
			return
		}
		select {
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		case <-time.After(pollEvery):
		}
	}
}

// --- events ---

func listEvents(ctx context.Context, cs kubernetes.Interface, ns, name, reason string) ([]corev1.Event, error) {
	list, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{
		FieldSelector: fields.Set{"involvedObject.name": name, "reason": reason}.String(),
	})
	if err != nil {
		return nil, err
	}
	// Filter again, so that a server ignoring the selector cannot make a
	// test pass.
	var out []corev1.Event
	for _, e := range list.Items {
		if e.InvolvedObject.Name == name && e.Reason == reason {
			out = append(out, e)
		}
	}
	return out, nil
}

// waitForEvent waits for an event with reason on the workload and checks
// its type, its source and that its message contains every one of want.
func (w *workload) waitForEvent(t *testing.T, reason, eventType string, want ...string) corev1.Event {
	t.Helper()
	var got []corev1.Event
	waitFor(t, settle, fmt.Sprintf("a %s event on %s", reason, w), func(ctx context.Context) (bool, string, error) {
		var err error
		got, err = listEvents(ctx, w.cs, w.ns, w.name, reason)
		return len(got) > 0, fmt.Sprintf("%d events", len(got)), err
	})
	e := got[len(got)-1]
	if e.Type != eventType {
		t.Errorf("%s event on %s has type %s, want %s: %q", reason, w, e.Type, eventType, e.Message)
	}
	if e.InvolvedObject.Kind != string(w.kind) {
		t.Errorf("%s event is about a %s, want %s", reason, e.InvolvedObject.Kind, w.kind)
	}
	if e.Source.Component != "zeroscaler" && e.ReportingController != "zeroscaler" {
		t.Errorf("%s event on %s comes from %q, want zeroscaler", reason, w, e.Source.Component)
	}
	for _, s := range want {
		if !strings.Contains(e.Message, s) {
			t.Errorf("%s event on %s says %q, want it to mention %q", reason, w, e.Message, s)
		}
	}
	return e
}

// countEvents returns how many events with reason exist on the workload,
// adding up repeats the recorder folded into one.
func (w *workload) countEvents(t *testing.T, reason string) int {
	t.Helper()
	events, err := listEvents(testContext(t), w.cs, w.ns, w.name, reason)
	if err != nil {
		t.Fatalf("list events: %v", err)
	}
	n := 0
	for _, e := range events {
		n += int(max(e.Count, 1))
	}
	return n
}

func str(s string) *string { return &s }
