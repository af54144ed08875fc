//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	watchtools "k8s.io/client-go/tools/watch"
	"k8s.io/utils/ptr"

	"github.com/zeroscaler/zeroscaler/test/localstack"
)

// Everything here is prefixed "prod" so that it cannot clash with the
// helpers of the other end-to-end files in this package.

const (
	prodPoll = 50 * time.Millisecond
	// prodWait bounds one wait for the daemon to act: a cooldown of 3 s,
	// polling every 1 s, and Prometheus' 1 s scrape interval fit easily.
	prodWait = 30 * time.Second

	prodAnnotationQuery     = "zeroscaler.io/query"
	prodAnnotationThreshold = "zeroscaler.io/threshold"
	prodAnnotationCooldown  = "zeroscaler.io/cooldown-period"
	prodAnnotationPolling   = "zeroscaler.io/polling-interval"
	prodAnnotationOriginal  = "zeroscaler.io/original-replicas"
	prodAnnotationSleptAt   = "zeroscaler.io/scaled-to-zero-at"
)

// prodDaemon is one zeroscaler process and its metrics address.
type prodDaemon struct {
	*localstack.Daemon
	name        string
	metricsAddr string
}

// startProdDaemon starts the daemon with args followed by the flags that
// tie it to the stack: kubeconfig, Prometheus and a free metrics address
// (later flags win, so these override any in args). The daemon is stopped
// with SIGTERM at cleanup, where it must exit 0; its output is logged if the
// test failed, and a data race fails the test.
func startProdDaemon(t *testing.T, name, kubeconfig string, args ...string) *prodDaemon {
	t.Helper()
	bin := daemonBinary(t)
	port, err := localstack.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	argv := append(slices.Clone(args),
		"--kubeconfig", kubeconfig,
		"--prometheus-address", stack.PrometheusURL,
		"--metrics-address", addr,
		"--log-format=json",
		"--log-level=debug",
	)
	d, err := localstack.StartDaemon(bin, filepath.Join(t.TempDir(), name+".log"), argv...)
	if err != nil {
		t.Fatalf("start daemon %s: %v", name, err)
	}
	pd := &prodDaemon{Daemon: d, name: name, metricsAddr: addr}
	t.Cleanup(func() {
		select {
		case <-d.Done():
		default:
			code, err := d.Stop(10 * time.Second)
			if err != nil || code != 0 {
				t.Errorf("daemon %s at cleanup: SIGTERM gave exit code %d, err %v; want 0, nil", name, code, err)
			}
		}
		out := d.Output()
		if strings.Contains(out, "WARNING: DATA RACE") {
			t.Errorf("daemon %s reported a data race", name)
		}
		if t.Failed() {
			t.Logf("---- output of daemon %s (pid %d) ----\n%s---- end of %s ----", name, d.PID(), out, name)
		}
	})
	return pd
}

// get fetches a path from the daemon's metrics server.
func (d *prodDaemon) get(ctx context.Context, path string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.metricsAddr+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// metric adds up the samples of a gauge or counter on the daemon's /metrics
// whose labels include labels. No such sample reads as 0: a vector has no
// sample for a label value it has not seen yet, and no family at all before
// its first sample.
func (d *prodDaemon) metric(ctx context.Context, name string, labels map[string]string) (float64, error) {
	return localstack.ScrapeSum(ctx, "http://"+d.metricsAddr, name, func(have map[string]string) bool {
		for k, v := range labels {
			if have[k] != v {
				return false
			}
		}
		return true
	})
}

// leader reads the daemon's zeroscaler_leader gauge.
func (d *prodDaemon) leader(ctx context.Context) (float64, error) {
	return d.metric(ctx, "zeroscaler_leader", nil)
}

// waitOutput waits until the daemon has written want.
func (d *prodDaemon) waitOutput(ctx context.Context, want string) error {
	err := wait.PollUntilContextCancel(ctx, prodPoll, true, func(context.Context) (bool, error) {
		return strings.Contains(d.Output(), want), nil
	})
	if err != nil {
		return fmt.Errorf("wait for %q in the output of %s: %w", want, d.name, err)
	}
	return nil
}

// prodPollFor polls cond every prodPoll until it is true or timeout passes.
// On timeout the error carries the last reason cond gave.
func prodPollFor(ctx context.Context, timeout time.Duration, what string, cond func(ctx context.Context) (bool, string, error)) error {
	var last string
	err := wait.PollUntilContextTimeout(ctx, prodPoll, timeout, true, func(ctx context.Context) (bool, error) {
		ok, why, err := cond(ctx)
		if err != nil {
			last = err.Error()
			return false, nil // the API or a daemon may be briefly unreachable
		}
		last = why
		return ok, nil
	})
	if err != nil {
		return fmt.Errorf("wait for %s: %w (last: %s)", what, err, last)
	}
	return nil
}

// prodLeaseHolder returns the holder of a Lease, "" if it has none.
func prodLeaseHolder(ctx context.Context, cs kubernetes.Interface, ns, name string) (string, error) {
	l, err := cs.CoordinationV1().Leases(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	return ptr.Deref(l.Spec.HolderIdentity, ""), nil
}

// prodAnnotations are the annotations of a managed workload whose query
// reads the exporter's series, idle below 1.
func prodAnnotations(series, cooldown string) map[string]string {
	return map[string]string{
		prodAnnotationQuery:     stack.Exporter.Query(series),
		prodAnnotationThreshold: "1",
		prodAnnotationCooldown:  cooldown,
		prodAnnotationPolling:   "1s",
	}
}

func prodDeployment(name string, replicas int32, labels, annotations map[string]string) *appsv1.Deployment {
	sel, tmpl := podTemplate(name)
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels, Annotations: annotations},
		Spec:       appsv1.DeploymentSpec{Replicas: ptr.To(replicas), Selector: sel, Template: tmpl},
	}
}

