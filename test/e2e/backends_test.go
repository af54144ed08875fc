//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/zeroscaler/zeroscaler/test/localstack"
)

// backendsEnv lists the metrics backends the backend scenarios run against,
// comma-separated (see localstack.Backend); unset means every backend. The
// first one is also the stack's own, used by every other test: it must be a
// Prometheus, whose targets API the production tests read.
const backendsEnv = "ZEROSCALER_BACKENDS"

// matrix holds one entry per backend, each started once for the package by
// TestMain. The first is the stack's own backend.
var matrix []*backend

// backend is one metrics backend of the matrix. Tests on it isolate
// themselves as on the stack: their own namespaces and series.
type backend struct {
	*localstack.MetricsServer
}

func (b *backend) name() string { return string(b.Backend) }

func matrixBackends() ([]localstack.Backend, error) {
	list, ok := os.LookupEnv(backendsEnv)
	if !ok {
		return localstack.Backends, nil
	}
	bs, err := localstack.ParseBackends(list)
	if err != nil {
		return nil, err
	}
	if bs[0] == localstack.VictoriaMetrics {
		return nil, fmt.Errorf("%s is listed first: list a Prometheus first, the tests outside the backend matrix read its targets API", bs[0])
	}
	return bs, nil
}

// startMatrix starts the backends after the first (the stack's own), in
// parallel, beside the shared stack.
func startMatrix(ctx context.Context, bs []localstack.Backend) error {
	matrix = []*backend{{MetricsServer: stack.Metrics}}
	type started struct {
		m    *localstack.MetricsServer
		err  error
		took time.Duration
	}
	results := make([]chan started, len(bs)-1)
	for i, b := range bs[1:] {
		results[i] = make(chan started, 1)
		go func() {
			began := time.Now()
			m, err := stack.StartMetrics(ctx, localstack.MetricsOptions{Backend: b})
			results[i] <- started{m, err, time.Since(began)}
		}()
	}
	var errs []error
	for i, ch := range results {
		r := <-ch
		if r.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", bs[i+1], r.err))
			continue
		}
		fmt.Fprintf(os.Stderr, "%s started in %v (%s)\n", bs[i+1], r.took.Round(time.Millisecond), r.m.URL)
		matrix = append(matrix, &backend{MetricsServer: r.m})
	}
	return errors.Join(errs...)
}

// forEachBackend runs f as a parallel subtest per backend of the matrix,
// named after the backend.
func forEachBackend(t *testing.T, f func(t *testing.T, b *backend)) {
	t.Helper()
	for _, b := range matrix {
		t.Run(b.name(), func(t *testing.T) {
			t.Parallel()
			f(t, b)
		})
	}
}

// startDaemon starts zeroscaler as the package's startDaemon does, asking
// this backend.
func (b *backend) startDaemon(t *testing.T, name, ns string, extra ...string) *daemon {
	t.Helper()
	return startDaemonOn(t, b.URL, name, ns, extra...)
}

// setMetric sets a series on the shared exporter and waits until this
// backend answers with the new value. The series is deleted when the test
// ends.
func (b *backend) setMetric(t *testing.T, series string, v float64) {
	t.Helper()
	b.setMetricWithin(t, waitTimeout, series, v)
}

// setMetricWithin is setMetric with its own bound on the wait, for a
// backend that answers late by design (VictoriaMetrics' default latency
// offset).
func (b *backend) setMetricWithin(t *testing.T, timeout time.Duration, series string, v float64) {
	t.Helper()
	stack.Exporter.Set(series, v)
	t.Cleanup(func() { stack.Exporter.Delete(series) })
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	if err := b.WaitForValue(ctx, stack.Exporter.Query(series), v); err != nil {
		t.Fatalf("%s: %v", b.name(), err)
	}
}

// deleteMetric removes a series and waits until this backend returns
// nothing for it.
func (b *backend) deleteMetric(t *testing.T, series string) {
	t.Helper()
	stack.Exporter.Delete(series)
	if err := b.WaitForValue(testContext(t), "absent("+stack.Exporter.Query(series)+")", 1); err != nil {
		t.Fatalf("%s: %v", b.name(), err)
	}
}
