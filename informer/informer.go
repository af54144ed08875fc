// Package informer discovers annotated Deployments and StatefulSets with
// shared informers, keeps a lean cache of them and of their Namespaces'
// annotations, and tells the handler when a workload's configuration
// appears, changes or goes.
package informer

import (
	"context"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
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

// Informer watches workloads, and the Namespaces whose annotations apply
// to them, and serves them from its cache.
type Informer struct {
	client    kubernetes.Interface
	namespace string // --watch-namespace; "" for all
	factory   informers.SharedInformerFactory
	byKind    map[schema.GroupVersionKind]cache.SharedIndexInformer
	// nsFactory and namespaces watch Namespaces; nil unless
	// WatchNamespaces found that zeroscaler may.
	nsFactory  informers.SharedInformerFactory
	namespaces cache.SharedIndexInformer
	// regs are the event handlers' registrations: synced once each handler
	// has heard the whole initial list.
	regs     []cache.ResourceEventHandlerRegistration
	handler  Handler
	defaults Defaults
	// selector is --selector: with one, a workload relabelled out of it
	// looks deleted.
	selector string

	// mu is held while a workload's configuration is decided and told to
	// the handler, so that what the handler hears last is what the cache
	// and the groups show last, whichever informer's goroutine tells it.
	mu sync.Mutex
	// owed holds, per workload key, the count a released workload is to be
	// woken to while it stays at zero. When the user removes every
	// zeroscaler annotation at once, only that one update carries the
	// count; a later update (a label, a failed wake's retry outlived) must
	// not make the informer forget the wake.
	owed map[string]int32
	// groups holds, per group key (namespace/group), its members; memberOf
	// the group key of each member, by workload key.
	groups   map[string]*group
	memberOf map[string]string
}

// group is what the informer knows of a group: who is in it, and how many
// of them carry a query.
type group struct {
	members map[string]member
	queried int
}

type member struct {
	ref   handler.Ref
	query bool
}

// New sets up informers on Deployments and StatefulSets. Call Notify, then
// Start and WaitForCacheSync.
func New(client kubernetes.Interface, o Options) *Informer {
	i := &Informer{
		client:    client,
		namespace: o.Namespace,
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

// WatchNamespaces makes the informer apply the zeroscaler.io/ annotations
// of Namespaces to their workloads: every Namespace, or with
// --watch-namespace only that one. It first asks the API server whether
// zeroscaler may list and watch them; if not, it returns an error saying
// what is missing, and Namespace annotations are ignored (an informer
// without the right would never sync). Call it before Notify.
func (i *Informer) WatchNamespaces(ctx context.Context) error {
	what := "namespaces"
	if i.namespace != "" {
		what = "Namespace " + i.namespace
	}
	for _, verb := range []string{"list", "watch"} {
		review, err := i.client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: verb, Resource: "namespaces", Name: i.namespace,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("ask whether zeroscaler may %s %s: %w", verb, what, err)
		}
		if !review.Status.Allowed {
			return fmt.Errorf("zeroscaler may not %s %s (RBAC: get, list and watch on namespaces; see deploy/)", verb, what)
		}
	}
	opts := []informers.SharedInformerOption{informers.WithTransform(lean)}
	if i.namespace != "" {
		// A Namespace is cluster-scoped: one is watched by its name.
		selector := fields.OneTermEqualSelector("metadata.name", i.namespace).String()
		opts = append(opts, informers.WithTweakListOptions(func(lo *metav1.ListOptions) { lo.FieldSelector = selector }))
	}
	i.nsFactory = informers.NewSharedInformerFactoryWithOptions(i.client, 0, opts...)
	i.namespaces = i.nsFactory.Core().V1().Namespaces().Informer()
	return nil
}

// Notify makes the informer tell h about every workload's configuration.
func (i *Informer) Notify(h Handler) error {
	i.handler = h
	for gvk, inf := range i.byKind {
		reg, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
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
		i.regs = append(i.regs, reg)
	}
	if i.namespaces != nil {
		reg, err := i.namespaces.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) { i.namespaceChanged(nil, obj) },
			UpdateFunc: func(old, obj any) {
				i.namespaceChanged(old, obj)
			},
			DeleteFunc: func(obj any) {
				if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
					obj = d.Obj
				}
				i.namespaceChanged(obj, nil)
			},
		})
		if err != nil {
			return fmt.Errorf("add Namespace event handler: %w", err)
		}
		i.regs = append(i.regs, reg)
	}
	return nil
}

// Start starts the informers; they stop when ctx ends.
func (i *Informer) Start(ctx context.Context) {
	i.factory.Start(ctx.Done())
	if i.nsFactory != nil {
		i.nsFactory.Start(ctx.Done())
	}
}

// Shutdown waits for the informers' goroutines after ctx ended.
func (i *Informer) Shutdown() {
	i.factory.Shutdown()
	if i.nsFactory != nil {
		i.nsFactory.Shutdown()
	}
}

