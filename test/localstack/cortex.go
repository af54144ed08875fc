package localstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/api"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"sigs.k8s.io/yaml"
)

// TenantHeader is the header that names a Cortex tenant.
const TenantHeader = "X-Scope-OrgID"

// CortexWriterJob is the job under which the writer Prometheus scrapes
// itself; every tenant gets its up series, for the daemon's health query.
const CortexWriterJob = "writer"

// CortexOptions configures StartCortex.
type CortexOptions struct {
	// Tenants each get their own Exporter, whose series a Prometheus
	// remote-writes into Cortex under that tenant (X-Scope-OrgID) alone.
	// Names are Cortex tenant IDs, such as tenant-a.
	Tenants []string
	// BinDir holds cortex; empty means $KUBEBUILDER_ASSETS, else the
	// repository's bin/ (make tools builds it there).
	BinDir string
	// PrometheusPath is the writer's binary; empty means BinDir/prometheus
	// when that exists, else prometheus on PATH.
	PrometheusPath string
}

// Cortex is a running single-process Cortex (-target=all, blocks on local
// disk, every port on 127.0.0.1) with authentication on, so that every
// request names its tenant, and a Prometheus that remote-writes each
// tenant's exporter into it with that tenant's header.
type Cortex struct {
	// URL is Cortex's base URL; its Prometheus API, what zeroscaler asks,
	// is PrometheusURL.
	URL           string
	PrometheusURL string
	// Exporters holds each tenant's exporter, scraped as job "exporter-"
	// and the tenant's name; its series reach that tenant only.
	Exporters map[string]*Exporter
	// Dir holds the configuration, data and logs; Stop removes it.
	Dir string

	cortex, writer *child
	// pushes holds each tenant's push proxy (see startPushProxy).
	pushes   map[string]*pushProxy
	stopOnce sync.Once
	stopErr  error
}

