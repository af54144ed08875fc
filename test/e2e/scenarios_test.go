//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// The end-to-end scenarios of issue 3. Each runs the real daemon binary
// against the shared API server and Prometheus, in a namespace of its own,
// with series of its own. All but the Prometheus outage run in parallel.

// Scenarios 1–3: an idle workload is scaled to zero after its cooldown with
// its count recorded, and woken to exactly that count when its metric rises.
func TestScenarioSleepAndWake(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) { testSleepAndWake(t, b) })
}

func testSleepAndWake(t *testing.T, b *backend) {
	for _, k := range []kind{deployment, statefulSet} {
		t.Run(string(k), func(t *testing.T) {
			t.Parallel()
			cs := clientset(t)
			ns := newNamespace(t, cs)
			series := ns + "/web"
			query := stack.Exporter.Query(series)
			b.setMetric(t, series, 0)
			w := createWorkload(t, cs, k, ns, "web", 3, annotations(query))

			began := time.Now()
			b.startDaemon(t, "zeroscaler", ns)
			s := w.waitAsleep(t, 3)
			if took := time.Since(began); took < cooldown {
				t.Errorf("%s scaled to zero %v after the daemon started, before its %v cooldown", w, took, cooldown)
			}
			at, _ := time.Parse(time.RFC3339, s.annotations[annScaledAt])
			if earliest := began.Add(cooldown).Truncate(time.Second); at.Before(earliest) {
				t.Errorf("%s = %s, before the cooldown could have passed (%s)", annScaledAt, at, earliest.UTC())
			}
			w.waitForEvent(t, reasonScaledToZero, corev1.EventTypeNormal, query+" = 0 < 1")

			b.setMetric(t, series, 5)
			w.waitAwake(t, settle, 3)
			w.waitForEvent(t, reasonScaledFromZero, corev1.EventTypeNormal, query+" = 5 >= 1")
			w.holdStill(t, 3*polling, "while its metric is active", func(s snapshot) error {
				if s.replicas != 3 || s.marked() {
					return errors.New("moved")
				}
				return nil
			})
		})
	}
}

// Scenario 4: while Prometheus is down, an idle awake workload is not
// scaled down however long the outage lasts, and a sleeping one is woken.
// Not parallel: it stops each backend, the stack's own included, that other
// tests share; the backends' subtests run in parallel, each stopping only
// its own.
func TestScenarioPrometheusOutage(t *testing.T) {
	forEachBackend(t, testPrometheusOutage)
}

func testPrometheusOutage(t *testing.T, b *backend) {
	cs := clientset(t)
	ns := newNamespace(t, cs)
	// Long enough that stopping Prometheus surely happens within the idle
	// workload's cooldown.
	const idleCooldown = 8 * time.Second
	idleSeries, sleeperSeries := ns+"/idle", ns+"/sleeper"
	b.setMetric(t, sleeperSeries, 0)
	b.setMetric(t, idleSeries, 5) // active until the other one sleeps
	sleeper := createWorkload(t, cs, deployment, ns, "sleeper", 3, annotations(stack.Exporter.Query(sleeperSeries)))
	idle := createWorkload(t, cs, deployment, ns, "idle", 2,
		annotations(stack.Exporter.Query(idleSeries), annCooldown, idleCooldown.String()))
	d := b.startDaemon(t, "zeroscaler", ns)
	sleeper.waitAsleep(t, 3)

	// Make the second workload idle, and stop Prometheus as soon as the
	// daemon has seen it idle: it is cooling down, awake.
	b.setMetric(t, idleSeries, 0)
	d.waitForState(t, "idle", 1)
	seenIdle := time.Now()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), patience)
		defer cancel()
		if err := b.Start(ctx); err != nil {
			t.Errorf("restart prometheus: %v", err)
		}
	})
	if err := b.Stop(); err != nil {
		t.Fatalf("stop prometheus: %v", err)
	}
	outageBegan := time.Now()
	if took := outageBegan.Sub(seenIdle); took > idleCooldown/2 {
		t.Fatalf("stopping prometheus took %v, too close to the %v cooldown for this test to mean anything", took, idleCooldown)
	}
	before := idle.mustGet(t)
	if before.replicas != 2 || before.marked() {
		t.Fatalf("%s is not awake when the outage begins: %s", idle, before)
	}
	failed := func() float64 {
		return d.mustMetric(t, "zeroscaler_prometheus_queries_total", func(l map[string]string) bool {
			return l["result"] != "ok" && l["result"] != "no_data"
		})
	}
	failedBefore, checksBefore := failed(), d.checks(t)

	// The sleeping workload is woken, to its recorded count.
	sleeper.waitAwake(t, settle, 3)
	sleeper.waitForEvent(t, reasonWokeOnError, corev1.EventTypeWarning, "0 → 3")

	// The idle one is not touched at all, for several cooldowns.
	outage := quietPeriod(idleCooldown, polling)
	idle.holdStill(t, outage-time.Since(outageBegan), "during the prometheus outage", unchanged(before))
	idle.waitForEvent(t, reasonMetricUnavailable, corev1.EventTypeWarning)
	// Both workloads were checked all along, and Prometheus was asked. (At
	// a 1s polling interval the daemon reuses an answer for a second
	// check, so there are fewer queries than checks.)
	if n, want := d.checks(t)-checksBefore, 2*outage.Seconds()/polling.Seconds()/2; n < want {
		t.Errorf("the daemon ran %v checks of 2 workloads during a %v outage, want at least %v", n, outage, want)
	}
	if n := failed() - failedBefore; n < 2 {
		t.Errorf("the daemon sent %v failing queries during a %v outage: did it ask at all?", n, outage)
	}

	ctx, cancel := context.WithTimeout(t.Context(), patience)
	defer cancel()
	if err := b.Start(ctx); err != nil {
		t.Fatalf("restart prometheus: %v", err)
	}
	t.Logf("prometheus was down for %v", time.Since(outageBegan).Round(time.Millisecond))
	// With Prometheus back, the idle workload sleeps after its cooldown:
	// only the outage held it.
	idle.waitAsleep(t, 2)
}

