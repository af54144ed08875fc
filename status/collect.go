package status

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/pager"

	"github.com/zeroscaler/zeroscaler/handler"
	"github.com/zeroscaler/zeroscaler/informer"
	"github.com/zeroscaler/zeroscaler/scaler"
)

// StateExcluded is a workload with zeroscaler.io/ annotations but no
// zeroscaler.io/query: the daemon runs no loop for it (if it put it to
// sleep, it wakes it once). The other states are the daemon's own.
const StateExcluded = "excluded"

// Component is the event source (and reporting controller) of the daemon's
// Events.
const Component = "zeroscaler"

// Row is one workload as the command shows it.
type Row struct {
	Namespace string    `json:"namespace"`
	Kind      string    `json:"kind"`
	Name      string    `json:"name"`
	UID       types.UID `json:"-"`
	// State is awake, asleep, paused, invalid or excluded.
	State string `json:"state"`
	// Problem says why an invalid workload is invalid, as the daemon's
	// InvalidScalingConfig Event does.
	Problem string `json:"problem,omitempty"`
	// Replicas is spec.replicas.
	Replicas int32 `json:"replicas"`
	// OriginalReplicas, Query and Threshold are the annotations as written.
	OriginalReplicas string `json:"originalReplicas,omitempty"`
	Query            string `json:"query,omitempty"`
	Threshold        string `json:"threshold,omitempty"`
	// AsleepSince is zeroscaler.io/scaled-to-zero-at of a workload at zero
	// that carries its original count.
	AsleepSince *time.Time `json:"asleepSince,omitempty"`
	// Asleep is set for such a workload even when its timestamp is
	// missing or does not parse.
	Asleep    bool   `json:"-"`
	LastEvent *Event `json:"lastEvent,omitempty"`
}

// Event is the last zeroscaler Event of a workload.
type Event struct {
	Type    string    `json:"type"`
	Reason  string    `json:"reason"`
	Message string    `json:"message"`
	Time    time.Time `json:"time"`
}

// pageSize is how many objects one list request returns, as kubectl's
// chunks.
const pageSize = 500

// Collect lists the Deployments and StatefulSets in namespace ("" for all)
// that match selector and carry zeroscaler.io/ annotations, sorted by
// namespace, kind and name.
func Collect(ctx context.Context, client kubernetes.Interface, namespace, selector string) ([]Row, error) {
	var rows []Row
	opts := metav1.ListOptions{LabelSelector: selector, Limit: pageSize}
	apps := client.AppsV1()
	lists := []struct {
		resource string
		list     pager.ListPageFunc
	}{
		{"deployments", func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return apps.Deployments(namespace).List(ctx, o)
		}},
		{"statefulsets", func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return apps.StatefulSets(namespace).List(ctx, o)
		}},
	}
	for _, l := range lists {
		err := pager.New(l.list).EachListItem(ctx, opts, func(obj runtime.Object) error {
			if r, ok := rowOf(obj); ok {
				rows = append(rows, r)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", l.resource, err)
		}
	}
	slices.SortFunc(rows, func(a, b Row) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Name, b.Name))
	})
	return rows, nil
}

// rowOf reads a Deployment or StatefulSet; ok is false for anything else
// and for a workload without zeroscaler.io/ annotations.
func rowOf(obj runtime.Object) (Row, bool) {
	var (
		kind     string
		meta     metav1.ObjectMeta
		replicas *int32
	)
	switch o := obj.(type) {
	case *appsv1.Deployment:
		kind, meta, replicas = "Deployment", o.ObjectMeta, o.Spec.Replicas
	case *appsv1.StatefulSet:
		kind, meta, replicas = "StatefulSet", o.ObjectMeta, o.Spec.Replicas
	default:
		return Row{}, false
	}
	ann := map[string]string{}
	for k, v := range meta.Annotations {
		if strings.HasPrefix(k, handler.AnnotationPrefix) {
			ann[k] = v
		}
	}
	if len(ann) == 0 {
		return Row{}, false
	}
	r := Row{
		Namespace:        meta.Namespace,
		Kind:             kind,
		Name:             meta.Name,
		UID:              meta.UID,
		Replicas:         1, // the API server's default for both kinds
		OriginalReplicas: ann[handler.AnnotationOriginalReplicas],
		Query:            strings.Join(strings.Fields(ann[informer.AnnotationQuery]), " "),
		Threshold:        ann[informer.AnnotationThreshold],
	}
	if replicas != nil {
		r.Replicas = *replicas
	}
	// As the daemon reads it: at zero with an original count (even one
	// that does not parse) is asleep by zeroscaler's hand.
	_, ours, _ := handler.ParseOriginalReplicas(ann)
	r.Asleep = ours && r.Replicas == 0
	if r.Asleep {
		if t, err := time.Parse(time.RFC3339, ann[handler.AnnotationScaledToZeroAt]); err == nil {
			r.AsleepSince = &t
		}
	}
	r.State, r.Problem = state(ann, r.Asleep)
	return r, true
}

