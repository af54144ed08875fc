package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// startup is how long a daemon took, from its start, to each milestone.
type startup struct {
	Ready    time.Duration // /readyz: caches synced; loops start right after
	Loops    time.Duration // zeroscaler_loops = loops (and zeroscaler_groups = groups), or, without them, go_goroutines ≥ idle + loops
	Reported time.Duration // sum(zeroscaler_workloads) == N: every loop has checked once
	Asked    time.Duration // the stand-in has seen all K questions
}

// steady is what one daemon run measured.
type steady struct {
	Set     set
	Polling time.Duration
	Args    []string
	Startup startup
	Window  time.Duration // length of each measurement window

	// One value per window.
	CPUPerMin          []float64 // CPU seconds per minute
	ReqPerInterval     []float64 // non-health Prometheus requests per polling interval
	HealthPerInterval  []float64 // health requests per polling interval
	DaemonWritesPerMin []float64 // zeroscaler_api_writes_total
	ServerWritesPerMin []float64 // apiserver_request_total, writes on deployments/statefulsets
	DaemonQueryCount   []float64 // zeroscaler_prometheus_queries_total per interval (cross-check)
	ConnsPerInterval   []float64 // new TCP connections to the stand-in per interval
	MachineBusy        []float64 // busy share of all CPUs, every process (contention)
	// One value per sample.
	RSS        []float64 // bytes
	Heap       []float64 // go_memstats_heap_inuse_bytes
	Stack      []float64 // go_memstats_stack_inuse_bytes
	Goroutines []float64
	// The daemon's zeroscaler_loops, zeroscaler_groups and
	// sum(zeroscaler_workloads), which should not move.
	LoopsGauge, GroupsGauge, WorkloadsGauge []float64
}

