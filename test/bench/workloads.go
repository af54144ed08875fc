package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/zeroscaler/zeroscaler/informer"
)

const (
	// setLabel tells which set a Deployment belongs to; each daemon run
	// watches one set with --selector.
	setLabel = "zeroscaler-bench/set"
	// namespacesPerSet spreads a set over a few namespaces.
	namespacesPerSet = 4
	createWorkers    = 32
)

// set is N annotated Deployments asking K distinct questions. With Group,
// they sleep and wake in groups of that many (zeroscaler.io/group, one
// namespace per group): the first member of each group carries the query
// and the threshold, the others none, unless AllAsk gives every member the
// group's query. Question q of a group is its index mod K.
type set struct {
	N, K   int
	Group  int // members per group; 0: every workload alone
	AllAsk bool
}

func (s set) name() string {
	if s.Group == 0 {
		return fmt.Sprintf("n%d-k%d", s.N, s.K)
	}
	name := fmt.Sprintf("n%d-g%d-k%d", s.N, s.Group, s.K)
	if s.AllAsk {
		name += "-all"
	}
	return name
}

func (s set) selector() string { return setLabel + "=" + s.name() }

// loops is how many loops the daemon runs for s: one per group, or one per
// workload.
func (s set) loops() int {
	if s.Group == 0 {
		return s.N
	}
	return s.groups()
}

// groups is how many groups s has (the last may be smaller).
func (s set) groups() int {
	if s.Group == 0 {
		return 0
	}
	return (s.N + s.Group - 1) / s.Group
}

// unit is what workload i's namespace and question follow: its group, or
// itself.
func (s set) unit(i int) int {
	if s.Group == 0 {
		return i
	}
	return i / s.Group
}

// namespace is workload i's namespace: that of its group, or its own.
func (s set) namespace(i int) string { return s.namespaceName(s.unit(i) % namespacesPerSet) }

// namespaceName is the set's namespace j (0 ≤ j < namespacesPerSet).
func (s set) namespaceName(j int) string { return fmt.Sprintf("zsb-%s-%d", s.name(), j) }

func (s set) workloadName(i int) string { return fmt.Sprintf("w-%05d", i) }

// groupName is workload i's zeroscaler.io/group, or "" alone.
func (s set) groupName(i int) string {
	if s.Group == 0 {
		return ""
	}
	return fmt.Sprintf("g-%04d", s.unit(i))
}

// key is workload i's namespace/name, as the watcher knows it.
func (s set) key(i int) string { return s.namespace(i) + "/" + s.workloadName(i) }

// query is the question workload i asks, or its group asks.
func (s set) query(i int) string {
	return fmt.Sprintf(`zs_bench{set=%q,q="%d"}`, s.name(), s.unit(i)%s.K)
}

// asks tells whether workload i carries the query.
func (s set) asks(i int) bool { return s.Group == 0 || s.AllAsk || i%s.Group == 0 }

// annotations are workload i's zeroscaler.io/ annotations.
func (s set) annotations(i int) map[string]string {
	a := map[string]string{}
	if s.asks(i) {
		a[informer.AnnotationQuery] = s.query(i)
		a[informer.AnnotationThreshold] = "1"
	}
	if g := s.groupName(i); g != "" {
		a[informer.AnnotationGroup] = g
	}
	return a
}

func (s set) deployment(i int) *appsv1.Deployment {
	labels := map[string]string{"app": "bench"}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{
			Name:        s.workloadName(i),
			Namespace:   s.namespace(i),
			Labels:      map[string]string{setLabel: s.name()},
			Annotations: s.annotations(i),
		},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name:  "app",
					Image: "registry.invalid/app:1", // never pulled: no kubelet runs
				}}},
			},
		},
	}
}

// scaleCapacity measures how fast the API server takes scale writes: it
// scales every Deployment of s to 2 and back to 1 with parallel workers, as
// fast as the server allows, and returns the time for the 2N writes.
func (b *bench) scaleCapacity(ctx context.Context, s set) (time.Duration, error) {
	start := time.Now()
	for _, replicas := range []int32{2, 1} {
		err := s.each(ctx, func(ctx context.Context, i int) error {
			sc := &autoscalingv1.Scale{
				ObjectMeta: metav1.ObjectMeta{Name: s.workloadName(i), Namespace: s.namespace(i)},
				Spec:       autoscalingv1.ScaleSpec{Replicas: replicas},
			}
			_, err := b.cs.AppsV1().Deployments(sc.Namespace).UpdateScale(ctx, sc.Name, sc, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			return 0, fmt.Errorf("scale to %d: %w", replicas, err)
		}
	}
	return time.Since(start), nil
}

// create creates the set's namespaces and Deployments with parallel
// workers; existing ones are left as they are.
func (s set) create(ctx context.Context, cs kubernetes.Interface) (time.Duration, error) {
	start := time.Now()
	for j := range namespacesPerSet {
		_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
			ObjectMeta: metav1.ObjectMeta{Name: s.namespaceName(j)},
		}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return 0, fmt.Errorf("create namespace: %w", err)
		}
	}
	err := s.each(ctx, func(ctx context.Context, i int) error {
		d := s.deployment(i)
		_, err := cs.AppsV1().Deployments(d.Namespace).Create(ctx, d, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create deployment %s/%s: %w", d.Namespace, d.Name, err)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// each calls f for every workload index with createWorkers workers and
// stops at the first error.
func (s set) each(ctx context.Context, f func(context.Context, int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for range createWorkers {
		wg.Go(func() {
			for i := range next {
				if err := f(ctx, i); err != nil {
					cancel(err)
					return
				}
			}
		})
	}
feed:
	for i := range s.N {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return nil
}
