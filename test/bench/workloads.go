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
)

const (
	// setLabel tells which set a Deployment belongs to; each daemon run
	// watches one set with --selector.
	setLabel = "zeroscaler-bench/set"
	// namespacesPerSet spreads a set over a few namespaces.
	namespacesPerSet = 4
	createWorkers    = 32
)

// set is N annotated Deployments asking K distinct questions.
type set struct {
	N, K int
}

func (s set) name() string     { return fmt.Sprintf("n%d-k%d", s.N, s.K) }
func (s set) selector() string { return setLabel + "=" + s.name() }

func (s set) namespace(i int) string {
	return fmt.Sprintf("zsb-%s-%d", s.name(), i%namespacesPerSet)
}

func (s set) workloadName(i int) string { return fmt.Sprintf("w-%05d", i) }

// key is workload i's namespace/name, as the watcher knows it.
func (s set) key(i int) string { return s.namespace(i) + "/" + s.workloadName(i) }

// query is the question workload i asks.
func (s set) query(i int) string {
	return fmt.Sprintf(`zs_bench{set=%q,q="%d"}`, s.name(), i%s.K)
}

func (s set) deployment(i int) *appsv1.Deployment {
	labels := map[string]string{"app": "bench"}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{
			Name:      s.workloadName(i),
			Namespace: s.namespace(i),
			Labels:    map[string]string{setLabel: s.name()},
			Annotations: map[string]string{
				"zeroscaler.io/query":     s.query(i),
				"zeroscaler.io/threshold": "1",
			},
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
	for i := range namespacesPerSet {
		_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
			ObjectMeta: metav1.ObjectMeta{Name: s.namespace(i)},
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
