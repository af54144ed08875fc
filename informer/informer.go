// Package informer discovers annotated Deployments and StatefulSets with
// shared informers, keeps a lean cache of them, and tells the handler when a
// workload's configuration appears, changes or goes.
package informer

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/zeroscaler/zeroscaler/handler"
)

// Handler is told about configurations. *handler.ScaleHandler is one.
type Handler interface {
	Sync(handler.Config)
	Forget(handler.Ref)
}

// Options configure the informers.
type Options struct {
	// Namespace limits the watch to one namespace; empty watches all.
	Namespace string
	// Selector is a label selector narrowing the watch.
	Selector string
	Defaults Defaults
}

var (
	deploymentKind  = appsv1.SchemeGroupVersion.WithKind("Deployment")
	statefulSetKind = appsv1.SchemeGroupVersion.WithKind("StatefulSet")
)

// Informer watches workloads and serves them from its cache.
type Informer struct {
	factory  informers.SharedInformerFactory
	byKind   map[schema.GroupVersionKind]cache.SharedIndexInformer
	handler  Handler
	defaults Defaults
	// selector is --selector: with one, a workload relabelled out of it
	// looks deleted.
	selector string

	// owed holds, per workload key, the count a released workload is to be
	// woken to while it stays at zero. When the user removes every
	// zeroscaler annotation at once, only that one update carries the
	// count; a later update (a label, a failed wake's retry outlived) must
	// not make the informer forget the wake.
	mu   sync.Mutex
	owed map[string]int32
}

// New sets up informers on Deployments and StatefulSets. Call Notify, then
// Start and WaitForCacheSync.
func New(client kubernetes.Interface, o Options) *Informer {
	i := &Informer{
		factory: informers.NewSharedInformerFactoryWithOptions(client, 0,
			informers.WithNamespace(o.Namespace),
			informers.WithTweakListOptions(func(lo *metav1.ListOptions) { lo.LabelSelector = o.Selector }),
			informers.WithTransform(lean),
		),
		defaults: o.Defaults,
		selector: o.Selector,
	}
	i.byKind = map[schema.GroupVersionKind]cache.SharedIndexInformer{
		deploymentKind:  i.factory.Apps().V1().Deployments().Informer(),
		statefulSetKind: i.factory.Apps().V1().StatefulSets().Informer(),
	}
	return i
}

// Notify makes the informer tell h about every workload's configuration.
func (i *Informer) Notify(h Handler) error {
	i.handler = h
	for gvk, inf := range i.byKind {
		_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) { i.changed(gvk, nil, obj) },
			UpdateFunc: func(old, obj any) {
				if !sameForDaemon(gvk, old, obj) {
					i.changed(gvk, old, obj)
				}
			},
			DeleteFunc: func(obj any) { i.deleted(gvk, obj) },
		})
		if err != nil {
			return fmt.Errorf("add %s event handler: %w", gvk.Kind, err)
		}
	}
	return nil
}

// Start starts the informers; they stop when ctx ends.
func (i *Informer) Start(ctx context.Context) { i.factory.Start(ctx.Done()) }

// Shutdown waits for the informers' goroutines after ctx ended.
func (i *Informer) Shutdown() { i.factory.Shutdown() }

// WaitForCacheSync blocks until every cache is filled, or ctx ends. It
// reports whether they all synced.
func (i *Informer) WaitForCacheSync(ctx context.Context) bool {
	for _, ok := range i.factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return false
		}
	}
	return true
}

// HasSynced reports whether every cache is filled.
func (i *Informer) HasSynced() bool {
	for _, inf := range i.byKind {
		if !inf.HasSynced() {
			return false
		}
	}
	return true
}

// Get reads a workload from the cache.
func (i *Informer) Get(ref handler.Ref) (handler.Workload, bool) {
	inf, ok := i.byKind[ref.GroupVersionKind]
	if !ok {
		return handler.Workload{}, false
	}
	obj, exists, err := inf.GetIndexer().GetByKey(ref.Namespace + "/" + ref.Name)
	if err != nil || !exists {
		return handler.Workload{}, false
	}
	return toWorkload(ref.GroupVersionKind, obj)
}

func (i *Informer) changed(gvk schema.GroupVersionKind, oldObj, obj any) {
	w, ok := toWorkload(gvk, obj)
	if !ok {
		return
	}
	if _, managed := w.Annotations[AnnotationQuery]; managed {
		i.forgive(w.Ref)
		cfg, err := Parse(w.Annotations, i.defaults)
		if err != nil {
			cfg.Err = err
		}
		cfg.Ref = w.Ref
		i.handler.Sync(cfg)
		return
	}
	// Not (or no longer) managed. If we put it to sleep, it must be woken:
	// with its recorded count, or the one its previous version carried if
	// the user removed every zeroscaler annotation at once. Marks left on a
	// running workload are cleared.
	_, marked, _ := w.OriginalReplicas()
	var wakeTo int32
	if old, ok := toWorkload(gvk, oldObj); ok {
		wakeTo, _, _ = old.OriginalReplicas()
	}
	wakeTo = i.owe(w, wakeTo)
	if marked || (w.Replicas == 0 && wakeTo > 0) {
		i.handler.Sync(handler.Config{Ref: w.Ref, Mode: handler.Released, WakeTo: wakeTo})
		return
	}
	i.handler.Forget(w.Ref)
}

