package main

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"

	"github.com/zeroscaler/zeroscaler/handler"
	"github.com/zeroscaler/zeroscaler/informer"
)

// cacheResult compares a realistic Deployment as a plain informer caches it
// with what zeroscaler's informer keeps.
type cacheResult struct {
	Objects              int
	FullHeap, LeanHeap   float64 // heap bytes per cached object (median)
	FullJSON, LeanJSON   int
	FullProto, LeanProto int
}

// realisticDeployment is what a Deployment applied with kubectl looks like
// in a cluster: labels, a last-applied annotation, managedFields of two
// managers, a pod template with a container, env, probes and resources, and
// a status with conditions.
func realisticDeployment(i int) *appsv1.Deployment {
	name := fmt.Sprintf("web-%05d", i)
	labels := map[string]string{"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "shop", "team": "payments"}
	var env []corev1.EnvVar
	for j := range 10 {
		env = append(env, corev1.EnvVar{Name: fmt.Sprintf("SETTING_%d", j), Value: fmt.Sprintf("value-%d-for-%s", j, name)})
	}
	env = append(env, corev1.EnvVar{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}})
	d := &appsv1.Deployment{
		TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{
			Name:              name,
			Namespace:         "shop",
			UID:               types.UID(fmt.Sprintf("6f1c2b1e-0d7a-4c55-9a9e-%012d", i)),
			ResourceVersion:   fmt.Sprint(100000 + i),
			Generation:        3,
			CreationTimestamp: metav1.NewTime(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)),
			Labels:            labels,
			Annotations: map[string]string{
				"deployment.kubernetes.io/revision": "3",
				"zeroscaler.io/query":               fmt.Sprintf(`sum(rate(nginx_ingress_controller_requests{exported_service=%q}[5m])) or vector(0)`, name),
				"zeroscaler.io/threshold":           "0.01",
				"zeroscaler.io/cooldown-period":     "30m",
			},
		},
		Spec: appsv1.DeploymentSpec{
			Replicas:             ptr.To[int32](2),
			RevisionHistoryLimit: ptr.To[int32](10),
			Selector:             &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": name}},
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType, RollingUpdate: &appsv1.RollingUpdateDeployment{
				MaxUnavailable: ptr.To(intstr.FromString("25%")), MaxSurge: ptr.To(intstr.FromString("25%")),
			}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": "9090"}},
				Spec: corev1.PodSpec{
					ServiceAccountName: name,
					Containers: []corev1.Container{{
						Name:  "app",
						Image: "registry.example.com/shop/" + name + ":v1.42.7",
						Args:  []string{"--listen=:8080", "--metrics=:9090", "--log-format=json"},
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}, {Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolTCP}},
						Env:   env,
						Resources: corev1.ResourceRequirements{
							Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
							Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
						},
						ReadinessProbe:           &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromString("http")}}, PeriodSeconds: 5},
						LivenessProbe:            &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/live", Port: intstr.FromString("http")}}, PeriodSeconds: 10},
						VolumeMounts:             []corev1.VolumeMount{{Name: "config", MountPath: "/etc/app"}},
						TerminationMessagePath:   "/dev/termination-log",
						TerminationMessagePolicy: corev1.TerminationMessageReadFile,
						ImagePullPolicy:          corev1.PullIfNotPresent,
					}},
					Volumes:       []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: name + "-config"}}}}},
					RestartPolicy: corev1.RestartPolicyAlways,
					DNSPolicy:     corev1.DNSClusterFirst,
					SchedulerName: corev1.DefaultSchedulerName,
				},
			},
		},
		Status: appsv1.DeploymentStatus{
			ObservedGeneration: 3, Replicas: 2, ReadyReplicas: 2, AvailableReplicas: 2, UpdatedReplicas: 2,
			Conditions: []appsv1.DeploymentCondition{
				{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue, Reason: "MinimumReplicasAvailable", Message: "Deployment has minimum availability.",
					LastUpdateTime: metav1.NewTime(time.Date(2025, 1, 2, 3, 5, 0, 0, time.UTC)), LastTransitionTime: metav1.NewTime(time.Date(2025, 1, 2, 3, 5, 0, 0, time.UTC))},
				{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionTrue, Reason: "NewReplicaSetAvailable", Message: fmt.Sprintf("ReplicaSet %q has successfully progressed.", name+"-7d9c8b6f5"),
					LastUpdateTime: metav1.NewTime(time.Date(2025, 1, 2, 3, 5, 0, 0, time.UTC)), LastTransitionTime: metav1.NewTime(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC))},
			},
		},
	}
	// kubectl apply keeps the whole applied object in an annotation.
	applied := d.DeepCopy()
	applied.Status = appsv1.DeploymentStatus{}
	applied.ObjectMeta = metav1.ObjectMeta{Name: name, Namespace: "shop", Labels: labels, Annotations: map[string]string{
		"zeroscaler.io/query": d.Annotations["zeroscaler.io/query"], "zeroscaler.io/threshold": "0.01", "zeroscaler.io/cooldown-period": "30m"}}
	last, _ := json.Marshal(applied)
	d.Annotations["kubectl.kubernetes.io/last-applied-configuration"] = string(last) + "\n"
	d.ManagedFields = []metav1.ManagedFieldsEntry{
		{Manager: "kubectl-client-side-apply", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "apps/v1",
			Time: ptr.To(metav1.NewTime(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC))), FieldsType: "FieldsV1",
			FieldsV1: metav1.NewFieldsV1(fieldsV1Spec)},
		{Manager: "kube-controller-manager", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "apps/v1", Subresource: "status",
			Time: ptr.To(metav1.NewTime(time.Date(2025, 1, 2, 3, 5, 0, 0, time.UTC))), FieldsType: "FieldsV1",
			FieldsV1: metav1.NewFieldsV1(fieldsV1Status)},
	}
	return d
}

