package handler

import (
	"errors"
	"fmt"
	"hash/fnv"
	"testing"
	"time"

	"go.uber.org/zap"
	"k8s.io/apimachinery/pkg/runtime"
	ktesting "k8s.io/client-go/testing"
)

// Sync restarts a loop only when the configuration changes: an equal one
// (a status update, a resync) keeps the loop and its cooldown progress.
func TestSyncRestartsOnlyOnChange(t *testing.T) {
	headers := func(c *Config) { c.Metadata.Headers = map[string]string{"X-Scope-OrgID": "a"} }
	tests := []struct {
		name    string
		first   Config
		again   Config
		restart bool
	}{
		{name: "equal configuration", first: managed("web"), again: managed("web")},
		{name: "equal, headers map rebuilt", first: managed("web", headers), again: managed("web", headers)},
		{name: "threshold changed", first: managed("web"), again: managed("web", func(c *Config) { c.Metadata.Threshold = 2 }), restart: true},
		{name: "min-replicas changed", first: managed("web"), again: managed("web", func(c *Config) { c.MinReplicas = 2 }), restart: true},
		{name: "headers changed", first: managed("web"), again: managed("web", headers), restart: true},
		{name: "paused", first: managed("web"), again: managed("web", func(c *Config) { c.Paused = true }), restart: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			first := tc.first
			hs := newHarness(t, false, deployment("web", 3, nil))
			hs.prom.set("q", idle)
			hs.h.Sync(first)
			hs.run()
			hs.ticks(3)
			old := hs.prom.built()[0]

			hs.h.Sync(tc.again)
			if !tc.restart {
				// The stretch began at check 1 goes on: check 4 ends it.
				hs.tick(1)
				if n := len(hs.prom.built()); n != 1 || old.isClosed() {
					t.Fatalf("loop restarted by an equal configuration (%d deciders, old closed %v)", n, old.isClosed())
				}
				wantStrings(t, "writes at check 4", hs.world.takeWrites(), []string{sleepWrite("web", 3, hs.stamp())})
				return
			}
			if tc.again.Paused {
				eventually(t, "the old loop to stop", old.isClosed)
				eventually(t, "the paused gauge", func() bool { return hs.gauge(StatePaused) == 1 })
				hs.clock.Step(time.Hour)
				wantStrings(t, "writes", hs.world.takeWrites(), nil)
				return
			}
			eventually(t, "the loop to restart", func() bool { return old.isClosed() && len(hs.prom.built()) == 2 })
			// The new loop's stretch starts at its own first idle reading.
			hs.ticks(3)
			wantStrings(t, "writes at the first three checks after the restart", hs.world.takeWrites(), nil)
			hs.tick(1)
			wantStrings(t, "writes a cooldown after the restart", hs.world.takeWrites(), []string{sleepWrite("web", 3, hs.stamp())})
		})
	}
}

// Syncs before Run are kept and started by Run; Run stops every loop and
// waits for them when its context ends.
func TestRunStartsAndStopsLoops(t *testing.T) {
	hs := newHarness(t, false, deployment("a", 3, nil), deployment("b", 3, nil))
	hs.h.Sync(managed("a"))
	hs.h.Sync(managed("b", func(c *Config) { c.Metadata.Query = "q2" }))
	if n := hs.h.Running(); n != 0 {
		t.Errorf("Running() = %d before Run, want 0", n)
	}
	stop := hs.run()
	hs.parked(2)
	if n := hs.h.Running(); n != 2 {
		t.Errorf("Running() = %d, want 2", n)
	}
	stop()
	if n := hs.h.Running(); n != 0 {
		t.Errorf("Running() = %d after Run returned, want 0", n)
	}
	if n := hs.clock.Waiters(); n != 0 {
		t.Errorf("%d timers left after Run returned", n)
	}
	if got := hs.gauge(StateAwake) + hs.gauge(StateIdle); got != 0 {
		t.Errorf("workloads gauge = %v after Run returned, want 0", got)
	}
}

