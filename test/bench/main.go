// Command bench measures zeroscaler at scale on a real local control plane:
// it creates N annotated Deployments asking K distinct questions, answers
// the daemon's queries from a counting Prometheus stand-in, runs the real
// daemon binary, and writes what it measured (BENCHMARKS.md).
//
//	go run ./test/bench -out BENCHMARKS.md   # what make bench runs
//	go run ./test/bench -quick               # N = 1000 only
//	go run ./test/bench -only herd -out BENCHMARKS.md  # one part, spliced in
//	go run ./test/bench -only groups -out BENCHMARKS.md  # 10,000 in groups of 10
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr/funcr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/zeroscaler/zeroscaler/test/localstack"
)

type options struct {
	out      string
	quick    bool
	runs     int
	singles  int
	keepLogs bool

	// For development.
	daemon string // prebuilt daemon binary
	sets   string // N:K,...
	fast   bool   // 5 s polling runs
	wake   bool
	cache  bool
	herd   bool
	steady bool
	groups bool
	// only names the parts to measure (partNames), overriding the
	// booleans above; with out, only their sections of it are replaced.
	only string
	// profile is a folder for the daemons' pprof profiles.
	profile string
}

func main() {
	var o options
	flag.StringVar(&o.out, "out", "", "write the report to this file as well, e.g. BENCHMARKS.md")
	flag.BoolVar(&o.quick, "quick", false, "N = 1000 only (for development)")
	flag.IntVar(&o.runs, "runs", 3, "measurement windows per daemon run; medians are taken over them")
	flag.IntVar(&o.singles, "singles", 20, "single-workload wakes per wake run")
	flag.BoolVar(&o.keepLogs, "keep-logs", false, "keep the daemon logs (their folder is printed)")
	flag.StringVar(&o.daemon, "daemon", "", "run this daemon binary instead of building one (development)")
	flag.StringVar(&o.sets, "sets", "", "N:K pairs to measure, e.g. 1000:1000,1000:10 (development; default: all, or N = 1000 with -quick)")
	flag.BoolVar(&o.fast, "fast", true, "also measure at 5 s polling")
	flag.BoolVar(&o.wake, "wake", true, "measure wake latency")
	flag.BoolVar(&o.cache, "cache", true, "measure the informer cache in-process")
	flag.BoolVar(&o.herd, "herd", true, "measure herds of sleeps and wakes at default API limits")
	flag.BoolVar(&o.groups, "groups", true, "measure N = 10,000 (1,000 with -quick) in groups of 10 beside lone workloads")
	flag.StringVar(&o.only, "only", "", "measure only these parts, comma-separated: "+strings.Join(partNames, ", ")+"; with -out, replace only their sections of the file")
	flag.StringVar(&o.profile, "profile", "", "save each steady daemon run's CPU profile (first window) and heap profile to this folder (development)")
	flag.Parse()
	sets, err := parseSets(o.sets, o.quick)
	if err != nil || o.runs < 1 || o.singles < 1 {
		fmt.Fprintln(os.Stderr, "bench: -runs and -singles must be at least 1, -sets a list of N:K")
		os.Exit(2)
	}
	o.steady = true
	if err := o.selectParts(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}

	// envtest logs why a start failed, and nothing else worth reading.
	ctrllog.SetLogger(funcr.New(func(prefix, args string) {
		fmt.Fprintln(os.Stderr, "envtest:", prefix, args)
	}, funcr.Options{Verbosity: -1}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, o, sets)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// partNames are the parts -only can select.
var partNames = []string{"steady", "groups", "wake", "herd", "cache"}

// selectParts applies -only.
func (o *options) selectParts() error {
	if o.only == "" {
		return nil
	}
	parts := map[string]*bool{"steady": &o.steady, "groups": &o.groups, "wake": &o.wake, "herd": &o.herd, "cache": &o.cache}
	for _, p := range parts {
		*p = false
	}
	for name := range strings.SplitSeq(o.only, ",") {
		p, ok := parts[strings.TrimSpace(name)]
		if !ok {
			return fmt.Errorf("-only: unknown part %q (want %s)", name, strings.Join(partNames, ", "))
		}
		*p = true
	}
	return nil
}

// bench holds what every measurement uses.
type bench struct {
	stack   *localstack.Stack
	cs      kubernetes.Interface
	standin *standin
	binary  string
	logDir  string
	// profileDir, if set, receives the daemons' pprof profiles.
	profileDir string
	began      time.Time
	// idleGoroutines is the daemon's goroutine count with no workload.
	idleGoroutines float64
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(b.began).Seconds(), fmt.Sprintf(format, args...))
}

func parseSets(list string, quick bool) ([]set, error) {
	if list == "" {
		list = "1000:1000,1000:10,10000:10000,10000:10"
		if quick {
			list = "1000:1000,1000:10"
		}
	}
	var sets []set
	for item := range strings.SplitSeq(list, ",") {
		var s set
		if _, err := fmt.Sscanf(item, "%d:%d", &s.N, &s.K); err != nil || s.N < 1 || s.K < 1 || s.K > s.N {
			return nil, fmt.Errorf("bad set %q", item)
		}
		sets = append(sets, s)
	}
	return sets, nil
}

func run(ctx context.Context, o options, sets []set) (err error) {
	b := &bench{began: time.Now(), profileDir: o.profile}
	rep := &report{Runs: o.runs, Quick: o.quick, Machine: machine()}

	if b.logDir, err = os.MkdirTemp("", "zeroscaler-bench-"); err != nil {
		return err
	}
	defer func() {
		if o.keepLogs || err != nil {
			fmt.Fprintln(os.Stderr, "daemon logs kept in", b.logDir)
			return
		}
		os.RemoveAll(b.logDir)
	}()

	rep.Machine.Daemon = o.daemon
	if b.binary = o.daemon; b.binary == "" {
		rep.Machine.Daemon = sourceState()
		b.logf("building the daemon from %s", rep.Machine.Daemon)
		if b.binary, err = localstack.BuildDaemon(b.logDir); err != nil {
			return err
		}
	}

	if o.cache {
		b.logf("measuring the informer cache in-process (5000 realistic Deployments, fake clientset)")
		if rep.Cache, err = measureCache(ctx, 5000, o.runs); err != nil {
			return err
		}
	}

	if b.standin, err = startStandin(activeValue); err != nil {
		return err
	}
	defer func() {
		if closeErr := b.standin.close(); err == nil {
			err = closeErr
		}
	}()

	if b.stack, err = b.startStack(ctx); err != nil {
		return err
	}
	defer func() {
		b.logf("stopping the local stack")
		if stopErr := b.stack.Stop(); err == nil {
			err = stopErr
		}
	}()
	cfg := rest.CopyConfig(b.stack.RESTConfig)
	cfg.QPS, cfg.Burst = 2000, 4000
	if b.cs, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	v, err := b.cs.Discovery().ServerVersion()
	if err != nil {
		return fmt.Errorf("read server version: %w", err)
	}
	rep.Machine.Kubernetes = v.GitVersion

	if !o.steady {
		sets = nil
	}
	if o.steady || o.groups {
		b.logf("daemon with no workloads")
		rss, heap, goroutines, err := b.measureIdle(ctx, 5)
		if err != nil {
			return err
		}
		rep.IdleRSS, rep.IdleHeap, b.idleGoroutines = median(rss), median(heap), slices.Max(goroutines)
		b.logf("  RSS %s, heap %s", mib(rep.IdleRSS), mib(rep.IdleHeap))
	}

	for _, s := range sets {
		took, err := s.create(ctx, b.cs)
		if err != nil {
			return err
		}
		b.logf("created %d Deployments (%s) in %s", s.N, s.name(), secs(took))
		r := &result{Set: s}
		if r.Slow, err = b.measureSteady(ctx, s, 30*time.Second, o.runs); err != nil {
			return err
		}
		if o.fast {
			if r.Fast, err = b.measureSteady(ctx, s, 5*time.Second, o.runs); err != nil {
				return err
			}
		}
		rep.Results = append(rep.Results, r)
	}

	if o.groups {
		n := 10000
		if o.quick {
			n = 1000
		}
		b.logf("N = %d in groups of %d beside lone workloads, 30 s polling", n, groupSize)
		if rep.Groups, err = b.measureGroups(ctx, n, rep.Results, o.runs); err != nil {
			return err
		}
	}
	if o.wake {
		if err := b.wakes(ctx, rep, o.singles); err != nil {
			return err
		}
	}
	if o.herd {
		b.logf("herds of sleeps and wakes at default API limits, %d repetitions", o.runs)
		if rep.Herd, err = b.measureHerd(ctx, o.runs); err != nil {
			return err
		}
	}

	rep.Took = time.Since(b.began)
	var md bytes.Buffer
	rep.write(&md)
	fmt.Print(md.String())
	if o.out == "" {
		return nil
	}
	out := md.Bytes()
	if o.only != "" {
		old, err := os.ReadFile(o.out)
		if err != nil {
			return fmt.Errorf("-only with -out replaces sections of an existing file: %w", err)
		}
		note := fmt.Sprintf("_This section was measured on its own by `go run ./test/bench -only %s` in %s, zeroscaler built from %s, kube-apiserver %s; the rest of the file comes from an earlier run._",
			o.only, rep.Took.Round(time.Second), rep.Machine.Daemon, rep.Machine.Kubernetes)
		out = splice(old, out, note)
	}
	if err := os.WriteFile(o.out, out, 0o644); err != nil {
		return err
	}
	b.logf("wrote %s", o.out)
	return nil
}

// startStack starts the local stack, trying again if the control plane
// does not come up: on a busy machine kube-apiserver can miss envtest's
// start timeout.
func (b *bench) startStack(ctx context.Context) (*localstack.Stack, error) {
	const attempts = 3
	for i := 1; ; i++ {
		b.logf("starting the local stack")
		startCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
		s, err := localstack.Start(startCtx, localstack.Options{})
		cancel()
		if err == nil || i == attempts || ctx.Err() != nil {
			return s, err
		}
		b.logf("  %v; trying again", err)
	}
}

// wakes measures wake latency on N = 1000 with one question per workload,
// with generous and with default API client limits.
func (b *bench) wakes(ctx context.Context, rep *report, singles int) error {
	s := set{N: 1000, K: 1000}
	if _, err := s.create(ctx, b.cs); err != nil {
		return err
	}
	var err error
	b.logf("API server write capacity: scaling %d Deployments up and down with %d workers", s.N, createWorkers)
	if rep.ScaleWrites, err = b.scaleCapacity(ctx, s); err != nil {
		return err
	}
	b.logf("  %s for %d scale writes (%.0f per second)", secs(rep.ScaleWrites), 2*s.N, float64(2*s.N)/rep.ScaleWrites.Seconds())
	for _, c := range []struct {
		label string
		flags []string
	}{
		{"generous", []string{"--kube-api-qps", "1000", "--kube-api-burst", "2000"}},
		{"defaults", nil},
	} {
		b.logf("wake latency, %s API limits", c.label)
		w, err := b.measureWake(ctx, c.label, s, singles, c.flags...)
		if err != nil {
			return err
		}
		rep.Wakes = append(rep.Wakes, w)
	}
	return nil
}

// machineInfo describes where the benchmark ran.
type machineInfo struct {
	CPUs       int
	CPUModel   string
	MemTotal   string
	Go         string
	Kubernetes string
	Daemon     string // what the daemon was built from
}

// sourceState names the commit the daemon is built from, and whether the
// work tree differs from it.
func sourceState() string {
	root, err := localstack.RepoRoot()
	if err != nil {
		return "the work tree"
	}
	out, err := exec.Command("git", "-C", root, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "the work tree"
	}
	state := "commit " + strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "-C", root, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(bytes.TrimSpace(st)) > 0 {
		state += " with uncommitted changes"
	}
	return state
}

func machine() machineInfo {
	m := machineInfo{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				var kb float64
				if _, err := fmt.Sscanf(strings.TrimSpace(v), "%f", &kb); err == nil {
					m.MemTotal = fmt.Sprintf("%.1f GiB", kb/(1<<20))
				}
			}
		}
	}
	return m
}
