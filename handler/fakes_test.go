package handler

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap/zaptest"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	scalefake "k8s.io/client-go/scale/fake"
	ktesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/zeroscaler/zeroscaler/scaler"
)

// The fakes below stand in for the API server (the dynamic and scale fake
// clientsets sharing one object tracker), the informer cache (a Lister
// reading that tracker) and Prometheus (a Decider whose answers each test
// sets).

var (
	deploymentGVK  = appsv1.SchemeGroupVersion.WithKind("Deployment")
	statefulSetGVK = appsv1.SchemeGroupVersion.WithKind("StatefulSet")
)

func testRESTMapper() meta.RESTMapper {
	m := meta.NewDefaultRESTMapper([]schema.GroupVersion{appsv1.SchemeGroupVersion})
	m.AddSpecific(deploymentGVK, appsv1.SchemeGroupVersion.WithResource("deployments"), appsv1.SchemeGroupVersion.WithResource("deployment"), meta.RESTScopeNamespace)
	m.AddSpecific(statefulSetGVK, appsv1.SchemeGroupVersion.WithResource("statefulsets"), appsv1.SchemeGroupVersion.WithResource("statefulset"), meta.RESTScopeNamespace)
	return m
}

func ref(name string) Ref {
	return Ref{GroupVersionKind: deploymentGVK, Namespace: "default", Name: name}
}

// deployment builds a Deployment as the API server would store it.
func deployment(name string, replicas int32, annotations map[string]string) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: "default", UID: types.UID("uid-" + name), ResourceVersion: "1",
			Annotations: annotations,
			Labels:      map[string]string{"app": name},
		},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas},
	}
}

// asleep returns the annotations of a workload the daemon put to sleep.
func asleep(original string) map[string]string {
	return map[string]string{
		AnnotationOriginalReplicas: original,
		AnnotationScaledToZeroAt:   "2026-01-01T00:00:00Z",
		"other.io/keep":            "yes",
	}
}

// world is the fake API server. It keeps objects in the dynamic fake's
// tracker, enforces resourceVersion preconditions on writes (the tracker
// does not) and logs every write that succeeded, in order.
type world struct {
	t      *testing.T
	mapper meta.RESTMapper
	dyn    *dynamicfake.FakeDynamicClient
	scales *scalefake.FakeScaleClient

	mu        sync.Mutex
	rv        int
	writes    []string
	conflicts int
	// interfereIn counts down the writes until someone else changes the
	// workload just before one is applied: 1 means the next write.
	interfereIn int
	// lagging, while set, is what Get returns instead of the stored
	// object: a cache behind the API server.
	lagging map[string]Workload
	// hidden workloads are in the API server but not in the cache, as
	// when relabelled out of --selector.
	hidden map[string]bool
}

func newWorld(t *testing.T, objs ...runtime.Object) *world {
	scheme := runtime.NewScheme()
	if err := appsv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	w := &world{
		t:      t,
		mapper: testRESTMapper(),
		dyn:    dynamicfake.NewSimpleDynamicClient(scheme, objs...),
		scales: &scalefake.FakeScaleClient{},
		rv:     100,
	}
	w.dyn.PrependReactor("patch", "*", w.reactPatch)
	w.scales.AddReactor("update", "*", w.reactScale)
	return w
}

func (w *world) gvr(gvk schema.GroupVersionKind) schema.GroupVersionResource {
	m, err := w.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		w.t.Errorf("map %s: %v", gvk, err)
		return schema.GroupVersionResource{}
	}
	return m.Resource
}

// getLocked reads the stored object.
func (w *world) getLocked(gvr schema.GroupVersionResource, ns, name string) (*unstructured.Unstructured, error) {
	obj, err := w.dyn.Tracker().Get(gvr, ns, name)
	if err != nil {
		return nil, err
	}
	return obj.(*unstructured.Unstructured).DeepCopy(), nil
}

// storeLocked saves u with a new resourceVersion and returns it.
func (w *world) storeLocked(gvr schema.GroupVersionResource, u *unstructured.Unstructured) string {
	w.rv++
	rv := strconv.Itoa(w.rv)
	u.SetResourceVersion(rv)
	if err := w.dyn.Tracker().Update(gvr, u, u.GetNamespace()); err != nil {
		w.t.Errorf("store %s: %v", u.GetName(), err)
	}
	return rv
}

// preconditionLocked checks the write's resourceVersion like the API server
// does.
func (w *world) preconditionLocked(gvr schema.GroupVersionResource, ns, name, rv string) (*unstructured.Unstructured, error) {
	u, err := w.getLocked(gvr, ns, name)
	if err != nil {
		return nil, err
	}
	if w.interfereIn > 0 {
		w.interfereIn--
		if w.interfereIn == 0 {
			// Someone else's write (here: a label) lands first.
			u.SetLabels(map[string]string{"touched": strconv.Itoa(w.rv)})
			w.storeLocked(gvr, u)
		}
	}
	if rv == "" {
		w.t.Errorf("write to %s without a resourceVersion precondition", name)
		return nil, apierrors.NewBadRequest("zeroscaler must send a resourceVersion")
	}
	if rv != u.GetResourceVersion() {
		w.conflicts++
		return nil, apierrors.NewConflict(gvr.GroupResource(), name,
			fmt.Errorf("the object has been modified; please apply your changes to the latest version and try again (have %s, got %s)", u.GetResourceVersion(), rv))
	}
	return u, nil
}

func (w *world) reactPatch(a ktesting.Action) (bool, runtime.Object, error) {
	pa := a.(ktesting.PatchAction)
	if pa.GetPatchType() != types.MergePatchType {
		w.t.Errorf("patch type %s, want %s", pa.GetPatchType(), types.MergePatchType)
	}
	var patch struct {
		Metadata struct {
			ResourceVersion string             `json:"resourceVersion"`
			Annotations     map[string]*string `json:"annotations"`
		} `json:"metadata"`
		Spec *struct {
			Replicas *int64 `json:"replicas"`
		} `json:"spec"`
	}
	dec := json.NewDecoder(bytes.NewReader(pa.GetPatch()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&patch); err != nil {
		w.t.Errorf("patch %s: %v", pa.GetPatch(), err)
		return true, nil, apierrors.NewBadRequest(err.Error())
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	u, err := w.preconditionLocked(pa.GetResource(), pa.GetNamespace(), pa.GetName(), patch.Metadata.ResourceVersion)
	if err != nil {
		return true, nil, err
	}
	annotations := u.GetAnnotations()
	if annotations == nil {
		annotations = map[string]string{}
	}
	var changes []string
	if patch.Spec != nil {
		if patch.Spec.Replicas == nil {
			w.t.Errorf("patch %s: spec without replicas", pa.GetPatch())
		} else {
			if err := unstructured.SetNestedField(u.Object, *patch.Spec.Replicas, "spec", "replicas"); err != nil {
				return true, nil, err
			}
			changes = append(changes, fmt.Sprintf("replicas=%d", *patch.Spec.Replicas))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(patch.Metadata.Annotations)) {
		v := patch.Metadata.Annotations[k]
		short := strings.TrimPrefix(k, "zeroscaler.io/")
		if v == nil {
			delete(annotations, k)
			changes = append(changes, "-"+short)
		} else {
			annotations[k] = *v
			changes = append(changes, short+"="+*v)
		}
	}
	u.SetAnnotations(annotations)
	w.storeLocked(pa.GetResource(), u)
	w.writes = append(w.writes, "patch "+pa.GetName()+" "+strings.Join(changes, " "))
	return true, u, nil
}

func (w *world) reactScale(a ktesting.Action) (bool, runtime.Object, error) {
	ua := a.(ktesting.UpdateAction)
	if ua.GetSubresource() != "scale" {
		return false, nil, nil
	}
	s := ua.GetObject().(*autoscalingv1.Scale)
	// The scale client drops the version; the objects live in apps/v1.
	gvr := ua.GetResource()
	gvr.Version = appsv1.SchemeGroupVersion.Version

	w.mu.Lock()
	defer w.mu.Unlock()
	u, err := w.preconditionLocked(gvr, ua.GetNamespace(), s.Name, s.ResourceVersion)
	if err != nil {
		return true, nil, err
	}
	if err := unstructured.SetNestedField(u.Object, int64(s.Spec.Replicas), "spec", "replicas"); err != nil {
		return true, nil, err
	}
	rv := w.storeLocked(gvr, u)
	w.writes = append(w.writes, fmt.Sprintf("scale %s %d", s.Name, s.Spec.Replicas))
	out := s.DeepCopy()
	out.ResourceVersion = rv
	return true, out, nil
}

// Get implements Lister, reading the stored object as the informer's lean
// cache would hold it.
func (w *world) Get(r Ref) (Workload, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if wl, ok := w.lagging[r.Key()]; ok {
		return wl, true
	}
	if w.hidden[r.Key()] {
		return Workload{}, false
	}
	u, err := w.getLocked(w.gvr(r.GroupVersionKind), r.Namespace, r.Name)
	if err != nil {
		return Workload{}, false
	}
	return workloadFrom(r, u), true
}

// lag makes Get return the workload as it is now until catchUp, as an
// informer cache whose watch is behind.
func (w *world) lag(r Ref) {
	wl, _ := w.Get(r)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lagging = map[string]Workload{r.Key(): wl}
}

// hide takes a workload out of the cache but not out of the API server.
func (w *world) hide(r Ref) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.hidden = map[string]bool{r.Key(): true}
}

func (w *world) catchUp() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lagging = nil
}

// update changes a stored workload as someone else (a person, kubectl)
// would.
func (w *world) update(r Ref, change func(u *unstructured.Unstructured)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	gvr := w.gvr(r.GroupVersionKind)
	u, err := w.getLocked(gvr, r.Namespace, r.Name)
	if err != nil {
		w.t.Errorf("update %s: %v", r.Name, err)
		return
	}
	change(u)
	w.storeLocked(gvr, u)
}

func (w *world) setReplicas(r Ref, n int64) {
	w.update(r, func(u *unstructured.Unstructured) {
		if err := unstructured.SetNestedField(u.Object, n, "spec", "replicas"); err != nil {
			w.t.Error(err)
		}
	})
}

// takeWrites returns the writes since the last call.
func (w *world) takeWrites() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.writes
	w.writes = nil
	return out
}

