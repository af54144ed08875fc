package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
)

const (
	activeValue = 5 // ≥ threshold 1
	idleValue   = 0
)

// watcher follows spec.replicas of a set's Deployments through a watch and
// records when each one last went from 0 to more, and from more to 0.
type watcher struct {
	mu       sync.Mutex
	replicas map[string]int32     // namespace/name → spec.replicas
	wokeAt   map[string]time.Time // last 0 → n seen
	sleptAt  map[string]time.Time // last n → 0 seen
}

// watch starts the watch; it runs until ctx ends, and stop waits for it.
func (b *bench) watch(ctx context.Context, s set) (w *watcher, stop func(), err error) {
	w = &watcher{replicas: map[string]int32{}, wokeAt: map[string]time.Time{}, sleptAt: map[string]time.Time{}}
	factory := informers.NewSharedInformerFactoryWithOptions(b.cs, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = s.selector() }))
	inf := factory.Apps().V1().Deployments().Informer()
	record := func(obj any) {
		d, ok := obj.(*appsv1.Deployment)
		if !ok {
			return
		}
		now := time.Now()
		key := d.Namespace + "/" + d.Name
		r := int32(1)
		if d.Spec.Replicas != nil {
			r = *d.Spec.Replicas
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		if old, seen := w.replicas[key]; seen && old == 0 && r > 0 {
			w.wokeAt[key] = now
		} else if seen && old > 0 && r == 0 {
			w.sleptAt[key] = now
		}
		w.replicas[key] = r
	}
	_, err = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    record,
		UpdateFunc: func(_, obj any) { record(obj) },
	})
	if err != nil {
		return nil, nil, fmt.Errorf("watch deployments: %w", err)
	}
	factory.Start(ctx.Done())
	for _, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			factory.Shutdown()
			return nil, nil, fmt.Errorf("watch deployments: %w", ctx.Err())
		}
	}
	return w, factory.Shutdown, nil
}

// count returns how many Deployments are at zero and how many above.
func (w *watcher) count() (asleep, awake int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range w.replicas {
		if r == 0 {
			asleep++
		} else {
			awake++
		}
	}
	return asleep, awake
}

func (w *watcher) woke(key string) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t, ok := w.wokeAt[key]
	return t, ok
}

func (w *watcher) slept(key string) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t, ok := w.sleptAt[key]
	return t, ok
}

