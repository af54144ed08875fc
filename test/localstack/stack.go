package localstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// controlPlaneTimeout bounds envtest's start and stop of each process.
const controlPlaneTimeout = time.Minute

// Options configures Start. The zero value is usable from inside the repository.
type Options struct {
	// BinDir holds etcd and kube-apiserver, and optionally prometheus.
	// Empty means $KUBEBUILDER_ASSETS, else the repository's bin/.
	BinDir string
	// PrometheusPath is the Prometheus binary. Empty means BinDir/prometheus
	// when that exists, else prometheus on PATH.
	PrometheusPath string
	// Metrics chooses the stack's metrics backend (Debian's Prometheus 2 by
	// default) and its settings. PrometheusPath, when set, is its binary.
	Metrics MetricsOptions
	// ScrapeJobs are scraped besides the built-in jobs "prometheus" (itself)
	// and "exporter" (Stack.Exporter). AddScrapeJob adds more later.
	ScrapeJobs []ScrapeJob
	// ControllerManager also starts BinDir/kube-controller-manager with
	// the Controllers that act on workloads.
	ControllerManager bool
}

// Stack is a running etcd, kube-apiserver, Prometheus and exporter.
// Its exported fields are set by Start and must not be changed.
type Stack struct {
	// RESTConfig is for the admin user, who is in system:masters. Use
	// rest.CopyConfig before changing it (for example to impersonate).
	RESTConfig *rest.Config
	// KubeconfigPath is a kubeconfig file for the admin user, for the daemon
	// binary and kubectl.
	KubeconfigPath string
	// Dir is the temporary directory holding the kubeconfig files, Prometheus'
	// configuration, storage and log. Stop removes it.
	Dir string
	// Exporter is scraped by Prometheus as job "exporter".
	Exporter *Exporter
	// PrometheusURL is Prometheus' base URL, such as http://127.0.0.1:40123.
	// It stays the same across StopPrometheus and StartPrometheus.
	PrometheusURL string
	// PromAPI queries Prometheus.
	PromAPI v1.API
	// Metrics is the stack's metrics backend (Prometheus unless
	// Options.Metrics chose another): PrometheusURL and PromAPI are its URL
	// and API.
	Metrics *MetricsServer

	env      *envtest.Environment
	envPIDs  []int    // etcd and kube-apiserver processes envtest started
	envDirs  []string // their data and certificate directories, envtest's temp dirs
	watchdog *watchdog
	kcm      *controllerManager
	binDir   string

	mu    sync.Mutex
	extra []*MetricsServer // started by StartMetrics

	stopOnce sync.Once
	stopErr  error
}

// Start starts the stack and returns once the API server serves requests and
// Prometheus has scraped the exporter. ctx bounds the waiting for Prometheus;
// envtest's own start is bounded by a one-minute timeout per process. On
// error, everything already started has been stopped.
func Start(ctx context.Context, opts Options) (_ *Stack, err error) {
	binDir, err := resolveBinDir(opts.BinDir)
	if err != nil {
		return nil, err
	}
	mo := opts.Metrics
	mo.Backend = backendOrDefault(mo.Backend)
	if opts.PrometheusPath != "" {
		mo.Path = opts.PrometheusPath
	}
	promPath, err := resolveBackend(mo, binDir)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "zeroscaler-localstack-")
	if err != nil {
		return nil, fmt.Errorf("create temp dir: %w", err)
	}
	s := &Stack{Dir: dir, binDir: binDir}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.Stop())
		}
	}()

	if s.Exporter, err = startExporter(); err != nil {
		return nil, err
	}
	if s.Metrics, err = newMetricsServer(promPath, mo, dir, s.Exporter.Addr, opts.ScrapeJobs); err != nil {
		return nil, err
	}
	s.PrometheusURL, s.PromAPI = s.Metrics.URL, s.Metrics.API

	// Prometheus takes about five seconds to its first scrape and envtest about
	// three to start, so launch Prometheus first and wait for it last.
	startedAt := time.Now()
	if err := s.Metrics.p.spawn(); err != nil {
		return nil, err
	}
	if err := s.startControlPlane(binDir); err != nil {
		return nil, err
	}
	if opts.ControllerManager {
		if err := s.startControllerManager(ctx, binDir); err != nil {
			return nil, err
		}
	}
	if err := s.Metrics.p.waitReady(ctx, s.PromAPI, startedAt); err != nil {
		return nil, err
	}
	return s, nil
}

