package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// The groups part: N workloads in groups of groupSize, each group in one
// namespace, measured at steady state beside N lone workloads.
const groupSize = 10

// regressionMargin is how far above the lone run's highest sample a
// grouped run's median may be and still count as within noise.
const regressionMargin = 0.10

// groupPair is a grouped set and the lone set it is compared with: the
// same N, and the same questions or, as it has, one question per loop.
type groupPair struct{ Grouped, Lone set }

// groupPairs are the groups part's sets for n workloads: one member of
// each group asks, with 10 questions in all (as the lone K = 10 set) or
// one per group (as the lone K = N set: a question per loop); and every
// member asks its group's question, so that each group check asks ten
// times the same question.
func groupPairs(n int) []groupPair {
	perGroup := set{N: n, Group: groupSize}.groups()
	return []groupPair{
		{Grouped: set{N: n, K: 10, Group: groupSize}, Lone: set{N: n, K: 10}},
		{Grouped: set{N: n, K: perGroup, Group: groupSize}, Lone: set{N: n, K: n}},
		{Grouped: set{N: n, K: perGroup, Group: groupSize, AllAsk: true}, Lone: set{N: n, K: n}},
	}
}

// groupsResult is what the groups part measured: each grouped run with the
// lone run it is compared with (measured in the same run of the benchmark,
// by the steady part or by this one).
type groupsResult struct {
	N     int
	Pairs []resultPair
}

type resultPair struct{ Grouped, Lone *result }

// measureGroups measures every pair at 30 s polling, taking a lone run the
// steady part already made rather than measuring it again.
func (b *bench) measureGroups(ctx context.Context, n int, done []*result, windows int) (*groupsResult, error) {
	g := &groupsResult{N: n}
	measure := func(s set) (*result, error) {
		if i := slices.IndexFunc(done, func(res *result) bool { return res.Set == s }); i >= 0 {
			return done[i], nil
		}
		took, err := s.create(ctx, b.cs)
		if err != nil {
			return nil, err
		}
		b.logf("created %d Deployments (%s) in %s", s.N, s.name(), secs(took))
		res := &result{Set: s}
		if res.Slow, err = b.measureSteady(ctx, s, 30*time.Second, windows); err != nil {
			return nil, err
		}
		done = append(done, res)
		return res, nil
	}
	for _, p := range groupPairs(n) {
		lone, err := measure(p.Lone)
		if err != nil {
			return nil, err
		}
		grouped, err := measure(p.Grouped)
		if err != nil {
			return nil, err
		}
		g.Pairs = append(g.Pairs, resultPair{Grouped: grouped, Lone: lone})
	}
	return g, nil
}

// columns are the runs the groups table shows: the lone ones first.
func (g *groupsResult) columns() []*result {
	var lone, grouped []*result
	for _, p := range g.Pairs {
		if !slices.Contains(lone, p.Lone) {
			lone = append(lone, p.Lone)
		}
		grouped = append(grouped, p.Grouped)
	}
	return append(lone, grouped...)
}

// label names a set's column.
func (s set) label() string {
	switch {
	case s.Group == 0:
		return fmt.Sprintf("alone, K = %s", thousands(s.K))
	case s.AllAsk:
		return fmt.Sprintf("groups, all ask, K = %s", thousands(s.K))
	default:
		return fmt.Sprintf("groups, one asks, K = %s", thousands(s.K))
	}
}

// gaugeCheck is a gauge of the daemon that must show, in every sample of
// the windows, what the set makes.
type gaugeCheck struct {
	figure string
	want   func(set) int
	pick   func(*steady) []float64
}

var gaugeChecks = []gaugeCheck{
	{"`zeroscaler_loops` at steady state (lowest–highest sample)", set.loops, func(s *steady) []float64 { return s.LoopsGauge }},
	{"`zeroscaler_groups` at steady state", set.groups, func(s *steady) []float64 { return s.GroupsGauge }},
	{"`sum(zeroscaler_workloads)` at steady state", func(s set) int { return s.N }, func(s *steady) []float64 { return s.WorkloadsGauge }},
}

func (gc gaugeCheck) held(res *result) bool {
	vs := gc.pick(res.Slow)
	return len(vs) > 0 && int(slices.Min(vs)) == gc.want(res.Set) && int(slices.Max(vs)) == gc.want(res.Set)
}

// comparison is a figure compared between a grouped run and its lone run.
type comparison struct {
	figure string
	values func(*steady) []float64
	format func(float64) string
}

var comparisons = []comparison{
	{"RSS", func(s *steady) []float64 { return s.RSS }, mib},
	{"Go heap in use", func(s *steady) []float64 { return s.Heap }, mib},
	{"Goroutine stacks in use", func(s *steady) []float64 { return s.Stack }, mib},
	{"CPU at 30 s polling", func(s *steady) []float64 { return s.CPUPerMin }, cpu},
}