// Scenario 5: a query that returns nothing is "unknown": an awake workload
// is not scaled down and a sleeping one is not woken.
func TestScenarioEmptyResult(t *testing.T) {
	t.Parallel()
	forEachBackend(t, testEmptyResult)
}

func testEmptyResult(t *testing.T, b *backend) {
	cs := clientset(t)
	ns := newNamespace(t, cs)
	quietSeries, sleeperSeries := ns+"/quiet", ns+"/sleeper" // quietSeries is not set: its query returns nothing
	b.setMetric(t, sleeperSeries, 0)
	quiet := createWorkload(t, cs, deployment, ns, "quiet", 2, annotations(stack.Exporter.Query(quietSeries)))
	sleeper := createWorkload(t, cs, statefulSet, ns, "sleeper", 3, annotations(stack.Exporter.Query(sleeperSeries)))
	d := b.startDaemon(t, "zeroscaler", ns)
	sleeper.waitAsleep(t, 3)
	b.deleteMetric(t, sleeperSeries)

	quiet.waitForEvent(t, reasonMetricUnavailable, corev1.EventTypeWarning)
	sleeper.waitForEvent(t, reasonMetricUnavailable, corev1.EventTypeWarning)
	quietBefore, sleeperBefore := quiet.mustGet(t), sleeper.mustGet(t)
	if quietBefore.replicas != 2 || quietBefore.marked() {
		t.Fatalf("%s moved before the quiet period: %s", quiet, quietBefore)
	}
	if !sleeperBefore.asleep() {
		t.Fatalf("%s moved before the quiet period: %s", sleeper, sleeperBefore)
	}
	noData := func() float64 {
		return d.mustMetric(t, "zeroscaler_prometheus_queries_total", label("result", "no_data"))
	}
	noDataBefore, checksBefore := noData(), d.checks(t)

	period := quietPeriod(cooldown, polling)
	holdEach(t, period, "with no data", map[*workload]func(snapshot) error{
		quiet: unchanged(quietBefore), sleeper: unchanged(sleeperBefore),
	})
	// Both workloads were checked all along, on empty answers.
	if n, want := d.checks(t)-checksBefore, 2*period.Seconds()/polling.Seconds()/2; n < want {
		t.Errorf("the daemon ran %v checks of 2 workloads in %v, want at least %v", n, period, want)
	}
	if n := noData() - noDataBefore; n < 2 {
		t.Errorf("the daemon got %v empty answers in %v: did it ask at all?", n, period)
	}

	// Once there is data, both move: the sleeper wakes, the quiet one
	// sleeps.
	b.setMetric(t, sleeperSeries, 5)
	b.setMetric(t, quietSeries, 0)
	sleeper.waitAwake(t, settle, 3)
	quiet.waitAsleep(t, 2)
}

