package main

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/zeroscaler/zeroscaler/handler"
	"github.com/zeroscaler/zeroscaler/informer"
)

func TestGroupSet(t *testing.T) {
	d := informer.Defaults{UptimeFilter: `job="prometheus"`, CooldownPeriod: 5 * time.Minute, PollingInterval: 30 * time.Second}
	for _, tc := range []struct {
		name          string
		s             set
		setName       string
		loops, groups int
		// per workload index: namespace suffix, group, query (or "")
		want map[int][3]string
	}{
		{
			name: "lone workloads keep the steady part's names", s: set{N: 1000, K: 10}, setName: "n1000-k10", loops: 1000,
			want: map[int][3]string{
				0:  {"0", "", `zs_bench{set="n1000-k10",q="0"}`},
				13: {"1", "", `zs_bench{set="n1000-k10",q="3"}`},
			},
		},
		{
			name: "one member asks", s: set{N: 40, K: 3, Group: 10}, setName: "n40-g10-k3", loops: 4, groups: 4,
			want: map[int][3]string{
				0:  {"0", "g-0000", `zs_bench{set="n40-g10-k3",q="0"}`},
				9:  {"0", "g-0000", ""},
				10: {"1", "g-0001", `zs_bench{set="n40-g10-k3",q="1"}`},
				11: {"1", "g-0001", ""},
				30: {"3", "g-0003", `zs_bench{set="n40-g10-k3",q="0"}`},
				39: {"3", "g-0003", ""},
			},
		},
		{
			name: "every member asks its group's question", s: set{N: 50, K: 5, Group: 10, AllAsk: true}, setName: "n50-g10-k5-all", loops: 5, groups: 5,
			want: map[int][3]string{
				0:  {"0", "g-0000", `zs_bench{set="n50-g10-k5-all",q="0"}`},
				9:  {"0", "g-0000", `zs_bench{set="n50-g10-k5-all",q="0"}`},
				45: {"0", "g-0004", `zs_bench{set="n50-g10-k5-all",q="4"}`},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.s
			if s.name() != tc.setName || s.loops() != tc.loops || s.groups() != tc.groups {
				t.Errorf("name %q, loops %d, groups %d; want %q, %d, %d", s.name(), s.loops(), s.groups(), tc.setName, tc.loops, tc.groups)
			}
			for i, want := range tc.want {
				dep := s.deployment(i)
				if ns := "zsb-" + tc.setName + "-" + want[0]; dep.Namespace != ns {
					t.Errorf("workload %d in namespace %s, want %s", i, dep.Namespace, ns)
				}
				if dep.Labels[setLabel] != tc.setName {
					t.Errorf("workload %d labelled %q", i, dep.Labels[setLabel])
				}
				// The daemon's own parser reads what the daemon will read.
				cfg, err := informer.Parse(dep.Annotations, d)
				if err != nil || cfg.Mode != handler.Managed {
					t.Fatalf("workload %d: %v, mode %v; annotations %v", i, err, cfg.Mode, dep.Annotations)
				}
				if cfg.Group != want[1] || cfg.Metadata.Query != want[2] {
					t.Errorf("workload %d: group %q, query %q; want %q, %q", i, cfg.Group, cfg.Metadata.Query, want[1], want[2])
				}
			}
		})
	}
}