func (i *Informer) deleted(gvk schema.GroupVersionKind, obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	w, ok := toWorkload(gvk, obj)
	if !ok {
		return
	}
	i.forgive(w.Ref)
	// Relabelled out of --selector, a workload looks deleted. If we put it
	// to sleep it may still be there, asleep, with nobody to wake it: its
	// loop looks it up and wakes it, as if its annotations were removed.
	if _, marked, _ := w.OriginalReplicas(); marked && w.Replicas == 0 && i.selector != "" {
		i.handler.Sync(handler.Config{Ref: w.Ref, Mode: handler.Released, OutOfScope: true})
		return
	}
	i.handler.Forget(w.Ref)
}

// owe records that the unmanaged workload w is owed a wake to wakeTo, if
// that is above 0, or forgets the debt once w runs again. It returns the
// count w is owed now.
func (i *Informer) owe(w handler.Workload, wakeTo int32) int32 {
	i.mu.Lock()
	defer i.mu.Unlock()
	key := w.Key()
	switch {
	case w.Replicas > 0:
		delete(i.owed, key)
	case wakeTo > 0:
		if i.owed == nil {
			i.owed = map[string]int32{}
		}
		i.owed[key] = wakeTo
	default:
		wakeTo = i.owed[key]
	}
	return wakeTo
}

// forgive forgets what a workload is owed: it is managed again, or gone.
func (i *Informer) forgive(ref handler.Ref) {
	i.mu.Lock()
	defer i.mu.Unlock()
	delete(i.owed, ref.Key())
}

// sameForDaemon reports whether an update changed nothing the daemon reads
// (status-only updates, resyncs): no parsing, no locking for those.
func sameForDaemon(gvk schema.GroupVersionKind, oldObj, obj any) bool {
	o, ok1 := toWorkload(gvk, oldObj)
	n, ok2 := toWorkload(gvk, obj)
	return ok1 && ok2 && o.Replicas == n.Replicas && maps.Equal(o.Annotations, n.Annotations)
}

// cached is what the informers keep of a Deployment or StatefulSet: the
// metadata the daemon reads and spec.replicas. A trimmed appsv1.Deployment
// would still carry its empty pod template, status and spec fields (1.2 KB
// a value); this is a fifth of that.
type cached struct {
	metav1.ObjectMeta
	// Replicas is spec.replicas; nil means the API server's default, 1.
	Replicas *int32
}

// GetObjectKind and DeepCopyObject make a cached object a runtime.Object, as
// the informers' machinery expects of what it stores.
func (c *cached) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

func (c *cached) DeepCopyObject() runtime.Object {
	out := &cached{}
	c.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	if c.Replicas != nil {
		r := *c.Replicas
		out.Replicas = &r
	}
	return out
}

// lean is the informers' transform: it keeps only what the daemon reads
// (name, namespace, uid, resourceVersion, zeroscaler annotations,
// spec.replicas) before an object enters the cache.
func lean(obj any) (any, error) {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		return &cached{ObjectMeta: leanMeta(o.ObjectMeta), Replicas: o.Spec.Replicas}, nil
	case *appsv1.StatefulSet:
		return &cached{ObjectMeta: leanMeta(o.ObjectMeta), Replicas: o.Spec.Replicas}, nil
	}
	return obj, nil
}

func leanMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	out := metav1.ObjectMeta{
		Name:            m.Name,
		Namespace:       m.Namespace,
		UID:             m.UID,
		ResourceVersion: m.ResourceVersion,
	}
	for k, v := range m.Annotations {
		if strings.HasPrefix(k, Prefix) {
			if out.Annotations == nil {
				out.Annotations = map[string]string{}
			}
			out.Annotations[k] = v
		}
	}
	return out
}

// toWorkload reads a cached object; the informers hold nothing else, since
// lean transforms every object before it enters the cache or reaches a
// handler.
func toWorkload(gvk schema.GroupVersionKind, obj any) (handler.Workload, bool) {
	c, ok := obj.(*cached)
	if !ok {
		return handler.Workload{}, false
	}
	w := handler.Workload{
		Ref:             handler.Ref{GroupVersionKind: gvk, Namespace: c.Namespace, Name: c.Name},
		UID:             c.UID,
		ResourceVersion: c.ResourceVersion,
		Replicas:        1, // the API server's default for both kinds
		Annotations:     c.Annotations,
	}
	if c.Replicas != nil {
		w.Replicas = *c.Replicas
	}
	return w, true
}
