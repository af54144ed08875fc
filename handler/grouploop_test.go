package handler

import (
	"errors"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	ktesting "k8s.io/client-go/testing"

	"github.com/zeroscaler/zeroscaler/scaler"
)

// The shop: web has the query, api and worker follow it.
func inShop(c *Config) { c.Group = "shop" }

// follower is a member of the shop without a query of its own.
func follower(name string, change ...func(*Config)) Config {
	return managed(name, append([]func(*Config){inShop, func(c *Config) { c.Metadata.Query = "" }}, change...)...)
}

// newShop starts a harness with these Deployments and the shop's three
// configurations synced, each changed by change.
func newShop(t *testing.T, dryRun bool, objs []runtime.Object, change ...func(*Config)) *harness {
	t.Helper()
	hs := newHarness(t, dryRun, objs...)
	hs.h.Sync(managed("web", append([]func(*Config){inShop}, change...)...))
	hs.h.Sync(follower("api", change...))
	hs.h.Sync(follower("worker", change...))
	return hs
}

func objects(objs ...runtime.Object) []runtime.Object { return objs }
func awakeShop(t *testing.T, change ...func(*Config)) *harness {
	return newShop(t, false, objects(deployment("web", 3, nil), deployment("api", 2, nil), deployment("worker", 1, nil)), change...)
}

func asleepShop(t *testing.T, change ...func(*Config)) *harness {
	return newShop(t, false, objects(deployment("web", 0, asleep("3")), deployment("api", 0, asleep("2")), deployment("worker", 0, asleep("1"))), change...)
}

// wantStates checks zeroscaler_workloads for every state.
func (hs *harness) wantStates(when string, want map[string]float64) {
	hs.t.Helper()
	for _, s := range []string{StateAwake, StateIdle, StateAsleep, StatePaused, StateInvalid} {
		if got := hs.gauge(s); got != want[s] {
			hs.t.Errorf("%s: zeroscaler_workloads{state=%q} = %v, want %v", when, s, got, want[s])
		}
	}
}

func (hs *harness) groups() float64 {
	hs.t.Helper()
	return gaugeValue(hs.t, hs.metrics.groups)
}

// Issue 11, groups: the shop sleeps together once web has been idle for
// its cooldown, each member recording its own count, and wakes together when
// web's metric rises, each member to its own count; events on every member
// name the group and web's reading.
func TestGroupSleepsAndWakesTogether(t *testing.T) {
	hs := awakeShop(t)
	hs.prom.set("q", idle)
	hs.run()
	hs.parked(1)
	if n, g := hs.h.Running(), hs.groups(); n != 1 || g != 1 {
		t.Errorf("Running() = %d, zeroscaler_groups = %v; want one loop, the group's", n, g)
	}
	hs.wantStates("at the start", map[string]float64{StateAwake: 3})

	hs.ticks(3)
	wantStrings(t, "writes while web cools down", hs.world.takeWrites(), nil)
	hs.wantStates("cooling down", map[string]float64{StateIdle: 3})

	hs.tick(1)
	stamp := hs.stamp()
	wantStrings(t, "writes once web has been idle for its cooldown", hs.world.takeWrites(), []string{
		sleepWrite("web", 3, stamp), sleepWrite("api", 2, stamp), sleepWrite("worker", 1, stamp),
	})
	wantEvents(t, hs.takeEvents(),
		[]string{"Normal ScaledToZero scaled 3 → 0: group shop idle (web: q = 0 < 1 for 30s)"},
		[]string{"Normal ScaledToZero scaled 2 → 0: group shop idle (web: q = 0 < 1 for 30s)"},
		[]string{"Normal ScaledToZero scaled 1 → 0: group shop idle (web: q = 0 < 1 for 30s)"})
	hs.wantStates("asleep", map[string]float64{StateAsleep: 3})
	if got, sleeps := hs.replicasAsleep(), counter(t, hs.metrics.sleeps); got != 6 || sleeps != 3 {
		t.Errorf("zeroscaler_replicas_asleep = %v, zeroscaler_sleeps_total = %v; want 6 and 3", got, sleeps)
	}

	hs.ticks(2)
	wantStrings(t, "writes while asleep and idle", hs.world.takeWrites(), nil)
	wantEvents(t, hs.takeEvents())

	hs.prom.set("q", active)
	hs.tick(1)
	wantStrings(t, "writes when web's metric rises", hs.world.takeWrites(), []string{
		wakeWrite("api", 2), wakeWrite("worker", 1), wakeWrite("web", 3),
	})
	wantEvents(t, hs.takeEvents(),
		[]string{"Normal ScaledFromZero scaled 0 → 2: group shop woke (web: q = 5 >= 1)"},
		[]string{"Normal ScaledFromZero scaled 0 → 1: group shop woke (web: q = 5 >= 1)"},
		[]string{"Normal ScaledFromZero scaled 0 → 3: group shop woke (web: q = 5 >= 1)"})
	hs.wantWakes("after the wake", map[string]float64{wakeByMetric: 1, wakeByGroup: 2})
	hs.wantStates("awake", map[string]float64{StateAwake: 3})
	if got := hs.replicasAsleep(); got != 0 {
		t.Errorf("zeroscaler_replicas_asleep = %v, want 0", got)
	}
	hs.ticks(2)
	wantStrings(t, "writes once awake", hs.world.takeWrites(), nil)
	if n := hs.world.conflictCount(); n != 0 {
		t.Errorf("%d conflicts, want 0", n)
	}
}