// Every group has one namespace, the set's K questions are all asked, and
// each grouped set is compared with a lone one of the same N and the same
// questions, or one question per loop as it has.
func TestGroupPairs(t *testing.T) {
	pairs := groupPairs(10000)
	if len(pairs) != 3 {
		t.Fatalf("%d pairs", len(pairs))
	}
	for _, p := range pairs {
		g, l := p.Grouped, p.Lone
		if g.N != 10000 || l.N != 10000 || g.groups() != 1000 || g.loops() != 1000 || l.Group != 0 || l.loops() != 10000 {
			t.Errorf("pair %+v", p)
		}
		if sameK, onePerLoop := g.K == l.K, g.K == g.loops() && l.K == l.loops(); !sameK && !onePerLoop {
			t.Errorf("%s asks %d questions for %d loops, %s %d for %d", g.name(), g.K, g.loops(), l.name(), l.K, l.loops())
		}
		namespaces, questions := map[string]string{}, map[string]bool{}
		for i := range g.N {
			dep := g.deployment(i)
			group := dep.Annotations[informer.AnnotationGroup]
			if ns, ok := namespaces[group]; ok && ns != dep.Namespace {
				t.Fatalf("%s: group %s in %s and %s", g.name(), group, ns, dep.Namespace)
			}
			namespaces[group] = dep.Namespace
			if q, ok := dep.Annotations[informer.AnnotationQuery]; ok {
				questions[q] = true
			}
		}
		if len(namespaces) != g.groups() || len(questions) != g.K {
			t.Errorf("%s: %d groups, %d questions; want %d, %d", g.name(), len(namespaces), len(questions), g.groups(), g.K)
		}
	}
}