// interfere makes someone else change the workload just before the n-th
// write from now (1: the next one) reaches it, so that write conflicts.
func (w *world) interfere(n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.interfereIn = n
}

func (w *world) conflictCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.conflicts
}

// writeActions counts the write requests sent to both fake clientsets,
// whether or not they succeeded.
func (w *world) writeActions() int {
	n := 0
	for _, a := range append(w.dyn.Actions(), w.scales.Actions()...) {
		switch a.GetVerb() {
		case "get", "list", "watch":
		default:
			n++
		}
	}
	return n
}

// reading is one answer of the fake Prometheus.
type reading struct {
	value float64
	err   error
	// block makes the query hang until its context ends, as a query in
	// flight when the loop stops.
	block bool
}

var (
	idle     = reading{value: 0}
	active   = reading{value: 5}
	noData   = reading{err: fmt.Errorf("query q: %w", scaler.ErrNoData)}
	promDown = reading{err: errors.New(`query q: Post "http://prometheus:9090/api/v1/query": connection refused`)}
	multiple = reading{err: fmt.Errorf("query q: %w", scaler.ErrMultipleSeries)}
)

// fakeProm answers every Decider built by the handler; answers are set per
// query.
type fakeProm struct {
	mu         sync.Mutex
	answers    map[string]reading
	healthy    bool
	healthyErr error
	// confirm answers ConfirmIdle; the zero value confirms.
	confirm  reading
	buildErr error
	deciders []*fakeDecider
	calls    map[string]int
	// onRead, if set, is called at each read of a query's value.
	onRead func(query string)
}

func newFakeProm() *fakeProm {
	return &fakeProm{answers: map[string]reading{}, healthy: true, calls: map[string]int{}}
}

func (p *fakeProm) set(query string, r reading) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.answers[query] = r
}

func (p *fakeProm) setHealthy(ok bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.healthy, p.healthyErr = ok, err
}

// setConfirm sets the answer to ConfirmIdle: the highest value over the
// window, or an error.
func (p *fakeProm) setConfirm(r reading) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.confirm = r
}

func (p *fakeProm) newDecider(cfg Config) (Decider, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.buildErr != nil {
		return nil, p.buildErr
	}
	d := &fakeDecider{prom: p, md: cfg.Metadata}
	p.deciders = append(p.deciders, d)
	return d, nil
}

