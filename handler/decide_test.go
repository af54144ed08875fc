package handler

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zeroscaler/zeroscaler/scaler"
	"github.com/zeroscaler/zeroscaler/schedule"
)

// noStretch, as an idle stretch's length, means there is none.
const noStretch = time.Duration(-1)

// TestDecide is the daemon's judgement as a table: each row is a rule of the
// README ("How it behaves", numbered as there) or an item of the hardening
// and never-early issues, given as what the API shows, what the loop
// remembers and what the scaler answers.
func TestDecide(t *testing.T) {
	now := start
	var (
		idleAt    = &answer{yes: true, reading: scaler.Reading{Query: "q", Value: 0, Threshold: 1}}
		activeAt  = &answer{yes: false, reading: scaler.Reading{Query: "q", Value: 5, Threshold: 1}}
		noDataAt  = &answer{err: fmt.Errorf("query q: %w", scaler.ErrNoData)}
		downAt    = &answer{err: errors.New("query q: connection refused")}
		severalAt = &answer{err: fmt.Errorf("query q: %w", scaler.ErrMultipleSeries)}
		yes       = &answer{yes: true}
		no        = &answer{}
		failed    = &answer{err: errors.New("health query: connection refused")}
		burst     = &answer{yes: false, reading: scaler.Reading{Query: "max_over_time((q)[30s:1s])", Value: 3, Threshold: 1}}
		noConfirm = &answer{err: fmt.Errorf("scalar query: %w", scaler.ErrCannotConfirm)}
		office    = mustHours(t, "Mon-Fri 08:00-19:00 UTC")
	)
	tests := []struct {
		name     string
		cfg      func(*Config)
		replicas int32
		original string // the original-replicas mark; "" for none
		// The loop's memory: the length of its idle stretch so far (0 or
		// noStretch: none), the replicas it saw last (0 means "as now"),
		// the problem it told, the version its last write was decided on.
		stretch      time.Duration
		lastReplicas int32
		problem      string
		written      string
		leftGroup    string
		// hours are the awake hours in force at the check (nil: outside).
		hours *schedule.Hours

		metric, health, confirm *answer

		wantAsked   []question
		wantVerb    verb
		wantTarget  int32
		wantCause   string
		wantState   string
		wantEvent   string // "Reason message"
		wantWarn    string // the reason of a Warning told at once
		wantFinish  bool
		wantStretch time.Duration
	}{
		// 1. To zero, only after a full cooldown of the daemon's own idle
		// readings, a healthy source, and a confirmation over the window.
		{name: "1: the first idle reading starts the stretch", replicas: 3, stretch: noStretch,
			metric: idleAt, wantAsked: []question{askMetric}, wantState: StateIdle, wantStretch: 0},
		{name: "1: idle for less than the cooldown", replicas: 3, stretch: cooldown - time.Second,
			metric: idleAt, wantAsked: []question{askMetric}, wantState: StateIdle, wantStretch: cooldown - time.Second},
		{name: "1: idle for the cooldown, healthy and confirmed: sleep", replicas: 3, stretch: cooldown,
			metric: idleAt, health: yes, confirm: idleAt,
			wantAsked: []question{askMetric, askHealth, askConfirm}, wantVerb: doSleep, wantState: StateAsleep,
			wantEvent: "ScaledToZero scaled 3 → 0: q = 0 < 1 for 30s", wantStretch: cooldown},
		{name: "1: targets not up for the whole window", replicas: 3, stretch: cooldown,
			metric: idleAt, health: no, wantAsked: []question{askMetric, askHealth}, wantState: StateIdle, wantStretch: cooldown},
		{name: "1: health query fails", replicas: 3, stretch: cooldown,
			metric: idleAt, health: failed, wantAsked: []question{askMetric, askHealth}, wantState: StateIdle, wantStretch: cooldown},
		{name: "1: an active reading ends the stretch", replicas: 3, stretch: cooldown,
			metric: activeAt, wantAsked: []question{askMetric}, wantState: StateAwake, wantStretch: noStretch},
		{name: "1: a scale-up by anyone ends the stretch", replicas: 4, lastReplicas: 3, stretch: cooldown,
			metric: idleAt, wantAsked: []question{askMetric}, wantState: StateIdle, wantStretch: 0},
		{name: "1: a scale-down by someone does not", replicas: 2, lastReplicas: 3, stretch: cooldown,
			metric: idleAt, health: yes, confirm: idleAt, wantAsked: []question{askMetric, askHealth, askConfirm},
			wantVerb: doSleep, wantState: StateAsleep, wantEvent: "ScaledToZero scaled 2 → 0: q = 0 < 1 for 30s", wantStretch: cooldown},

		// Never early (issue 13, item 1).
		{name: "13.1: a burst between two checks keeps it awake and restarts the stretch", replicas: 3, stretch: cooldown,
			metric: idleAt, health: yes, confirm: burst, wantAsked: []question{askMetric, askHealth, askConfirm},
			wantState: StateIdle, wantStretch: 0},
		{name: "13.1: a confirmation that cannot be read keeps it awake", replicas: 3, stretch: cooldown,
			metric: idleAt, health: yes, confirm: noDataAt, wantAsked: []question{askMetric, askHealth, askConfirm},
			wantState: StateIdle, wantStretch: cooldown},
		{name: "13.1: a query that cannot be confirmed sleeps on the daemon's own stretch", replicas: 3, stretch: cooldown,
			metric: idleAt, health: yes, confirm: noConfirm, wantAsked: []question{askMetric, askHealth, askConfirm},
			wantVerb: doSleep, wantState: StateAsleep, wantEvent: "ScaledToZero scaled 3 → 0: q = 0 < 1 for 30s", wantStretch: cooldown},

		// 2. From zero: on the metric, and on any failure (fail open).
		{name: "2: asleep and active: woken to the original count", original: "3",
			metric: activeAt, wantAsked: []question{askWake}, wantVerb: doWake, wantTarget: 3, wantCause: wakeByMetric,
			wantState: StateAwake, wantEvent: "ScaledFromZero scaled 0 → 3: q = 5 >= 1", wantStretch: noStretch},
		{name: "2: asleep and Prometheus fails: woken, one Warning", original: "3",
			metric: downAt, wantAsked: []question{askWake}, wantVerb: doWake, wantTarget: 3, wantCause: wakeByError,
			wantState: StateAwake, wantEvent: "WokeOnError scaled 0 → 3 because the metric could not be read: query q: connection refused", wantStretch: noStretch},
		{name: "2: asleep and idle: stays asleep", original: "3",
			metric: idleAt, wantAsked: []question{askWake}, wantState: StateAsleep, wantStretch: noStretch},
		{name: "2: a recorded count that is not a number: woken to min-replicas", original: "lots",
			cfg: func(c *Config) { c.MinReplicas = 2 }, metric: activeAt, wantAsked: []question{askWake},
			wantVerb: doWake, wantTarget: 2, wantCause: wakeByMetric, wantState: StateAwake, wantEvent: "ScaledFromZero scaled 0 → 2: q = 5 >= 1", wantStretch: noStretch},

		// 3. Unknown is not zero.
		{name: "3: no data while awake: not idle, told once", replicas: 3, stretch: cooldown,
			metric: noDataAt, wantAsked: []question{askMetric}, wantState: StateAwake, wantWarn: ReasonMetricUnavailable, wantStretch: noStretch},
		{name: "3: no data again: not told again", replicas: 3, stretch: noStretch, problem: "no_data",
			metric: noDataAt, wantAsked: []question{askMetric}, wantState: StateAwake, wantStretch: noStretch},
		{name: "3: no data while asleep: stays asleep", original: "3",
			metric: noDataAt, wantAsked: []question{askWake}, wantState: StateAsleep, wantWarn: ReasonMetricUnavailable, wantStretch: noStretch},
		{name: "3: several series while awake: a configuration error", replicas: 3, stretch: cooldown,
			metric: severalAt, wantAsked: []question{askMetric}, wantState: StateAwake, wantWarn: ReasonInvalidScalingConfig, wantStretch: noStretch},
		{name: "3: several series while asleep: woken, and told", original: "3",
			metric: severalAt, wantAsked: []question{askWake}, wantVerb: doWake, wantTarget: 3, wantCause: wakeByError,
			wantState: StateAwake, wantWarn: ReasonInvalidScalingConfig,
			wantEvent: "WokeOnError scaled 0 → 3 because the metric could not be read: query q: " + scaler.ErrMultipleSeries.Error(), wantStretch: noStretch},

		// 4. Nothing is lost; every write is decided on what the cache shows.
		{name: "4: the cache does not show our last write yet: wait", replicas: 3, stretch: cooldown, written: "1",
			wantState: "", wantStretch: cooldown},

		// 5. People win; item 9's windows.
		{name: "5: at zero, not by us: left alone", stretch: cooldown,
			wantState: StateAwake, wantStretch: noStretch},
		{name: "5: scaled up by someone while asleep: marks cleared, stretch restarts", replicas: 2, lastReplicas: -1, original: "3", stretch: cooldown,
			wantVerb: doClear, wantCause: wakeByPerson, wantState: StateAwake, wantStretch: noStretch},
		{name: "9a: a person's zero raced our sleep: no marks, so theirs", stretch: cooldown, lastReplicas: 3,
			wantState: StateAwake, wantStretch: noStretch},
		{name: "9b: a person's zero right after our wake, seen by a new loop: theirs", stretch: noStretch, lastReplicas: -1,
			wantState: StateAwake, wantStretch: noStretch},

		// 6. Letting go.
		{name: "6: query removed while asleep: woken once", original: "3",
			cfg:      func(c *Config) { c.Mode = Released },
			wantVerb: doWake, wantTarget: 3, wantCause: wakeByReleased, wantFinish: true,
			wantEvent: "ScaledFromZero scaled 0 → 3: woke because the zeroscaler.io/query annotation was removed", wantStretch: noStretch},
		{name: "6: all annotations removed while asleep: woken to the count remembered", cfg: func(c *Config) { c.Mode, c.WakeTo = Released, 4 },
			wantVerb: doWake, wantTarget: 4, wantCause: wakeByReleased, wantFinish: true,
			wantEvent: "ScaledFromZero scaled 0 → 4: woke because the zeroscaler.io/query annotation was removed", wantStretch: noStretch},
		{name: "6: relabelled out of --selector while asleep", original: "2", cfg: func(c *Config) { c.Mode, c.OutOfScope = Released, true },
			wantVerb: doWake, wantTarget: 2, wantCause: wakeByReleased, wantFinish: true,
			wantEvent: "ScaledFromZero scaled 0 → 2: woke because it no longer matches the daemon's --selector", wantStretch: noStretch},
		{name: "6: released while running with marks: cleared", replicas: 3, original: "3", cfg: func(c *Config) { c.Mode = Released },
			wantVerb: doClear, wantFinish: true, wantStretch: noStretch},
		{name: "6: released while running: nothing to do", replicas: 3, cfg: func(c *Config) { c.Mode = Released },
			wantFinish: true, wantStretch: noStretch},
		{name: "6, item 12: released at a person's zero (or at one whose marks were all removed while no replica ran): left alone",
			cfg: func(c *Config) { c.Mode = Released }, wantFinish: true, wantStretch: noStretch},

		// Office hours (issue 11): inside them a workload never sleeps, and
		// one asleep is woken without asking the metric.
		{name: "11: asleep when the awake hours begin: woken to the original count", original: "3", hours: office,
			wantVerb: doWake, wantTarget: 3, wantCause: wakeBySchedule, wantState: StateAwake,
			wantEvent: "ScheduledWake scaled 0 → 3: awake hours Mon-Fri 08:00-19:00 UTC", wantStretch: noStretch},
		{name: "11: idle for the cooldown inside the awake hours: stays awake, the stretch goes on", replicas: 3, stretch: cooldown + time.Hour, hours: office,
			metric: idleAt, wantAsked: []question{askMetric}, wantState: StateIdle, wantStretch: cooldown + time.Hour},
		{name: "11: active inside the awake hours", replicas: 3, stretch: cooldown, hours: office,
			metric: activeAt, wantAsked: []question{askMetric}, wantState: StateAwake, wantStretch: noStretch},
		{name: "11: at a person's zero inside the awake hours: still theirs", hours: office,
			wantState: StateAwake, wantStretch: noStretch},
		{name: "11: scaled up by someone inside the awake hours: marks cleared", replicas: 2, lastReplicas: -1, original: "3", hours: office,
			wantVerb: doClear, wantCause: wakeByPerson, wantState: StateAwake, wantStretch: noStretch},

		// Leaving a group (issue 11): woken once if asleep, then its own
		// query decides; an excluded workload is let go like a released one.
		{name: "11: left its group while asleep: woken, not finished", original: "2", leftGroup: "shop",
			wantVerb: doWake, wantTarget: 2, wantCause: wakeByReleased, wantState: StateAwake,
			wantEvent: "ScaledFromZero scaled 0 → 2: woke because it left group shop", wantStretch: noStretch},
		{name: "11: left its group while running: its own query decides", replicas: 3, stretch: noStretch, leftGroup: "shop",
			metric: idleAt, wantAsked: []question{askMetric}, wantState: StateIdle, wantStretch: 0},
		{name: "11: left its group and released while asleep", original: "2", leftGroup: "shop", cfg: func(c *Config) { c.Mode = Released },
			wantVerb: doWake, wantTarget: 2, wantCause: wakeByReleased, wantFinish: true,
			wantEvent: "ScaledFromZero scaled 0 → 2: woke because it left group shop", wantStretch: noStretch},
		{name: "11: excluded while asleep: woken once", original: "2", cfg: func(c *Config) { c.Mode, c.Excluded = Released, true },
			wantVerb: doWake, wantTarget: 2, wantCause: wakeByReleased, wantFinish: true,
			wantEvent: "ScaledFromZero scaled 0 → 2: woke because it is excluded (zeroscaler.io/exclude)", wantStretch: noStretch},

		// 7. Bad input: a sleeping workload with an invalid configuration is woken.
		{name: "7: invalid while asleep: woken", original: "3", cfg: func(c *Config) { c.Mode = Invalid },
			wantVerb: doWake, wantTarget: 3, wantCause: wakeByReleased, wantFinish: true,
			wantEvent: "ScaledFromZero scaled 0 → 3: woke because its scaling configuration is invalid", wantStretch: noStretch},
		{name: "7: invalid while running: nothing written, nothing asked", replicas: 3, cfg: func(c *Config) { c.Mode = Invalid },
			wantFinish: true, wantStretch: noStretch},
		{name: "7: invalid while running with marks: cleared", replicas: 3, original: "3", cfg: func(c *Config) { c.Mode = Invalid },
			wantVerb: doClear, wantFinish: true, wantStretch: noStretch},
		{name: "7: invalid at a person's zero: left alone", cfg: func(c *Config) { c.Mode = Invalid },
			wantFinish: true, wantStretch: noStretch},

		// 9. It tells you: each Event above carries the reading; a metric
		// problem is told once when it starts (rule 3's rows), and its end
		// is not a Warning.
		{name: "9: readable again after an outage: no Warning", replicas: 3, stretch: noStretch, problem: "no_data",
			metric: activeAt, wantAsked: []question{askMetric}, wantState: StateAwake, wantStretch: noStretch},
		{name: "9: a different problem is told again", replicas: 3, stretch: noStretch, problem: "no_data",
			metric: downAt, wantAsked: []question{askMetric}, wantState: StateAwake, wantWarn: ReasonMetricUnavailable, wantStretch: noStretch},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := managed("web")
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			w := Workload{Ref: cfg.Ref, ResourceVersion: "1", Replicas: tc.replicas}
			if tc.original != "" {
				w.Annotations = map[string]string{AnnotationOriginalReplicas: tc.original, AnnotationScaledToZeroAt: "2026-01-01T00:00:00Z"}
			}
			m := rowMemory(tc.stretch, tc.replicas, tc.lastReplicas, tc.problem, tc.written, now)
			m.leftGroup = tc.leftGroup
			answers := map[question]*answer{askMetric: tc.metric, askWake: tc.metric, askHealth: tc.health, askConfirm: tc.confirm}
			f := facts{now: now, w: w, hours: tc.hours}
			var asked []question
			var a action
			for {
				a, m = decide(cfg, f, m)
				if a.verb != doAsk {
					break
				}
				if slices.Contains(asked, a.ask) || len(asked) > 3 {
					t.Fatalf("asked %v again after %v", a.ask, asked)
				}
				asked = append(asked, a.ask)
				ans := answers[a.ask]
				if ans == nil {
					t.Fatalf("asked %v, which this row does not answer (asked so far %v)", a.ask, asked)
				}
				switch a.ask {
				case askMetric, askWake:
					f.metric = ans
				case askHealth:
					f.health = ans
				case askConfirm:
					f.confirm = ans
				}
				// decide is pure: the memory it returned with an ask is not
				// kept; it starts again from the loop's.
				m = rowMemory(tc.stretch, tc.replicas, tc.lastReplicas, tc.problem, tc.written, now)
				m.leftGroup = tc.leftGroup
			}
			if !slices.Equal(asked, tc.wantAsked) {
				t.Errorf("asked %v, want %v", asked, tc.wantAsked)
			}
			if a.verb != tc.wantVerb || a.target != tc.wantTarget || a.cause != tc.wantCause || a.finish != tc.wantFinish {
				t.Errorf("action = verb %d target %d cause %q finish %t, want verb %d target %d cause %q finish %t",
					a.verb, a.target, a.cause, a.finish, tc.wantVerb, tc.wantTarget, tc.wantCause, tc.wantFinish)
			}
			if a.state != tc.wantState {
				t.Errorf("state = %q, want %q", a.state, tc.wantState)
			}
			var gotEvent, gotWarn string
			if a.event != nil {
				gotEvent = a.event.reason + " " + a.event.message
			}
			if a.warn != nil {
				gotWarn = a.warn.reason
				if !strings.Contains(a.warn.message, "query q") && a.warn.reason == ReasonMetricUnavailable {
					t.Errorf("warning %q does not say what failed", a.warn.message)
				}
			}
			if gotEvent != tc.wantEvent {
				t.Errorf("event = %q, want %q", gotEvent, tc.wantEvent)
			}
			if gotWarn != tc.wantWarn {
				t.Errorf("warning = %q, want %q", gotWarn, tc.wantWarn)
			}
			gotStretch := noStretch
			if !m.idleSince.IsZero() {
				gotStretch = now.Sub(m.idleSince)
			}
			if gotStretch != tc.wantStretch {
				t.Errorf("idle stretch after = %v, want %v", gotStretch, tc.wantStretch)
			}
			if tc.leftGroup != "" && (m.leftGroup == "") != (tc.replicas > 0) {
				t.Errorf("left group remembered after = %q with %d replicas: want it kept until the wake shows, and only then", m.leftGroup, tc.replicas)
			}
		})
	}
}

