//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/zeroscaler/zeroscaler/test/localstack"
)

// Lease timings of the HA test: short, so that a takeover takes seconds.
const (
	prodLeaseDuration = 4 * time.Second
	prodRetryPeriod   = 1 * time.Second
)

func prodElectionArgs(ns, id string) []string {
	return []string{
		"--leader-elect=true",
		"--leader-election-namespace", ns,
		"--leader-election-id", id,
		"--leader-election-lease-duration", prodLeaseDuration.String(),
		"--leader-election-renew-deadline=3s",
		"--leader-election-retry-period", prodRetryPeriod.String(),
	}
}

// TestProductionLeaderElection runs two daemons on one Lease, kills the
// leader with SIGKILL while some workloads sleep and others cool down, and
// checks that the standby takes over, that no workload is scaled twice or
// loses its count, and that a leader stopped with SIGTERM hands over at once.
func TestProductionLeaderElection(t *testing.T) {
	cs := clientset(t)
	ns := newNamespace(t, cs)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	history := watchProdHistory(t, cs, ns)

	// sleepers are idle from the start and asleep when the leader dies;
	// coolers are active until just before, so they are cooling down then.
	sleepers := []string{"s1", "s2", "s3"}
	coolers := []string{"c1", "c2"}
	series := func(name string) string { return ns + "/" + name }
	initial := func(name string) float64 {
		if slices.Contains(coolers, name) {
			return 5
		}
		return 0
	}
	for _, name := range slices.Concat(sleepers, coolers) {
		stack.Exporter.Set(series(name), initial(name))
		t.Cleanup(func() { stack.Exporter.Delete(series(name)) })
		if _, err := cs.AppsV1().Deployments(ns).Create(ctx,
			prodDeployment(name, 3, nil, prodAnnotations(series(name), "3s")), metav1.CreateOptions{}); err != nil {
			t.Fatalf("create deployment %s: %v", name, err)
		}
	}
	for _, name := range slices.Concat(sleepers, coolers) {
		if err := stack.WaitForValue(ctx, stack.Exporter.Query(series(name)), initial(name)); err != nil {
			t.Fatal(err)
		}
	}

	lease := "zeroscaler-ha"
	args := append(prodElectionArgs(ns, lease), "--watch-namespace", ns)
	daemons := []*prodDaemon{
		startProdDaemon(t, "a", stack.KubeconfigPath, args...),
		startProdDaemon(t, "b", stack.KubeconfigPath, args...),
	}

	// Exactly one leads: its gauge says 1, the other's 0, and the Lease
	// names it.
	var leader, standby *prodDaemon
	var holder string
	err := prodPollFor(ctx, prodWait, "one leader", func(ctx context.Context) (bool, string, error) {
		h, err := prodLeaseHolder(ctx, cs, ns, lease)
		if err != nil {
			return false, "", err
		}
		var gauges []float64
		for _, d := range daemons {
			g, err := d.leader(ctx)
			if err != nil {
				return false, "", err
			}
			gauges = append(gauges, g)
		}
		why := fmt.Sprintf("holder %q, zeroscaler_leader %v", h, gauges)
		switch {
		case h == "" || gauges[0]+gauges[1] != 1:
			return false, why, nil
		case gauges[0] == 1:
			leader, standby = daemons[0], daemons[1]
		default:
			leader, standby = daemons[1], daemons[0]
		}
		holder = h
		return true, why, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(leader.Output(), `"identity":"`+holder+`"`) {
		t.Fatalf("daemon %s has zeroscaler_leader 1 but did not log that it leads as the Lease holder %q", leader.name, holder)
	}
	if err := standby.waitOutput(ctx, "standing by; another replica leads"); err != nil {
		t.Fatal(err)
	}
	t.Logf("daemon %s leads as %s; daemon %s stands by", leader.name, holder, standby.name)

	// Sleepers fall asleep, while coolers stay awake.
	for _, name := range sleepers {
		if err := prodWaitDeployment(ctx, cs, ns, name, "asleep", prodAsleep("3")); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range coolers {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !prodAwake(3)(d) {
			t.Fatalf("active deployment %s: %s, want 3 replicas and no marks", name, prodDescribe(d.Spec.Replicas, d.Annotations))
		}
	}
	// The standby runs no loop and writes nothing, while the leader does.
	for _, m := range []string{"zeroscaler_leader", "zeroscaler_workloads", "zeroscaler_api_writes_total"} {
		if v, err := standby.metric(ctx, m, nil); err != nil || v != 0 {
			t.Fatalf("standby %s: %s = %v (%v), want 0", standby.name, m, v, err)
		}
		if v, err := leader.metric(ctx, m, nil); err != nil || v == 0 {
			t.Fatalf("leader %s: %s = %v (%v), want more than 0", leader.name, m, v, err)
		}
	}
	if h, err := prodLeaseHolder(ctx, cs, ns, lease); err != nil || h != holder {
		t.Fatalf("lease holder = %q (%v), want %q still", h, err, holder)
	}

	// Coolers go idle; kill the leader as soon as it counts them idle, well
	// before their 3 s cooldown ends.
	for _, name := range coolers {
		stack.Exporter.Set(series(name), 0)
	}
	for _, name := range coolers {
		if err := stack.WaitForValue(ctx, stack.Exporter.Query(series(name)), 0); err != nil {
			t.Fatal(err)
		}
	}
	err = wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, prodWait, true, func(ctx context.Context) (bool, error) {
		idle, err := leader.metric(ctx, "zeroscaler_workloads", map[string]string{"state": "idle"})
		return err == nil && idle == float64(len(coolers)), nil
	})
	if err != nil {
		t.Fatalf("wait for the leader to count %d workloads idle: %v", len(coolers), err)
	}
	asleep, _ := leader.metric(ctx, "zeroscaler_workloads", map[string]string{"state": "asleep"})
	killedAt := time.Now()
	if err := leader.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed leader %s (SIGKILL) with %v workloads asleep and %d idle", leader.name, asleep, len(coolers))
	if asleep != float64(len(sleepers)) {
		t.Errorf("the leader counted %v workloads asleep, want %d", asleep, len(sleepers))
	}
	for _, name := range coolers {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !prodAwake(3)(d) {
			t.Fatalf("deployment %s was no longer cooling down when the leader died: %s", name, prodDescribe(d.Spec.Replicas, d.Annotations))
		}
	}

	// The standby takes over within the lease duration plus two of its
	// jittered retry periods (1–2.2 s each): the lease expires for it one
	// duration after it last saw a renewal, which it may see up to one
	// period late, and it tries again one period later. Add 1 s for the API
	// and for the time this test takes to notice.
	maxRetry := time.Duration(2.2 * float64(prodRetryPeriod))
	takeoverBound := prodLeaseDuration + 2*maxRetry + time.Second
	var newHolder string
	err = prodPollFor(ctx, prodWait, "the standby to take over", func(ctx context.Context) (bool, string, error) {
		h, err := prodLeaseHolder(ctx, cs, ns, lease)
		if err != nil {
			return false, "", err
		}
		g, err := standby.leader(ctx)
		if err != nil {
			return false, "", err
		}
		newHolder = h
		return h != "" && h != holder && g == 1, fmt.Sprintf("holder %q, standby's zeroscaler_leader %v", h, g), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	takeover := time.Since(killedAt)
	t.Logf("standby %s took over as %s %v after SIGKILL (lease duration %v, bound %v)",
		standby.name, newHolder, takeover.Round(time.Millisecond), prodLeaseDuration, takeoverBound)
	if takeover > takeoverBound {
		t.Errorf("takeover took %v, want at most %v", takeover.Round(time.Millisecond), takeoverBound)
	}
	if !strings.Contains(standby.Output(), `"identity":"`+newHolder+`"`) {
		t.Errorf("the Lease names %q, but daemon %s did not log that it leads as such", newHolder, standby.name)
	}
	leader = standby

	// The new leader runs every loop: coolers finish their sleep (once),
	// sleepers stay asleep, and a sleeper whose metric rises wakes to its
	// original count.
	for _, name := range coolers {
		if err := prodWaitDeployment(ctx, cs, ns, name, "asleep", prodAsleep("3")); err != nil {
			t.Fatal(err)
		}
	}
	stack.Exporter.Set(series("s1"), 5)
	if err := prodWaitDeployment(ctx, cs, ns, "s1", "awake at its original count", prodAwake(3)); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"s2", "s3"} {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !prodAsleep("3")(d) {
			t.Errorf("deployment %s: %s, want still asleep from 3", name, prodDescribe(d.Spec.Replicas, d.Annotations))
		}
	}

	// A leader stopped with SIGTERM exits 0 promptly and releases the Lease,
	// so a standby takes over well within the lease duration.
	third := startProdDaemon(t, "c", stack.KubeconfigPath, args...)
	if err := third.waitOutput(ctx, "standing by; another replica leads"); err != nil {
		t.Fatal(err)
	}
	sigtermAt := time.Now()
	code, err := leader.Stop(10 * time.Second)
	exited := time.Since(sigtermAt)
	if err != nil || code != 0 {
		t.Fatalf("leader %s after SIGTERM: exit code %d, err %v; want 0", leader.name, code, err)
	}
	t.Logf("leader %s exited 0 %v after SIGTERM", leader.name, exited.Round(time.Millisecond))
	if exited > 5*time.Second {
		t.Errorf("leader %s took %v to exit after SIGTERM, want at most 5s", leader.name, exited.Round(time.Millisecond))
	}
	if !strings.Contains(leader.Output(), "workload loops stopped; releasing the lease") {
		t.Errorf("leader %s did not log that it stopped its loops before releasing the Lease", leader.name)
	}
	if h, err := prodLeaseHolder(ctx, cs, ns, lease); err != nil || h == newHolder {
		t.Errorf("after its leader exited, the Lease holder is %q (%v): it was not released", h, err)
	}
	err = prodPollFor(ctx, prodWait, "the third daemon to take over", func(ctx context.Context) (bool, string, error) {
		h, err := prodLeaseHolder(ctx, cs, ns, lease)
		if err != nil {
			return false, "", err
		}
		g, err := third.leader(ctx)
		if err != nil {
			return false, "", err
		}
		return h != "" && h != newHolder && g == 1, fmt.Sprintf("holder %q, zeroscaler_leader %v", h, g), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	handover := time.Since(sigtermAt)
	t.Logf("daemon %s took over %v after SIGTERM to the leader (lease duration %v)", third.name, handover.Round(time.Millisecond), prodLeaseDuration)
	if handover >= prodLeaseDuration {
		t.Errorf("handover after SIGTERM took %v, want well under the lease duration %v", handover.Round(time.Millisecond), prodLeaseDuration)
	}
	stack.Exporter.Set(series("s2"), 5)
	if err := prodWaitDeployment(ctx, cs, ns, "s2", "awake at its original count", prodAwake(3)); err != nil {
		t.Fatal(err)
	}

	// Every workload was scaled once per direction, and none was ever at
	// zero without its original count.
	woken := []string{"s1", "s2"}
	for _, name := range slices.Concat(sleepers, coolers) {
		want, wantUp := []int32{3, 0}, int32(0)
		if slices.Contains(woken, name) {
			want, wantUp = []int32{3, 0, 3}, 1
		}
		if got := history.replicas(name); !slices.Equal(got, want) {
			t.Errorf("deployment %s went through replicas %v, want %v", name, got, want)
		}
		if got := history.sleeps(name); got != 1 {
			t.Errorf("deployment %s was marked asleep %d times, want once", name, got)
		}
		if bad := history.lost(name, "3"); len(bad) != 0 {
			t.Errorf("deployment %s was at zero without original-replicas 3: %+v", name, bad)
		}
		if err := prodWaitEvents(ctx, cs, ns, "Deployment", name, "ScaledToZero", 1); err != nil {
			t.Error(err)
		}
		if err := prodWaitEvents(ctx, cs, ns, "Deployment", name, "ScaledFromZero", wantUp); err != nil {
			t.Error(err)
		}
	}
	if t.Failed() {
		t.Logf("watched states:\n%s", history)
	}
}

// TestProductionMetricsScrapedByPrometheus has the real Prometheus scrape a
// daemon and reads its metrics back through PromQL.
func TestProductionMetricsScrapedByPrometheus(t *testing.T) {
	cs := clientset(t)
	ns := newNamespace(t, cs)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	series := ns + "/web"
	stack.Exporter.Set(series, 0)
	t.Cleanup(func() { stack.Exporter.Delete(series) })
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx,
		prodDeployment("web", 2, nil, prodAnnotations(series, "3s")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := stack.WaitForValue(ctx, stack.Exporter.Query(series), 0); err != nil {
		t.Fatal(err)
	}

	d := startProdDaemon(t, "metrics", stack.KubeconfigPath,
		append(prodElectionArgs(ns, "zeroscaler-metrics"), "--watch-namespace", ns)...)
	for _, path := range []string{"/healthz", "/readyz"} {
		err := prodPollFor(ctx, prodWait, path+" to answer 200", func(ctx context.Context) (bool, string, error) {
			code, body, err := d.get(ctx, path)
			return code == http.StatusOK, fmt.Sprintf("status %d: %s", code, body), err
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	job := "zeroscaler-" + ns
	if err := stack.AddScrapeJob(ctx, localstack.ScrapeJob{Name: job, Targets: []string{d.metricsAddr}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := stack.RemoveScrapeJob(context.Background(), job); err != nil {
			t.Errorf("remove scrape job: %v", err)
		}
	})

	sel := fmt.Sprintf(`job=%q`, job)
	for _, tc := range []struct {
		name, query string
		want        float64
	}{
		{"target up", `up{` + sel + `}`, 1},
		{"leads", `zeroscaler_leader{` + sel + `}`, 1},
		{"workload asleep", `zeroscaler_workloads{` + sel + `,state="asleep"}`, 1},
		{"no workload awake", `sum(zeroscaler_workloads{` + sel + `,state="awake"}) or vector(0)`, 0},
		{"one scale-down", `sum(zeroscaler_scale_operations_total{` + sel + `,direction="down",result="ok"})`, 1},
		{"successful queries counted", `sum(zeroscaler_prometheus_queries_total{` + sel + `,result="ok"}) > bool 0`, 1},
		{"query latency observed", `sum(zeroscaler_prometheus_query_duration_seconds_count{` + sel + `}) > bool 0`, 1},
		{"loop lag observed", `sum(zeroscaler_loop_lag_seconds_count{` + sel + `}) > bool 0`, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wctx, cancel := context.WithTimeout(ctx, prodWait)
			defer cancel()
			if err := stack.WaitForValue(wctx, tc.query, tc.want); err != nil {
				t.Error(err)
			}
		})
	}

	// The metric rises: Prometheus sees the wake.
	stack.Exporter.Set(series, 5)
	for _, q := range []string{
		`zeroscaler_workloads{` + sel + `,state="awake"}`,
		`sum(zeroscaler_scale_operations_total{` + sel + `,direction="up",result="ok"})`,
	} {
		wctx, cancel := context.WithTimeout(ctx, prodWait)
		err := stack.WaitForValue(wctx, q, 1)
		cancel()
		if err != nil {
			t.Error(err)
		}
	}

	// Every zeroscaler metric has help text and the type its name promises.
	meta, err := stack.PromAPI.TargetsMetadata(ctx, `{`+sel+`}`, "", "")
	if err != nil {
		t.Fatalf("targets metadata: %v", err)
	}
	wantTypes := map[string]v1.MetricType{
		"zeroscaler_workloads":                         v1.MetricTypeGauge,
		"zeroscaler_leader":                            v1.MetricTypeGauge,
		"zeroscaler_scale_operations_total":            v1.MetricTypeCounter,
		"zeroscaler_prometheus_queries_total":          v1.MetricTypeCounter,
		"zeroscaler_prometheus_query_duration_seconds": v1.MetricTypeHistogram,
		"zeroscaler_loop_lag_seconds":                  v1.MetricTypeHistogram,
	}
	seen := map[string]bool{}
	for _, m := range meta {
		if !strings.HasPrefix(m.Metric, "zeroscaler_") {
			continue
		}
		seen[m.Metric] = true
		if m.Help == "" {
			t.Errorf("metric %s has no help text", m.Metric)
		}
		if want, ok := wantTypes[m.Metric]; ok && m.Type != want {
			t.Errorf("metric %s has type %s, want %s", m.Metric, m.Type, want)
		}
	}
	for name := range wantTypes {
		if !seen[name] {
			t.Errorf("Prometheus has no metadata for %s", name)
		}
	}
}

// The ServiceAccount the manifests create, and the groups a token of it
// would carry.
const prodSA = "system:serviceaccount:zeroscaler-system:zeroscaler"

var prodSAGroups = []string{"system:serviceaccounts", "system:serviceaccounts:zeroscaler-system", "system:authenticated"}

// TestProductionRBACClusterInstall applies the base install's RBAC and runs
// the daemon as its ServiceAccount.
func TestProductionRBACClusterInstall(t *testing.T) {
	objs := prodRender(t, "deploy")
	if prodFind(objs, "Namespace", "zeroscaler-system") == nil {
		t.Fatal("deploy/ renders no Namespace zeroscaler-system")
	}
	prodRBACClusterInstall(t, "deploy/", objs)
}

// prodRBACClusterInstall applies the RBAC of a cluster-wide install that
// source rendered into objs, and runs the daemon as its ServiceAccount with
// its Deployment's args: its rights must be enough to put a Deployment and a
// StatefulSet to sleep and wake them, emit Events and hold the Lease, and no
// more than that.
func prodRBACClusterInstall(t *testing.T, source string, objs []*unstructured.Unstructured) {
	cs := clientset(t)
	daemonBinary(t) // before the clock below starts: the first build takes minutes on a busy machine
	for _, want := range [][2]string{
		{"ServiceAccount", "zeroscaler"},
		{"ClusterRole", "zeroscaler"}, {"ClusterRoleBinding", "zeroscaler"},
		{"Role", "zeroscaler-leader-election"}, {"RoleBinding", "zeroscaler-leader-election"},
		{"Deployment", "zeroscaler"},
	} {
		if prodFind(objs, want[0], want[1]) == nil {
			t.Fatalf("%s renders no %s %s", source, want[0], want[1])
		}
	}
	manifestArgs := prodContainerArgs(t, prodFind(objs, "Deployment", "zeroscaler"))
	if !slices.Contains(manifestArgs, "--leader-elect=true") {
		t.Errorf("the Deployment's args %q do not enable leader election", manifestArgs)
	}
	prodApplyRBAC(t, objs)

	ns := newNamespace(t, cs)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	lease := "zeroscaler"
	t.Cleanup(func() {
		_ = cs.CoordinationV1().Leases("zeroscaler-system").Delete(context.Background(), lease, metav1.DeleteOptions{})
	})

	// A Deployment and a StatefulSet, labelled so that the daemon, which
	// watches all namespaces, leaves other tests' workloads alone.
	labels := map[string]string{"e2e-rbac": ns}
	series := ns + "/rbac"
	stack.Exporter.Set(series, 0)
	t.Cleanup(func() { stack.Exporter.Delete(series) })
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, prodDeployment("web", 3, labels, prodAnnotations(series, "3s")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sel, tmpl := podTemplate("db")
	if _, err := cs.AppsV1().StatefulSets(ns).Create(ctx, &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Labels: labels, Annotations: prodAnnotations(series, "3s")},
		Spec:       appsv1.StatefulSetSpec{Replicas: ptr.To[int32](2), Selector: sel, Template: tmpl},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := stack.WaitForValue(ctx, stack.Exporter.Query(series), 0); err != nil {
		t.Fatal(err)
	}

	kubeconfig := prodImpersonatingKubeconfig(t, prodSA, prodSAGroups...)
	d := startProdDaemon(t, "rbac-cluster", kubeconfig, append(manifestArgs,
		"--leader-election-namespace=zeroscaler-system",
		"--leader-election-id="+lease,
		"--selector=e2e-rbac="+ns,
	)...)

	statefulSet := func(what string, cond func(*appsv1.StatefulSet) bool) error {
		return prodPollFor(ctx, prodWait, "statefulset db "+what, func(ctx context.Context) (bool, string, error) {
			s, err := cs.AppsV1().StatefulSets(ns).Get(ctx, "db", metav1.GetOptions{})
			if err != nil {
				return false, "", err
			}
			return cond(s), prodDescribe(s.Spec.Replicas, s.Annotations), nil
		})
	}
	if err := prodWaitDeployment(ctx, cs, ns, "web", "asleep", prodAsleep("3")); err != nil {
		t.Fatal(err)
	}
	if err := statefulSet("asleep", func(s *appsv1.StatefulSet) bool {
		return ptr.Deref(s.Spec.Replicas, -1) == 0 && s.Annotations[prodAnnotationOriginal] == "2"
	}); err != nil {
		t.Fatal(err)
	}
	stack.Exporter.Set(series, 5)
	if err := prodWaitDeployment(ctx, cs, ns, "web", "awake", prodAwake(3)); err != nil {
		t.Fatal(err)
	}
	if err := statefulSet("awake", func(s *appsv1.StatefulSet) bool {
		_, marked := s.Annotations[prodAnnotationOriginal]
		return ptr.Deref(s.Spec.Replicas, -1) == 2 && !marked
	}); err != nil {
		t.Fatal(err)
	}
	for _, obj := range [][2]string{{"Deployment", "web"}, {"StatefulSet", "db"}} {
		for _, reason := range []string{"ScaledToZero", "ScaledFromZero"} {
			if err := prodWaitEvents(ctx, cs, ns, obj[0], obj[1], reason, 1); err != nil {
				t.Error(err)
			}
		}
	}
	holder, err := prodLeaseHolder(ctx, cs, "zeroscaler-system", lease)
	if err != nil || holder == "" || !strings.Contains(d.Output(), `"identity":"`+holder+`"`) {
		t.Errorf("lease zeroscaler-system/%s: holder %q (%v), want the daemon's identity", lease, holder, err)
	}
	// Releasing the Lease at exit needs its rights too.
	if code, err := d.Stop(10 * time.Second); err != nil || code != 0 {
		t.Errorf("daemon after SIGTERM: exit code %d, err %v; want 0", code, err)
	}
	if h, err := prodLeaseHolder(ctx, cs, "zeroscaler-system", lease); err != nil || h != "" {
		t.Errorf("lease holder after SIGTERM = %q (%v), want released", h, err)
	}
	if out := strings.ToLower(d.Output()); strings.Contains(out, "forbidden") {
		t.Errorf("the daemon was refused something; its log says \"forbidden\"")
	}

	otherNS := newNamespace(t, cs)
	prodCheckAccess(t, prodSA, prodSAGroups, []prodAccess{
		{"list", "apps", "deployments", "", "", true},
		{"watch", "apps", "statefulsets", "", "", true},
		{"patch", "apps", "deployments", "", otherNS, true},
		// Replicas change with the sleep marks, in one patch of the
		// workload: /scale is not needed.
		{"update", "apps", "statefulsets", "scale", otherNS, false},
		{"create", "", "events", "", otherNS, true},
		{"update", "coordination.k8s.io", "leases", "", "zeroscaler-system", true},
		// Namespace annotations apply to their workloads.
		{"list", "", "namespaces", "", "", true},
		{"watch", "", "namespaces", "", "", true},
		{"update", "", "namespaces", "", "", false},
		// Nothing beyond that.
		{"update", "apps", "deployments", "", otherNS, false},
		{"delete", "apps", "deployments", "", otherNS, false},
		{"create", "apps", "deployments", "", otherNS, false},
		{"get", "", "secrets", "", otherNS, false},
		{"list", "", "pods", "", "", false},
		{"create", "coordination.k8s.io", "leases", "", otherNS, false},
		{"delete", "coordination.k8s.io", "leases", "", "zeroscaler-system", false},
		{"escalate", "rbac.authorization.k8s.io", "clusterroles", "", "", false},
	})
}

// TestProductionRBACNamespacedInstall applies the namespaced overlay's RBAC
// and runs the daemon as its ServiceAccount.
func TestProductionRBACNamespacedInstall(t *testing.T) {
	prodRBACNamespacedInstall(t, "deploy/namespaced", prodRender(t, "deploy/namespaced"))
}

// The same, with the right to read the watched Namespace: its annotations
// are then not ignored.
func TestProductionRBACNamespacedReaderInstall(t *testing.T) {
	prodRBACNamespacedInstall(t, "deploy/namespaced-reader", prodRender(t, "deploy/namespaced-reader"))
}

// prodRBACNamespacedInstall applies the RBAC of an install watching the
// namespace "apps" that source rendered into objs, and runs the daemon as
// its ServiceAccount with its Deployment's args: it works in "apps" and can
// touch nothing elsewhere.
func prodRBACNamespacedInstall(t *testing.T, source string, objs []*unstructured.Unstructured) {
	cs := clientset(t)
	daemonBinary(t)
	for _, kind := range []string{"ClusterRole", "ClusterRoleBinding"} {
		if o := prodFind(objs, kind, "zeroscaler"); o != nil {
			t.Fatalf("%s renders %s %s: a single-namespace install needs no cluster-wide rights", source, kind, o.GetName())
		}
	}
	for _, want := range [][2]string{{"Role", "zeroscaler"}, {"RoleBinding", "zeroscaler"}, {"Role", "zeroscaler-leader-election"}} {
		if prodFind(objs, want[0], want[1]) == nil {
			t.Fatalf("%s renders no %s %s", source, want[0], want[1])
		}
	}
	if ns := prodFind(objs, "Role", "zeroscaler").GetNamespace(); ns != "apps" {
		t.Fatalf("%s puts Role zeroscaler in %q, want apps", source, ns)
	}
	manifestArgs := prodContainerArgs(t, prodFind(objs, "Deployment", "zeroscaler"))
	if !slices.Contains(manifestArgs, "--watch-namespace=apps") {
		t.Fatalf("the Deployment's args %q from %s do not watch apps", manifestArgs, source)
	}
	// The base install's test deletes its cluster-wide objects; if they
	// were left, they would grant what this test checks is not granted.
	if _, err := cs.RbacV1().ClusterRoleBindings().Get(t.Context(), "zeroscaler", metav1.GetOptions{}); err == nil {
		t.Fatal("ClusterRoleBinding zeroscaler is left over from another test")
	}

	prodEnsureNamespace(t, cs, "apps")
	prodEnsureNamespace(t, cs, "other")
	prodApplyRBAC(t, objs)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	lease := "zeroscaler-namespaced"
	t.Cleanup(func() {
		_ = cs.CoordinationV1().Leases("zeroscaler-system").Delete(context.Background(), lease, metav1.DeleteOptions{})
	})

	// The same idle workload in apps and in other; only the first is the
	// daemon's.
	series := t.Name()
	stack.Exporter.Set(series, 0)
	t.Cleanup(func() { stack.Exporter.Delete(series) })
	// Named after the test: "apps" outlives each test, and so do the
	// Events counted below.
	name := strings.ToLower(t.Name())
	for _, ns := range []string{"apps", "other"} {
		if _, err := cs.AppsV1().Deployments(ns).Create(ctx, prodDeployment(name, 3, nil, prodAnnotations(series, "3s")), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := cs.AppsV1().Deployments(ns).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
				t.Errorf("delete deployment %s/%s: %v", ns, name, err)
			}
		})
	}
	if err := stack.WaitForValue(ctx, stack.Exporter.Query(series), 0); err != nil {
		t.Fatal(err)
	}

	kubeconfig := prodImpersonatingKubeconfig(t, prodSA, prodSAGroups...)
	d := startProdDaemon(t, "rbac-namespaced", kubeconfig, append(manifestArgs,
		"--leader-election-namespace=zeroscaler-system",
		"--leader-election-id="+lease,
	)...)
	if err := prodWaitDeployment(ctx, cs, "apps", name, "asleep", prodAsleep("3")); err != nil {
		t.Fatal(err)
	}
	if err := prodWaitEvents(ctx, cs, "apps", "Deployment", name, "ScaledToZero", 1); err != nil {
		t.Error(err)
	}
	if h, err := prodLeaseHolder(ctx, cs, "zeroscaler-system", lease); err != nil || h == "" {
		t.Errorf("lease zeroscaler-system/%s: holder %q (%v), want the daemon", lease, h, err)
	}
	stack.Exporter.Set(series, 5)
	if err := prodWaitDeployment(ctx, cs, "apps", name, "awake", prodAwake(3)); err != nil {
		t.Fatal(err)
	}
	other, err := cs.AppsV1().Deployments("other").Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ptr.Deref(other.Spec.Replicas, -1) != 3 || other.Generation != 1 {
		t.Errorf("deployment other/%s was changed: %s, generation %d", name, prodDescribe(other.Spec.Replicas, other.Annotations), other.Generation)
	}
	if code, err := d.Stop(10 * time.Second); err != nil || code != 0 {
		t.Errorf("daemon after SIGTERM: exit code %d, err %v; want 0", code, err)
	}
	if strings.Contains(strings.ToLower(d.Output()), "forbidden") {
		t.Errorf("the daemon was refused something; its log says \"forbidden\"")
	}
	// Reading the watched Namespace takes a ClusterRole of its own: with
	// it, Namespace annotations apply; without it, the daemon says so once.
	reader := prodFind(objs, "ClusterRole", "zeroscaler-namespace-reader") != nil
	if ignored := strings.Contains(d.Output(), "Namespace annotations are ignored"); ignored == reader {
		t.Errorf("%s: can read Namespace apps = %v, but the daemon's log says Namespace annotations are ignored = %v", source, reader, ignored)
	}

	prodCheckAccess(t, prodSA, prodSAGroups, []prodAccess{
		{"list", "apps", "deployments", "", "apps", true},
		{"patch", "apps", "deployments", "", "apps", true},
		{"update", "apps", "deployments", "scale", "apps", false},
		{"create", "", "events", "", "apps", true},
		{"patch", "apps", "deployments", "", "other", false},
		{"patch", "apps", "statefulsets", "", "other", false},
		{"update", "apps", "deployments", "scale", "other", false},
		{"patch", "apps", "deployments", "scale", "other", false},
		{"create", "", "events", "", "other", false},
		{"list", "apps", "deployments", "", "", false},
		{"watch", "apps", "deployments", "", "", false},
		{"list", "apps", "deployments", "", "other", false},
	})

	// And for real, with the ServiceAccount's identity.
	impersonated := rest.CopyConfig(stack.RESTConfig)
	impersonated.Impersonate = rest.ImpersonationConfig{UserName: prodSA, Groups: prodSAGroups}
	sa, err := kubernetes.NewForConfig(impersonated)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("real requests", func(t *testing.T) {
		if _, err := sa.AppsV1().Deployments("apps").Get(ctx, name, metav1.GetOptions{}); err != nil {
			t.Errorf("get deployment in apps as the ServiceAccount: %v", err)
		}
		_, err := sa.AppsV1().Deployments("other").Patch(ctx, name, types.MergePatchType,
			[]byte(`{"spec":{"replicas":0}}`), metav1.PatchOptions{}, "scale")
		if !apierrors.IsForbidden(err) {
			t.Errorf("scale deployment in other as the ServiceAccount: err = %v, want forbidden", err)
		}
		_, err = sa.AppsV1().Deployments("other").Patch(ctx, name, types.MergePatchType,
			[]byte(`{"metadata":{"annotations":{"zeroscaler.io/original-replicas":"3"}}}`), metav1.PatchOptions{})
		if !apierrors.IsForbidden(err) {
			t.Errorf("annotate deployment in other as the ServiceAccount: err = %v, want forbidden", err)
		}
		_, err = sa.AppsV1().Deployments("").List(ctx, metav1.ListOptions{})
		if !apierrors.IsForbidden(err) {
			t.Errorf("list deployments in all namespaces as the ServiceAccount: err = %v, want forbidden", err)
		}
	})
}