// ForTest starts a stack for one test and stops it in tb.Cleanup. It fails
// the test if the stack does not start within two minutes.
func ForTest(tb testing.TB, opts Options) *Stack {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := Start(ctx, opts)
	if err != nil {
		tb.Fatalf("start local stack: %v", err)
	}
	tb.Cleanup(func() {
		if err := s.Stop(); err != nil {
			tb.Errorf("stop local stack: %v", err)
		}
	})
	return s
}

func (s *Stack) startControlPlane(binDir string) error {
	etcdPort, err := FreePort()
	if err != nil {
		return err
	}
	peerPort, err := FreePort()
	if err != nil {
		return err
	}
	apiPort, err := FreePort()
	if err != nil {
		return err
	}
	etcd := &envtest.Etcd{URL: &url.URL{Scheme: "http", Host: loopback(etcdPort)}}
	etcd.Configure().Set("listen-peer-urls", "http://"+loopback(peerPort))
	api := &envtest.APIServer{}
	api.SecureServing.Address = "127.0.0.1"
	api.SecureServing.Port = strconv.Itoa(apiPort)
	// envtest defaults to RBAC too; say it so a change of default cannot turn
	// the least-privilege tests into no-ops.
	api.Configure().Set("authorization-mode", "RBAC")

	s.env = &envtest.Environment{
		BinaryAssetsDirectory:    binDir,
		ControlPlane:             envtest.ControlPlane{Etcd: etcd, APIServer: api},
		ControlPlaneStartTimeout: controlPlaneTimeout,
		ControlPlaneStopTimeout:  controlPlaneTimeout,
	}
	before := childPIDs()
	cfg, startErr := s.env.Start()
	// Arm the watchdog even after a failed start: Stop may still have
	// processes to end.
	s.envPIDs = newPIDs(before, childPIDs())
	s.envDirs = []string{etcd.DataDir, api.CertDir, s.env.WebhookInstallOptions.LocalServingCertDir}
	wd, err := startWatchdog(s.envPIDs, append([]string{s.Dir}, s.envDirs...)...)
	if err != nil {
		return errors.Join(startErr, err)
	}
	s.watchdog = wd
	if startErr != nil {
		return fmt.Errorf("start control plane: %w", startErr)
	}
	s.RESTConfig = cfg
	s.KubeconfigPath = filepath.Join(s.Dir, "kubeconfig")
	if err := os.WriteFile(s.KubeconfigPath, s.env.KubeConfig, 0o600); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return nil
}

// AddUser provisions a client certificate for a user with the given groups
// and writes a kubeconfig file for it. The user has no permissions beyond
// what RBAC objects grant it, so tests can run the daemon with least
// privilege. It returns the user's REST config and kubeconfig path.
func (s *Stack) AddUser(name string, groups ...string) (*rest.Config, string, error) {
	u, err := s.env.AddUser(envtest.User{Name: name, Groups: groups}, &rest.Config{QPS: 1000, Burst: 2000})
	if err != nil {
		return nil, "", fmt.Errorf("add user %s: %w", name, err)
	}
	kc, err := u.KubeConfig()
	if err != nil {
		return nil, "", fmt.Errorf("build kubeconfig for %s: %w", name, err)
	}
	f, err := os.CreateTemp(s.Dir, "kubeconfig-")
	if err != nil {
		return nil, "", fmt.Errorf("write kubeconfig for %s: %w", name, err)
	}
	_, werr := f.Write(kc)
	if err := errors.Join(werr, f.Close()); err != nil {
		return nil, "", fmt.Errorf("write kubeconfig for %s: %w", name, err)
	}
	return u.Config(), f.Name(), nil
}