// fieldsV1Spec and fieldsV1Status are managedFields as the API server
// writes them for the Deployment above.
var fieldsV1Spec = strings.Join(strings.Fields(`{"f:metadata":{"f:annotations":{".":{},"f:kubectl.kubernetes.io/last-applied-configuration":{},
"f:zeroscaler.io/cooldown-period":{},"f:zeroscaler.io/query":{},"f:zeroscaler.io/threshold":{}},"f:labels":{".":{},"f:app.kubernetes.io/name":{},
"f:app.kubernetes.io/part-of":{},"f:team":{}}},"f:spec":{"f:progressDeadlineSeconds":{},"f:replicas":{},"f:revisionHistoryLimit":{},"f:selector":{},
"f:strategy":{"f:rollingUpdate":{".":{},"f:maxSurge":{},"f:maxUnavailable":{}},"f:type":{}},"f:template":{"f:metadata":{"f:annotations":{".":{},
"f:prometheus.io/port":{},"f:prometheus.io/scrape":{}},"f:labels":{".":{},"f:app.kubernetes.io/name":{},"f:app.kubernetes.io/part-of":{},"f:team":{}}},
"f:spec":{"f:containers":{"k:{\"name\":\"app\"}":{".":{},"f:args":{},"f:env":{".":{},"k:{\"name\":\"POD_NAME\"}":{".":{},"f:name":{},"f:valueFrom":{".":{},
"f:fieldRef":{}}},"k:{\"name\":\"SETTING_0\"}":{".":{},"f:name":{},"f:value":{}},"k:{\"name\":\"SETTING_1\"}":{".":{},"f:name":{},"f:value":{}},
"k:{\"name\":\"SETTING_2\"}":{".":{},"f:name":{},"f:value":{}},"k:{\"name\":\"SETTING_3\"}":{".":{},"f:name":{},"f:value":{}},"k:{\"name\":\"SETTING_4\"}":{".":{},
"f:name":{},"f:value":{}},"k:{\"name\":\"SETTING_5\"}":{".":{},"f:name":{},"f:value":{}},"k:{\"name\":\"SETTING_6\"}":{".":{},"f:name":{},"f:value":{}},
"k:{\"name\":\"SETTING_7\"}":{".":{},"f:name":{},"f:value":{}},"k:{\"name\":\"SETTING_8\"}":{".":{},"f:name":{},"f:value":{}},"k:{\"name\":\"SETTING_9\"}":{".":{},
"f:name":{},"f:value":{}}},"f:image":{},"f:imagePullPolicy":{},"f:livenessProbe":{".":{},"f:failureThreshold":{},"f:httpGet":{".":{},"f:path":{},"f:port":{},
"f:scheme":{}},"f:periodSeconds":{},"f:successThreshold":{},"f:timeoutSeconds":{}},"f:name":{},"f:ports":{".":{},"k:{\"containerPort\":8080,\"protocol\":\"TCP\"}":{".":{},
"f:containerPort":{},"f:name":{},"f:protocol":{}},"k:{\"containerPort\":9090,\"protocol\":\"TCP\"}":{".":{},"f:containerPort":{},"f:name":{},"f:protocol":{}}},
"f:readinessProbe":{".":{},"f:failureThreshold":{},"f:httpGet":{".":{},"f:path":{},"f:port":{},"f:scheme":{}},"f:periodSeconds":{},"f:successThreshold":{},
"f:timeoutSeconds":{}},"f:resources":{".":{},"f:limits":{".":{},"f:memory":{}},"f:requests":{".":{},"f:cpu":{},"f:memory":{}}},"f:terminationMessagePath":{},
"f:terminationMessagePolicy":{},"f:volumeMounts":{".":{},"k:{\"mountPath\":\"/etc/app\"}":{".":{},"f:mountPath":{},"f:name":{}}}}},"f:dnsPolicy":{},
"f:restartPolicy":{},"f:schedulerName":{},"f:securityContext":{},"f:serviceAccount":{},"f:serviceAccountName":{},"f:terminationGracePeriodSeconds":{},
"f:volumes":{".":{},"k:{\"name\":\"config\"}":{".":{},"f:configMap":{".":{},"f:defaultMode":{},"f:name":{}},"f:name":{}}}}}}}`), "")