func (p *fakeProm) built() []*fakeDecider {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.deciders)
}

func (p *fakeProm) called(method string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls[method]
}

type fakeDecider struct {
	prom *fakeProm
	md   scaler.Metadata

	mu          sync.Mutex
	last        scaler.Reading
	lastConfirm scaler.Reading
	closed      bool
}

func (d *fakeDecider) read(method string) reading {
	d.prom.mu.Lock()
	r := d.prom.answers[d.md.Query]
	d.prom.calls[method]++
	onRead := d.prom.onRead
	d.prom.mu.Unlock()
	if onRead != nil {
		onRead(d.md.Query)
	}
	if r.err == nil {
		d.mu.Lock()
		d.last = scaler.Reading{Query: d.md.Query, Value: r.value, Threshold: d.md.Threshold}
		d.mu.Unlock()
	}
	return r
}

func (d *fakeDecider) ShouldScaleToZero(ctx context.Context) (bool, error) {
	r := d.read("ShouldScaleToZero")
	if r.block {
		<-ctx.Done()
		return false, fmt.Errorf("query q: %w", ctx.Err())
	}
	return r.err == nil && r.value < d.md.Threshold, r.err
}

func (d *fakeDecider) ShouldScaleFromZero(ctx context.Context) (bool, error) {
	r := d.read("ShouldScaleFromZero")
	if r.block {
		<-ctx.Done()
		return false, fmt.Errorf("query q: %w", ctx.Err())
	}
	return r.err == nil && r.value >= d.md.Threshold, r.err
}

func (d *fakeDecider) IsHealthy(context.Context) (bool, error) {
	d.prom.mu.Lock()
	defer d.prom.mu.Unlock()
	d.prom.calls["IsHealthy"]++
	return d.prom.healthy, d.prom.healthyErr
}

func (d *fakeDecider) ConfirmIdle(context.Context) (bool, error) {
	d.prom.mu.Lock()
	defer d.prom.mu.Unlock()
	d.prom.calls["ConfirmIdle"]++
	r := d.prom.confirm
	if r.err != nil {
		return false, r.err
	}
	d.mu.Lock()
	d.lastConfirm = scaler.Reading{Query: "max_over_time((" + d.md.Query + ")[window])", Value: r.value, Threshold: d.md.Threshold}
	d.mu.Unlock()
	return r.value < d.md.Threshold, nil
}

func (d *fakeDecider) LastConfirmation() scaler.Reading {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lastConfirm
}

// QuestionHash is the query's length: tests choose queries to share or
// spread phases.
func (d *fakeDecider) QuestionHash() uint64 { return uint64(len(d.md.Query)) * uint64(time.Second) }

func (d *fakeDecider) LastReading() scaler.Reading {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.last
}

func (d *fakeDecider) Close(context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	return nil
}

func (d *fakeDecider) isClosed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

const (
	period   = 10 * time.Second
	cooldown = 3 * period
)

// managed returns a Managed configuration for a workload named name; its
// query is "q" unless changed.
func managed(name string, change ...func(*Config)) Config {
	cfg := Config{
		Ref:  ref(name),
		Mode: Managed,
		Metadata: scaler.Metadata{
			Query:        "q",
			Threshold:    1,
			UptimeFilter: `job="prometheus"`,
		},
		CooldownPeriod: cooldown,
		PollingPeriod:  period,
		MinReplicas:    1,
	}
	for _, c := range change {
		c(&cfg)
	}
	return cfg
}

// harness runs a ScaleHandler against the fakes on a fake clock.
type harness struct {
	t       *testing.T
	world   *world
	prom    *fakeProm
	clock   *clocktesting.FakeClock
	events  *record.FakeRecorder
	metrics *Metrics
	h       *ScaleHandler
}

var start = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

