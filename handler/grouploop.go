package handler

import (
	"context"
	"hash/fnv"
	"maps"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/zeroscaler/zeroscaler/schedule"
)

// groupEntry is a group's members as the handler last heard of them. The
// group's loop takes them up at its next check, so that a member joining,
// leaving or changing does not start the others' idle stretches again.
// Guarded by ScaleHandler.mu.
type groupEntry struct {
	members map[string]Config
	version uint64
}

// groupKey is the key of the group cfg belongs to, namespace/name, or ""
// for none. A released workload belongs to none: it is let go alone.
func groupKey(cfg Config) string {
	if cfg.Group == "" || cfg.Mode == Released {
		return ""
	}
	return cfg.Namespace + "/" + cfg.Group
}

// groupLoopKey is a group loop's key in ScaleHandler.loops; it cannot be a
// workload's key (Kind/namespace/name).
func groupLoopKey(gk string) string { return "group:" + gk }

func (h *ScaleHandler) joinGroupLocked(gk string, cfg Config) {
	e := h.groups[gk]
	if e == nil {
		e = &groupEntry{members: map[string]Config{}}
		h.groups[gk] = e
	}
	e.members[cfg.Key()] = cfg
	e.version++
	if h.runCtx != nil && h.loops[groupLoopKey(gk)] == nil {
		h.startGroupLocked(gk)
	}
}

func (h *ScaleHandler) leaveGroupLocked(gk, key string) {
	e := h.groups[gk]
	if e == nil {
		return
	}
	delete(e.members, key)
	e.version++
	if len(e.members) == 0 {
		delete(h.groups, gk)
		h.stopLocked(groupLoopKey(gk))
	}
}

// groupState is one group's loop: its members, by key, and its pace, which
// they share.
type groupState struct {
	key, name string
	*pace
	// phase places the group's checks on its period's grid (groupPhase);
	// keyHash is the group key's hash, its phase when no member asks.
	phase, keyHash uint64
	log            *zap.Logger
	// version is that of the groupEntry the members were built from;
	// given holds each member's configuration as the informer gave it.
	version uint64
	given   map[string]Config
	members []*loopState
}

// startGroupLocked starts a group's loop. Its members are counted in the
// workloads gauge from now, by what the cache shows.
func (h *ScaleHandler) startGroupLocked(gk string) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(h.runCtx))
	r := &running{ctx: ctx, cancel: cancel}
	lk := groupLoopKey(gk)
	h.loops[lk] = r
	h.loopsWG.Add(1)
	h.metrics.loops.Inc()
	h.metrics.groups.Inc()
	hash := fnv.New64a()
	hash.Write([]byte(gk))
	g := &groupState{
		key:     gk,
		pace:    &pace{slots: h.slots, work: h.work},
		keyHash: hash.Sum64(),
		given:   map[string]Config{},
	}
	var ns string
	for _, cfg := range h.groups[gk].members {
		g.name, ns = cfg.Group, cfg.Namespace
		break
	}
	g.log = h.logger.WithLazy(zap.String("group", g.name), zap.String("namespace", ns))
	h.membersLocked(g)
	go func() {
		defer h.groupLoopEnded(lk, r, g)
		h.groupLoop(ctx, g)
	}()
}

// membersLocked brings the loop's members up to the group's entry: a new or
// changed member gets a new state (scaler, memory, count in the gauges), an
// unchanged one keeps its own, one that left is let go. The group's period
// is the shortest of its members' polling periods.
func (h *ScaleHandler) membersLocked(g *groupState) {
	e := h.groups[g.key]
	if e == nil || e.version == g.version {
		return // the loop is stopping, or nothing changed
	}
	g.version = e.version
	old := make(map[string]*loopState, len(g.members))
	for _, st := range g.members {
		old[st.cfg.Key()] = st
	}
	keys := slices.Sorted(maps.Keys(e.members))
	members := make([]*loopState, 0, len(keys))
	for _, k := range keys {
		cfg := e.members[k]
		if st, ok := old[k]; ok && g.given[k].Equal(cfg) {
			members = append(members, st)
			delete(old, k)
			continue
		}
		members = append(members, h.newLoopState(cfg, g.pace))
		g.given[k] = cfg
	}
	for k, st := range old {
		h.endLoop(st)
		if _, still := e.members[k]; !still {
			delete(g.given, k)
			h.dropLockLocked(k)
		}
	}
	g.members = members

	period := time.Duration(0)
	var hours []*schedule.Hours
	for _, st := range members {
		if st.cfg.Mode != Managed || st.cfg.Paused {
			continue
		}
		if p := st.cfg.PollingPeriod; p > 0 && (period == 0 || p < period) {
			period = p
		}
		if st.cfg.AwakeHours != nil {
			hours = append(hours, st.cfg.AwakeHours)
		}
	}
	if period == 0 {
		period = retryPeriod // invalid and paused members only
	}
	now := h.clock.Now()
	if phase := groupPhase(g.keyHash, members); period != g.period || phase != g.phase {
		g.period, g.phase, g.next = period, phase, firstCheck(now, period, phase)
	}
	g.hours, g.hoursAt = hours, nextStart(hours, now)
}

