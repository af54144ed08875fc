//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
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
	const (
		poll  = 4 * time.Second
		cool  = 6 * time.Second
		burst = 2 * time.Second // < poll; Prometheus scrapes every second
	)
	cs := clientset(t)
	ns := newNamespace(t, cs)
	series := ns + "/web"
	query := stack.Exporter.Query(series)
	b.setMetric(t, series, 0)
	w := createWorkload(t, cs, deployment, ns, "web", 3,
		annotations(query, annPolling, poll.String(), annCooldown, cool.String()))
	d := b.startDaemon(t, "zeroscaler", ns)

	// The first idle reading starts the stretch; right after the next
	// check, a burst that ends before the check after it.
	d.waitForState(t, "idle", 1)
	first := d.checks(t)
	waitFor(t, settle, "the second check", func(ctx context.Context) (bool, string, error) {
		n := d.checks(t)
		return n > first, fmt.Sprintf("%v checks", n), nil
	})
	b.setMetric(t, series, 5)
	time.Sleep(burst)
	b.setMetric(t, series, 0)
	burstEnded := time.Now()

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
}