// Wake together, whatever the reason: Prometheus failing (fail open), or a
// person scaling a member up; unknown is not a reason.
func TestGroupWakesTogether(t *testing.T) {
	t.Run("Prometheus down", func(t *testing.T) {
		hs := asleepShop(t)
		hs.prom.set("q", promDown)
		hs.run()
		hs.tick(1)
		wantStrings(t, "writes", hs.world.takeWrites(), []string{wakeWrite("api", 2), wakeWrite("worker", 1), wakeWrite("web", 3)})
		wantEvents(t, hs.takeEvents(),
			[]string{"Warning WokeOnError scaled 0 → 2: group shop woke (web: the metric could not be read: ", "connection refused)"},
			[]string{"Warning WokeOnError scaled 0 → 1: group shop woke (web: the metric could not be read: "},
			[]string{"Warning WokeOnError scaled 0 → 3: group shop woke (web: the metric could not be read: "})
		hs.wantWakes("after the wake", map[string]float64{wakeByError: 1, wakeByGroup: 2})
	})
	t.Run("no data", func(t *testing.T) {
		hs := asleepShop(t)
		hs.prom.set("q", noData)
		hs.run()
		hs.ticks(3)
		wantStrings(t, "writes", hs.world.takeWrites(), nil)
		wantEvents(t, hs.takeEvents(), []string{"Warning MetricUnavailable"})
	})
	t.Run("a person scales a member up", func(t *testing.T) {
		hs := asleepShop(t)
		hs.prom.set("q", idle)
		hs.run()
		hs.tick(1)
		hs.world.setReplicas(ref("worker"), 4)
		hs.tick(1)
		wantStrings(t, "writes", hs.world.takeWrites(), []string{wakeWrite("api", 2), wakeWrite("web", 3), clearWrite("worker")})
		wantEvents(t, hs.takeEvents(),
			[]string{"Normal ScaledFromZero scaled 0 → 2: group shop woke (worker: scaled up to 4 by someone)"},
			[]string{"Normal ScaledFromZero scaled 0 → 3: group shop woke (worker: scaled up to 4 by someone)"})
		hs.wantWakes("after the wake", map[string]float64{wakeByPerson: 1, wakeByGroup: 2})
		// The stretch starts again at the next idle reading: a whole
		// cooldown before the next sleep.
		hs.ticks(3)
		wantStrings(t, "writes during the new cooldown", hs.world.takeWrites(), nil)
		hs.tick(1)
		if got := len(hs.world.takeWrites()); got != 3 {
			t.Errorf("%d writes a cooldown after the wake, want the three sleeps", got)
		}
	})
	t.Run("someone scales their own zero up while the group sleeps", func(t *testing.T) {
		hs := newShop(t, false, objects(deployment("web", 0, asleep("3")), deployment("api", 0, nil), deployment("worker", 0, asleep("1"))))
		hs.prom.set("q", idle)
		hs.run()
		hs.ticks(2)
		wantStrings(t, "writes while api is theirs at zero", hs.world.takeWrites(), nil)
		hs.world.setReplicas(ref("api"), 1)
		hs.tick(1)
		wantStrings(t, "writes", hs.world.takeWrites(), []string{wakeWrite("web", 3), wakeWrite("worker", 1)})
	})
}