// scaleLocks counts the handler's scale locks.
func (hs *harness) scaleLocks() int {
	n := 0
	hs.h.scaleLocks.Range(func(any, any) bool { n++; return true })
	return n
}

// wantedCount counts the configurations the handler remembers.
func (hs *harness) wantedCount() int {
	hs.h.mu.Lock()
	defer hs.h.mu.Unlock()
	return len(hs.h.wanted)
}

// Item 14 of the hardening issue: once a lone workload is gone (forgotten,
// or its loop finished by itself, as a released workload's does once
// woken), neither its scale lock nor its configuration is kept.
func TestGoneWorkloadsPruned(t *testing.T) {
	t.Run("forgotten", func(t *testing.T) {
		hs := newHarness(t, false, deployment("web", 3, nil))
		hs.prom.set("q", active)
		hs.h.Sync(managed("web"))
		hs.run()
		hs.tick(1)
		if n := hs.scaleLocks(); n != 1 {
			t.Fatalf("%d scale locks while the loop runs, want 1", n)
		}
		hs.h.Forget(ref("web"))
		eventually(t, "the loop to end", func() bool { return hs.h.Running() == 0 })
		eventually(t, "the scale lock to go", func() bool { return hs.scaleLocks() == 0 })
		if n := hs.wantedCount(); n != 0 {
			t.Errorf("%d configurations remembered, want none", n)
		}
	})
	t.Run("released and woken", func(t *testing.T) {
		hs := newHarness(t, false, deployment("web", 0, asleep("3")))
		hs.h.Sync(Config{Ref: ref("web"), Mode: Released})
		hs.run()
		hs.parked(1)
		hs.clock.Step(0) // the wake is due at once
		hs.loopDone("web")
		wantStrings(t, "writes", hs.world.takeWrites(), []string{wakeWrite("web", 3)})
		eventually(t, "the scale lock to go", func() bool { return hs.scaleLocks() == 0 })
		if n := hs.wantedCount(); n != 0 {
			t.Errorf("%d configurations remembered after the released loop finished, want none", n)
		}
	})
}

// Run waits for its workers: once it returns, none is left idle. (A Run
// that did not wait would return before its workers had left only in a
// fair share of runs, not every time: the test runs ten.)
func TestRunWaitsForItsWorkers(t *testing.T) {
	for range 10 {
		hs := newHarness(t, false, deployment("a", 3, nil), deployment("b", 3, nil))
		hs.h.Sync(managed("a"))
		hs.h.Sync(managed("b", func(c *Config) { c.Metadata.Query = "q2" }))
		hs.prom.set("q", active)
		hs.prom.set("q2", active)
		stop := hs.run()
		hs.tick(2)
		// A worker counts itself idle just after its check has answered.
		eventually(t, "a worker idle after the checks", func() bool { return hs.h.idle.Load() > 0 })
		stop()
		if n := hs.h.idle.Load(); n != 0 {
			t.Fatalf("%d workers still idle after Run returned", n)
		}
	}
}

