// Package handler runs one loop per annotated workload, or per group of
// workloads that sleep and wake together: it gathers what the API and the
// scaler say, decides (decide.go, group.go), and writes replicas and sleep
// marks together in one patch of each workload (writes.go).
package handler

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/scale"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/flowcontrol"
	"k8s.io/utils/clock"

	"github.com/zeroscaler/zeroscaler/scaler"
)

// Lister reads workloads from the informers' cache.
type Lister interface {
	Get(ref Ref) (Workload, bool)
}

// Decider is a Scaler that can also confirm an idle stretch over the whole
// cooldown window, say what it read last, and name its question.
type Decider interface {
	scaler.Scaler
	// ConfirmIdle reports whether the metric stayed below its threshold
	// over the whole cooldown window. scaler.ErrCannotConfirm means the
	// window cannot be asked for this query or server.
	ConfirmIdle(ctx context.Context) (bool, error)
	LastReading() scaler.Reading
	LastConfirmation() scaler.Reading
	// QuestionHash is the same for every Decider asking the same server the
	// same query with the same headers: they check together and share one
	// request.
	QuestionHash() uint64
}

// NewDecider builds the Decider for a Managed configuration.
type NewDecider func(Config) (Decider, error)

// Options wire a ScaleHandler.
type Options struct {
	DynamicClient  dynamic.Interface
	ScaleClient    scale.ScalesGetter
	RESTMapper     meta.RESTMapper
	EventRecorder  record.EventRecorder
	Lister         Lister
	NewDecider     NewDecider
	Logger         *zap.Logger
	WatchNamespace string
	DryRun         bool
	Metrics        *Metrics
	// CheckSlots is how many checks run at once; DefaultCheckSlots if 0.
	CheckSlots int
	// Clock is injected by tests; the real clock otherwise.
	Clock clock.WithTicker
	// WriteDeadline, if set, returns the moment after which this replica
	// may no longer lead (its last lease renewal plus the renew deadline):
	// no write starts after it, and none still runs then.
	WriteDeadline func() time.Time
	// WriteLimiter, if set, is waited on before each write, outside the
	// write's own timeout; the client that writes should then not limit
	// itself.
	WriteLimiter flowcontrol.RateLimiter
}

// ScaleHandler keeps the wanted configuration of every workload and, while
// it runs (while this replica leads), one loop per workload.
type ScaleHandler struct {
	// kDynamicClient reads and patches workloads.
	kDynamicClient dynamic.Interface
	EventRecorder  record.EventRecorder

	// scaleLocks holds one *sync.Mutex per workload key: a check and its
	// writes never interleave with another check of the same workload, even
	// while an old loop is being replaced by a new one.
	scaleLocks sync.Map

	// scaleClient is kept in the seed's shape (shared/seed) for kinds that
	// may only be scaled through /scale; Deployments and StatefulSets are
	// patched whole, so that replicas and marks change in one write.
	scaleClient scale.ScalesGetter
	restMapper  meta.RESTMapper

	logger         *zap.Logger
	watchNamespace string

	lister     Lister
	newDecider NewDecider
	dryRun     bool
	metrics    *Metrics
	clock      clock.WithTicker

	writeDeadline func() time.Time
	limiter       flowcontrol.RateLimiter

	mu     sync.Mutex
	wanted map[string]Config
	// groups holds the members of each group, by group key (groupKey).
	groups map[string]*groupEntry
	// left holds, per workload key, the group a workload just left; its
	// next lone loop wakes it if the daemon put it to sleep.
	left map[string]string
	// loops holds the running loops: a lone workload's by its key, a
	// group's by groupLoopKey.
	loops     map[string]*running
	nSlots    int
	slots     chan struct{}   // one per check running; see checkAside
	work      chan func()     // idle workers wait here; see dispatch
	idle      atomic.Int32    // workers waiting on work
	runCtx    context.Context // nil unless Run is running
	loopsWG   sync.WaitGroup
	workersWG sync.WaitGroup
}

// DefaultCheckSlots is how many checks run at once. A check gives its slot
// back before it writes, so that slots bound the reading and deciding, and
// a thousand wakes at once do not wait for each other's API round trips.
const DefaultCheckSlots = 64