// A paused member is left exactly as it is, asleep or awake, and does not
// hold the others back.
func TestGroupPausedMember(t *testing.T) {
	paused := func(c *Config) { c.Paused = c.Name == "worker" }
	t.Run("awake", func(t *testing.T) {
		hs := awakeShop(t, paused)
		hs.prom.set("q", idle)
		hs.run()
		hs.ticks(4)
		stamp := hs.stamp()
		wantStrings(t, "writes", hs.world.takeWrites(), []string{sleepWrite("web", 3, stamp), sleepWrite("api", 2, stamp)})
		hs.wantStates("asleep but the paused member", map[string]float64{StateAsleep: 2, StatePaused: 1})
		hs.prom.set("q", active)
		hs.tick(1)
		wantStrings(t, "writes", hs.world.takeWrites(), []string{wakeWrite("api", 2), wakeWrite("web", 3)})
		if w := hs.workload("worker"); w.Replicas != 1 || len(w.Annotations) != 0 {
			t.Errorf("paused worker = %d replicas, annotations %v; want it untouched", w.Replicas, w.Annotations)
		}
	})
	t.Run("asleep", func(t *testing.T) {
		hs := asleepShop(t, paused)
		hs.prom.set("q", active)
		hs.run()
		hs.tick(1)
		wantStrings(t, "writes", hs.world.takeWrites(), []string{wakeWrite("api", 2), wakeWrite("web", 3)})
		if w := hs.workload("worker"); w.Replicas != 0 || w.Annotations[AnnotationOriginalReplicas] != "1" {
			t.Errorf("paused worker = %d replicas, annotations %v; want it asleep as it was", w.Replicas, w.Annotations)
		}
	})
}

// A member whose configuration is invalid keeps the group awake, wakes it
// if it sleeps, and is told once.
func TestGroupInvalidMember(t *testing.T) {
	bad := Config{Ref: ref("api"), Mode: Invalid, Group: "shop", Err: errors.New(`annotation zeroscaler.io/cooldown-period: "1ms" is shorter than 1s`)}
	t.Run("awake", func(t *testing.T) {
		hs := awakeShop(t)
		hs.h.Sync(bad)
		hs.prom.set("q", idle)
		hs.run()
		hs.ticks(6)
		wantStrings(t, "writes", hs.world.takeWrites(), nil)
		wantEvents(t, hs.takeEvents(), []string{"Warning InvalidScalingConfig annotation zeroscaler.io/cooldown-period"})
		hs.wantStates("with an invalid member", map[string]float64{StateIdle: 1, StateAwake: 1, StateInvalid: 1})

		// Fixed: web's stretch went on meanwhile, so the group sleeps at
		// once.
		hs.h.Sync(follower("api"))
		hs.tick(1)
		if got := len(hs.world.takeWrites()); got != 3 {
			t.Errorf("%d writes once the member is fixed, want the three sleeps", got)
		}
	})
	t.Run("asleep", func(t *testing.T) {
		hs := asleepShop(t)
		hs.prom.set("q", idle)
		hs.run()
		hs.tick(1)
		hs.h.Sync(bad)
		hs.tick(1)
		wantStrings(t, "writes", hs.world.takeWrites(), []string{wakeWrite("web", 3), wakeWrite("worker", 1), wakeWrite("api", 2)})
		wantEvents(t, hs.takeEvents(),
			[]string{"Warning InvalidScalingConfig"},
			[]string{"Normal ScaledFromZero scaled 0 → 3: group shop woke (api: its scaling configuration is invalid)"},
			[]string{"Normal ScaledFromZero scaled 0 → 1: group shop woke (api: its scaling configuration is invalid)"},
			[]string{"Normal ScaledFromZero scaled 0 → 2: group shop woke (api: its scaling configuration is invalid)"})
		hs.wantWakes("after the wake", map[string]float64{wakeByReleased: 1, wakeByGroup: 2})
		hs.tick(1)
		wantStrings(t, "writes at the next check", hs.world.takeWrites(), nil)
	})
}