func mustHours(t *testing.T, s string) *schedule.Hours {
	t.Helper()
	h, err := schedule.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// rowMemory rebuilds a TestDecide row's memory.
func rowMemory(stretch time.Duration, replicas, lastReplicas int32, problem, written string, now time.Time) memory {
	m := newMemory()
	m.replicas = replicas
	if lastReplicas != 0 {
		m.replicas = lastReplicas
	}
	if stretch > 0 {
		m.idleSince = now.Add(-stretch)
	}
	m.problem, m.written = problem, written
	return m
}

// A whole stretch, check by check: whatever the polling interval, no
// workload sleeps before the daemon has seen it idle for the whole
// cooldown, counted from its own first idle reading.
func TestDecideNeverEarly(t *testing.T) {
	for _, poll := range []time.Duration{time.Second, 2 * time.Second, 7 * time.Second, 30 * time.Second, 45 * time.Second} {
		t.Run(poll.String(), func(t *testing.T) {
			cfg := managed("web", func(c *Config) { c.PollingPeriod, c.CooldownPeriod = poll, 10*time.Second })
			m := newMemory()
			w := Workload{Ref: cfg.Ref, ResourceVersion: "1", Replicas: 3}
			// Active until t0, idle from t0 + 1ns on; checks every poll.
			t0 := start
			firstIdle := time.Time{}
			for i := range 100 {
				now := start.Add(-poll + time.Duration(i)*poll)
				f := facts{now: now, w: w, metric: &answer{yes: now.After(t0)}, health: &answer{yes: true}, confirm: &answer{yes: true}}
				if f.metric.yes && firstIdle.IsZero() {
					firstIdle = now
				}
				var a action
				a, m = decide(cfg, f, m)
				if a.verb != doSleep {
					continue
				}
				if idle := now.Sub(firstIdle); idle < cfg.CooldownPeriod {
					t.Fatalf("slept %v after the first idle reading, before the %v cooldown", idle, cfg.CooldownPeriod)
				}
				if now.Sub(firstIdle) >= cfg.CooldownPeriod+poll {
					t.Errorf("slept %v after the first idle reading: a whole polling interval late", now.Sub(firstIdle))
				}
				return
			}
			t.Fatal("never slept")
		})
	}
}

// Issue 13, item 1: a query that cannot be confirmed over the window (a
// scalar, a server refusing the subquery) falls back to the daemon's own
// stretch, and says so once per loop, not at every sleep decision.
func TestDecideCannotConfirmToldOnce(t *testing.T) {
	cfg := managed("web")
	idle := &answer{yes: true, reading: scaler.Reading{Query: "q", Value: 0, Threshold: 1}}
	cannot := &answer{err: fmt.Errorf("confirmation query: %w", scaler.ErrCannotConfirm)}
	m := newMemory()
	for i, want := range []bool{true, false, false} {
		now := start.Add(time.Duration(i) * time.Hour)
		m.idleSince, m.replicas = now.Add(-cooldown), 3
		f := facts{now: now, w: Workload{Ref: cfg.Ref, ResourceVersion: "1", Replicas: 3}, metric: idle, health: &answer{yes: true}, confirm: cannot}
		var a action
		a, m = decide(cfg, f, m)
		if a.verb != doSleep {
			t.Fatalf("decision %d: verb %d, want a sleep on the daemon's own stretch", i+1, a.verb)
		}
		if told := strings.Contains(a.log, "cannot confirm"); told != want {
			t.Errorf("decision %d: log %q; want the fallback told %t", i+1, a.log, want)
		}
	}
}
