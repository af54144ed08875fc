package handler

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/util/flowcontrol"
)

// lease is a WriteDeadline a test moves.
type lease struct {
	mu       sync.Mutex
	deadline time.Time
	// ahead, if set, makes each get answer ahead from its own moment (a
	// renewal just now, whenever asked), and remember that answer in
	// deadline.
	ahead time.Duration
}

func (l *lease) set(d time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.deadline, l.ahead = d, 0
}

// renewedAtEachAsk makes the lease end ahead after each time it is asked.
func (l *lease) renewedAtEachAsk(ahead time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ahead = ahead
}

func (l *lease) get() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ahead > 0 {
		l.deadline = time.Now().Add(l.ahead)
	}
	return l.deadline
}

// last is the last answer get gave.
func (l *lease) last() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deadline
}

// Item 11 of the hardening issue: a replica whose lease may have passed to
// another starts no write; a renewed one writes again.
func TestNoWriteAfterTheLease(t *testing.T) {
	hs := newHarness(t, false, deployment("web", 3, nil))
	l := &lease{}
	l.set(time.Now().Add(-time.Second)) // taken away: the last renewal is too old
	hs.h.writeDeadline = l.get
	hs.prom.set("q", idle)
	hs.h.Sync(managed("web"))
	hs.run()

	hs.ticks(6) // idle well past the cooldown
	if n := hs.world.writeActions(); n != 0 {
		t.Fatalf("%d write requests after the lease lapsed, want none", n)
	}
	for _, e := range hs.takeEvents() {
		t.Errorf("told %q without writing", e)
	}
	if w := hs.workload("web"); w.Replicas != 3 || len(w.Annotations) != 0 {
		t.Errorf("workload = %d replicas, %v; want it untouched", w.Replicas, w.Annotations)
	}

	l.set(time.Now().Add(time.Hour)) // renewed
	hs.tick(1)
	wantStrings(t, "writes once the lease is renewed", hs.world.takeWrites(),
		[]string{"patch web replicas=0 original-replicas=3 scaled-to-zero-at=" + hs.stamp()})
}

// stalledAPI is an API server that stops answering patches while stalled:
// a patch sent then is in flight until its context ends. Other calls, and
// patches while it is not stalled, go through.
type stalledAPI struct {
	dynamic.Interface
	stalled atomic.Bool
	// inFlight receives the context of each patch that stalled.
	inFlight chan context.Context
}

func (a *stalledAPI) Resource(gvr schema.GroupVersionResource) dynamic.NamespaceableResourceInterface {
	return stalledResource{a.Interface.Resource(gvr), a}
}

type stalledResource struct {
	dynamic.NamespaceableResourceInterface
	api *stalledAPI
}

func (r stalledResource) Namespace(ns string) dynamic.ResourceInterface {
	return stalledNamespaced{r.NamespaceableResourceInterface.Namespace(ns), r.api}
}

type stalledNamespaced struct {
	dynamic.ResourceInterface
	api *stalledAPI
}

