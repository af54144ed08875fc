package handler

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/zeroscaler/zeroscaler/scaler"
)

// gm is one member of a TestDecideGroup row.
type gm struct {
	name string
	// query is the member's reading; nil: the member has no query.
	query    *answer
	replicas int32
	original string // the original-replicas mark; "" for none
	// last is the replicas at the previous check; 0: as now (wasZero: 0).
	last    int32
	wasZero bool
	// cooled: the member's idle stretch has lasted a whole cooldown.
	cooled          bool
	paused, invalid bool
	// hours: the member's awake hours contain now.
	hours bool
}

// TestDecideGroup is a group's judgement as a table: each row is a rule of
// issue 11 ("Groups", "Office hours"), given as what each member shows and
// reads. decide judges each member with a query alone, as the group's loop
// has it do; decideGroup combines them.
func TestDecideGroup(t *testing.T) {
	var (
		idleQ   = &answer{yes: true, reading: scaler.Reading{Query: "q", Value: 0, Threshold: 1}}
		activeQ = &answer{reading: scaler.Reading{Query: "q", Value: 7, Threshold: 1}}
		downQ   = &answer{err: errors.New("query q: connection refused")}
		noDataQ = &answer{err: fmt.Errorf("query q: %w", scaler.ErrNoData)}
	)
	office := mustHours(t, "Mon-Sun 00:00-24:00 UTC")
	tests := []struct {
		name    string
		members []gm
		// want is, in the order they are carried out, each member's action
		// as "name verb[→target cause] state" (see describe).
		want []string
		// wantEvent is the event told on the first member of want that
		// has one, "Reason message"; "" for none at all.
		wantEvent string
		// restarts: every member's idle stretch starts again.
		restarts bool
	}{
		{
			name: "every member with a query idle for its cooldown: all to zero, deciders first",
			members: []gm{
				{name: "api", replicas: 2},
				{name: "web", query: idleQ, replicas: 3, cooled: true},
				{name: "worker", replicas: 1},
			},
			want:      []string{"web sleep asleep", "api sleep asleep", "worker sleep asleep"},
			wantEvent: "ScaledToZero scaled 3 → 0: group shop idle (web: q = 0 < 1 for 30s)",
		},
		{
			name: "the one member with a query still cooling down: nobody sleeps",
			members: []gm{
				{name: "api", replicas: 2},
				{name: "web", query: idleQ, replicas: 3},
			},
			want: []string{"api - idle", "web - idle"},
		},
		{
			name: "two members with a query, one active: the idle one waits",
			members: []gm{
				{name: "search", query: activeQ, replicas: 1, cooled: true},
				{name: "web", query: idleQ, replicas: 3, cooled: true},
			},
			want: []string{"web - idle", "search - awake"},
		},
		{
			name: "no data is not idle: nobody sleeps",
			members: []gm{
				{name: "api", replicas: 2},
				{name: "web", query: noDataQ, replicas: 3, cooled: true},
			},
			want: []string{"api - awake", "web - awake"},
		},
		{
			name: "asleep and idle, a member running (joined, or a sleep cut half-way): it joins the sleep",
			members: []gm{
				{name: "api", replicas: 2},
				{name: "web", query: idleQ, original: "3"},
				{name: "worker", original: "1"},
			},
			want:      []string{"web - asleep", "api sleep asleep", "worker - asleep"},
			wantEvent: "ScaledToZero scaled 2 → 0: group shop idle (web: asleep, q = 0 < 1)",
		},
		{
			name: "asleep, and no data: nobody moves",
			members: []gm{
				{name: "api", replicas: 2},
				{name: "web", query: noDataQ, original: "3"},
			},
			want: []string{"api - awake", "web - asleep"},
		},
		{
			name: "asleep and idle: nothing to write",
			members: []gm{
				{name: "api", original: "2"},
				{name: "web", query: idleQ, original: "3"},
			},
			want: []string{"web - asleep", "api - asleep"},
		},
		{
			name: "the query active: every member woken to its own count, the decider last",
			members: []gm{
				{name: "api", original: "2"},
				{name: "web", query: activeQ, original: "3"},
				{name: "worker", original: "1"},
			},
			want:      []string{"api wake→2 group awake", "worker wake→1 group awake", "web wake→3 metric awake"},
			wantEvent: "ScaledFromZero scaled 0 → 2: group shop woke (web: q = 7 >= 1)",
		},
		{
			name: "the query fails: every member woken (fail open)",
			members: []gm{
				{name: "api", original: "2"},
				{name: "web", query: downQ, original: "3"},
			},
			want:      []string{"api wake→2 group awake", "web wake→3 error awake"},
			wantEvent: "WokeOnError scaled 0 → 2: group shop woke (web: the metric could not be read: query q: connection refused)",
		},
		{
			name: "a wake cut half-way: the decider awake and active wakes the rest",
			members: []gm{
				{name: "api", original: "2"},
				{name: "web", query: activeQ, replicas: 3},
			},
			want:      []string{"api wake→2 group awake", "web - awake"},
			wantEvent: "ScaledFromZero scaled 0 → 2: group shop woke (web: q = 7 >= 1)",
		},
		{
			name: "the decider awake and its query failing wakes the rest (fail open)",
			members: []gm{
				{name: "api", original: "2"},
				{name: "web", query: downQ, replicas: 3},
			},
			want:      []string{"api wake→2 group awake", "web - awake"},
			wantEvent: "WokeOnError scaled 0 → 2: group shop woke (web: the metric could not be read: query q: connection refused)",
		},
		{
			name: "someone scaled a sleeping member up: marks cleared, every member woken, that member last",
			members: []gm{
				{name: "api", replicas: 2, original: "2"},
				{name: "web", query: idleQ, original: "3"},
				{name: "worker", original: "1"},
			},
			want:      []string{"web wake→3 group awake", "worker wake→1 group awake", "api clear person awake"},
			wantEvent: "ScaledFromZero scaled 0 → 3: group shop woke (api: scaled up to 2 by someone)",
		},
		{
			name: "someone scaled a running member up: the cooldown starts again",
			members: []gm{
				{name: "api", replicas: 3, last: 2},
				{name: "web", query: idleQ, replicas: 3, cooled: true},
			},
			want:     []string{"web - idle", "api - awake"},
			restarts: true,
		},
		{
			name: "someone scaled their own zero up while the group sleeps: the group wakes",
			members: []gm{
				{name: "api", replicas: 1, wasZero: true},
				{name: "web", query: idleQ, original: "3"},
			},
			want:      []string{"web wake→3 group awake", "api - awake"},
			wantEvent: "ScaledFromZero scaled 0 → 3: group shop woke (api: scaled up to 1 by someone)",
		},
		{
			name: "a paused member is left as it is and holds nobody back",
			members: []gm{
				{name: "api", replicas: 2, paused: true},
				{name: "search", query: activeQ, replicas: 1, paused: true},
				{name: "web", query: idleQ, replicas: 3, cooled: true},
				{name: "worker", replicas: 1},
			},
			want:      []string{"web sleep asleep", "api - ", "search - ", "worker sleep asleep"},
			wantEvent: "ScaledToZero scaled 3 → 0: group shop idle (web: q = 0 < 1 for 30s)",
		},
		{
			name: "a paused member asleep is not woken with the others",
			members: []gm{
				{name: "api", original: "2", paused: true},
				{name: "web", query: activeQ, original: "3"},
			},
			want:      []string{"api - ", "web wake→3 metric awake"},
			wantEvent: "ScaledFromZero scaled 0 → 3: group shop woke (web: q = 7 >= 1)",
		},
		{
			name: "someone else's zero is theirs and holds nobody back",
			members: []gm{
				{name: "api"},
				{name: "search", query: activeQ},
				{name: "web", query: idleQ, replicas: 3, cooled: true},
			},
			want:      []string{"search - awake", "web sleep asleep", "api - awake"},
			wantEvent: "ScaledToZero scaled 3 → 0: group shop idle (web: q = 0 < 1 for 30s)",
		},
		{
			name: "every member with a query is someone else's zero: nobody sleeps",
			members: []gm{
				{name: "api", replicas: 2},
				{name: "web", query: idleQ},
			},
			want: []string{"api - awake", "web - awake"},
		},
		{
			name: "an invalid member keeps the group awake",
			members: []gm{
				{name: "api", replicas: 2, invalid: true},
				{name: "web", query: idleQ, replicas: 3, cooled: true},
			},
			want: []string{"web - idle", "api - invalid"},
		},
		{
			name: "an invalid member wakes a sleeping group, itself last",
			members: []gm{
				{name: "api", original: "2", invalid: true},
				{name: "web", query: idleQ, original: "3"},
			},
			want:      []string{"web wake→3 group awake", "api wake→2 released invalid"},
			wantEvent: "ScaledFromZero scaled 0 → 3: group shop woke (api: its scaling configuration is invalid)",
		},
		{
			name: "every member invalid (no member with a query): the sleeping ones woken",
			members: []gm{
				{name: "api", original: "2", invalid: true},
				{name: "worker", replicas: 1, invalid: true},
			},
			want:      []string{"worker - invalid", "api wake→2 released invalid"},
			wantEvent: "ScaledFromZero scaled 0 → 2: group shop woke (api: its scaling configuration is invalid)",
		},
		{
			name: "office hours of any member keep the group awake, the stretch going on",
			members: []gm{
				{name: "api", replicas: 2, hours: true},
				{name: "web", query: idleQ, replicas: 3, cooled: true},
			},
			want: []string{"web - idle", "api - awake"},
		},
		{
			name: "office hours begin: every sleeping member woken on schedule",
			members: []gm{
				{name: "api", original: "2", hours: true},
				{name: "web", query: idleQ, original: "3"},
			},
			want:      []string{"web wake→3 schedule awake", "api wake→2 schedule awake"},
			wantEvent: "ScheduledWake scaled 0 → 3: group shop woke (api: awake hours Mon-Sun 00:00-24:00 UTC)",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			now := start
			var parts []part
			hoursNow := false
			for _, m := range tc.members {
				hoursNow = hoursNow || m.hours
			}
			for i, m := range tc.members {
				cfg := managed(m.name, func(c *Config) { c.Group, c.Paused = "shop", m.paused })
				if m.query == nil {
					cfg.Metadata.Query = ""
				}
				if m.invalid {
					cfg = Config{Ref: ref(m.name), Mode: Invalid, Group: "shop", Err: errors.New("annotation zeroscaler.io/threshold: \"x\" is not a finite number")}
				}
				if m.hours {
					cfg.AwakeHours = office
				}
				w := Workload{Ref: cfg.Ref, ResourceVersion: "1", Replicas: m.replicas}
				if m.original != "" {
					w.Annotations = map[string]string{AnnotationOriginalReplicas: m.original, AnnotationScaledToZeroAt: "2026-01-01T00:00:00Z"}
				}
				mem := newMemory()
				mem.replicas = m.replicas
				if m.last != 0 || m.wasZero {
					mem.replicas = m.last
				}
				if m.cooled {
					mem.idleSince = now.Add(-cooldown)
				}
				p := part{i: i, cfg: cfg, f: facts{now: now, w: w}, last: mem.replicas, m: mem}
				if hoursNow {
					p.f.hours = office
				}
				if m.query != nil && !m.paused && !m.invalid {
					p.judged = true
					p.f, p.a, p.m = judgeRow(t, cfg, p.f, mem, m.query)
				}
				parts = append(parts, p)
			}
			before := partNames(parts, tc.members)
			out := decideGroup("shop", parts)
			var got []string
			gotEvent := ""
			for _, p := range out {
				got = append(got, describe(tc.members[p.i].name, p.a))
				if p.a.event != nil && gotEvent == "" {
					gotEvent = p.a.event.reason + " " + p.a.event.message
				}
				if p.a.verb == doWake && !p.m.idleSince.IsZero() {
					t.Errorf("%s woken with an idle stretch still running", tc.members[p.i].name)
				}
				if tc.restarts && !p.m.idleSince.IsZero() {
					t.Errorf("%s's idle stretch goes on, want it to start again", tc.members[p.i].name)
				}
			}
			wantStrings(t, "actions", got, tc.want)
			if gotEvent != tc.wantEvent {
				t.Errorf("event = %q, want %q", gotEvent, tc.wantEvent)
			}
			if !slices.Equal(partNames(parts, tc.members), before) {
				t.Error("decideGroup changed its argument")
			}
		})
	}
}

