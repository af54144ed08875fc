package handler

import (
	"errors"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/zeroscaler/zeroscaler/scaler"
)

// The members of a group (zeroscaler.io/group, or every workload of an
// annotated Namespace) sleep together and wake together. One loop checks
// them all (grouploop.go): it reads each member, runs decide for each member
// with a query, alone, with its own memory, cooldown, health check and
// confirmation (identical questions are still asked once), and then
// decideGroup, a pure function like decide, turns what they say into one
// action per member:
//
//   - The group wakes when a member is invalid, when office hours of a
//     member begin, when someone scales a member up, when a member's query
//     is active or fails (fail open): every member the daemon put to sleep
//     is woken to its own count.
//   - Otherwise it goes to zero when every member with a query would sleep
//     (or sleeps, and reads idle): every running member is put to sleep,
//     each recording its own count.
//   - Paused members are left as they are, and so are members someone else
//     scaled to zero: neither holds the group back.

// part is one member's share of a group check.
type part struct {
	// i is the member's place in its group's loop.
	i   int
	cfg Config
	f   facts
	// last is the member's replicas at the group's previous check; -1
	// before the first.
	last int32
	// judged is set when decide judged the member alone (it has a query):
	// a and m are then what decide returned. Otherwise a is zero and m is
	// the loop's memory.
	judged bool
	a      action
	m      memory
}

// groupWake is why a group wakes: the first reason of the best rank.
type groupWake struct {
	rank int
	// at is the part of the member whose change decided; why is that
	// change, as the events tell it.
	at  int
	why string
	// own is the wake cause of the deciding member, if it is woken;
	// others that of every other member woken.
	own, others string
	// eventType and reason are those of the woken members' events.
	eventType, reason string
}

// Ranks of a group's reasons to wake, best first.
const (
	rankInvalid = iota + 1
	rankHours
	rankPerson
	rankWake
	rankActive
)

// decideGroup combines the members' parts of one group check into one
// action (and memory) per member, returned in the order they are to be
// carried out. It never reads anything but its arguments.
func decideGroup(group string, in []part) []part {
	parts := slices.Clone(in)
	for n := range parts {
		if p := &parts[n]; !p.judged {
			// decide keeps these for the members it judges.
			p.m.replicas, p.m.written = p.f.w.Replicas, ""
		}
	}
	if r, ok := groupWakeReason(parts); ok {
		return wakeGroup(group, parts, r)
	}
	return sleepGroup(group, parts)
}

// groupWakeReason finds the best reason for the group to wake, if any.
func groupWakeReason(parts []part) (groupWake, bool) {
	var best groupWake
	offer := func(r groupWake) {
		if best.rank == 0 || r.rank < best.rank {
			best = r
		}
	}
	for n, p := range parts {
		if p.cfg.Paused {
			continue
		}
		w := p.f.w
		_, marked, _ := w.OriginalReplicas()
		if p.cfg.Mode != Managed {
			offer(groupWake{rank: rankInvalid, at: n, why: letGoReason(p.cfg, p.m), own: wakeByReleased, others: wakeByGroup,
				eventType: corev1.EventTypeNormal, reason: ReasonScaledFromZero})
			continue
		}
		if hours := p.cfg.AwakeHours; hours != nil && hours.Contains(p.f.now) {
			offer(groupWake{rank: rankHours, at: n, why: "awake hours " + hours.String(), own: wakeBySchedule, others: wakeBySchedule,
				eventType: corev1.EventTypeNormal, reason: ReasonScheduledWake})
		}
		if w.Replicas > 0 && (marked || (p.last >= 0 && w.Replicas > p.last)) {
			offer(groupWake{rank: rankPerson, at: n, why: scaledUpBy(w.Replicas), own: wakeByPerson, others: wakeByGroup,
				eventType: corev1.EventTypeNormal, reason: ReasonScaledFromZero})
		}
		if !p.judged {
			continue
		}
		switch {
		case p.a.verb == doWake:
			offer(groupWake{rank: rankWake, at: n, why: p.a.why, own: p.a.cause, others: wakeByGroup,
				eventType: p.a.event.eventType, reason: p.a.event.reason})
		case w.Replicas > 0 && p.f.metric != nil && p.f.metric.err == nil && !p.f.metric.yes:
			offer(groupWake{rank: rankActive, at: n, why: p.f.metric.reading.String(), others: wakeByGroup,
				eventType: corev1.EventTypeNormal, reason: ReasonScaledFromZero})
		case w.Replicas > 0 && p.f.metric != nil && p.f.metric.err != nil && !errors.Is(p.f.metric.err, scaler.ErrNoData):
			// Fail open, as a sleeping workload would.
			offer(groupWake{rank: rankActive, at: n, why: unreadable(p.f.metric.err), others: wakeByGroup,
				eventType: corev1.EventTypeWarning, reason: ReasonWokeOnError})
		}
	}
	return best, best.rank != 0
}

