package informer

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/zeroscaler/zeroscaler/handler"
	"github.com/zeroscaler/zeroscaler/scaler"
)

// recordingHandler records what the informer tells the handler.
type recordingHandler struct {
	mu    sync.Mutex
	calls []handlerCall
}

// handlerCall is one Sync (cfg set) or Forget (ref only).
type handlerCall struct {
	forget bool
	cfg    handler.Config
	ref    handler.Ref
}

func (c handlerCall) String() string {
	if c.forget {
		return "Forget(" + c.ref.Key() + ")"
	}
	return fmt.Sprintf("Sync(%s mode=%d wakeTo=%d err=%v)", c.cfg.Key(), c.cfg.Mode, c.cfg.WakeTo, c.cfg.Err)
}

func (r *recordingHandler) Sync(cfg handler.Config) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, handlerCall{cfg: cfg, ref: cfg.Ref})
}

func (r *recordingHandler) Forget(ref handler.Ref) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, handlerCall{forget: true, ref: ref})
}

func (r *recordingHandler) take() []handlerCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.calls
	r.calls = nil
	return out
}

var informerTestDefaults = Defaults{
	UptimeFilter:    `job="prometheus"`,
	CooldownPeriod:  5 * time.Minute,
	PollingInterval: 30 * time.Second,
	Servers:         testServers("http://prometheus:9090"),
}

// testServers allows one Prometheus, and the workload header X-Scope-OrgID.
func testServers(address string) *scaler.Servers {
	s, err := scaler.NewServers(scaler.Options{DefaultAddress: address, AllowedWorkloadHeaders: []string{"X-Scope-OrgID"}, QueryTimeout: time.Second, MaxConcurrentQueries: 1})
	if err != nil {
		panic(err)
	}
	return s
}

// fullDeployment is a Deployment as the API server sends it, with
// everything the cache should not keep.
func fullDeployment(name string, replicas *int32, annotations map[string]string) *appsv1.Deployment {
	a := map[string]string{
		"kubectl.kubernetes.io/last-applied-configuration": strings.Repeat("x", 1000),
		"deployment.kubernetes.io/revision":                "7",
	}
	for k, v := range annotations {
		a[k] = v
	}
	return &appsv1.Deployment{
		TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: "shop", UID: types.UID("uid-" + name), ResourceVersion: "42", Generation: 3,
			Labels:        map[string]string{"app": name},
			Annotations:   a,
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply}},
			Finalizers:    []string{"example.com/keep"},
		},
		Spec: appsv1.DeploymentSpec{
			Replicas: replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "nginx"}}},
			},
		},
		Status: appsv1.DeploymentStatus{Replicas: 2, ReadyReplicas: 2},
	}
}

func fullStatefulSet(name string, replicas *int32, annotations map[string]string) *appsv1.StatefulSet {
	return &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: "shop", UID: types.UID("uid-" + name), ResourceVersion: "43",
			Labels:        map[string]string{"app": name},
			Annotations:   annotations,
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "helm"}},
		},
		Spec: appsv1.StatefulSetSpec{
			Replicas:    replicas,
			ServiceName: name,
			Template:    corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "db", Image: "postgres"}}}},
		},
		Status: appsv1.StatefulSetStatus{Replicas: 1},
	}
}

func int32p(n int32) *int32 { return &n }

func TestLean(t *testing.T) {
	ours := map[string]string{
		AnnotationQuery:                    "sum(rate(x[1m]))",
		AnnotationThreshold:                "0.1",
		handler.AnnotationOriginalReplicas: "2",
	}
	tests := []struct {
		name string
		in   any
		want any
	}{
		{
			name: "deployment",
			in:   fullDeployment("web", int32p(2), ours),
			want: &cached{
				ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", UID: "uid-web", ResourceVersion: "42", Annotations: ours},
				Replicas:   int32p(2),
			},
		},
		{
			name: "deployment without our annotations",
			in:   fullDeployment("web", nil, nil),
			want: &cached{
				ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", UID: "uid-web", ResourceVersion: "42"},
			},
		},
		{
			name: "statefulset",
			in:   fullStatefulSet("db", int32p(0), map[string]string{AnnotationPaused: "true", "helm.sh/chart": "db-1"}),
			want: &cached{
				ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "shop", UID: "uid-db", ResourceVersion: "43",
					Annotations: map[string]string{AnnotationPaused: "true"}},
				Replicas: int32p(0),
			},
		},
		{
			name: "anything else passes through",
			in:   &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "c", Labels: map[string]string{"a": "b"}}},
			want: &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "c", Labels: map[string]string{"a": "b"}}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := fmt.Sprintf("%#v", tc.in)
			got, err := lean(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("lean =\n %#v\nwant\n %#v", got, tc.want)
			}
			if after := fmt.Sprintf("%#v", tc.in); after != before {
				t.Error("lean changed its input")
			}
		})
	}
}