// A member that leaves the group while asleep is woken; the others stay as
// they are.
func TestGroupMemberLeaves(t *testing.T) {
	t.Run("a member without a query", func(t *testing.T) {
		hs := asleepShop(t)
		hs.prom.set("q", idle)
		hs.run()
		hs.tick(1)
		// Its zeroscaler.io/group annotation removed, it has none left:
		// the informer releases it.
		hs.h.Sync(Config{Ref: ref("api"), Mode: Released})
		hs.parked(2)
		hs.clock.Step(0) // the released loop's wake is due at once
		hs.loopDone("api")
		wantStrings(t, "writes", hs.world.takeWrites(), []string{wakeWrite("api", 2)})
		wantEvents(t, hs.takeEvents(), []string{"Normal ScaledFromZero scaled 0 → 2: woke because it left group shop"})
		hs.tick(1)
		wantStrings(t, "writes of the group after", hs.world.takeWrites(), nil)
		hs.wantStates("after the group's next check", map[string]float64{StateAsleep: 2})
	})
	t.Run("the member with the query", func(t *testing.T) {
		hs := asleepShop(t)
		hs.prom.set("q", idle)
		hs.run()
		hs.tick(1)
		// web leaves with its own query; the others are left without one,
		// which the informer tells as invalid.
		hs.h.Sync(managed("web"))
		noQuery := errors.New(`annotation zeroscaler.io/group: "shop" has no member with a zeroscaler.io/query annotation`)
		hs.h.Sync(Config{Ref: ref("api"), Mode: Invalid, Group: "shop", Err: noQuery})
		hs.h.Sync(Config{Ref: ref("worker"), Mode: Invalid, Group: "shop", Err: noQuery})
		hs.parked(2)
		for range 2 {
			hs.clock.Step(period)
			hs.parked(2)
		}
		writes := hs.world.takeWrites()
		for _, w := range []string{wakeWrite("web", 3), wakeWrite("api", 2), wakeWrite("worker", 1)} {
			if !contains(writes, w) {
				t.Errorf("writes %q lack %q", writes, w)
			}
		}
		if !contains(hs.takeEvents(), "Normal ScaledFromZero scaled 0 → 3: woke because it left group shop") {
			t.Error("no event on web saying it left the group")
		}
		// From now on web's own query decides: it sleeps alone, a cooldown
		// after its wake.
		var writes2 []string
		for range 4 {
			hs.tick(2)
			writes2 = append(writes2, hs.world.takeWrites()...)
		}
		if len(writes2) != 1 || !strings.HasPrefix(writes2[0], "patch web replicas=0 original-replicas=3") {
			t.Errorf("writes a cooldown later = %q, want web's sleep alone", writes2)
		}
	})
	t.Run("forgotten while running", func(t *testing.T) {
		hs := awakeShop(t)
		hs.prom.set("q", idle)
		hs.run()
		hs.tick(1)
		hs.h.Forget(ref("worker"))
		hs.ticks(3)
		stamp := hs.stamp()
		wantStrings(t, "writes", hs.world.takeWrites(), []string{sleepWrite("web", 3, stamp), sleepWrite("api", 2, stamp)})
		hs.wantStates("asleep", map[string]float64{StateAsleep: 2})
	})
	t.Run("the last member forgotten", func(t *testing.T) {
		hs := awakeShop(t)
		hs.run()
		hs.parked(1)
		for _, name := range []string{"web", "api", "worker"} {
			hs.h.Forget(ref(name))
		}
		eventually(t, "the group's loop to end", func() bool { return hs.groups() == 0 && hs.h.Running() == 0 })
		hs.wantStates("with no group", nil)
		eventually(t, "the scale locks to go", func() bool { return hs.scaleLocks() == 0 })
	})
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if strings.Contains(e, s) {
			return true
		}
	}
	return false
}

