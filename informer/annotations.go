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

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/zeroscaler/zeroscaler/handler"
	"github.com/zeroscaler/zeroscaler/scaler"
	"github.com/zeroscaler/zeroscaler/schedule"
)

// Annotations users write on a Deployment or StatefulSet.
const (
	AnnotationQuery           = handler.AnnotationQuery
	AnnotationThreshold       = handler.AnnotationPrefix + "threshold"
	AnnotationServerAddress   = handler.AnnotationPrefix + "server-address"
	AnnotationUptimeFilter    = handler.AnnotationPrefix + "uptime-filter"
	AnnotationHeaders         = handler.AnnotationPrefix + "headers"
	AnnotationCooldownPeriod  = handler.AnnotationPrefix + "cooldown-period"
	AnnotationPollingInterval = handler.AnnotationPrefix + "polling-interval"
	AnnotationMinReplicas     = handler.AnnotationPrefix + "min-replicas"
	AnnotationPaused          = handler.AnnotationPrefix + "paused"
	AnnotationGroup           = handler.AnnotationPrefix + "group"
	AnnotationExclude         = handler.AnnotationPrefix + "exclude"
	AnnotationAwakeHours      = handler.AnnotationPrefix + "awake-hours"
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
	// CheckNamespace says whether workloads in namespace may query the
	// server at address (normalized; empty for the default): a server
	// whose tenant the operator chooses per Namespace answers only
	// Namespaces that have one.
	CheckNamespace(address, namespace string) error
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
// *FieldError; it also holds the server's refusal of the workload's
// Namespace (Servers.CheckNamespace), which is no annotation's fault.
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
		Metadata:       scaler.Metadata{UptimeFilter: d.UptimeFilter, Namespace: namespace},
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
	} else if f, err := parseThreshold(v); err != nil {
		bad(AnnotationThreshold, err.Error())
	} else {
		cfg.Metadata.Threshold = f
	}

	parseTuning(annotations, d, &cfg, bad)
	// A workload that asks a server must have a tenant there, if the
	// server's tenant is chosen per Namespace. Its annotations cannot
	// help it, so the error names none. Without Servers (tests of other
	// annotations) there is no tenant to check.
	if d.Servers != nil {
		if err := d.Servers.CheckNamespace(cfg.Metadata.ServerAddress, namespace); err != nil {
			errs = append(errs, err)
		}
	}
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
		if m.Name == model.MetricNameLabel && !(m.Type == labels.MatchEqual && m.Value == "up") {
			return errors.New("must not match on __name__: the health query reads up")
		}
	}
	return nil
}

// promqlParser is Prometheus' PromQL parser with its default options.
var promqlParser = parser.NewParser(parser.Options{})

// oneLine keeps a message on one line, for an Event and a log line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
