//go:build e2e

// Package e2e runs zeroscaler against a real API server and a real
// Prometheus, started once for the whole package by TestMain, and runs the
// scenarios that talk to a metrics backend against each backend of the
// matrix (backends_test.go).
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/scale"
	"k8s.io/utils/ptr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/zeroscaler/zeroscaler/test/localstack"
)

// stack is shared by every test in the package; tests isolate themselves
// with their own namespaces, series names and scrape jobs.
var stack *localstack.Stack

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	// envtest logs its failed start attempts through controller-runtime's
	// global logger, which otherwise complains that it was never set.
	ctrllog.SetLogger(funcr.New(func(prefix, args string) {
		fmt.Fprintln(os.Stderr, prefix, args)
	}, funcr.Options{}))
	backends, err := matrixBackends()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", backendsEnv, err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	began := time.Now()
	s, err := localstack.Start(ctx, localstack.Options{Metrics: localstack.MetricsOptions{Backend: backends[0]}})
	if err != nil {
		fmt.Fprintf(os.Stderr, "start local stack: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "local stack started in %v (api server %s, %s %s)\n",
		time.Since(began).Round(time.Millisecond), s.RESTConfig.Host, backends[0], s.PrometheusURL)
	stack = s
	defer func() {
		began := time.Now()
		if err := s.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stop local stack: %v\n", err)
		}
		fmt.Fprintf(os.Stderr, "local stack stopped in %v\n", time.Since(began).Round(time.Millisecond))
	}()
	if err := startMatrix(ctx, backends); err != nil {
		fmt.Fprintf(os.Stderr, "start metrics backends: %v\n", err)
		return 1
	}
	return m.Run()
}

// waitTimeout bounds each wait on Prometheus; at a 1 s scrape interval a new
// value shows within about 1.5 s, and a restart takes about 5 s.
const waitTimeout = 30 * time.Second

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

func clientset(t *testing.T) kubernetes.Interface {
	t.Helper()
	cs, err := kubernetes.NewForConfig(stack.RESTConfig)
	if err != nil {
		t.Fatalf("create clientset: %v", err)
	}
	return cs
}

// newNamespace creates a namespace for one test and deletes it afterwards.
func newNamespace(t *testing.T, cs kubernetes.Interface) string {
	t.Helper()
	ns, err := cs.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "e2e-"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	t.Cleanup(func() {
		// No namespace controller runs, so this only marks it terminating.
		err := cs.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
		if err != nil {
			t.Errorf("delete namespace %s: %v", ns.Name, err)
		}
	})
	return ns.Name
}

func podTemplate(app string) (*metav1.LabelSelector, corev1.PodTemplateSpec) {
	labels := map[string]string{"app": app}
	return &metav1.LabelSelector{MatchLabels: labels}, corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name:  "app",
			Image: "registry.invalid/app:1", // never pulled: no kubelet runs
		}}},
	}
}

func TestDeploymentScaleSubresource(t *testing.T) {
	cs := clientset(t)
	ns := newNamespace(t, cs)
	ctx := testContext(t)
	sel, tmpl := podTemplate("web")
	_, err := cs.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       appsv1.DeploymentSpec{Replicas: ptr.To[int32](2), Selector: sel, Template: tmpl},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create deployment: %v", err)
	}

	sc, err := cs.AppsV1().Deployments(ns).GetScale(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get scale: %v", err)
	}
	if sc.Spec.Replicas != 2 {
		t.Fatalf("scale spec.replicas = %d, want 2", sc.Spec.Replicas)
	}
	sc.Spec.Replicas = 0
	if _, err := cs.AppsV1().Deployments(ns).UpdateScale(ctx, "web", sc, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update scale: %v", err)
	}
	d, err := cs.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get deployment: %v", err)
	}
	if got := ptr.Deref(d.Spec.Replicas, -1); got != 0 {
		t.Fatalf("deployment spec.replicas = %d after scaling to zero, want 0", got)
	}

	// A stale resourceVersion must conflict: the daemon relies on it.
	sc.Spec.Replicas = 3
	_, err = cs.AppsV1().Deployments(ns).UpdateScale(ctx, "web", sc, metav1.UpdateOptions{})
	if !apierrors.IsConflict(err) {
		t.Fatalf("update scale with stale resourceVersion: err = %v, want a conflict", err)
	}
}