// A crash half-way through a group's sleep or wake leaves each member
// running, or asleep with its count; the next loop finishes the job at its
// first check.
func TestGroupCrashHalfway(t *testing.T) {
	// crashAt makes the daemon "die" at the first patch of the named
	// workload: that patch and every one after it are never sent.
	var mu sync.Mutex
	crashed, at := false, ""
	crashAt := func(hs *harness, name string) {
		hs.world.dyn.PrependReactor("patch", "*", func(a ktesting.Action) (bool, runtime.Object, error) {
			mu.Lock()
			defer mu.Unlock()
			if a.(ktesting.PatchAction).GetName() == at {
				crashed = true
			}
			if crashed {
				return true, nil, errors.New("connection reset by peer")
			}
			return false, nil, nil
		})
		mu.Lock()
		defer mu.Unlock()
		crashed, at = false, name
	}
	restart := func(hs *harness, stop func()) {
		stop()
		mu.Lock()
		crashed, at = false, ""
		mu.Unlock()
		hs.run()
	}
	t.Run("sleep", func(t *testing.T) {
		hs := awakeShop(t)
		hs.prom.set("q", idle)
		stop := hs.run()
		hs.ticks(3)
		crashAt(hs, "api")
		hs.tick(1)
		wantStrings(t, "writes before the crash", hs.world.takeWrites(), []string{sleepWrite("web", 3, hs.stamp())})
		for name, want := range map[string]int32{"api": 2, "worker": 1} {
			if w := hs.workload(name); w.Replicas != want || len(w.Annotations) != 0 {
				t.Errorf("%s after the crash = %d replicas, annotations %v; want it running", name, w.Replicas, w.Annotations)
			}
		}
		restart(hs, stop)
		hs.tick(1)
		stamp := hs.stamp()
		wantStrings(t, "writes at the new loop's first check", hs.world.takeWrites(), []string{sleepWrite("api", 2, stamp), sleepWrite("worker", 1, stamp)})
		wantEvents(t, hs.takeEvents(),
			[]string{"Normal ScaledToZero scaled 3 → 0: group shop idle (web: q = 0 < 1 for 30s)"},
			[]string{"Normal ScaledToZero scaled 2 → 0: group shop idle (web: asleep, q = 0 < 1)"},
			[]string{"Normal ScaledToZero scaled 1 → 0: group shop idle (web: asleep, q = 0 < 1)"})
	})
	t.Run("wake on the metric", func(t *testing.T) {
		hs := asleepShop(t)
		hs.prom.set("q", active)
		stop := hs.run()
		crashAt(hs, "worker")
		hs.tick(1)
		wantStrings(t, "writes before the crash", hs.world.takeWrites(), []string{wakeWrite("api", 2)})
		if w := hs.workload("web"); w.Replicas != 0 || w.Annotations[AnnotationOriginalReplicas] != "3" {
			t.Errorf("web after the crash = %d replicas, annotations %v; want it asleep with its count", w.Replicas, w.Annotations)
		}
		restart(hs, stop)
		hs.tick(1)
		wantStrings(t, "writes at the new loop's first check", hs.world.takeWrites(), []string{wakeWrite("worker", 1), wakeWrite("web", 3)})
	})
	t.Run("wake by a person", func(t *testing.T) {
		// The member someone scaled up keeps its marks until the others
		// are awake: after the crash, they still say who woke the group.
		hs := asleepShop(t)
		hs.prom.set("q", idle)
		stop := hs.run()
		hs.tick(1)
		hs.world.setReplicas(ref("api"), 2)
		crashAt(hs, "worker")
		hs.tick(1)
		wantStrings(t, "writes before the crash", hs.world.takeWrites(), []string{wakeWrite("web", 3)})
		restart(hs, stop)
		hs.tick(1)
		wantStrings(t, "writes at the new loop's first check", hs.world.takeWrites(), []string{wakeWrite("worker", 1), clearWrite("api")})
		hs.tick(1)
		wantStrings(t, "writes at the check after", hs.world.takeWrites(), nil)
		for name, want := range map[string]int32{"web": 3, "api": 2, "worker": 1} {
			if w := hs.workload(name); w.Replicas != want || len(w.Annotations) != 0 {
				t.Errorf("%s = %d replicas, annotations %v; want %d and no marks", name, w.Replicas, w.Annotations, want)
			}
		}
	})
}

// Behaviour 10 for a group: a dry run tells what a real run would.
func TestGroupDryRunTellsWhatARealRunDoes(t *testing.T) {
	script := []struct {
		reading reading
		relabel string // a member someone relabels before the check
	}{
		{reading: active}, {reading: idle}, {reading: idle, relabel: "api"}, {reading: idle},
		{reading: idle, relabel: "worker"}, // cooled down: sleep
		{reading: idle, relabel: "web"}, {reading: noData}, {reading: idle, relabel: "api"},
		{reading: active}, // wake
		{reading: idle, relabel: "worker"}, {reading: idle}, {reading: idle}, {reading: idle},
		{reading: idle},                     // sleep
		{reading: promDown, relabel: "web"}, // fail open: wake
		{reading: idle}, {reading: idle},
	}
	play := func(dryRun bool) []string {
		hs := newShop(t, dryRun, objects(deployment("web", 3, nil), deployment("api", 2, nil), deployment("worker", 1, nil)))
		hs.run()
		var told []string
		for i, s := range script {
			hs.prom.set("q", s.reading)
			if s.relabel != "" {
				hs.world.update(ref(s.relabel), func(u *unstructured.Unstructured) {
					u.SetLabels(map[string]string{"step": strings.Repeat("x", i+1)})
				})
			}
			hs.tick(1)
			for _, e := range hs.takeEvents() {
				told = append(told, strings.Replace(e, "(dry run) ", "", 1))
			}
		}
		if dryRun {
			if writes := hs.world.writeActions(); writes != 0 {
				t.Errorf("dry run: %d write requests, want none", writes)
			}
		}
		return told
	}
	real, dry := play(false), play(true)
	if len(real) < 9 {
		t.Fatalf("the script told only %q in a real run: the shop should sleep and wake twice", real)
	}
	wantStrings(t, "events of a dry run against a real run", dry, real)
}