// The workloads gauge counts each running loop once, by its state; the
// replicas-asleep gauge, the sleeps and the wakes by cause follow the same
// loop.
func TestWorkloadsGauge(t *testing.T) {
	states := []string{StateAwake, StateIdle, StateAsleep, StatePaused, StateInvalid}
	want := func(hs *harness, when string, counts map[string]float64) {
		t.Helper()
		for _, s := range states {
			if got := hs.gauge(s); got != counts[s] {
				t.Errorf("%s: zeroscaler_workloads{state=%q} = %v, want %v", when, s, got, counts[s])
			}
		}
	}
	hs := newHarness(t, false, deployment("web", 3, nil), deployment("p", 3, nil), deployment("i", 3, nil))
	hs.prom.set("q", active)
	hs.h.Sync(managed("web"))
	stop := hs.run()

	savings := func(when string, replicas, sleeps float64, wakes map[string]float64) {
		t.Helper()
		if got := hs.replicasAsleep(); got != replicas {
			t.Errorf("%s: zeroscaler_replicas_asleep = %v, want %v", when, got, replicas)
		}
		if got := counter(t, hs.metrics.sleeps); got != sleeps {
			t.Errorf("%s: zeroscaler_sleeps_total = %v, want %v", when, got, sleeps)
		}
		hs.wantWakes(when, wakes)
	}

	hs.tick(1)
	want(hs, "active", map[string]float64{StateAwake: 1})
	savings("active", 0, 0, nil)
	hs.prom.set("q", idle)
	hs.ticks(3)
	want(hs, "cooling down", map[string]float64{StateIdle: 1})
	savings("cooling down", 0, 0, nil)
	hs.tick(1)
	want(hs, "asleep", map[string]float64{StateAsleep: 1})
	savings("asleep", 3, 1, nil)
	hs.prom.set("q", active)
	hs.tick(1)
	want(hs, "woken", map[string]float64{StateAwake: 1})
	savings("woken", 0, 1, map[string]float64{wakeByMetric: 1})
	hs.prom.set("q", idle)
	hs.ticks(4)
	want(hs, "asleep again", map[string]float64{StateAsleep: 1})
	savings("asleep again", 3, 2, map[string]float64{wakeByMetric: 1})
	hs.prom.set("q", promDown)
	hs.tick(1)
	want(hs, "woken on error", map[string]float64{StateAwake: 1})
	savings("woken on error", 0, 2, map[string]float64{wakeByMetric: 1, wakeByError: 1})
	hs.prom.set("q", active)

	hs.h.Sync(managed("p", func(c *Config) { c.Paused = true }))
	hs.h.Sync(Config{Ref: ref("i"), Mode: Invalid, Err: errors.New("annotation zeroscaler.io/query: \"\" is empty")})
	eventually(t, "the paused and invalid loops", func() bool {
		return hs.gauge(StatePaused) == 1 && hs.gauge(StateInvalid) == 1
	})
	hs.parked(2)
	hs.clock.Step(0) // the invalid loop's check: nothing to wake
	hs.parked(1)
	hs.tick(1)
	want(hs, "with a paused and an invalid workload", map[string]float64{StateAwake: 1, StatePaused: 1, StateInvalid: 1})

	hs.h.Forget(ref("p"))
	eventually(t, "the paused loop to stop", func() bool { return hs.gauge(StatePaused) == 0 })
	stop()
	want(hs, "after Run returned", nil)
	savings("after Run returned", 0, 2, map[string]float64{wakeByMetric: 1, wakeByError: 1})
}