func TestToWorkload(t *testing.T) {
	tests := []struct {
		name   string
		obj    any
		want   handler.Workload
		wantOK bool
	}{
		{
			name:   "deployment",
			obj:    must(lean(fullDeployment("web", int32p(3), map[string]string{AnnotationQuery: "q"}))),
			wantOK: true,
			want: handler.Workload{
				Ref: handler.Ref{GroupVersionKind: deploymentKind, Namespace: "shop", Name: "web"},
				UID: "uid-web", ResourceVersion: "42", Replicas: 3,
				Annotations: map[string]string{AnnotationQuery: "q"},
			},
		},
		{
			name:   "replicas unset means the default, 1",
			obj:    must(lean(fullDeployment("web", nil, nil))),
			wantOK: true,
			want: handler.Workload{
				Ref: handler.Ref{GroupVersionKind: deploymentKind, Namespace: "shop", Name: "web"},
				UID: "uid-web", ResourceVersion: "42", Replicas: 1,
			},
		},
		{
			name:   "statefulset at zero",
			obj:    must(lean(fullStatefulSet("db", int32p(0), map[string]string{handler.AnnotationOriginalReplicas: "2"}))),
			wantOK: true,
			want: handler.Workload{
				Ref: handler.Ref{GroupVersionKind: statefulSetKind, Namespace: "shop", Name: "db"},
				UID: "uid-db", ResourceVersion: "43", Replicas: 0,
				Annotations: map[string]string{handler.AnnotationOriginalReplicas: "2"},
			},
		},
		{name: "not a workload", obj: &corev1.ConfigMap{}},
		{name: "nil", obj: nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			gvk := deploymentKind
			if tc.wantOK {
				gvk = tc.want.GroupVersionKind
			}
			got, ok := toWorkload(gvk, tc.obj)
			if ok != tc.wantOK {
				t.Fatalf("ok = %v, want %v", ok, tc.wantOK)
			}
			if tc.wantOK && !reflect.DeepEqual(got, tc.want) {
				t.Errorf("toWorkload =\n %#v\nwant\n %#v", got, tc.want)
			}
		})
	}
}

func must(obj any, err error) any {
	if err != nil {
		panic(err)
	}
	return obj
}

// sleeping returns the annotations of a workload the daemon put to sleep,
// plus extra ones.
func sleeping(extra map[string]string) map[string]string {
	a := map[string]string{
		handler.AnnotationOriginalReplicas: "3",
		handler.AnnotationScaledToZeroAt:   "2026-01-01T00:00:00Z",
	}
	for k, v := range extra {
		a[k] = v
	}
	return a
}

var managedAnnotations = map[string]string{AnnotationQuery: "sum(rate(http_requests_total[2m]))", AnnotationThreshold: "0.5"}