// regressed tells whether grouped's median is above the highest lone
// sample by more than regressionMargin: more than the lone run's own
// spread and some.
func regressed(grouped, lone []float64) bool {
	return median(grouped) > slices.Max(lone)*(1+regressionMargin)
}

func (r *report) writeGroups(w io.Writer) {
	g := r.Groups
	if g == nil {
		return
	}
	cols := g.columns()
	groups := set{N: g.N, Group: groupSize}.groups()
	fmt.Fprintf(w, "## Groups: N = %s in %s groups of %d\n\n", thousands(g.N), thousands(groups), groupSize)
	fmt.Fprintf(w, "N Deployments with `zeroscaler.io/group: g-NNNN`, %d per group, each group in one namespace (the set's 4 namespaces in turn), so the daemon runs %s loops, one per group. \"One asks\": the first member of each group carries `zeroscaler.io/query` and `zeroscaler.io/threshold`, the other nine only the group; \"all ask\": every member carries its group's query, so each group check asks one question ten times (shared, as identical questions are). The group's question is its index mod K. The stand-in answers 5, so every group is active and nothing should change. Beside them, in the same run and on the same API server, N lone Deployments: the lone K = 10 set (the same questions) beside the groups of K = 10, and the lone K = N set (one question per loop, as the groups with a question each have) beside the others. 30 s polling only; %d measurement windows per run, as above.\n\n",
		groupSize, thousands(groups), r.Runs)

	var columns, names []string
	for _, res := range cols {
		columns = append(columns, res.Set.label())
		names = append(names, "`"+res.Set.name()+"`")
	}
	fmt.Fprintf(w, "Each daemon run: the common flags and `--selector %s=SET --default-polling-interval 30s`, SET being, column by column, %s.\n\n", setLabel, strings.Join(names, ", "))
	rows := slices.DeleteFunc(r.rows(cols), func(x row) bool { return x.fast })
	for _, gc := range gaugeChecks {
		x := row{figure: gc.figure, target: "—", ideal: "—"}
		for _, res := range cols {
			vs := gc.pick(res.Slow)
			lo, hi := slices.Min(vs), slices.Max(vs)
			v := thousands(int(lo))
			if hi != lo {
				v += "–" + thousands(int(hi))
			}
			x.values = append(x.values, v)
			x.met = append(x.met, verdictDur(gc.held(res)))
		}
		rows = append(rows, x)
	}
	writeTable(w, columns, rows)

	fmt.Fprintf(w, "Each grouped run against its lone run (medians, and their ratio). No regression: the grouped median is at most %.0f %% above the lone run's highest sample (memory: %d samples, CPU: %d windows).\n\n",
		100*regressionMargin, 6*r.Runs, r.Runs)
	fmt.Fprintf(w, "| Figure | Grouped | Lone | Grouped / lone | |\n|---|---|---|---:|---|\n")
	for _, p := range g.Pairs {
		for _, c := range comparisons {
			gv, lv := c.values(p.Grouped.Slow), c.values(p.Lone.Slow)
			fmt.Fprintf(w, "| %s | %s: %s | %s: %s | %.2f | %s |\n", c.figure,
				p.Grouped.Set.label(), c.format(median(gv)), p.Lone.Set.label(), c.format(median(lv)),
				median(gv)/median(lv), verdictDur(!regressed(gv, lv)))
		}
	}
	fmt.Fprintln(w)

	// Said here too: -only groups does not rewrite the Targets section.
	var misses []string
	for _, res := range cols {
		misses = append(misses, res.misses()...)
	}
	misses = append(misses, g.misses()...)
	if len(misses) == 0 {
		fmt.Fprintf(w, "Every target of this section was met.\n\n")
		return
	}
	fmt.Fprintf(w, "Missed in this section:\n\n")
	for _, m := range misses {
		fmt.Fprintf(w, "- %s\n", m)
	}
	fmt.Fprintln(w)
}

// misses are the gauges that moved, and the pairs where grouping cost more
// than noise.
func (g *groupsResult) misses() []string {
	if g == nil {
		return nil
	}
	var out []string
	for _, res := range g.columns() {
		for _, gc := range gaugeChecks {
			if !gc.held(res) {
				out = append(out, fmt.Sprintf("%s: %s not %s in every sample", res.Set.name(), gc.figure, thousands(gc.want(res.Set))))
			}
		}
	}
	for _, p := range g.Pairs {
		for _, c := range comparisons {
			gv, lv := c.values(p.Grouped.Slow), c.values(p.Lone.Slow)
			if regressed(gv, lv) {
				out = append(out, fmt.Sprintf("%s: %s %s, above the lone %s's highest sample %s by more than %.0f %%",
					p.Grouped.Set.name(), c.figure, c.format(median(gv)), p.Lone.Set.name(), c.format(slices.Max(lv)), 100*regressionMargin))
			}
		}
	}
	return out
}
