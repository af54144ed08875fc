// Command zeroscaler scales idle Deployments and StatefulSets to zero when
// their Prometheus metric says so, and wakes them when it rises again.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/zeroscaler/zeroscaler/status"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "status" {
		cmd := status.Command{Stdout: os.Stdout, Stderr: os.Stderr}
		os.Exit(cmd.Run(context.Background(), os.Args[2:]))
	}
	o := newOptions()
	fs := o.flags("zeroscaler")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if o.version {
		fmt.Println("zeroscaler", version)
		return
	}
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "zeroscaler:", err)
		os.Exit(2)
	}
	log, err := newLogger(o.logLevel, o.logFormat)
	if err != nil {
		fmt.Fprintln(os.Stderr, "zeroscaler:", err)
		os.Exit(2)
	}
	defer log.Sync() //nolint:errcheck // nothing to do if stderr is gone

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, o, log); err != nil {
		log.Error("zeroscaler stopped", zap.Error(err))
		os.Exit(1)
	}
	log.Info("zeroscaler stopped")
}

func newLogger(level, format string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	cfg := zap.NewProductionConfig()
	if format == "console" {
		cfg = zap.NewDevelopmentConfig()
	}
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.EncoderConfig.TimeKey = "time"
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	return cfg.Build()
}