// groupPhase is the phase of a group's checks: that of the question of its
// first member that asks one, so that groups and lone workloads asking the
// same question check at the same moments and share one request (as lone
// workloads do); the group key's hash when no member asks.
func groupPhase(keyHash uint64, members []*loopState) uint64 {
	for _, st := range members {
		if st.decider != nil {
			return st.decider.QuestionHash()
		}
	}
	return keyHash
}

// dropLockLocked forgets a workload's scale lock once nothing may use it: it
// is neither wanted nor under a loop of its own.
func (h *ScaleHandler) dropLockLocked(key string) {
	if _, ok := h.wanted[key]; !ok && h.loops[key] == nil {
		h.scaleLocks.Delete(key)
	}
}

// groupLoop checks a group until ctx ends; like loop, its goroutine only
// waits.
func (h *ScaleHandler) groupLoop(ctx context.Context, g *groupState) {
	defer func() {
		for _, st := range g.members {
			h.endLoop(st)
		}
	}()
	check := func(ctx context.Context) bool { return h.checkGroup(ctx, g) }
	for h.wait(ctx, g.pace) {
		h.checkAside(ctx, g.pace, check)
	}
}

func (h *ScaleHandler) groupLoopEnded(lk string, r *running, g *groupState) {
	r.cancel()
	h.mu.Lock()
	if h.loops[lk] == r {
		delete(h.loops, lk)
	}
	for k := range g.given {
		h.dropLockLocked(k)
	}
	h.mu.Unlock()
	h.metrics.loops.Dec()
	h.metrics.groups.Dec()
	h.loopsWG.Done()
}

// checkGroup runs one check of a group: it reads every member, has decide
// judge each member with a query, and carries out what decideGroup makes of
// them, member by member.
func (h *ScaleHandler) checkGroup(ctx context.Context, g *groupState) bool {
	h.mu.Lock()
	h.membersLocked(g)
	h.mu.Unlock()
	// Members are sorted by key: every loop takes scale locks in that
	// order, so that two group loops sharing a member for a moment (it
	// moved from one to the other) cannot deadlock.
	members := g.members
	for _, st := range members {
		st.mu.Lock()
	}
	defer func() {
		for _, st := range members {
			st.mu.Unlock()
		}
	}()
	if ctx.Err() != nil {
		return true
	}
	now := h.clock.Now()
	var hours *schedule.Hours
	for _, st := range members {
		if st.cfg.Mode == Managed && !st.cfg.Paused && st.cfg.AwakeHours != nil && st.cfg.AwakeHours.Contains(now) {
			hours = st.cfg.AwakeHours
			break
		}
	}
	parts := make([]part, 0, len(members))
	for i, st := range members {
		w, ok := h.lister.Get(st.cfg.Ref)
		if !ok {
			continue // deleted; the informer tells us to forget it
		}
		w = st.view(w)
		if st.mem.written != "" && w.ResourceVersion == st.mem.written {
			// As decide does for one workload: deciding on the old object
			// would only repeat our write and conflict.
			st.log.Debug("the cache does not show our last write yet; the group waits for it")
			return false
		}
		p := part{i: i, cfg: st.cfg, f: facts{now: now, w: w, hours: hours}, last: st.mem.replicas, m: st.mem}
		if st.decider != nil {
			if p.f, p.a, p.m, ok = h.judge(ctx, st, p.f); !ok {
				return false // the loop is stopping: a cancelled query is not a reading
			}
			p.judged = true
		}
		parts = append(parts, p)
	}
	for _, p := range decideGroup(g.name, parts) {
		h.act(ctx, members[p.i], p.f, p.a, p.m)
	}
	return false
}