// StartCortex starts Cortex and its writer and returns once every tenant's
// exporter can be queried in Cortex. On error, what was started is stopped.
func StartCortex(ctx context.Context, o CortexOptions) (_ *Cortex, err error) {
	if len(o.Tenants) == 0 {
		return nil, errors.New("start cortex: name at least one tenant")
	}
	binDir, err := resolveBinDir(o.BinDir)
	if err != nil {
		return nil, err
	}
	cortexPath := filepath.Join(binDir, "cortex")
	if !isExecutable(cortexPath) {
		return nil, fmt.Errorf("find cortex in %s (run make tools)", binDir)
	}
	promPath, err := resolvePrometheus(o.PrometheusPath, binDir)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "zeroscaler-cortex-")
	if err != nil {
		return nil, fmt.Errorf("create temp dir: %w", err)
	}
	c := &Cortex{Dir: dir, Exporters: map[string]*Exporter{}, pushes: map[string]*pushProxy{}}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Stop())
		}
	}()
	for _, tenant := range o.Tenants {
		if c.Exporters[tenant], err = startExporter(); err != nil {
			return nil, err
		}
	}

	// Three distinct ports: FreePort, called three times, once gave the
	// same port twice (Cortex then failed with "address already in use").
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	httpPort, grpcPort, writerPort := ports[0], ports[1], ports[2]
	c.URL = "http://" + loopback(httpPort)
	c.PrometheusURL = c.URL + "/prometheus"
	// Cortex lists the local rule and alertmanager stores at start.
	for _, sub := range []string{"rules", "ruler", "alerts"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, fmt.Errorf("create cortex dir: %w", err)
		}
	}
	cfg := filepath.Join(dir, "cortex.yaml")
	if err := writeYAML(cfg, cortexConfig(dir, httpPort, grpcPort)); err != nil {
		return nil, err
	}
	if c.cortex, err = startChild(cortexPath, filepath.Join(dir, "cortex.log"), "-config.file="+cfg, "-target=all"); err != nil {
		return nil, err
	}
	for _, tenant := range o.Tenants {
		if c.pushes[tenant], err = startPushProxy(c.URL, tenant); err != nil {
			return nil, err
		}
	}
	writerCfg := filepath.Join(dir, "writer.yaml")
	if err := writeYAML(writerCfg, writerConfig(loopback(writerPort), o.Tenants, c.Exporters, c.pushes)); err != nil {
		return nil, err
	}
	if c.writer, err = startChild(promPath, filepath.Join(dir, "writer.log"),
		"--config.file="+writerCfg,
		"--storage.tsdb.path="+filepath.Join(dir, "writer-data"),
		"--web.listen-address="+loopback(writerPort),
		// Stop within seconds even while Cortex refuses writes.
		"--storage.remote.flush-deadline=1s",
	); err != nil {
		return nil, err
	}
	for _, tenant := range o.Tenants {
		if err := c.waitScraped(ctx, tenant); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// cortexConfig is Cortex's single-process configuration with blocks on
// local disk, after Cortex's own docs/configuration example, with
// authentication on and every listener on 127.0.0.1.
func cortexConfig(dir string, httpPort, grpcPort int) map[string]any {
	inmemory := map[string]any{"kvstore": map[string]any{"store": "inmemory"}}
	sub := func(name string) string { return filepath.Join(dir, name) }
	return map[string]any{
		"auth_enabled": true,
		"server": map[string]any{
			"http_listen_address": "127.0.0.1",
			"http_listen_port":    httpPort,
			"grpc_listen_address": "127.0.0.1",
			"grpc_listen_port":    grpcPort,
			"log_level":           "warn",
		},
		"distributor": map[string]any{
			"shard_by_all_labels": true,
			"pool":                map[string]any{"health_check_ingesters": true},
			"ring":                map[string]any{"kvstore": map[string]any{"store": "inmemory"}, "instance_interface_names": []string{"lo"}},
		},
		"ingester": map[string]any{
			"lifecycler": map[string]any{
				"address":            "127.0.0.1",
				"min_ready_duration": "0s",
				"final_sleep":        "0s",
				"num_tokens":         512,
				"ring":               map[string]any{"kvstore": map[string]any{"store": "inmemory"}, "replication_factor": 1},
			},
		},
		"blocks_storage": map[string]any{
			"backend":      "filesystem",
			"tsdb":         map[string]any{"dir": sub("tsdb")},
			"bucket_store": map[string]any{"sync_dir": sub("tsdb-sync")},
			"filesystem":   map[string]any{"dir": sub("blocks")},
		},
		"compactor": map[string]any{
			"data_dir":      sub("compactor"),
			"sharding_ring": inmemory,
		},
		"store_gateway":   map[string]any{"sharding_ring": inmemory},
		"frontend_worker": map[string]any{"match_max_concurrent": true},
		"querier":         map[string]any{"active_query_tracker_dir": sub("active-query-tracker")},
		"ruler":           map[string]any{"ring": inmemory, "rule_path": sub("ruler")},
		"ruler_storage":   map[string]any{"backend": "local", "local": map[string]any{"directory": sub("rules")}},
		"alertmanager": map[string]any{
			"external_url": "http://127.0.0.1/alertmanager",
			// No gossip cluster: its default listens on 0.0.0.0:9094.
			"cluster":       map[string]any{"listen_address": ""},
			"sharding_ring": inmemory,
		},
		"alertmanager_storage": map[string]any{"backend": "local", "local": map[string]any{"path": sub("alerts")}},
	}
}

// writerConfig makes a Prometheus scrape itself and each tenant's
// exporter every second, and remote-write to Cortex one entry per tenant:
// that tenant's header, its exporter's job and the writer's own up series.
func writerConfig(self string, tenants []string, exporters map[string]*Exporter, pushes map[string]*pushProxy) map[string]any {
	scrape := []any{map[string]any{"job_name": CortexWriterJob, "static_configs": []any{map[string]any{"targets": []string{self}}}}}
	var remote []any
	for _, tenant := range tenants {
		job := CortexExporterJob(tenant)
		scrape = append(scrape, map[string]any{"job_name": job, "static_configs": []any{map[string]any{"targets": []string{exporters[tenant].Addr}}}})
		remote = append(remote, map[string]any{
			"url":     pushes[tenant].url + "/api/v1/push",
			"name":    tenant,
			"headers": map[string]string{TenantHeader: tenant},
			"write_relabel_configs": []any{map[string]any{
				"source_labels": []string{"job"},
				"regex":         CortexWriterJob + "|" + job,
				"action":        "keep",
			}},
			"queue_config": map[string]any{"batch_send_deadline": "500ms", "min_backoff": "100ms", "max_backoff": "1s"},
		})
	}
	return map[string]any{
		"global":         map[string]any{"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
		"scrape_configs": scrape,
		"remote_write":   remote,
	}
}

// CortexExporterJob is the job that scrapes a tenant's exporter.
func CortexExporterJob(tenant string) string { return "exporter-" + tenant }

func writeYAML(path string, v any) error {
	data, err := yaml.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", filepath.Base(path), err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(path), err)
	}
	return nil
}

// API queries Cortex as tenant.
func (c *Cortex) API(tenant string) (v1.API, error) {
	client, err := api.NewClient(api.Config{Address: c.PrometheusURL, RoundTripper: tenantTransport(tenant)})
	if err != nil {
		return nil, fmt.Errorf("create cortex client: %w", err)
	}
	return v1.NewAPI(client), nil
}

type tenantTransport string

func (t tenantTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(TenantHeader, string(t))
	return http.DefaultTransport.RoundTrip(r)
}

// WaitForValue polls Cortex, as tenant, until the instant query promql
// returns one sample (or a scalar) equal to want, or ctx ends.
func (c *Cortex) WaitForValue(ctx context.Context, tenant, promql string, want float64) error {
	a, err := c.API(tenant)
	if err != nil {
		return err
	}
	return waitForValue(ctx, a, promql, want)
}

// SetAndWait sets a series on tenant's exporter and waits until Cortex
// answers it, as that tenant, with the value.
func (c *Cortex) SetAndWait(ctx context.Context, tenant, series string, v float64) error {
	e, ok := c.Exporters[tenant]
	if !ok {
		return fmt.Errorf("cortex has no tenant %q", tenant)
	}
	e.Set(series, v)
	return c.WaitForValue(ctx, tenant, e.Query(series), v)
}

// waitScraped waits until Cortex holds, for tenant, a sample of the
// writer's up series: Cortex is ready and the tenant's writes arrive.
func (c *Cortex) waitScraped(ctx context.Context, tenant string) error {
	// Give up at once if either process exits.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-c.cortex.done:
			cancel(errors.New("cortex exited"))
		case <-c.writer.done:
			cancel(errors.New("the writer exited"))
		case <-ctx.Done():
		}
	}()
	err := c.WaitForValue(ctx, tenant, fmt.Sprintf(`max(up{job=%q})`, CortexWriterJob), 1)
	if cause := context.Cause(ctx); err != nil && cause != nil && !errors.Is(cause, context.Canceled) && !errors.Is(cause, context.DeadlineExceeded) {
		err = fmt.Errorf("%w: %w", cause, err)
	}
	if err != nil {
		return fmt.Errorf("wait for cortex (tenant %s): %w; cortex log ends with:\n%s\nwriter log ends with:\n%s", tenant, err, c.cortex.logTail(), c.writer.logTail())
	}
	return nil
}