var fieldsV1Status = `{"f:metadata":{"f:annotations":{"f:deployment.kubernetes.io/revision":{}}},"f:status":{"f:availableReplicas":{},"f:conditions":{".":{},` +
	`"k:{\"type\":\"Available\"}":{".":{},"f:lastTransitionTime":{},"f:lastUpdateTime":{},"f:message":{},"f:reason":{},"f:status":{},"f:type":{}},` +
	`"k:{\"type\":\"Progressing\"}":{".":{},"f:lastTransitionTime":{},"f:lastUpdateTime":{},"f:message":{},"f:reason":{},"f:status":{},"f:type":{}}},` +
	`"f:observedGeneration":{},"f:readyReplicas":{},"f:replicas":{},"f:updatedReplicas":{}}}`

// leanForm is what informer's transform keeps of a Deployment, per its
// documentation: name, namespace, uid, resourceVersion, the zeroscaler.io/
// annotations and spec.replicas. Only the serialized sizes use it; the heap
// figures go through the real transform.
func leanForm(d *appsv1.Deployment) *appsv1.Deployment {
	out := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: d.Name, Namespace: d.Namespace, UID: d.UID, ResourceVersion: d.ResourceVersion},
		Spec:       appsv1.DeploymentSpec{Replicas: d.Spec.Replicas},
	}
	for k, v := range d.Annotations {
		if strings.HasPrefix(k, handler.AnnotationPrefix) {
			if out.Annotations == nil {
				out.Annotations = map[string]string{}
			}
			out.Annotations[k] = v
		}
	}
	return out
}

// measureCache fills a fake clientset with n realistic Deployments and
// measures the heap that a synced informer adds, with zeroscaler's
// informer (its transform) and with a plain client-go informer.
func measureCache(ctx context.Context, n, runs int) (*cacheResult, error) {
	objs := make([]kruntime.Object, n)
	for i := range objs {
		objs[i] = realisticDeployment(i)
	}
	cs := fake.NewClientset(objs...)

	lean := func(ctx context.Context) (func(), error) {
		inf := informer.New(cs, informer.Options{})
		inf.Start(ctx)
		if !inf.WaitForCacheSync(ctx) {
			return nil, fmt.Errorf("sync lean informer: %w", ctx.Err())
		}
		return inf.Shutdown, nil
	}
	full := func(ctx context.Context) (func(), error) {
		f := informers.NewSharedInformerFactory(cs, 0)
		f.Apps().V1().Deployments().Informer()
		f.Apps().V1().StatefulSets().Informer()
		f.Start(ctx.Done())
		for _, ok := range f.WaitForCacheSync(ctx.Done()) {
			if !ok {
				return nil, fmt.Errorf("sync full informer: %w", ctx.Err())
			}
		}
		return f.Shutdown, nil
	}
	res := &cacheResult{Objects: n}
	var leanHeap, fullHeap []float64
	for range runs {
		for _, m := range []struct {
			start func(context.Context) (func(), error)
			out   *[]float64
		}{{lean, &leanHeap}, {full, &fullHeap}} {
			before := liveHeap()
			ictx, cancel := context.WithCancel(ctx)
			shutdown, err := m.start(ictx)
			if err != nil {
				cancel()
				return nil, err
			}
			after := liveHeap()
			cancel()
			shutdown()
			*m.out = append(*m.out, (after-before)/float64(n))
		}
	}
	res.LeanHeap, res.FullHeap = median(leanHeap), median(fullHeap)

	d := realisticDeployment(0)
	l := leanForm(d)
	fj, _ := json.Marshal(d)
	lj, _ := json.Marshal(l)
	res.FullJSON, res.LeanJSON = len(fj), len(lj)
	res.FullProto, res.LeanProto = d.Size(), l.Size()
	return res, nil
}

// liveHeap is the heap in use after two full collections.
func liveHeap() float64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapAlloc)
}