type running struct {
	ctx    context.Context
	cancel context.CancelFunc
}

// New returns a ScaleHandler; call Run to start its loops.
func New(o Options) *ScaleHandler {
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	if o.CheckSlots < 1 {
		o.CheckSlots = DefaultCheckSlots
	}
	return &ScaleHandler{
		kDynamicClient: o.DynamicClient,
		EventRecorder:  o.EventRecorder,
		scaleClient:    o.ScaleClient,
		restMapper:     o.RESTMapper,
		logger:         o.Logger,
		watchNamespace: o.WatchNamespace,
		lister:         o.Lister,
		newDecider:     o.NewDecider,
		dryRun:         o.DryRun,
		metrics:        o.Metrics,
		clock:          o.Clock,
		writeDeadline:  o.WriteDeadline,
		limiter:        o.WriteLimiter,
		nSlots:         o.CheckSlots,
		wanted:         map[string]Config{},
		groups:         map[string]*groupEntry{},
		left:           map[string]string{},
		loops:          map[string]*running{},
	}
}

// Sync records a workload's configuration. A lone workload's loop is
// (re)started only if the configuration differs from the one it runs; a
// group member's configuration is handed to its group's loop, which takes
// it up at its next check.
func (h *ScaleHandler) Sync(cfg Config) {
	if h.watchNamespace != "" && cfg.Namespace != h.watchNamespace {
		// The informers are scoped already; this keeps a wiring mistake
		// from ever acting outside the namespace the operator chose.
		h.logger.Warn("ignoring a workload outside --watch-namespace", zap.String("key", cfg.Key()))
		return
	}
	key := cfg.Key()
	h.mu.Lock()
	defer h.mu.Unlock()
	old, had := h.wanted[key]
	if had && old.Equal(cfg) {
		return
	}
	h.wanted[key] = cfg
	from, to := groupKey(old), groupKey(cfg)
	if from != "" && from != to {
		h.leaveGroupLocked(from, key)
		h.left[key] = old.Group
	}
	if to != "" {
		delete(h.left, key)
		h.stopLocked(key) // its lone loop, if it had one
		h.joinGroupLocked(to, cfg)
		return
	}
	if h.runCtx != nil {
		h.stopLocked(key)
		h.startLocked(cfg)
	}
}

// Forget stops the workload's loop and drops its configuration.
func (h *ScaleHandler) Forget(ref Ref) {
	key := ref.Key()
	h.mu.Lock()
	defer h.mu.Unlock()
	if gk := groupKey(h.wanted[key]); gk != "" {
		h.leaveGroupLocked(gk, key)
	}
	delete(h.wanted, key)
	delete(h.left, key)
	h.stopLocked(key)
	if h.runCtx == nil {
		h.scaleLocks.Delete(key) // no loop runs: nothing holds it
	}
}

// Run starts a loop per workload and keeps loops in step with Sync and
// Forget until ctx ends; then it stops every loop and waits for them.
func (h *ScaleHandler) Run(ctx context.Context) {
	h.mu.Lock()
	h.runCtx = ctx
	h.slots = make(chan struct{}, h.nSlots)
	h.work = make(chan func())
	for _, cfg := range h.wanted {
		if groupKey(cfg) == "" {
			h.startLocked(cfg)
		}
	}
	for gk := range h.groups {
		h.startGroupLocked(gk)
	}
	h.mu.Unlock()

	<-ctx.Done()

	h.mu.Lock()
	h.runCtx = nil
	for key := range h.loops {
		h.stopLocked(key)
	}
	h.mu.Unlock()
	h.loopsWG.Wait()
	close(h.work) // no loop is left to dispatch: idle workers leave
	h.workersWG.Wait()
}

// dispatch runs job on an idle worker, or on a new one if none is idle.
// Workers outlive their jobs so that their stacks, grown by one check, serve
// the next without growing again; at most one per check slot stays idle.
func (h *ScaleHandler) dispatch(work chan func(), job func()) {
	select {
	case work <- job:
	default:
		h.workersWG.Add(1)
		go h.worker(work, job)
	}
}

