package informer

import (
	"context"
	"fmt"
	"maps"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/zeroscaler/zeroscaler/handler"
)

// allowNamespaces makes the fake API server answer access reviews for
// namespaces with allowed (every other review is allowed), and records the
// reviews asked.
func allowNamespaces(client *k8sfake.Clientset, allowed bool) *[]authorizationv1.ResourceAttributes {
	var asked []authorizationv1.ResourceAttributes
	client.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		r := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SelfSubjectAccessReview).DeepCopy()
		asked = append(asked, *r.Spec.ResourceAttributes)
		r.Status.Allowed = allowed || r.Spec.ResourceAttributes.Resource != "namespaces"
		return true, r, nil
	})
	return &asked
}

// fixture drives an Informer by hand: objects go into its caches and their
// events to its handlers in the order a test chooses, with no goroutines.
type fixture struct {
	t   *testing.T
	i   *Informer
	rec *recordingHandler
	// state is what the handler was told last, per workload key.
	state map[string]string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	client := k8sfake.NewSimpleClientset() //nolint:staticcheck // see TestInformerWithFakeClientset
	allowNamespaces(client, true)
	i := New(client, Options{Defaults: informerTestDefaults})
	if err := i.WatchNamespaces(context.Background()); err != nil {
		t.Fatal(err)
	}
	rec := &recordingHandler{}
	i.handler = rec
	return &fixture{t: t, i: i, rec: rec, state: map[string]string{}}
}

func gvkOf(obj any) schema.GroupVersionKind {
	if _, ok := obj.(*appsv1.StatefulSet); ok {
		return statefulSetKind
	}
	return deploymentKind
}

// apply adds or updates a workload and delivers its event.
func (f *fixture) apply(obj any) {
	f.t.Helper()
	gvk := gvkOf(obj)
	l := must(lean(obj))
	idx := f.i.byKind[gvk].GetIndexer()
	old, exists, err := idx.Get(l)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := idx.Update(l); err != nil {
		f.t.Fatal(err)
	}
	if !exists {
		old = nil
	}
	f.i.changed(gvk, old, l)
}

// remove deletes a workload and delivers its event.
func (f *fixture) remove(obj any) {
	f.t.Helper()
	gvk := gvkOf(obj)
	l := must(lean(obj))
	if err := f.i.byKind[gvk].GetIndexer().Delete(l); err != nil {
		f.t.Fatal(err)
	}
	f.i.deleted(gvk, l)
}

// annotateNamespace sets a Namespace's annotations (nil deletes it) and
// delivers the event.
func (f *fixture) annotateNamespace(name string, annotations map[string]string) {
	f.t.Helper()
	idx := f.i.namespaces.GetIndexer()
	old, _, _ := idx.GetByKey(name)
	if annotations == nil {
		if old != nil {
			_ = idx.Delete(old)
		}
		f.i.namespaceChanged(old, nil)
		return
	}
	ns := must(lean(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations}}))
	if err := idx.Update(ns); err != nil {
		f.t.Fatal(err)
	}
	f.i.namespaceChanged(old, ns)
}

// told returns, per workload key, what the handler heard since the last
// call, summarised, and folds it into f.state.
func (f *fixture) told() map[string]string {
	out := map[string]string{}
	for _, c := range f.rec.take() {
		out[c.ref.Key()] = summary(c)
	}
	maps.Copy(f.state, out)
	return out
}

func summary(c handlerCall) string {
	if c.forget {
		return "forget"
	}
	cfg := c.cfg
	switch cfg.Mode {
	case handler.Managed:
		s := fmt.Sprintf("managed group=%q query=%q", cfg.Group, strings.ReplaceAll(cfg.Metadata.Query, `"`, "'"))
		if cfg.Paused {
			s += " paused"
		}
		if cfg.CooldownPeriod != informerTestDefaults.CooldownPeriod {
			s += " cooldown=" + cfg.CooldownPeriod.String()
		}
		if cfg.AwakeHours != nil {
			s += " awake=" + cfg.AwakeHours.String()
		}
		return s
	case handler.Invalid:
		return fmt.Sprintf("invalid group=%q: %v", cfg.Group, cfg.Err)
	default:
		return fmt.Sprintf("released wakeTo=%d excluded=%v", cfg.WakeTo, cfg.Excluded)
	}
}

func (f *fixture) expect(step string, want map[string]string) {
	f.t.Helper()
	got := f.told()
	if !reflect.DeepEqual(got, want) {
		f.t.Errorf("%s: the handler heard\n%s\nwant\n%s", step, show(got), show(want))
	}
}

