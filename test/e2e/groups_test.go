//go:build e2e

package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Whole environments (issue 11): groups of workloads that sleep and wake
// together, annotated Namespaces, and office hours, on the real API server.

const (
	annGroup      = "zeroscaler.io/group"
	annExclude    = "zeroscaler.io/exclude"
	annAwakeHours = "zeroscaler.io/awake-hours"

	reasonScheduledWake = "ScheduledWake"
)

// The shop: web has the query, api and worker none. They go to zero
// together, each with its own count, and come back together when web's
// traffic returns, or when a person scales one of them up.
func TestScenarioGroupSleepsAndWakesTogether(t *testing.T) {
	t.Parallel()
	cs := clientset(t)
	ns := newNamespace(t, cs)
	series := ns + "/web"
	query := stack.Exporter.Query(series)
	setMetric(t, series, 0)
	group := map[string]string{annGroup: "shop"}
	web := createWorkload(t, cs, deployment, ns, "web", 3, annotations(query, annGroup, "shop"))
	api := createWorkload(t, cs, deployment, ns, "api", 2, group)
	worker := createWorkload(t, cs, statefulSet, ns, "worker", 1, group)
	members := map[*workload]int32{web: 3, api: 2, worker: 1}

	startDaemon(t, "groups", ns)
	for w, n := range members {
		w.waitAsleep(t, n)
	}
	for w, n := range members {
		w.waitForEvent(t, reasonScaledToZero, corev1.EventTypeNormal,
			fmt.Sprintf("scaled %d → 0", n), "group shop", "web: "+query+" = 0 < 1")
	}

	setMetric(t, series, 5)
	for w, n := range members {
		w.waitAwake(t, settle, n)
	}
	for w, n := range members {
		w.waitForEvent(t, reasonScaledFromZero, corev1.EventTypeNormal,
			fmt.Sprintf("scaled 0 → %d", n), "group shop", "web: "+query+" = 5 >= 1")
	}

	// Asleep again; then a person scales the worker to 2: that wakes the
	// group, and the worker keeps the person's count.
	setMetric(t, series, 0)
	for w, n := range members {
		w.waitAsleep(t, n)
	}
	worker.scale(t, 2)
	web.waitAwake(t, settle, 3)
	api.waitAwake(t, settle, 2)
	worker.waitAwake(t, settle, 2)
	api.waitForEvent(t, reasonScaledFromZero, corev1.EventTypeNormal, "group shop", "worker: scaled up to 2")
}

// An annotated Namespace makes every workload in it one group, but for the
// one that opts out; the daemon watches only that namespace, as a
// namespaced install does.
func TestScenarioNamespaceSleepsAndWakes(t *testing.T) {
	t.Parallel()
	cs := clientset(t)
	ns := newNamespace(t, cs)
	series := ns + "/all"
	query := stack.Exporter.Query(series)
	setMetric(t, series, 0)
	a := createWorkload(t, cs, deployment, ns, "a", 2, nil)
	b := createWorkload(t, cs, statefulSet, ns, "b", 1, nil)
	kept := createWorkload(t, cs, deployment, ns, "kept", 2, map[string]string{annExclude: "true"})
	annotateNamespace(t, ns, annotations(query))

	startDaemon(t, "namespace", ns)
	a.waitAsleep(t, 2)
	b.waitAsleep(t, 1)
	a.waitForEvent(t, reasonScaledToZero, corev1.EventTypeNormal, "group namespace:"+ns)
	kept.holdStill(t, quietPeriod(cooldown, polling), "while it is excluded", runsUnmarked(2))

	setMetric(t, series, 5)
	a.waitAwake(t, settle, 2)
	b.waitAwake(t, settle, 1)
	if n := kept.countEvents(t, reasonScaledToZero); n != 0 {
		t.Errorf("%s, excluded, has %d %s events", kept, n, reasonScaledToZero)
	}
}

// Office hours, across both edges of a real one-minute window: asleep
// before it, woken at its start with ScheduledWake although its metric is
// idle, kept awake inside it, asleep again once it ends.
func TestScenarioAwakeHoursWindow(t *testing.T) {
	t.Parallel()
	cs := clientset(t)
	ns := newNamespace(t, cs)
	series := ns + "/web"
	setMetric(t, series, 0)

	// The window starts at the next whole minute that leaves time to fall
	// asleep first.
	now := time.Now().UTC()
	start := now.Truncate(time.Minute).Add(time.Minute)
	if start.Sub(now) < 30*time.Second {
		start = start.Add(time.Minute)
	}
	end := start.Add(time.Minute)
	to := end.Format("15:04")
	if to == "00:00" {
		to = "24:00"
	}
	hours := fmt.Sprintf("%s %s-%s UTC", start.Weekday().String()[:3], start.Format("15:04"), to)
	w := createWorkload(t, cs, deployment, ns, "web", 3,
		annotations(stack.Exporter.Query(series), annAwakeHours, hours))

	startDaemon(t, "hours", ns)
	w.waitAsleep(t, 3)
	if time.Now().After(start) {
		t.Fatalf("%s fell asleep only after its awake hours %q began", w, hours)
	}
	w.waitUntil(t, time.Until(start)+settle, "woken at the start of "+hours, func(s snapshot) bool {
		return s.replicas == 3 && !s.marked()
	})
	if woke := time.Now(); woke.Before(start) {
		t.Errorf("%s woke at %s, before its awake hours began at %s", w, woke.UTC().Format(time.RFC3339), start.Format(time.RFC3339))
	}
	w.waitForEvent(t, reasonScheduledWake, corev1.EventTypeNormal, "awake hours")

	// Inside the window, idle for many cooldowns, it stays up.
	w.holdStill(t, time.Until(end)-2*time.Second, "inside its awake hours", runsUnmarked(3))
	w.waitUntil(t, time.Until(end)+patience, "asleep after "+hours+" ended", func(s snapshot) bool {
		return s.asleep()
	})
	if slept := time.Now(); slept.Before(end) {
		t.Errorf("%s slept at %s, inside its awake hours", w, slept.UTC().Format(time.RFC3339))
	}
}

// annotateNamespace sets annotations on Namespace ns.
func annotateNamespace(t *testing.T, ns string, set map[string]string) {
	t.Helper()
	patch, err := jsonMergePatch(set)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := clientset(t).CoreV1().Namespaces().Patch(testContext(t), ns, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatalf("annotate namespace %s: %v", ns, err)
	}
}

// jsonMergePatch is a merge patch that sets metadata.annotations.
func jsonMergePatch(set map[string]string) ([]byte, error) {
	if len(set) == 0 {
		return nil, errors.New("no annotations to set")
	}
	return json.Marshal(map[string]any{"metadata": map[string]any{"annotations": set}})
}