// Scenario 6: a workload with an invalid annotation gets a Warning event
// naming it and is left alone; a valid workload beside it is still scaled;
// a broken workload that was asleep is woken.
func TestScenarioInvalidAnnotations(t *testing.T) {
	t.Parallel()
	cs := clientset(t)
	ns := newNamespace(t, cs)
	series := ns + "/idle"
	query := stack.Exporter.Query(series)
	setMetric(t, series, 0)

	broken := []struct{ name, annotation, value string }{
		{"bad-threshold", annThreshold, "lots"},
		{"short-cooldown", annCooldown, "500ms"},
		{"bad-polling", annPolling, "often"},
		{"bad-min-replicas", "zeroscaler.io/min-replicas", "0"},
		{"bad-paused", annPaused, "maybe"},
		{"empty-query", annQuery, " "},
		{"bad-headers", "zeroscaler.io/headers", "X-Scope-OrgID"},
		{"foreign-server", "zeroscaler.io/server-address", "http://prometheus.invalid:9090"},
	}
	type brokenWorkload struct {
		*workload
		annotation string
		before     snapshot
	}
	var all []brokenWorkload
	for _, b := range broken {
		w := createWorkload(t, cs, deployment, ns, b.name, 2, annotations(query, b.annotation, b.value))
		all = append(all, brokenWorkload{workload: w, annotation: b.annotation, before: w.mustGet(t)})
	}
	// A workload the daemon had put to sleep whose annotations then broke.
	brokenSleeper := createWorkload(t, cs, deployment, ns, "broken-sleeper", 0, annotations(query,
		annThreshold, "lots", annOriginal, "2", annScaledAt, time.Now().UTC().Format(time.RFC3339)))
	valid := createWorkload(t, cs, deployment, ns, "valid", 3, annotations(query))

	began := time.Now()
	d := startDaemon(t, "zeroscaler", ns)
	for _, w := range all {
		w.waitForEvent(t, reasonInvalidConfig, corev1.EventTypeWarning, w.annotation)
	}
	valid.waitAsleep(t, 3)
	valid.waitForEvent(t, reasonScaledToZero, corev1.EventTypeNormal)
	brokenSleeper.waitAwake(t, settle, 2)
	brokenSleeper.waitForEvent(t, reasonInvalidConfig, corev1.EventTypeWarning, annThreshold)
	brokenSleeper.waitForEvent(t, reasonScaledFromZero, corev1.EventTypeNormal)

	// The broken ones stay as they were, while the same metric put the
	// valid one to sleep.
	checks := map[*workload]func(snapshot) error{}
	for _, w := range all {
		unchangedBefore := unchanged(w.before)
		checks[w.workload] = func(s snapshot) error {
			if err := unchangedBefore(s); err != nil {
				return fmt.Errorf("%s: %w", w.annotation, err)
			}
			return nil
		}
	}
	holdEach(t, remaining(began), "with an invalid annotation", checks)

	// One log line per broken workload names the annotation.
	for _, w := range append(all, brokenWorkload{workload: brokenSleeper, annotation: annThreshold}) {
		var lines []string
		for _, l := range logLines(d.Output()) {
			if l["name"] == w.name && l["level"] == "error" {
				lines = append(lines, fmt.Sprint(l["msg"], ": ", l["error"]))
			}
		}
		if len(lines) != 1 || !strings.Contains(lines[0], w.annotation) {
			t.Errorf("%s: want one error log line naming %s, got %q", w, w.annotation, lines)
		}
	}
}

// Scenario 7: the daemon is killed with SIGKILL right after putting a
// workload to sleep; a new daemon still wakes it to its original count.
func TestScenarioCrashAfterSleep(t *testing.T) {
	t.Parallel()
	cs := clientset(t)
	ns := newNamespace(t, cs)
	series := ns + "/web"
	setMetric(t, series, 0)
	w := createWorkload(t, cs, deployment, ns, "web", 4, annotations(stack.Exporter.Query(series)))
	first := startDaemon(t, "first", ns)

	// Look often, to kill it as soon as the replicas are at zero.
	var last snapshot
	err := wait.PollUntilContextTimeout(t.Context(), 20*time.Millisecond, patience, true, func(ctx context.Context) (bool, error) {
		s, err := w.get(ctx)
		if err != nil {
			return false, nil
		}
		last = s
		return s.replicas == 0, nil
	})
	if err != nil {
		t.Fatalf("waiting for %s to sleep: %v; last seen: %s", w, err, last)
	}
	first.kill(t)
	t.Logf("killed the first daemon; the workload was %s", last)
	if s := w.mustGet(t); !s.asleep() || s.annotations[annOriginal] != "4" {
		t.Fatalf("after the crash %s is %s, want asleep with %s=4", w, s, annOriginal)
	}

	second := startDaemon(t, "second", ns)
	second.waitForState(t, "asleep", 1)
	w.holdStill(t, 3*polling, "while its metric stays idle", func(s snapshot) error {
		if !s.asleep() || s.annotations[annOriginal] != "4" {
			return errors.New("is no longer asleep with its count")
		}
		return nil
	})
	setMetric(t, series, 5)
	w.waitAwake(t, settle, 4)
	w.waitForEvent(t, reasonScaledFromZero, corev1.EventTypeNormal, "0 → 4")
}

