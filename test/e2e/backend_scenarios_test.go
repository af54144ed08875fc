//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"regexp"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/zeroscaler/zeroscaler/test/localstack"
)

// README rule 3: a query that returns more than one series is a
// configuration error, on every backend. An awake workload is never scaled
// down and gets a Warning InvalidScalingConfig naming its query annotation;
// a sleeping workload whose query starts returning a second series is woken
// to its count.
func TestScenarioSeveralSeries(t *testing.T) {
	t.Parallel()
	forEachBackend(t, testSeveralSeries)
}

func testSeveralSeries(t *testing.T, b *backend) {
	cs := clientset(t)
	ns := newNamespace(t, cs)
	matching := func(prefix string) string {
		return fmt.Sprintf("%s{%s=~%q}", localstack.ExporterMetric, localstack.ExporterLabel, regexp.QuoteMeta(prefix)+".*")
	}
	b.setMetric(t, ns+"/many-a", 0)
	b.setMetric(t, ns+"/many-b", 0)
	b.setMetric(t, ns+"/sleeper-1", 0) // a second one comes while it sleeps
	many := createWorkload(t, cs, deployment, ns, "many", 2, annotations(matching(ns+"/many-")))
	manyBefore := many.mustGet(t)
	sleeper := createWorkload(t, cs, statefulSet, ns, "sleeper", 3, annotations(matching(ns+"/sleeper-")))

	began := time.Now()
	b.startDaemon(t, "zeroscaler", ns)
	sleeper.waitAsleep(t, 3)
	many.waitForEvent(t, reasonInvalidConfig, corev1.EventTypeWarning, annQuery, "more than one series")

	b.setMetric(t, ns+"/sleeper-2", 0)
	sleeper.waitAwake(t, settle, 3)
	sleeper.waitForEvent(t, reasonWokeOnError, corev1.EventTypeWarning, "0 → 3")
	sleeper.waitForEvent(t, reasonInvalidConfig, corev1.EventTypeWarning, annQuery, "more than one series")
	// Both queries are idle, but neither workload is ever scaled down.
	holdEach(t, remaining(began), "with a query returning two series", map[*workload]func(snapshot) error{
		many: unchanged(manyBefore), sleeper: runsUnmarked(3),
	})
}

// Issue 9, item 7: the health gate works with a backend's own default
// settings. Each backend of the matrix gets a twin run with no global
// section at all (Prometheus: the default 1m evaluation_interval, which a
// subquery without a step would use; VictoriaMetrics: its default 30s
// latency offset), each job scraped every 5s. A workload with a 30s
// cooldown must sleep within the cooldown plus two polling intervals of
// its metric going idle, every time, over three cycles of sleep and wake.
//
// Without the health query's explicit step, Prometheus answers it with
// nothing whenever the check falls in the second half of a minute, and
// VictoriaMetrics always: the first cycle is timed so that its sleep
// decision falls there.
func TestScenarioDefaultSettings(t *testing.T) {
	t.Parallel()
	forEachBackend(t, testDefaultSettings)
}

func testDefaultSettings(t *testing.T, b *backend) {
	const (
		cool   = 30 * time.Second
		poll   = 5 * time.Second
		scrape = 5 * time.Second
		cycles = 3
		// observed bounds how much later the test can see a sleep than
		// the daemon wrote it (it looks every pollEvery).
		observed = time.Second
		within   = cool + 2*poll + observed
		// wait bounds a wait for the twin to show a new value: a scrape,
		// plus VictoriaMetrics' 30s latency offset.
		wait = patience
	)
	ctx, cancel := context.WithTimeout(t.Context(), patience)
	m, err := stack.StartMetrics(ctx, localstack.MetricsOptions{Backend: b.Backend, DefaultSettings: true, ScrapeInterval: scrape})
	cancel()
	if err != nil {
		t.Fatalf("start %s with its default settings: %v", b.name(), err)
	}
	t.Cleanup(func() {
		if err := m.Stop(); err != nil {
			t.Errorf("stop %s: %v", b.name(), err)
		}
	})
	twin := &backend{MetricsServer: m}

	cs := clientset(t)
	ns := newNamespace(t, cs)
	series := ns + "/web"
	query := stack.Exporter.Query(series)
	twin.setMetricWithin(t, wait, series, 5)
	w := createWorkload(t, cs, deployment, ns, "web", 3,
		annotations(query, annCooldown, cool.String(), annPolling, poll.String()))
	twin.startDaemon(t, "zeroscaler", ns)

	for cycle := 1; cycle <= cycles; cycle++ {
		if cycle == 1 {
			// The idle value shows within about a scrape; the decision
			// comes a cooldown and up to a polling interval later.
			secondHalfAhead(t, scrape/2+cool+poll/2)
		}
		twin.setMetricWithin(t, wait, series, 0)
		idle := time.Now()
		s := w.waitUntil(t, within, fmt.Sprintf("to sleep within %v of its metric going idle (cycle %d)", within, cycle),
			func(s snapshot) bool { return s.replicas == 0 })
		if got := s.annotations[annOriginal]; got != "3" {
			t.Fatalf("%s at zero with %s = %q, want 3 (%s)", w, annOriginal, got, s)
		}
		t.Logf("cycle %d: asleep %v after its metric went idle, at second %d of the minute",
			cycle, time.Since(idle).Round(100*time.Millisecond), time.Now().Second())
		twin.setMetricWithin(t, wait, series, 5)
		w.waitAwake(t, settle, 3)
	}
	if n := w.countEvents(t, reasonScaledToZero); n != cycles {
		t.Errorf("%s has %d %s events after %d cycles, want %d", w, n, reasonScaledToZero, cycles, cycles)
	}
}

// secondHalfAhead waits until the moment ahead from now falls between
// seconds 36 and 40 of a minute: well inside the half in which a subquery
// without a step, at a 1m evaluation_interval, has no point in a window
// under a minute.
func secondHalfAhead(t *testing.T, ahead time.Duration) {
	t.Helper()
	for {
		if s := time.Now().Add(ahead).Second(); s >= 36 && s < 40 {
			return
		}
		select {
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
