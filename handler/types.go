package handler

import (
	"errors"
	"reflect"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"

	"github.com/zeroscaler/zeroscaler/scaler"
	"github.com/zeroscaler/zeroscaler/schedule"
)

// AnnotationPrefix is shared by every zeroscaler annotation; the cache keeps
// only annotations with it.
const AnnotationPrefix = "zeroscaler.io/"

// AnnotationQuery holds a workload's PromQL query; the informer reads the
// other annotations users write.
const AnnotationQuery = AnnotationPrefix + "query"

// Annotations the daemon writes on a workload it put to sleep. They are the
// only state zeroscaler keeps: everything else is rebuilt after a restart.
const (
	AnnotationOriginalReplicas = AnnotationPrefix + "original-replicas"
	AnnotationScaledToZeroAt   = AnnotationPrefix + "scaled-to-zero-at"
)

// Ref names one workload.
type Ref struct {
	schema.GroupVersionKind
	Namespace string
	Name      string
}

// Key is unique per workload: Kind/namespace/name.
func (r Ref) Key() string { return r.Kind + "/" + r.Namespace + "/" + r.Name }

// Workload is what a loop reads of a workload at each check, and nothing
// more.
type Workload struct {
	Ref
	UID             types.UID
	ResourceVersion string
	// Replicas is spec.replicas.
	Replicas int32
	// Annotations holds only the zeroscaler.io/ annotations.
	Annotations map[string]string
}

// OriginalReplicas returns the count recorded before the daemon scaled the
// workload to zero. ok is false if none was recorded; err is set if the
// recorded value is not a positive integer.
func (w Workload) OriginalReplicas() (n int32, ok bool, err error) {
	return ParseOriginalReplicas(w.Annotations)
}

// ParseOriginalReplicas reads AnnotationOriginalReplicas.
func ParseOriginalReplicas(annotations map[string]string) (int32, bool, error) {
	v, ok := annotations[AnnotationOriginalReplicas]
	if !ok {
		return 0, false, nil
	}
	n, err := strconv.ParseInt(v, 10, 32)
	if err != nil || n < 1 {
		return 0, true, errors.New("annotation " + AnnotationOriginalReplicas + ": " + strconv.Quote(v) + " is not a positive integer")
	}
	return int32(n), true, nil
}

// workloadFrom reads a Workload from an object as the API server returns
// it, keeping only the zeroscaler.io/ annotations, as the cache does.
func workloadFrom(ref Ref, u *unstructured.Unstructured) Workload {
	w := Workload{Ref: ref, UID: u.GetUID(), ResourceVersion: u.GetResourceVersion(), Replicas: 1}
	if n, found, _ := unstructured.NestedInt64(u.Object, "spec", "replicas"); found {
		w.Replicas = int32(n)
	}
	for k, v := range u.GetAnnotations() {
		if strings.HasPrefix(k, AnnotationPrefix) {
			if w.Annotations == nil {
				w.Annotations = map[string]string{}
			}
			w.Annotations[k] = v
		}
	}
	return w
}

func (w Workload) objectReference() *corev1.ObjectReference {
	apiVersion, kind := w.GroupVersionKind.ToAPIVersionAndKind()
	return &corev1.ObjectReference{
		APIVersion: apiVersion,
		Kind:       kind,
		Namespace:  w.Namespace,
		Name:       w.Name,
		UID:        w.UID,
	}
}

// Mode says what the handler should do with a workload.
type Mode int

const (
	// Managed workloads are scaled by their metric.
	Managed Mode = iota
	// Invalid workloads have an annotation that does not parse; Err says
	// which. Nothing is scaled, except that a workload the daemon put to
	// sleep is woken (availability beats savings).
	Invalid
	// Released workloads lost their zeroscaler.io/query annotation; if the
	// daemon put one to sleep, it is woken once.
	Released
)

// Config is one workload's configuration as parsed from its annotations.
type Config struct {
	Ref
	Mode Mode
	// Err names the annotation that is wrong and why (Mode Invalid).
	Err error

	Metadata       scaler.Metadata
	CooldownPeriod time.Duration
	PollingPeriod  time.Duration
	// MinReplicas is what a sleeping workload wakes to when no original
	// count was recorded.
	MinReplicas int32
	Paused      bool
	// WakeTo, if set, is an original count remembered from an earlier
	// version of the object, used when the annotation itself is gone.
	WakeTo int32
	// OutOfScope is set on a Released workload that left the informers'
	// view (relabelled out of --selector) while asleep: its loop reads it
	// from the API server, since the cache no longer holds it.
	OutOfScope bool

	// Group names the group the workload belongs to, "" if none. Names are
	// unique within a namespace (key a group by Namespace and Group): a
	// zeroscaler.io/group value, or "namespace:" and the namespace's name
	// for the group a Namespace carrying zeroscaler.io/query makes of its
	// workloads. A Managed member may have no query (Metadata.Query ""):
	// it sleeps and wakes with the others and decides nothing. The
	// informer makes every member of a group without any member carrying
	// a query Invalid, with an error naming the group. Group is kept on
	// Invalid configurations too: an invalid member keeps its group awake.
	Group string
	// AwakeHours, if set, are office hours: inside them the workload (or
	// its group) never sleeps, and one asleep is woken at their start.
	AwakeHours *schedule.Hours
	// Excluded is set (zeroscaler.io/exclude: "true", on the workload or
	// inherited from its Namespace) on a workload zeroscaler must leave
	// alone: it comes as Released if the daemon put it to sleep, so that it
	// is woken, and is forgotten otherwise.
	Excluded bool
}

// Equal reports whether two configurations would run the same loop.
func (c Config) Equal(o Config) bool {
	if (c.Err == nil) != (o.Err == nil) || (c.Err != nil && c.Err.Error() != o.Err.Error()) {
		return false
	}
	c.Err, o.Err = nil, nil
	return reflect.DeepEqual(c, o)
}
