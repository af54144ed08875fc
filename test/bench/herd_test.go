package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestLogLevels(t *testing.T) {
	out := strings.Join([]string{
		`{"level":"info","time":"2026-12-02T05:00:00.000Z","msg":"scaled 1 → 0"}`,
		`{"level":"warn","time":"2026-12-02T05:00:00.000Z","msg":"write failed; will retry at the next check","error":"context deadline exceeded"}`,
		`{"level":"error","time":"2026-12-02T05:00:00.000Z","msg":"scale down failed","error":"x","stacktrace":"github.com/zeroscaler/zeroscaler/handler.(*ScaleHandler).check\n\t/src/handler/loop.go:1"}`,
		`E1202 05:00:00.000000   12345 event.go:368] "Server rejected event (will not retry!)"`,
		`W1202 05:00:00.000000   12345 reflector.go:1] watch ended`,
		`I1202 05:00:00.000000   12345 request.go:1] Waited for 1.2s due to client-side throttling`,
		`panic: boom`,
		``,
		`goroutine 1 [running]:`,
		`Error: not a log line`,
	}, "\n")
	errs, warns, stacks := logLevels(out)
	if errs != 2 || warns != 2 || stacks != 2 {
		t.Errorf("errors %d, warns %d, stack traces %d; want 2, 2, 2", errs, warns, stacks)
	}
}

func TestParseAPILimits(t *testing.T) {
	qps, burst, ok := parseAPILimits("--kube-api-qps 300 --kube-api-burst 600")
	if !ok || qps != 300 || burst != 600 {
		t.Errorf("got %v %v %v", qps, burst, ok)
	}
	if _, _, ok := parseAPILimits("unknown"); ok {
		t.Error("parsed limits from \"unknown\"")
	}
}

// rep is a repetition where every workload takes d from the end of its
// cooldown to 0 and w to wake.
func rep(n int, d, w time.Duration) *herdRep {
	r := &herdRep{
		Sleep:      phaseCounts{Ops: map[string]float64{"ok": float64(n)}, DaemonWrites: float64(n), ServerWrites: float64(n), Confirms: int64(n)},
		WakeCount:  phaseCounts{Ops: map[string]float64{"ok": float64(n)}, DaemonWrites: float64(n), ServerWrites: float64(n)},
		LoadAtDrop: 1, LoadAtEnd: 1,
	}
	for range n {
		r.FromEnd = append(r.FromEnd, d)
		r.FromDrop = append(r.FromDrop, herdCooldown+time.Second+d)
		r.Wake.Latency = append(r.Wake.Latency, w)
	}
	return r
}

func TestHerdTargets(t *testing.T) {
	h := &herdResult{N: 1000, QPS: 300, Burst: 600, DefaultAPI: "--kube-api-qps 300 --kube-api-burst 600",
		Args: []string{"--leader-elect=false", "--metrics-address", "127.0.0.1:1", "--prometheus-address", "http://127.0.0.1:2", "--log-level", "warn",
			"--selector", "zeroscaler-bench/set=n1000-k1000", "--default-polling-interval", "2s", "--default-cooldown-period", "10s"}}
	target, beyond := h.herdTarget()
	if want := 1333 * time.Millisecond; beyond.Round(time.Millisecond) != want {
		t.Errorf("beyond the burst %s, want %s", beyond, want)
	}
	if want := 3333 * time.Millisecond; target.Round(time.Millisecond) != want {
		t.Errorf("target %s, want %s", target, want)
	}

	h.Reps = []*herdRep{rep(1000, 100*time.Millisecond, time.Second), rep(1000, 200*time.Millisecond, time.Second), rep(1000, 300*time.Millisecond, time.Second)}
	if m := h.misses(); len(m) != 0 {
		t.Errorf("misses %q, want none", m)
	}
	var md bytes.Buffer
	(&report{Herd: h, Machine: machineInfo{CPUs: 2}}).writeHerd(&md)
	for _, want := range []string{
		"| From the end of each cooldown to 0: p99 | 0.20 s ✅ | 0.10 s / 0.20 s / 0.30 s | ≤ 3.33 s |",
		"2.00 s + (1,000 − 600) / 300 per s = 2.00 s + 1.33 s = 3.33 s",
		"`max_over_time((Q)[10s:1s])`",
		"`--selector zeroscaler-bench/set=n1000-k1000 --default-polling-interval 2s --default-cooldown-period 10s`",
	} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, md.String())
		}
	}
	if strings.Contains(md.String(), "above 4") {
		t.Errorf("report calls a load of 1 busy:\n%s", md.String())
	}

	// One conflict in one repetition, a p99 above the target in two and
	// a busy machine.
	h.Reps[0].Sleep.Ops["conflict"] = 1
	h.Reps[1] = rep(1000, 4*time.Second, time.Second)
	h.Reps[2] = rep(1000, 5*time.Second, time.Second)
	h.Reps[2].LoadAtDrop = 27.8
	misses := strings.Join(h.misses(), "\n")
	for _, want := range []string{"Failed sleeps", "conflicts", "p99 = 4.00 s"} {
		if !strings.Contains(misses, want) {
			t.Errorf("misses lack %q:\n%s", want, misses)
		}
	}
	md.Reset()
	(&report{Herd: h, Machine: machineInfo{CPUs: 2}}).writeHerd(&md)
	if !strings.Contains(md.String(), "above 4 on this 2-core machine") {
		t.Errorf("report does not say the load was high:\n%s", md.String())
	}
	t.Log(md.String())
}

// A herd that does not finish is reported as such, not as fast.
func TestHerdStuck(t *testing.T) {
	h := &herdResult{N: 1000, QPS: 300, Burst: 600, DefaultAPI: "--kube-api-qps 300 --kube-api-burst 600"}
	r := rep(1000, 100*time.Millisecond, time.Second)
	r.Stuck, r.Wake = 20, herdTimes{}
	for i := range 20 {
		r.FromEnd[i], r.FromDrop[i] = never, never
	}
	r.Asleep = []int{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 500, 900, 950, 980}
	h.Reps = []*herdRep{r}
	misses := strings.Join(h.misses(), "\n")
	for _, want := range []string{"Not at 0 300 s after the drop = 20", "p99 = > 300 s"} {
		if !strings.Contains(misses, want) {
			t.Errorf("misses lack %q:\n%s", want, misses)
		}
	}
	if got := r.asleepAt(13); got != 900 {
		t.Errorf("asleepAt(13) = %d, want 900", got)
	}
	if got := r.asleepAt(60); got != 980 {
		t.Errorf("asleepAt(60) = %d, want the last count, 980", got)
	}
	var md bytes.Buffer
	(&report{Herd: h, Machine: machineInfo{CPUs: 2}}).writeHerd(&md)
	if !strings.Contains(md.String(), "Not measured: the herd of sleeps did not finish") {
		t.Errorf("report shows wakes that were not measured:\n%s", md.String())
	}
}
