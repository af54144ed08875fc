package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"k8s.io/client-go/kubernetes"

	"github.com/zeroscaler/zeroscaler/test/localstack"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat; it
// is 100 on every Linux architecture Go supports.
const clockTicks = 100

// daemon is one run of the zeroscaler binary.
type daemon struct {
	*localstack.Daemon
	Args       []string
	Started    time.Time
	metricsURL string
	http       *http.Client
}

// startDaemon runs the binary with the benchmark's fixed flags plus extra.
func (b *bench) startDaemon(name string, extra ...string) (*daemon, error) {
	port, err := localstack.FreePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	args := append([]string{
		"--kubeconfig", b.stack.KubeconfigPath,
		"--leader-elect=false",
		"--metrics-address", addr,
		"--prometheus-address", b.standin.URL,
		"--log-level", "warn",
	}, extra...)
	logPath := filepath.Join(b.logDir, name+".log")
	started := time.Now()
	d, err := localstack.StartDaemon(b.binary, logPath, args...)
	if err != nil {
		return nil, err
	}
	return &daemon{
		Daemon:     d,
		Args:       args[2:], // without the kubeconfig path, for the report
		Started:    started,
		metricsURL: "http://" + addr,
		http:       &http.Client{Timeout: 10 * time.Second},
	}, nil
}

// stop ends the daemon and says so if it had died earlier or would not stop.
func (d *daemon) stop() error {
	select {
	case <-d.Done():
		return fmt.Errorf("daemon exited early; log %s:\n%s", d.LogPath, tail(d.Output(), 2000))
	default:
	}
	if _, err := d.Stop(20 * time.Second); err != nil {
		return err
	}
	return nil
}

// alive returns an error if the daemon has exited.
func (d *daemon) alive() error {
	select {
	case <-d.Done():
		return fmt.Errorf("daemon exited; log %s:\n%s", d.LogPath, tail(d.Output(), 2000))
	default:
		return nil
	}
}

func (d *daemon) ready(ctx context.Context) bool {
	_, err := d.fetch(ctx, d.http, "/readyz")
	return err == nil
}

func (d *daemon) metrics(ctx context.Context) (metricFamilies, error) {
	b, err := d.fetch(ctx, d.http, "/metrics")
	if err != nil {
		return nil, fmt.Errorf("scrape daemon: %w", err)
	}
	return parseMetrics(bytes.NewReader(b))
}

// profile saves one of the daemon's pprof profiles (it runs with
// --profiling) to path.
func (d *daemon) profile(ctx context.Context, which, path string) error {
	// A CPU profile takes as long as it says; the scrape client's timeout
	// is too short for it.
	b, err := d.fetch(ctx, http.DefaultClient, "/debug/pprof/"+which)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// fetch GETs path from the daemon's metrics server and returns the body of
// a 200 answer.
func (d *daemon) fetch(ctx context.Context, client *http.Client, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.metricsURL+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return b, err
}

// procSample is what /proc tells about the daemon at one moment.
type procSample struct {
	at       time.Time
	cpuSecs  float64 // utime + stime
	rssBytes float64
}

func (d *daemon) proc() (procSample, error) {
	pid := d.PID()
	at := time.Now()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procSample{}, fmt.Errorf("read daemon stat: %w", err)
	}
	// PID (COMM) STATE PPID ...: utime and stime are fields 14 and 15,
	// i.e. the 12th and 13th after COMM.
	end := bytes.LastIndexByte(stat, ')')
	fields := strings.Fields(string(stat[end+1:]))
	if len(fields) < 13 {
		return procSample{}, fmt.Errorf("parse daemon stat %q", stat)
	}
	utime, err1 := strconv.ParseFloat(fields[11], 64)
	stime, err2 := strconv.ParseFloat(fields[12], 64)
	if err1 != nil || err2 != nil {
		return procSample{}, fmt.Errorf("parse daemon stat %q", stat)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procSample{}, fmt.Errorf("read daemon status: %w", err)
	}
	var rss float64
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			if err != nil {
				return procSample{}, fmt.Errorf("parse VmRSS %q", v)
			}
			rss = kb * 1024
		}
	}
	return procSample{at: at, cpuSecs: (utime + stime) / clockTicks, rssBytes: rss}, nil
}

// metricFamilies is a parsed /metrics page.
type metricFamilies map[string]*dto.MetricFamily

func parseMetrics(r io.Reader) (metricFamilies, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	return mfs, nil
}

// sum adds the values of a counter, gauge or untyped metric over the series
// whose labels pass keep (nil keeps all).
func (m metricFamilies) sum(name string, keep func(labels map[string]string) bool) float64 {
	mf, ok := m[name]
	if !ok {
		return 0
	}
	var total float64
	for _, s := range mf.GetMetric() {
		if keep != nil {
			labels := map[string]string{}
			for _, lp := range s.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if !keep(labels) {
				continue
			}
		}
		switch {
		case s.Counter != nil:
			total += s.GetCounter().GetValue()
		case s.Gauge != nil:
			total += s.GetGauge().GetValue()
		case s.Untyped != nil:
			total += s.GetUntyped().GetValue()
		}
	}
	return total
}

// apiserverWrites reads the API server's own count of write requests on
// Deployments and StatefulSets (any subresource, any client).
func apiserverWrites(ctx context.Context, cs kubernetes.Interface) (float64, error) {
	raw, err := scrapeAPIServer(ctx, cs)
	if err != nil {
		return 0, err
	}
	// Parse only the family needed: the whole page is megabytes.
	var page bytes.Buffer
	for line := range bytes.Lines(raw) {
		if bytes.HasPrefix(line, []byte("apiserver_request_total")) ||
			bytes.HasPrefix(line, []byte("# TYPE apiserver_request_total ")) {
			page.Write(line)
		}
	}
	mfs, err := parseMetrics(&page)
	if err != nil {
		return 0, err
	}
	return mfs.sum("apiserver_request_total", func(l map[string]string) bool {
		switch l["verb"] {
		case "POST", "PUT", "PATCH", "DELETE", "APPLY":
		default:
			return false
		}
		return l["group"] == "apps" && (l["resource"] == "deployments" || l["resource"] == "statefulsets")
	}), nil
}

func scrapeAPIServer(ctx context.Context, cs kubernetes.Interface) ([]byte, error) {
	raw, err := cs.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("scrape kube-apiserver: %w", err)
	}
	return raw, nil
}

// apiserverPatchTime reads the sum and count of the API server's
// apiserver_request_duration_seconds for PATCH on deployments: the time it
// took to answer them, from its side.
func apiserverPatchTime(ctx context.Context, cs kubernetes.Interface) (sum, count float64, err error) {
	raw, err := scrapeAPIServer(ctx, cs)
	if err != nil {
		return 0, 0, err
	}
	for line := range bytes.Lines(raw) {
		var total *float64
		switch {
		case bytes.HasPrefix(line, []byte("apiserver_request_duration_seconds_sum{")):
			total = &sum
		case bytes.HasPrefix(line, []byte("apiserver_request_duration_seconds_count{")):
			total = &count
		default:
			continue
		}
		labels, value, ok := bytes.Cut(line, []byte("} "))
		if !ok || !bytes.Contains(labels, []byte(`verb="PATCH"`)) || !bytes.Contains(labels, []byte(`resource="deployments"`)) {
			continue
		}
		v, err := strconv.ParseFloat(string(bytes.TrimSpace(value)), 64)
		if err != nil {
			return 0, 0, fmt.Errorf("parse %q: %w", line, err)
		}
		*total += v
	}
	return sum, count, nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}