// waitFor polls cond every 10 ms until it holds, the daemon dies or the
// timeout passes.
func waitFor(ctx context.Context, d *daemon, timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if err := d.alive(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %s", what, timeout)
		}
		if err := sleep(ctx, 10*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

// wakeResult is one wake-latency run.
type wakeResult struct {
	Label    string
	Args     []string
	SleepAll time.Duration   // from value 0 until all N were at zero
	Single   []time.Duration // one workload waking, repeated
	Herd     []time.Duration // N workloads waking at once, one value each
	// The herd's latency in two parts: from the change until the daemon
	// asked the stand-in, and from that answer to the watch event.
	HerdAsked, HerdWrite []time.Duration
	HerdAll              time.Duration // until the last of the herd was awake
	HerdCount            int
	// DefaultAPI names the daemon's default API limits, from its --help.
	DefaultAPI string
	// ScaleOps is zeroscaler_scale_operations_total by result at the end.
	ScaleOps map[string]float64
}

// measureWake puts every workload of s to sleep, wakes single workloads
// `singles` times, then wakes them all at once. The latency runs from the
// moment the stand-in's value crosses the threshold to the watch event
// showing spec.replicas above zero.
func (b *bench) measureWake(ctx context.Context, label string, s set, singles int, apiFlags ...string) (*wakeResult, error) {
	if s.K != s.N {
		return nil, fmt.Errorf("wake needs one question per workload, got %s", s.name())
	}
	wctx, cancel := context.WithCancel(ctx)
	w, stopWatch, err := b.watch(wctx, s)
	if err != nil {
		cancel()
		return nil, err
	}
	defer func() {
		cancel()
		stopWatch()
	}()
	b.standin.setAll(activeValue)
	b.standin.reset()
	const polling = 2 * time.Second
	args := append([]string{
		"--selector", s.selector(),
		"--default-polling-interval", polling.String(),
		"--default-cooldown-period", "2s",
	}, apiFlags...)
	d, err := b.startDaemon("wake-"+label, args...)
	if err != nil {
		return nil, err
	}
	res := &wakeResult{Label: label, Args: d.Args, DefaultAPI: b.defaultAPILimits()}
	err = b.runWake(ctx, d, w, s, polling, singles, res)
	if stopErr := d.stop(); err == nil {
		err = stopErr
	}
	if err != nil {
		return nil, fmt.Errorf("wake %s: %w", label, err)
	}
	return res, nil
}

func (b *bench) runWake(ctx context.Context, d *daemon, w *watcher, s set, polling time.Duration, singles int, res *wakeResult) error {
	if _, err := b.waitStartup(ctx, d, s, 2*time.Minute); err != nil {
		return err
	}
	allAsleep := func() bool { a, _ := w.count(); return a == s.N }
	allAwake := func() bool { _, a := w.count(); return a == s.N }
	if !allAwake() {
		return fmt.Errorf("expected all %d awake at start", s.N)
	}

	start := time.Now()
	b.standin.setAll(idleValue)
	if err := waitFor(ctx, d, 5*time.Minute, "all asleep", allAsleep); err != nil {
		return err
	}
	res.SleepAll = time.Since(start)
	b.logf("  %s: %d asleep after %s", res.Label, s.N, secs(res.SleepAll))

	// One at a time, at a random moment of the polling grid.
	rng := rand.New(rand.NewPCG(1, 2))
	for r := range singles {
		i := (r * 37) % s.N
		key := s.key(i)
		if err := sleep(ctx, time.Duration(rng.Int64N(int64(polling)))); err != nil {
			return err
		}
		t0 := time.Now()
		b.standin.set(s.query(i), activeValue)
		var woke time.Time
		if err := waitFor(ctx, d, 30*time.Second, "wake "+key, func() bool {
			t, ok := w.woke(key)
			woke = t
			return ok && t.After(t0)
		}); err != nil {
			return err
		}
		res.Single = append(res.Single, woke.Sub(t0))
		b.standin.set(s.query(i), idleValue) // back to sleep after the cooldown
	}
	if err := waitFor(ctx, d, 2*time.Minute, "all asleep again", allAsleep); err != nil {
		return err
	}
	// Let the last sleeps' writes and events settle.
	if err := sleep(ctx, polling); err != nil {
		return err
	}

	herd, err := b.herdWake(ctx, d, w, s)
	if err != nil {
		return err
	}
	res.Herd, res.HerdAsked, res.HerdWrite, res.HerdAll = herd.Latency, herd.Asked, herd.Written, herd.All
	res.HerdCount = s.N
	m, err := d.metrics(ctx)
	if err != nil {
		return err
	}
	res.ScaleOps = map[string]float64{}
	for _, result := range []string{"ok", "conflict", "error"} {
		res.ScaleOps[result] = m.sum("zeroscaler_scale_operations_total", func(l map[string]string) bool { return l["result"] == result })
	}
	b.logf("  %s: single p50 %s p99 %s; %d at once p50 %s p99 %s, last %s; asked p50 %s p99 %s, then written p50 %s p99 %s; scale operations %v",
		res.Label, secs(pct(res.Single, 50)), secs(pct(res.Single, 99)),
		s.N, secs(pct(res.Herd, 50)), secs(pct(res.Herd, 99)), secs(res.HerdAll),
		secs(pct(res.HerdAsked, 50)), secs(pct(res.HerdAsked, 99)), secs(pct(res.HerdWrite, 50)), secs(pct(res.HerdWrite, 99)), res.ScaleOps)
	return nil
}

// herdTimes is one herd of wakes or sleeps: for each workload, the time
// from the start to the watch event, and its two parts.
type herdTimes struct {
	Latency []time.Duration
	// Asked is from the start until the daemon asked the question that
	// decided (for a wake, its first active reading), Written from that
	// answer to the watch event.
	Asked, Written []time.Duration
	All            time.Duration // until the last one
}

// herdWake wakes every workload of s at once (every value to active) and
// returns when each one woke, from the change.
func (b *bench) herdWake(ctx context.Context, d *daemon, w *watcher, s set) (herdTimes, error) {
	var h herdTimes
	allAwake := func() bool { _, a := w.count(); return a == s.N }
	t0 := b.standin.setAll(activeValue)
	if err := waitFor(ctx, d, 5*time.Minute, "herd awake", allAwake); err != nil {
		return h, err
	}
	h.All = time.Since(t0)
	for i := range s.N {
		t, ok := w.woke(s.key(i))
		if !ok || !t.After(t0) {
			return h, fmt.Errorf("no wake seen for %s", s.key(i))
		}
		h.Latency = append(h.Latency, t.Sub(t0))
		if asked, ok := b.standin.active(s.query(i)); ok {
			h.Asked = append(h.Asked, asked.Sub(t0))
			h.Written = append(h.Written, t.Sub(asked))
		}
	}
	return h, nil
}

// defaultAPILimits reads the defaults of --kube-api-qps and --kube-api-burst
// from the daemon's --help.
func (b *bench) defaultAPILimits() string {
	out, _ := exec.Command(b.binary, "--help").CombinedOutput()
	var parts []string
	for line := range strings.Lines(string(out)) {
		fields := strings.Fields(line)
		if len(fields) == 0 || (fields[0] != "--kube-api-qps" && fields[0] != "--kube-api-burst") {
			continue
		}
		if _, def, ok := strings.Cut(line, "(default "); ok {
			parts = append(parts, fields[0]+" "+strings.TrimSuffix(strings.TrimSpace(def), ")"))
		}
	}
	if len(parts) == 0 {
		return "unknown"
	}
	return strings.Join(parts, " ")
}
