package handler

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
)

// Behaviour 1: to zero only after a full cooldown of valid idle readings,
// and only if Prometheus saw its targets up; marks first, then the scale.
func TestScaleToZeroAfterCooldown(t *testing.T) {
	tests := []struct {
		name       string
		readings   []reading // one per check
		healthy    bool
		healthyErr error
		// sleepAt is the check (1-based) that scales to zero; 0: none.
		sleepAt int
	}{
		{name: "idle for the whole cooldown", readings: []reading{idle, idle, idle}, healthy: true, sleepAt: 3},
		{name: "idle for less than the cooldown", readings: []reading{idle, idle}, healthy: true},
		{name: "active reading restarts the cooldown", readings: []reading{idle, active, idle, idle, idle}, healthy: true, sleepAt: 5},
		{name: "no data restarts the cooldown", readings: []reading{idle, idle, noData, idle, idle, idle}, healthy: true, sleepAt: 6},
		{name: "Prometheus error restarts the cooldown", readings: []reading{idle, promDown, idle, idle, idle}, healthy: true, sleepAt: 5},
		{name: "several series restart the cooldown", readings: []reading{idle, multiple, idle, idle, idle}, healthy: true, sleepAt: 5},
		{name: "value equal to the threshold is active", readings: []reading{idle, {value: 1}, idle, idle, idle}, healthy: true, sleepAt: 5},
		{name: "targets not up for the whole window", readings: []reading{idle, idle, idle, idle, idle}, healthy: false},
		{name: "health query fails", readings: []reading{idle, idle, idle, idle}, healthy: false, healthyErr: errors.New("connection refused")},
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
				// The original count is recorded before the scale write.
				wantStrings(t, fmt.Sprintf("writes at check %d", check), writes, []string{
					"annotate web original-replicas=3 scaled-to-zero-at=" + hs.stamp(),
					"scale web 0",
				})
				wantEvents(t, events, []string{"Normal ScaledToZero scaled 3 → 0: q = 0 < 1 for 30s"})
			}

			w := hs.workload("web")
			if tc.sleepAt == 0 {
				if w.Replicas != 3 || len(w.Annotations) != 0 {
					t.Errorf("workload = %d replicas, annotations %v; want it untouched", w.Replicas, w.Annotations)
				}
				return
			}
			if orig, ok, err := w.OriginalReplicas(); w.Replicas != 0 || !ok || err != nil || orig != 3 {
				t.Errorf("after sleeping: replicas %d, original-replicas %d (recorded %v, %v); want 0 and 3", w.Replicas, orig, ok, err)
			}
			// Asleep now: an idle reading keeps it there.
			hs.prom.set("q", idle)
			hs.tick(1)
			wantStrings(t, "writes while asleep and idle", hs.world.takeWrites(), nil)
		})
	}
}

// IsHealthy is asked only once the cooldown has passed, not at every check.
func TestHealthAskedOnlyAfterCooldown(t *testing.T) {
	hs := newHarness(t, false, deployment("web", 3, nil))
	hs.prom.set("q", idle)
	hs.prom.setHealthy(false, nil)
	hs.h.Sync(managed("web"))
	hs.run()
	hs.ticks(2)
	if n := hs.prom.called("IsHealthy"); n != 0 {
		t.Errorf("IsHealthy asked %d times during the cooldown, want 0", n)
	}
	hs.ticks(2)
	if n := hs.prom.called("IsHealthy"); n != 2 {
		t.Errorf("IsHealthy asked %d times after the cooldown, want 2", n)
	}
}

