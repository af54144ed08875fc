//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/zeroscaler/zeroscaler/test/localstack"
)

// With a live kube-controller-manager (issue 10): the Deployment,
// ReplicaSet, StatefulSet and HPA controllers act on every write zeroscaler
// makes, as in a cluster. These scenarios run on a stack of their own, so
// that the controllers' status writes do not reach the other scenarios'
// workloads. Pods stay Pending: there is no scheduler and no kubelet.
func TestControllers(t *testing.T) {
	ks := localstack.ForTest(t, localstack.Options{ControllerManager: true})
	cs, err := kubernetes.NewForConfig(ks.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kube-controller-manager's log ends with:\n%s", ks.ControllerManagerLog())
		}
	})
	on := controllerScenario{ks: ks, cs: cs}
	// First and alone: it counts every PATCH of a Deployment in the cluster.
	t.Run("ReplicaSets", on.replicaSets)
	t.Run("parallel", func(t *testing.T) {
		t.Run("HPA", on.hpa)
		t.Run("Rollouts", on.rollouts)
	})
}

type controllerScenario struct {
	ks *localstack.Stack
	cs kubernetes.Interface
}

// setMetric is the package's setMetric, on this stack.
func (c controllerScenario) setMetric(t *testing.T, series string, v float64) {
	t.Helper()
	c.ks.Exporter.Set(series, v)
	t.Cleanup(func() { c.ks.Exporter.Delete(series) })
	if err := c.ks.WaitForValue(testContext(t), c.ks.Exporter.Query(series), v); err != nil {
		t.Fatal(err)
	}
}

// idleDeployment creates a Deployment of 3 replicas in a new namespace,
// annotated with a series of its own, idle (0).
func (c controllerScenario) idleDeployment(t *testing.T, name string) (*workload, string) {
	t.Helper()
	ns := newNamespace(t, c.cs)
	series := ns + "/" + name
	c.setMetric(t, series, 0)
	return createWorkload(t, c.cs, deployment, ns, name, 3, annotations(c.ks.Exporter.Query(series))), series
}

func (c controllerScenario) startDaemon(t *testing.T, name, ns string) *daemon {
	t.Helper()
	return startDaemon(t, name, ns, "--kubeconfig", c.ks.KubeconfigPath, "--prometheus-address", c.ks.PrometheusURL)
}

// A Deployment sleeps and wakes while its ReplicaSets and Pods are real:
// the controllers' status updates cost no extra write, no conflict and no
// restarted cooldown. Writes are counted by the API server.
func (c controllerScenario) replicaSets(t *testing.T) {
	w, series := c.idleDeployment(t, "web")
	ns := w.ns
	rs := c.waitReplicaSet(t, ns, "web", 3)

	before := c.deploymentPatches(t)
	d := c.startDaemon(t, "controllers", ns)
	w.waitAsleep(t, 3)
	c.waitReplicaSet(t, ns, "web", 0)
	// Asleep for several checks while the controllers settle the
	// ReplicaSet and delete its Pods: nothing more is written.
	w.holdStill(t, 5*polling, "asleep while the controllers act", func(s snapshot) error {
		if s.replicas != 0 || !s.marked() {
			return fmt.Errorf("no longer asleep: %s", s)
		}
		return nil
	})
	c.setMetric(t, series, 5)
	w.waitAwake(t, settle, 3)
	if got := c.waitReplicaSet(t, ns, "web", 3); got.Name != rs.Name {
		t.Errorf("woke into ReplicaSet %s, want the one it had (%s): zeroscaler started a rollout", got.Name, rs.Name)
	}
	w.holdStill(t, 5*polling, "awake while the controllers act", runsUnmarked(3))

	if n := c.deploymentPatches(t) - before; n != 2 {
		t.Errorf("the API server counted %v PATCHes of Deployments during one sleep and one wake, want 2", n)
	}
	if n := d.mustMetric(t, "zeroscaler_api_writes_total", nil); n != 2 {
		t.Errorf("zeroscaler_api_writes_total = %v, want 2", n)
	}
	if n := d.mustMetric(t, "zeroscaler_scale_operations_total", label("result", "conflict")); n != 0 {
		t.Errorf("%v conflicts, want none", n)
	}
	if n := w.countEvents(t, reasonScaledToZero); n != 1 {
		t.Errorf("%d %s events, want 1", n, reasonScaledToZero)
	}
}

