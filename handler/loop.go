package handler

import (
	"context"
	"maps"
	"sync"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"

	"github.com/zeroscaler/zeroscaler/schedule"
)

// Event reasons.
const (
	ReasonScaledToZero         = "ScaledToZero"
	ReasonScaledFromZero       = "ScaledFromZero"
	ReasonWokeOnError          = "WokeOnError"
	ReasonInvalidScalingConfig = "InvalidScalingConfig"
	ReasonMetricUnavailable    = "MetricUnavailable"
	ReasonScheduledWake        = "ScheduledWake"
)

// Workload states, as counted by the workloads metric.
const (
	StateAwake   = "awake"
	StateIdle    = "idle"
	StateAsleep  = "asleep"
	StatePaused  = "paused"
	StateInvalid = "invalid"
)

// retryPeriod spaces the attempts to wake an invalid or released workload
// whose first wake failed.
const retryPeriod = 30 * time.Second

// loopState is one workload under a loop: its configuration, its scaler
// and what it remembers between checks (see memory). A lone workload has a
// loop of its own; the members of a group share their group's (group.go).
type loopState struct {
	cfg     Config
	decider Decider
	log     *zap.Logger
	state   string
	// asleep is what this loop adds to the replicas-asleep gauge.
	asleep int32

	// mu is the workload's scale lock, shared with any other loop of the
	// same workload (see ScaleHandler.scaleLocks).
	mu *sync.Mutex

	// pace is the loop's timing: the workload's own, or its group's.
	*pace

	mem memory

	// dry is what --dry-run pretends it wrote, laid over the real workload
	// for as long as nobody else changes its replicas or marks.
	dry *dryView
}

// dryView is a workload as it would be had --dry-run written.
type dryView struct {
	// under is the real workload's replicas and original-replicas mark
	// when the pretend write was made.
	underReplicas int32
	underOriginal string
	replicas      int32
	marks         map[string]string // nil: no sleep marks
}

// apply lays the pretend write over w, unless the real workload changed
// its replicas or marks since (someone else acted: believe the API again).
func (v *dryView) apply(w Workload) (Workload, bool) {
	if v == nil || w.Replicas != v.underReplicas || w.Annotations[AnnotationOriginalReplicas] != v.underOriginal {
		return w, false
	}
	out := w
	out.Replicas = v.replicas
	out.Annotations = map[string]string{}
	for k, val := range w.Annotations {
		if k != AnnotationOriginalReplicas && k != AnnotationScaledToZeroAt {
			out.Annotations[k] = val
		}
	}
	maps.Copy(out.Annotations, v.marks)
	return out, true
}

// pace is when a loop checks: on a grid of its period, and also at the
// moment office hours begin.
type pace struct {
	// next is the loop's next check on its grid; period spaces them.
	next   time.Time
	period time.Duration
	// hours are the office hours of the loop's workloads; hoursAt is the
	// next moment one of them begins (zero: none). A check is due then too,
	// so that a sleeping workload wakes at the start of its hours, not up
	// to a polling period later.
	hours   []*schedule.Hours
	hoursAt time.Time

	// slots are the handler's check slots; slot is set while this loop's
	// check holds one (see checkAside). work is the handler's idle workers.
	slots, slot chan struct{}
	work        chan func()
}

// due is the moment of the next check.
func (p *pace) due() time.Time {
	if !p.hoursAt.IsZero() && p.hoursAt.Before(p.next) {
		return p.hoursAt
	}
	return p.next
}

// advance moves the pace past a check made at now.
func (p *pace) advance(now time.Time) {
	for !p.next.After(now) {
		p.next = p.next.Add(p.period)
	}
	if len(p.hours) > 0 && !p.hoursAt.After(now) {
		p.hoursAt = nextStart(p.hours, now)
	}
}

// nextStart is the first moment after now at which any of hours begins;
// zero if none ever does.
func nextStart(hours []*schedule.Hours, now time.Time) time.Time {
	var first time.Time
	for _, h := range hours {
		if t := h.NextStart(now); !t.IsZero() && (first.IsZero() || t.Before(first)) {
			first = t
		}
	}
	return first
}