// Behaviour 2: from zero to original-replicas (else min-replicas) when
// active or when Prometheus fails; the marks are removed after the scale.
func TestWakeFromZero(t *testing.T) {
	tests := []struct {
		name        string
		original    string
		minReplicas int32
		reading     reading
		wantWrites  []string
		wantEvents  [][]string
		// nextEvents are told at the next check, when it is awake.
		nextEvents [][]string
	}{
		{
			name: "active wakes to original-replicas", original: "3", reading: active,
			wantWrites: []string{"scale web 3"},
			wantEvents: [][]string{{"Normal ScaledFromZero scaled 0 → 3: q = 5 >= 1"}},
		},
		{
			name: "value equal to the threshold wakes", original: "2", reading: reading{value: 1},
			wantWrites: []string{"scale web 2"},
			wantEvents: [][]string{{"Normal ScaledFromZero scaled 0 → 2: q = 1 >= 1"}},
		},
		{
			name: "Prometheus down wakes it (fail open)", original: "3", reading: promDown,
			wantWrites: []string{"scale web 3"},
			wantEvents: [][]string{{"Warning WokeOnError scaled 0 → 3 because the metric could not be read: ", "connection refused"}},
		},
		{
			name: "several series wake it (fail open)", original: "3", reading: multiple,
			wantWrites: []string{"scale web 3"},
			wantEvents: [][]string{
				{"Warning InvalidScalingConfig annotation zeroscaler.io/query", "sum(...)"},
				{"Warning WokeOnError scaled 0 → 3", "sum(...)"},
			},
		},
		{
			name: "unusable original-replicas wakes to min-replicas", original: "lots", minReplicas: 2, reading: active,
			wantWrites: []string{"scale web 2"},
			wantEvents: [][]string{{"Normal ScaledFromZero scaled 0 → 2: q = 5 >= 1"}},
		},
		{
			name: "zero original-replicas wakes to min-replicas", original: "0", minReplicas: 4, reading: promDown,
			wantWrites: []string{"scale web 4"},
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

			// Marked until the next check either way: asleep, or woken with
			// the marks' removal left to the next check.
			if w := hs.workload("web"); w.Annotations[AnnotationOriginalReplicas] != tc.original {
				t.Errorf("annotations after the check = %v, want the marks still there", w.Annotations)
			}

			// The next check, with the same reading, moves nothing, repeats
			// no event, and clears the marks of a woken workload.
			hs.tick(1)
			var wantNext []string
			if tc.wantWrites != nil {
				wantNext = []string{"annotate web -original-replicas -scaled-to-zero-at"}
			}
			wantStrings(t, "writes at the next check", hs.world.takeWrites(), wantNext)
			wantEvents(t, hs.takeEvents(), tc.nextEvents...)
			w := hs.workload("web")
			if tc.wantWrites != nil {
				if _, marked, _ := w.OriginalReplicas(); marked || len(w.Annotations) != 0 {
					t.Errorf("annotations after waking = %v, want none of ours", w.Annotations)
				}
			} else if w.Replicas != 0 || w.Annotations[AnnotationOriginalReplicas] != tc.original {
				t.Errorf("workload = %d replicas, annotations %v; want it asleep and marked", w.Replicas, w.Annotations)
			}
		})
	}
}

// Behaviour 3: no data never moves an awake workload either, however long
// it lasts; the problem is told once, and when it ends the cooldown counts
// from the last unknown reading.
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
	hs.ticks(2)
	wantStrings(t, "writes two checks after the data came back", hs.world.takeWrites(), nil)
	hs.ticks(1)
	if got := hs.world.takeWrites(); len(got) != 2 {
		t.Errorf("writes a cooldown after the data came back = %q, want the two sleep writes", got)
	}
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

// Behaviour 4: a crash between two writes leaves a running workload with
// marks; the next check clears them and the cooldown starts again.
func TestStaleMarksCleared(t *testing.T) {
	hs := newHarness(t, false, deployment("web", 3, asleep("3")))
	hs.prom.set("q", idle)
	hs.h.Sync(managed("web"))
	hs.run()

	hs.tick(1)
	wantStrings(t, "writes at check 1", hs.world.takeWrites(), []string{"annotate web -original-replicas -scaled-to-zero-at"})
	if w := hs.workload("web"); w.Replicas != 3 || len(w.Annotations) != 0 {
		t.Errorf("workload = %d replicas, annotations %v; want 3 and no marks", w.Replicas, w.Annotations)
	}
	// Without the restart, check 3 would scale down.
	hs.ticks(2)
	wantStrings(t, "writes at checks 2-3", hs.world.takeWrites(), nil)
	hs.tick(1)
	wantStrings(t, "writes at check 4", hs.world.takeWrites(), []string{
		"annotate web original-replicas=3 scaled-to-zero-at=" + hs.stamp(),
		"scale web 0",
	})
}

