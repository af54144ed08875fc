package informer

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/zeroscaler/zeroscaler/handler"
	"github.com/zeroscaler/zeroscaler/scaler"
)

// Annotations users write on a Deployment or StatefulSet.
const (
	AnnotationQuery           = "zeroscaler.io/query"
	AnnotationThreshold       = "zeroscaler.io/threshold"
	AnnotationServerAddress   = "zeroscaler.io/server-address"
	AnnotationUptimeFilter    = "zeroscaler.io/uptime-filter"
	AnnotationHeaders         = "zeroscaler.io/headers"
	AnnotationCooldownPeriod  = "zeroscaler.io/cooldown-period"
	AnnotationPollingInterval = "zeroscaler.io/polling-interval"
	AnnotationMinReplicas     = "zeroscaler.io/min-replicas"
	AnnotationPaused          = "zeroscaler.io/paused"
)

// Prefix is shared by every zeroscaler annotation; the cache keeps only
// annotations with it.
const Prefix = "zeroscaler.io/"

// MinPeriod is the shortest cooldown or polling interval accepted.
const MinPeriod = time.Second

// Defaults fill in what the annotations leave out.
type Defaults struct {
	UptimeFilter    string
	CooldownPeriod  time.Duration
	PollingInterval time.Duration
	// Servers is the operator's Prometheus configuration.
	Servers Servers
}

// Servers is what Parse asks of the operator's Prometheus configuration;
// *scaler.Servers is one.
type Servers interface {
	// Allowed checks a server address against the operator's allow-list
	// and returns its normalized form; its error is a reason that reads
	// after the annotation's value.
	Allowed(address string) (string, error)
	// CheckWorkloadHeader says whether a workload may send the header
	// name to the server at address (normalized; empty for the default).
	CheckWorkloadHeader(address, name string) error
}

// FieldError says which annotation is wrong and why.
type FieldError struct {
	Annotation string
	Value      string
	Reason     string
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("annotation %s: %q %s", e.Annotation, e.Value, e.Reason)
}

// Parse reads a workload's annotations into its configuration. If any
// annotation is wrong, the returned error lists every wrong one, each a
// *FieldError.
func Parse(annotations map[string]string, d Defaults) (handler.Config, error) {
	cfg := handler.Config{
		Mode:           handler.Managed,
		CooldownPeriod: d.CooldownPeriod,
		PollingPeriod:  d.PollingInterval,
		MinReplicas:    1,
		Metadata:       scaler.Metadata{UptimeFilter: d.UptimeFilter},
	}
	var errs []error
	bad := func(annotation, reason string) {
		errs = append(errs, &FieldError{Annotation: annotation, Value: annotations[annotation], Reason: reason})
	}

	cfg.Metadata.Query = strings.TrimSpace(annotations[AnnotationQuery])
	if cfg.Metadata.Query == "" {
		bad(AnnotationQuery, "is empty; it must be a PromQL query")
	}

	if v, ok := annotations[AnnotationThreshold]; !ok {
		bad(AnnotationThreshold, "is missing; it must be a number")
	} else if f, err := parseThreshold(v); err != nil {
		bad(AnnotationThreshold, err.Error())
	} else {
		cfg.Metadata.Threshold = f
	}

	if v, ok := annotations[AnnotationServerAddress]; ok {
		addr, err := d.Servers.Allowed(v)
		if err != nil {
			bad(AnnotationServerAddress, err.Error())
		}
		cfg.Metadata.ServerAddress = addr
	}

	if v, ok := annotations[AnnotationUptimeFilter]; ok {
		if err := CheckUptimeFilter(v); err != nil {
			bad(AnnotationUptimeFilter, err.Error())
		}
		cfg.Metadata.UptimeFilter = strings.TrimSpace(v)
	}

	if v, ok := annotations[AnnotationHeaders]; ok {
		// With a server that is not allowed, the headers are checked
		// against the default server's.
		h, err := parseHeaders(v, func(name string) error {
			return d.Servers.CheckWorkloadHeader(cfg.Metadata.ServerAddress, name)
		})
		if err != nil {
			bad(AnnotationHeaders, err.Error())
		}
		cfg.Metadata.Headers = h
	}

	if v, ok := annotations[AnnotationCooldownPeriod]; ok {
		if p, err := parsePeriod(v); err != nil {
			bad(AnnotationCooldownPeriod, err.Error())
		} else {
			cfg.CooldownPeriod = p
		}
	}
	if v, ok := annotations[AnnotationPollingInterval]; ok {
		if p, err := parsePeriod(v); err != nil {
			bad(AnnotationPollingInterval, err.Error())
		} else {
			cfg.PollingPeriod = p
		}
	}

	if v, ok := annotations[AnnotationMinReplicas]; ok {
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 32)
		if err != nil || n < 1 {
			bad(AnnotationMinReplicas, "is not a positive integer")
		} else {
			cfg.MinReplicas = int32(n)
		}
	}

	if v, ok := annotations[AnnotationPaused]; ok {
		p, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			bad(AnnotationPaused, `is not a boolean ("true" or "false")`)
		}
		cfg.Paused = p
	}

	if len(errs) > 0 {
		return handler.Config{Mode: handler.Invalid}, joinErrors(errs)
	}
	return cfg, nil
}