// prodWaitDeployment waits until a Deployment satisfies cond.
func prodWaitDeployment(ctx context.Context, cs kubernetes.Interface, ns, name, what string, cond func(*appsv1.Deployment) bool) error {
	return prodPollFor(ctx, prodWait, fmt.Sprintf("%s/%s %s", ns, name, what), func(ctx context.Context) (bool, string, error) {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		return cond(d), prodDescribe(d.Spec.Replicas, d.Annotations), nil
	})
}

func prodDescribe(replicas *int32, annotations map[string]string) string {
	return fmt.Sprintf("replicas %d, original-replicas %q, scaled-to-zero-at %q",
		ptr.Deref(replicas, -1), annotations[prodAnnotationOriginal], annotations[prodAnnotationSleptAt])
}

// prodAsleep is a workload zeroscaler put to sleep from original replicas.
func prodAsleep(original string) func(*appsv1.Deployment) bool {
	return func(d *appsv1.Deployment) bool {
		return ptr.Deref(d.Spec.Replicas, -1) == 0 && d.Annotations[prodAnnotationOriginal] == original
	}
}

// prodAwake is a workload running replicas without sleep marks.
func prodAwake(replicas int32) func(*appsv1.Deployment) bool {
	return func(d *appsv1.Deployment) bool {
		_, marked := d.Annotations[prodAnnotationOriginal]
		_, slept := d.Annotations[prodAnnotationSleptAt]
		return ptr.Deref(d.Spec.Replicas, -1) == replicas && !marked && !slept
	}
}

// prodObservation is what a watch saw of a Deployment at one moment.
type prodObservation struct {
	replicas int32
	original string
	sleptAt  string
}

// prodHistory records, from a watch, every distinct state of the
// Deployments of one namespace.
type prodHistory struct {
	mu   sync.Mutex
	seen map[string][]prodObservation
}

// watchProdHistory watches the Deployments of ns until the test ends.
func watchProdHistory(t *testing.T, cs kubernetes.Interface, ns string) *prodHistory {
	t.Helper()
	list, err := cs.AppsV1().Deployments(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list deployments: %v", err)
	}
	if len(list.Items) != 0 {
		t.Fatalf("namespace %s already has %d deployments", ns, len(list.Items))
	}
	ctx, cancel := context.WithCancel(context.Background())
	rw, err := watchtools.NewRetryWatcherWithContext(ctx, list.ResourceVersion, &cache.ListWatch{
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return cs.AppsV1().Deployments(ns).Watch(ctx, o)
		},
	})
	if err != nil {
		cancel()
		t.Fatalf("watch deployments: %v", err)
	}
	h := &prodHistory{seen: map[string][]prodObservation{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range rw.ResultChan() {
			d, ok := ev.Object.(*appsv1.Deployment)
			if !ok || ev.Type == watch.Deleted {
				continue
			}
			h.add(d)
		}
	}()
	t.Cleanup(func() {
		rw.Stop()
		cancel()
		<-done
	})
	return h
}

