package main

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.uber.org/zap/zapcore"
	"k8s.io/client-go/rest"

	"github.com/zeroscaler/zeroscaler/informer"
	"github.com/zeroscaler/zeroscaler/scaler"
)

// options are the daemon's flags.
type options struct {
	kubeconfig     string
	watchNamespace string
	selector       string
	kubeAPIQPS     float32
	kubeAPIBurst   int

	prometheusAddress      string
	allowedAddresses       []string
	bearerTokenFile        string
	prometheusHeaders      []string
	allowedWorkloadHeaders []string
	prometheusConfig       string
	uptimeFilter           string
	queryTimeout           time.Duration
	maxConcurrentQueries   int

	defaultPolling  time.Duration
	defaultCooldown time.Duration
	dryRun          bool

	leaderElect         bool
	leaderElectionNS    string
	leaderElectionID    string
	leaseDuration       time.Duration
	renewDeadline       time.Duration
	retryPeriod         time.Duration
	metricsAddress      string
	profiling           bool
	logLevel, logFormat string
	version             bool
	parsedPromHeaders   map[string]string
}

func newOptions() *options {
	// Leader election is on by default in a cluster, where two replicas
	// run, and off on a laptop.
	_, err := rest.InClusterConfig()
	return &options{leaderElect: err == nil}
}

func (o *options) flags(name string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SortFlags = false
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "Path to a kubeconfig. Empty: in-cluster config, else $KUBECONFIG or ~/.kube/config.")
	fs.StringVar(&o.watchNamespace, "watch-namespace", "", "Namespace to watch. Empty: all namespaces.")
	fs.StringVar(&o.selector, "selector", "", "Label selector narrowing the workloads watched, e.g. team=web.")
	// Nothing is written while nothing changes, so these limits only matter
	// when many workloads wake at once: then they must not queue for long.
	fs.Float32Var(&o.kubeAPIQPS, "kube-api-qps", 300, "Sustained requests per second to the Kubernetes API.")
	fs.IntVar(&o.kubeAPIBurst, "kube-api-burst", 600, "Burst of requests to the Kubernetes API.")

	fs.StringVar(&o.prometheusAddress, "prometheus-address", "http://localhost:9090", "Default Prometheus base URL; the only one that receives the credentials given by flags.")
	fs.StringArrayVar(&o.allowedAddresses, "allowed-server-address", nil, "Other Prometheus base URL a workload may name in zeroscaler.io/server-address (repeatable). No credentials are sent to it.")
	fs.StringVar(&o.bearerTokenFile, "prometheus-bearer-token-file", "", "File holding a bearer token for --prometheus-address, re-read on change.")
	fs.StringArrayVar(&o.prometheusHeaders, "prometheus-header", nil, "Header Name=value sent to --prometheus-address only (repeatable).")
	fs.StringArrayVar(&o.allowedWorkloadHeaders, "allowed-workload-header", nil, "Header name a workload may set in zeroscaler.io/headers, any case (repeatable). Default: none.")
	fs.StringVar(&o.prometheusConfig, "prometheus-config", "", "YAML file listing Prometheus servers, each with Prometheus' own HTTP client configuration (auth, TLS, proxy). Each listed URL is allowed and gets only its own credentials; the first is the default unless --prometheus-address is given.")
	fs.StringVar(&o.uptimeFilter, "uptime-filter", `job="prometheus"`, "Default label matchers for the health query up{...}.")
	fs.DurationVar(&o.queryTimeout, "query-timeout", 5*time.Second, "Timeout of one query to Prometheus.")
	fs.IntVar(&o.maxConcurrentQueries, "max-concurrent-queries", 8, "Most queries in flight to one Prometheus server.")

	fs.DurationVar(&o.defaultPolling, "default-polling-interval", 30*time.Second, "Time between checks for workloads without zeroscaler.io/polling-interval.")
	fs.DurationVar(&o.defaultCooldown, "default-cooldown-period", 5*time.Minute, "Idle time before scaling to zero for workloads without zeroscaler.io/cooldown-period.")
	fs.BoolVar(&o.dryRun, "dry-run", false, "Decide, log and emit events, but never write to workloads.")

	fs.BoolVar(&o.leaderElect, "leader-elect", o.leaderElect, "Elect a leader with a Lease so that only one replica acts (default true in-cluster).")
	fs.StringVar(&o.leaderElectionNS, "leader-election-namespace", "", "Namespace of the Lease. Empty: the pod's own namespace in-cluster, else default.")
	fs.StringVar(&o.leaderElectionID, "leader-election-id", "zeroscaler", "Name of the Lease.")
	fs.DurationVar(&o.leaseDuration, "leader-election-lease-duration", 15*time.Second, "How long a standby waits before taking over a lease that is not renewed.")
	fs.DurationVar(&o.renewDeadline, "leader-election-renew-deadline", 10*time.Second, "How long the leader keeps trying to renew before it gives up leading.")
	fs.DurationVar(&o.retryPeriod, "leader-election-retry-period", 2*time.Second, "Time between lease acquire or renew attempts.")
	fs.StringVar(&o.metricsAddress, "metrics-address", ":8080", "Address serving /metrics, /healthz and /readyz. Empty: disabled.")
	fs.BoolVar(&o.profiling, "profiling", false, "Also serve Go's pprof profiles under /debug/pprof/ on --metrics-address.")

	fs.StringVar(&o.logLevel, "log-level", "info", "Log level: debug, info, warn or error.")
	fs.StringVar(&o.logFormat, "log-format", "json", "Log format: json or console.")
	fs.BoolVar(&o.version, "version", false, "Print the version and exit.")
	return fs
}