// Stop stops the writer, Cortex and the exporters, and removes Dir. It is
// safe to call more than once and on a Cortex whose start failed.
func (c *Cortex) Stop() error {
	c.stopOnce.Do(func() {
		var errs []error
		for _, ch := range []*child{c.writer, c.cortex} {
			if ch != nil {
				errs = append(errs, ch.stop(promStopTimeout))
			}
		}
		for _, p := range c.pushes {
			if p != nil {
				errs = append(errs, p.close())
			}
		}
		for _, e := range c.Exporters {
			if e != nil {
				errs = append(errs, e.close())
			}
		}
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove cortex dir: %w", err))
		}
		c.stopErr = errors.Join(errs...)
	})
	return c.stopErr
}

// child is one long-running process with its log in a file.
type child struct {
	cmd     *exec.Cmd
	done    chan struct{}
	logPath string
}

// startChild starts path in dir, the folder of logPath, so that relative
// paths in a default setting (Cortex's alertmanager data/, say) land there.
func startChild(path, logPath string, args ...string) (*child, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	defer logFile.Close() // the child has its own copy
	cmd := exec.Command(path, args...)
	cmd.Dir = filepath.Dir(logPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = childAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", filepath.Base(path), err)
	}
	ch := &child{cmd: cmd, done: make(chan struct{}), logPath: logPath}
	go func() {
		_ = cmd.Wait()
		close(ch.done)
	}()
	return ch, nil
}

// stop sends SIGTERM, then SIGKILL after timeout.
func (ch *child) stop(timeout time.Duration) error {
	select {
	case <-ch.done:
		return nil
	default:
	}
	name := filepath.Base(ch.cmd.Path)
	if err := ch.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop %s: %w", name, err)
	}
	select {
	case <-ch.done:
		return nil
	case <-time.After(timeout):
	}
	_ = ch.cmd.Process.Kill()
	<-ch.done
	return fmt.Errorf("stop %s: killed after %v without exiting", name, timeout)
}

func (ch *child) logTail() string {
	if ch == nil {
		return "(not started)"
	}
	f, err := os.Open(ch.logPath)
	if err != nil {
		return fmt.Sprintf("(read log: %v)", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > logTailBytes {
		_, _ = f.Seek(-logTailBytes, io.SeekEnd)
	}
	data, _ := io.ReadAll(f)
	return string(data)
}

// pushProxy sets one tenant's header on every remote write it passes to
// Cortex. The writer's remote_write entry names the same header, but
// Debian's Prometheus 2.42 does not send remote_write headers (measured:
// a push carried none, and Cortex answered 401 "no org id"), so the proxy
// makes the tenant hold whichever Prometheus writes.
type pushProxy struct {
	url    string
	srv    *http.Server
	served chan struct{}
}

func startPushProxy(cortexURL, tenant string) (*pushProxy, error) {
	target, err := url.Parse(cortexURL)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for the push proxy: %w", err)
	}
	proxy := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(target)
		r.Out.Header.Set(TenantHeader, tenant)
	}}
	p := &pushProxy{
		url:    "http://" + l.Addr().String(),
		srv:    &http.Server{Handler: proxy, ReadHeaderTimeout: 5 * time.Second},
		served: make(chan struct{}),
	}
	go func() {
		defer close(p.served)
		_ = p.srv.Serve(l) // returns http.ErrServerClosed after close
	}()
	return p, nil
}

func (p *pushProxy) close() error {
	err := p.srv.Close()
	<-p.served
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("close push proxy: %w", err)
	}
	return nil
}

// freePorts returns n distinct ports that were free on 127.0.0.1 a moment
// ago: each listener stays open until all are chosen.
func freePorts(n int) ([]int, error) {
	var ports []int
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			_ = l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find free port: %w", err)
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
