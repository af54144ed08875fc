package handler

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Series whose label values are known at start are exported at 0 from the
// start: rate() and increase() miss the first increment of a series that
// appears at 1.
func TestMetricsExportKnownLabelsAtZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	NewMetrics(reg)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := map[string][]*dto.Metric{}
	for _, f := range families {
		series[f.GetName()] = f.GetMetric()
	}
	want := map[string]int{
		"zeroscaler_workloads":              len(metricStates),
		"zeroscaler_scale_operations_total": len(metricDirections) * len(metricWriteRes),
		"zeroscaler_wakes_total":            len(metricWakeCauses),
		"zeroscaler_metric_unavailable":     len(metricProblems),
	}
	for name, n := range want {
		if got := len(series[name]); got != n {
			t.Errorf("%s has %d series at start, want %d", name, got, n)
		}
		for _, m := range series[name] {
			if v := m.GetGauge().GetValue() + m.GetCounter().GetValue(); v != 0 {
				t.Errorf("%s%v = %v at start, want 0", name, m.GetLabel(), v)
			}
		}
	}
}

func TestMetricProblem(t *testing.T) {
	m := NewMetrics(nil)
	value := func(kind string) float64 {
		var d dto.Metric
		if err := m.metricUnavailable.WithLabelValues(kind).Write(&d); err != nil {
			t.Fatal(err)
		}
		return d.GetGauge().GetValue()
	}
	steps := []struct {
		from, to string
		want     map[string]float64
	}{
		{"", "timeout", map[string]float64{"timeout": 1, "no_data": 0}},
		{"", "timeout", map[string]float64{"timeout": 2, "no_data": 0}},
		{"timeout", "no_data", map[string]float64{"timeout": 1, "no_data": 1}},
		{"no_data", "no_data", map[string]float64{"timeout": 1, "no_data": 1}},
		{"no_data", "ok", map[string]float64{"timeout": 1, "no_data": 0}},
		{"timeout", "", map[string]float64{"timeout": 0, "no_data": 0}},
	}
	for i, s := range steps {
		m.metricProblem(s.from, s.to)
		for kind, want := range s.want {
			if got := value(kind); got != want {
				t.Errorf("step %d (%q → %q): %s = %v, want %v", i, s.from, s.to, kind, got, want)
			}
		}
	}
}