// gridAt reports whether a loop of this period and phase checks at t.
func gridAt(t time.Time, period time.Duration, phase uint64) bool {
	next := firstCheck(t.Add(-time.Nanosecond), period, phase)
	return next.Equal(t)
}

// Office hours: a sleeping workload (or group) is woken at the very start
// of its hours, between two checks of its grid, with ScheduledWake.
func TestAwakeHoursWakeAtTheirStart(t *testing.T) {
	// start is Wednesday 05:06:07 UTC; the hours begin at 05:07:00.
	opens := time.Date(2026, 3, 4, 5, 7, 0, 0, time.UTC)
	hours := func(c *Config) { c.AwakeHours = mustHours(t, "Wed 05:07-06:00 UTC") }
	t.Run("a workload", func(t *testing.T) {
		hs := newHarness(t, false, deployment("web", 0, asleep("3")))
		hs.prom.set("q", idle)
		hs.h.Sync(managed("web", hours))
		hs.run()
		if gridAt(opens, period, uint64(len("q"))*uint64(time.Second)) {
			t.Fatal("the test needs the hours to begin between two checks of the grid")
		}
		hs.untilJustBefore(opens)
		wantStrings(t, "writes before the hours", hs.world.takeWrites(), nil)
		hs.clock.SetTime(opens)
		hs.parked(1)
		wantStrings(t, "writes as the hours begin", hs.world.takeWrites(), []string{wakeWrite("web", 3)})
		wantEvents(t, hs.takeEvents(), []string{"Normal ScheduledWake scaled 0 → 3: awake hours Wed 05:07-06:00 UTC"})
		hs.wantWakes("after the wake", map[string]float64{wakeBySchedule: 1})
	})
	t.Run("a group", func(t *testing.T) {
		hs := asleepShop(t, hours)
		hs.prom.set("q", idle)
		hs.run()
		// The shop checks at the phase of web's question.
		if gridAt(opens, period, uint64(len("q"))*uint64(time.Second)) {
			t.Fatal("the test needs the hours to begin between two checks of the grid")
		}
		hs.untilJustBefore(opens)
		wantStrings(t, "writes before the hours", hs.world.takeWrites(), nil)
		hs.clock.SetTime(opens)
		hs.parked(1)
		wantStrings(t, "writes as the hours begin", hs.world.takeWrites(), []string{wakeWrite("web", 3), wakeWrite("worker", 1), wakeWrite("api", 2)})
		wantEvents(t, hs.takeEvents(),
			[]string{"Normal ScheduledWake scaled 0 → 3: group shop woke (api: awake hours Wed 05:07-06:00 UTC)"},
			[]string{"Normal ScheduledWake scaled 0 → 1: group shop woke (api: awake hours Wed 05:07-06:00 UTC)"},
			[]string{"Normal ScheduledWake scaled 0 → 2: group shop woke (api: awake hours Wed 05:07-06:00 UTC)"})
		hs.wantWakes("after the wake", map[string]float64{wakeBySchedule: 3})
	})
}

// untilJustBefore runs the one loop's checks until the clock is within a
// period before t, and then moves it to just before t.
func (hs *harness) untilJustBefore(t time.Time) {
	hs.t.Helper()
	for hs.clock.Now().Add(period).Before(t) {
		hs.tick(1)
	}
	hs.parked(1)
	hs.clock.SetTime(t.Add(-time.Millisecond))
	hs.parked(1)
}

// Office hours: inside them an idle workload never sleeps; its stretch goes
// on, and once they end the metric decides at the next check.
func TestAwakeHoursKeepAwake(t *testing.T) {
	// start is Wednesday 05:06:07 UTC, inside the hours until 05:08:00.
	ends := time.Date(2026, 3, 4, 5, 8, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		hs   func(t *testing.T, hours func(*Config)) *harness
		n    int
	}{
		{"a workload", func(t *testing.T, hours func(*Config)) *harness {
			hs := newHarness(t, false, deployment("web", 3, nil))
			hs.h.Sync(managed("web", hours))
			return hs
		}, 1},
		{"a group", awakeShopWith, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hs := tc.hs(t, func(c *Config) { c.AwakeHours = mustHours(t, "Mon-Fri 05:00-05:08 UTC") })
			hs.prom.set("q", idle)
			hs.run()
			for hs.clock.Now().Add(period).Before(ends) {
				hs.tick(1)
				wantStrings(t, "writes inside the hours at "+hs.clock.Now().Format(time.TimeOnly), hs.world.takeWrites(), nil)
			}
			if n := hs.prom.called("IsHealthy"); n != 0 {
				t.Errorf("health asked %d times inside the hours, want 0", n)
			}
			hs.tick(1)
			if got := len(hs.world.takeWrites()); got != tc.n {
				t.Errorf("%d writes at the first check after the hours, want %d sleeps", got, tc.n)
			}
		})
	}
}

