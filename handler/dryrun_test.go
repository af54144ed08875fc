package handler

import (
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
)

// Behaviour 10: --dry-run tells exactly what a real run would, in the same
// order, on the same inputs, including updates by others that change the
// resourceVersion but neither replicas nor marks (labels, status).
func TestDryRunTellsWhatARealRunDoes(t *testing.T) {
	type step struct {
		reading reading
		healthy bool
		// relabel changes a label before the check, as a person or a
		// controller updating status would: a new resourceVersion.
		relabel bool
	}
	idleHealthy := step{reading: idle, healthy: true}
	script := []step{
		{reading: active, healthy: true},
		idleHealthy, idleHealthy,
		{reading: idle, healthy: true, relabel: true},
		idleHealthy, // cooled down: sleep
		{reading: idle, healthy: true, relabel: true},
		idleHealthy,
		{reading: noData, healthy: true, relabel: true},
		idleHealthy,
		{reading: active, healthy: true}, // wake
		{reading: active, healthy: true, relabel: true},
		idleHealthy, idleHealthy, idleHealthy,
		{reading: idle, healthy: false}, // not healthy: stays awake
		idleHealthy,                     // sleep
		{reading: promDown, healthy: true, relabel: true}, // fail open: wake
		idleHealthy, idleHealthy, idleHealthy, idleHealthy,
	}
	starts := map[string]runtime.Object{
		"running":                  deployment("web", 3, nil),
		"running with stale marks": deployment("web", 3, asleep("3")),
		"asleep":                   deployment("web", 0, asleep("3")),
	}
	for name, obj := range starts {
		t.Run(name, func(t *testing.T) {
			play := func(dryRun bool) []string {
				hs := newHarness(t, dryRun, obj.(*appsv1.Deployment).DeepCopy())
				hs.h.Sync(managed("web"))
				stop := hs.run()
				defer stop()
				var told []string
				for i, s := range script {
					hs.prom.set("q", s.reading)
					hs.prom.setHealthy(s.healthy, nil)
					if s.relabel {
						hs.world.update(ref("web"), func(u *unstructured.Unstructured) {
							u.SetLabels(map[string]string{"app": "web", "step": strings.Repeat("x", i+1)})
						})
					}
					hs.tick(1)
					for _, e := range hs.takeEvents() {
						told = append(told, strings.Replace(e, "(dry run) ", "", 1))
					}
				}
				if dryRun {
					if writes := hs.world.writeActions(); writes != 0 {
						t.Errorf("dry run: %d write requests, want none", writes)
					}
				}
				return told
			}
			real, dry := play(false), play(true)
			if len(real) < 2 && name == "running" {
				t.Fatalf("the script told only %q in a real run: it should sleep and wake", real)
			}
			wantStrings(t, "events of a dry run against a real run", dry, real)
		})
	}
}
