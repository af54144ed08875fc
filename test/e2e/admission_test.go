//go:build e2e

package e2e

import (
	"context"
	"errors"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/zeroscaler/zeroscaler/test/admission"
	"github.com/zeroscaler/zeroscaler/test/localstack"
)

// deploy/admission on a real kube-apiserver (issue 11): every case of
// test/admission is refused by the policy with the daemon's own text, or
// let through, as the daemon's parser does (informer's TestAdmissionCases
// runs the parser on the same cases); kubectl annotate with a bad value
// fails and a good one passes; only the daemon's ServiceAccount writes the
// daemon's marks. The policy binds cluster-wide, so it runs on a stack of
// its own: the other scenarios create bad annotations on purpose.
func TestAdmissionPolicy(t *testing.T) {
	ks := localstack.ForTest(t, localstack.Options{})
	cs, err := kubernetes.NewForConfig(ks.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	kubectl := func(args ...string) (string, error) {
		out, err := chartTool(t.Context(), nil, "kubectl", append([]string{"--kubeconfig", ks.KubeconfigPath}, args...)...)
		return string(out), err
	}
	if out, err := kubectl("apply", "-k", "deploy/admission"); err != nil {
		t.Fatalf("kubectl apply -k deploy/admission: %v\n%s", err, out)
	}
	ns := newNamespace(t, cs)

	// The policy takes effect once the API server has loaded it.
	var bad admission.Case
	for _, c := range admission.Cases {
		if c.Refused() {
			bad = c
			break
		}
	}
	waitFor(t, patience, "the policy to refuse "+bad.Name, func(ctx context.Context) (bool, string, error) {
		err := createDeployment(ctx, cs, ns, "probe", bad.Annotations(), true)
		return err != nil, errText(err), nil
	})

	for _, c := range admission.Cases {
		t.Run(c.Name, func(t *testing.T) {
			err := createDeployment(testContext(t), cs, ns, "case", c.Annotations(), true)
			switch {
			case !c.Refused() && err != nil:
				t.Errorf("refused, want let through (the daemon %s): %v", daemonSays(c), err)
			case c.Refused() && err == nil:
				t.Errorf("let through, want refused with %q", c.Message)
			case c.Refused() && !strings.Contains(err.Error(), c.Message):
				t.Errorf("refused with %q, want the daemon's text %q", err, c.Message)
			}
		})
	}

	t.Run("kubectl annotate", func(t *testing.T) {
		if err := createDeployment(testContext(t), cs, ns, "web", admission.Base, false); err != nil {
			t.Fatal(err)
		}
		out, err := kubectl("annotate", "-n", ns, "deployment/web", "--overwrite", "zeroscaler.io/threshold=lots")
		if want := admission.Message("zeroscaler.io/threshold", "lots", "is not a finite number"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("kubectl annotate threshold=lots: err = %v (%s), want it to say %q", err, out, want)
		}
		if out, err := kubectl("annotate", "-n", ns, "deployment/web", "--overwrite", "zeroscaler.io/threshold=2.5"); err != nil {
			t.Errorf("kubectl annotate threshold=2.5: %v\n%s", err, out)
		}
	})

	t.Run("the daemon's marks", func(t *testing.T) {
		marks := []byte(`{"metadata":{"annotations":{"zeroscaler.io/original-replicas":"3"}}}`)
		_, err := cs.AppsV1().Deployments(ns).Patch(testContext(t), "web", types.MergePatchType, marks, metav1.PatchOptions{})
		if err == nil || !strings.Contains(err.Error(), "is written only by zeroscaler") {
			t.Errorf("the admin wrote original-replicas: err = %v, want a refusal", err)
		}
		// The daemon's ServiceAccount may (given the rights to patch).
		if _, err := kubectl("create", "clusterrolebinding", "zeroscaler-admission-test", "--clusterrole=cluster-admin",
			"--serviceaccount=zeroscaler-system:zeroscaler"); err != nil {
			t.Fatal(err)
		}
		sa := rest.CopyConfig(ks.RESTConfig)
		sa.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:zeroscaler-system:zeroscaler",
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:zeroscaler-system", "system:authenticated"}}
		saClient, err := kubernetes.NewForConfig(sa)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := saClient.AppsV1().Deployments(ns).Patch(testContext(t), "web", types.MergePatchType, marks, metav1.PatchOptions{}); err != nil {
			t.Errorf("the daemon's ServiceAccount could not write original-replicas: %v", err)
		}
	})
}

// createDeployment creates a Deployment with these annotations; dryRun
// stops it at admission.
func createDeployment(ctx context.Context, cs kubernetes.Interface, ns, name string, ann map[string]string, dryRun bool) error {
	sel, tmpl := podTemplate(name)
	opts := metav1.CreateOptions{}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	_, err := cs.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann},
		Spec:       appsv1.DeploymentSpec{Replicas: ptr.To[int32](1), Selector: sel, Template: tmpl},
	}, opts)
	return err
}

func daemonSays(c admission.Case) string {
	if c.Message == "" {
		return "accepts it"
	}
	return "refuses it, which the policy cannot check: " + c.Message
}

func errText(err error) string {
	if err == nil {
		return "let through"
	}
	var s interface{ Status() metav1.Status }
	if errors.As(err, &s) {
		return s.Status().Message
	}
	return err.Error()
}