// A workload with an HPA (minReplicas 2): zeroscaler puts it to sleep and
// the HPA does not fight it, saying scaling is disabled; zeroscaler wakes
// it to its original count and the HPA is active again.
func (c controllerScenario) hpa(t *testing.T) {
	t.Parallel()
	w, series := c.idleDeployment(t, "api")
	ns := w.ns
	_, err := c.cs.AutoscalingV2().HorizontalPodAutoscalers(ns).Create(testContext(t), &autoscalingv2.HorizontalPodAutoscaler{
		ObjectMeta: metav1.ObjectMeta{Name: "api"},
		Spec: autoscalingv2.HorizontalPodAutoscalerSpec{
			ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: "api"},
			MinReplicas:    ptr.To[int32](2),
			MaxReplicas:    5,
			Metrics: []autoscalingv2.MetricSpec{{
				Type: autoscalingv2.ResourceMetricSourceType,
				Resource: &autoscalingv2.ResourceMetricSource{
					Name:   corev1.ResourceCPU,
					Target: autoscalingv2.MetricTarget{Type: autoscalingv2.UtilizationMetricType, AverageUtilization: ptr.To[int32](50)},
				},
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The HPA has looked at its target before zeroscaler starts.
	c.waitHPA(t, ns, "api", "to look at its target", func(h *autoscalingv2.HorizontalPodAutoscaler) bool {
		return h.Status.LastScaleTime != nil || len(h.Status.Conditions) > 0
	})

	c.startDaemon(t, "hpa", ns)
	w.waitAsleep(t, 3)
	c.waitHPA(t, ns, "api", "to say scaling is disabled", func(h *autoscalingv2.HorizontalPodAutoscaler) bool {
		cond := hpaCondition(h, autoscalingv2.ScalingActive)
		return cond != nil && cond.Status == corev1.ConditionFalse && cond.Reason == "ScalingDisabled"
	})
	w.holdStill(t, 3*localstack.HPASyncPeriod, "asleep under its HPA", func(s snapshot) error {
		if s.replicas != 0 {
			return fmt.Errorf("the HPA scaled it: %s", s)
		}
		return nil
	})

	c.setMetric(t, series, 5)
	w.waitAwake(t, settle, 3)
	h := c.waitHPA(t, ns, "api", "to be active again", func(h *autoscalingv2.HorizontalPodAutoscaler) bool {
		cond := hpaCondition(h, autoscalingv2.ScalingActive)
		return cond != nil && cond.Reason != "ScalingDisabled"
	})
	cond := hpaCondition(h, autoscalingv2.ScalingActive)
	t.Logf("after the wake the HPA says ScalingActive=%s (%s): %s", cond.Status, cond.Reason, cond.Message)
	// No metrics server runs, so the HPA cannot read CPU and keeps the
	// count: the original 3, not its minimum 2.
	w.holdStill(t, 3*localstack.HPASyncPeriod, "awake under its HPA", runsUnmarked(3))
}

// A rollout restart and an image change while asleep, and an image change
// while waking: the original count is kept, and only the person's edits
// roll the Deployment out.
func (c controllerScenario) rollouts(t *testing.T) {
	t.Parallel()
	w, series := c.idleDeployment(t, "web")
	ns := w.ns
	c.waitReplicaSet(t, ns, "web", 3)
	c.startDaemon(t, "rollouts", ns)
	w.waitAsleep(t, 3)

	patch := func(body string) {
		t.Helper()
		_, err := c.cs.AppsV1().Deployments(ns).Patch(testContext(t), "web", types.StrategicMergePatchType, []byte(body), metav1.PatchOptions{})
		if err != nil {
			t.Fatalf("patch deployment %s/web: %v", ns, err)
		}
	}
	// kubectl rollout restart, then a new image, while asleep.
	patch(fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`, time.Now().Format(time.RFC3339)))
	patch(`{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"registry.example/app:2"}]}}}}`)
	w.holdStill(t, 3*polling, "asleep after a restart and an image change", func(s snapshot) error {
		if s.replicas != 0 || s.annotations[annOriginal] != "3" {
			return fmt.Errorf("lost its sleep or its count: %s", s)
		}
		return nil
	})

	// An image change races the wake.
	c.setMetric(t, series, 5)
	patch(`{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"registry.example/app:3"}]}}}}`)
	w.waitAwake(t, settle, 3)

	// Four templates, each with its ReplicaSet: the first and the person's
	// three edits. The daemon's writes change replicas only. Read once the
	// Deployment controller has seen the last write, so that a template
	// written by the wake would show here.
	dep := c.waitObserved(t, ns, "web")
	if img := dep.Spec.Template.Spec.Containers[0].Image; img != "registry.example/app:3" {
		t.Errorf("image %s, want the person's last, registry.example/app:3", img)
	}
	if rev := dep.Annotations["deployment.kubernetes.io/revision"]; rev != "4" {
		t.Errorf("revision %q, want 4 (the first template and the person's three edits)", rev)
	}
	rsList, err := c.cs.AppsV1().ReplicaSets(ns).List(testContext(t), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rsList.Items) != 4 {
		t.Errorf("%d ReplicaSets, want 4: one per template", len(rsList.Items))
	}
}

// waitReplicaSet waits until the Deployment's newest ReplicaSet wants n
// replicas, and returns it.
func (c controllerScenario) waitReplicaSet(t *testing.T, ns, name string, n int32) appsv1.ReplicaSet {
	t.Helper()
	var got appsv1.ReplicaSet
	// patience: the controllers share a loaded machine with the daemon.
	waitFor(t, patience, fmt.Sprintf("deployment %s/%s's ReplicaSet to want %d", ns, name, n), func(ctx context.Context) (bool, string, error) {
		list, err := c.cs.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil {
			return false, "", err
		}
		for _, rs := range list.Items {
			if got.Name == "" || rs.CreationTimestamp.After(got.CreationTimestamp.Time) {
				got = rs
			}
		}
		if got.Name == "" {
			return false, "no ReplicaSet", nil
		}
		r := ptr.Deref(got.Spec.Replicas, -1)
		return r == n, fmt.Sprintf("%s wants %d", got.Name, r), nil
	})
	return got
}

// waitObserved waits until the Deployment controller has acted on the
// Deployment's latest spec, and returns the Deployment.
func (c controllerScenario) waitObserved(t *testing.T, ns, name string) *appsv1.Deployment {
	t.Helper()
	var got *appsv1.Deployment
	waitFor(t, settle, fmt.Sprintf("deployment %s/%s to be observed", ns, name), func(ctx context.Context) (bool, string, error) {
		d, err := c.cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		got = d
		return d.Status.ObservedGeneration >= d.Generation,
			fmt.Sprintf("generation %d, observed %d", d.Generation, d.Status.ObservedGeneration), nil
	})
	return got
}

func (c controllerScenario) waitHPA(t *testing.T, ns, name, what string, ok func(*autoscalingv2.HorizontalPodAutoscaler) bool) *autoscalingv2.HorizontalPodAutoscaler {
	t.Helper()
	var got *autoscalingv2.HorizontalPodAutoscaler
	waitFor(t, settle, fmt.Sprintf("HPA %s/%s %s", ns, name, what), func(ctx context.Context) (bool, string, error) {
		h, err := c.cs.AutoscalingV2().HorizontalPodAutoscalers(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		got = h
		var seen []string
		for _, cond := range h.Status.Conditions {
			seen = append(seen, fmt.Sprintf("%s=%s (%s)", cond.Type, cond.Status, cond.Reason))
		}
		return ok(h), strings.Join(seen, ", "), nil
	})
	return got
}

func hpaCondition(h *autoscalingv2.HorizontalPodAutoscaler, kind autoscalingv2.HorizontalPodAutoscalerConditionType) *autoscalingv2.HorizontalPodAutoscalerCondition {
	for i := range h.Status.Conditions {
		if h.Status.Conditions[i].Type == kind {
			return &h.Status.Conditions[i]
		}
	}
	return nil
}

// deploymentPatches is the API server's count of PATCH requests to
// Deployments (not their subresources), from every client. The controllers
// write status with PUT to the status subresource, so in this stack only
// zeroscaler and the tests patch Deployments.
func (c controllerScenario) deploymentPatches(t *testing.T) float64 {
	t.Helper()
	raw, err := c.cs.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(testContext(t))
	if err != nil {
		t.Fatalf("read the API server's metrics: %v", err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(string(raw)))
	if err != nil {
		t.Fatalf("parse the API server's metrics: %v", err)
	}
	var sum float64
	for _, m := range families["apiserver_request_total"].GetMetric() {
		l := map[string]string{}
		for _, p := range m.GetLabel() {
			l[p.GetName()] = p.GetValue()
		}
		if l["verb"] == "PATCH" && l["group"] == "apps" && l["resource"] == "deployments" && l["subresource"] == "" {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}