// StartPrometheus starts Prometheus again after StopPrometheus, on the same
// address with the same storage, and waits as Start does. It does nothing if
// Prometheus is running.
func (s *Stack) StartPrometheus(ctx context.Context) error {
	return s.Metrics.Start(ctx)
}

// StopPrometheus stops Prometheus (SIGTERM, then SIGKILL after 15 s) to
// simulate an outage. It does nothing if Prometheus is not running.
func (s *Stack) StopPrometheus() error {
	return s.Metrics.Stop()
}

// WaitForValue is MetricsServer.WaitForValue on the stack's backend.
func (s *Stack) WaitForValue(ctx context.Context, promql string, want float64) error {
	return s.Metrics.WaitForValue(ctx, promql, want)
}

// AddScrapeJob is MetricsServer.AddScrapeJob on the stack's backend.
func (s *Stack) AddScrapeJob(ctx context.Context, job ScrapeJob) error {
	return s.Metrics.AddScrapeJob(ctx, job)
}

// RemoveScrapeJob is MetricsServer.RemoveScrapeJob on the stack's backend.
func (s *Stack) RemoveScrapeJob(ctx context.Context, name string) error {
	return s.Metrics.RemoveScrapeJob(ctx, name)
}

// Stop stops everything Start started and removes Dir. It is safe to call
// more than once, concurrently, and on a stack whose start failed.
func (s *Stack) Stop() error {
	if s == nil {
		return nil
	}
	s.stopOnce.Do(func() {
		var errs []error
		s.mu.Lock()
		servers := append([]*MetricsServer{s.Metrics}, s.extra...)
		s.mu.Unlock()
		for _, m := range servers {
			if m != nil {
				errs = append(errs, m.p.shutdown())
			}
		}
		if s.kcm != nil {
			errs = append(errs, s.kcm.stop())
		}
		if s.env != nil {
			if err := s.env.Stop(); err != nil {
				errs = append(errs, fmt.Errorf("stop control plane: %w", err))
			}
			// envtest forgets the processes of failed start attempts, and
			// retries reuse one certificate directory that nobody removes.
			errs = append(errs, killLeftovers(s.envPIDs))
			for _, dir := range s.envDirs {
				if dir != "" {
					if err := os.RemoveAll(dir); err != nil {
						errs = append(errs, fmt.Errorf("remove control plane dir: %w", err))
					}
				}
			}
		}
		if s.watchdog != nil {
			errs = append(errs, s.watchdog.disarm())
		}
		if s.Exporter != nil {
			errs = append(errs, s.Exporter.close())
		}
		if err := os.RemoveAll(s.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove temp dir: %w", err))
		}
		s.stopErr = errors.Join(errs...)
	})
	return s.stopErr
}

// FreePort returns a TCP port that was free on 127.0.0.1 a moment ago, for
// example for the daemon's metrics address.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func loopback(port int) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

func resolveBinDir(dir string) (string, error) {
	if dir == "" {
		dir = os.Getenv("KUBEBUILDER_ASSETS")
	}
	if dir == "" {
		root, err := RepoRoot()
		if err != nil {
			return "", fmt.Errorf("find binaries (set Options.BinDir or KUBEBUILDER_ASSETS): %w", err)
		}
		dir = filepath.Join(root, "bin")
	}
	for _, name := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			return "", fmt.Errorf("find %s (run make tools): %w", name, err)
		}
	}
	return dir, nil
}

func resolvePrometheus(path, binDir string) (string, error) {
	if path != "" {
		return path, nil
	}
	if p := filepath.Join(binDir, "prometheus"); isExecutable(p) {
		return p, nil
	}
	p, err := exec.LookPath("prometheus")
	if err != nil {
		return "", fmt.Errorf("find prometheus in %s or on PATH (run make prometheus): %w", binDir, err)
	}
	return p, nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}
