package localstack

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/api"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	"sigs.k8s.io/yaml"
)

const (
	pollInterval    = 100 * time.Millisecond
	promStopTimeout = 15 * time.Second
	logTailBytes    = 4096
)

// Names of the built-in scrape jobs.
const (
	PrometheusJob = "prometheus"
	ExporterJob   = "exporter"
)

var errRunning = errors.New("the metrics backend is already running")

// ScrapeJob is one static scrape job in Prometheus' configuration.
type ScrapeJob struct {
	// Name is the job label; it must be unique.
	Name string
	// Targets are host:port addresses.
	Targets []string
	// MetricsPath defaults to /metrics.
	MetricsPath string
}

// promServer is the metrics backend's child process: a Prometheus, or
// another store that scrapes with a Prometheus-style configuration. Its
// address, configuration and storage outlive the process, so that it can be
// restarted.
type promServer struct {
	path       string
	backend    Backend
	defaults   bool          // the backend's own global settings (see MetricsOptions.DefaultSettings)
	interval   time.Duration // each job's scrape interval when defaults is set
	addr       string
	url        string
	configPath string
	storageDir string
	logPath    string

	mu     sync.Mutex
	jobs   []ScrapeJob // all jobs, built-in ones first
	cmd    *exec.Cmd
	done   chan struct{} // closed when cmd has exited
	closed bool          // set by shutdown: no more spawns
}

func newPromServer(path string, mo MetricsOptions, dir, exporterAddr string, extra []ScrapeJob) (*promServer, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s dir: %w", mo.Backend, err)
	}
	p := &promServer{
		path:       path,
		backend:    mo.Backend,
		defaults:   mo.DefaultSettings,
		interval:   cmp.Or(mo.ScrapeInterval, defaultSettingsScrapeInterval),
		addr:       loopback(port),
		configPath: filepath.Join(dir, "prometheus.yml"),
		storageDir: filepath.Join(dir, "prometheus-data"),
		logPath:    filepath.Join(dir, "prometheus.log"),
	}
	p.url = "http://" + p.addr
	p.jobs = []ScrapeJob{
		{Name: PrometheusJob, Targets: []string{p.addr}},
		{Name: ExporterJob, Targets: []string{exporterAddr}},
	}
	for _, j := range extra {
		if err := p.checkJob(j); err != nil {
			return nil, err
		}
		p.jobs = append(p.jobs, j)
	}
	if err := p.writeConfig(); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *promServer) api() (v1.API, error) {
	c, err := api.NewClient(api.Config{Address: p.url})
	if err != nil {
		return nil, fmt.Errorf("create prometheus client: %w", err)
	}
	return v1.NewAPI(c), nil
}

func (p *promServer) checkJob(j ScrapeJob) error {
	if j.Name == "" || len(j.Targets) == 0 {
		return fmt.Errorf("scrape job %q: needs a name and targets", j.Name)
	}
	if slices.ContainsFunc(p.jobs, func(o ScrapeJob) bool { return o.Name == j.Name }) {
		return fmt.Errorf("scrape job %q: name already in use", j.Name)
	}
	return nil
}

// writeConfig writes the configuration for p.jobs. The caller holds p.mu or
// has p to itself.
func (p *promServer) writeConfig() error {
	type staticConfig struct {
		Targets []string `json:"targets"`
	}
	type scrapeConfig struct {
		JobName        string         `json:"job_name"`
		ScrapeInterval string         `json:"scrape_interval,omitempty"`
		MetricsPath    string         `json:"metrics_path,omitempty"`
		StaticConfigs  []staticConfig `json:"static_configs"`
	}
	type global struct {
		ScrapeInterval     string `json:"scrape_interval"`
		ScrapeTimeout      string `json:"scrape_timeout"`
		EvaluationInterval string `json:"evaluation_interval,omitempty"`
	}
	cfg := struct {
		Global        *global        `json:"global,omitempty"`
		ScrapeConfigs []scrapeConfig `json:"scrape_configs"`
	}{}
	jobInterval := ""
	switch {
	case p.defaults:
		// No global section: the server's own defaults (Prometheus'
		// evaluation_interval is 1m), and only each job's interval.
		jobInterval = model.Duration(p.interval).String()
	case p.backend == VictoriaMetrics:
		// VictoriaMetrics has no rule evaluation here, and its strict
		// parser refuses Prometheus' evaluation_interval.
		cfg.Global = &global{ScrapeInterval: "1s", ScrapeTimeout: "1s"}
	default:
		cfg.Global = &global{ScrapeInterval: "1s", ScrapeTimeout: "1s", EvaluationInterval: "1s"}
	}
	for _, j := range p.jobs {
		cfg.ScrapeConfigs = append(cfg.ScrapeConfigs, scrapeConfig{
			JobName:        j.Name,
			ScrapeInterval: jobInterval,
			MetricsPath:    j.MetricsPath,
			StaticConfigs:  []staticConfig{{Targets: j.Targets}},
		})
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("encode prometheus config: %w", err)
	}
	// Write and rename, so that a reload never reads half a file.
	tmp := p.configPath + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("write prometheus config: %w", err)
	}
	if err := os.Rename(tmp, p.configPath); err != nil {
		return fmt.Errorf("write prometheus config: %w", err)
	}
	return nil
}