// firstCheck puts the checks of one question on a fixed grid: the same
// question (the same hash) checks at the same moments, different ones are
// spread over the period. Which questions are the same is the scaler's
// (QuestionHash); here the hashes are the test's own.
func TestFirstCheck(t *testing.T) {
	epoch := time.Unix(0, 0)
	phase := func(at time.Time, period time.Duration) time.Duration { return at.Sub(epoch) % period }
	nows := []time.Time{
		start,
		start.Add(1234 * time.Millisecond),
		start.Add(period - time.Nanosecond),
		start.Truncate(period),
		start.Add(7 * period),
	}

	t.Run("on the question's grid, within one period", func(t *testing.T) {
		for _, q := range []string{"sum(rate(x[1m]))", "sum(up)", "q"} {
			hash := hashOf(q)
			want := phase(firstCheck(start, period, hash), period)
			for _, now := range nows {
				got := firstCheck(now, period, hash)
				if !got.After(now) || got.Sub(now) > period {
					t.Errorf("%s: firstCheck(%s) = %s, want within (now, now+%s]", q, now, got, period)
				}
				if p := phase(got, period); p != want {
					t.Errorf("%s: firstCheck(%s) phase = %s, want %s", q, now, p, want)
				}
			}
			// Exactly on the grid: the next grid point, never now.
			on := firstCheck(start, period, hash)
			if got := firstCheck(on, period, hash); !got.Equal(on.Add(period)) {
				t.Errorf("%s: firstCheck(on the grid %s) = %s, want %s", q, on, got, on.Add(period))
			}
		}
	})

	t.Run("different questions spread", func(t *testing.T) {
		// Phases are whole seconds of the period (the daemon wakes at most
		// once a second), spread over it: at a 5m period, 50 questions
		// land on (nearly) 50 different seconds.
		const long, n = 5 * time.Minute, 50
		phases := phasesOf(t, n, long, time.Second)
		if len(phases) < n*4/5 {
			t.Errorf("%d distinct questions share %d phases, want nearly %d", n, len(phases), n)
		}
		// Spread over the period, not bunched in one part of it.
		var early int
		for p := range phases {
			if p < long/2 {
				early++
			}
		}
		if early < n/5 || early > n*4/5 {
			t.Errorf("%d of %d phases in the first half of the period, want them spread", early, n)
		}
	})

	t.Run("short periods have twenty phases", func(t *testing.T) {
		// At a 2s period, whole seconds would leave two phases: a herd of
		// wakes would come in two bursts. Steps of 100ms leave twenty.
		const short, n = 2 * time.Second, 400
		phases := phasesOf(t, n, short, 100*time.Millisecond)
		if len(phases) != 20 {
			t.Errorf("%d questions share %d phases, want 20", n, len(phases))
		}
		for p, k := range phases {
			if k > 2*n/20 {
				t.Errorf("phase %s has %d of %d questions, want about %d", p, k, n, n/20)
			}
		}
	})
}

// hashOf stands in for a question's hash.
func hashOf(question string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(question))
	return h.Sum64()
}

// phasesOf counts how many of n distinct questions polled every period
// fall on each phase, and checks that every phase is on a step.
func phasesOf(t *testing.T, n int, period, step time.Duration) map[time.Duration]int {
	t.Helper()
	phases := map[time.Duration]int{}
	for i := range n {
		p := firstCheck(start, period, hashOf(fmt.Sprintf("sum(rate(q%d[1m]))", i))).Sub(time.Unix(0, 0)) % period
		if p%step != 0 {
			t.Errorf("phase %s is not on a %s step", p, step)
		}
		phases[p]++
	}
	return phases
}

func TestConfigEqual(t *testing.T) {
	base := managed("web", func(c *Config) { c.Metadata.Headers = map[string]string{"A": "1"} })
	tests := []struct {
		name  string
		other Config
		want  bool
	}{
		{name: "same values", other: managed("web", func(c *Config) { c.Metadata.Headers = map[string]string{"A": "1"} }), want: true},
		{name: "other header value", other: managed("web", func(c *Config) { c.Metadata.Headers = map[string]string{"A": "2"} })},
		{name: "other cooldown", other: managed("web", func(c *Config) { c.Metadata.Headers = map[string]string{"A": "1"}; c.CooldownPeriod = time.Hour })},
		{name: "other workload", other: managed("api", func(c *Config) { c.Metadata.Headers = map[string]string{"A": "1"} })},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := base.Equal(tc.other); got != tc.want {
				t.Errorf("Equal = %v, want %v", got, tc.want)
			}
		})
	}
	t.Run("errors compared by message", func(t *testing.T) {
		a := Config{Ref: ref("web"), Mode: Invalid, Err: errors.New("annotation x: bad")}
		if b := (Config{Ref: ref("web"), Mode: Invalid, Err: errors.New("annotation x: bad")}); !a.Equal(b) {
			t.Error("equal messages: not Equal")
		}
		if b := (Config{Ref: ref("web"), Mode: Invalid, Err: errors.New("annotation y: bad")}); a.Equal(b) {
			t.Error("different messages: Equal")
		}
		if b := (Config{Ref: ref("web"), Mode: Invalid}); a.Equal(b) {
			t.Error("error and no error: Equal")
		}
	})
}

