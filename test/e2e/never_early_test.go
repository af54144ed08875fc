//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Issue 13, item 1: a burst of traffic shorter than one polling interval,
// between two checks and inside the cooldown window, keeps the workload
// awake. The daemon's own readings never see it; Prometheus does, and the
// confirmation query over the window asks it before any sleep.
func TestScenarioBurstBetweenChecksKeepsItAwake(t *testing.T) {
	t.Parallel()
	forEachBackend(t, testBurstBetweenChecks)
}

func testBurstBetweenChecks(t *testing.T, b *backend) {
	// poll < cool <= 2*poll: the stretch is short of the cooldown at the
	// second check and reaches it at the third, which must ask the
	// confirmation. The burst lasts as long as the backend takes to show 5,
	// then 1s, then as long as it takes to show 0 (a few seconds on
	// VictoriaMetrics, whose answers lag by its latency offset): well
	// under poll, with room for a slow machine.
	const (
		poll = 10 * time.Second
		cool = 15 * time.Second
		hold = time.Second // Prometheus scrapes every second
	)
	cs := clientset(t)
	ns := newNamespace(t, cs)
	series := ns + "/web"
	query := stack.Exporter.Query(series)
	b.setMetric(t, series, 0)
	w := createWorkload(t, cs, deployment, ns, "web", 3,
		annotations(query, annPolling, poll.String(), annCooldown, cool.String()))
	d := b.startDaemon(t, "zeroscaler", ns)

	// The daemon watches this namespace only: its checks are this
	// workload's. The first reads the metric idle and starts the stretch;
	// the burst goes right after the second starts, and must be over,
	// as the backend answers, before the third starts.
	var afterSecond float64
	waitFor(t, settle+poll, "the second check", func(ctx context.Context) (bool, string, error) {
		afterSecond = d.checks(t)
		return afterSecond >= 2, fmt.Sprintf("%v checks", afterSecond), nil
	})
	if afterSecond != 2 {
		t.Fatalf("saw %v checks, not the second one: the burst cannot be placed between two checks", afterSecond)
	}
	began := time.Now()
	b.setMetric(t, series, 5)
	time.Sleep(hold)
	b.setMetric(t, series, 0)
	burstEnded := time.Now()
	if n := d.checks(t); n != afterSecond {
		t.Fatalf("the burst (%v, as the backend answers) overran the polling interval: %v checks when it ended, want %v", burstEnded.Sub(began).Round(time.Millisecond), n, afterSecond)
	}
	t.Logf("burst of %v (from setting 5 until %s answers 0), polling interval %v", burstEnded.Sub(began).Round(time.Millisecond), b.name(), poll)

	// The stretch seen by the daemon reaches the cooldown at the next
	// check; the window then holds the burst, so it must not sleep before
	// the burst has left the window.
	w.holdStill(t, time.Until(burstEnded.Add(cool)), "while the burst is inside its cooldown window", func(s snapshot) error {
		if s.replicas != 3 || s.marked() {
			return errors.New("scaled down with a burst inside the cooldown window")
		}
		return nil
	})
	w.waitAsleep(t, 3)
	w.waitForEvent(t, reasonScaledToZero, corev1.EventTypeNormal, query+" = 0 < 1")
	// The confirmation, not a reading of the daemon's own, kept it awake:
	// no check read the burst (that would have ended the stretch without
	// asking), and the one that reached the cooldown was told by the
	// window.
	if out := d.Output(); !strings.Contains(out, "not for the whole cooldown window") {
		t.Errorf("the daemon never logged that the confirmation saw the burst: its own readings saw it, and this scenario proved only the first layer")
	}
}
