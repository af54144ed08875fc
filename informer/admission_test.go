package informer

import (
	"strings"
	"testing"

	"github.com/zeroscaler/zeroscaler/test/admission"
)

// TestAdmissionCases runs the parser on the cases the e2e suite runs the
// admission policy of deploy/admission on: the daemon refuses exactly the
// cases the policy refuses, with the same text, and the cases marked
// DaemonOnly besides.
func TestAdmissionCases(t *testing.T) {
	d := testDefaults(t)
	for _, c := range admission.Cases {
		t.Run(c.Name, func(t *testing.T) {
			for _, where := range []string{"workload", "namespace"} {
				var err error
				if where == "workload" {
					_, err = Parse(c.Annotations(), d)
				} else {
					_, err = parse(map[string]string{}, c.Annotations(), "apps", d)
				}
				switch {
				case c.Message == "" && err != nil:
					t.Errorf("on a %s: the daemon refuses what the case accepts: %v", where, err)
				case c.Message == "":
				case err == nil:
					t.Errorf("on a %s: the daemon accepts what the case refuses with %q", where, c.Message)
				case c.DaemonOnly && !strings.HasPrefix(err.Error(), c.Message):
					t.Errorf("on a %s: the daemon says\n\t%s\nwant it to begin with\n\t%s", where, err, c.Message)
				case !c.DaemonOnly && where == "workload" && err.Error() != c.Message:
					t.Errorf("the daemon says\n\t%s\nwant\n\t%s", err, c.Message)
				case !c.DaemonOnly && where == "namespace" && err.Error() != c.Message+" (inherited from Namespace apps)":
					t.Errorf("on a namespace: the daemon says\n\t%s\nwant\n\t%s (inherited from Namespace apps)", err, c.Message)
				}
			}
		})
	}
}