func (h *prodHistory) add(d *appsv1.Deployment) {
	o := prodObservation{
		replicas: ptr.Deref(d.Spec.Replicas, -1),
		original: d.Annotations[prodAnnotationOriginal],
		sleptAt:  d.Annotations[prodAnnotationSleptAt],
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.seen[d.Name]
	if len(s) == 0 || s[len(s)-1] != o {
		h.seen[d.Name] = append(s, o)
	}
}

// replicas returns the sequence of distinct consecutive replica counts.
func (h *prodHistory) replicas(name string) []int32 {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []int32
	for _, o := range h.seen[name] {
		if len(out) == 0 || out[len(out)-1] != o.replicas {
			out = append(out, o.replicas)
		}
	}
	return out
}

// sleeps returns how many distinct scaled-to-zero-at marks were written.
func (h *prodHistory) sleeps(name string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	marks := map[string]bool{}
	for _, o := range h.seen[name] {
		if o.sleptAt != "" {
			marks[o.sleptAt] = true
		}
	}
	return len(marks)
}

// lost returns the states in which the workload was at zero without its
// original count.
func (h *prodHistory) lost(name, original string) []prodObservation {
	h.mu.Lock()
	defer h.mu.Unlock()
	var bad []prodObservation
	for _, o := range h.seen[name] {
		if o.replicas == 0 && o.original != original {
			bad = append(bad, o)
		}
	}
	return bad
}

func (h *prodHistory) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var b strings.Builder
	names := make([]string, 0, len(h.seen))
	for n := range h.seen {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		fmt.Fprintf(&b, "%s:", n)
		for _, o := range h.seen[n] {
			fmt.Fprintf(&b, " [%d %q %q]", o.replicas, o.original, o.sleptAt)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// prodEventCount adds up the counts of the Events with a reason on one
// object (a repeated Event is one object with a count).
func prodEventCount(ctx context.Context, cs kubernetes.Interface, ns, kind, name, reason string) (int32, error) {
	list, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{
		FieldSelector: fields.Set{
			"involvedObject.kind": kind,
			"involvedObject.name": name,
			"reason":              reason,
		}.String(),
	})
	if err != nil {
		return 0, err
	}
	var n int32
	for _, e := range list.Items {
		n += max(e.Count, 1)
	}
	return n, nil
}

// prodWaitEvents waits until an object has want Events with a reason, and
// fails if it has more.
func prodWaitEvents(ctx context.Context, cs kubernetes.Interface, ns, kind, name, reason string, want int32) error {
	var got int32
	err := prodPollFor(ctx, prodWait, fmt.Sprintf("%d %s events on %s %s/%s", want, reason, kind, ns, name), func(ctx context.Context) (bool, string, error) {
		n, err := prodEventCount(ctx, cs, ns, kind, name, reason)
		got = n
		return n >= want, fmt.Sprintf("%d events", n), err
	})
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("%s %s/%s has %d %s events, want %d", kind, ns, name, got, reason, want)
	}
	return nil
}

// prodRender runs `kubectl kustomize dir` and decodes the documents.
func prodRender(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	root, err := localstack.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(t.Context(), filepath.Join(root, "bin", "kubectl"), "kustomize", filepath.Join(root, dir))
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, stderr.String())
	}
	return prodDecode(t, dir, &stdout)
}

// prodDecode decodes the manifests that source rendered, one object per
// YAML document; empty documents are skipped.
func prodDecode(t *testing.T, source string, r io.Reader) []*unstructured.Unstructured {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(r, 4096)
	var objs []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("decode the manifests of %s: %v", source, err)
		}
		if len(u.Object) != 0 {
			objs = append(objs, u)
		}
	}
	return objs
}