// spawn starts the process without waiting for it to be ready.
func (p *promServer) spawn() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("start prometheus: the stack was stopped")
	}
	if p.cmd != nil {
		return errRunning
	}
	logFile, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open prometheus log: %w", err)
	}
	defer logFile.Close() // the child has its own copy
	cmd := exec.Command(p.path, p.args()...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = childAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start prometheus: %w", err)
	}
	p.cmd = cmd
	p.done = make(chan struct{})
	go func(done chan struct{}) {
		_ = cmd.Wait() // an exit is reported by waitReady or ignored by stop
		close(done)
	}(p.done)
	return nil
}

// args are the command line of the backend's process.
func (p *promServer) args() []string {
	if p.backend == VictoriaMetrics {
		args := []string{
			"-httpListenAddr=" + p.addr,
			"-storageDataPath=" + p.storageDir,
			"-promscrape.config=" + p.configPath,
		}
		if !p.defaults {
			// It answers "now" as of 30s ago by default, so that the
			// last points are complete: a lab setting, like the 1s
			// intervals.
			args = append(args, "-search.latencyOffset=1s")
		}
		return args
	}
	return []string{
		"--config.file=" + p.configPath,
		"--storage.tsdb.path=" + p.storageDir,
		"--web.listen-address=" + p.addr,
		"--web.enable-lifecycle",
	}
}

// waitReady waits until Prometheus answers /-/ready and has a sample
// up{job="exporter"} == 1 scraped after startedAt.
func (p *promServer) waitReady(ctx context.Context, promAPI v1.API, startedAt time.Time) error {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done == nil {
		return errors.New("wait for prometheus: not running")
	}
	var last error
	ready := false
	query := fmt.Sprintf(`up{job=%q}[1m]`, ExporterJob)
	for {
		if !ready {
			last = p.probeReady(ctx)
			ready = last == nil
		}
		if ready {
			last = scrapedSince(ctx, promAPI, query, startedAt)
			if last == nil {
				return nil
			}
		}
		select {
		case <-done:
			return fmt.Errorf("prometheus exited while starting; log ends with:\n%s", p.logTail())
		case <-ctx.Done():
			return fmt.Errorf("wait for prometheus: %w (last: %w); log ends with:\n%s", ctx.Err(), last, p.logTail())
		case <-time.After(pollInterval):
		}
	}
}

func (p *promServer) probeReady(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url+"/-/ready", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/-/ready: %s", resp.Status)
	}
	return nil
}

// scrapedSince reports whether a range query returns a sample equal to 1
// taken at or after since. A range selector returns raw samples with their
// scrape timestamps, so data from before a restart does not count.
func scrapedSince(ctx context.Context, promAPI v1.API, query string, since time.Time) error {
	val, _, _, err := promAPI.Query(ctx, query, time.Now())
	if err != nil {
		return err
	}
	m, ok := val.(model.Matrix)
	if !ok {
		return fmt.Errorf("query %s: got %s, want matrix", query, val.Type())
	}
	cutoff := model.TimeFromUnixNano(since.UnixNano())
	for _, stream := range m {
		for _, s := range stream.Values {
			if s.Value == 1 && !s.Timestamp.Before(cutoff) {
				return nil
			}
		}
	}
	return fmt.Errorf("query %s: no sample equal to 1 since start", query)
}

