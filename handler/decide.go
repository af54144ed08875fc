package handler

import (
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/zeroscaler/zeroscaler/scaler"
	"github.com/zeroscaler/zeroscaler/schedule"
)

// The decision is a pure function: decide takes what the API shows, what the
// loop remembers and the answers gathered so far, and returns one action and
// what to remember next. It asks for an answer it needs (the metric, the
// health of the source, the confirmation over the cooldown window) by
// returning an ask; the loop gathers it and calls decide again with it. The
// loop does nothing else: it reads, asks, writes, tells and remembers what
// decide returned.

// question is what decide may ask the scaler.
type question int

const (
	// askMetric reads the workload's query now, to decide whether an
	// awake workload is idle.
	askMetric question = iota + 1
	// askWake reads it to decide whether a sleeping workload should wake.
	askWake
	// askHealth asks whether the source's targets were up for the whole
	// cooldown window.
	askHealth
	// askConfirm asks whether the metric stayed below its threshold over
	// the whole cooldown window.
	askConfirm
)

// answer is what the scaler said to one question.
type answer struct {
	// yes is "idle" for askMetric and askConfirm, "healthy" for askHealth.
	yes bool
	err error
	// reading is the value behind yes, for messages.
	reading scaler.Reading
}

// facts are what one check knows.
type facts struct {
	now time.Time
	// w is the workload as the cache shows it (under --dry-run, as it
	// would be had the daemon written).
	w Workload
	// The answers gathered so far; nil: not asked.
	metric, health, confirm *answer
	// hours are the awake hours in force now, nil outside them: the
	// workload's own (cfg.AwakeHours), or for a group member, those of the
	// first member whose hours contain now.
	hours *schedule.Hours
}

// memory is what a loop remembers between checks. None of it needs to
// survive a restart: what the API shows is enough to judge a workload, and a
// new loop only starts a new idle stretch.
type memory struct {
	// idleSince is the first idle reading of the current idle stretch;
	// zero while there is none (at the start, after an active or unknown
	// reading, after a scale-up by anyone).
	idleSince time.Time
	// replicas is the count seen at the last check; -1 before the first.
	replicas int32
	// problem is the kind of query problem last told (scaler.ResultKind),
	// so that a lasting outage is told once.
	problem string
	// unhealthy is set while the health check, or a confirmation that
	// cannot be read, keeps a cooled-down workload awake; unconfirmable once
	// the metric was found not to be confirmable over a window. Each is
	// logged once.
	unhealthy, unconfirmable bool
	// written is the resourceVersion this loop's last write was decided
	// on. While the cache still shows it, the write is not in the cache
	// yet, and the loop waits instead of deciding on the old object.
	written string
	// leftGroup names the group the workload left (its zeroscaler.io/group
	// annotation was removed or changed) just before this loop began: if
	// the daemon put it to sleep, it is woken once, as any workload let go.
	leftGroup string
}

func newMemory() memory { return memory{replicas: -1} }

// verb is what an action does.
type verb int

const (
	// doNothing changes nothing on the workload.
	doNothing verb = iota
	// doAsk asks action.ask, then decides again.
	doAsk
	// doSleep records the original count and scales to zero, in one write.
	doSleep
	// doWake scales to action.target and removes the sleep marks, in one
	// write.
	doWake
	// doClear removes sleep marks from a running workload.
	doClear
)

// action is what one check does.
type action struct {
	verb verb
	ask  question
	// target is the replica count of a wake.
	target int32
	// cause labels a wake or a doClear in the wakes metric (wakeBy...).
	cause string
	// state is the workload's state for the workloads metric.
	state string
	// warn is a Warning Event told at once, write or not (a metric that
	// became unreadable).
	warn *event
	// event is told once the write succeeded (or, with doNothing, at once).
	event *event
	// why is the reading or the reason behind a sleep, a wake or a clear,
	// as the events tell it ("q = 0 < 1 for 5m0s"): a group's events quote
	// the member whose why decided.
	why string
	// log is an Info line told when the action is carried out; debug a
	// Debug line.
	log, debug string
	// finish ends the loop once the action succeeded: there is nothing
	// left to do.
	finish bool
}

type event struct{ eventType, reason, message string }

// Wake causes, as counted by the wakes metric.
const (
	wakeByMetric   = "metric"
	wakeByError    = "error"
	wakeByPerson   = "person"
	wakeByReleased = "released"
	wakeBySchedule = "schedule"
	wakeByGroup    = "group"
)

