//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/yaml"

	"github.com/zeroscaler/zeroscaler/test/localstack"
)

// The chart is rendered as "helm install zeroscaler deploy/helm/zeroscaler
// -n zeroscaler-system" would install it, which names every object as
// deploy/ does.
const (
	chartDir       = "deploy/helm/zeroscaler"
	chartRelease   = "zeroscaler"
	chartNamespace = "zeroscaler-system"
)

// chartCase is one set of values the chart is linted, rendered and applied
// with.
type chartCase struct {
	name string
	set  []string // helm --set flags
	// kustomize is the kustomize directory whose RBAC the rendering must
	// match; "" when none does.
	kustomize string
}

// chartConfigSecret is the --prometheus-config Secret of the "everything"
// case.
const chartConfigSecret = "zeroscaler-prometheus"

var chartCases = []chartCase{
	{name: "defaults", kustomize: "deploy"},
	{name: "watchNamespace", set: []string{"watchNamespace=apps"}, kustomize: "deploy/namespaced"},
	{name: "readWatchedNamespace", set: []string{"watchNamespace=apps", "rbac.readWatchedNamespace=true"}, kustomize: "deploy/namespaced-reader"},
	// Every optional object and every value that changes the Deployment.
	{name: "everything", set: []string{
		"serviceMonitor.enabled=true",
		"serviceMonitor.interval=30s",
		"prometheusRule.enabled=true",
		"prometheusRule.additionalLabels.release=kube-prometheus-stack",
		"grafanaDashboard.enabled=true",
		"admissionPolicy.enabled=true",
		"prometheus.address=",
		"prometheus.config.secretName=" + chartConfigSecret,
		"prometheus.allowedServerAddresses={http://thanos.monitoring.svc:9090}",
		"prometheus.allowedWorkloadHeaders={X-Trace-Id}",
		"leaderElection.leaseDuration=30s",
		"extraArgs={--default-cooldown-period=30m,--log-level=debug}",
		"image.digest=sha256:0000000000000000000000000000000000000000000000000000000000000000",
		"podAntiAffinity=hard",
	}},
}

// chartCaseNamed is the case of chartCases with this name.
func chartCaseNamed(t *testing.T, name string) chartCase {
	t.Helper()
	for _, c := range chartCases {
		if c.name == name {
			return c
		}
	}
	t.Fatalf("no chart case %q", name)
	return chartCase{}
}

// chartTool runs a binary of bin/ (helm, kubectl) with stdin and returns
// its standard output; on failure the error carries its standard error.
func chartTool(ctx context.Context, stdin []byte, tool string, args ...string) ([]byte, error) {
	root, err := localstack.RepoRoot()
	if err != nil {
		return nil, err
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, filepath.Join(root, "bin", tool), args...)
	cmd.Dir = root
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %w\n%s%s", tool, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.Bytes(), nil
}

func chartSetFlags(set []string) []string {
	var args []string
	for _, s := range set {
		args = append(args, "--set", s)
	}
	return args
}

// chartTemplate runs helm template with --set flags and returns the manifests.
func chartTemplate(t *testing.T, set ...string) []byte {
	t.Helper()
	out, err := chartTool(t.Context(), nil, "helm", append([]string{"template", chartRelease, chartDir,
		"--namespace", chartNamespace}, chartSetFlags(set)...)...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// chartRender renders the chart with --set flags into objects.
func chartRender(t *testing.T, set ...string) []*unstructured.Unstructured {
	t.Helper()
	return prodDecode(t, "the Helm chart", bytes.NewReader(chartTemplate(t, set...)))
}

// TestChartLint runs helm lint --strict on every case, and checks that the
// chart refuses values that cannot work with a message naming the value.
func TestChartLint(t *testing.T) {
	for _, c := range chartCases {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"lint", "--strict", chartDir, "--namespace", chartNamespace}, chartSetFlags(c.set)...)
			out, err := chartTool(t.Context(), nil, "helm", args...)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(out), "1 chart(s) linted, 0 chart(s) failed") {
				t.Fatalf("helm lint says:\n%s", out)
			}
		})
	}
	for _, bad := range []struct {
		set  []string
		want string
	}{
		{[]string{"leaderElection.enabled=false"}, "replicaCount > 1 needs leaderElection.enabled"},
		{[]string{"prometheus.address="}, "set prometheus.address or prometheus.config.secretName"},
		{[]string{"podAntiAffinity=sideways"}, `podAntiAffinity is "sideways"`},
		{[]string{"serviceAccount.create=false"}, "serviceAccount.name is required"},
	} {
		t.Run(strings.Join(bad.set, ","), func(t *testing.T) {
			_, err := chartTool(t.Context(), nil, "helm", append([]string{"template", chartRelease, chartDir}, chartSetFlags(bad.set)...)...)
			if err == nil || !strings.Contains(err.Error(), bad.want) {
				t.Fatalf("helm template with %v: err = %v, want one saying %q", bad.set, err, bad.want)
			}
		})
	}
}