func newHarness(t *testing.T, dryRun bool, objs ...runtime.Object) *harness {
	t.Helper()
	hs := &harness{
		t:       t,
		world:   newWorld(t, objs...),
		prom:    newFakeProm(),
		clock:   clocktesting.NewFakeClock(start),
		events:  record.NewFakeRecorder(100),
		metrics: NewMetrics(prometheus.NewRegistry()),
	}
	hs.h = New(Options{
		DynamicClient:  hs.world.dyn,
		ScaleClient:    hs.world.scales,
		RESTMapper:     hs.world.mapper,
		EventRecorder:  hs.events,
		Lister:         hs.world,
		NewDecider:     hs.prom.newDecider,
		Logger:         zaptest.NewLogger(t),
		WatchNamespace: "",
		DryRun:         dryRun,
		Metrics:        hs.metrics,
		Clock:          hs.clock,
	})
	return hs
}

// run starts the handler. stop (also run at the test's cleanup) ends it and
// checks that Run returned and every loop closed its Decider.
func (hs *harness) run() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		hs.h.Run(ctx)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				hs.t.Error("Run did not return after its context ended")
				return
			}
			for i, d := range hs.prom.built() {
				if !d.isClosed() {
					hs.t.Errorf("decider %d (%s) not closed after Run returned", i, d.md.Query)
				}
			}
		})
	}
	hs.t.Cleanup(stop)
	return stop
}

// eventually polls cond for up to a few seconds of real time.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// parked waits until n loops wait on the clock.
func (hs *harness) parked(n int) {
	hs.t.Helper()
	eventually(hs.t, fmt.Sprintf("%d loops waiting on the clock (have %d)", n, hs.clock.Waiters()), func() bool {
		return hs.clock.Waiters() == n
	})
}

// tick moves the clock one polling period, so that each of the n parked
// loops checks once, and waits until they have finished and parked again.
func (hs *harness) tick(n int) {
	hs.t.Helper()
	hs.parked(n)
	hs.clock.Step(period)
	hs.parked(n)
}

// ticks runs k ticks of one loop.
func (hs *harness) ticks(k int) {
	hs.t.Helper()
	for range k {
		hs.tick(1)
	}
}

// takeEvents returns the events recorded since the last call.
func (hs *harness) takeEvents() []string {
	var out []string
	for {
		select {
		case e := <-hs.events.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

// gauge reads zeroscaler_workloads{state=state}. (prometheus/testutil
// would need a new go.mod entry; reading the gauge directly does not.)
func (hs *harness) gauge(state string) float64 {
	var m dto.Metric
	if err := hs.metrics.workloads.WithLabelValues(state).Write(&m); err != nil {
		hs.t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

// workload reads the stored workload.
func (hs *harness) workload(name string) Workload {
	hs.t.Helper()
	w, ok := hs.world.Get(ref(name))
	if !ok {
		hs.t.Fatalf("workload %s not found", name)
	}
	return w
}

func (hs *harness) stamp() string { return hs.clock.Now().UTC().Format(time.RFC3339) }

func wantStrings(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\n got  %q\n want %q", what, got, want)
	}
}

// wantEvents checks that each event contains every fragment of the
// matching entry of want.
func wantEvents(t *testing.T, got []string, want ...[]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("events:\n got  %q\n want %d event(s) containing %q", got, len(want), want)
		return
	}
	for i, frags := range want {
		for _, f := range frags {
			if !strings.Contains(got[i], f) {
				t.Errorf("event %d = %q, want it to contain %q", i, got[i], f)
			}
		}
	}
}

func counter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// loopDone waits until the loop of the named workload has returned by
// itself.
func (hs *harness) loopDone(name string) {
	hs.t.Helper()
	// A loop that ends by itself removes itself from the handler.
	eventually(hs.t, "the loop of "+name+" to finish", func() bool {
		hs.h.mu.Lock()
		defer hs.h.mu.Unlock()
		_, running := hs.h.loops[ref(name).Key()]
		return !running
	})
}

// nextEvent waits for the next event.
func (hs *harness) nextEvent() string {
	hs.t.Helper()
	select {
	case e := <-hs.events.Events:
		return e
	case <-time.After(5 * time.Second):
		hs.t.Fatal("no event")
		return ""
	}
}

// waitWrites waits until n writes have been made since the last
// takeWrites, and takes them.
func (hs *harness) waitWrites(n int) []string {
	hs.t.Helper()
	var got []string
	eventually(hs.t, fmt.Sprintf("%d writes", n), func() bool {
		got = append(got, hs.world.takeWrites()...)
		return len(got) >= n
	})
	return got
}