// WaitForCacheSync blocks until every cache is filled and every handler has
// heard the whole initial list, or ctx ends. It reports whether they all
// synced. Until the handlers have heard everything, a group may look as if
// it had no member with a query.
func (i *Informer) WaitForCacheSync(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), i.HasSynced)
}

// HasSynced reports whether every cache is filled and every handler has
// heard the whole initial list.
func (i *Informer) HasSynced() bool {
	for _, inf := range i.byKind {
		if !inf.HasSynced() {
			return false
		}
	}
	if i.namespaces != nil && !i.namespaces.HasSynced() {
		return false
	}
	for _, reg := range i.regs {
		if !reg.HasSynced() {
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
	var wakeTo int32
	if old, ok := toWorkload(gvk, oldObj); ok {
		wakeTo, _, _ = old.OriginalReplicas()
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	i.syncLocked(w, wakeTo)
}

// syncLocked decides w's configuration, tells the handler, and, if w's
// coming or going changed whether a group has a member with a query, tells
// it again about every other member of that group. wakeTo is the count the
// previous version of w recorded, if any.
func (i *Informer) syncLocked(w handler.Workload, wakeTo int32) {
	nsAnnotations := i.namespaceAnnotations(w.Namespace)
	managed, excluded := managedBy(w.Annotations, nsAnnotations)
	var cfg handler.Config
	var err error
	var groupKey string
	if managed {
		cfg, err = parse(w.Annotations, nsAnnotations, w.Namespace, i.defaults)
		if cfg.Group != "" {
			groupKey = w.Namespace + "/" + cfg.Group
		}
	}
	flipped := i.joinLocked(w.Ref, groupKey, managed && hasQuery(w.Annotations, nsAnnotations))

	if managed {
		i.forgiveLocked(w.Ref)
		if err == nil && groupKey != "" && i.groups[groupKey].queried == 0 {
			err = &FieldError{Annotation: AnnotationGroup, Value: cfg.Group, Reason: noQueryReason}
			cfg = handler.Config{Mode: handler.Invalid, Group: cfg.Group}
		}
		cfg.Err = err
		cfg.Ref = w.Ref
		i.handler.Sync(cfg)
	} else {
		i.releaseLocked(w, wakeTo, excluded)
	}

	for _, key := range flipped {
		i.resyncGroupLocked(key, w.Key())
	}
}

// noQueryReason says why a group without a member carrying a query is
// refused: nothing would ever decide for it.
const noQueryReason = "has no member with a " + AnnotationQuery + " annotation; give at least one member a query"

// releaseLocked handles a workload that is not (or no longer) managed. If
// we put it to sleep, it must be woken: with its recorded count, or the one
// its previous version carried (wakeTo) if the user removed every
// zeroscaler annotation at once. Marks left on a running workload are
// cleared.
func (i *Informer) releaseLocked(w handler.Workload, wakeTo int32, excluded bool) {
	_, marked, _ := w.OriginalReplicas()
	wakeTo = i.oweLocked(w, wakeTo)
	if marked || (w.Replicas == 0 && wakeTo > 0) {
		i.handler.Sync(handler.Config{Ref: w.Ref, Mode: handler.Released, WakeTo: wakeTo, Excluded: excluded})
		return
	}
	i.handler.Forget(w.Ref)
}

// managedBy reports whether a workload with these annotations, in a
// Namespace with nsAnnotations, is managed: it (or its Namespace) carries
// a query or names a group, and is not excluded.
func managedBy(own, nsAnnotations map[string]string) (managed, excluded bool) {
	v, ok := own[AnnotationExclude]
	if !ok {
		v, ok = nsAnnotations[AnnotationExclude]
	}
	if ok {
		// A value that is no boolean excludes nothing; parse reports it.
		excluded, _ = strconv.ParseBool(strings.TrimSpace(v))
	}
	if excluded {
		return false, true
	}
	for _, k := range []string{AnnotationQuery, AnnotationGroup} {
		if _, ok := own[k]; ok {
			return true, false
		}
		if _, ok := nsAnnotations[k]; ok {
			return true, false
		}
	}
	return false, false
}

func hasQuery(own, nsAnnotations map[string]string) bool {
	_, a := own[AnnotationQuery]
	_, b := nsAnnotations[AnnotationQuery]
	return a || b
}

// joinLocked makes ref a member of the group groupKey ("" for none),
// carrying a query or not, and returns the keys of the groups whose having
// a member with a query changed, and which still have members.
func (i *Informer) joinLocked(ref handler.Ref, groupKey string, query bool) []string {
	key := ref.Key()
	oldKey := i.memberOf[key]
	if oldKey == "" && groupKey == "" {
		return nil
	}
	if oldKey == groupKey && i.groups[groupKey].members[key].query == query {
		return nil
	}
	if i.groups == nil {
		i.groups, i.memberOf = map[string]*group{}, map[string]string{}
	}
	affected := []string{oldKey}
	if groupKey != oldKey {
		affected = append(affected, groupKey)
	}
	before := make([]bool, len(affected))
	for n, k := range affected {
		before[n] = i.groups[k] != nil && i.groups[k].queried > 0
	}
	if g := i.groups[oldKey]; g != nil {
		if g.members[key].query {
			g.queried--
		}
		delete(g.members, key)
		if len(g.members) == 0 {
			delete(i.groups, oldKey)
		}
		delete(i.memberOf, key)
	}
	if groupKey != "" {
		g := i.groups[groupKey]
		if g == nil {
			g = &group{members: map[string]member{}}
			i.groups[groupKey] = g
		}
		g.members[key] = member{ref: ref, query: query}
		if query {
			g.queried++
		}
		i.memberOf[key] = groupKey
	}
	var flipped []string
	for n, k := range affected {
		g := i.groups[k]
		if g != nil && before[n] != (g.queried > 0) {
			flipped = append(flipped, k)
		}
	}
	return flipped
}

// resyncGroupLocked tells the handler again about every member of a group
// but one (except, a workload key), as the cache shows them now.
func (i *Informer) resyncGroupLocked(groupKey, except string) {
	g := i.groups[groupKey]
	if g == nil {
		return
	}
	refs := make([]handler.Ref, 0, len(g.members))
	for key, m := range g.members {
		if key != except {
			refs = append(refs, m.ref)
		}
	}
	for _, ref := range refs {
		if w, ok := i.Get(ref); ok {
			i.syncLocked(w, 0)
		}
	}
}

// namespaceChanged tells the handler again about every workload of a
// Namespace whose zeroscaler annotations changed.
func (i *Informer) namespaceChanged(oldObj, obj any) {
	o, _ := oldObj.(*cached)
	n, _ := obj.(*cached)
	var name string
	var before, after map[string]string
	if o != nil {
		name, before = o.Name, o.Annotations
	}
	if n != nil {
		name, after = n.Name, n.Annotations
	}
	if name == "" || sameUserAnnotations(before, after) {
		return
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	for gvk, inf := range i.byKind {
		objs, err := inf.GetIndexer().ByIndex(cache.NamespaceIndex, name)
		if err != nil {
			continue
		}
		for _, obj := range objs {
			if w, ok := toWorkload(gvk, obj); ok {
				i.syncLocked(w, 0)
			}
		}
	}
}

func sameUserAnnotations(a, b map[string]string) bool {
	for _, k := range userAnnotations {
		va, oka := a[k]
		vb, okb := b[k]
		if oka != okb || va != vb {
			return false
		}
	}
	return true
}

// namespaceAnnotations returns the zeroscaler annotations of a Namespace,
// or nil if Namespaces are not watched or it carries none.
func (i *Informer) namespaceAnnotations(name string) map[string]string {
	if i.namespaces == nil {
		return nil
	}
	obj, exists, err := i.namespaces.GetIndexer().GetByKey(name)
	if err != nil || !exists {
		return nil
	}
	c, ok := obj.(*cached)
	if !ok {
		return nil
	}
	return c.Annotations
}

func (i *Informer) deleted(gvk schema.GroupVersionKind, obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	w, ok := toWorkload(gvk, obj)
	if !ok {
		return
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	i.forgiveLocked(w.Ref)
	flipped := i.joinLocked(w.Ref, "", false)
	// Relabelled out of --selector, a workload looks deleted. If we put it
	// to sleep it may still be there, asleep, with nobody to wake it: its
	// loop looks it up and wakes it, as if its annotations were removed.
	if _, marked, _ := w.OriginalReplicas(); marked && w.Replicas == 0 && i.selector != "" {
		i.handler.Sync(handler.Config{Ref: w.Ref, Mode: handler.Released, OutOfScope: true})
	} else {
		i.handler.Forget(w.Ref)
	}
	for _, key := range flipped {
		i.resyncGroupLocked(key, "")
	}
}

// oweLocked records that the unmanaged workload w is owed a wake to wakeTo,
// if that is above 0, or forgets the debt once w runs again. It returns the
// count w is owed now.
func (i *Informer) oweLocked(w handler.Workload, wakeTo int32) int32 {
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

// forgiveLocked forgets what a workload is owed: it is managed again, or
// gone.
func (i *Informer) forgiveLocked(ref handler.Ref) {
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
// metadata the daemon reads and spec.replicas; and of a Namespace, its name
// and zeroscaler annotations. A trimmed appsv1.Deployment
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
	case *corev1.Namespace:
		return &cached{ObjectMeta: leanMeta(o.ObjectMeta)}, nil
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
		if strings.HasPrefix(k, handler.AnnotationPrefix) {
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
