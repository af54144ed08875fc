package handler

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	ktesting "k8s.io/client-go/testing"

	"github.com/zeroscaler/zeroscaler/scaler"
)

// The writes the daemon makes, as the fake world logs them: each is one
// merge patch of the workload.
func sleepWrite(name string, from int32, stamp string) string {
	return fmt.Sprintf("patch %s replicas=0 original-replicas=%d scaled-to-zero-at=%s", name, from, stamp)
}

func wakeWrite(name string, to int32) string {
	return fmt.Sprintf("patch %s replicas=%d -original-replicas -scaled-to-zero-at", name, to)
}

func clearWrite(name string) string {
	return "patch " + name + " -original-replicas -scaled-to-zero-at"
}

// replicasAsleep reads zeroscaler_replicas_asleep.
func (hs *harness) replicasAsleep() float64 {
	hs.t.Helper()
	var m dto.Metric
	if err := hs.metrics.replicasAsleep.Write(&m); err != nil {
		hs.t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

// wakes reads zeroscaler_wakes_total{cause=cause}.
func (hs *harness) wakes(cause string) float64 {
	hs.t.Helper()
	return counter(hs.t, hs.metrics.wakes.WithLabelValues(cause))
}

// wantWakes checks zeroscaler_wakes_total for every cause: want counts the
// causes expected, every other cause must be 0.
func (hs *harness) wantWakes(when string, want map[string]float64) {
	hs.t.Helper()
	for _, cause := range []string{wakeByMetric, wakeByError, wakeByPerson, wakeByReleased, wakeBySchedule, wakeByGroup} {
		if got := hs.wakes(cause); got != want[cause] {
			hs.t.Errorf("%s: zeroscaler_wakes_total{cause=%q} = %v, want %v", when, cause, got, want[cause])
		}
	}
}

// checksRun counts the checks the loops have run (one loop-lag sample
// each), to tell a check that chose to do nothing from one that never ran.
func (hs *harness) checksRun() uint64 {
	hs.t.Helper()
	var m dto.Metric
	if err := hs.metrics.loopLag.Write(&m); err != nil {
		hs.t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}

var cannotConfirm = reading{err: fmt.Errorf("confirm q: %w", scaler.ErrCannotConfirm)}

// Behaviour 1: to zero only after the loop itself has read the metric idle
// for a whole cooldown, Prometheus saw its targets up and confirmed the
// window idle; the original count and the zero go in one write.
func TestScaleToZeroAfterCooldown(t *testing.T) {
	tests := []struct {
		name       string
		readings   []reading // one per check
		healthy    bool
		healthyErr error
		// confirms are the answers to ConfirmIdle from the given check
		// (1-based) on; before the first, it confirms idle.
		confirms map[int]reading
		// sleepAt is the check (1-based) that scales to zero; 0: none.
		sleepAt int
		// idleFor is the stretch the ScaledToZero event tells; 30s if empty.
		idleFor string
	}{
		// The stretch starts at the first idle reading (check 1), so the
		// cooldown of 3 periods has passed at check 4, not at check 3.
		{name: "idle for the whole cooldown", readings: []reading{idle, idle, idle, idle}, healthy: true, sleepAt: 4},
		{name: "idle for less than the cooldown", readings: []reading{idle, idle, idle}, healthy: true},
		{name: "active reading restarts the cooldown", readings: []reading{idle, active, idle, idle, idle, idle}, healthy: true, sleepAt: 6},
		{name: "active reading just before the cooldown ends", readings: []reading{idle, idle, idle, active, idle, idle, idle}, healthy: true},
		{name: "no data restarts the cooldown", readings: []reading{idle, idle, noData, idle, idle, idle, idle}, healthy: true, sleepAt: 7},
		{name: "Prometheus error restarts the cooldown", readings: []reading{idle, promDown, idle, idle, idle, idle}, healthy: true, sleepAt: 6},
		{name: "several series restart the cooldown", readings: []reading{idle, multiple, idle, idle, idle, idle}, healthy: true, sleepAt: 6},
		{name: "value equal to the threshold is active", readings: []reading{idle, {value: 1}, idle, idle, idle, idle}, healthy: true, sleepAt: 6},
		{name: "targets not up for the whole window", readings: []reading{idle, idle, idle, idle, idle, idle}, healthy: false},
		{name: "health query fails", readings: []reading{idle, idle, idle, idle, idle}, healthy: false, healthyErr: errors.New("connection refused")},
		{
			// A burst between two checks: the confirmation over the window
			// saw it, so the stretch starts again at check 4.
			name: "confirmation saw a burst: the cooldown starts again", healthy: true,
			readings: []reading{idle, idle, idle, idle, idle, idle, idle},
			confirms: map[int]reading{4: active, 5: idle}, sleepAt: 7,
		},
		{
			name: "confirmation equal to the threshold is active", healthy: true,
			readings: []reading{idle, idle, idle, idle, idle, idle},
			confirms: map[int]reading{4: {value: 1}},
		},
		{
			// Not known is not idle, but the stretch seen so far stands.
			name: "confirmation fails: awake, the stretch kept", healthy: true,
			readings: []reading{idle, idle, idle, idle, idle},
			confirms: map[int]reading{4: promDown, 5: idle}, sleepAt: 5, idleFor: "40s",
		},
		{
			name: "cannot confirm: the loop's own stretch decides", healthy: true,
			readings: []reading{idle, idle, idle, idle},
			confirms: map[int]reading{1: cannotConfirm}, sleepAt: 4,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hs := newHarness(t, false, deployment("web", 3, map[string]string{"other.io/keep": "yes"}))
			hs.prom.setHealthy(tc.healthy, tc.healthyErr)
			hs.h.Sync(managed("web"))
			hs.run()

			for i, r := range tc.readings {
				check := i + 1
				hs.prom.set("q", r)
				if c, ok := tc.confirms[check]; ok {
					hs.prom.setConfirm(c)
				}
				hs.tick(1)
				writes := hs.world.takeWrites()
				events := hs.takeEvents()
				if check != tc.sleepAt {
					wantStrings(t, fmt.Sprintf("writes at check %d", check), writes, nil)
					for _, e := range events {
						if strings.Contains(e, ReasonScaledToZero) {
							t.Errorf("check %d: unexpected event %q", check, e)
						}
					}
					continue
				}
				wantStrings(t, fmt.Sprintf("writes at check %d", check), writes, []string{sleepWrite("web", 3, hs.stamp())})
				idleFor := tc.idleFor
				if idleFor == "" {
					idleFor = "30s"
				}
				wantEvents(t, events, []string{"Normal ScaledToZero scaled 3 → 0: q = 0 < 1 for " + idleFor})
			}

			w := hs.workload("web")
			if tc.sleepAt == 0 {
				if w.Replicas != 3 || len(w.Annotations) != 0 {
					t.Errorf("workload = %d replicas, annotations %v; want it untouched", w.Replicas, w.Annotations)
				}
				if got := counter(t, hs.metrics.sleeps); got != 0 {
					t.Errorf("zeroscaler_sleeps_total = %v, want 0", got)
				}
				return
			}
			if orig, ok, err := w.OriginalReplicas(); w.Replicas != 0 || !ok || err != nil || orig != 3 {
				t.Errorf("after sleeping: replicas %d, original-replicas %d (recorded %v, %v); want 0 and 3", w.Replicas, orig, ok, err)
			}
			if got := counter(t, hs.metrics.sleeps); got != 1 {
				t.Errorf("zeroscaler_sleeps_total = %v, want 1", got)
			}
			if got := hs.replicasAsleep(); got != 3 {
				t.Errorf("zeroscaler_replicas_asleep = %v, want 3", got)
			}
			// Asleep now: an idle reading keeps it there.
			hs.prom.set("q", idle)
			hs.tick(1)
			wantStrings(t, "writes while asleep and idle", hs.world.takeWrites(), nil)
		})
	}
}

// IsHealthy and ConfirmIdle are asked only once the cooldown has passed,
// not at every check; a confirmation that saw the metric active starts the
// cooldown again, so neither is asked at the next check.
func TestHealthAndConfirmationAskedOnlyAfterCooldown(t *testing.T) {
	hs := newHarness(t, false, deployment("web", 3, nil))
	hs.prom.set("q", idle)
	hs.prom.setHealthy(false, nil)
	hs.h.Sync(managed("web"))
	hs.run()
	hs.ticks(3)
	if n := hs.prom.called("IsHealthy"); n != 0 {
		t.Errorf("IsHealthy asked %d times during the cooldown, want 0", n)
	}
	hs.ticks(2)
	if n := hs.prom.called("IsHealthy"); n != 2 {
		t.Errorf("IsHealthy asked %d times after the cooldown, want 2", n)
	}
	if n := hs.prom.called("ConfirmIdle"); n != 0 {
		t.Errorf("ConfirmIdle asked %d times while unhealthy, want 0", n)
	}

	hs.prom.setHealthy(true, nil)
	hs.prom.setConfirm(active)
	hs.tick(1)
	if h, c := hs.prom.called("IsHealthy"), hs.prom.called("ConfirmIdle"); h != 3 || c != 1 {
		t.Errorf("healthy after the cooldown: IsHealthy asked %d times, ConfirmIdle %d; want 3 and 1", h, c)
	}
	hs.ticks(2)
	if h, c := hs.prom.called("IsHealthy"), hs.prom.called("ConfirmIdle"); h != 3 || c != 1 {
		t.Errorf("during the cooldown the confirmation restarted: IsHealthy asked %d times, ConfirmIdle %d; want 3 and 1", h, c)
	}
	wantStrings(t, "writes", hs.world.takeWrites(), nil)
}

// Behaviour 2: from zero to original-replicas (else min-replicas) when
// active or when Prometheus fails; the marks go in the same write.
func TestWakeFromZero(t *testing.T) {
	tests := []struct {
		name        string
		original    string
		minReplicas int32
		reading     reading
		wantWrites  []string
		wantEvents  [][]string
		// cause is the wakes metric's label of the wake; "": no wake.
		cause string
	}{
		{
			name: "active wakes to original-replicas", original: "3", reading: active,
			wantWrites: []string{wakeWrite("web", 3)}, cause: wakeByMetric,
			wantEvents: [][]string{{"Normal ScaledFromZero scaled 0 → 3: q = 5 >= 1"}},
		},
		{
			name: "value equal to the threshold wakes", original: "2", reading: reading{value: 1},
			wantWrites: []string{wakeWrite("web", 2)}, cause: wakeByMetric,
			wantEvents: [][]string{{"Normal ScaledFromZero scaled 0 → 2: q = 1 >= 1"}},
		},
		{
			name: "Prometheus down wakes it (fail open)", original: "3", reading: promDown,
			wantWrites: []string{wakeWrite("web", 3)}, cause: wakeByError,
			wantEvents: [][]string{{"Warning WokeOnError scaled 0 → 3 because the metric could not be read: ", "connection refused"}},
		},
		{
			name: "several series wake it (fail open)", original: "3", reading: multiple,
			wantWrites: []string{wakeWrite("web", 3)}, cause: wakeByError,
			wantEvents: [][]string{
				{"Warning InvalidScalingConfig annotation zeroscaler.io/query", "sum(...)"},
				{"Warning WokeOnError scaled 0 → 3", "sum(...)"},
			},
		},
		{
			name: "unusable original-replicas wakes to min-replicas", original: "lots", minReplicas: 2, reading: active,
			wantWrites: []string{wakeWrite("web", 2)}, cause: wakeByMetric,
			wantEvents: [][]string{{"Normal ScaledFromZero scaled 0 → 2: q = 5 >= 1"}},
		},
		{
			name: "zero original-replicas wakes to min-replicas", original: "0", minReplicas: 4, reading: promDown,
			wantWrites: []string{wakeWrite("web", 4)}, cause: wakeByError,
			wantEvents: [][]string{{"Warning WokeOnError scaled 0 → 4"}},
		},
		{
			name: "idle stays asleep", original: "3", reading: idle,
		},
		// Behaviour 3: unknown is not a reason to wake.
		{
			name: "no data stays asleep", original: "3", reading: noData,
			wantEvents: [][]string{{"Warning MetricUnavailable", "no usable sample"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hs := newHarness(t, false, deployment("web", 0, asleep(tc.original)))
			hs.prom.set("q", tc.reading)
			hs.h.Sync(managed("web", func(c *Config) {
				if tc.minReplicas > 0 {
					c.MinReplicas = tc.minReplicas
				}
			}))
			hs.run()
			hs.tick(1)
			wantStrings(t, "writes", hs.world.takeWrites(), tc.wantWrites)
			wantEvents(t, hs.takeEvents(), tc.wantEvents...)

			// Woken and unmarked in one write, or asleep and marked.
			w := hs.workload("web")
			if tc.cause != "" {
				if _, marked, _ := w.OriginalReplicas(); w.Replicas == 0 || marked || len(w.Annotations) != 0 {
					t.Errorf("after waking: %d replicas, annotations %v; want running and none of ours", w.Replicas, w.Annotations)
				}
				hs.wantWakes("after the wake", map[string]float64{tc.cause: 1})
				if got := hs.replicasAsleep(); got != 0 {
					t.Errorf("zeroscaler_replicas_asleep after the wake = %v, want 0", got)
				}
			} else {
				if w.Replicas != 0 || w.Annotations[AnnotationOriginalReplicas] != tc.original {
					t.Errorf("workload = %d replicas, annotations %v; want it asleep and marked", w.Replicas, w.Annotations)
				}
				hs.wantWakes("asleep", nil)
				if got := hs.replicasAsleep(); got != 3 {
					t.Errorf("zeroscaler_replicas_asleep while asleep = %v, want 3", got)
				}
			}

			// The next check, with the same reading, writes nothing and
			// repeats no event.
			hs.tick(1)
			wantStrings(t, "writes at the next check", hs.world.takeWrites(), nil)
			wantEvents(t, hs.takeEvents())
		})
	}
}

// Behaviour 3: no data never moves an awake workload either, however long
// it lasts; the problem is told once, and when it ends the cooldown counts
// from the first idle reading after it.
func TestNoDataWhileAwake(t *testing.T) {
	hs := newHarness(t, false, deployment("web", 3, nil))
	hs.prom.set("q", noData)
	hs.h.Sync(managed("web"))
	hs.run()

	hs.ticks(7) // more than twice the cooldown
	wantStrings(t, "writes", hs.world.takeWrites(), nil)
	wantEvents(t, hs.takeEvents(), []string{
		"Warning MetricUnavailable metric unavailable, nothing will be scaled down: query q: query returned no usable sample",
	})
	if got := hs.gauge(StateAwake); got != 1 {
		t.Errorf("awake gauge = %v, want 1", got)
	}

	hs.prom.set("q", idle)
	hs.ticks(3)
	wantStrings(t, "writes at the first three idle checks after the data came back", hs.world.takeWrites(), nil)
	hs.tick(1)
	wantStrings(t, "writes a cooldown after the first idle reading", hs.world.takeWrites(), []string{sleepWrite("web", 3, hs.stamp())})
}

// Several series are a configuration error, told as such.
func TestMultipleSeriesWhileAwake(t *testing.T) {
	hs := newHarness(t, false, deployment("web", 3, nil))
	hs.prom.set("q", multiple)
	hs.h.Sync(managed("web"))
	hs.run()
	hs.ticks(4)
	wantStrings(t, "writes", hs.world.takeWrites(), nil)
	wantEvents(t, hs.takeEvents(), []string{
		"Warning InvalidScalingConfig annotation zeroscaler.io/query: query q: query returned more than one series; aggregate it, for example with sum(...)",
	})
}

// Behaviour 4: a running workload that still carries sleep marks (someone
// scaled it up while the daemon was away) is awake: the first check clears
// the marks, counts a wake by a person, and the cooldown starts at the next
// idle reading.
func TestMarksOnRunningWorkloadCleared(t *testing.T) {
	hs := newHarness(t, false, deployment("web", 3, asleep("3")))
	hs.prom.set("q", idle)
	hs.h.Sync(managed("web"))
	hs.run()

	hs.tick(1)
	wantStrings(t, "writes at check 1", hs.world.takeWrites(), []string{clearWrite("web")})
	if w := hs.workload("web"); w.Replicas != 3 || len(w.Annotations) != 0 {
		t.Errorf("workload = %d replicas, annotations %v; want 3 and no marks", w.Replicas, w.Annotations)
	}
	hs.wantWakes("after clearing", map[string]float64{wakeByPerson: 1})
	if got := hs.gauge(StateAwake); got != 1 {
		t.Errorf("awake gauge = %v, want 1", got)
	}
	// Check 1 read nothing: the stretch starts at check 2's idle reading.
	hs.ticks(3)
	wantStrings(t, "writes at checks 2-4", hs.world.takeWrites(), nil)
	hs.tick(1)
	wantStrings(t, "writes at check 5", hs.world.takeWrites(), []string{sleepWrite("web", 3, hs.stamp())})
}

// Behaviour 4: a write that conflicts is not forced; the next check
// decides again on the fresh object.
func TestConflictRetriedNextCheck(t *testing.T) {
	t.Run("sleep", func(t *testing.T) {
		hs := newHarness(t, false, deployment("web", 3, nil))
		hs.prom.set("q", idle)
		hs.h.Sync(managed("web"))
		hs.run()
		hs.ticks(3)
		hs.world.interfere(1)
		hs.tick(1)
		wantStrings(t, "writes at the conflicting check", hs.world.takeWrites(), nil)
		wantEvents(t, hs.takeEvents())
		if n := hs.world.conflictCount(); n != 1 {
			t.Errorf("conflicts = %d, want 1 (no forced retry)", n)
		}
		if got := counter(t, hs.metrics.scaleOps.WithLabelValues("down", "conflict")); got != 1 {
			t.Errorf(`scale_operations_total{down,conflict} = %v, want 1`, got)
		}
		if got := counter(t, hs.metrics.sleeps); got != 0 {
			t.Errorf("zeroscaler_sleeps_total after the conflict = %v, want 0", got)
		}
		if got := hs.gauge(StateIdle); got != 1 {
			t.Errorf("idle gauge after the conflict = %v, want 1", got)
		}
		// The stretch is not lost: the next check sleeps, 40s after the
		// first idle reading.
		hs.tick(1)
		wantStrings(t, "writes at the next check", hs.world.takeWrites(), []string{sleepWrite("web", 3, hs.stamp())})
		wantEvents(t, hs.takeEvents(), []string{"Normal ScaledToZero scaled 3 → 0: q = 0 < 1 for 40s"})
		if got := counter(t, hs.metrics.sleeps); got != 1 {
			t.Errorf("zeroscaler_sleeps_total = %v, want 1", got)
		}
	})
	t.Run("wake", func(t *testing.T) {
		hs := newHarness(t, false, deployment("web", 0, asleep("3")))
		hs.prom.set("q", active)
		hs.h.Sync(managed("web"))
		hs.run()
		hs.world.interfere(1)
		hs.tick(1)
		wantStrings(t, "writes at the conflicting check", hs.world.takeWrites(), nil)
		wantEvents(t, hs.takeEvents())
		if got := counter(t, hs.metrics.scaleOps.WithLabelValues("up", "conflict")); got != 1 {
			t.Errorf(`scale_operations_total{up,conflict} = %v, want 1`, got)
		}
		hs.wantWakes("after the conflict", nil)
		if got := hs.replicasAsleep(); got != 3 {
			t.Errorf("zeroscaler_replicas_asleep after the conflict = %v, want 3", got)
		}
		hs.tick(1)
		wantStrings(t, "writes at the next check", hs.world.takeWrites(), []string{wakeWrite("web", 3)})
		wantEvents(t, hs.takeEvents(), []string{"Normal ScaledFromZero scaled 0 → 3"})
		hs.wantWakes("after the wake", map[string]float64{wakeByMetric: 1})
	})
	t.Run("clearing the marks of a workload someone scaled up", func(t *testing.T) {
		hs := newHarness(t, false, deployment("web", 2, asleep("3")))
		hs.prom.set("q", active)
		hs.h.Sync(managed("web"))
		hs.run()
		hs.world.interfere(1)
		hs.tick(1)
		wantStrings(t, "writes at the conflicting check", hs.world.takeWrites(), nil)
		if n := hs.world.conflictCount(); n != 1 {
			t.Errorf("conflicts = %d, want 1", n)
		}
		hs.wantWakes("after the conflict", nil)
		hs.tick(1)
		wantStrings(t, "writes at the next check", hs.world.takeWrites(), []string{clearWrite("web")})
		hs.wantWakes("after the clear", map[string]float64{wakeByPerson: 1})
		hs.tick(1)
		wantStrings(t, "writes once cleared", hs.world.takeWrites(), nil)
	})
}

// restartLoop starts the workload's loop afresh, as a new configuration
// or a restart of the daemon (or a change of leader) would: nothing the old
// loop remembered survives, only what the API shows.
func (hs *harness) restartLoop(name string, cfg Config) {
	hs.t.Helper()
	before := len(hs.prom.built())
	old := hs.prom.built()[before-1]
	hs.h.Sync(cfg)
	eventually(hs.t, "the loop of "+name+" to restart", func() bool {
		return old.isClosed() && len(hs.prom.built()) == before+1
	})
}

// wantLeftAlone checks, over a few checks that do run, that a workload at
// zero that the daemon did not put there gets no write and no event, and
// stays at zero without marks.
func (hs *harness) wantLeftAlone(when string) {
	hs.t.Helper()
	ran := hs.checksRun()
	hs.ticks(5)
	if got := hs.checksRun() - ran; got != 5 {
		hs.t.Errorf("%s: %d checks ran in 5 periods, want 5", when, got)
	}
	wantStrings(hs.t, when+": writes", hs.world.takeWrites(), nil)
	wantEvents(hs.t, hs.takeEvents())
	if w := hs.workload("web"); w.Replicas != 0 || len(w.Annotations) != 0 {
		hs.t.Errorf("%s: workload = %d replicas, annotations %v; want 0 and none of ours", when, w.Replicas, w.Annotations)
	}
	if got := hs.gauge(StateAwake); got != 1 {
		hs.t.Errorf("%s: awake gauge = %v, want 1", when, got)
	}
	if got := hs.replicasAsleep(); got != 0 {
		hs.t.Errorf("%s: zeroscaler_replicas_asleep = %v, want 0", when, got)
	}
}

// Behaviour 5: people win.
func TestPeopleWin(t *testing.T) {
	t.Run("at zero without marks", func(t *testing.T) {
		for _, r := range []reading{idle, active, promDown} {
			hs := newHarness(t, false, deployment("web", 0, nil))
			hs.prom.set("q", r)
			hs.h.Sync(managed("web"))
			hs.run()
			hs.wantLeftAlone(fmt.Sprintf("reading %+v", r))
		}
	})
	t.Run("scaled up while asleep", func(t *testing.T) {
		hs := newHarness(t, false, deployment("web", 0, asleep("3")))
		hs.prom.set("q", idle)
		hs.h.Sync(managed("web"))
		hs.run()
		hs.tick(1)
		wantStrings(t, "writes while asleep", hs.world.takeWrites(), nil)
		if got := hs.replicasAsleep(); got != 3 {
			t.Errorf("zeroscaler_replicas_asleep while asleep = %v, want 3", got)
		}

		hs.world.setReplicas(ref("web"), 2)
		hs.tick(1)
		wantStrings(t, "writes after someone scaled it up", hs.world.takeWrites(), []string{clearWrite("web")})
		if got := hs.gauge(StateAwake); got != 1 {
			t.Errorf("awake gauge = %v, want 1", got)
		}
		if got := hs.replicasAsleep(); got != 0 {
			t.Errorf("zeroscaler_replicas_asleep once scaled up = %v, want 0", got)
		}
		hs.wantWakes("after someone scaled it up", map[string]float64{wakeByPerson: 1})
		// The check that cleared read nothing: the stretch starts at the
		// next idle reading.
		hs.ticks(3)
		wantStrings(t, "writes during the new cooldown", hs.world.takeWrites(), nil)
		hs.tick(1)
		wantStrings(t, "writes a cooldown later", hs.world.takeWrites(), []string{sleepWrite("web", 2, hs.stamp())})
		if got := hs.replicasAsleep(); got != 2 {
			t.Errorf("zeroscaler_replicas_asleep asleep again = %v, want 2", got)
		}
	})
	t.Run("scaled up while awake restarts the cooldown", func(t *testing.T) {
		hs := newHarness(t, false, deployment("web", 1, nil))
		hs.prom.set("q", idle)
		hs.h.Sync(managed("web"))
		hs.run()
		hs.ticks(2)
		hs.world.setReplicas(ref("web"), 2)
		// Without the scale-up, check 4 would end the stretch begun at
		// check 1; the scale-up at check 3 starts a new one there.
		hs.ticks(3)
		wantStrings(t, "writes within a cooldown of the scale-up", hs.world.takeWrites(), nil)
		hs.tick(1)
		wantStrings(t, "writes a cooldown after the scale-up", hs.world.takeWrites(), []string{sleepWrite("web", 2, hs.stamp())})
	})
	for _, tc := range []struct {
		name     string
		obj      *appsv1.Deployment
		reading  reading
		replicas int32
	}{
		{name: "paused while awake and idle", obj: deployment("web", 3, nil), reading: idle, replicas: 3},
		{name: "paused while asleep and active", obj: deployment("web", 0, asleep("3")), reading: active, replicas: 0},
		{name: "paused while asleep and Prometheus down", obj: deployment("web", 0, asleep("3")), reading: promDown, replicas: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := newHarness(t, false, tc.obj)
			hs.prom.set("q", tc.reading)
			hs.h.Sync(managed("web", func(c *Config) { c.Paused = true }))
			hs.run()
			eventually(t, "the paused gauge", func() bool { return hs.gauge(StatePaused) == 1 })
			for range 10 {
				hs.clock.Step(period)
			}
			if n := len(hs.prom.built()); n != 0 {
				t.Errorf("%d deciders built for a paused workload, want 0", n)
			}
			if n := hs.world.writeActions(); n != 0 {
				t.Errorf("%d write requests, want 0", n)
			}
			wantEvents(t, hs.takeEvents())
			if w := hs.workload("web"); w.Replicas != tc.replicas {
				t.Errorf("replicas = %d, want %d", w.Replicas, tc.replicas)
			}
		})
	}
}

// Issue 9 item 9 (a): someone scales the workload to zero while the loop
// decides to put it to sleep. The sleep is one write conditional on what
// the loop read, so it conflicts and writes nothing: the zero carries no
// marks and is the person's. It is never woken, by this loop or by a fresh
// one (a new configuration, a restart of the daemon), however active the
// metric.
func TestScaledToZeroDuringSleepWrite(t *testing.T) {
	hs := newHarness(t, false, deployment("web", 3, nil))
	hs.prom.set("q", idle)
	hs.h.Sync(managed("web"))
	stop := hs.run()
	hs.ticks(3)
	// The person's write lands just before the loop's write that scales to
	// zero: were the marks written apart from the zero, they would already
	// be on the workload then.
	var once bool
	hs.world.dyn.PrependReactor("patch", "*", func(a ktesting.Action) (bool, runtime.Object, error) {
		if !once && strings.Contains(string(a.(ktesting.PatchAction).GetPatch()), `"replicas":0`) {
			once = true
			hs.world.setReplicas(ref("web"), 0)
		}
		return false, nil, nil // on to the world's own reactor
	})
	hs.tick(1)
	if !once {
		t.Fatal("the loop never wrote a zero")
	}
	wantStrings(t, "writes at the sleep decision", hs.world.takeWrites(), nil)
	if n := hs.world.conflictCount(); n != 1 {
		t.Fatalf("conflicts = %d, want the sleep write to conflict once", n)
	}
	wantEvents(t, hs.takeEvents())
	if got := counter(t, hs.metrics.sleeps); got != 0 {
		t.Errorf("zeroscaler_sleeps_total = %v, want 0", got)
	}

	hs.prom.set("q", active)
	hs.wantLeftAlone("the same loop")

	hs.restartLoop("web", managed("web", func(c *Config) { c.Metadata.Threshold = 2 }))
	hs.wantLeftAlone("a loop started afresh by a new configuration")

	stop()
	hs.run()
	hs.wantLeftAlone("a loop started afresh by a new Run")
	hs.wantWakes("at the end", nil)
	if n := hs.world.writeActions(); n != 1 {
		t.Errorf("%d write requests, want only the sleep write that conflicted", n)
	}
}

// Issue 9 item 9 (b): someone scales a workload back to zero right after
// zeroscaler woke it. The wake removed the marks in the same write, so
// that zero is theirs: it is left alone, though its metric is active, by
// this loop and by a fresh one (a new configuration, a restart of the
// daemon).
func TestScaledToZeroRightAfterWake(t *testing.T) {
	hs := newHarness(t, false, deployment("web", 0, asleep("3")))
	hs.prom.set("q", active)
	hs.h.Sync(managed("web"))
	stop := hs.run()
	hs.tick(1)
	wantStrings(t, "writes at the wake", hs.world.takeWrites(), []string{wakeWrite("web", 3)})
	wantEvents(t, hs.takeEvents(), []string{"Normal ScaledFromZero scaled 0 → 3"})

	hs.world.setReplicas(ref("web"), 0)
	hs.wantLeftAlone("the same loop")

	hs.restartLoop("web", managed("web", func(c *Config) { c.Metadata.Threshold = 2 }))
	hs.wantLeftAlone("a loop started afresh by a new configuration")

	stop()
	hs.run()
	hs.wantLeftAlone("a loop started afresh by a new Run")
	hs.wantWakes("at the end", map[string]float64{wakeByMetric: 1})
}

// Behaviour 6: a released workload the daemon put to sleep is woken once,
// its marks removed in the same write.
func TestReleased(t *testing.T) {
	tests := []struct {
		name       string
		obj        *appsv1.Deployment
		wakeTo     int32
		outOfScope bool
		wantWrites []string
		wantEvents [][]string
	}{
		{
			name: "query removed from a sleeping workload", obj: deployment("web", 0, asleep("3")),
			wantWrites: []string{wakeWrite("web", 3)},
			wantEvents: [][]string{{"Normal ScaledFromZero scaled 0 → 3: woke because the zeroscaler.io/query annotation was removed"}},
		},
		{
			name: "marks kept win over the remembered count", obj: deployment("web", 0, asleep("3")), wakeTo: 5,
			wantWrites: []string{wakeWrite("web", 3)},
			wantEvents: [][]string{{"Normal ScaledFromZero scaled 0 → 3"}},
		},
		{
			name: "every annotation removed: wakes to the remembered count", obj: deployment("web", 0, nil), wakeTo: 4,
			wantWrites: []string{wakeWrite("web", 4)},
			wantEvents: [][]string{{"Normal ScaledFromZero scaled 0 → 4: woke because the zeroscaler.io/query annotation was removed"}},
		},
		{name: "at zero, not put there by zeroscaler", obj: deployment("web", 0, nil)},
		{
			// Marks left on a running workload (someone woke it) are
			// cleared; that is not a wake of ours.
			name: "already running", obj: deployment("web", 2, asleep("3")),
			wantWrites: []string{clearWrite("web")},
		},
		{
			// Not in the cache any more, but in the API server.
			name: "relabelled out of the selector while asleep", obj: deployment("web", 0, asleep("3")), outOfScope: true,
			wantWrites: []string{wakeWrite("web", 3)},
			wantEvents: [][]string{{"Normal ScaledFromZero scaled 0 → 3: woke because it no longer matches the daemon's --selector"}},
		},
		{name: "out of the selector and deleted", outOfScope: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var objs []runtime.Object
			if tc.obj != nil {
				objs = append(objs, tc.obj)
			}
			hs := newHarness(t, false, objs...)
			if tc.outOfScope {
				hs.world.hide(ref("web"))
			}
			hs.prom.set("q", promDown) // a released workload asks nobody
			hs.run()
			// As the informer sends it: no polling period.
			hs.h.Sync(Config{Ref: ref("web"), Mode: Released, WakeTo: tc.wakeTo, OutOfScope: tc.outOfScope})
			hs.parked(1)
			hs.clock.Step(0) // the wake is due at once
			hs.loopDone("web")
			wantStrings(t, "writes", hs.world.takeWrites(), tc.wantWrites)
			wantEvents(t, hs.takeEvents(), tc.wantEvents...)
			var woken float64
			if len(tc.wantEvents) > 0 {
				woken = 1
			}
			hs.wantWakes("after the loop", map[string]float64{wakeByReleased: woken})
			if n := len(hs.prom.built()); n != 0 {
				t.Errorf("%d deciders built for a released workload, want 0", n)
			}
			hs.clock.Step(time.Hour)
			wantStrings(t, "writes an hour later", hs.world.takeWrites(), nil)
		})
	}
}

// A failed wake of a released (or invalid) workload, which has no polling
// period, is retried later rather than spinning.
func TestReleasedWakeRetried(t *testing.T) {
	for _, mode := range []Mode{Released, Invalid} {
		t.Run(fmt.Sprint(mode), func(t *testing.T) {
			hs := newHarness(t, false, deployment("web", 0, asleep("3")))
			hs.run()
			cfg := Config{Ref: ref("web"), Mode: mode}
			if mode == Invalid {
				cfg.Err = errors.New(`annotation zeroscaler.io/threshold: "x" is not a finite number`)
			}
			hs.h.Sync(cfg)
			hs.parked(1)
			hs.world.interfere(1)
			hs.clock.Step(0)
			eventually(t, "the conflict", func() bool { return hs.world.conflictCount() == 1 })
			hs.parked(1) // parked until the retry, not spinning
			wantStrings(t, "writes at the conflicting attempt", hs.world.takeWrites(), nil)
			hs.clock.Step(time.Minute)
			wantStrings(t, "writes at the retry", hs.waitWrites(1), []string{wakeWrite("web", 3)})
		})
	}
}

// Behaviour 6: Forget (the workload was deleted or lost its annotations)
// stops the loop.
func TestForgetStopsLoop(t *testing.T) {
	hs := newHarness(t, false, deployment("web", 3, nil))
	hs.prom.set("q", idle)
	hs.h.Sync(managed("web"))
	hs.run()
	hs.ticks(2)
	calls := hs.prom.called("ShouldScaleToZero")

	hs.h.Forget(ref("web"))
	eventually(t, "the loop to stop", func() bool {
		d := hs.prom.built()
		return len(d) == 1 && d[0].isClosed() && hs.clock.Waiters() == 0
	})
	if n := hs.h.Running(); n != 0 {
		t.Errorf("Running() = %d after Forget, want 0", n)
	}
	for range 10 {
		hs.clock.Step(period)
	}
	if got := hs.prom.called("ShouldScaleToZero"); got != calls {
		t.Errorf("Prometheus asked %d more times after Forget", got-calls)
	}
	wantStrings(t, "writes", hs.world.takeWrites(), nil)
	if got := hs.gauge(StateIdle); got != 0 {
		t.Errorf("idle gauge = %v after Forget, want 0", got)
	}
}

// Behaviour 7: an invalid configuration is told on the workload, moves
// nothing that is awake, and other workloads carry on.
func TestInvalidConfig(t *testing.T) {
	msg := `annotation zeroscaler.io/threshold: "abc" is not a finite number; annotation zeroscaler.io/cooldown-period: "1ms" is shorter than 1s`
	hs := newHarness(t, false,
		deployment("bad", 3, map[string]string{"zeroscaler.io/threshold": "abc"}),
		deployment("good", 2, nil))
	hs.prom.set("q", idle)
	hs.h.Sync(Config{Ref: ref("bad"), Mode: Invalid, Err: errors.New(msg)})
	hs.h.Sync(managed("good"))
	hs.run()

	hs.parked(2) // the invalid loop's one check is due at once
	hs.clock.Step(period)
	hs.parked(1)
	eventually(t, "the invalid gauge", func() bool { return hs.gauge(StateInvalid) == 1 })
	wantEvents(t, hs.takeEvents(), []string{"Warning InvalidScalingConfig " + msg})

	hs.ticks(2)
	wantStrings(t, "writes at checks 2-3 of the valid workload", hs.world.takeWrites(), nil)
	hs.tick(1)
	wantStrings(t, "writes at check 4 of the valid workload", hs.world.takeWrites(), []string{sleepWrite("good", 2, hs.stamp())})
	wantEvents(t, hs.takeEvents(), []string{"Normal ScaledToZero scaled 2 → 0"})
	if w := hs.workload("bad"); w.Replicas != 3 {
		t.Errorf("invalid workload has %d replicas, want 3", w.Replicas)
	}
	if got := hs.gauge(StateInvalid); got != 1 {
		t.Errorf("invalid gauge = %v, want 1", got)
	}
}

// An invalid configuration on a workload the daemon put to sleep wakes it:
// availability beats savings.
func TestInvalidConfigWakes(t *testing.T) {
	hs := newHarness(t, false, deployment("web", 0, asleep("3")))
	hs.run()
	hs.h.Sync(Config{Ref: ref("web"), Mode: Invalid, Err: errors.New(`annotation zeroscaler.io/paused: "maybe" is not a boolean`)})
	hs.parked(1)
	hs.clock.Step(0)
	wantStrings(t, "writes", hs.waitWrites(1), []string{wakeWrite("web", 3)})
	// The event is told once the write returned: wait for it.
	wantEvents(t, []string{hs.nextEvent(), hs.nextEvent()},
		[]string{"Warning InvalidScalingConfig", "paused", "is not a boolean"},
		[]string{"Normal ScaledFromZero scaled 0 → 3: woke because its scaling configuration is invalid"})
	eventually(t, "the wake to be counted", func() bool { return hs.wakes(wakeByReleased) == 1 })
	if w := hs.workload("web"); w.Replicas != 3 || len(w.Annotations) != 0 {
		t.Errorf("workload = %d replicas, annotations %v; want 3 and none of ours", w.Replicas, w.Annotations)
	}
}

// What the informer cannot check (the scaler cannot be built) is told like
// any other invalid configuration.
func TestDeciderBuildFails(t *testing.T) {
	hs := newHarness(t, false, deployment("web", 3, nil))
	hs.prom.buildErr = errors.New("server address http://other:9090 is not allowed")
	hs.h.Sync(managed("web"))
	hs.run()
	wantEvents(t, []string{hs.nextEvent()}, []string{"Warning InvalidScalingConfig server address http://other:9090 is not allowed"})
	if got := hs.gauge(StateInvalid); got != 1 {
		t.Errorf("invalid gauge = %v, want 1", got)
	}
	for range 5 {
		hs.clock.Step(period)
	}
	wantEvents(t, hs.takeEvents())
	if n := hs.world.writeActions(); n != 0 {
		t.Errorf("%d write requests, want 0", n)
	}
}

// Behaviour 10: a dry run decides, logs and tells exactly as it would, and
// writes nothing.
func TestDryRun(t *testing.T) {
	hs := newHarness(t, true, deployment("web", 3, nil))
	hs.prom.set("q", idle)
	hs.h.Sync(managed("web"))
	hs.run()
	hs.ticks(3)
	wantEvents(t, hs.takeEvents()) // idle for 20s: cooling down
	hs.tick(1)
	wantEvents(t, hs.takeEvents(), []string{"Normal ScaledToZero (dry run) scaled 3 → 0: q = 0 < 1 for 30s"})
	if got := hs.gauge(StateAsleep); got != 1 {
		t.Errorf("asleep gauge = %v, want 1", got)
	}
	hs.ticks(2)
	wantEvents(t, hs.takeEvents()) // asleep (as if) and still idle

	hs.prom.set("q", active)
	hs.tick(1)
	wantEvents(t, hs.takeEvents(), []string{"Normal ScaledFromZero (dry run) scaled 0 → 3: q = 5 >= 1"})
	if got := hs.gauge(StateAwake); got != 1 {
		t.Errorf("awake gauge = %v, want 1", got)
	}

	hs.prom.set("q", promDown)
	hs.ticks(2)
	hs.prom.set("q", idle)
	hs.ticks(3)
	wantEvents(t, hs.takeEvents(), []string{"Warning MetricUnavailable"})
	hs.tick(1)
	wantEvents(t, hs.takeEvents(), []string{"Normal ScaledToZero (dry run) scaled 3 → 0: q = 0 < 1 for 30s"})
	hs.prom.set("q", promDown)
	hs.tick(1)
	wantEvents(t, hs.takeEvents(), []string{"Warning WokeOnError (dry run) scaled 0 → 3 because the metric could not be read"})

	if n := hs.world.writeActions(); n != 0 {
		t.Errorf("%d write requests in a dry run, want 0", n)
	}
	if w := hs.workload("web"); w.Replicas != 3 || len(w.Annotations) != 0 {
		t.Errorf("workload = %d replicas, annotations %v; want it untouched", w.Replicas, w.Annotations)
	}
}

// A StatefulSet goes through the same writes, on its own resource, and
// never through the scale subresource.
func TestStatefulSet(t *testing.T) {
	replicas := int32(2)
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "default", UID: types.UID("uid-db"), ResourceVersion: "1"},
		Spec:       appsv1.StatefulSetSpec{Replicas: &replicas},
	}
	hs := newHarness(t, false, []runtime.Object{sts}...)
	hs.events.IncludeObject = true
	hs.prom.set("q", idle)
	cfg := managed("db")
	cfg.Kind = statefulSetGVK.Kind
	hs.h.Sync(cfg)
	hs.run()
	hs.ticks(4)
	wantStrings(t, "writes", hs.world.takeWrites(), []string{sleepWrite("db", 2, hs.stamp())})
	hs.prom.set("q", active)
	hs.tick(1)
	wantStrings(t, "writes", hs.world.takeWrites(), []string{wakeWrite("db", 2)})
	hs.tick(1)
	wantStrings(t, "writes a check after the wake", hs.world.takeWrites(), nil)
	var patches int
	for _, a := range hs.world.dyn.Actions() {
		if a.GetVerb() != "patch" {
			continue
		}
		patches++
		if a.GetResource().Resource != "statefulsets" {
			t.Errorf("patch of %s, want statefulsets", a.GetResource())
		}
	}
	if patches != 2 {
		t.Errorf("%d patch requests, want 2", patches)
	}
	if n := len(hs.world.scales.Actions()); n != 0 {
		t.Errorf("%d requests to the scale subresource, want 0", n)
	}
	wantEvents(t, hs.takeEvents(),
		[]string{"ScaledToZero", "involvedObject{kind=StatefulSet,apiVersion=apps/v1}"},
		[]string{"ScaledFromZero", "involvedObject{kind=StatefulSet,apiVersion=apps/v1}"})
}