// decide is the whole of the daemon's judgement of one workload at one
// check. It never reads anything but its arguments.
func decide(cfg Config, f facts, m memory) (action, memory) {
	w := f.w
	if m.written != "" {
		if w.ResourceVersion == m.written {
			// The watch is behind (a herd of writes): deciding on the old
			// object would only repeat our write and conflict.
			return action{debug: "the cache does not show our last write yet; waiting for it"}, m
		}
		m.written = ""
	}
	original, marked, origErr := w.OriginalReplicas()
	if cfg.Mode != Managed {
		return decideLetGo(cfg, m, w, original, marked, origErr), m
	}
	if m.leftGroup != "" {
		if marked && w.Replicas == 0 {
			// Retried until the wake shows: only then is the memory let go.
			return decideLetGo(cfg, m, w, original, marked, origErr), m
		}
		m.leftGroup = ""
	}

	if m.replicas >= 0 && w.Replicas > m.replicas {
		m.idleSince = time.Time{} // scaled up by someone: the stretch starts again
	}
	m.replicas = w.Replicas

	switch {
	case marked && w.Replicas == 0 && f.hours != nil:
		// Office hours: the first person in the morning does not wait for
		// the metric to rise.
		target := wakeTarget(cfg, original, origErr)
		why := "awake hours " + f.hours.String()
		m.idleSince = time.Time{}
		return action{verb: doWake, target: target, cause: wakeBySchedule, state: StateAwake, why: why,
			event: &event{corev1.EventTypeNormal, ReasonScheduledWake, fmt.Sprintf("scaled 0 → %d: %s", target, why)}}, m
	case marked && w.Replicas == 0:
		return decideAsleep(cfg, f, m, wakeTarget(cfg, original, origErr))
	case w.Replicas == 0:
		// At zero, but not by us: people win.
		m.idleSince = time.Time{}
		return action{state: StateAwake, debug: "at zero replicas, not put there by zeroscaler; leaving it alone"}, m
	case marked:
		// Running, yet marked asleep: someone scaled it up (or an older
		// version of the daemon stopped between two writes). It is awake;
		// the marks go and the stretch starts again.
		m.idleSince = time.Time{}
		return action{verb: doClear, cause: wakeByPerson, state: StateAwake, why: scaledUpBy(w.Replicas),
			log: fmt.Sprintf("scaled up to %d by someone else while asleep; cleared the sleep annotations", w.Replicas)}, m
	}
	return decideAwake(cfg, f, m)
}

func scaledUpBy(replicas int32) string { return fmt.Sprintf("scaled up to %d by someone", replicas) }

// decideLetGo handles a workload the daemon no longer scales by its metric
// (its configuration was removed or is invalid, it is excluded, it left the
// watch) or that just left its group: wake it once if the daemon put it to
// sleep, clear marks left behind, then the loop is done (unless it only
// left its group: then its own query decides from now on).
func decideLetGo(cfg Config, m memory, w Workload, original int32, marked bool, origErr error) action {
	finish := cfg.Mode != Managed
	switch {
	case w.Replicas != 0 && marked:
		return action{verb: doClear, finish: finish, log: "cleared the sleep annotations of a workload zeroscaler no longer scales"}
	case w.Replicas != 0 || (!marked && cfg.WakeTo == 0):
		return action{finish: finish}
	}
	reason := letGoReason(cfg, m)
	target := wakeTarget(cfg, original, origErr)
	a := action{verb: doWake, target: target, cause: wakeByReleased, finish: finish, why: reason,
		event: &event{corev1.EventTypeNormal, ReasonScaledFromZero, fmt.Sprintf("scaled 0 → %d: woke because %s", target, reason)}}
	if !finish {
		a.state = StateAwake
	}
	return a
}

// letGoReason says why a workload is let go.
func letGoReason(cfg Config, m memory) string {
	switch {
	case cfg.Mode == Invalid:
		return "its scaling configuration is invalid"
	case cfg.OutOfScope:
		return "it no longer matches the daemon's --selector"
	case cfg.Excluded:
		return "it is excluded (" + AnnotationPrefix + "exclude)"
	case m.leftGroup != "":
		return "it left group " + m.leftGroup
	}
	return "the zeroscaler.io/query annotation was removed"
}

func decideAsleep(cfg Config, f facts, m memory, target int32) (action, memory) {
	if f.metric == nil {
		return action{verb: doAsk, ask: askWake}, m
	}
	a := action{state: StateAsleep}
	err := f.metric.err
	m.problem = a.tellProblem(m.problem, err)
	switch {
	case errors.Is(err, scaler.ErrNoData):
		a.debug = "no data; staying asleep"
	case err != nil:
		// Fail open: a sleeping workload that cannot be judged is woken.
		// The WokeOnError Event tells of an outage, so the Warning is not
		// told as well, unless the query itself is at fault.
		if !errors.Is(err, scaler.ErrMultipleSeries) {
			a.warn = nil
		}
		a.verb, a.target, a.cause, a.state = doWake, target, wakeByError, StateAwake
		a.why = unreadable(err)
		a.event = &event{corev1.EventTypeWarning, ReasonWokeOnError, fmt.Sprintf("scaled 0 → %d because %s", target, a.why)}
	case !f.metric.yes:
		a.verb, a.target, a.cause, a.state = doWake, target, wakeByMetric, StateAwake
		a.why = f.metric.reading.String()
		a.event = &event{corev1.EventTypeNormal, ReasonScaledFromZero, fmt.Sprintf("scaled 0 → %d: %s", target, a.why)}
	default:
		a.debug = "asleep and still idle"
	}
	if a.verb == doWake {
		m.idleSince = time.Time{}
	}
	return a, m
}