// measureSteady starts a daemon on s, times its start, then measures
// `windows` windows of at least two polling intervals each.
func (b *bench) measureSteady(ctx context.Context, s set, polling time.Duration, windows int) (*steady, error) {
	b.standin.setAll(activeValue)
	b.standin.reset()
	name := fmt.Sprintf("%s-poll%s", s.name(), polling)
	args := []string{"--selector", s.selector(), "--default-polling-interval", polling.String()}
	if b.profileDir != "" {
		args = append(args, "--profiling")
	}
	d, err := b.startDaemon(name, args...)
	if err != nil {
		return nil, err
	}
	res := &steady{Set: s, Polling: polling, Args: d.Args}
	err = b.runSteady(ctx, d, res, windows)
	if stopErr := d.stop(); err == nil {
		err = stopErr
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return res, nil
}

func (b *bench) runSteady(ctx context.Context, d *daemon, res *steady, windows int) error {
	s, polling := res.Set, res.Polling
	var err error
	if res.Startup, err = b.waitStartup(ctx, d, s, 2*polling+2*time.Minute); err != nil {
		return err
	}
	b.logf("  %s, polling %s: ready %s, %d loops %s, all reported %s, all %d questions asked %s",
		s.name(), polling, secs(res.Startup.Ready), s.loops(), secs(res.Startup.Loops), secs(res.Startup.Reported), s.K, secs(res.Startup.Asked))

	// Let the start's garbage go before measuring memory.
	if err := sleep(ctx, 5*time.Second); err != nil {
		return err
	}
	res.Window = max(2*polling, 20*time.Second)
	intervals := res.Window.Seconds() / polling.Seconds()
	if b.profileDir != "" {
		name := filepath.Join(b.profileDir, fmt.Sprintf("%s-poll%s", s.name(), polling))
		profiled := make(chan error, 1)
		go func() {
			profiled <- d.profile(ctx, fmt.Sprintf("profile?seconds=%d", int(res.Window.Seconds())), name+".cpu.pprof")
		}()
		defer func() {
			if err := <-profiled; err != nil {
				b.logf("  CPU profile: %v", err)
			}
			if err := d.profile(ctx, "heap", name+".heap.pprof"); err != nil {
				b.logf("  heap profile: %v", err)
			}
		}()
	}
	for w := range windows {
		before, err := b.snapshot(ctx, d)
		if err != nil {
			return err
		}
		// Sample memory six times in the window.
		step := res.Window / 6
		for range 6 {
			if err := sleep(ctx, step-time.Since(before.at)%step); err != nil {
				return err
			}
			p, err := d.proc()
			if err != nil {
				return err
			}
			m, err := d.metrics(ctx)
			if err != nil {
				return err
			}
			res.RSS = append(res.RSS, p.rssBytes)
			res.Heap = append(res.Heap, m.sum("go_memstats_heap_inuse_bytes", nil))
			res.Stack = append(res.Stack, m.sum("go_memstats_stack_inuse_bytes", nil))
			res.Goroutines = append(res.Goroutines, m.sum("go_goroutines", nil))
			res.LoopsGauge = append(res.LoopsGauge, m.sum("zeroscaler_loops", nil))
			res.GroupsGauge = append(res.GroupsGauge, m.sum("zeroscaler_groups", nil))
			res.WorkloadsGauge = append(res.WorkloadsGauge, m.sum("zeroscaler_workloads", nil))
		}
		if err := sleep(ctx, res.Window-time.Since(before.at)); err != nil {
			return err
		}
		after, err := b.snapshot(ctx, d)
		if err != nil {
			return err
		}
		elapsed := after.at.Sub(before.at)
		perMin := time.Minute.Seconds() / elapsed.Seconds()
		perInterval := polling.Seconds() / elapsed.Seconds()
		res.CPUPerMin = append(res.CPUPerMin, (after.cpuSecs-before.cpuSecs)*perMin)
		res.ReqPerInterval = append(res.ReqPerInterval, float64(after.standin.total-before.standin.total)*perInterval)
		res.HealthPerInterval = append(res.HealthPerInterval, float64(after.standin.health-before.standin.health)*perInterval)
		res.DaemonWritesPerMin = append(res.DaemonWritesPerMin, (after.daemonWrites-before.daemonWrites)*perMin)
		res.ServerWritesPerMin = append(res.ServerWritesPerMin, (after.serverWrites-before.serverWrites)*perMin)
		res.DaemonQueryCount = append(res.DaemonQueryCount, (after.daemonQueries-before.daemonQueries)*perInterval)
		res.ConnsPerInterval = append(res.ConnsPerInterval, float64(after.standin.conns-before.standin.conns)*perInterval)
		res.MachineBusy = append(res.MachineBusy, busyShare(before.cpu, after.cpu))
		b.logf("  window %d/%d (%s = %.1f intervals): CPU %.2f s/min, %.1f requests/interval (+%.1f health, %.1f new connections), writes/min daemon %.1f, API server %.1f, RSS %s, heap %s, stacks %s, machine busy %.0f %%",
			w+1, windows, elapsed.Round(time.Millisecond), intervals,
			res.CPUPerMin[w], res.ReqPerInterval[w], res.HealthPerInterval[w], res.ConnsPerInterval[w],
			res.DaemonWritesPerMin[w], res.ServerWritesPerMin[w],
			mib(res.RSS[len(res.RSS)-1]), mib(res.Heap[len(res.Heap)-1]), mib(res.Stack[len(res.Stack)-1]), 100*res.MachineBusy[w])
	}
	return d.alive()
}

// waitStartup polls the daemon and the stand-in until every workload has
// been reported and every question asked.
func (b *bench) waitStartup(ctx context.Context, d *daemon, s set, timeout time.Duration) (startup, error) {
	var st startup
	deadline := time.Now().Add(timeout)
	for st.Ready == 0 || st.Loops == 0 || st.Reported == 0 || st.Asked == 0 {
		if err := d.alive(); err != nil {
			return st, err
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("not started after %s: %+v (0 = not yet)", timeout, st)
		}
		since := time.Since(d.Started)
		if st.Ready == 0 && d.ready(ctx) {
			st.Ready = since
		}
		if st.Ready != 0 && (st.Loops == 0 || st.Reported == 0) {
			if m, err := d.metrics(ctx); err == nil {
				if st.Loops == 0 && loopsRunning(m, b.idleGoroutines, s) {
					st.Loops = since
				}
				if st.Reported == 0 && int(m.sum("zeroscaler_workloads", nil)) == s.N {
					st.Reported = since
				}
			}
		}
		if st.Asked == 0 && b.standin.snapshot().distinct >= s.K {
			st.Asked = since
		}
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return st, err
		}
	}
	return st, nil
}