// Behaviour 4: a write that conflicts is not forced; the next check
// decides again on the fresh object.
func TestConflictRetriedNextCheck(t *testing.T) {
	t.Run("sleep", func(t *testing.T) {
		hs := newHarness(t, false, deployment("web", 3, nil))
		hs.prom.set("q", idle)
		hs.h.Sync(managed("web"))
		hs.run()
		hs.ticks(2)
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
		hs.tick(1)
		wantStrings(t, "writes at the next check", hs.world.takeWrites(), []string{
			"annotate web original-replicas=3 scaled-to-zero-at=" + hs.stamp(),
			"scale web 0",
		})
		wantEvents(t, hs.takeEvents(), []string{"Normal ScaledToZero scaled 3 → 0: q = 0 < 1 for 40s"})
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
		hs.tick(1)
		wantStrings(t, "writes at the next check", hs.world.takeWrites(), []string{"scale web 3"})
		wantEvents(t, hs.takeEvents(), []string{"Normal ScaledFromZero scaled 0 → 3"})
	})
	t.Run("scale write after the marks", func(t *testing.T) {
		// The marks are written but the scale conflicts: the workload is
		// left running with marks and is never forced to zero; the next
		// check decides again and, still idle, retries the sleep.
		hs := newHarness(t, false, deployment("web", 3, nil))
		hs.prom.set("q", idle)
		hs.h.Sync(managed("web"))
		hs.run()
		hs.ticks(2)
		hs.world.interfere(2)
		hs.tick(1)
		wantStrings(t, "writes at the conflicting check", hs.world.takeWrites(), []string{
			"annotate web original-replicas=3 scaled-to-zero-at=" + hs.stamp(),
		})
		wantEvents(t, hs.takeEvents())
		if w := hs.workload("web"); w.Replicas != 3 {
			t.Errorf("replicas = %d, want 3", w.Replicas)
		}
		hs.tick(1)
		wantStrings(t, "writes at the next check", hs.world.takeWrites(), []string{
			"annotate web original-replicas=3 scaled-to-zero-at=" + hs.stamp(), "scale web 0",
		})
	})
	t.Run("clearing the marks after a wake", func(t *testing.T) {
		hs := newHarness(t, false, deployment("web", 0, asleep("3")))
		hs.prom.set("q", active)
		hs.h.Sync(managed("web"))
		hs.run()
		hs.world.interfere(2)
		hs.tick(1)
		wantStrings(t, "writes at the wake", hs.world.takeWrites(), []string{"scale web 3"})
		hs.tick(1)
		wantStrings(t, "writes at the conflicting check", hs.world.takeWrites(), nil)
		if n := hs.world.conflictCount(); n != 1 {
			t.Errorf("conflicts = %d, want 1", n)
		}
		hs.tick(1)
		wantStrings(t, "writes at the next check", hs.world.takeWrites(), []string{
			"annotate web -original-replicas -scaled-to-zero-at",
		})
	})
}