// newLoopState prepares a workload's loop: its scaler, its first check and
// the state it is counted in until that check. A group member (shared is
// its group's pace) gets a scaler only if it has a query of its own.
func (h *ScaleHandler) newLoopState(cfg Config, shared *pace) *loopState {
	st := &loopState{
		cfg: cfg,
		// Lazy: the fields are encoded on the first line logged, not for
		// every one of thousands of quiet loops.
		log:  h.logger.WithLazy(zap.String("kind", cfg.Kind), zap.String("namespace", cfg.Namespace), zap.String("name", cfg.Name)),
		mem:  newMemory(),
		mu:   h.lock(cfg.Key()),
		pace: shared,
	}
	if shared == nil {
		// Invalid and released workloads need at most one wake: do it now,
		// and retry a failed one at retryPeriod (their configuration has no
		// polling period).
		st.pace = &pace{next: h.clock.Now(), period: retryPeriod, slots: h.slots, work: h.work}
	} else {
		st.log = st.log.With(zap.String("group", cfg.Group))
	}
	if cfg.Mode == Managed && !cfg.Paused && (shared == nil || cfg.Metadata.Query != "") {
		d, err := h.newDecider(cfg)
		switch {
		case err != nil:
			// The informer checks what it can; this is what it cannot.
			// Treat it as any invalid configuration: a sleeping workload
			// is woken.
			st.cfg.Mode, st.cfg.Err = Invalid, err
		case shared != nil:
			st.decider = d
		default:
			st.decider = d
			st.next, st.period = firstCheck(st.next, cfg.PollingPeriod, d.QuestionHash()), cfg.PollingPeriod
			if cfg.AwakeHours != nil {
				st.hours = []*schedule.Hours{cfg.AwakeHours}
				st.hoursAt = nextStart(st.hours, h.clock.Now())
			}
		}
	}
	switch {
	case cfg.Paused:
		// A paused workload the daemon put to sleep still saves replicas.
		var asleep int32
		if w, ok := h.lister.Get(cfg.Ref); ok && w.Replicas == 0 {
			asleep, _, _ = w.OriginalReplicas()
		}
		h.setState(st, StatePaused, asleep)
		st.log.Debug("paused; leaving the workload as it is")
	case st.cfg.Mode == Invalid:
		h.setState(st, StateInvalid, 0)
		st.log.Error("invalid scaling configuration; not scaling this workload", zap.Error(st.cfg.Err))
		if w, ok := h.lister.Get(cfg.Ref); ok {
			h.EventRecorder.Event(w.objectReference(), corev1.EventTypeWarning, ReasonInvalidScalingConfig, st.cfg.Err.Error())
		}
	case st.cfg.Mode == Managed:
		// Counted from its start, as the cache shows it, until its first
		// check says more.
		state, asleep := StateAwake, int32(0)
		if w, ok := h.lister.Get(cfg.Ref); ok {
			if n, ours, _ := w.OriginalReplicas(); ours && w.Replicas == 0 {
				state, asleep = StateAsleep, n
			}
		}
		h.setState(st, state, asleep)
	}
	return st
}

// loop checks one workload on its grid until ctx ends or there is nothing
// left to do. Its goroutine only waits: one per workload, thousands of
// them, each should keep the smallest stack Go has. So it calls nothing
// deep itself; checks run on workers (checkAside), and what is done once is
// done by newLoopState and endLoop.
func (h *ScaleHandler) loop(ctx context.Context, st *loopState) {
	defer h.endLoop(st)
	if st.cfg.Paused {
		<-ctx.Done() // keep counting it as paused while it is
		return
	}
	check := func(ctx context.Context) bool { return h.check(ctx, st) }
	for h.wait(ctx, st.pace) {
		if done := h.checkAside(ctx, st.pace, check); done {
			if st.cfg.Mode == Invalid {
				<-ctx.Done() // keep counting it as invalid until it is fixed
			}
			return
		}
	}
}

// wait waits until the loop's next check is due. It returns false if ctx
// ended first.
func (h *ScaleHandler) wait(ctx context.Context, p *pace) bool {
	timer := h.clock.NewTimer(p.due().Sub(h.clock.Now()))
	select {
	case <-ctx.Done():
		timer.Stop()
		return false
	case <-timer.C():
		return true
	}
}

func (h *ScaleHandler) endLoop(st *loopState) {
	h.setState(st, "", 0)
	h.metrics.metricProblem(st.mem.problem, "")
	if st.decider != nil {
		if err := st.decider.Close(context.Background()); err != nil {
			st.log.Warn("close the loop's scaler", zap.Error(err))
		}
	}
}

// checkAside runs check on a worker, once one of the handler's check slots
// is free, and waits for it. The loop's goroutine never goes deeper than
// this, and a herd of due checks queues for slots instead of all querying at
// once.
func (h *ScaleHandler) checkAside(ctx context.Context, p *pace, check func(context.Context) bool) bool {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return true
	}
	p.slot = p.slots
	done := make(chan bool, 1)
	h.dispatch(p.work, func() {
		now := h.clock.Now()
		h.metrics.loopLag.Observe(now.Sub(p.due()).Seconds())
		d := check(ctx)
		p.advance(now)
		p.yieldSlot()
		done <- d
	})
	return <-done
}

// yieldSlot gives the check's slot back, if it still holds it. It is called
// before a write: writes wait on the API server, not on Prometheus, and the
// next workload's check should not wait for them.
func (p *pace) yieldSlot() {
	if p.slot != nil {
		<-p.slot
		p.slot = nil
	}
}

