// Package scaler decides, from Prometheus, whether a workload should be put
// to sleep or woken.
package scaler

import (
	"context"
	"errors"
	"fmt"
	"strconv"
)

// Scaler decides for one workload. A Scaler never scales anything itself;
// the handler asks it and acts.
type Scaler interface {
	// IsHealthy reports whether the metric source was up for the whole
	// cooldown window, so that an idle reading can be trusted.
	IsHealthy(ctx context.Context) (bool, error)
	// ShouldScaleToZero reports whether the metric is idle now. An error
	// means the reading is unknown, which is never a reason to scale down.
	ShouldScaleToZero(ctx context.Context) (bool, error)
	// ShouldScaleFromZero reports whether the metric is active now.
	ShouldScaleFromZero(ctx context.Context) (bool, error)
	// Close releases what the Scaler holds.
	Close(ctx context.Context) error
}

// ErrNoData is returned (wrapped) when a query yields no usable sample: an
// empty result, NaN or an infinity. It means "unknown", never "zero": it is
// neither a reason to scale down nor a reason to wake.
var ErrNoData = errors.New("query returned no usable sample")

// ErrMultipleSeries is returned (wrapped) when a query yields more than one
// series. It is a configuration error: the query must be aggregated.
var ErrMultipleSeries = errors.New("query returned more than one series; aggregate it, for example with sum(...)")

// Reading is the value behind a decision, kept so that events and logs can
// say why something happened.
type Reading struct {
	Query     string
	Value     float64
	Threshold float64
}

// Idle reports whether the reading is below the threshold.
func (r Reading) Idle() bool { return r.Value < r.Threshold }

// String renders the comparison, e.g. `sum(rate(x[1m])) = 0.02 < 0.1`.
func (r Reading) String() string {
	op := ">="
	if r.Idle() {
		op = "<"
	}
	return fmt.Sprintf("%s = %s %s %s", r.Query, formatFloat(r.Value), op, formatFloat(r.Threshold))
}

func formatFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }
