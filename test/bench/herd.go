package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"
)

// The herd run: N workloads whose cooldowns end together, then the same N
// woken at once, at the daemon's default API limits.
const (
	herdPolling  = 2 * time.Second
	herdCooldown = 10 * time.Second
	// herdTimeout bounds a herd of sleeps, from the drop.
	herdTimeout = 5 * time.Minute
)

// never is the latency of a workload not at 0 within herdTimeout.
const never = time.Duration(math.MaxInt64)

// herdResult is one daemon run of herd repetitions.
type herdResult struct {
	N          int
	Args       []string
	DefaultAPI string
	QPS, Burst float64
	Reps       []*herdRep
}

// herdRep is one repetition: every value drops to idle at once, all sleep;
// every value rises at once, all wake.
type herdRep struct {
	// LoadAtDrop and LoadAtEnd are the 1-minute load average when the
	// values dropped and when the repetition ended.
	LoadAtDrop, LoadAtEnd float64
	// Busy is the busy share of the whole machine over the repetition.
	Busy float64

	// For each workload, from the end of its cooldown (its first idle
	// reading + the cooldown) to the watch event showing 0.
	FromEnd []time.Duration
	// FromDrop is from the drop to that event; All until the last one.
	FromDrop []time.Duration
	All      time.Duration
	// FirstIdle is from the drop to the daemon's first idle reading;
	// Confirmed from the end of the cooldown to the confirmation query
	// (the check that decided); Written from there to the watch event.
	FirstIdle, Confirmed, Written []time.Duration
	// Early counts workloads at 0 less than the cooldown after the drop;
	// Unconfirmed those at 0 with no confirmation query before; Stuck those
	// not at 0 within herdTimeout (their latencies are never).
	Early, Unconfirmed, Stuck int
	// Asleep is how many were at 0 each second after the drop, until all
	// were.
	Asleep []int

	Sleep phaseCounts

	Wake      herdTimes
	WakeCount phaseCounts
}

// phaseCounts is what a herd of sleeps or wakes cost and what went wrong.
type phaseCounts struct {
	// Ops is zeroscaler_scale_operations_total of the direction, by
	// result (ok, conflict, error).
	Ops map[string]float64
	// DaemonWrites is zeroscaler_api_writes_total; ServerWrites the API
	// server's writes on deployments.
	DaemonWrites, ServerWrites float64
	// PatchMean is the API server's mean time answering a PATCH on
	// deployments (apiserver_request_duration_seconds); 0 if none.
	PatchMean time.Duration
	// Confirms and Health are the stand-in's confirmation and health
	// requests; Bad those it could not answer.
	Confirms, Health, Bad int64
	// The daemon's log lines at error level (or worse), at warn level, and
	// with a stack trace.
	LogErrors, LogWarns, LogStacks int
}

// failed is the number of scale operations that did not succeed.
func (p phaseCounts) failed() float64 { return p.Ops["conflict"] + p.Ops["error"] }

