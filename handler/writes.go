package handler

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"go.uber.org/zap"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// The order of writes is what makes a crash harmless:
//
//   - to sleep, the original count is recorded first and replicas set to 0
//     second; a crash in between leaves a running workload with stale marks,
//     which the next check clears;
//   - to wake, replicas are restored first and the marks removed second; a
//     crash in between leaves a running workload with stale marks, likewise.
//     A managed workload's marks are removed at its next check rather than
//     at once, so that a wake costs one write when it counts: when a
//     thousand wake together, their scale writes do not queue behind each
//     other's annotation patches.
//
// So a workload at 0 always carries its original count. Every write is
// conditional on the resourceVersion the decision was made on; a conflict
// is retried at the next check, never forced.

// sleep records the original count, then scales to zero.
func (h *ScaleHandler) sleep(ctx context.Context, st *loopState, w Workload, now time.Time, msg string) error {
	if h.dryRun {
		st.dry = &dryView{resourceVersion: w.ResourceVersion, replicas: 0, original: w.Replicas}
		h.announce(st, w, corev1.EventTypeNormal, ReasonScaledToZero, msg, w.Replicas, 0)
		return nil
	}
	st.yieldSlot()
	rv, err := h.annotate(ctx, w.Ref, w.ResourceVersion, map[string]*string{
		AnnotationOriginalReplicas: ptr(strconv.Itoa(int(w.Replicas))),
		AnnotationScaledToZeroAt:   ptr(now.UTC().Format(time.RFC3339)),
	})
	if err == nil {
		if _, err = h.scale(ctx, w.Ref, rv, 0); err != nil {
			st.sleepFailed = true
		}
	}
	if err != nil {
		h.writeFailed(st, "down", err)
		return err
	}
	st.sleepFailed = false
	st.written = w.ResourceVersion
	h.metrics.scaleOps.WithLabelValues("down", "ok").Inc()
	h.announce(st, w, corev1.EventTypeNormal, ReasonScaledToZero, msg, w.Replicas, 0)
	return nil
}

// wake restores the replicas, then removes the sleep marks.
func (h *ScaleHandler) wake(ctx context.Context, st *loopState, w Workload, target int32, reason, msg string) error {
	eventType := corev1.EventTypeNormal
	if reason == ReasonWokeOnError {
		eventType = corev1.EventTypeWarning
	}
	if h.dryRun {
		st.dry = &dryView{resourceVersion: w.ResourceVersion, replicas: target}
		st.idleSince = h.clock.Now()
		h.setState(st, StateAwake)
		h.announce(st, w, eventType, reason, msg, 0, target)
		return nil
	}
	st.yieldSlot()
	rv, err := h.scale(ctx, w.Ref, w.ResourceVersion, target)
	if err != nil {
		h.writeFailed(st, "up", err)
		return err
	}
	h.metrics.scaleOps.WithLabelValues("up", "ok").Inc()
	st.written = w.ResourceVersion
	st.idleSince = h.clock.Now()
	st.lastReplicas = target
	h.setState(st, StateAwake)
	h.announce(st, w, eventType, reason, msg, 0, target)
	if st.cfg.Mode == Managed {
		st.clearPending = true
		return nil
	}
	if err := h.clearMarks(ctx, st, w, rv); err != nil {
		// The next check sees a running workload with marks and clears them.
		st.log.Info("woke, but could not clear sleep annotations yet; will retry", zap.Error(err))
	}
	return nil
}

func (h *ScaleHandler) clearMarks(ctx context.Context, st *loopState, w Workload, rv string) error {
	if h.dryRun {
		return nil
	}
	st.yieldSlot()
	_, err := h.annotate(ctx, w.Ref, rv, map[string]*string{
		AnnotationOriginalReplicas: nil,
		AnnotationScaledToZeroAt:   nil,
	})
	if err == nil {
		st.written = w.ResourceVersion
	}
	return err
}