// TestChartDryRunServer applies each case's rendering to the API server
// with kubectl apply --dry-run=server, which runs every validation and
// admission step short of storing. The Prometheus Operator's CRDs are
// replaced by minimal ones that accept any spec (their schemas are not
// vendored here); the PrometheusRule's and dashboard's content is checked
// against their source files instead.
func TestChartDryRunServer(t *testing.T) {
	cs := clientset(t)
	prodEnsureNamespace(t, cs, chartNamespace)
	prodEnsureNamespace(t, cs, "apps")
	chartInstallMinimalCRDs(t)
	for _, c := range chartCases {
		t.Run(c.name, func(t *testing.T) {
			manifests := chartTemplate(t, c.set...)
			objs := prodDecode(t, "the Helm chart", bytes.NewReader(manifests))
			out, err := chartTool(t.Context(), manifests, "kubectl", "--kubeconfig", stack.KubeconfigPath,
				"apply", "--dry-run=server", "-o", "name", "-f", "-")
			if err != nil {
				t.Fatal(err)
			}
			applied := strings.Fields(string(out))
			if len(applied) != len(objs) {
				t.Fatalf("kubectl applied %d objects, the chart rendered %d:\n%s", len(applied), len(objs), out)
			}
			// Nothing was stored.
			if _, err := cs.AppsV1().Deployments(chartNamespace).Get(t.Context(), chartRelease, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Fatalf("get the Deployment after a dry run: err = %v, want not found", err)
			}
		})
	}
}

// chartMinimalCRDs are ServiceMonitor and PrometheusRule CRDs that accept
// any spec.
const chartMinimalCRDs = `
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: prometheusrules.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  names: {kind: PrometheusRule, listKind: PrometheusRuleList, plural: prometheusrules, singular: prometheusrule}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
`

// chartInstallMinimalCRDs installs chartMinimalCRDs, waits until they are
// served, and deletes them at cleanup.
func chartInstallMinimalCRDs(t *testing.T) {
	t.Helper()
	kubectl := func(ctx context.Context, stdin []byte, args ...string) error {
		_, err := chartTool(ctx, stdin, "kubectl", append([]string{"--kubeconfig", stack.KubeconfigPath}, args...)...)
		return err
	}
	crds := []string{"crd/servicemonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com"}
	if err := kubectl(t.Context(), []byte(chartMinimalCRDs), "create", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := kubectl(context.Background(), nil, append([]string{"delete", "--wait=false"}, crds...)...); err != nil {
			t.Error(err)
		}
	})
	if err := kubectl(t.Context(), nil, append([]string{"wait", "--for=condition=Established", "--timeout=30s"}, crds...)...); err != nil {
		t.Fatal(err)
	}
	// kubectl discovers the new kinds itself, once the API server serves them.
	err := wait.PollUntilContextTimeout(t.Context(), prodPoll, prodWait, true, func(ctx context.Context) (bool, error) {
		return kubectl(ctx, nil, "get", "servicemonitors,prometheusrules", "--all-namespaces") == nil, nil
	})
	if err != nil {
		t.Fatalf("wait for the CRDs to be served: %v", err)
	}
}