func show(m map[string]string) string {
	var lines []string
	for k, v := range m {
		lines = append(lines, "  "+k+": "+v)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

const (
	webKey    = "Deployment/shop/web"
	apiKey    = "Deployment/shop/api"
	workerKey = "StatefulSet/shop/worker"
	webQuery  = `sum(rate(http_requests_total{service='web'}[2m]))`
)

func inGroup(name string, extra map[string]string) map[string]string {
	a := map[string]string{AnnotationGroup: name}
	maps.Copy(a, extra)
	return a
}

var queried = map[string]string{AnnotationQuery: webQuery, AnnotationThreshold: "0.5"}

const noQueryShop = `invalid group="shop": annotation zeroscaler.io/group: "shop" has no member with a zeroscaler.io/query annotation; give at least one member a query`

// The rule "a group needs a member with a query" holds across kinds and
// arrival orders, and every member hears when it starts or stops holding.
func TestGroupNeedsAMemberWithAQuery(t *testing.T) {
	f := newFixture(t)
	worker := fullStatefulSet("worker", int32p(1), inGroup("shop", nil))
	api := fullDeployment("api", int32p(2), inGroup(" shop ", map[string]string{AnnotationCooldownPeriod: "10m"}))
	web := fullDeployment("web", int32p(2), inGroup("shop", queried))

	f.apply(worker)
	f.expect("a lone member without a query", map[string]string{workerKey: noQueryShop})
	f.apply(api)
	f.expect("a second one: the first is not told again", map[string]string{apiKey: noQueryShop})

	f.apply(web)
	f.expect("a member with a query arrives: everyone hears", map[string]string{
		webKey:    `managed group="shop" query="` + webQuery + `"`,
		apiKey:    `managed group="shop" query="" cooldown=10m0s`,
		workerKey: `managed group="shop" query=""`,
	})

	// A change to a member that keeps the group's having a query tells
	// only that member.
	f.apply(fullDeployment("api", int32p(2), inGroup("shop", nil)))
	f.expect("a member's own change", map[string]string{apiKey: `managed group="shop" query=""`})

	// web leaves the group: it runs alone, the others are refused.
	f.apply(fullDeployment("web", int32p(2), queried))
	f.expect("the member with the query leaves", map[string]string{
		webKey:    `managed group="" query="` + webQuery + `"`,
		apiKey:    noQueryShop,
		workerKey: noQueryShop,
	})
	f.apply(web)
	f.expect("and comes back", map[string]string{
		webKey:    `managed group="shop" query="` + webQuery + `"`,
		apiKey:    `managed group="shop" query=""`,
		workerKey: `managed group="shop" query=""`,
	})

	// Deleting it refuses the others again.
	f.remove(web)
	f.expect("the member with the query is deleted", map[string]string{
		webKey:    "forget",
		apiKey:    noQueryShop,
		workerKey: noQueryShop,
	})

	// A member that leaves the group while asleep is released, so that it
	// is woken; the group's state does not change for the rest.
	f.apply(fullStatefulSet("worker", int32p(0), sleeping(nil)))
	f.expect("an asleep member leaves", map[string]string{workerKey: "released wakeTo=0 excluded=false"})
}

// A group in another namespace with the same name is another group.
func TestGroupsAreNamespaced(t *testing.T) {
	f := newFixture(t)
	web := fullDeployment("web", int32p(2), inGroup("env", queried))
	other := fullDeployment("api", int32p(2), inGroup("env", nil))
	other.Namespace = "staging"
	f.apply(web)
	f.apply(other)
	f.expect("same name, two namespaces", map[string]string{
		webKey:                   `managed group="env" query="` + webQuery + `"`,
		"Deployment/staging/api": `invalid group="env": annotation zeroscaler.io/group: "env" has no member with a zeroscaler.io/query annotation; give at least one member a query`,
	})
}

// An invalid member stays a member: its group keeps its name on the
// Invalid configuration, and a query it carries counts.
func TestInvalidMemberKeepsItsGroup(t *testing.T) {
	f := newFixture(t)
	f.apply(fullDeployment("web", int32p(2), inGroup("shop", map[string]string{AnnotationQuery: "q", AnnotationThreshold: "lots"})))
	f.apply(fullStatefulSet("worker", int32p(1), inGroup("shop", nil)))
	f.expect("bad threshold", map[string]string{
		webKey:    `invalid group="shop": annotation zeroscaler.io/threshold: "lots" is not a finite number`,
		workerKey: `managed group="shop" query=""`,
	})
}

// Namespace annotations: every workload of an annotated Namespace joins one
// group and inherits what it does not set itself; exclude opts out.
func TestNamespaceWide(t *testing.T) {
	f := newFixture(t)
	nsQuery := `sum(rate(nginx_ingress_controller_requests{exported_namespace='shop'}[5m])) or vector(0)`
	f.apply(fullDeployment("web", int32p(2), nil))
	f.apply(fullDeployment("api", int32p(2), map[string]string{AnnotationCooldownPeriod: "1h"}))
	f.apply(fullStatefulSet("worker", int32p(1), map[string]string{AnnotationExclude: "true"}))
	f.apply(fullStatefulSet("db", int32p(1), inGroup("data", queried)))
	f.told()

	f.annotateNamespace("shop", map[string]string{
		AnnotationQuery: nsQuery, AnnotationThreshold: "0.01", AnnotationAwakeHours: "Mon-Fri 08:00-19:00 Europe/Berlin",
	})
	awake := " awake=Mon-Fri 08:00-19:00 Europe/Berlin"
	f.expect("the Namespace is annotated", map[string]string{
		webKey:                `managed group="namespace:shop" query="` + nsQuery + `"` + awake,
		apiKey:                `managed group="namespace:shop" query="` + nsQuery + `" cooldown=1h0m0s` + awake,
		workerKey:             "forget",
		"StatefulSet/shop/db": `managed group="data" query="` + webQuery + `"` + awake,
	})

	// A workload added later joins too.
	f.apply(fullDeployment("cart", int32p(1), map[string]string{AnnotationPaused: "true"}))
	f.expect("a new workload", map[string]string{
		"Deployment/shop/cart": `managed group="namespace:shop" query="` + nsQuery + `" paused` + awake,
	})

	// A bad value on the Namespace is reported on each workload that
	// inherits it, saying where it came from; a workload that sets its own
	// is not affected.
	f.annotateNamespace("shop", map[string]string{AnnotationQuery: nsQuery, AnnotationThreshold: "0.01", AnnotationCooldownPeriod: "soon"})
	badCooldown := `invalid group="namespace:shop": annotation zeroscaler.io/cooldown-period: "soon" is not a Go duration such as 30s or 5m (inherited from Namespace shop)`
	f.expect("a bad Namespace annotation", map[string]string{
		webKey:                 badCooldown,
		apiKey:                 `managed group="namespace:shop" query="` + nsQuery + `" cooldown=1h0m0s`,
		workerKey:              "forget",
		"StatefulSet/shop/db":  `invalid group="data": annotation zeroscaler.io/cooldown-period: "soon" is not a Go duration such as 30s or 5m (inherited from Namespace shop)`,
		"Deployment/shop/cart": badCooldown,
	})

	// Removing the Namespace's annotations lets go of what only they
	// managed; a sleeping one is released so that it is woken.
	f.apply(fullDeployment("web", int32p(0), sleeping(nil)))
	f.told()
	f.annotateNamespace("shop", map[string]string{})
	f.expect("the Namespace's annotations removed", map[string]string{
		webKey:                 "released wakeTo=0 excluded=false",
		apiKey:                 "forget",
		workerKey:              "forget",
		"StatefulSet/shop/db":  `managed group="data" query="` + webQuery + `"`,
		"Deployment/shop/cart": "forget",
	})
	f.annotateNamespace("shop", map[string]string{"zeroscaler.io/unknown": "x"})
	f.expect("an annotation the daemon does not read: nobody is told", map[string]string{})
}

// exclude, on a workload or its Namespace, lets go of a workload, waking it
// if the daemon put it to sleep; "false" on a workload overrides the
// Namespace's "true".
func TestExclude(t *testing.T) {
	f := newFixture(t)
	f.apply(fullDeployment("web", int32p(0), sleeping(map[string]string{AnnotationQuery: "q", AnnotationThreshold: "1"})))
	f.apply(fullDeployment("api", int32p(2), map[string]string{AnnotationQuery: "q", AnnotationThreshold: "1", AnnotationExclude: "false"}))
	f.told()
	f.apply(fullDeployment("web", int32p(0), sleeping(map[string]string{AnnotationQuery: "q", AnnotationThreshold: "1", AnnotationExclude: " True "})))
	// The previous version carried the count; it is owed from now on.
	f.expect("excluded while asleep", map[string]string{webKey: "released wakeTo=3 excluded=true"})

	f.annotateNamespace("shop", map[string]string{AnnotationExclude: "true"})
	f.expect("the Namespace excludes all but who says false", map[string]string{
		webKey: "released wakeTo=3 excluded=true",
		apiKey: `managed group="" query="q"`,
	})

	f.apply(fullDeployment("api", int32p(2), map[string]string{AnnotationQuery: "q", AnnotationThreshold: "1", AnnotationExclude: "maybe"}))
	f.expect("a value that is no boolean excludes nothing and is reported", map[string]string{
		apiKey: `invalid group="": annotation zeroscaler.io/exclude: "maybe" is not a boolean ("true" or "false")`,
	})
}

// A Namespace named in zeroscaler.io/group joins its workloads to that group,
// with those that name it themselves.
func TestNamespaceNamesAGroup(t *testing.T) {
	f := newFixture(t)
	f.annotateNamespace("shop", map[string]string{AnnotationGroup: "shop"})
	f.apply(fullStatefulSet("worker", int32p(1), nil))
	f.expect("no member with a query yet", map[string]string{workerKey: noQueryShop})
	f.apply(fullDeployment("web", int32p(2), queried))
	f.expect("one arrives", map[string]string{
		webKey:    `managed group="shop" query="` + webQuery + `"`,
		workerKey: `managed group="shop" query=""`,
	})
}

func TestWatchNamespaces(t *testing.T) {
	for _, tc := range []struct {
		name      string
		namespace string
		allowed   bool
	}{
		{"cluster-wide, allowed", "", true},
		{"cluster-wide, refused", "", false},
		{"one namespace, allowed", "apps", true},
		{"one namespace, refused", "apps", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := k8sfake.NewSimpleClientset() //nolint:staticcheck // see TestInformerWithFakeClientset
			asked := allowNamespaces(client, tc.allowed)
			i := New(client, Options{Namespace: tc.namespace, Defaults: informerTestDefaults})
			err := i.WatchNamespaces(context.Background())
			if tc.allowed != (err == nil) || tc.allowed != (i.namespaces != nil) {
				t.Fatalf("allowed %v: err %v, namespace informer %v", tc.allowed, err, i.namespaces != nil)
			}
			if err != nil && !strings.Contains(err.Error(), "may not list") {
				t.Errorf("error %q does not say what is missing", err)
			}
			if len(*asked) == 0 || (*asked)[0].Resource != "namespaces" || (*asked)[0].Name != tc.namespace {
				t.Errorf("asked %+v, want namespaces named %q", *asked, tc.namespace)
			}
		})
	}
}

// With the informers running on a fake clientset: Namespace annotations
// apply, only the watched Namespace is listed with --watch-namespace, and
// the handler has heard everything once WaitForCacheSync returns.
func TestNamespacesWithFakeClientset(t *testing.T) {
	for _, watch := range []string{"", "shop"} {
		t.Run("watch-namespace="+watch, func(t *testing.T) {
			shop := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Annotations: map[string]string{
				AnnotationQuery: "up", AnnotationThreshold: "1", "other.io/x": "y",
			}}}
			client := k8sfake.NewSimpleClientset( //nolint:staticcheck // see TestInformerWithFakeClientset
				shop,
				fullDeployment("web", int32p(2), nil),
				fullStatefulSet("worker", int32p(1), nil),
			)
			allowNamespaces(client, true)
			var selectors []string
			client.PrependReactor("list", "namespaces", func(a k8stesting.Action) (bool, runtime.Object, error) {
				selectors = append(selectors, a.(k8stesting.ListAction).GetListRestrictions().Fields.String())
				return false, nil, nil
			})
			i := New(client, Options{Namespace: watch, Defaults: informerTestDefaults})
			if err := i.WatchNamespaces(context.Background()); err != nil {
				t.Fatal(err)
			}
			rec := &recordingHandler{}
			if err := i.Notify(rec); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer func() {
				cancel()
				i.Shutdown()
			}()
			i.Start(ctx)
			if !i.WaitForCacheSync(ctx) {
				t.Fatal("caches did not sync")
			}
			// No waiting: WaitForCacheSync waited for the handlers too.
			got := map[string]string{}
			for _, c := range rec.take() {
				got[c.ref.Key()] = summary(c)
			}
			want := map[string]string{
				webKey:    `managed group="namespace:shop" query="up"`,
				workerKey: `managed group="namespace:shop" query="up"`,
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("the handler heard\n%s\nwant\n%s", show(got), show(want))
			}
			wantSelector := ""
			if watch != "" {
				wantSelector = "metadata.name=" + watch
			}
			if len(selectors) == 0 || selectors[0] != wantSelector {
				t.Errorf("Namespaces listed with field selectors %q, want %q", selectors, wantSelector)
			}
			obj, _, _ := i.namespaces.GetIndexer().GetByKey("shop")
			if c, ok := obj.(*cached); !ok || c.Annotations["other.io/x"] != "" {
				t.Errorf("the Namespace cache holds %#v, want a lean object", obj)
			}

			// Removing the Namespace's query lets go of both.
			shop = shop.DeepCopy()
			shop.Annotations = nil
			if _, err := client.CoreV1().Namespaces().Update(ctx, shop, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			want = map[string]string{webKey: "forget", workerKey: "forget"}
			got = map[string]string{}
			for !reflect.DeepEqual(got, want) && ctx.Err() == nil {
				for _, c := range rec.take() {
					got[c.ref.Key()] = summary(c)
				}
				time.Sleep(time.Millisecond)
			}
			if ctx.Err() != nil {
				t.Errorf("after the Namespace update the handler heard\n%s\nwant\n%s", show(got), show(want))
			}
		})
	}
}