// parseDefaults fill in what the daemon's flags would. Only the daemon
// knows its allow-list of servers, so any well-formed server address
// passes here; a workload the daemon refuses for its server shows it in its
// InvalidScalingConfig Event.
var parseDefaults = informer.Defaults{
	UptimeFilter:    `job="prometheus"`,
	CooldownPeriod:  5 * time.Minute,
	PollingInterval: 30 * time.Second,
	Servers:         anyServer{},
}

// anyServer stands for the daemon's allow-lists, which only the daemon
// knows: every well-formed address and header passes.
type anyServer struct{}

func (anyServer) Allowed(address string) (string, error) {
	n, err := scaler.NormalizeAddress(address)
	if err != nil {
		return "", fmt.Errorf("is not an allowed http(s) Prometheus URL: %w", err)
	}
	return n, nil
}

func (anyServer) CheckWorkloadHeader(string, string) error { return nil }

func (anyServer) CheckNamespace(string, string) error { return nil }

// state decides a workload's state from its zeroscaler.io/ annotations,
// with the informer's own parser.
func state(ann map[string]string, asleep bool) (state, problem string) {
	if _, ok := ann[informer.AnnotationQuery]; !ok {
		return StateExcluded, ""
	}
	cfg, err := informer.Parse(ann, parseDefaults)
	switch {
	case err != nil:
		return handler.StateInvalid, err.Error()
	case cfg.Paused:
		return handler.StatePaused, ""
	case asleep:
		return handler.StateAsleep, ""
	}
	return handler.StateAwake, ""
}

// Events holds the last zeroscaler Event of each workload.
type Events map[eventKey]Event

type eventKey struct {
	kind, namespace, name string
	uid                   types.UID
}

// LastEvents reads the zeroscaler Events in namespace ("" for all): those
// whose source component, or else reporting controller, is zeroscaler.
// The API server's "source" field selector means just that, so one request
// serves Events written through either Events API.
func LastEvents(ctx context.Context, client kubernetes.Interface, namespace string) (Events, error) {
	out := Events{}
	list := func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		return client.CoreV1().Events(namespace).List(ctx, o)
	}
	opts := metav1.ListOptions{FieldSelector: "source=" + Component, Limit: pageSize}
	err := pager.New(list).EachListItem(ctx, opts, func(obj runtime.Object) error {
		if e, ok := obj.(*corev1.Event); ok {
			out.add(e)
		}
		return nil
	})
	if err != nil {
		return out, fmt.Errorf("list events: %w", err)
	}
	return out, nil
}

func (es Events) add(e *corev1.Event) {
	// Checked here too: fakes and caches ignore field selectors.
	if e.Source.Component != Component && (e.Source.Component != "" || e.ReportingController != Component) {
		return
	}
	o := e.InvolvedObject
	k := eventKey{kind: o.Kind, namespace: o.Namespace, name: o.Name, uid: o.UID}
	t := eventTime(e)
	if old, ok := es[k]; ok && !t.After(old.Time) {
		return
	}
	es[k] = Event{Type: e.Type, Reason: e.Reason, Message: e.Message, Time: t}
}

// eventTime is when an Event last happened, whichever API wrote it.
func eventTime(e *corev1.Event) time.Time {
	switch {
	case e.Series != nil && !e.Series.LastObservedTime.IsZero():
		return e.Series.LastObservedTime.Time
	case !e.LastTimestamp.IsZero():
		return e.LastTimestamp.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	case !e.FirstTimestamp.IsZero():
		return e.FirstTimestamp.Time
	}
	return e.CreationTimestamp.Time
}

// For returns the last Event of the workload r, not of an earlier one of
// the same name: Events that name a UID must name r's.
func (es Events) For(r Row) *Event {
	k := eventKey{kind: r.Kind, namespace: r.Namespace, name: r.Name}
	byName, hasByName := es[k]
	k.uid = r.UID
	byUID, hasByUID := es[k]
	switch {
	case hasByUID && (!hasByName || byUID.Time.After(byName.Time)):
		return &byUID
	case hasByName:
		return &byName
	}
	return nil
}