func TestParseOriginalReplicas(t *testing.T) {
	tests := []struct {
		value   *string
		want    int32
		ok, err bool
	}{
		{value: nil},
		{value: ptr("3"), want: 3, ok: true},
		{value: ptr("0"), ok: true, err: true},
		{value: ptr("-1"), ok: true, err: true},
		{value: ptr("three"), ok: true, err: true},
		{value: ptr("99999999999"), ok: true, err: true},
	}
	for _, tc := range tests {
		name := "absent"
		a := map[string]string{}
		if tc.value != nil {
			name = *tc.value
			a[AnnotationOriginalReplicas] = *tc.value
		}
		t.Run(name, func(t *testing.T) {
			n, ok, err := ParseOriginalReplicas(a)
			if n != tc.want || ok != tc.ok || (err != nil) != tc.err {
				t.Errorf("= %d, %v, %v; want %d, %v, error %v", n, ok, err, tc.want, tc.ok, tc.err)
			}
		})
	}
}

// A handler limited to one namespace never runs a loop for another, even if
// told to.
func TestSyncOutsideWatchNamespace(t *testing.T) {
	h := New(Options{Logger: zap.NewNop(), WatchNamespace: "a"})
	h.Sync(Config{Ref: Ref{GroupVersionKind: deploymentGVK, Namespace: "b", Name: "web"}, Mode: Managed})
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.wanted) != 0 {
		t.Errorf("wanted = %v, want nothing outside namespace a", h.wanted)
	}
}

// A loop is counted in the workloads gauge from its start, by what the cache
// shows, not only from its first check: the gauge adds up to the workloads
// at once, however the first checks are spread.
func TestWorkloadsCountedFromStart(t *testing.T) {
	hs := newHarness(t, false, deployment("up", 3, nil), deployment("down", 0, asleep("3")), deployment("zero", 0, nil))
	hs.prom.set("q", active)
	for _, name := range []string{"up", "down", "zero"} {
		hs.h.Sync(managed(name))
	}
	stop := hs.run()
	hs.parked(3)
	if got := hs.prom.called("ShouldScaleToZero") + hs.prom.called("ShouldScaleFromZero"); got != 0 {
		t.Fatalf("%d queries before the first check, want 0", got)
	}
	for state, want := range map[string]float64{StateAwake: 2, StateAsleep: 1, StateIdle: 0} {
		if got := hs.gauge(state); got != want {
			t.Errorf("before the first check: zeroscaler_workloads{state=%q} = %v, want %v", state, got, want)
		}
	}
	if got := hs.replicasAsleep(); got != 3 {
		t.Errorf("before the first check: zeroscaler_replicas_asleep = %v, want 3", got)
	}
	stop()
	if got := hs.replicasAsleep(); got != 0 {
		t.Errorf("after Run returned: zeroscaler_replicas_asleep = %v, want 0", got)
	}
}

// A check gives its slot back before it writes: a wake waiting on the API
// server does not hold up another workload's check, even with one slot.
func TestWritesDoNotHoldCheckSlots(t *testing.T) {
	hs := newHarness(t, false, deployment("sleeper", 0, asleep("3")), deployment("other", 3, nil))
	hs.h.nSlots = 1
	hs.prom.set("q", active)
	hs.prom.set("q2", active)
	entered, release := make(chan struct{}), make(chan struct{})
	hs.world.dyn.PrependReactor("patch", "*", func(ktesting.Action) (bool, runtime.Object, error) {
		close(entered)
		<-release
		return false, nil, nil // on to the world's own reactor
	})
	defer close(release)

	hs.h.Sync(managed("sleeper"))
	hs.run()
	hs.parked(1)
	hs.clock.Step(period)
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the wake's write never began")
	}

	hs.h.Sync(managed("other", func(c *Config) { c.Metadata.Query = "q2" }))
	hs.parked(1)
	hs.clock.Step(period)
	eventually(t, "the other workload's check while the wake's write waits", func() bool {
		return hs.prom.called("ShouldScaleToZero") == 1
	})
}