func TestChanged(t *testing.T) {
	web := handler.Ref{GroupVersionKind: deploymentKind, Namespace: "shop", Name: "web"}
	db := handler.Ref{GroupVersionKind: statefulSetKind, Namespace: "shop", Name: "db"}
	managedWeb := handler.Config{
		Ref:  web,
		Mode: handler.Managed,
		Metadata: scaler.Metadata{
			Query:        "sum(rate(http_requests_total[2m]))",
			Threshold:    0.5,
			UptimeFilter: `job="prometheus"`,
			Namespace:    "shop",
		},
		CooldownPeriod: 5 * time.Minute,
		PollingPeriod:  30 * time.Second,
		MinReplicas:    1,
	}
	merge := func(maps ...map[string]string) map[string]string {
		out := map[string]string{}
		for _, m := range maps {
			for k, v := range m {
				out[k] = v
			}
		}
		return out
	}
	tests := []struct {
		name     string
		old, obj any
		want     []handlerCall
		// wantErr are fragments of the Invalid configuration's error.
		wantErr []string
	}{
		{
			name: "annotated deployment added",
			obj:  fullDeployment("web", int32p(2), managedAnnotations),
			want: []handlerCall{{cfg: managedWeb}},
		},
		{
			name: "status-only update: the same configuration",
			old:  fullDeployment("web", int32p(2), managedAnnotations),
			obj:  fullDeployment("web", int32p(2), managedAnnotations),
			want: []handlerCall{{cfg: managedWeb}},
		},
		{
			name: "sleeping managed workload",
			obj:  fullDeployment("web", int32p(0), merge(managedAnnotations, sleeping(nil))),
			want: []handlerCall{{cfg: managedWeb}},
		},
		{
			name: "every optional annotation",
			obj: fullStatefulSet("db", int32p(1), merge(managedAnnotations, map[string]string{
				AnnotationServerAddress:   "http://prometheus:9090/",
				AnnotationUptimeFilter:    `job="api"`,
				AnnotationHeaders:         "X-Scope-OrgID=team-a",
				AnnotationCooldownPeriod:  "10m",
				AnnotationPollingInterval: "5s",
				AnnotationMinReplicas:     "2",
				AnnotationPaused:          "true",
			})),
			want: []handlerCall{{cfg: handler.Config{
				Ref:  db,
				Mode: handler.Managed,
				Metadata: scaler.Metadata{
					ServerAddress: "http://prometheus:9090",
					Query:         "sum(rate(http_requests_total[2m]))",
					Threshold:     0.5,
					UptimeFilter:  `job="api"`,
					Headers:       map[string]string{"X-Scope-Orgid": "team-a"},
					Namespace:     "shop",
				},
				CooldownPeriod: 10 * time.Minute,
				PollingPeriod:  5 * time.Second,
				MinReplicas:    2,
				Paused:         true,
			}}},
		},
		{
			name:    "bad threshold",
			obj:     fullDeployment("web", int32p(2), map[string]string{AnnotationQuery: "q", AnnotationThreshold: "lots"}),
			want:    []handlerCall{{cfg: handler.Config{Ref: web, Mode: handler.Invalid}}},
			wantErr: []string{AnnotationThreshold, `"lots"`},
		},
		{
			name: "several bad annotations, one message",
			obj: fullDeployment("web", int32p(0), merge(sleeping(nil), map[string]string{
				AnnotationQuery: " ", AnnotationThreshold: "1", AnnotationCooldownPeriod: "10ms", AnnotationServerAddress: "http://evil:9090",
			})),
			want:    []handlerCall{{cfg: handler.Config{Ref: web, Mode: handler.Invalid}}},
			wantErr: []string{AnnotationQuery, AnnotationCooldownPeriod, AnnotationServerAddress, "--allowed-server-address"},
		},
		{
			name: "query removed from a sleeping workload",
			old:  fullDeployment("web", int32p(0), merge(managedAnnotations, sleeping(nil))),
			obj:  fullDeployment("web", int32p(0), sleeping(map[string]string{AnnotationThreshold: "0.5"})),
			want: []handlerCall{{cfg: handler.Config{Ref: web, Mode: handler.Released, WakeTo: 3}}},
		},
		{
			name: "every annotation removed from a sleeping workload",
			old:  fullDeployment("web", int32p(0), merge(managedAnnotations, sleeping(nil))),
			obj:  fullDeployment("web", int32p(0), nil),
			want: []handlerCall{{cfg: handler.Config{Ref: web, Mode: handler.Released, WakeTo: 3}}},
		},
		{
			name: "sleeping workload without a query found at start",
			obj:  fullStatefulSet("db", int32p(0), sleeping(nil)),
			want: []handlerCall{{cfg: handler.Config{Ref: db, Mode: handler.Released}}},
		},
		{
			name: "unmarked workload loses its annotations",
			old:  fullDeployment("web", int32p(2), managedAnnotations),
			obj:  fullDeployment("web", int32p(2), nil),
			want: []handlerCall{{forget: true, ref: web}},
		},
		{
			name: "running workload with stale marks loses its query",
			old:  fullDeployment("web", int32p(2), merge(managedAnnotations, sleeping(nil))),
			obj:  fullDeployment("web", int32p(2), sleeping(nil)),
			// Released, so that the handler clears the stale marks.
			want: []handlerCall{{cfg: handler.Config{Ref: web, Mode: handler.Released, WakeTo: 3}}},
		},
		{
			name: "at zero, never put there by zeroscaler, loses its annotations",
			old:  fullDeployment("web", int32p(0), managedAnnotations),
			obj:  fullDeployment("web", int32p(0), nil),
			want: []handlerCall{{forget: true, ref: web}},
		},
		{
			name: "unannotated workload added",
			obj:  fullDeployment("web", int32p(0), nil),
			want: []handlerCall{{forget: true, ref: web}},
		},
		{
			name: "not a workload",
			obj:  &corev1.ConfigMap{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// The informer only ever sees lean objects.
			gvk := deploymentKind
			if _, ok := tc.obj.(*appsv1.StatefulSet); ok {
				gvk = statefulSetKind
			}
			old, obj := tc.old, tc.obj
			if old != nil {
				old = must(lean(old))
			}
			obj = must(lean(obj))
			rec := &recordingHandler{}
			i := &Informer{handler: rec, defaults: informerTestDefaults}
			i.changed(gvk, old, obj)

			got := rec.take()
			if len(got) != len(tc.want) {
				t.Fatalf("calls = %v, want %v", got, tc.want)
			}
			for n, want := range tc.want {
				g := got[n]
				if g.forget != want.forget || g.ref != want.ref && want.forget {
					t.Errorf("call %d = %v, want %v", n, g, want)
					continue
				}
				if want.forget {
					continue
				}
				if tc.wantErr != nil {
					if g.cfg.Err == nil {
						t.Fatalf("call %d = %v, want an error", n, g)
					}
					for _, f := range tc.wantErr {
						if !strings.Contains(g.cfg.Err.Error(), f) {
							t.Errorf("error %q does not mention %q", g.cfg.Err, f)
						}
					}
					if strings.ContainsAny(g.cfg.Err.Error(), "\r\n") {
						t.Errorf("error %q spans lines; it must fit an Event", g.cfg.Err)
					}
					g.cfg.Err = nil
				}
				if !reflect.DeepEqual(g.cfg, want.cfg) {
					t.Errorf("call %d:\n got  %+v\n want %+v", n, g.cfg, want.cfg)
				}
			}
		})
	}
}