func awakeShopWith(t *testing.T, change func(*Config)) *harness { return awakeShop(t, change) }

func gaugeValue(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

// A cache behind the group's own write (a lagging watch) makes the group
// wait, rather than decide on the old object and write into a conflict.
func TestGroupCacheBehindOurWrite(t *testing.T) {
	hs := awakeShop(t)
	hs.prom.set("q", idle)
	hs.run()
	hs.ticks(3)
	hs.world.lag(ref("api"))
	hs.tick(1)
	if got := len(hs.world.takeWrites()); got != 3 {
		t.Fatalf("%d writes at the sleep, want 3", got)
	}
	hs.ticks(2)
	wantStrings(t, "writes while the cache lags", hs.world.takeWrites(), nil)
	if n := hs.world.conflictCount(); n != 0 {
		t.Errorf("conflicts while the cache lags = %d, want 0", n)
	}
	hs.world.catchUp()
	hs.ticks(2)
	wantStrings(t, "writes once the cache caught up", hs.world.takeWrites(), nil)
	hs.wantStates("asleep", map[string]float64{StateAsleep: 3})
}

// A group checks at the shortest polling period of its members, whichever
// member sets it.
func TestGroupPeriodIsTheShortest(t *testing.T) {
	hs := awakeShop(t, func(c *Config) {
		if c.Name == "worker" {
			c.PollingPeriod = period / 2
		}
	})
	hs.prom.set("q", active)
	hs.run()
	hs.parked(1)
	for range 4 {
		hs.clock.Step(period / 2)
		hs.parked(1)
	}
	if got := hs.checksRun(); got != 4 {
		t.Errorf("%d checks in two periods of web, want 4: the group checks at worker's period", got)
	}
}

// Members come and go without starting the others' idle stretches again:
// the group's loop takes the change up at its next check, and only a member
// whose configuration changed starts afresh.
func TestGroupMembersChange(t *testing.T) {
	t.Run("a member joins", func(t *testing.T) {
		hs := newShop(t, false, objects(deployment("web", 3, nil), deployment("api", 2, nil), deployment("worker", 1, nil), deployment("cache", 2, nil)))
		hs.prom.set("q", idle)
		hs.run()
		hs.ticks(2)
		hs.h.Sync(follower("cache"))
		hs.ticks(1)
		wantStrings(t, "writes before the cooldown", hs.world.takeWrites(), nil)
		hs.tick(1)
		if got := len(hs.world.takeWrites()); got != 4 {
			t.Errorf("%d writes a cooldown after web's first idle reading, want 4 sleeps", got)
		}
		if n := len(hs.prom.built()); n != 1 {
			t.Errorf("%d deciders built, want web's only", n)
		}
		hs.wantStates("asleep", map[string]float64{StateAsleep: 4})
	})
	t.Run("a lone workload joins", func(t *testing.T) {
		hs := newShop(t, false, objects(deployment("web", 3, nil), deployment("api", 2, nil), deployment("worker", 1, nil), deployment("cache", 2, nil)))
		hs.prom.set("q", idle)
		hs.prom.set("cq", active)
		hs.h.Sync(managed("cache", func(c *Config) { c.Metadata.Query = "cq" }))
		hs.run()
		hs.parked(2)
		if n := hs.h.Running(); n != 2 {
			t.Fatalf("Running() = %d, want the group's loop and cache's", n)
		}
		hs.h.Sync(follower("cache"))
		eventually(t, "cache's own loop to stop", func() bool {
			for _, d := range hs.prom.built() {
				if d.md.Query == "cq" && !d.isClosed() {
					return false
				}
			}
			return hs.h.Running() == 1
		})
		hs.ticks(4)
		if got := len(hs.world.takeWrites()); got != 4 {
			t.Errorf("%d writes a cooldown later, want 4 sleeps", got)
		}
	})
	t.Run("a member's configuration changes", func(t *testing.T) {
		hs := awakeShop(t)
		hs.prom.set("q", idle)
		hs.run()
		hs.ticks(2)
		hs.h.Sync(managed("web", inShop, func(c *Config) { c.Metadata.Threshold = 2 }))
		hs.tick(1)
		eventually(t, "web's old decider to close", func() bool { return len(hs.prom.built()) == 2 && hs.prom.built()[0].isClosed() })
		// web starts afresh: its stretch began at this check.
		hs.ticks(2)
		wantStrings(t, "writes within web's new cooldown", hs.world.takeWrites(), nil)
		hs.tick(1)
		if got := len(hs.world.takeWrites()); got != 3 {
			t.Errorf("%d writes a cooldown after web's change, want 3 sleeps", got)
		}
	})
}

// A group checks at the phase of the question of its first member that
// asks one, as a lone workload asking that question does, so that they
// share one request; with no member asking, at its key's.
func TestGroupPhase(t *testing.T) {
	asks := func(q string) *loopState { return &loopState{decider: &fakeDecider{md: scaler.Metadata{Query: q}}} }
	follows := &loopState{}
	const keyHash = 7
	for _, c := range []struct {
		name    string
		members []*loopState
		want    uint64
	}{
		{"the first member that asks", []*loopState{follows, asks("qq"), asks("q")}, asks("qq").decider.QuestionHash()},
		{"no member asks", []*loopState{follows, follows}, keyHash},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := groupPhase(keyHash, c.members); got != c.want {
				t.Errorf("groupPhase = %d, want %d", got, c.want)
			}
		})
	}
}