// measureHerd runs one daemon at default API limits on N = 1000 workloads
// and measures `reps` herds of sleeps and of wakes.
func (b *bench) measureHerd(ctx context.Context, reps int) (*herdResult, error) {
	s := set{N: 1000, K: 1000}
	if _, err := s.create(ctx, b.cs); err != nil {
		return nil, err
	}
	res := &herdResult{N: s.N, DefaultAPI: b.defaultAPILimits()}
	var ok bool
	if res.QPS, res.Burst, ok = parseAPILimits(res.DefaultAPI); !ok {
		return nil, fmt.Errorf("herd: cannot read the daemon's default API limits from its --help (got %q)", res.DefaultAPI)
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
	d, err := b.startDaemon("herd-defaults", "--selector", s.selector(),
		"--default-polling-interval", herdPolling.String(),
		"--default-cooldown-period", herdCooldown.String())
	if err != nil {
		return nil, err
	}
	res.Args = d.Args
	err = b.runHerd(ctx, d, w, s, reps, res)
	if stopErr := d.stop(); err == nil {
		err = stopErr
	}
	if err != nil {
		return nil, fmt.Errorf("herd: %w", err)
	}
	return res, nil
}

func (b *bench) runHerd(ctx context.Context, d *daemon, w *watcher, s set, reps int, res *herdResult) error {
	if _, err := b.waitStartup(ctx, d, s, 2*time.Minute); err != nil {
		return err
	}
	allAwake := func() bool { _, a := w.count(); return a == s.N }
	if err := waitFor(ctx, d, time.Minute, "all awake at start", allAwake); err != nil {
		return err
	}
	for r := range reps {
		rep, err := b.herdRep(ctx, d, w, s)
		if err != nil {
			return fmt.Errorf("repetition %d: %w", r+1, err)
		}
		res.Reps = append(res.Reps, rep)
		if rep.Stuck > 0 {
			b.logf("  herd %d/%d (load %.1f → %.1f): %d of %d not at 0 %s after the drop (at 0 after 15 s %d, 30 s %d, 60 s %d, 120 s %d); sleeps failed %.0f, writes %.0f (API server %.0f, mean PATCH %s); log errors %d warns %d stack traces %d; no wake, no further repetition",
				r+1, reps, rep.LoadAtDrop, rep.LoadAtEnd, rep.Stuck, s.N, herdTimeout, rep.asleepAt(15), rep.asleepAt(30), rep.asleepAt(60), rep.asleepAt(120),
				rep.Sleep.failed(), rep.Sleep.DaemonWrites, rep.Sleep.ServerWrites, secs(rep.Sleep.PatchMean), rep.Sleep.LogErrors, rep.Sleep.LogWarns, rep.Sleep.LogStacks)
			break
		}
		b.logf("  herd %d/%d (load %.1f → %.1f, machine busy %.0f %%): from the end of the cooldown to 0 p50 %s p99 %s max %s; from the drop p50 %s p99 %s, last %s; early %d, unconfirmed %d; sleeps failed %.0f, writes %.0f (API server %.0f, mean PATCH %s), confirmations %d; log errors %d warns %d stack traces %d; wake p50 %s p99 %s, last %s, failed %.0f",
			r+1, reps, rep.LoadAtDrop, rep.LoadAtEnd, 100*rep.Busy,
			secs(pct(rep.FromEnd, 50)), secs(pct(rep.FromEnd, 99)), secs(pct(rep.FromEnd, 100)),
			secs(pct(rep.FromDrop, 50)), secs(pct(rep.FromDrop, 99)), secs(rep.All), rep.Early, rep.Unconfirmed,
			rep.Sleep.failed(), rep.Sleep.DaemonWrites, rep.Sleep.ServerWrites, secs(rep.Sleep.PatchMean), rep.Sleep.Confirms,
			rep.Sleep.LogErrors, rep.Sleep.LogWarns, rep.Sleep.LogStacks,
			secs(pct(rep.Wake.Latency, 50)), secs(pct(rep.Wake.Latency, 99)), secs(rep.Wake.All), rep.WakeCount.failed())
	}
	return d.alive()
}

func (b *bench) herdRep(ctx context.Context, d *daemon, w *watcher, s set) (*herdRep, error) {
	rep := &herdRep{LoadAtDrop: loadAverage()}
	allAsleep := func() bool { a, _ := w.count(); return a == s.N }
	before, err := b.herdSnapshot(ctx, d)
	if err != nil {
		return nil, err
	}
	drop := b.standin.setAll(idleValue)
	if rep.Asleep, err = followHerd(ctx, d, drop, func() int { a, _ := w.count(); return a }, s.N); err != nil {
		return nil, err
	}
	rep.All = time.Since(drop)
	if !allAsleep() {
		rep.All = never
	}
	for i := range s.N {
		slept, ok := w.slept(s.key(i))
		if !ok || !slept.After(drop) {
			rep.Stuck++
			rep.FromEnd, rep.FromDrop = append(rep.FromEnd, never), append(rep.FromDrop, never)
			continue
		}
		idle, ok := b.standin.idle(s.query(i))
		if !ok {
			return nil, fmt.Errorf("%s slept without an idle reading", s.key(i))
		}
		end := idle.Add(herdCooldown)
		rep.FromEnd = append(rep.FromEnd, slept.Sub(end))
		rep.FromDrop = append(rep.FromDrop, slept.Sub(drop))
		rep.FirstIdle = append(rep.FirstIdle, idle.Sub(drop))
		if slept.Sub(drop) < herdCooldown {
			rep.Early++
		}
		confirmed, ok := b.standin.confirmed(s.query(i))
		if !ok || confirmed.After(slept) {
			rep.Unconfirmed++
			continue
		}
		rep.Confirmed = append(rep.Confirmed, confirmed.Sub(end))
		rep.Written = append(rep.Written, slept.Sub(confirmed))
	}
	// Writes that failed are retried at the next check: give them one.
	if err := sleep(ctx, herdPolling); err != nil {
		return nil, err
	}
	mid, err := b.herdSnapshot(ctx, d)
	if err != nil {
		return nil, err
	}
	rep.Sleep = mid.since(before, "down")
	if rep.Stuck > 0 {
		rep.Busy = busyShare(before.cpu, mid.cpu)
		rep.LoadAtEnd = loadAverage()
		return rep, nil
	}

	if rep.Wake, err = b.herdWake(ctx, d, w, s); err != nil {
		return nil, err
	}
	// Every loop sees its write in the cache and reads the metric active
	// again before the next repetition.
	if err := sleep(ctx, 2*herdPolling); err != nil {
		return nil, err
	}
	after, err := b.herdSnapshot(ctx, d)
	if err != nil {
		return nil, err
	}
	rep.WakeCount = after.since(mid, "up")
	rep.Busy = busyShare(before.cpu, after.cpu)
	rep.LoadAtEnd = loadAverage()
	return rep, nil
}

// followHerd waits until asleep() reaches n or herdTimeout has passed
// since the drop, and returns asleep() at each whole second after it.
func followHerd(ctx context.Context, d *daemon, drop time.Time, asleep func() int, n int) ([]int, error) {
	var counts []int
	for {
		if err := d.alive(); err != nil {
			return counts, err
		}
		a := asleep()
		for time.Duration(len(counts)+1)*time.Second <= time.Since(drop) {
			counts = append(counts, a)
		}
		if a == n || time.Since(drop) >= herdTimeout {
			return counts, nil
		}
		if err := sleep(ctx, 10*time.Millisecond); err != nil {
			return counts, err
		}
	}
}

// asleepAt is how many were at 0 sec seconds after the drop.
func (rep *herdRep) asleepAt(sec int) int {
	switch {
	case sec <= 0 || len(rep.Asleep) == 0:
		return 0
	case sec > len(rep.Asleep) && rep.Stuck == 0:
		return len(rep.FromEnd) // all were by then
	}
	return rep.Asleep[min(sec, len(rep.Asleep))-1]
}

// herdSnap is what the herd counts at one moment.
type herdSnap struct {
	snapshot
	ops map[string]float64 // direction/result → scale operations
	// patchSecs and patches are the API server's time answering PATCH on
	// deployments, and their count.
	patchSecs, patches float64
	logLen             int // bytes of daemon output so far
	log                string
}

func (b *bench) herdSnapshot(ctx context.Context, d *daemon) (herdSnap, error) {
	snap, err := b.snapshot(ctx, d)
	if err != nil {
		return herdSnap{}, err
	}
	m, err := d.metrics(ctx)
	if err != nil {
		return herdSnap{}, err
	}
	h := herdSnap{snapshot: snap, ops: map[string]float64{}, log: d.Output()}
	if h.patchSecs, h.patches, err = apiserverPatchTime(ctx, b.cs); err != nil {
		return herdSnap{}, err
	}
	h.logLen = len(h.log)
	for _, dir := range []string{"down", "up"} {
		for _, result := range []string{"ok", "conflict", "error"} {
			h.ops[dir+"/"+result] = m.sum("zeroscaler_scale_operations_total", func(l map[string]string) bool {
				return l["direction"] == dir && l["result"] == result
			})
		}
	}
	return h, nil
}

// since is what happened between a and h, for scale operations in
// direction.
func (h herdSnap) since(a herdSnap, direction string) phaseCounts {
	p := phaseCounts{
		Ops:          map[string]float64{},
		DaemonWrites: h.daemonWrites - a.daemonWrites,
		ServerWrites: h.serverWrites - a.serverWrites,
		Confirms:     h.standin.confirm - a.standin.confirm,
		Health:       h.standin.health - a.standin.health,
		Bad:          h.standin.bad - a.standin.bad,
	}
	if n := h.patches - a.patches; n > 0 {
		p.PatchMean = time.Duration((h.patchSecs - a.patchSecs) / n * float64(time.Second))
	}
	for _, result := range []string{"ok", "conflict", "error"} {
		k := direction + "/" + result
		p.Ops[result] = h.ops[k] - a.ops[k]
	}
	p.LogErrors, p.LogWarns, p.LogStacks = logLevels(h.log[a.logLen:])
	return p
}

// logLevels counts the daemon's log lines at error level or worse, at warn
// level, and those carrying a stack trace. It reads zap's JSON lines and
// klog's plain ones (client-go writes through klog: "E1202 …").
func logLevels(out string) (errs, warns, stacks int) {
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		var level string
		var rec struct {
			Level      string `json:"level"`
			Stacktrace string `json:"stacktrace"`
		}
		switch {
		case strings.HasPrefix(line, "{") && json.Unmarshal([]byte(line), &rec) == nil:
			level = rec.Level
			if rec.Stacktrace != "" {
				stacks++
			}
		case len(line) > 5 && strings.ContainsRune("EFW", rune(line[0])) && isDigits(line[1:5]):
			level = map[byte]string{'E': "error", 'F': "fatal", 'W': "warn"}[line[0]]
		}
		switch level {
		case "error", "dpanic", "panic", "fatal":
			errs++
		case "warn":
			warns++
		}
		if strings.HasPrefix(strings.TrimSpace(line), "goroutine ") && strings.HasSuffix(line, ":") {
			stacks++ // a Go panic's trace
		}
	}
	return errs, warns, stacks
}

func isDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// loadAverage is the 1-minute load average, or -1 if unknown.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f, _, _ := strings.Cut(string(b), " ")
	v, err := strconv.ParseFloat(f, 64)
	if err != nil {
		return -1
	}
	return v
}

// parseAPILimits reads "--kube-api-qps Q --kube-api-burst B", as
// defaultAPILimits gives it.
func parseAPILimits(s string) (qps, burst float64, ok bool) {
	f := strings.Fields(s)
	var gotQ, gotB bool
	for i := 0; i+1 < len(f); i++ {
		v, err := strconv.ParseFloat(f[i+1], 64)
		switch {
		case err != nil:
		case f[i] == "--kube-api-qps":
			qps, gotQ = v, true
		case f[i] == "--kube-api-burst":
			burst, gotB = v, true
		}
	}
	return qps, burst, gotQ && gotB && qps > 0
}

// herdTarget is the bound on the p99 from the end of the cooldown
// to 0: one polling interval, plus the time the API limits take for N
// writes beyond the burst.
func (r *herdResult) herdTarget() (target, beyondBurst time.Duration) {
	beyondBurst = time.Duration(max(0, float64(r.N)-r.Burst) / r.QPS * float64(time.Second))
	return herdPolling + beyondBurst, beyondBurst
}