func (n stalledNamespaced) Patch(ctx context.Context, name string, pt types.PatchType, data []byte, o metav1.PatchOptions, sub ...string) (*unstructured.Unstructured, error) {
	if !n.api.stalled.Load() {
		return n.ResourceInterface.Patch(ctx, name, pt, data, o, sub...)
	}
	select {
	case n.api.inFlight <- ctx:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

// Item 11 of the hardening issue, mid-sleep: the leader decides to put a
// workload to sleep while it still holds the Lease, its renewals stop (the
// Lease is taken away) and the sleep write hangs at the API server. The
// write ends by the last renewal plus the renew deadline, not a write
// timeout later; nothing is written or told, and no write starts after.
func TestLeaseTakenAwayMidSleep(t *testing.T) {
	hs := newHarness(t, false, deployment("web", 3, nil))
	api := &stalledAPI{Interface: hs.world.dyn, inFlight: make(chan context.Context, 1)}
	hs.h.kDynamicClient = api
	l := &lease{}
	l.set(time.Now().Add(time.Hour))
	hs.h.writeDeadline = l.get
	hs.prom.set("q", idle)
	hs.h.Sync(managed("web"))
	hs.run()
	hs.ticks(3) // idle for 20s: cooling down

	// As far as the write can tell when it asks, the lease was just renewed
	// and holds 2s more; no renewal follows. (The deadline is taken when
	// the write asks, so a slow machine cannot make it lapse before.)
	l.renewedAtEachAsk(2 * time.Second)
	api.stalled.Store(true)
	hs.parked(1)
	hs.clock.Step(period) // the sleep decision; its write hangs
	var ctx context.Context
	select {
	case ctx = <-api.inFlight:
	case <-time.After(5 * time.Second):
		t.Fatal("no sleep write was sent while the lease held")
	}
	end := l.last()
	l.set(end) // no renewal after the one the write was given
	if deadline, ok := ctx.Deadline(); !ok || deadline.After(end) {
		t.Fatalf("the sleep write may run until %v (deadline set: %t), after the lease's end %v", deadline, ok, end)
	}
	hs.parked(1) // the write ended with the lease
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Errorf("the stalled write ended with %v, want its deadline", ctx.Err())
	}
	wantStrings(t, "writes", hs.world.takeWrites(), nil)
	for _, e := range hs.takeEvents() {
		t.Errorf("told %q of a write that did not happen", e)
	}

	// The API server answers again, but the lease is gone: nothing starts.
	api.stalled.Store(false)
	before := hs.world.writeActions()
	hs.ticks(3)
	if n := hs.world.writeActions() - before; n != 0 {
		t.Errorf("%d write requests after the lease ended, want none", n)
	}
	if w := hs.workload("web"); w.Replicas != 3 || len(w.Annotations) != 0 {
		t.Errorf("workload = %d replicas, %v; want it untouched", w.Replicas, w.Annotations)
	}
}

// blockingLimiter lets a write go only when released, or fails once its
// context ends, as flowcontrol's token bucket does.
type blockingLimiter struct {
	flowcontrol.RateLimiter
	release chan struct{}
}

func (l *blockingLimiter) Wait(ctx context.Context) error {
	select {
	case <-l.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Issue 13, item 2: the wait for the client-side rate limiter is not part
// of a write's timeout; the lease bounds both.
func TestWriteContext(t *testing.T) {
	t.Run("the timeout starts once the limiter lets the write go", func(t *testing.T) {
		lim := &blockingLimiter{release: make(chan struct{})}
		h := &ScaleHandler{limiter: lim}
		const queued = 100 * time.Millisecond
		go func() {
			time.Sleep(queued)
			close(lim.release)
		}()
		began := time.Now()
		ctx, cancel, err := h.writeContext(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer cancel()
		deadline, ok := ctx.Deadline()
		if !ok {
			t.Fatal("a write has no deadline")
		}
		if got := deadline.Sub(began); got < writeTimeout+queued {
			t.Errorf("deadline %v after the write was queued, want at least the %v queued plus the %v timeout", got, queued, writeTimeout)
		}
	})
	t.Run("the loop's end does not cut a write short", func(t *testing.T) {
		h := &ScaleHandler{}
		loopCtx, endLoop := context.WithCancel(context.Background())
		ctx, cancel, err := h.writeContext(loopCtx)
		if err != nil {
			t.Fatal(err)
		}
		defer cancel()
		endLoop()
		if ctx.Err() != nil {
			t.Error("the write's context ended with its loop")
		}
	})
	t.Run("a lease that ends first ends the write", func(t *testing.T) {
		l := &lease{}
		l.set(time.Now().Add(time.Second))
		h := &ScaleHandler{writeDeadline: l.get}
		ctx, cancel, err := h.writeContext(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer cancel()
		if deadline, _ := ctx.Deadline(); deadline.After(l.get()) {
			t.Errorf("write deadline %v is after the lease's %v", deadline, l.get())
		}
	})
	t.Run("no write starts once the lease ended in the limiter's queue", func(t *testing.T) {
		l := &lease{}
		l.set(time.Now().Add(50 * time.Millisecond))
		h := &ScaleHandler{writeDeadline: l.get, limiter: &blockingLimiter{release: make(chan struct{})}}
		_, _, err := h.writeContext(context.Background())
		if !errors.Is(err, ErrNotLeading) {
			t.Errorf("err = %v, want ErrNotLeading", err)
		}
	})
	t.Run("no write starts after the lease", func(t *testing.T) {
		h := &ScaleHandler{writeDeadline: func() time.Time { return time.Time{} }}
		if _, _, err := h.writeContext(context.Background()); !errors.Is(err, ErrNotLeading) {
			t.Errorf("err = %v, want ErrNotLeading", err)
		}
	})
}

// The gauge behind the MetricUnavailable alert counts the loops whose last
// reading could not be had, and forgets a loop that ends.
func TestMetricUnavailableGauge(t *testing.T) {
	hs := newHarness(t, false, deployment("web", 3, nil))
	unavailable := func() float64 {
		var m dto.Metric
		if err := hs.metrics.metricUnavailable.WithLabelValues("no_data").Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetGauge().GetValue()
	}
	hs.prom.set("q", noData)
	hs.h.Sync(managed("web"))
	stop := hs.run()
	hs.tick(1)
	if got := unavailable(); got != 1 {
		t.Errorf("with no data: %v, want 1", got)
	}
	hs.prom.set("q", active)
	hs.tick(1)
	if got := unavailable(); got != 0 {
		t.Errorf("readable again: %v, want 0", got)
	}
	hs.prom.set("q", noData)
	hs.tick(1)
	stop()
	if got := unavailable(); got != 0 {
		t.Errorf("after the loop ended: %v, want 0", got)
	}
}