func (h *ScaleHandler) announce(st *loopState, w Workload, eventType, reason, msg string, from, to int32) {
	if h.dryRun {
		msg = "(dry run) " + msg
	}
	st.log.Info(msg, zap.String("reason", reason), zap.Int32("from", from), zap.Int32("to", to), zap.Bool("dryRun", h.dryRun))
	h.EventRecorder.Event(w.objectReference(), eventType, reason, msg)
}

func (h *ScaleHandler) writeFailed(st *loopState, direction string, err error) {
	result := "error"
	if apierrors.IsConflict(err) {
		result = "conflict"
		st.log.Debug("workload changed while deciding; will decide again at the next check", zap.Error(err))
	} else {
		st.log.Error("scale "+direction+" failed; will retry at the next check", zap.Error(err))
	}
	h.metrics.scaleOps.WithLabelValues(direction, result).Inc()
}

// writeTimeout bounds one write. Writes do not end with their loop: a loop
// replaced or stopped mid-decision still finishes the write it began, so
// that a decision is never cut in half by a configuration change. It stays
// well below the leader election renew deadline (10s) and the pod's grace
// period (15s).
const writeTimeout = 5 * time.Second

// annotate sets (or, for nil values, removes) annotations, provided the
// workload is still at resourceVersion rv. It returns the new
// resourceVersion.
func (h *ScaleHandler) annotate(ctx context.Context, ref Ref, rv string, set map[string]*string) (string, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	mapping, err := h.restMapper.RESTMapping(ref.GroupKind(), ref.Version)
	if err != nil {
		return "", fmt.Errorf("map %s: %w", ref.GroupVersionKind, err)
	}
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"resourceVersion": rv, "annotations": set},
	})
	if err != nil {
		return "", err
	}
	h.metrics.apiWrites.Inc()
	out, err := h.kDynamicClient.Resource(mapping.Resource).Namespace(ref.Namespace).
		Patch(ctx, ref.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: fieldManager})
	if err != nil {
		return "", fmt.Errorf("annotate %s: %w", ref.Key(), err)
	}
	return out.GetResourceVersion(), nil
}

// scale sets replicas through the scale subresource, provided the workload
// is still at resourceVersion rv. It returns the new resourceVersion.
func (h *ScaleHandler) scale(ctx context.Context, ref Ref, rv string, replicas int32) (string, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	mapping, err := h.restMapper.RESTMapping(ref.GroupKind(), ref.Version)
	if err != nil {
		return "", fmt.Errorf("map %s: %w", ref.GroupVersionKind, err)
	}
	s := &autoscalingv1.Scale{
		ObjectMeta: metav1.ObjectMeta{Name: ref.Name, Namespace: ref.Namespace, ResourceVersion: rv},
		Spec:       autoscalingv1.ScaleSpec{Replicas: replicas},
	}
	h.metrics.apiWrites.Inc()
	out, err := h.scaleClient.Scales(ref.Namespace).Update(ctx, mapping.Resource.GroupResource(), s, metav1.UpdateOptions{FieldManager: fieldManager})
	if err != nil {
		return "", fmt.Errorf("scale %s to %d: %w", ref.Key(), replicas, err)
	}
	return out.ResourceVersion, nil
}

// getLive reads a workload from the API server; ok is false if it is gone.
func (h *ScaleHandler) getLive(ctx context.Context, ref Ref) (w Workload, ok bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	mapping, err := h.restMapper.RESTMapping(ref.GroupKind(), ref.Version)
	if err != nil {
		return Workload{}, false, fmt.Errorf("map %s: %w", ref.GroupVersionKind, err)
	}
	u, err := h.kDynamicClient.Resource(mapping.Resource).Namespace(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return Workload{}, false, nil
	case err != nil:
		return Workload{}, false, fmt.Errorf("get %s: %w", ref.Key(), err)
	}
	return workloadFrom(ref, u), true, nil
}

const fieldManager = "zeroscaler"

func ptr[T any](v T) *T { return &v }