// TestChartOptionalObjects checks the "everything" rendering against the
// files it must carry: the PrometheusRule holds the groups of
// deploy/prometheus/rules.yaml, the dashboard ConfigMap the JSON of
// deploy/grafana/zeroscaler.json, the admission policy the objects of
// deploy/admission/; and the Deployment reads its --prometheus-config from
// the Secret.
func TestChartOptionalObjects(t *testing.T) {
	objs := chartRender(t, chartCaseNamed(t, "everything").set...)
	root, err := localstack.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	read := func(path string) []byte {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(root, path))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}

	t.Run("PrometheusRule", func(t *testing.T) {
		rule := prodFind(objs, "PrometheusRule", chartRelease)
		if rule == nil {
			t.Fatal("no PrometheusRule rendered")
		}
		var file struct {
			Groups []any `json:"groups"`
		}
		if err := yaml.Unmarshal(read("deploy/prometheus/rules.yaml"), &file); err != nil {
			t.Fatal(err)
		}
		got, _, _ := unstructured.NestedSlice(rule.Object, "spec", "groups")
		if len(file.Groups) == 0 {
			t.Fatal("deploy/prometheus/rules.yaml has no groups")
		}
		if want, got := chartYAML(t, file.Groups), chartYAML(t, got); want != got {
			t.Errorf("the PrometheusRule's groups differ from deploy/prometheus/rules.yaml:\n--- file:\n%s\n--- chart:\n%s", want, got)
		}
		if rule.GetLabels()["release"] != "kube-prometheus-stack" {
			t.Errorf("PrometheusRule labels %v lack prometheusRule.additionalLabels", rule.GetLabels())
		}
	})

	t.Run("dashboard", func(t *testing.T) {
		cm := prodFind(objs, "ConfigMap", chartRelease+"-dashboard")
		if cm == nil {
			t.Fatal("no dashboard ConfigMap rendered")
		}
		if cm.GetLabels()["grafana_dashboard"] != "1" {
			t.Errorf("dashboard ConfigMap labels %v lack grafana_dashboard: \"1\"", cm.GetLabels())
		}
		got, _, _ := unstructured.NestedString(cm.Object, "data", "zeroscaler.json")
		want := read("deploy/grafana/zeroscaler.json")
		if strings.TrimRight(got, "\n") != strings.TrimRight(string(want), "\n") {
			t.Errorf("the dashboard ConfigMap does not hold deploy/grafana/zeroscaler.json as it is")
		}
		if !json.Valid([]byte(got)) {
			t.Errorf("the dashboard in the ConfigMap is not valid JSON")
		}
	})

	t.Run("admission policy", func(t *testing.T) {
		files, err := filepath.Glob(filepath.Join(root, "deploy/admission/*.yaml"))
		if err != nil || len(files) == 0 {
			t.Fatalf("deploy/admission/*.yaml: %v files, err %v", len(files), err)
		}
		for _, f := range files {
			for _, want := range prodDecode(t, f, bytes.NewReader(read(strings.TrimPrefix(f, root+"/")))) {
				if want.GetKind() == "Kustomization" {
					continue
				}
				got := prodFind(objs, want.GetKind(), want.GetName())
				if got == nil {
					t.Errorf("the chart renders no %s %s of %s", want.GetKind(), want.GetName(), f)
					continue
				}
				// Rendered as release zeroscaler in zeroscaler-system, the
				// chart's ServiceAccount is the one deploy/ names.
				if w, g := chartYAML(t, want.Object), chartYAML(t, got.Object); w != g {
					t.Errorf("%s %s differs from %s:\n--- file:\n%s\n--- chart:\n%s", want.GetKind(), want.GetName(), f, w, g)
				}
			}
		}
	})

	t.Run("Deployment", func(t *testing.T) {
		d := prodFind(objs, "Deployment", chartRelease)
		if d == nil {
			t.Fatal("no Deployment rendered")
		}
		args := prodContainerArgs(t, d)
		for _, want := range []string{
			"--prometheus-config=/etc/zeroscaler/prometheus/config.yaml",
			"--allowed-server-address=http://thanos.monitoring.svc:9090",
			"--allowed-workload-header=X-Trace-Id",
			"--leader-election-lease-duration=30s",
			"--default-cooldown-period=30m",
		} {
			if !slices.Contains(args, want) {
				t.Errorf("args %q lack %s", args, want)
			}
		}
		if slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--prometheus-address") }) {
			t.Errorf("args %q name a --prometheus-address though prometheus.address is empty", args)
		}
		vols, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "volumes")
		if !strings.Contains(fmt.Sprint(vols), "secretName:"+chartConfigSecret) {
			t.Errorf("volumes %v do not mount Secret %s", vols, chartConfigSecret)
		}
	})
}