// validate checks the flags parsed by fs and fills in what follows from
// them. Its error is one line naming each wrong flag.
func (o *options) validate(fs *pflag.FlagSet) error {
	// With --prometheus-config, the file's first server is the default
	// unless --prometheus-address is given.
	if o.prometheusConfig != "" && !fs.Changed("prometheus-address") {
		o.prometheusAddress = ""
	}
	var errs []error
	if o.defaultPolling < informer.MinPeriod {
		errs = append(errs, fmt.Errorf("--default-polling-interval must be at least %s, got %s", informer.MinPeriod, o.defaultPolling))
	}
	if o.defaultCooldown < informer.MinPeriod {
		errs = append(errs, fmt.Errorf("--default-cooldown-period must be at least %s, got %s", informer.MinPeriod, o.defaultCooldown))
	}
	if o.queryTimeout <= 0 {
		errs = append(errs, errors.New("--query-timeout must be positive"))
	}
	if o.maxConcurrentQueries < 1 {
		errs = append(errs, errors.New("--max-concurrent-queries must be at least 1"))
	}
	if _, err := zapcore.ParseLevel(o.logLevel); err != nil {
		errs = append(errs, fmt.Errorf("--log-level: %w", err))
	}
	if o.logFormat != "json" && o.logFormat != "console" {
		errs = append(errs, fmt.Errorf("--log-format must be json or console, got %q", o.logFormat))
	}
	if o.leaderElect && !(o.leaseDuration > o.renewDeadline && o.renewDeadline > o.retryPeriod && o.retryPeriod > 0) {
		errs = append(errs, errors.New("leader election needs lease duration > renew deadline > retry period > 0"))
	}
	if err := informer.CheckUptimeFilter(o.uptimeFilter); err != nil {
		errs = append(errs, fmt.Errorf("--uptime-filter %q %w", o.uptimeFilter, err))
	}
	o.parsedPromHeaders = map[string]string{}
	for _, h := range o.prometheusHeaders {
		name, value, ok := strings.Cut(h, "=")
		name = strings.TrimSpace(name)
		canonical := http.CanonicalHeaderKey(name)
		_, twice := o.parsedPromHeaders[canonical]
		switch err := scaler.CheckHeader(name, value); {
		case !ok:
			errs = append(errs, fmt.Errorf("--prometheus-header %q: want Name=value", h))
		case err != nil:
			errs = append(errs, fmt.Errorf("--prometheus-header %q: %w", h, err))
		case twice:
			errs = append(errs, fmt.Errorf("--prometheus-header %q: %s is given twice (names are not case-sensitive)", h, canonical))
		default:
			o.parsedPromHeaders[canonical] = value
		}
	}
	if o.leaderElectionNS == "" {
		o.leaderElectionNS = podNamespace()
	}
	return joinLine(errs)
}

// joinLine joins errors into one line.
func joinLine(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	s := make([]string, len(errs))
	for i, err := range errs {
		s[i] = err.Error()
	}
	return errors.New(oneLine(strings.Join(s, "; ")))
}

// oneLine folds a message onto one line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// scalerOptions are the Prometheus side of the flags; observe is told about
// every query sent.
func (o *options) scalerOptions(observe func(server, result string, took time.Duration)) scaler.Options {
	return scaler.Options{
		DefaultAddress:         o.prometheusAddress,
		AllowedAddresses:       o.allowedAddresses,
		BearerTokenFile:        o.bearerTokenFile,
		Headers:                o.parsedPromHeaders,
		AllowedWorkloadHeaders: o.allowedWorkloadHeaders,
		ConfigFile:             o.prometheusConfig,
		QueryTimeout:           o.queryTimeout,
		MaxConcurrentQueries:   o.maxConcurrentQueries,
		ShareWindow:            shareWindow,
		ObserveQuery:           observe,
	}
}

// shareWindow is how long one Prometheus answer serves every workload
// asking the same question; see scaler.Options.
const shareWindow = 500 * time.Millisecond

// podNamespace is the namespace this pod runs in, or default outside a
// cluster.
func podNamespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	if b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace"); err == nil {
		return strings.TrimSpace(string(b))
	}
	return "default"
}
