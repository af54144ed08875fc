package informer

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/config"
	"golang.org/x/net/http/httpguts"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/zeroscaler/zeroscaler/handler"
	"github.com/zeroscaler/zeroscaler/scaler"
	"github.com/zeroscaler/zeroscaler/schedule"
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
	AnnotationGroup           = "zeroscaler.io/group"
	AnnotationExclude         = "zeroscaler.io/exclude"
	AnnotationAwakeHours      = "zeroscaler.io/awake-hours"
)

// userAnnotations are the annotations users write, on a workload or on its
// Namespace; a Namespace's apply to each of its workloads that does not set
// its own. The daemon's own marks are not among them.
var userAnnotations = []string{
	AnnotationQuery, AnnotationThreshold, AnnotationServerAddress, AnnotationUptimeFilter, AnnotationHeaders,
	AnnotationCooldownPeriod, AnnotationPollingInterval, AnnotationMinReplicas, AnnotationPaused,
	AnnotationGroup, AnnotationExclude, AnnotationAwakeHours,
}

// NamespaceGroupPrefix starts the name of the group that a Namespace
// carrying zeroscaler.io/query makes of its workloads: "namespace:" and
// the Namespace's name. No zeroscaler.io/group value can take that name,
// since a group name has no colon.
const NamespaceGroupPrefix = "namespace:"

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
	// Namespace, if set, names the Namespace the value was inherited from.
	Namespace string
}

// Error reads `annotation NAME: "VALUE" REASON`, the text the admission
// policy in deploy/admission gives for the same value, followed by where
// an inherited value came from.
func (e *FieldError) Error() string {
	msg := fmt.Sprintf("annotation %s: %q %s", e.Annotation, e.Value, e.Reason)
	if e.Namespace != "" {
		msg += " (inherited from Namespace " + e.Namespace + ")"
	}
	return msg
}

// Parse reads a workload's annotations into its configuration. If any
// annotation is wrong, the returned error lists every wrong one, each a
// *FieldError.
func Parse(annotations map[string]string, d Defaults) (handler.Config, error) {
	return parse(annotations, nil, "", d)
}

// parse reads a workload's own annotations over those of its Namespace
// (namespace, nsAnnotations): each annotation the workload does not set is
// taken from the Namespace. A Namespace that carries a query makes its
// workloads one group, unless a workload names its own.
//
// On error the configuration is Mode Invalid and carries only Group and
// Excluded, when those parsed: an invalid member still belongs to its group.
func parse(own, nsAnnotations map[string]string, namespace string, d Defaults) (handler.Config, error) {
	annotations := own
	if len(nsAnnotations) > 0 {
		annotations = inherit(own, nsAnnotations)
	}
	cfg := handler.Config{
		Mode:           handler.Managed,
		CooldownPeriod: d.CooldownPeriod,
		PollingPeriod:  d.PollingInterval,
		MinReplicas:    1,
		Metadata:       scaler.Metadata{UptimeFilter: d.UptimeFilter},
	}
	var errs []error
	bad := func(annotation, reason string) {
		fe := &FieldError{Annotation: annotation, Value: annotations[annotation], Reason: reason}
		if _, set := own[annotation]; !set {
			fe.Namespace = namespace
		}
		errs = append(errs, fe)
	}

	if v, ok := annotations[AnnotationGroup]; ok {
		g := strings.TrimSpace(v)
		if len(validation.IsDNS1123Label(g)) > 0 {
			bad(AnnotationGroup, groupNameReason)
		} else {
			cfg.Group = g
		}
	} else if _, ok := nsAnnotations[AnnotationQuery]; ok {
		cfg.Group = NamespaceGroupPrefix + namespace
	}

	if v, ok := annotations[AnnotationExclude]; ok {
		x, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			bad(AnnotationExclude, notBooleanReason)
		}
		cfg.Excluded = x
	}

	if v, ok := annotations[AnnotationAwakeHours]; ok {
		h, err := schedule.Parse(v)
		if err != nil {
			bad(AnnotationAwakeHours, awakeHoursReason+": "+err.Error())
		}
		cfg.AwakeHours = h
	}

	// A group member may leave the deciding to others: with no query, it
	// has no threshold either.
	if _, ok := annotations[AnnotationQuery]; !ok && cfg.Group != "" {
		parseTuning(annotations, d, &cfg, bad)
		return done(cfg, errs)
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

	parseTuning(annotations, d, &cfg, bad)
	return done(cfg, errs)
}

// done returns cfg, or, if errs holds any, an Invalid configuration that
// keeps only what tells where the workload belongs.
func done(cfg handler.Config, errs []error) (handler.Config, error) {
	if len(errs) > 0 {
		return handler.Config{Mode: handler.Invalid, Group: cfg.Group, Excluded: cfg.Excluded}, joinErrors(errs)
	}
	return cfg, nil
}

// parseTuning reads the optional annotations every managed workload may
// carry, query or not.
func parseTuning(annotations map[string]string, d Defaults, cfg *handler.Config, bad func(annotation, reason string)) {
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
			bad(AnnotationPaused, notBooleanReason)
		}
		cfg.Paused = p
	}
}

// Reasons shared with the admission policy in deploy/admission, which
// gives the same text for the same value.
const (
	notBooleanReason = `is not a boolean ("true" or "false")`
	groupNameReason  = "is not a group name: lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63 characters"
	awakeHoursReason = `is not office hours such as "Mon-Fri 08:00-19:00 Europe/Berlin"`
)

// inherit returns own over the user annotations of a Namespace.
func inherit(own, nsAnnotations map[string]string) map[string]string {
	out := make(map[string]string, len(own)+len(nsAnnotations))
	for _, k := range userAnnotations {
		if v, ok := nsAnnotations[k]; ok {
			out[k] = v
		}
	}
	maps.Copy(out, own)
	return out
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