// readMoments runs loops (the number of loops parked on the clock) for
// intervals polling periods in small steps, so that checks due at different
// phases run at different moments of the clock, and returns how many times
// q was read at each moment (the clock's time since start).
func (hs *harness) readMoments(loops, intervals int) map[time.Duration]int {
	hs.t.Helper()
	var mu sync.Mutex
	asked := map[time.Duration]int{}
	hs.prom.mu.Lock()
	hs.prom.onRead = func(string) {
		mu.Lock()
		defer mu.Unlock()
		asked[hs.clock.Since(start)]++
	}
	hs.prom.mu.Unlock()
	hs.run()
	hs.parked(loops)
	for range intervals * phaseSteps {
		hs.clock.Step(period / phaseSteps)
		hs.parked(loops)
	}
	mu.Lock()
	defer mu.Unlock()
	return maps.Clone(asked)
}

// wantOneRequestPerInterval checks that two loops asking one question read
// it once each per interval, both at the same moment: a scaler sharing
// answers sends one request per interval for both.
func wantOneRequestPerInterval(t *testing.T, asked map[time.Duration]int, intervals int) {
	t.Helper()
	reads := 0
	for _, n := range asked {
		reads += n
	}
	if reads != 2*intervals {
		t.Fatalf("q read %d times in %d intervals by two loops, want %d: %v", reads, intervals, 2*intervals, asked)
	}
	if len(asked) != intervals {
		t.Errorf("q read at %d moments in %d intervals (%v): the loops check at different phases, and a shared scaler would send %d requests, not %d",
			len(asked), intervals, asked, len(asked), intervals)
	}
}

// Two groups whose asking members ask the same question (the same query of
// the same server) check at the same moments, so that a scaler sharing
// answers sends one request per interval for both: the phase is that of the
// first asking member's question, not of the group's key. In each group the
// asking member sorts differently among its followers.
func TestGroupsSharingAQuestionCheckTogether(t *testing.T) {
	hs := newHarness(t, false, deployment("api", 2, nil), deployment("web", 3, nil), deployment("cart", 2, nil), deployment("db", 1, nil))
	hs.h.Sync(follower("api"))
	hs.h.Sync(managed("web", inShop))
	inStore := func(c *Config) { c.Group = "store" }
	hs.h.Sync(managed("cart", inStore))
	hs.h.Sync(follower("db", inStore))
	hs.prom.set("q", active)
	wantOneRequestPerInterval(t, hs.readMoments(2, 3), 3)
}

// Item 14 of the hardening issue, one question key: a workload naming the
// default server and one naming none ask the same question, as the scaler
// says (its QuestionHash resolves the server; here the fake's hash is the
// query's). Their loops are phased by that hash alone, not by the
// configuration as written, so they check at the same moments.
func TestDefaultServerNamedOrNotCheckTogether(t *testing.T) {
	hs := newHarness(t, false, deployment("web", 3, nil), deployment("api", 2, nil))
	hs.h.Sync(managed("web"))
	hs.h.Sync(managed("api", func(c *Config) { c.Metadata.ServerAddress = "http://prometheus.monitoring:9090" }))
	hs.prom.set("q", active)
	wantOneRequestPerInterval(t, hs.readMoments(2, 3), 3)
}