func parsePeriod(v string) (time.Duration, error) {
	p, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil {
		return 0, errors.New("is not a Go duration such as 30s or 5m")
	}
	if p < MinPeriod {
		return 0, fmt.Errorf("is shorter than %s", MinPeriod)
	}
	return p, nil
}

// parseHeaders reads `Name=value,Name2=value2`. Names must be HTTP tokens,
// each given once in any case, values may hold no control characters, and
// allowed(name) must accept each: only names the operator lists in
// --allowed-workload-header pass, never one carrying credentials
// (Authorization, Cookie, ...) nor one the operator sets for the server.
func parseHeaders(v string, allowed func(name string) error) (map[string]string, error) {
	out := map[string]string{}
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, value, ok := strings.Cut(item, "=")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if !ok {
			return nil, fmt.Errorf("has %q without '='; write Name=value,Name2=value2", item)
		}
		if err := scaler.CheckHeader(name, value); err != nil {
			return nil, fmt.Errorf("is wrong: %w", err)
		}
		canonical := http.CanonicalHeaderKey(name)
		if _, twice := out[canonical]; twice {
			return nil, fmt.Errorf("sets %s twice (header names are not case-sensitive)", canonical)
		}
		if err := allowed(canonical); err != nil {
			return nil, err
		}
		out[canonical] = value
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// parseThreshold reads a finite number. A number too small for a float64
// is refused rather than read as 0 (strconv reads 1e-400 as 0 without an
// error), and so is a subnormal one, which has lost most of its digits.
func parseThreshold(v string) (float64, error) {
	v = strings.TrimSpace(v)
	f, err := strconv.ParseFloat(v, 64)
	switch {
	case err != nil || math.IsNaN(f) || math.IsInf(f, 0):
		return 0, errors.New("is not a finite number")
	case f == 0 && nonZeroMantissa(v):
		return 0, errors.New("is too close to zero to be told from it; use 0 or a larger number")
	case f != 0 && math.Abs(f) < minNormal:
		return 0, errors.New("is too close to zero to be read exactly; use 0 or a larger number")
	}
	return f, nil
}

// minNormal is the smallest positive normal float64.
const minNormal = 0x1p-1022

// nonZeroMantissa reports whether a number ParseFloat accepted has a
// non-zero digit before its exponent.
func nonZeroMantissa(v string) bool {
	v = strings.TrimLeft(v, "+-")
	digits, exp := "123456789", "eE"
	if len(v) > 1 && v[0] == '0' && (v[1] == 'x' || v[1] == 'X') {
		v, digits, exp = v[2:], "123456789abcdefABCDEF", "pP"
	}
	if i := strings.IndexAny(v, exp); i >= 0 {
		v = v[:i]
	}
	return strings.ContainsAny(v, digits)
}

// joinErrors keeps the message on one line, so it fits an Event and a log
// line.
func joinErrors(errs []error) error {
	if len(errs) == 1 {
		return errs[0]
	}
	return multiError(errs)
}

type multiError []error

func (m multiError) Error() string {
	s := make([]string, len(m))
	for i, e := range m {
		s[i] = e.Error()
	}
	return strings.Join(s, "; ")
}

func (m multiError) Unwrap() []error { return m }

// CheckUptimeFilter says what is wrong with label matchers for the health
// query up{...}, if anything. Prometheus' own parser reads them, so that
// what passes here is what Prometheus accepts.
func CheckUptimeFilter(f string) error {
	if strings.TrimSpace(f) == "" {
		return errors.New(`is empty; it must be label matchers such as job="api"`)
	}
	if strings.ContainsAny(f, "{}\r\n") {
		return errors.New(`must be label matchers without braces, e.g. job="api"`)
	}
	matchers, err := promqlParser.ParseMetricSelector("up{" + f + "}")
	if err != nil {
		return fmt.Errorf(`is not a list of label matchers such as job="api": %s`, oneLine(err.Error()))
	}
	for _, m := range matchers {
		if m.Name == labels.MetricName && !(m.Type == labels.MatchEqual && m.Value == "up") {
			return errors.New("must not match on __name__: the health query reads up")
		}
	}
	return nil
}

// promqlParser is Prometheus' PromQL parser with its default options.
var promqlParser = parser.NewParser(parser.Options{})

// oneLine keeps a message on one line, for an Event and a log line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