// prodFind returns the rendered object of a kind and name, or nil.
func prodFind(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

// prodContainerArgs returns the args of the first container of a rendered
// Deployment.
func prodContainerArgs(t *testing.T, d *unstructured.Unstructured) []string {
	t.Helper()
	var dep appsv1.Deployment
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(d.Object, &dep); err != nil {
		t.Fatalf("convert the rendered Deployment: %v", err)
	}
	if len(dep.Spec.Template.Spec.Containers) == 0 {
		t.Fatal("the rendered Deployment has no container")
	}
	return dep.Spec.Template.Spec.Containers[0].Args
}

// prodApplyRBAC server-side applies the rendered objects of the kinds that
// make zeroscaler's identity and rights (not the Deployment or Service: no
// kubelet runs here). At cleanup it deletes them again, except Namespaces:
// no namespace controller runs, so a deleted one would stay Terminating and
// block the next install.
func prodApplyRBAC(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	dyn, err := dynamic.NewForConfig(stack.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	cs := clientset(t)
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(cs.Discovery()))
	applied := []*unstructured.Unstructured{}
	t.Cleanup(func() {
		for _, o := range slices.Backward(applied) {
			gvk := o.GroupVersionKind()
			m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
			if err != nil {
				t.Errorf("map %s: %v", gvk, err)
				continue
			}
			err = dyn.Resource(m.Resource).Namespace(o.GetNamespace()).Delete(context.Background(), o.GetName(), metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("delete %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
			}
		}
	})
	want := []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
	// Namespaces and ServiceAccounts first, so that what lives in them can
	// be created.
	slices.SortStableFunc(objs, func(a, b *unstructured.Unstructured) int {
		return slices.Index(want, a.GetKind()) - slices.Index(want, b.GetKind())
	})
	for _, o := range objs {
		if !slices.Contains(want, o.GetKind()) {
			continue
		}
		gvk := o.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("map %s: %v", gvk, err)
		}
		_, err = dyn.Resource(m.Resource).Namespace(o.GetNamespace()).Apply(t.Context(), o.GetName(), o,
			metav1.ApplyOptions{FieldManager: "e2e", Force: true})
		if err != nil {
			t.Fatalf("apply %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
		if o.GetKind() != "Namespace" {
			applied = append(applied, o)
		}
	}
}

// prodEnsureNamespace creates a namespace with a fixed name unless it exists.
// It is not deleted: without a namespace controller it would stay
// Terminating and could not be used again in this stack.
func prodEnsureNamespace(t *testing.T, cs kubernetes.Interface, name string) {
	t.Helper()
	_, err := cs.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create namespace %s: %v", name, err)
	}
}

// prodImpersonatingKubeconfig writes a copy of the admin kubeconfig whose
// users act as user with groups.
func prodImpersonatingKubeconfig(t *testing.T, user string, groups ...string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(stack.KubeconfigPath)
	if err != nil {
		t.Fatalf("load admin kubeconfig: %v", err)
	}
	if len(cfg.AuthInfos) == 0 {
		t.Fatal("admin kubeconfig has no users")
	}
	for _, ai := range cfg.AuthInfos {
		ai.Impersonate = user
		ai.ImpersonateGroups = groups
	}
	path := filepath.Join(t.TempDir(), "kubeconfig-impersonating")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatalf("write kubeconfig: %v", err)
	}
	// Make sure that whoever uses the file is user, not the admin.
	rc, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	review, err := cs.AuthenticationV1().SelfSubjectReviews().Create(t.Context(), &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("self subject review with the impersonating kubeconfig: %v", err)
	}
	if got := review.Status.UserInfo.Username; got != user {
		t.Fatalf("the impersonating kubeconfig authenticates as %q, want %q", got, user)
	}
	return path
}

// prodAccess asks the API server whether user with groups may do something.
type prodAccess struct {
	verb, group, resource, subresource, namespace string
	allowed                                       bool
}

func (a prodAccess) String() string {
	r := a.resource
	if a.group != "" {
		r += "." + a.group
	}
	if a.subresource != "" {
		r += "/" + a.subresource
	}
	ns := a.namespace
	if ns == "" {
		ns = "(all namespaces)"
	}
	return fmt.Sprintf("%s %s in %s", a.verb, r, ns)
}

func prodCheckAccess(t *testing.T, user string, groups []string, checks []prodAccess) {
	t.Helper()
	cs := clientset(t)
	for _, c := range checks {
		t.Run(c.String(), func(t *testing.T) {
			sar, err := cs.AuthorizationV1().SubjectAccessReviews().Create(t.Context(), &authorizationv1.SubjectAccessReview{
				Spec: authorizationv1.SubjectAccessReviewSpec{
					User:   user,
					Groups: groups,
					ResourceAttributes: &authorizationv1.ResourceAttributes{
						Verb:        c.verb,
						Group:       c.group,
						Resource:    c.resource,
						Subresource: c.subresource,
						Namespace:   c.namespace,
					},
				},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("subject access review: %v", err)
			}
			if sar.Status.Allowed != c.allowed {
				t.Errorf("%s may %s: allowed = %v, want %v (%s)", user, c, sar.Status.Allowed, c.allowed, sar.Status.Reason)
			}
		})
	}
}