// A query cut short because its loop stops (shutdown, lost leadership, a
// new configuration) is not a Prometheus failure: a sleeping workload is not
// woken and an awake one writes nothing.
func TestStoppingMidQueryWakesNothing(t *testing.T) {
	for _, tc := range []struct {
		name     string
		replicas int32
		marks    map[string]string
		method   string
	}{
		{"asleep", 0, asleep("3"), "ShouldScaleFromZero"},
		{"awake", 3, nil, "ShouldScaleToZero"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := newHarness(t, false, deployment("web", tc.replicas, tc.marks))
			hs.prom.set("q", reading{block: true})
			hs.h.Sync(managed("web"))
			stop := hs.run()
			hs.parked(1)
			hs.clock.Step(period)
			eventually(t, "the query to be in flight", func() bool { return hs.prom.called(tc.method) == 1 })
			stop()
			wantStrings(t, "writes", hs.world.takeWrites(), nil)
			wantEvents(t, hs.takeEvents())
		})
	}
}

// A cache behind the API server (a watch lagging under a herd of writes)
// still shows the workload as it was before our write: the loop waits for
// its write to show instead of deciding on the old object (which would wake
// it again, into a conflict), and decides again once it shows.
func TestCacheBehindOurWrite(t *testing.T) {
	hs := newHarness(t, false, deployment("web", 0, asleep("3")))
	hs.prom.set("q", active)
	hs.h.Sync(managed("web"))
	hs.run()
	hs.world.lag(ref("web"))
	hs.tick(1)
	wantStrings(t, "writes at the wake", hs.world.takeWrites(), []string{wakeWrite("web", 3)})
	wantEvents(t, hs.takeEvents(), []string{"Normal ScaledFromZero scaled 0 → 3"})

	hs.ticks(2)
	wantStrings(t, "writes while the cache lags", hs.world.takeWrites(), nil)
	wantEvents(t, hs.takeEvents())
	if n := hs.world.conflictCount(); n != 0 {
		t.Errorf("conflicts while the cache lags = %d, want 0", n)
	}
	if from, to := hs.prom.called("ShouldScaleFromZero"), hs.prom.called("ShouldScaleToZero"); from != 1 || to != 0 {
		t.Errorf("queries while the cache lags: %d from zero, %d to zero; want only the wake's", from, to)
	}

	hs.world.catchUp()
	hs.tick(1)
	wantStrings(t, "writes once the cache caught up", hs.world.takeWrites(), nil)
	if n := hs.prom.called("ShouldScaleToZero"); n != 1 {
		t.Errorf("queries once the cache caught up = %d, want 1: the loop decides again", n)
	}
	if got := hs.gauge(StateAwake); got != 1 {
		t.Errorf("awake gauge = %v, want 1", got)
	}
}