// Behaviour 5: people win.
func TestPeopleWin(t *testing.T) {
	t.Run("at zero without marks", func(t *testing.T) {
		for _, r := range []reading{idle, active, promDown} {
			hs := newHarness(t, false, deployment("web", 0, nil))
			hs.prom.set("q", r)
			hs.h.Sync(managed("web"))
			hs.run()
			hs.ticks(5)
			wantStrings(t, "writes", hs.world.takeWrites(), nil)
			wantEvents(t, hs.takeEvents())
		}
	})
	t.Run("scaled up while asleep", func(t *testing.T) {
		hs := newHarness(t, false, deployment("web", 0, asleep("3")))
		hs.prom.set("q", idle)
		hs.h.Sync(managed("web"))
		hs.run()
		hs.tick(1)
		wantStrings(t, "writes while asleep", hs.world.takeWrites(), nil)

		hs.world.setReplicas(ref("web"), 2)
		hs.tick(1)
		wantStrings(t, "writes after someone scaled it up", hs.world.takeWrites(), []string{
			"annotate web -original-replicas -scaled-to-zero-at",
		})
		if got := hs.gauge(StateAwake); got != 1 {
			t.Errorf("awake gauge = %v, want 1", got)
		}
		hs.ticks(2)
		wantStrings(t, "writes during the new cooldown", hs.world.takeWrites(), nil)
		hs.tick(1)
		wantStrings(t, "writes a cooldown later", hs.world.takeWrites(), []string{
			"annotate web original-replicas=2 scaled-to-zero-at=" + hs.stamp(),
			"scale web 0",
		})
	})
	t.Run("scaled up while awake restarts the cooldown", func(t *testing.T) {
		hs := newHarness(t, false, deployment("web", 1, nil))
		hs.prom.set("q", idle)
		hs.h.Sync(managed("web"))
		hs.run()
		hs.ticks(2)
		hs.world.setReplicas(ref("web"), 2)
		hs.ticks(3)
		wantStrings(t, "writes within a cooldown of the scale-up", hs.world.takeWrites(), nil)
		hs.tick(1)
		if got := hs.world.takeWrites(); len(got) != 2 {
			t.Errorf("writes a cooldown after the scale-up = %q, want the two sleep writes", got)
		}
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

// Behaviour 6: a released workload the daemon put to sleep is woken once.
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
			wantWrites: []string{"scale web 3", "annotate web -original-replicas -scaled-to-zero-at"},
			wantEvents: [][]string{{"Normal ScaledFromZero scaled 0 → ", ": woke because the zeroscaler.io/query annotation was removed"}},
		},
		{
			name: "marks kept win over the remembered count", obj: deployment("web", 0, asleep("3")), wakeTo: 5,
			wantWrites: []string{"scale web 3", "annotate web -original-replicas -scaled-to-zero-at"},
			wantEvents: [][]string{{"Normal ScaledFromZero"}},
		},
		{
			name: "every annotation removed: wakes to the remembered count", obj: deployment("web", 0, nil), wakeTo: 4,
			wantWrites: []string{"scale web 4", "annotate web -original-replicas -scaled-to-zero-at"},
			wantEvents: [][]string{{"Normal ScaledFromZero scaled 0 → ", ": woke because the zeroscaler.io/query annotation was removed"}},
		},
		{name: "at zero, not put there by zeroscaler", obj: deployment("web", 0, nil)},
		{
			// Marks left on a running workload (woken by someone, or the
			// mark removal of our own wake was cut off) are cleared.
			name: "already running", obj: deployment("web", 2, asleep("3")),
			wantWrites: []string{"annotate web -original-replicas -scaled-to-zero-at"},
		},
		{
			// Not in the cache any more, but in the API server.
			name: "relabelled out of the selector while asleep", obj: deployment("web", 0, asleep("3")), outOfScope: true,
			wantWrites: []string{"scale web 3", "annotate web -original-replicas -scaled-to-zero-at"},
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
			wantStrings(t, "writes at the retry", hs.waitWrites(2), []string{
				"scale web 3", "annotate web -original-replicas -scaled-to-zero-at",
			})
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
	wantStrings(t, "writes", hs.world.takeWrites(), []string{
		"annotate good original-replicas=2 scaled-to-zero-at=" + hs.stamp(),
		"scale good 0",
	})
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
	wantStrings(t, "writes", hs.waitWrites(2), []string{"scale web 3", "annotate web -original-replicas -scaled-to-zero-at"})
	wantEvents(t, hs.takeEvents(),
		[]string{"Warning InvalidScalingConfig", "paused", "is not a boolean"},
		[]string{"Normal ScaledFromZero scaled 0 → 3: woke because its scaling configuration is invalid"})
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
	wantEvents(t, hs.takeEvents(),
		[]string{"Warning MetricUnavailable"},
		[]string{"Normal ScaledToZero (dry run) scaled 3 → 0"})
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

// A StatefulSet goes through the same writes, on its own resource.
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
	hs.ticks(3)
	wantStrings(t, "writes", hs.world.takeWrites(), []string{
		"annotate db original-replicas=2 scaled-to-zero-at=" + hs.stamp(),
		"scale db 0",
	})
	hs.prom.set("q", active)
	hs.tick(1)
	wantStrings(t, "writes", hs.world.takeWrites(), []string{"scale db 2"})
	hs.tick(1)
	wantStrings(t, "writes a check after the wake", hs.world.takeWrites(), []string{"annotate db -original-replicas -scaled-to-zero-at"})
	for _, a := range hs.world.scales.Actions() {
		if a.GetResource().Resource != "statefulsets" {
			t.Errorf("scale request for %s, want statefulsets", a.GetResource())
		}
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
// its write to show instead of writing again into a conflict.
func TestCacheBehindOurWrite(t *testing.T) {
	hs := newHarness(t, false, deployment("web", 0, asleep("3")))
	hs.prom.set("q", active)
	hs.h.Sync(managed("web"))
	hs.run()
	hs.world.lag(ref("web"))
	hs.tick(1)
	wantStrings(t, "writes at the wake", hs.world.takeWrites(), []string{"scale web 3"})
	wantEvents(t, hs.takeEvents(), []string{"Normal ScaledFromZero scaled 0 → 3"})

	hs.ticks(2)
	wantStrings(t, "writes while the cache lags", hs.world.takeWrites(), nil)
	wantEvents(t, hs.takeEvents())
	if n := hs.world.conflictCount(); n != 0 {
		t.Errorf("conflicts while the cache lags = %d, want 0", n)
	}

	hs.world.catchUp()
	hs.tick(1)
	wantStrings(t, "writes once the cache caught up", hs.world.takeWrites(), []string{"annotate web -original-replicas -scaled-to-zero-at"})
}

// Someone scales a workload back to zero right after zeroscaler woke it,
// before its marks went: that zero is theirs, not a sleep of ours. The
// marks go and it is left at zero, though its metric is active.
func TestScaledToZeroRightAfterWake(t *testing.T) {
	hs := newHarness(t, false, deployment("web", 0, asleep("3")))
	hs.prom.set("q", active)
	hs.h.Sync(managed("web"))
	hs.run()
	hs.tick(1)
	wantStrings(t, "writes at the wake", hs.world.takeWrites(), []string{"scale web 3"})
	hs.takeEvents()

	hs.world.setReplicas(ref("web"), 0)
	hs.tick(1)
	wantStrings(t, "writes at the next check", hs.world.takeWrites(), []string{"annotate web -original-replicas -scaled-to-zero-at"})
	hs.ticks(3)
	wantStrings(t, "writes later", hs.world.takeWrites(), nil)
	wantEvents(t, hs.takeEvents())
	if w := hs.workload("web"); w.Replicas != 0 || len(w.Annotations) != 0 {
		t.Errorf("workload = %d replicas, annotations %v; want 0 and none of ours", w.Replicas, w.Annotations)
	}
}