// shutdown stops the process for good.
func (p *promServer) shutdown() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	return p.stopLocked()
}

// stop ends the process: SIGTERM, then SIGKILL after promStopTimeout.
func (p *promServer) stop() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopLocked()
}

func (p *promServer) stopLocked() error {
	if p.cmd == nil {
		return nil
	}
	cmd, done := p.cmd, p.done
	p.cmd, p.done = nil, nil
	select {
	case <-done:
		return nil // it had exited already
	default:
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop prometheus: %w", err)
	}
	select {
	case <-done:
		return nil
	case <-time.After(promStopTimeout):
	}
	_ = cmd.Process.Kill()
	<-done
	return fmt.Errorf("stop prometheus: killed after %v without exiting", promStopTimeout)
}

// reload makes a running Prometheus read its configuration again.
func (p *promServer) reload(ctx context.Context) error {
	if p.cmd == nil {
		return nil // read at the next start
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url+"/-/reload", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("reload prometheus: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, logTailBytes))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("reload prometheus: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	return nil
}

func (p *promServer) logTail() string {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(read log: %v)", err)
	}
	if len(data) > logTailBytes {
		data = data[len(data)-logTailBytes:]
	}
	return string(data)
}

// AddScrapeJob adds a scrape job, for example the daemon's own /metrics
// address, and reloads the backend if it is running. It does not wait for
// the first scrape: wait for up{job="NAME"} with WaitForValue.
func (m *MetricsServer) AddScrapeJob(ctx context.Context, job ScrapeJob) error {
	p := m.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.checkJob(job); err != nil {
		return err
	}
	p.jobs = append(p.jobs, job)
	if err := p.writeConfig(); err != nil {
		p.jobs = p.jobs[:len(p.jobs)-1]
		return err
	}
	return p.reload(ctx)
}

// RemoveScrapeJob removes a job added by Options.ScrapeJobs or AddScrapeJob
// and reloads the backend if it is running. Removing an unknown job is not
// an error.
func (m *MetricsServer) RemoveScrapeJob(ctx context.Context, name string) error {
	if name == PrometheusJob || name == ExporterJob {
		return fmt.Errorf("scrape job %q is built in", name)
	}
	p := m.p
	p.mu.Lock()
	defer p.mu.Unlock()
	i := slices.IndexFunc(p.jobs, func(j ScrapeJob) bool { return j.Name == name })
	if i < 0 {
		return nil
	}
	p.jobs = slices.Delete(p.jobs, i, i+1)
	if err := p.writeConfig(); err != nil {
		return err
	}
	return p.reload(ctx)
}

// WaitForValue polls the backend until the instant query promql returns a
// single sample (or a scalar) equal to want, or ctx ends. Query errors, such
// as during an outage, are retried. The error on timeout tells what the
// query returned last. The query is answered as the daemon's would be, as
// of the backend's "now" (VictoriaMetrics' -search.latencyOffset included).
func (m *MetricsServer) WaitForValue(ctx context.Context, promql string, want float64) error {
	return waitForValue(ctx, m.API, promql, want)
}

// waitForValue polls a until promql returns one value equal to want (NaN
// equals NaN).
func waitForValue(ctx context.Context, a v1.API, promql string, want float64) error {
	var last string
	for {
		got, err := queryValue(ctx, a, promql)
		switch {
		case err != nil:
			last = err.Error()
		case got == want || math.IsNaN(got) && math.IsNaN(want):
			return nil
		default:
			last = fmt.Sprintf("value %v", got)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s == %v: %w (last: %s)", promql, want, ctx.Err(), last)
		case <-time.After(pollInterval):
		}
	}
}

// queryValue runs an instant query, at the server's now, that must return
// exactly one value.
func queryValue(ctx context.Context, a v1.API, promql string) (float64, error) {
	val, _, _, err := a.Query(ctx, promql, time.Time{})
	if err != nil {
		return 0, err
	}
	switch v := val.(type) {
	case model.Vector:
		if len(v) != 1 {
			return 0, fmt.Errorf("got %d samples, want 1: %v", len(v), v)
		}
		return float64(v[0].Value), nil
	case *model.Scalar:
		return float64(v.Value), nil
	default:
		return 0, fmt.Errorf("got %s, want vector or scalar", val.Type())
	}
}