// An update that changes nothing the daemon reads yields an Equal
// configuration, so the handler keeps the loop running.
func TestChangedTwiceIsEqual(t *testing.T) {
	for _, annotations := range []map[string]string{
		managedAnnotations,
		{AnnotationQuery: "q", AnnotationThreshold: "1", AnnotationHeaders: "A=1,B=2", AnnotationServerAddress: "http://prometheus:9090"},
		{AnnotationQuery: "q", AnnotationThreshold: "x", AnnotationPaused: "maybe"},
	} {
		rec := &recordingHandler{}
		i := &Informer{handler: rec, defaults: informerTestDefaults}
		a := fullDeployment("web", int32p(2), annotations)
		b := fullDeployment("web", int32p(2), annotations)
		b.ResourceVersion, b.Status.ReadyReplicas = "43", 1
		i.changed(deploymentKind, nil, must(lean(a)))
		i.changed(deploymentKind, must(lean(a)), must(lean(b)))
		got := rec.take()
		if len(got) != 2 || got[0].forget || got[1].forget || !got[0].cfg.Equal(got[1].cfg) {
			t.Errorf("%v: calls %v, want two Equal Syncs", annotations, got)
		}
	}
}

func TestDeleted(t *testing.T) {
	web := handler.Ref{GroupVersionKind: deploymentKind, Namespace: "shop", Name: "web"}
	db := handler.Ref{GroupVersionKind: statefulSetKind, Namespace: "shop", Name: "db"}
	tests := []struct {
		name     string
		selector string
		gvk      schema.GroupVersionKind
		obj      any
		want     []handlerCall
	}{
		{name: "deployment", gvk: deploymentKind, obj: must(lean(fullDeployment("web", int32p(0), sleeping(nil)))), want: []handlerCall{{forget: true, ref: web}}},
		{
			// With a selector, "deleted" may be "relabelled out of it": a
			// workload we put to sleep is looked up and woken.
			name: "asleep, with a selector", selector: "team=web", gvk: deploymentKind,
			obj:  must(lean(fullDeployment("web", int32p(0), sleeping(managedAnnotations)))),
			want: []handlerCall{{cfg: handler.Config{Ref: web, Mode: handler.Released, OutOfScope: true}, ref: web}},
		},
		{
			name: "awake, with a selector", selector: "team=web", gvk: deploymentKind,
			obj:  must(lean(fullDeployment("web", int32p(2), managedAnnotations))),
			want: []handlerCall{{forget: true, ref: web}},
		},
		{name: "statefulset", gvk: statefulSetKind, obj: must(lean(fullStatefulSet("db", int32p(1), nil))), want: []handlerCall{{forget: true, ref: db}}},
		{
			name: "final state unknown",
			gvk:  deploymentKind,
			obj:  cache.DeletedFinalStateUnknown{Key: "shop/web", Obj: must(lean(fullDeployment("web", int32p(2), managedAnnotations)))},
			want: []handlerCall{{forget: true, ref: web}},
		},
		{name: "final state unknown without an object", gvk: deploymentKind, obj: cache.DeletedFinalStateUnknown{Key: "shop/web"}},
		{name: "not a workload", gvk: deploymentKind, obj: &corev1.ConfigMap{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recordingHandler{}
			i := &Informer{handler: rec, defaults: informerTestDefaults, selector: tc.selector}
			i.deleted(tc.gvk, tc.obj)
			if got := rec.take(); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("calls = %v, want %v", got, tc.want)
			}
		})
	}
}