// loopsRunning tells whether every loop of s runs: from the daemon's
// zeroscaler_loops and zeroscaler_groups gauges, or for a daemon without
// them from its goroutines.
func loopsRunning(m metricFamilies, idleGoroutines float64, s set) bool {
	if _, ok := m["zeroscaler_loops"]; ok {
		return int(m.sum("zeroscaler_loops", nil)) >= s.loops() && int(m.sum("zeroscaler_groups", nil)) >= s.groups()
	}
	return m.sum("go_goroutines", nil) >= idleGoroutines+float64(s.loops())
}

type snapshot struct {
	at            time.Time
	cpuSecs       float64
	standin       standinCounts
	daemonWrites  float64
	daemonQueries float64
	serverWrites  float64
	cpu           cpuTimes
}

func (b *bench) snapshot(ctx context.Context, d *daemon) (snapshot, error) {
	if err := d.alive(); err != nil {
		return snapshot{}, err
	}
	serverWrites, err := apiserverWrites(ctx, b.cs)
	if err != nil {
		return snapshot{}, err
	}
	m, err := d.metrics(ctx)
	if err != nil {
		return snapshot{}, err
	}
	p, err := d.proc()
	if err != nil {
		return snapshot{}, err
	}
	return snapshot{
		at:            p.at,
		cpuSecs:       p.cpuSecs,
		standin:       b.standin.snapshot(),
		daemonWrites:  m.sum("zeroscaler_api_writes_total", nil),
		daemonQueries: m.sum("zeroscaler_prometheus_queries_total", nil),
		serverWrites:  serverWrites,
		cpu:           readCPUTimes(),
	}, nil
}

// measureIdle runs the daemon with no workload and samples its memory.
func (b *bench) measureIdle(ctx context.Context, samples int) (rss, heap, goroutines []float64, err error) {
	d, err := b.startDaemon("no-workloads", "--selector", setLabel+"=none")
	if err != nil {
		return nil, nil, nil, err
	}
	defer func() {
		if stopErr := d.stop(); err == nil {
			err = stopErr
		}
	}()
	for !d.ready(ctx) {
		if err := d.alive(); err != nil {
			return nil, nil, nil, err
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return nil, nil, nil, err
		}
	}
	if err := sleep(ctx, 5*time.Second); err != nil {
		return nil, nil, nil, err
	}
	for range samples {
		p, err := d.proc()
		if err != nil {
			return nil, nil, nil, err
		}
		m, err := d.metrics(ctx)
		if err != nil {
			return nil, nil, nil, err
		}
		rss = append(rss, p.rssBytes)
		heap = append(heap, m.sum("go_memstats_heap_inuse_bytes", nil))
		goroutines = append(goroutines, m.sum("go_goroutines", nil))
		if err := sleep(ctx, 2*time.Second); err != nil {
			return nil, nil, nil, err
		}
	}
	return rss, heap, goroutines, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// cpuTimes is the first line of /proc/stat: jiffies spent by all CPUs.
type cpuTimes struct{ busy, total float64 }

func readCPUTimes() cpuTimes {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fields := strings.Fields(line)
	var t cpuTimes
	for i, f := range fields[1:] {
		v, _ := strconv.ParseFloat(f, 64)
		if i == 8 || i == 9 { // guest time is already in user
			continue
		}
		t.total += v
		if i != 3 && i != 4 { // idle, iowait
			t.busy += v
		}
	}
	return t
}

// busyShare is the share of all CPUs that was busy between a and b.
func busyShare(a, b cpuTimes) float64 {
	if b.total <= a.total {
		return 0
	}
	return (b.busy - a.busy) / (b.total - a.total)
}