// wakeGroup wakes every member the daemon put to sleep, clears the marks of
// members someone else woke, and keeps the rest awake. The member whose
// change decided comes last: should the daemon stop half-way, that change
// is still there at the next check to finish the job.
func wakeGroup(group string, parts []part, r groupWake) []part {
	leader := parts[r.at].cfg.Name
	for n := range parts {
		p := &parts[n]
		if p.cfg.Paused {
			continue
		}
		w := p.f.w
		original, marked, origErr := w.OriginalReplicas()
		switch {
		case marked && w.Replicas == 0:
			cause := r.others
			switch {
			case n == r.at && r.own != "":
				cause = r.own
			case p.judged && p.a.verb == doWake:
				cause = p.a.cause // woken by its own reading as well
			}
			target := wakeTarget(p.cfg, original, origErr)
			p.a = action{verb: doWake, target: target, cause: cause, state: StateAwake, warn: p.a.warn, log: p.a.log, why: r.why,
				event: &event{r.eventType, r.reason, fmt.Sprintf("scaled 0 → %d: group %s woke (%s: %s)", target, group, leader, r.why)}}
			p.m.idleSince = time.Time{}
		case marked:
			p.a = action{verb: doClear, cause: wakeByPerson, state: StateAwake, warn: p.a.warn,
				log: fmt.Sprintf("scaled up to %d by someone else while asleep; cleared the sleep annotations; group %s wakes", w.Replicas, group)}
		case p.judged && p.a.verb == doSleep:
			p.a = action{state: StateIdle, warn: p.a.warn,
				debug: fmt.Sprintf("idle for the cooldown period, but group %s wakes (%s: %s)", group, leader, r.why)}
		case !p.judged:
			p.a.state = StateAwake
		}
		if r.rank == rankPerson && p.judged {
			p.m.idleSince = time.Time{} // a scale-up by anyone starts the stretch again
		}
		if p.cfg.Mode != Managed {
			p.a.state = StateInvalid
		}
	}
	last := parts[r.at]
	return append(slices.Delete(parts, r.at, r.at+1), last)
}

// sleepGroup puts every running member to sleep if every member with a query
// would sleep, or sleeps and reads idle; otherwise it keeps the group as it
// is. Members with a query go first: should the daemon stop half-way, the
// next check finds them asleep and idle, and finishes the job.
func sleepGroup(group string, parts []part) []part {
	voters, leader, all, cooling := 0, -1, true, true
	for n, p := range parts {
		_, marked, _ := p.f.w.OriginalReplicas()
		if !p.judged || (p.f.w.Replicas == 0 && !marked) {
			continue // decides nothing, or someone else's zero: left alone
		}
		voters++
		switch {
		case p.a.verb == doSleep:
			if leader < 0 || parts[leader].a.verb != doSleep {
				leader = n
			}
		case p.a.state == StateAsleep && p.f.metric != nil && p.f.metric.err == nil && p.f.metric.yes:
			if leader < 0 {
				leader = n
			}
		default:
			all = false
			cooling = cooling && p.a.state == StateIdle
		}
	}
	if voters == 0 || !all {
		for n := range parts {
			p := &parts[n]
			switch {
			case p.cfg.Paused:
			case p.judged && p.a.verb == doSleep:
				p.a = action{state: StateIdle, warn: p.a.warn, log: p.a.log,
					debug: fmt.Sprintf("idle for the cooldown period; group %s waits for its other members", group)}
			case !p.judged:
				p.a.state = followerState(p.f.w, voters > 0 && cooling)
			}
		}
		return parts
	}
	why := parts[leader].a.why
	if parts[leader].a.verb != doSleep {
		why = "asleep, " + parts[leader].f.metric.reading.String()
	}
	name := parts[leader].cfg.Name
	for n := range parts {
		p := &parts[n]
		_, marked, _ := p.f.w.OriginalReplicas()
		switch {
		case p.cfg.Paused:
		case p.f.w.Replicas > 0 && !marked:
			p.a = action{verb: doSleep, state: StateAsleep, warn: p.a.warn, log: p.a.log, why: why,
				event: &event{corev1.EventTypeNormal, ReasonScaledToZero,
					fmt.Sprintf("scaled %d → 0: group %s idle (%s: %s)", p.f.w.Replicas, group, name, why)}}
		case !p.judged:
			p.a.state = followerState(p.f.w, false)
		}
	}
	slices.SortStableFunc(parts, func(a, b part) int {
		switch {
		case a.judged == b.judged:
			return 0
		case a.judged:
			return -1
		}
		return 1
	})
	return parts
}

// followerState is the state of a member without a query while its group
// neither wakes nor sleeps.
func followerState(w Workload, cooling bool) string {
	_, marked, _ := w.OriginalReplicas()
	switch {
	case marked && w.Replicas == 0:
		return StateAsleep
	case cooling && w.Replicas > 0:
		return StateIdle
	}
	return StateAwake
}