// The informers, wired to a fake clientset: the handler hears of every
// annotated workload and the cache holds lean objects.
func TestInformerWithFakeClientset(t *testing.T) {
	// NewSimpleClientset, not NewClientset: the latter builds a
	// server-side-apply tracker from the OpenAPI schemas, which costs about
	// a second and which nothing here uses.
	client := k8sfake.NewSimpleClientset( //nolint:staticcheck // see above
		fullDeployment("web", int32p(2), managedAnnotations),
		fullDeployment("plain", int32p(1), nil),
		fullStatefulSet("db", int32p(0), sleeping(nil)),
	)
	inf := New(client, Options{Defaults: informerTestDefaults})
	rec := &recordingHandler{}
	if err := inf.Notify(rec); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer func() {
		cancel()
		inf.Shutdown()
	}()
	inf.Start(ctx)
	if !inf.WaitForCacheSync(ctx) || !inf.HasSynced() {
		t.Fatal("caches did not sync")
	}

	// Handlers hear of the initial list asynchronously, after the sync.
	var calls []handlerCall
	for len(calls) < 3 && ctx.Err() == nil {
		calls = append(calls, rec.take()...)
		time.Sleep(time.Millisecond)
	}
	got := map[string]string{}
	for _, c := range calls {
		switch {
		case c.forget:
			got[c.ref.Key()] = "forget"
		case c.cfg.Mode == handler.Managed:
			got[c.ref.Key()] = "managed"
		case c.cfg.Mode == handler.Released:
			got[c.ref.Key()] = "released"
		default:
			got[c.ref.Key()] = fmt.Sprint(c.cfg.Mode)
		}
	}
	want := map[string]string{
		"Deployment/shop/web":   "managed",
		"Deployment/shop/plain": "forget",
		"StatefulSet/shop/db":   "released",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("handler heard %v, want %v", got, want)
	}

	w, ok := inf.Get(handler.Ref{GroupVersionKind: deploymentKind, Namespace: "shop", Name: "web"})
	if !ok {
		t.Fatal("web not in the cache")
	}
	if w.Replicas != 2 || !reflect.DeepEqual(w.Annotations, managedAnnotations) || w.UID != "uid-web" {
		t.Errorf("cached web = %+v", w)
	}
	obj, _, _ := inf.byKind[deploymentKind].GetIndexer().GetByKey("shop/web")
	if c, ok := obj.(*cached); !ok || c.ManagedFields != nil || c.Labels != nil {
		t.Errorf("cache holds more than the lean object: %#v", obj)
	}
	if _, ok := inf.Get(handler.Ref{GroupVersionKind: deploymentKind, Namespace: "shop", Name: "gone"}); ok {
		t.Error("Get found a workload that does not exist")
	}
	if _, ok := inf.Get(handler.Ref{GroupVersionKind: appsv1.SchemeGroupVersion.WithKind("DaemonSet"), Namespace: "shop", Name: "web"}); ok {
		t.Error("Get found a kind it does not watch")
	}

	// Deleting a workload makes the handler forget it.
	if err := client.AppsV1().Deployments("shop").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for {
		if calls := rec.take(); len(calls) > 0 {
			if len(calls) != 1 || !calls[0].forget || calls[0].ref.Name != "web" {
				t.Errorf("after delete: %v, want Forget(web)", calls)
			}
			break
		}
		if ctx.Err() != nil {
			t.Fatal("no Forget after delete")
		}
		time.Sleep(time.Millisecond)
	}
}

