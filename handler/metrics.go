package handler

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are what the daemon tells about itself on /metrics.
type Metrics struct {
	loops     prometheus.Gauge
	groups    prometheus.Gauge
	workloads *prometheus.GaugeVec
	scaleOps  *prometheus.CounterVec
	apiWrites prometheus.Counter
	queries   *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	loopLag   prometheus.Histogram
	// replicasAsleep is the sum of the original counts of the workloads
	// asleep now: the replicas zeroscaler is saving.
	replicasAsleep prometheus.Gauge
	sleeps         prometheus.Counter
	wakes          *prometheus.CounterVec
	// metricUnavailable counts, by result kind, the workloads whose metric
	// could not be read at their last check; see MetricProblem.
	metricUnavailable *prometheus.GaugeVec
	// Leader is 1 while this replica leads.
	Leader prometheus.Gauge
}

// NewMetrics creates the metrics and registers them with reg, unless reg is
// nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		loops: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "zeroscaler_loops",
			Help: "Loops running, one per workload and one per group; each makes its first check at its own moment within its polling interval.",
		}),
		groups: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "zeroscaler_groups",
			Help: "Groups with a running loop: workloads that sleep and wake together (zeroscaler.io/group, or an annotated Namespace).",
		}),
		workloads: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "zeroscaler_workloads",
			Help: "Workloads with a running loop (of their own or their group's), by state: awake, idle (cooling down), asleep, paused, invalid.",
		}, []string{"state"}),
		scaleOps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zeroscaler_scale_operations_total",
			Help: "Scale operations by direction (down: to zero, up: from zero) and result (ok, conflict, error).",
		}, []string{"direction", "result"}),
		apiWrites: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "zeroscaler_api_writes_total",
			Help: "Writes to workloads sent to the Kubernetes API: each sleep, wake or clearing of sleep marks is one patch.",
		}),
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zeroscaler_prometheus_queries_total",
			Help: "Requests sent to Prometheus by server and result (ok, no_data, multiple_series, timeout, bad_query, bad_response, server_error, error). Shared answers are not counted.",
		}, []string{"server", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "zeroscaler_prometheus_query_duration_seconds",
			Help:    "Time from sending a request to Prometheus to its answer, including the wait for a free query slot.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}, []string{"server"}),
		loopLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "zeroscaler_loop_lag_seconds",
			Help:    "How late a workload check started compared with its schedule.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 9),
		}),
		replicasAsleep: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "zeroscaler_replicas_asleep",
			Help: "Replicas zeroscaler is saving now: the sum of the original counts of the workloads it put to sleep.",
		}),
		sleeps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "zeroscaler_sleeps_total",
			Help: "Workloads put to sleep.",
		}),
		wakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "zeroscaler_wakes_total",
			Help: "Workloads woken, by cause: metric (the query rose to its threshold), error (the metric could not be read), person (someone scaled it up), released (its configuration was removed or became invalid, it was excluded, it left its group or the watch), schedule (its awake hours began), group (another member of its group woke it).",
		}, []string{"cause"}),
		metricUnavailable: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "zeroscaler_metric_unavailable",
			Help: "Workloads whose metric could not be read at their last check, by result (no_data, multiple_series, timeout, bad_query, bad_response, server_error, error). Nothing of theirs is scaled down while it lasts.",
		}, []string{"result"}),
		Leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "zeroscaler_leader",
			Help: "1 while this replica is the leader and runs workload loops, else 0.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.loops, m.groups, m.workloads, m.scaleOps, m.apiWrites, m.queries, m.latency, m.loopLag, m.replicasAsleep, m.sleeps, m.wakes, m.metricUnavailable, m.Leader)
	}
	m.initLabels()
	return m
}

// Label values known at start. Their series are exported at 0 from the
// start, so that a dashboard shows every state and cause, and so that
// rate() and increase() in alerts see a counter's first increment: a series
// that appears at 1 has no earlier sample to rise from.
var (
	metricStates     = []string{StateAwake, StateIdle, StateAsleep, StatePaused, StateInvalid}
	metricDirections = []string{"down", "up"}
	metricWriteRes   = []string{"ok", "conflict", "error"}
	metricWakeCauses = []string{wakeByMetric, wakeByError, wakeByPerson, wakeBySchedule, wakeByReleased, wakeByGroup}
	// metricProblems are scaler.ResultKind's kinds, but "ok".
	metricProblems = []string{"no_data", "multiple_series", "timeout", "bad_query", "bad_response", "server_error", "error"}
)

func (m *Metrics) initLabels() {
	for _, s := range metricStates {
		m.workloads.WithLabelValues(s)
	}
	for _, d := range metricDirections {
		for _, r := range metricWriteRes {
			m.scaleOps.WithLabelValues(d, r)
		}
	}
	for _, c := range metricWakeCauses {
		m.wakes.WithLabelValues(c)
	}
	for _, p := range metricProblems {
		m.metricUnavailable.WithLabelValues(p)
	}
}

// metricProblem moves a workload from one query problem to another in
// zeroscaler_metric_unavailable. Problems are scaler.ResultKind's kinds;
// "" (or "ok") is none. A loop calls it whenever the problem it remembers
// changes, and with (problem, "") when it ends.
func (m *Metrics) metricProblem(from, to string) {
	if from == to {
		return
	}
	if from != "" && from != "ok" {
		m.metricUnavailable.WithLabelValues(from).Dec()
	}
	if to != "" && to != "ok" {
		m.metricUnavailable.WithLabelValues(to).Inc()
	}
}

// ObserveQuery counts one request to Prometheus; it fits
// scaler.Options.ObserveQuery.
func (m *Metrics) ObserveQuery(server, result string, took time.Duration) {
	m.queries.WithLabelValues(server, result).Inc()
	m.latency.WithLabelValues(server).Observe(took.Seconds())
}
