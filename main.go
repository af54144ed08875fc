// Command zeroscaler scales idle Deployments and StatefulSets to zero when
// their Prometheus metric says so, and wakes them when it rises again.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-logr/zapr"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"k8s.io/klog/v2"

	"github.com/zeroscaler/zeroscaler/scaler"
	"github.com/zeroscaler/zeroscaler/status"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "status" {
		cmd := status.Command{Stdout: os.Stdout, Stderr: os.Stderr}
		os.Exit(cmd.Run(context.Background(), os.Args[2:]))
	}
	o, servers, code := prepare(os.Args[1:], os.Stdout, os.Stderr)
	if o == nil {
		os.Exit(code)
	}
	log, err := newLogger(o.logLevel, o.logFormat)
	if err != nil {
		fmt.Fprintln(os.Stderr, "zeroscaler:", oneLine(err.Error()))
		os.Exit(1)
	}
	defer log.Sync() //nolint:errcheck // nothing to do if stderr is gone
	routeKlog(log)
	logServers(log, servers)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, o, log); err != nil {
		log.Error("zeroscaler stopped", zap.Error(err))
		os.Exit(1)
	}
	log.Info("zeroscaler stopped")
}

// prepare reads the flags and checks, before any logger exists, everything
// that can be wrong at start: the flags, the kubeconfig and
// --prometheus-config. A problem is one plain line on stderr and exit code
// 1. It returns nil options when the program is to exit with the code.
func prepare(args []string, stdout, stderr io.Writer) (*options, *scaler.Servers, int) {
	o := newOptions()
	fs := o.flags("zeroscaler")
	fs.SetOutput(stdout) // --help
	fail := func(err error) (*options, *scaler.Servers, int) {
		fmt.Fprintln(stderr, "zeroscaler:", oneLine(err.Error()))
		return nil, nil, 1
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, nil, 0
		}
		return fail(err)
	}
	if o.version {
		fmt.Fprintln(stdout, "zeroscaler", version)
		return nil, nil, 0
	}
	if err := o.validate(fs); err != nil {
		return fail(err)
	}
	if _, err := kubeConfig(o.kubeconfig); err != nil {
		return fail(err)
	}
	servers, err := scaler.NewServers(o.scalerOptions(nil))
	if err != nil {
		return fail(err)
	}
	return o, servers, 0
}

// newLogger builds the daemon's logger; tests pass options to observe it.
func newLogger(level, format string, opts ...zap.Option) (*zap.Logger, error) {
	cfg, err := loggerConfig(level, format)
	if err != nil {
		return nil, err
	}
	return cfg.Build(opts...)
}

// loggerConfig is the configuration of the daemon's logger, writing to
// stderr.
func loggerConfig(level, format string) (zap.Config, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return zap.Config{}, fmt.Errorf("--log-level: %w", err)
	}
	cfg := zap.NewProductionConfig()
	if format == "console" {
		cfg = zap.NewDevelopmentConfig()
		// Development mode panics on a malformed log call (zap's DPanic),
		// which zapr makes of any odd klog call inside client-go.
		cfg.Development = false
	}
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.EncoderConfig.TimeKey = "time"
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	// An error is one line: the ones expected in operation (a timeout, a
	// conflict) are no bugs, and a stack trace would not help with them.
	cfg.DisableStacktrace = true
	return cfg, nil
}

// logServers tells the operator, once at start, which Prometheus servers
// workloads may ask. The allow-list goes to the log only: Events, which
// namespace users read, say that a server is not allowed but not which ones
// are.
func logServers(log *zap.Logger, servers *scaler.Servers) {
	log.Info("prometheus servers", zap.String("default", servers.DefaultAddress()), zap.Strings("allowed", servers.Addresses()))
}

// routeKlog sends what client-go logs (the event broadcaster, leader
// election, the reflectors) through log, so that the daemon's output is one
// format a log pipeline can parse, with the same level and no stack traces.
// client-go's verbose lines (klog.V(1) and up) are dropped by klog itself,
// whose -v the daemon leaves at 0, whatever --log-level is.
func routeKlog(log *zap.Logger) {
	klog.SetLogger(zapr.NewLogger(log.Named("client-go")))
}