// check runs one check of one workload: it reads the workload, asks what
// decide asks for, and carries out the action decide returns. It returns
// true when the loop has nothing left to do.
func (h *ScaleHandler) check(ctx context.Context, st *loopState) (done bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if ctx.Err() != nil {
		return true
	}
	w, ok := h.lister.Get(st.cfg.Ref)
	if !ok && st.cfg.OutOfScope {
		var err error
		if w, ok, err = h.getLive(ctx, st.cfg.Ref); err != nil {
			st.log.Info("cannot read a sleeping workload that left the watched selector; will retry", zap.Error(err))
			return false
		}
	}
	if !ok {
		return true // deleted; the informer tells us to forget it
	}
	f := facts{now: h.clock.Now(), w: st.view(w)}
	if hours := st.cfg.AwakeHours; hours != nil && hours.Contains(f.now) {
		f.hours = hours
	}
	f, a, m, ok := h.judge(ctx, st, f)
	if !ok {
		return false // the loop is stopping: a cancelled query is not a reading
	}
	return h.act(ctx, st, f, a, m)
}

// view is the workload as the loop judges it: as read, or under --dry-run
// as it would be had the loop written.
func (st *loopState) view(w Workload) Workload {
	v, pretend := st.dry.apply(w)
	if !pretend {
		st.dry = nil
	}
	return v
}

// judge runs decide until it asks nothing more, gathering the answers it
// asks for. ok is false if ctx ended meanwhile.
func (h *ScaleHandler) judge(ctx context.Context, st *loopState, f facts) (facts, action, memory, bool) {
	for {
		a, m := decide(st.cfg, f, st.mem)
		if a.verb != doAsk {
			return f, a, m, true
		}
		if !h.ask(ctx, st, &f, a.ask) {
			return f, a, m, false
		}
	}
}

// ask puts one question to the scaler and adds its answer to f. It returns
// false if ctx ended meanwhile.
func (h *ScaleHandler) ask(ctx context.Context, st *loopState, f *facts, q question) bool {
	d := st.decider
	var ans answer
	switch q {
	case askMetric:
		ans.yes, ans.err = d.ShouldScaleToZero(ctx)
		ans.reading = d.LastReading()
		f.metric = &ans
	case askWake:
		var active bool
		active, ans.err = d.ShouldScaleFromZero(ctx)
		ans.yes, ans.reading = !active, d.LastReading()
		f.metric = &ans
	case askHealth:
		ans.yes, ans.err = d.IsHealthy(ctx)
		f.health = &ans
	case askConfirm:
		ans.yes, ans.err = d.ConfirmIdle(ctx)
		ans.reading = d.LastConfirmation()
		f.confirm = &ans
	}
	return ctx.Err() == nil
}

// act carries out one action and remembers m. It returns true when the
// loop has nothing left to do.
func (h *ScaleHandler) act(ctx context.Context, st *loopState, f facts, a action, m memory) (done bool) {
	if a.warn != nil {
		st.log.Warn(a.warn.message)
		h.EventRecorder.Event(f.w.objectReference(), a.warn.eventType, a.warn.reason, a.warn.message)
	}
	if a.debug != "" {
		if f.metric != nil {
			st.log.Debug(a.debug, zap.Stringer("reading", f.metric.reading), zap.Error(f.metric.err))
		} else {
			st.log.Debug(a.debug)
		}
	}
	asleep := st.asleep
	if a.verb != doNothing {
		st.yieldSlot()
		if err := h.write(ctx, st, f, a); err != nil {
			h.writeFailed(st, a, err)
			h.remember(st, m)
			if a.verb == doClear && a.state != "" {
				// Marks or not, the workload runs.
				h.setState(st, a.state, 0)
			}
			return false
		}
		if !h.dryRun {
			m.written = f.w.ResourceVersion
		}
		switch a.verb {
		case doSleep:
			m.replicas, asleep = 0, f.w.Replicas
			h.metrics.sleeps.Inc()
			h.metrics.scaleOps.WithLabelValues("down", "ok").Inc()
		case doWake:
			m.replicas = a.target
			h.metrics.wakes.WithLabelValues(a.cause).Inc()
			h.metrics.scaleOps.WithLabelValues("up", "ok").Inc()
		case doClear:
			if a.cause != "" {
				h.metrics.wakes.WithLabelValues(a.cause).Inc()
			}
		}
	}
	h.remember(st, m)
	if a.log != "" {
		st.log.Info(a.log, zap.Int32("replicas", f.w.Replicas))
	}
	if a.event != nil {
		h.announce(st, f.w, a.event)
	}
	if a.state != "" {
		if a.state != StateAsleep {
			asleep = 0
		} else if asleep == 0 {
			asleep, _, _ = f.w.OriginalReplicas()
		}
		h.setState(st, a.state, asleep)
	}
	return a.finish
}

// remember keeps m as the loop's memory, and counts the loop's metric as
// unavailable while its query problem lasts.
func (h *ScaleHandler) remember(st *loopState, m memory) {
	h.metrics.metricProblem(st.mem.problem, m.problem)
	st.mem = m
}

func (h *ScaleHandler) setState(st *loopState, state string, asleep int32) {
	if st.asleep != asleep {
		h.metrics.replicasAsleep.Add(float64(asleep - st.asleep))
		st.asleep = asleep
	}
	if st.state == state {
		return
	}
	if st.state != "" {
		h.metrics.workloads.WithLabelValues(st.state).Dec()
	}
	if state != "" {
		h.metrics.workloads.WithLabelValues(state).Inc()
	}
	st.state = state
}