func (h *ScaleHandler) worker(work chan func(), job func()) {
	defer h.workersWG.Done()
	for job != nil {
		job()
		if h.idle.Add(1) > int32(h.nSlots) {
			h.idle.Add(-1)
			return
		}
		job = <-work
		h.idle.Add(-1)
	}
}

// Running returns how many loops run now: one per lone workload and one per
// group.
func (h *ScaleHandler) Running() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.loops)
}

func (h *ScaleHandler) startLocked(cfg Config) {
	// Not derived from runCtx: Run cancels every loop itself when it ends,
	// and ten thousand children would only grow runCtx's map of them.
	ctx, cancel := context.WithCancel(context.WithoutCancel(h.runCtx))
	r := &running{ctx: ctx, cancel: cancel}
	key := cfg.Key()
	h.loops[key] = r
	h.loopsWG.Add(1)
	h.metrics.loops.Inc()
	// Everything that goes deep (building the scaler, hashing the question,
	// the metrics' label lookups) happens here, on the caller's goroutine:
	// the loop's own goroutine only waits on its timer, so its stack stays
	// at the minimum for good, thousands of times over.
	st := h.newLoopState(cfg, nil)
	if g, ok := h.left[key]; ok {
		st.mem.leftGroup = g
		delete(h.left, key)
	}
	go func() {
		defer h.loopEnded(key, r, st)
		h.loop(ctx, st)
	}()
}

// loopEnded cleans up after a loop's goroutine. A loop that ended by itself
// (nothing left to do, or its workload is gone) leaves the map, and its
// configuration is forgotten. Once a workload has neither a loop nor a
// configuration, its scale lock goes too. It takes the loop's state, not a
// copy of its configuration: a deferred call keeps its arguments in the
// goroutine's frame, and a Config there would double every loop's stack.
// st.cfg is the configuration the loop was started with, except when its
// scaler could not be built (newLoopState marks it Invalid); such a loop
// never ends by itself, so the comparison below never sees that change.
func (h *ScaleHandler) loopEnded(key string, r *running, st *loopState) {
	byItself := r.ctx.Err() == nil
	r.cancel()
	h.mu.Lock()
	if h.loops[key] == r {
		delete(h.loops, key)
	}
	if old, ok := h.wanted[key]; byItself && ok && old.Equal(st.cfg) {
		delete(h.wanted, key)
	}
	if _, ok := h.wanted[key]; !ok && h.loops[key] == nil {
		h.scaleLocks.Delete(key)
	}
	h.mu.Unlock()
	h.metrics.loops.Dec()
	h.loopsWG.Done()
}

// stopLocked cancels a loop without waiting for it: the workload's scale
// lock keeps the next loop from acting before this one has finished.
func (h *ScaleHandler) stopLocked(key string) {
	if r, ok := h.loops[key]; ok {
		r.cancel()
		delete(h.loops, key)
	}
}

func (h *ScaleHandler) lock(key string) *sync.Mutex {
	if m, ok := h.scaleLocks.Load(key); ok {
		return m.(*sync.Mutex)
	}
	m, _ := h.scaleLocks.LoadOrStore(key, &sync.Mutex{})
	return m.(*sync.Mutex)
}

// firstCheck returns the first check time after now. Checks of one
// workload fall on a fixed grid: its polling period, shifted by a phase
// derived from its question. Workloads asking the same question check at the
// same moments and so share one request; different questions are spread
// over the period instead of all firing at once. Phases fall on steps of a
// twentieth of the period, at most a second: the daemon wakes at most once
// a second at long periods however many questions it asks, and at short
// ones a herd of due checks is still cut in twenty.
func firstCheck(now time.Time, period time.Duration, question uint64) time.Time {
	step := min(time.Second, period/phaseSteps)
	phase := time.Duration(question % uint64(period)).Truncate(step)
	base := now.Truncate(period).Add(phase)
	for !base.After(now) {
		base = base.Add(period)
	}
	return base
}

// phaseSteps is how many phases a period has at least.
const phaseSteps = 20
