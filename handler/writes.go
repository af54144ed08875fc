package handler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Every change the daemon makes to a workload is one merge patch of the
// workload itself, conditional on the resourceVersion the decision was made
// on:
//
//   - a sleep sets spec.replicas to 0 and records original-replicas and
//     scaled-to-zero-at;
//   - a wake sets spec.replicas to the original count and removes both
//     marks;
//   - a clear removes the marks of a workload someone else woke.
//
// Because replicas and marks change together, what the API shows is never
// ambiguous, whatever happens between two writes or across a restart: a
// workload at 0 with marks was put there by the daemon and nothing else, and
// one at 0 without marks by someone else. The scale subresource cannot carry
// annotations, which is why the daemon does not write through it. A
// conflict is retried at the next check, never forced.

// ErrNotLeading is returned instead of writing when this replica's lease may
// have passed to another (see Options.WriteDeadline).
var ErrNotLeading = errors.New("not writing: the leader election lease may have lapsed")

// write carries out a's change of f.w, or under --dry-run pretends to.
func (h *ScaleHandler) write(ctx context.Context, st *loopState, f facts, a action) error {
	var replicas *int32
	marks := map[string]*string{AnnotationOriginalReplicas: nil, AnnotationScaledToZeroAt: nil}
	switch a.verb {
	case doSleep:
		replicas = ptr(int32(0))
		marks[AnnotationOriginalReplicas] = ptr(strconv.Itoa(int(f.w.Replicas)))
		marks[AnnotationScaledToZeroAt] = ptr(f.now.UTC().Format(time.RFC3339))
	case doWake:
		replicas = &a.target
	}
	if h.dryRun {
		st.dry = pretend(st.dry, f.w, replicas, marks)
		return nil
	}
	return h.patch(ctx, f.w.Ref, f.w.ResourceVersion, replicas, marks)
}

// pretend returns the dry-run view after a write of replicas and marks over
// view, which may itself be pretended (old).
func pretend(old *dryView, view Workload, replicas *int32, marks map[string]*string) *dryView {
	v := &dryView{replicas: view.Replicas}
	if old != nil {
		v.underReplicas, v.underOriginal = old.underReplicas, old.underOriginal
	} else {
		v.underReplicas, v.underOriginal = view.Replicas, view.Annotations[AnnotationOriginalReplicas]
	}
	if replicas != nil {
		v.replicas = *replicas
	}
	for k, val := range marks {
		if val != nil {
			if v.marks == nil {
				v.marks = map[string]string{}
			}
			v.marks[k] = *val
		}
	}
	return v
}

func (h *ScaleHandler) announce(st *loopState, w Workload, e *event) {
	msg := e.message
	if h.dryRun {
		msg = "(dry run) " + msg
	}
	st.log.Info(msg, zap.String("reason", e.reason), zap.Bool("dryRun", h.dryRun))
	h.EventRecorder.Event(w.objectReference(), e.eventType, e.reason, msg)
}

// writeFailed tells of a failed write in one line. Conflicts and timeouts
// are expected in operation (someone else wrote first, the API server is
// busy): they are logged without a stack trace and retried at the next
// check.
func (h *ScaleHandler) writeFailed(st *loopState, a action, err error) {
	direction := map[verb]string{doSleep: "down", doWake: "up"}[a.verb]
	result := "error"
	switch {
	case apierrors.IsConflict(err):
		result = "conflict"
		st.log.Debug("workload changed while deciding; will decide again at the next check", zap.Error(err))
	case errors.Is(err, ErrNotLeading):
		st.log.Info("not written: this replica may no longer lead", zap.Error(err))
	default:
		st.log.Warn("write failed; will retry at the next check", zap.String("error", err.Error()))
	}
	if direction != "" {
		h.metrics.scaleOps.WithLabelValues(direction, result).Inc()
	}
}

// writeTimeout bounds one request to the API server, from the moment it is
// sent: a wait for the client-side rate limiter comes before it and does not
// count. Writes do not end with their loop: a loop replaced or stopped
// mid-decision still finishes the write it began, so that a decision is
// never cut in half by a configuration change. Under leader election they
// end with the lease (see writeContext).
const writeTimeout = 5 * time.Second

// writeContext returns the context one write runs in: not ended by the
// loop's end, but by the lease's (Options.WriteDeadline), and after the
// client-side rate limiter let the write go, by writeTimeout.
func (h *ScaleHandler) writeContext(ctx context.Context) (context.Context, context.CancelFunc, error) {
	ctx, cancelLease := context.WithoutCancel(ctx), context.CancelFunc(func() {})
	if h.writeDeadline != nil {
		deadline := h.writeDeadline()
		if !time.Now().Before(deadline) {
			return nil, nil, ErrNotLeading
		}
		ctx, cancelLease = context.WithDeadline(ctx, deadline)
	}
	if h.limiter != nil {
		// Only the lease can end this wait: the context is not the loop's.
		if err := h.limiter.Wait(ctx); err != nil {
			cancelLease()
			return nil, nil, fmt.Errorf("%w before the client-side rate limiter let the write go: %w", ErrNotLeading, err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	return ctx, func() { cancel(); cancelLease() }, nil
}

// patch sets replicas (unless nil) and the annotations (removing those with
// nil values) in one merge patch, provided the workload is still at
// resourceVersion rv.
func (h *ScaleHandler) patch(ctx context.Context, ref Ref, rv string, replicas *int32, annotations map[string]*string) error {
	mapping, err := h.restMapper.RESTMapping(ref.GroupKind(), ref.Version)
	if err != nil {
		return fmt.Errorf("map %s: %w", ref.GroupVersionKind, err)
	}
	body := map[string]any{
		"metadata": map[string]any{"resourceVersion": rv, "annotations": annotations},
	}
	if replicas != nil {
		body["spec"] = map[string]any{"replicas": *replicas}
	}
	patch, err := json.Marshal(body)
	if err != nil {
		return err
	}
	ctx, cancel, err := h.writeContext(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	h.metrics.apiWrites.Inc()
	_, err = h.kDynamicClient.Resource(mapping.Resource).Namespace(ref.Namespace).
		Patch(ctx, ref.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: fieldManager})
	if err != nil {
		return fmt.Errorf("patch %s: %w", ref.Key(), err)
	}
	return nil
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