// Scenario 8: with --watch-namespace, workloads in other namespaces are
// never touched, even with the same annotations and metric.
func TestScenarioWatchNamespace(t *testing.T) {
	t.Parallel()
	cs := clientset(t)
	nsA, nsB := newNamespace(t, cs), newNamespace(t, cs)
	series := nsA + "/web"
	setMetric(t, series, 0)
	ann := annotations(stack.Exporter.Query(series))
	watched := createWorkload(t, cs, deployment, nsA, "web", 3, ann)
	others := []*workload{
		createWorkload(t, cs, deployment, nsB, "web", 3, ann),
		createWorkload(t, cs, statefulSet, nsB, "db", 3, ann),
	}
	before := map[*workload]snapshot{}
	for _, w := range others {
		before[w] = w.mustGet(t)
	}

	began := time.Now()
	d := startDaemon(t, "zeroscaler", nsA)
	watched.waitAsleep(t, 3)
	checks := map[*workload]func(snapshot) error{}
	for _, w := range others {
		checks[w] = unchanged(before[w])
	}
	holdEach(t, remaining(began), "outside the watched namespace", checks)
	events, err := cs.CoreV1().Events(nsB).List(testContext(t), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events.Items {
		t.Errorf("event in the unwatched namespace: %s %s/%s: %s", e.Reason, e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Message)
	}
	if n := d.mustMetric(t, "zeroscaler_workloads", nil); n != 1 {
		t.Errorf("the daemon runs %v workload loops, want 1 (only %s)", n, watched)
	}
}

// Scenario 9: removing the annotations from a sleeping workload wakes it to
// its original count and lets it go; `paused: "true"` freezes a workload,
// awake or asleep.
func TestScenarioReleaseAndPause(t *testing.T) {
	t.Parallel()
	t.Run("released", func(t *testing.T) {
		t.Parallel()
		cs := clientset(t)
		ns := newNamespace(t, cs)
		q1, q2 := ns+"/unquery", ns+"/unannotate"
		setMetric(t, q1, 0)
		setMetric(t, q2, 0)
		// min-replicas differs from the original count, so that waking to
		// it instead would show.
		unquery := createWorkload(t, cs, deployment, ns, "unquery", 3,
			annotations(stack.Exporter.Query(q1), "zeroscaler.io/min-replicas", "1"))
		unannotate := createWorkload(t, cs, statefulSet, ns, "unannotate", 3, annotations(stack.Exporter.Query(q2)))
		startDaemon(t, "zeroscaler", ns)
		unquery.waitAsleep(t, 3)
		unannotate.waitAsleep(t, 3)

		unquery.annotate(t, map[string]*string{annQuery: nil})
		all := map[string]*string{}
		for k := range unannotate.mustGet(t).annotations {
			all[k] = nil // the daemon's own included, as `kubectl annotate zeroscaler.io/...-` would
		}
		unannotate.annotate(t, all)

		for _, w := range []*workload{unquery, unannotate} {
			w.waitAwake(t, settle, 3)
			w.waitForEvent(t, reasonScaledFromZero, corev1.EventTypeNormal)
		}
		// Let go: though its metric is still idle, neither sleeps again.
		holdEach(t, quietPeriod(cooldown, polling), "was let go but", map[*workload]func(snapshot) error{
			unquery: runsUnmarked(3), unannotate: runsUnmarked(3),
		})
	})

	t.Run("paused", func(t *testing.T) {
		t.Parallel()
		cs := clientset(t)
		ns := newNamespace(t, cs)
		awakeSeries, asleepSeries := ns+"/awake", ns+"/asleep"
		setMetric(t, awakeSeries, 0)
		setMetric(t, asleepSeries, 0)
		awake := createWorkload(t, cs, deployment, ns, "frozen-awake", 3,
			annotations(stack.Exporter.Query(awakeSeries), annPaused, "true"))
		asleep := createWorkload(t, cs, statefulSet, ns, "frozen-asleep", 3, annotations(stack.Exporter.Query(asleepSeries)))
		d := startDaemon(t, "zeroscaler", ns)
		asleep.waitAsleep(t, 3)
		asleep.annotate(t, map[string]*string{annPaused: str("true")})
		d.waitForState(t, "paused", 2)
		// Now the sleeping one's metric says wake, the awake one's says
		// sleep: neither may move.
		setMetric(t, asleepSeries, 5)
		awakeBefore, asleepBefore := awake.mustGet(t), asleep.mustGet(t)
		holdEach(t, quietPeriod(cooldown, polling), "while paused", map[*workload]func(snapshot) error{
			awake: unchanged(awakeBefore), asleep: unchanged(asleepBefore),
		})
		d.waitForState(t, "paused", 2)

		// Unpaused, each does what its metric says.
		awake.annotate(t, map[string]*string{annPaused: str("false")})
		asleep.annotate(t, map[string]*string{annPaused: nil})
		asleep.waitAwake(t, settle, 3)
		awake.waitAsleep(t, 3)
	})
}

// A sleeping workload relabelled out of the daemon's --selector looks
// deleted to the daemon's informers; it is woken to its original count and
// let go, as when its annotations are removed.
func TestScenarioRelabelledWhileAsleep(t *testing.T) {
	t.Parallel()
	cs := clientset(t)
	ns := newNamespace(t, cs)
	series := ns + "/relabelled"
	setMetric(t, series, 0)
	w := createWorkload(t, cs, statefulSet, ns, "relabelled", 3, annotations(stack.Exporter.Query(series)))
	w.label(t, map[string]*string{"zeroscaler-e2e/shard": str("a")})
	startDaemon(t, "zeroscaler", ns, "--selector", "zeroscaler-e2e/shard=a")
	w.waitAsleep(t, 3)

	w.label(t, map[string]*string{"zeroscaler-e2e/shard": str("b")})
	w.waitAwake(t, settle, 3)
	w.waitForEvent(t, reasonScaledFromZero, corev1.EventTypeNormal)
	// Let go: though its metric is still idle, it does not sleep again.
	w.holdStill(t, quietPeriod(cooldown, polling), "left the selector but", runsUnmarked(3))
}

// Scenario 10: someone scales a sleeping workload to 2 by hand: it stays
// at 2, its sleep annotations are cleared, and a full cooldown must pass
// from that moment before it is scaled to zero again.
func TestScenarioManualScaleUp(t *testing.T) {
	t.Parallel()
	cs := clientset(t)
	ns := newNamespace(t, cs)
	const cd = 6 * time.Second
	series := ns + "/web"
	setMetric(t, series, 0)
	w := createWorkload(t, cs, deployment, ns, "web", 3, annotations(stack.Exporter.Query(series), annCooldown, cd.String()))
	startDaemon(t, "zeroscaler", ns)
	w.waitAsleep(t, 3)

	scaledUp := time.Now()
	w.scale(t, 2)
	s := w.waitUntil(t, settle, "to lose its sleep annotations", func(s snapshot) bool { return !s.marked() })
	if s.replicas != 2 {
		t.Fatalf("%s has %d replicas after being scaled to 2 by hand: %s", w, s.replicas, s)
	}
	// The metric is still idle, but the cooldown started again at the
	// scale-up: until it is nearly over, nothing moves.
	w.holdStill(t, time.Until(scaledUp.Add(cd-time.Second)), "within the cooldown after the scale-up", func(s snapshot) error {
		if s.replicas != 2 || s.marked() {
			return errors.New("moved")
		}
		return nil
	})
	s = w.waitAsleep(t, 2)
	at, _ := time.Parse(time.RFC3339, s.annotations[annScaledAt])
	if earliest := scaledUp.Add(cd).Truncate(time.Second); at.Before(earliest) {
		t.Errorf("%s = %s: scaled to zero again before a full cooldown from the scale-up (%s)", annScaledAt, at, earliest.UTC())
	}
	if n := w.countEvents(t, reasonScaledToZero); n != 2 {
		t.Errorf("%s has %d %s events, want 2", w, n, reasonScaledToZero)
	}
}

// logLines decodes the daemon's JSON log lines, skipping any other output.
func logLines(out string) []map[string]any {
	var lines []map[string]any
	for _, line := range strings.Split(out, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			lines = append(lines, m)
		}
	}
	return lines
}
