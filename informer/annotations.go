package informer

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/config"
	"golang.org/x/net/http/httpguts"

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
	// Allowed checks a server address against the operator's allow-list
	// and returns its normalized form.
	Allowed func(address string) (string, error)
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
	} else if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		bad(AnnotationThreshold, "is not a finite number")
	} else {
		cfg.Metadata.Threshold = f
	}

	if v, ok := annotations[AnnotationServerAddress]; ok {
		addr, err := d.Allowed(v)
		if err != nil {
			bad(AnnotationServerAddress, "is not an allowed http(s) Prometheus URL: "+err.Error())
		}
		cfg.Metadata.ServerAddress = addr
	}

	if v, ok := annotations[AnnotationUptimeFilter]; ok {
		if strings.ContainsAny(v, "{}\r\n") {
			bad(AnnotationUptimeFilter, "must be label matchers without braces, e.g. job=\"api\"")
		}
		cfg.Metadata.UptimeFilter = strings.TrimSpace(v)
	}

	if v, ok := annotations[AnnotationHeaders]; ok {
		h, err := parseHeaders(v)
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
// values may hold no control characters, and headers that carry
// credentials or framing (Authorization, Host, ...) are refused: credentials
// come only from the operator's flags or configuration file.
func parseHeaders(v string) (map[string]string, error) {
	out := map[string]string{}
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, value, ok := strings.Cut(item, "=")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		switch {
		case !ok:
			return nil, fmt.Errorf("has %q without '='; write Name=value,Name2=value2", item)
		case !httpguts.ValidHeaderFieldName(name):
			return nil, fmt.Errorf("has %q, which is not a valid header name", name)
		case strings.ContainsAny(value, "\r\n") || !httpguts.ValidHeaderFieldValue(value):
			return nil, fmt.Errorf("has a value for %s with control characters", name)
		}
		canonical := http.CanonicalHeaderKey(name)
		if _, reserved := config.ReservedHeaders[canonical]; reserved || canonical == "Cookie" {
			return nil, fmt.Errorf("sets %s, which zeroscaler does not allow from annotations", canonical)
		}
		out[canonical] = value
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
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