// judgeRow runs decide for one member with a query, as the loop does,
// answering every question: health and confirmation as healthy and idle.
func judgeRow(t *testing.T, cfg Config, f facts, m memory, reading *answer) (facts, action, memory) {
	t.Helper()
	for range 4 {
		a, m2 := decide(cfg, f, m)
		switch a.ask {
		case 0:
			return f, a, m2
		case askMetric, askWake:
			f.metric = reading
		case askHealth:
			f.health = &answer{yes: true}
		case askConfirm:
			f.confirm = reading
		}
	}
	t.Fatal("decide kept asking")
	return f, action{}, m
}

// describe renders an action as "name verb[→target cause] state".
func describe(name string, a action) string {
	verb := map[verb]string{doNothing: "-", doSleep: "sleep", doWake: "wake", doClear: "clear"}[a.verb]
	if a.verb == doWake {
		verb += fmt.Sprintf("→%d", a.target)
	}
	if a.cause != "" {
		verb += " " + a.cause
	}
	return name + " " + verb + " " + a.state
}

func partNames(parts []part, members []gm) []string {
	var out []string
	for _, p := range parts {
		out = append(out, fmt.Sprintf("%s %d %v", members[p.i].name, p.a.verb, p.m.idleSince.Format(time.RFC3339)))
	}
	return out
}