func decideAwake(cfg Config, f facts, m memory) (action, memory) {
	if f.metric == nil {
		return action{verb: doAsk, ask: askMetric}, m
	}
	a := action{state: StateAwake}
	m.problem = a.tellProblem(m.problem, f.metric.err)
	if f.metric.err != nil || !f.metric.yes {
		m.idleSince = time.Time{}
		m.unhealthy = false
		return a, m
	}
	a.state = StateIdle
	if m.idleSince.IsZero() {
		// The stretch starts at the first idle reading the daemon has
		// seen itself: nothing between two checks is assumed idle.
		m.idleSince = f.now
	}
	idleFor := f.now.Sub(m.idleSince)
	if idleFor < cfg.CooldownPeriod {
		a.debug = "idle, cooling down"
		return a, m
	}
	if f.hours != nil {
		// The stretch goes on; when the hours end, the metric decides.
		a.debug = "idle for the cooldown period, but inside its awake hours"
		return a, m
	}
	if f.health == nil {
		return action{verb: doAsk, ask: askHealth}, m
	}
	if f.health.err != nil || !f.health.yes {
		if !m.unhealthy {
			a.log = "idle for the cooldown period, but Prometheus did not see its targets up for the whole window; not scaling down"
			if f.health.err != nil {
				a.log += ": " + f.health.err.Error()
			}
		}
		m.unhealthy = true
		return a, m
	}
	if f.confirm == nil {
		return action{verb: doAsk, ask: askConfirm}, m
	}
	switch err := f.confirm.err; {
	case errors.Is(err, scaler.ErrCannotConfirm):
		// The backend cannot look back over the window for this query:
		// the daemon's own stretch of readings is all there is.
		if !m.unconfirmable {
			a.log = "cannot confirm the metric over the cooldown window; relying on the daemon's own readings: " + err.Error()
		}
		m.unconfirmable = true
	case err != nil:
		if !m.unhealthy {
			a.log = "idle for the cooldown period, but the confirmation over the window could not be read; not scaling down: " + err.Error()
		}
		m.unhealthy = true
		return a, m
	case !f.confirm.yes:
		// A burst between two checks: the window was not idle after all.
		m.idleSince, m.unhealthy = f.now, false
		a.log = fmt.Sprintf("idle now, but not for the whole cooldown window (%s); the cooldown starts again", f.confirm.reading)
		return a, m
	}
	m.unhealthy = false
	a.verb, a.state = doSleep, StateAsleep
	a.why = fmt.Sprintf("%s for %s", f.metric.reading, idleFor.Round(time.Second))
	a.event = &event{corev1.EventTypeNormal, ReasonScaledToZero, fmt.Sprintf("scaled %d → 0: %s", f.w.Replicas, a.why)}
	return a, m
}

// unreadable says that a metric could not be read, and why.
func unreadable(err error) string { return fmt.Sprintf("the metric could not be read: %v", err) }

// tellProblem tells a query problem once when it starts (a Warning) and once
// when it ends (a log line), and returns the problem to remember.
func (a *action) tellProblem(last string, err error) string {
	kind := ""
	if err != nil {
		kind = scaler.ResultKind(err)
	}
	switch {
	case kind == last:
	case err == nil:
		a.log = "metric readable again"
	case errors.Is(err, scaler.ErrMultipleSeries):
		a.warn = &event{corev1.EventTypeWarning, ReasonInvalidScalingConfig, fmt.Sprintf("annotation %s: %v", AnnotationQuery, err)}
	default:
		a.warn = &event{corev1.EventTypeWarning, ReasonMetricUnavailable, fmt.Sprintf("metric unavailable, nothing will be scaled down: %v", err)}
	}
	return kind
}

// wakeTarget is the count a sleeping workload wakes to: the recorded one,
// else one remembered from an earlier version of the object, else
// min-replicas, else 1.
func wakeTarget(cfg Config, original int32, origErr error) int32 {
	switch {
	case original > 0:
		return original
	case origErr == nil && cfg.WakeTo > 0:
		return cfg.WakeTo
	case cfg.MinReplicas > 0:
		return cfg.MinReplicas
	}
	return 1
}