// A workload whose every annotation was removed while asleep stays owed its
// wake across later updates, which no longer carry the count, until it runs
// again or is deleted.
func TestReleasedWakeOwedAcrossUpdates(t *testing.T) {
	web := handler.Ref{GroupVersionKind: deploymentKind, Namespace: "shop", Name: "web"}
	released := handlerCall{cfg: handler.Config{Ref: web, Mode: handler.Released, WakeTo: 3}, ref: web}
	forget := handlerCall{forget: true, ref: web}
	asleep := must(lean(fullDeployment("web", int32p(0), sleeping(managedAnnotations))))
	bare := must(lean(fullDeployment("web", int32p(0), nil)))
	relabelled := fullDeployment("web", int32p(0), nil)
	relabelled.Labels = map[string]string{"team": "new"}
	running := must(lean(fullDeployment("web", int32p(3), nil)))

	rec := &recordingHandler{}
	i := &Informer{handler: rec, defaults: informerTestDefaults}
	steps := []struct {
		what     string
		old, obj any
		want     handlerCall
	}{
		{"annotations removed while asleep", asleep, bare, released},
		{"a later update, the wake not done yet", bare, must(lean(relabelled)), released},
		{"the informer's resync", bare, bare, released},
		{"woken", bare, running, forget},
		{"at zero again, by someone else", running, bare, forget},
	}
	for _, s := range steps {
		i.changed(deploymentKind, s.old, s.obj)
		got := rec.take()
		if len(got) != 1 || got[0].String() != s.want.String() {
			t.Errorf("%s: handler heard %v, want [%v]", s.what, got, s.want)
		}
	}

	i.changed(deploymentKind, asleep, bare)
	i.deleted(deploymentKind, bare)
	i.changed(deploymentKind, nil, bare) // created again with the same name
	if got := rec.take(); len(got) != 3 || got[2].String() != forget.String() {
		t.Errorf("after delete and re-create: handler heard %v, want the last to be %v", got, forget)
	}
}

// A cached object deep-copies: equal, and sharing nothing that a change to
// the copy would reach.
func TestCachedDeepCopy(t *testing.T) {
	orig := must(lean(fullDeployment("web", int32p(2), managedAnnotations))).(*cached)
	cp, ok := orig.DeepCopyObject().(*cached)
	if !ok || !reflect.DeepEqual(cp, orig) {
		t.Fatalf("copy = %#v, want %#v", cp, orig)
	}
	*cp.Replicas = 7
	cp.Annotations[AnnotationQuery] = "changed"
	if *orig.Replicas != 2 || orig.Annotations[AnnotationQuery] != managedAnnotations[AnnotationQuery] {
		t.Errorf("changing the copy changed the original: %#v", orig)
	}
}