func TestGenericScaleClient(t *testing.T) {
	cs := clientset(t)
	dc, err := discovery.NewDiscoveryClientForConfig(stack.RESTConfig)
	if err != nil {
		t.Fatalf("create discovery client: %v", err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	scales, err := scale.NewForConfig(stack.RESTConfig, mapper, dynamic.LegacyAPIPathResolverFunc,
		scale.NewDiscoveryScaleKindResolver(dc))
	if err != nil {
		t.Fatalf("create scale client: %v", err)
	}

	tests := []struct {
		name     string
		resource schema.GroupResource
		create   func(ctx context.Context, ns string) error
		replicas func(ctx context.Context, ns string) (*int32, error)
	}{
		{
			name:     "deployment",
			resource: schema.GroupResource{Group: "apps", Resource: "deployments"},
			create: func(ctx context.Context, ns string) error {
				sel, tmpl := podTemplate("app")
				_, err := cs.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
					ObjectMeta: metav1.ObjectMeta{Name: "app"},
					Spec:       appsv1.DeploymentSpec{Replicas: ptr.To[int32](3), Selector: sel, Template: tmpl},
				}, metav1.CreateOptions{})
				return err
			},
			replicas: func(ctx context.Context, ns string) (*int32, error) {
				d, err := cs.AppsV1().Deployments(ns).Get(ctx, "app", metav1.GetOptions{})
				if err != nil {
					return nil, err
				}
				return d.Spec.Replicas, nil
			},
		},
		{
			name:     "statefulset",
			resource: schema.GroupResource{Group: "apps", Resource: "statefulsets"},
			create: func(ctx context.Context, ns string) error {
				sel, tmpl := podTemplate("app")
				_, err := cs.AppsV1().StatefulSets(ns).Create(ctx, &appsv1.StatefulSet{
					ObjectMeta: metav1.ObjectMeta{Name: "app"},
					Spec:       appsv1.StatefulSetSpec{Replicas: ptr.To[int32](3), Selector: sel, Template: tmpl},
				}, metav1.CreateOptions{})
				return err
			},
			replicas: func(ctx context.Context, ns string) (*int32, error) {
				s, err := cs.AppsV1().StatefulSets(ns).Get(ctx, "app", metav1.GetOptions{})
				if err != nil {
					return nil, err
				}
				return s.Spec.Replicas, nil
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := newNamespace(t, cs)
			ctx := testContext(t)
			if err := tt.create(ctx, ns); err != nil {
				t.Fatalf("create: %v", err)
			}
			sc, err := scales.Scales(ns).Get(ctx, tt.resource, "app", metav1.GetOptions{})
			if err != nil {
				t.Fatalf("get scale: %v", err)
			}
			if sc.Spec.Replicas != 3 {
				t.Fatalf("scale spec.replicas = %d, want 3", sc.Spec.Replicas)
			}
			for _, want := range []int32{0, 1} {
				sc.Spec.Replicas = want
				if sc, err = scales.Scales(ns).Update(ctx, tt.resource, sc, metav1.UpdateOptions{}); err != nil {
					t.Fatalf("update scale to %d: %v", want, err)
				}
				got, err := tt.replicas(ctx, ns)
				if err != nil {
					t.Fatalf("get workload: %v", err)
				}
				if ptr.Deref(got, -1) != want {
					t.Fatalf("spec.replicas = %d after scaling to %d", ptr.Deref(got, -1), want)
				}
			}
		})
	}
}

func TestRBACIsEnforced(t *testing.T) {
	ns := newNamespace(t, clientset(t))
	ctx := testContext(t)

	impersonated := rest.CopyConfig(stack.RESTConfig)
	impersonated.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:e2e:nobody"}
	certCfg, _, err := stack.AddUser("e2e-nobody", "e2e")
	if err != nil {
		t.Fatalf("add user: %v", err)
	}
	for name, cfg := range map[string]*rest.Config{"impersonated": impersonated, "certificate": certCfg} {
		t.Run(name, func(t *testing.T) {
			cs, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				t.Fatalf("create clientset: %v", err)
			}
			_, err = cs.AppsV1().Deployments(ns).List(ctx, metav1.ListOptions{})
			if !apierrors.IsForbidden(err) {
				t.Fatalf("list deployments as an unprivileged user: err = %v, want forbidden", err)
			}
		})
	}
}

