package handler

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"

	"github.com/zeroscaler/zeroscaler/scaler"
)

// Event reasons.
const (
	ReasonScaledToZero         = "ScaledToZero"
	ReasonScaledFromZero       = "ScaledFromZero"
	ReasonWokeOnError          = "WokeOnError"
	ReasonInvalidScalingConfig = "InvalidScalingConfig"
	ReasonMetricUnavailable    = "MetricUnavailable"
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

// loopState is what one loop remembers between checks. None of it needs to
// survive a restart: a new loop simply starts a new cooldown.
type loopState struct {
	cfg     Config
	decider Decider
	log     *zap.Logger
	state   string

	// mu is the workload's scale lock, shared with any other loop of the
	// same workload (see ScaleHandler.scaleLocks).
	mu *sync.Mutex

	// next is the loop's next check; period spaces its checks.
	next   time.Time
	period time.Duration

	// slots are the handler's check slots; slot is set while this loop's
	// check holds one (see checkAside). work is the handler's idle workers.
	slots, slot chan struct{}
	work        chan func()

	// idleSince is the start of the current idle stretch: the loop's start,
	// the last active or unknown reading, or the last scale-up.
	idleSince    time.Time
	lastReplicas int32
	// lastProblem is the last query problem reported, so that a lasting
	// outage is told once, not at every check.
	lastProblem string

	// unhealthy is set while the health check keeps a cooled-down workload
	// awake, so that it is logged once.
	unhealthy bool

	// sleepFailed is set when this loop recorded the original count but
	// could not scale to zero; the next check retries the sleep instead of
	// treating the marks as a wake by someone else.
	sleepFailed bool

	// written is the resourceVersion this loop's last write was decided
	// on. While the cache still shows it, the write is not in the cache
	// yet, and checks wait instead of deciding on the old object.
	written string

	// clearPending is set after this loop woke the workload: its sleep
	// marks are removed at the next check (see wake).
	clearPending bool

	// dry is what --dry-run pretends it wrote, laid over the real workload
	// until the real one changes.
	dry *dryView
}

// dryView is a workload as it would be had --dry-run written.
type dryView struct {
	resourceVersion string
	replicas        int32
	original        int32 // 0: not asleep
}

func (v *dryView) apply(w Workload) Workload {
	w.Replicas = v.replicas
	w.Annotations = nil
	if v.original > 0 {
		w.Annotations = map[string]string{AnnotationOriginalReplicas: strconv.Itoa(int(v.original))}
	}
	return w
}

// newLoopState prepares a loop: its scaler, its first check and the state
// it is counted in until that check.
func (h *ScaleHandler) newLoopState(cfg Config) *loopState {
	st := &loopState{
		cfg: cfg,
		// Lazy: the fields are encoded on the first line logged, not for
		// every one of thousands of quiet loops.
		log:          h.logger.WithLazy(zap.String("kind", cfg.Kind), zap.String("namespace", cfg.Namespace), zap.String("name", cfg.Name)),
		idleSince:    h.clock.Now(),
		lastReplicas: -1,
		mu:           h.lock(cfg.Key()),
		slots:        h.slots,
		work:         h.work,
		// Invalid and released workloads need at most one wake: do it
		// now, and retry a failed one at retryPeriod (their configuration
		// has no polling period).
		next:   h.clock.Now(),
		period: retryPeriod,
	}
	if cfg.Mode == Managed && !cfg.Paused {
		d, err := h.newDecider(cfg)
		if err != nil {
			// The informer checks what it can; this is what it cannot.
			// Treat it as any invalid configuration: a sleeping workload
			// is woken.
			st.cfg.Mode, st.cfg.Err = Invalid, err
		} else {
			st.decider = d
			st.next, st.period = firstCheck(st.next, cfg), cfg.PollingPeriod
		}
	}
	switch {
	case cfg.Paused:
		h.setState(st, StatePaused)
		st.log.Debug("paused; leaving the workload as it is")
	case st.cfg.Mode == Invalid:
		h.setState(st, StateInvalid)
		st.log.Error("invalid scaling configuration; not scaling this workload", zap.Error(st.cfg.Err))
		if w, ok := h.lister.Get(cfg.Ref); ok {
			h.EventRecorder.Event(w.objectReference(), corev1.EventTypeWarning, ReasonInvalidScalingConfig, st.cfg.Err.Error())
		}
	case st.cfg.Mode == Managed:
		// Counted from its start, as the cache shows it, until its first
		// check says more.
		state := StateAwake
		if w, ok := h.lister.Get(cfg.Ref); ok {
			if _, ours, _ := w.OriginalReplicas(); ours && w.Replicas == 0 {
				state = StateAsleep
			}
		}
		h.setState(st, state)
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
	for h.wait(ctx, st) {
		if done := h.checkAside(ctx, st); done {
			if st.cfg.Mode == Invalid {
				<-ctx.Done() // keep counting it as invalid until it is fixed
			}
			return
		}
	}
}

// wait waits until the loop's next check is due. It returns false if ctx
// ended first.
func (h *ScaleHandler) wait(ctx context.Context, st *loopState) bool {
	timer := h.clock.NewTimer(st.next.Sub(h.clock.Now()))
	select {
	case <-ctx.Done():
		timer.Stop()
		return false
	case <-timer.C():
		return true
	}
}

func (h *ScaleHandler) endLoop(st *loopState) {
	h.setState(st, "")
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
func (h *ScaleHandler) checkAside(ctx context.Context, st *loopState) bool {
	select {
	case st.slots <- struct{}{}:
	case <-ctx.Done():
		return true
	}
	st.slot = st.slots
	done := make(chan bool, 1)
	h.dispatch(st.work, func() {
		now := h.clock.Now()
		h.metrics.loopLag.Observe(now.Sub(st.next).Seconds())
		d := h.check(ctx, st)
		for !st.next.After(now) {
			st.next = st.next.Add(st.period)
		}
		st.yieldSlot()
		done <- d
	})
	return <-done
}

// yieldSlot gives the check's slot back, if it still holds it. Writes call
// it first: they wait on the API server, not on Prometheus, and the next
// workload's check should not wait for them.
func (st *loopState) yieldSlot() {
	if st.slot != nil {
		<-st.slot
		st.slot = nil
	}
}

// check runs one check of one workload. It returns true when the loop has
// nothing left to do.
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
	if st.written != "" {
		if w.ResourceVersion == st.written {
			// The watch is behind (a herd of writes): deciding on the old
			// object would only repeat our write and conflict.
			st.log.Debug("the cache does not show our last write yet; waiting for it")
			return false
		}
		st.written = ""
	}
	now := h.clock.Now()
	if st.dry != nil {
		if st.dry.resourceVersion == w.ResourceVersion {
			w = st.dry.apply(w)
		} else {
			st.dry = nil // the real workload changed: believe it again
		}
	}
	original, ours, origErr := w.OriginalReplicas()
	asleep := ours && w.Replicas == 0

	if st.cfg.Mode != Managed {
		// Wake it once if we put it to sleep, clear marks left behind, then
		// there is nothing to do.
		if w.Replicas != 0 && ours {
			return h.clearMarks(ctx, st, w, w.ResourceVersion) == nil
		}
		if w.Replicas != 0 || (!ours && st.cfg.WakeTo == 0) {
			return true
		}
		reason := "the zeroscaler.io/query annotation was removed"
		switch {
		case st.cfg.Mode == Invalid:
			reason = "its scaling configuration is invalid"
		case st.cfg.OutOfScope:
			reason = "it no longer matches the daemon's --selector"
		}
		target := h.wakeTarget(st, original, origErr)
		msg := fmt.Sprintf("scaled 0 → %d: woke because %s", target, reason)
		return h.wake(ctx, st, w, target, ReasonScaledFromZero, msg) == nil
	}

	if st.lastReplicas >= 0 && w.Replicas > st.lastReplicas {
		st.idleSince = now // scaled up by someone: the cooldown starts again
	}
	st.lastReplicas = w.Replicas

	switch {
	case asleep && st.clearPending:
		// Woken by this loop, then scaled back to zero by someone before
		// the marks went (the cache shows a version after our write, see
		// written): not our sleep. People win; the marks go.
		h.setState(st, StateAwake)
		st.idleSince = now
		if err := h.clearMarks(ctx, st, w, w.ResourceVersion); err != nil {
			st.log.Info("could not clear sleep annotations; will retry", zap.Error(err))
			return false
		}
		st.clearPending = false
		st.log.Info("scaled to zero by someone right after zeroscaler woke it; leaving it alone and clearing the sleep annotations")
	case asleep:
		h.setState(st, StateAsleep)
		h.checkAsleep(ctx, st, w, original, origErr)
	case w.Replicas == 0:
		// At zero, but not by us: people win.
		h.setState(st, StateAwake)
		st.idleSince = now
		st.log.Debug("at zero replicas, not put there by zeroscaler; leaving it alone")
	case ours && st.sleepFailed:
		// Our own sleep stopped halfway; decide again as if awake.
		h.checkAwake(ctx, st, w, now)
	case ours && st.clearPending:
		// Woken by this loop at the last check: now the marks go.
		h.setState(st, StateAwake)
		if err := h.clearMarks(ctx, st, w, w.ResourceVersion); err != nil {
			st.log.Debug("could not clear sleep annotations after the wake; will retry", zap.Error(err))
			return false
		}
		st.clearPending = false
	case ours:
		// Awake but still marked asleep: someone scaled it up, or we stopped
		// between our two writes. Either way it is awake now.
		st.idleSince = now
		h.setState(st, StateAwake)
		if err := h.clearMarks(ctx, st, w, w.ResourceVersion); err != nil {
			st.log.Info("could not clear sleep annotations; will retry", zap.Error(err))
			return false
		}
		st.log.Info("workload is awake again; cleared its sleep annotations and restarted the cooldown", zap.Int32("replicas", w.Replicas))
	default:
		h.checkAwake(ctx, st, w, now)
	}
	return false
}

func (h *ScaleHandler) checkAwake(ctx context.Context, st *loopState, w Workload, now time.Time) {
	idle, err := st.decider.ShouldScaleToZero(ctx)
	if ctx.Err() != nil {
		return // the loop is stopping: that is not a reading
	}
	if err != nil || !idle {
		st.idleSince = now
		st.sleepFailed = false
		h.setState(st, StateAwake)
		h.reportProblem(st, w, err)
		if err == nil {
			st.log.Debug("active", zap.Stringer("reading", st.decider.LastReading()))
		}
		return
	}
	h.reportProblem(st, w, nil)
	h.setState(st, StateIdle)
	idleFor := now.Sub(st.idleSince)
	if idleFor < st.cfg.CooldownPeriod {
		st.log.Debug("idle, cooling down", zap.Stringer("reading", st.decider.LastReading()), zap.Duration("idleFor", idleFor))
		return
	}
	healthy, err := st.decider.IsHealthy(ctx)
	if ctx.Err() != nil {
		return
	}
	if err != nil || !healthy {
		log := st.log.Debug
		if !st.unhealthy {
			log = st.log.Info // told once per stretch, not at every check
		}
		st.unhealthy = true
		log("idle for the cooldown period, but Prometheus did not see its targets up for the whole window; not scaling down",
			zap.Stringer("reading", st.decider.LastReading()), zap.Error(err))
		return
	}
	st.unhealthy = false
	msg := fmt.Sprintf("scaled %d → 0: %s for %s", w.Replicas, st.decider.LastReading(), idleFor.Round(time.Second))
	if err := h.sleep(ctx, st, w, now, msg); err != nil {
		return
	}
	h.setState(st, StateAsleep)
}

func (h *ScaleHandler) checkAsleep(ctx context.Context, st *loopState, w Workload, original int32, origErr error) {
	active, err := st.decider.ShouldScaleFromZero(ctx)
	if ctx.Err() != nil {
		// The loop is stopping (shutdown, lost leadership, a new
		// configuration): a cancelled query is not a failed Prometheus.
		return
	}
	var target int32
	if err != nil || active {
		target = h.wakeTarget(st, original, origErr)
	}
	switch {
	case errors.Is(err, scaler.ErrNoData):
		h.reportProblem(st, w, err)
		st.log.Debug("no data; staying asleep", zap.Error(err))
	case err != nil:
		// Fail open: a sleeping workload we cannot judge is woken. The
		// WokeOnError event tells of an outage; don't tell it twice. A
		// query returning several series is the user's to fix: say so.
		// (A failed wake is logged and counted by writeFailed, and tried
		// again at the next check.)
		if errors.Is(err, scaler.ErrMultipleSeries) {
			h.reportProblem(st, w, err)
		}
		st.lastProblem = scaler.ResultKind(err)
		_ = h.wake(ctx, st, w, target, ReasonWokeOnError, fmt.Sprintf("scaled 0 → %d because the metric could not be read: %v", target, err))
	case active:
		h.reportProblem(st, w, nil)
		_ = h.wake(ctx, st, w, target, ReasonScaledFromZero, fmt.Sprintf("scaled 0 → %d: %s", target, st.decider.LastReading()))
	default:
		h.reportProblem(st, w, nil)
		st.log.Debug("asleep and still idle", zap.Stringer("reading", st.decider.LastReading()))
	}
}

func (h *ScaleHandler) wakeTarget(st *loopState, original int32, origErr error) int32 {
	switch {
	case original > 0:
		return original
	case origErr != nil:
		st.log.Warn("recorded replica count is unusable; waking to min-replicas", zap.Error(origErr))
	case st.cfg.WakeTo > 0:
		return st.cfg.WakeTo
	}
	if st.cfg.MinReplicas > 0 {
		return st.cfg.MinReplicas
	}
	return 1
}

// reportProblem tells of a query problem once when it starts (log line and
// Warning event) and once when it ends (log line).
func (h *ScaleHandler) reportProblem(st *loopState, w Workload, err error) {
	kind := ""
	if err != nil {
		kind = scaler.ResultKind(err)
	}
	if kind == st.lastProblem {
		return
	}
	st.lastProblem = kind
	if err == nil {
		st.log.Info("metric readable again")
		return
	}
	reason, msg := ReasonMetricUnavailable, fmt.Sprintf("metric unavailable, nothing will be scaled down: %v", err)
	if errors.Is(err, scaler.ErrMultipleSeries) {
		reason, msg = ReasonInvalidScalingConfig, fmt.Sprintf("annotation zeroscaler.io/query: %v", err)
	}
	st.log.Warn(msg)
	h.EventRecorder.Event(w.objectReference(), corev1.EventTypeWarning, reason, msg)
}

func (h *ScaleHandler) setState(st *loopState, state string) {
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