// chartYAML prints a decoded value as YAML with sorted keys, so that two
// decodings of equal YAML print the same.
func chartYAML(t *testing.T, v any) string {
	t.Helper()
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestChartRBACClusterInstall runs the impersonation test of the
// cluster-wide kustomize install on the chart's default rendering.
func TestChartRBACClusterInstall(t *testing.T) {
	prodEnsureNamespace(t, clientset(t), chartNamespace) // helm install --create-namespace
	prodRBACClusterInstall(t, "the Helm chart", chartRender(t))
}

// TestChartRBACNamespacedInstall runs the impersonation test of the
// namespaced kustomize install on the chart rendered with watchNamespace.
func TestChartRBACNamespacedInstall(t *testing.T) {
	prodEnsureNamespace(t, clientset(t), chartNamespace)
	prodRBACNamespacedInstall(t, "the Helm chart with watchNamespace=apps", chartRender(t, "watchNamespace=apps"))
}

// TestChartRBACMatchesKustomize fails when the rights the chart grants
// differ from those of the kustomize install it stands for. Rights are
// compared as the set of (subject, where, API group, resource, verb,
// resource name) they grant, so names, order and the split into rules do
// not matter.
func TestChartRBACMatchesKustomize(t *testing.T) {
	for _, c := range chartCases {
		if c.kustomize == "" {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			chart := chartGrants(t, chartRender(t, c.set...))
			kustomize := chartGrants(t, prodRender(t, c.kustomize))
			if len(kustomize) == 0 {
				t.Fatalf("%s grants nothing", c.kustomize)
			}
			missing := slices.DeleteFunc(slices.Clone(kustomize), func(g string) bool { return slices.Contains(chart, g) })
			extra := slices.DeleteFunc(slices.Clone(chart), func(g string) bool { return slices.Contains(kustomize, g) })
			if len(missing)+len(extra) != 0 {
				t.Errorf("the chart with %v and %s grant different rights.\nOnly %s grants:\n\t%s\nOnly the chart grants:\n\t%s",
					c.set, c.kustomize, c.kustomize, strings.Join(missing, "\n\t"), strings.Join(extra, "\n\t"))
			}
		})
	}
}

// chartGrants expands the bindings of a rendering into the sorted list of
// single rights they grant, one line each:
// "SUBJECT in SCOPE: VERB GROUP/RESOURCE[/SUBRESOURCE] [NAME]".
func chartGrants(t *testing.T, objs []*unstructured.Unstructured) []string {
	t.Helper()
	convert := func(o *unstructured.Unstructured, into any) {
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, into); err != nil {
			t.Fatalf("convert %s %s: %v", o.GetKind(), o.GetName(), err)
		}
	}
	rules := func(kind, namespace, name string) []rbacv1.PolicyRule {
		for _, o := range objs {
			if o.GetKind() == kind && o.GetName() == name && (kind == "ClusterRole" || o.GetNamespace() == namespace) {
				var r rbacv1.ClusterRole // a Role has the same rules field
				convert(o, &r)
				return r.Rules
			}
		}
		t.Fatalf("a binding refers to %s %s/%s, which is not rendered", kind, namespace, name)
		return nil
	}
	var grants []string
	for _, o := range objs {
		var b rbacv1.RoleBinding // a ClusterRoleBinding has the same fields
		scope := "namespace " + o.GetNamespace()
		switch o.GetKind() {
		case "ClusterRoleBinding":
			scope = "the cluster"
		case "RoleBinding":
		default:
			continue
		}
		convert(o, &b)
		for _, s := range b.Subjects {
			subject := s.Kind + " " + s.Name
			if s.Namespace != "" {
				subject = s.Kind + " " + s.Namespace + "/" + s.Name
			}
			for _, r := range rules(b.RoleRef.Kind, o.GetNamespace(), b.RoleRef.Name) {
				names := r.ResourceNames
				if len(names) == 0 {
					names = []string{"(any)"}
				}
				for _, v := range r.Verbs {
					for _, u := range r.NonResourceURLs {
						grants = append(grants, fmt.Sprintf("%s in %s: %s %s", subject, scope, v, u))
					}
					for _, g := range r.APIGroups {
						for _, res := range r.Resources {
							for _, n := range names {
								grants = append(grants, fmt.Sprintf("%s in %s: %s %s/%s %s", subject, scope, v, g, res, n))
							}
						}
					}
				}
			}
		}
	}
	slices.Sort(grants)
	return slices.Compact(grants)
}