func TestKubeconfigWorksForKubectl(t *testing.T) {
	root, err := localstack.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	kubectl := filepath.Join(root, "bin", "kubectl")
	if _, err := os.Stat(kubectl); err != nil {
		t.Fatalf("kubectl missing (run make tools): %v", err)
	}
	ctx := testContext(t)
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, kubectl, "--kubeconfig", stack.KubeconfigPath,
		"auth", "can-i", "update", "deployments.apps", "--subresource=scale", "--all-namespaces")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl auth can-i: %v\n%s", err, out.String())
	}
	if got := strings.TrimSpace(out.String()); got != "yes" {
		t.Fatalf("kubectl auth can-i = %q, want yes", got)
	}
}

func TestExporterValueReachesPrometheus(t *testing.T) {
	ctx := testContext(t)
	series := t.Name()
	q := stack.Exporter.Query(series)
	t.Cleanup(func() { stack.Exporter.Delete(series) })

	for _, v := range []float64{42, 0, 7.5} {
		stack.Exporter.Set(series, v)
		if err := stack.WaitForValue(ctx, q, v); err != nil {
			t.Fatal(err)
		}
	}
	// A deleted series goes stale at the next scrape, so the query is empty.
	stack.Exporter.Delete(series)
	if err := stack.WaitForValue(ctx, "absent("+q+")", 1); err != nil {
		t.Fatal(err)
	}
}

func TestWaitForValueTimesOut(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	err := stack.WaitForValue(ctx, stack.Exporter.Query("never-set"), 1)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitForValue on a missing series: err = %v, want deadline exceeded", err)
	}
}

func TestPrometheusRestart(t *testing.T) {
	ctx := testContext(t)
	series := t.Name()
	q := stack.Exporter.Query(series)
	t.Cleanup(func() { stack.Exporter.Delete(series) })
	// Leave Prometheus running for the next test even if this one fails.
	t.Cleanup(func() {
		if err := stack.StartPrometheus(context.Background()); err != nil {
			t.Errorf("restart prometheus in cleanup: %v", err)
		}
	})

	stack.Exporter.Set(series, 100)
	if err := stack.WaitForValue(ctx, q, 100); err != nil {
		t.Fatal(err)
	}
	url := stack.PrometheusURL

	if err := stack.StopPrometheus(); err != nil {
		t.Fatalf("stop prometheus: %v", err)
	}
	if _, _, _, err := stack.PromAPI.Query(ctx, "up", time.Now()); err == nil {
		t.Fatal("query during the outage succeeded, want an error")
	}
	if err := stack.StopPrometheus(); err != nil {
		t.Fatalf("stop prometheus twice: %v", err)
	}

	began := time.Now()
	if err := stack.StartPrometheus(ctx); err != nil {
		t.Fatalf("start prometheus: %v", err)
	}
	t.Logf("prometheus restarted and scraped in %v", time.Since(began).Round(time.Millisecond))
	if stack.PrometheusURL != url {
		t.Fatalf("prometheus URL changed from %s to %s", url, stack.PrometheusURL)
	}
	stack.Exporter.Set(series, 1)
	if err := stack.WaitForValue(ctx, q, 1); err != nil {
		t.Fatal(err)
	}
	// The storage survived: the value from before the outage is still there.
	if err := stack.WaitForValue(ctx, "max_over_time("+q+"[10m])", 100); err != nil {
		t.Fatal(err)
	}
}

func TestExtraScrapeJob(t *testing.T) {
	ctx := testContext(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "e2e_extra_target 3")
	}))
	t.Cleanup(srv.Close)
	host, _, err := net.SplitHostPort(srv.Listener.Addr().String())
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("test server listens on %s (%v), want 127.0.0.1", srv.Listener.Addr(), err)
	}

	job := localstack.ScrapeJob{Name: "e2e-extra", Targets: []string{srv.Listener.Addr().String()}}
	if err := stack.AddScrapeJob(ctx, job); err != nil {
		t.Fatalf("add scrape job: %v", err)
	}
	t.Cleanup(func() {
		if err := stack.RemoveScrapeJob(context.Background(), job.Name); err != nil {
			t.Errorf("remove scrape job: %v", err)
		}
	})
	if err := stack.AddScrapeJob(ctx, job); err == nil {
		t.Fatal("adding the same job twice succeeded, want an error")
	}
	if err := stack.WaitForValue(ctx, `e2e_extra_target{job="e2e-extra"}`, 3); err != nil {
		t.Fatal(err)
	}
}