// create makes the namespaces its Deployments are in (a fake clientset does
// not check that they exist).
func TestCreateMakesTheNamespaces(t *testing.T) {
	for _, s := range []set{{N: 100, K: 10}, {N: 100, K: 10, Group: 10}, {N: 100, K: 10, Group: 10, AllAsk: true}} {
		cs := fake.NewClientset()
		if _, err := s.create(t.Context(), cs); err != nil {
			t.Fatal(err)
		}
		deps, err := cs.AppsV1().Deployments("").List(t.Context(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(deps.Items) != s.N {
			t.Errorf("%s: %d Deployments, want %d", s.name(), len(deps.Items), s.N)
		}
		for _, d := range deps.Items {
			if _, err := cs.CoreV1().Namespaces().Get(t.Context(), d.Namespace, metav1.GetOptions{}); err != nil {
				t.Fatalf("%s: %s/%s: %v", s.name(), d.Namespace, d.Name, err)
			}
		}
	}
}

func TestLoopsRunningCountsGroups(t *testing.T) {
	page := func(loops, groups int) metricFamilies {
		m, err := parseMetrics(strings.NewReader(
			"# TYPE zeroscaler_loops gauge\nzeroscaler_loops " + strconv.Itoa(loops) + "\n# TYPE zeroscaler_groups gauge\nzeroscaler_groups " + strconv.Itoa(groups) + "\n"))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	grouped := set{N: 10000, K: 10, Group: 10}
	for _, tc := range []struct {
		loops, groups int
		s             set
		want          bool
	}{
		{1000, 1000, grouped, true},
		{1000, 999, grouped, false},
		{999, 1000, grouped, false},
		{10000, 0, set{N: 10000, K: 10}, true},
		{9999, 0, set{N: 10000, K: 10}, false},
	} {
		if got := loopsRunning(page(tc.loops, tc.groups), 0, tc.s); got != tc.want {
			t.Errorf("%s with %d loops, %d groups: %v, want %v", tc.s.name(), tc.loops, tc.groups, got, tc.want)
		}
	}
}

// steadyRun is a 30 s run whose every sample is the same.
func steadyRun(s set, rss, cpuPerMin, requests float64) *result {
	st := &steady{Set: s, Polling: 30 * time.Second}
	for range 3 {
		st.CPUPerMin = append(st.CPUPerMin, cpuPerMin)
		st.ReqPerInterval = append(st.ReqPerInterval, requests)
		st.HealthPerInterval = append(st.HealthPerInterval, 0)
		st.DaemonWritesPerMin = append(st.DaemonWritesPerMin, 0)
		st.ServerWritesPerMin = append(st.ServerWritesPerMin, 0)
		st.ConnsPerInterval = append(st.ConnsPerInterval, 0)
		st.MachineBusy = append(st.MachineBusy, 0.1)
		for range 6 {
			st.RSS = append(st.RSS, rss)
			st.Heap = append(st.Heap, rss/2)
			st.Stack = append(st.Stack, rss/10)
			st.Goroutines = append(st.Goroutines, float64(s.loops()))
			st.LoopsGauge = append(st.LoopsGauge, float64(s.loops()))
			st.GroupsGauge = append(st.GroupsGauge, float64(s.groups()))
			st.WorkloadsGauge = append(st.WorkloadsGauge, float64(s.N))
		}
	}
	st.Startup = startup{Ready: time.Second, Loops: time.Second, Reported: time.Second, Asked: 30 * time.Second}
	return &result{Set: s, Slow: st}
}

func TestGroupsReport(t *testing.T) {
	g := &groupsResult{N: 10000}
	lone := map[int]*result{}
	for _, p := range groupPairs(10000) {
		if lone[p.Lone.K] == nil {
			lone[p.Lone.K] = steadyRun(p.Lone, 150<<20, 2, float64(p.Lone.K))
		}
		g.Pairs = append(g.Pairs, resultPair{Grouped: steadyRun(p.Grouped, 100<<20, 1, float64(p.Grouped.K)), Lone: lone[p.Lone.K]})
	}
	rep := &report{Runs: 3, Groups: g}
	if m := rep.misses(); len(m) != 0 {
		t.Errorf("misses %q, want none", m)
	}
	if got := len(g.columns()); got != 5 {
		t.Errorf("%d columns, want 2 lone and 3 grouped", got)
	}
	var md bytes.Buffer
	rep.write(&md)
	for _, want := range []string{
		"## Groups: N = 10,000 in 1,000 groups of 10",
		"| Figure | alone, K = 10 | alone, K = 10,000 | groups, one asks, K = 10 | groups, one asks, K = 1,000 | groups, all ask, K = 1,000 |",
		"| `zeroscaler_loops` at steady state (lowest–highest sample) | 10,000 ✅ | 10,000 ✅ | 1,000 ✅ | 1,000 ✅ | 1,000 ✅ |",
		"| `zeroscaler_groups` at steady state | 0 ✅ | 0 ✅ | 1,000 ✅ | 1,000 ✅ | 1,000 ✅ |",
		"| Prometheus requests per polling interval (30 s) | 10.0 ✅ | 10000.0 ✅ | 10.0 ✅ | 1000.0 ✅ | 1000.0 ✅ |",
		"| CPU at 30 s polling | groups, one asks, K = 1,000: 1.00 s/min (1.7 %) | alone, K = 10,000: 2.00 s/min (3.3 %) | 0.50 | ✅ |",
		"- n10000-g10-k1000-all, 30s polling: ",
		"Every target measured here was met.",
		"Every target of this section was met.",
	} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, md.String())
		}
	}
	if strings.Contains(md.String(), "5 s polling") {
		t.Errorf("report shows 5 s figures the groups part does not measure:\n%s", md.String())
	}

	// Grouping that costs more than noise, and a group loop missing.
	slow := g.Pairs[1].Grouped.Slow
	for i := range slow.CPUPerMin {
		slow.CPUPerMin[i] = 2.3
	}
	slow.GroupsGauge[4] = 999
	misses := strings.Join(rep.misses(), "\n")
	if !strings.Contains(misses, "n10000-g10-k1000: `zeroscaler_groups` at steady state not 1,000 in every sample") {
		t.Errorf("misses lack the missing group loop:\n%s", misses)
	}
	if !strings.Contains(misses, "n10000-g10-k1000: CPU at 30 s polling 2.30 s/min (3.8 %), above the lone n10000-k10000's highest sample 2.00 s/min (3.3 %) by more than 10 %") {
		t.Errorf("misses lack the regression:\n%s", misses)
	}
	md.Reset()
	rep.write(&md)
	if !strings.Contains(md.String(), "| `zeroscaler_groups` at steady state | 0 ✅ | 0 ✅ | 1,000 ✅ | 999–1,000 ❌ | 1,000 ✅ |") ||
		!strings.Contains(md.String(), "Missed in this section:\n\n- n10000-g10-k1000: `zeroscaler_groups` at steady state not 1,000") ||
		!strings.Contains(md.String(), "\n- n10000-g10-k1000: CPU at 30 s polling 2.30 s/min") {
		t.Errorf("report does not show the missing group loop:\n%s", md.String())
	}
}
