package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/common/model"
)

// standin answers Prometheus' instant-query API from values the benchmark
// sets, and counts the requests it gets. It knows the three shapes of query
// the daemon sends:
//
//   - a workload's own query, answered with the value set for it now;
//   - the health query, min_over_time((…)[W:STEP]), answered 1 (up) and
//     counted apart;
//   - the confirmation query, max_over_time((Q)[W:STEP]), answered as a
//     Prometheus that had scraped Q's value continuously would: the highest
//     value Q had at the subquery's steps, aligned to multiples of STEP,
//     within (now−W, now]; counted apart.
//
// A subquery it cannot read (no explicit step, a bad duration) is answered
// bad_data and counted as bad.
type standin struct {
	URL string

	srv    *http.Server
	served chan struct{}

	mu sync.Mutex
	// seq orders the changes below.
	seq uint64
	// defs is the history of the value of every query without its own
	// (setAll); values is the history of each query's own value (set). A
	// setAll overrides every earlier set.
	defs   []change
	values map[string][]change
	counts map[string]int64 // requests per workload query
	total  int64            // workload-query requests
	health int64            // health requests
	// confirm counts confirmation requests.
	confirm int64
	bad     int64 // requests the stand-in could not answer
	conns   int64 // TCP connections accepted
	// activeAt and idleAt are when each query was first answered with a
	// value ≥ 1, or < 1, since its value last changed; confirmedAt is when
	// its first confirmation query came since then.
	activeAt, idleAt, confirmedAt map[string]time.Time
	// now is the stand-in's clock (tests set it).
	now func() time.Time
}

// change is one value set at one moment.
type change struct {
	at  time.Time
	seq uint64
	v   float64
}

func startStandin(def float64) (*standin, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for stand-in: %w", err)
	}
	s := newStandin(def)
	s.URL = "http://" + l.Addr().String()
	mux := http.NewServeMux()
	mux.HandleFunc("/api/v1/query", s.query)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.bad++
		s.mu.Unlock()
		http.NotFound(w, r)
	})
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second,
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				s.mu.Lock()
				s.conns++
				s.mu.Unlock()
			}
		}}
	go func() {
		defer close(s.served)
		_ = s.srv.Serve(l) // http.ErrServerClosed after close
	}()
	return s, nil
}

// newStandin is the stand-in's state, without a server.
func newStandin(def float64) *standin {
	return &standin{
		defs:        []change{{v: def}},
		values:      map[string][]change{},
		counts:      map[string]int64{},
		activeAt:    map[string]time.Time{},
		idleAt:      map[string]time.Time{},
		confirmedAt: map[string]time.Time{},
		served:      make(chan struct{}),
		now:         time.Now,
	}
}

func (s *standin) close() error {
	err := s.srv.Close()
	<-s.served
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("close stand-in: %w", err)
	}
	return nil
}

func (s *standin) query(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil { // GET query string and POST form alike
		http.Error(w, `{"status":"error","errorType":"bad_data","error":"bad form"}`, http.StatusBadRequest)
		return
	}
	now := s.now()
	v, ok, err := s.answer(r.Form.Get("query"), now)
	if err != nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"status":"error","errorType":"bad_data","error":%q}`, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if !ok {
		fmt.Fprint(w, `{"status":"success","data":{"resultType":"vector","result":[]}}`)
		return
	}
	fmt.Fprintf(w, `{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[%s,"%s"]}]}}`,
		strconv.FormatFloat(float64(now.UnixMilli())/1000, 'f', 3, 64), strconv.FormatFloat(v, 'g', -1, 64))
}

// answer evaluates q at now and counts it; ok is false for an empty
// result.
func (s *standin) answer(q string, now time.Time) (v float64, ok bool, err error) {
	sub, isSub, err := parseSubquery(q)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case err != nil:
		s.bad++
		return 0, false, err
	case isSub && sub.fn == "min_over_time":
		s.health++
		return 1, true, nil
	case isSub:
		s.confirm++
		if _, seen := s.confirmedAt[sub.inner]; !seen {
			s.confirmedAt[sub.inner] = now
		}
		v, ok = s.maxOverLocked(sub, now)
		return v, ok, nil
	}
	s.total++
	s.counts[q]++
	v = s.valueLocked(q, now)
	at := s.idleAt
	if v >= 1 {
		at = s.activeAt
	}
	if _, seen := at[q]; !seen {
		at[q] = now
	}
	return v, true, nil
}

// valueLocked is the value query had at t.
func (s *standin) valueLocked(query string, t time.Time) float64 {
	def, own := last(s.defs, t), last(s.values[query], t)
	if own != nil && (def == nil || own.seq > def.seq) {
		return own.v
	}
	if def != nil {
		return def.v
	}
	return s.defs[0].v
}

// last is the last change at or before t.
func last(h []change, t time.Time) *change {
	for i := len(h) - 1; i >= 0; i-- {
		if !h[i].at.After(t) {
			return &h[i]
		}
	}
	return nil
}

// maxOverLocked is the highest value sub's inner query had at the
// subquery's steps up to now; ok is false if the window holds no step.
func (s *standin) maxOverLocked(sub subquery, now time.Time) (v float64, ok bool) {
	step := sub.step.Milliseconds()
	// Steps are multiples of the step since the epoch, in (now−W, now].
	from := now.Add(-sub.window).UnixMilli()
	first := from - from%step + step
	for t := first; t <= now.UnixMilli(); t += step {
		x := s.valueLocked(sub.inner, time.UnixMilli(t))
		if !ok || x > v {
			v, ok = x, true
		}
	}
	return v, ok
}

// subquery is fn((inner)[window:step]).
type subquery struct {
	fn     string
	inner  string
	window time.Duration
	step   time.Duration
}

// parseSubquery reads the daemon's health and confirmation queries. isSub
// is false for any other query; err is set for a subquery the stand-in
// cannot evaluate.
func parseSubquery(q string) (sub subquery, isSub bool, err error) {
	fn, rest, _ := strings.Cut(q, "(")
	if fn != "min_over_time" && fn != "max_over_time" {
		return subquery{}, false, nil
	}
	sub.fn = fn
	body, ok := strings.CutSuffix(rest, "])")
	open := strings.LastIndex(body, "[")
	if !ok || open < 0 {
		return sub, true, fmt.Errorf("stand-in: %s needs a subquery (…)[W:STEP], got %q", fn, q)
	}
	inner, rng := body[:open], body[open+1:]
	inner, opened := strings.CutPrefix(inner, "(")
	inner, closed := strings.CutSuffix(inner, ")")
	if !opened || !closed || inner == "" {
		return sub, true, fmt.Errorf("stand-in: %s needs a parenthesised query before the range, got %q", fn, q)
	}
	sub.inner = inner
	w, st, _ := strings.Cut(rng, ":")
	window, errW := model.ParseDuration(w)
	step, errS := model.ParseDuration(st)
	switch {
	case errW != nil || window <= 0:
		return sub, true, fmt.Errorf("stand-in: bad subquery window %q in %q", w, q)
	case st == "":
		return sub, true, fmt.Errorf("stand-in: subquery without an explicit step in %q (Prometheus would use its evaluation interval)", q)
	case errS != nil || step <= 0:
		return sub, true, fmt.Errorf("stand-in: bad subquery step %q in %q", st, q)
	}
	sub.window, sub.step = time.Duration(window), time.Duration(step)
	return sub, true, nil
}

// set gives one query its own value, from now on.
func (s *standin) set(query string, v float64) {
	s.mu.Lock()
	s.seq++
	s.values[query] = append(s.values[query], change{at: s.now(), seq: s.seq, v: v})
	delete(s.activeAt, query)
	delete(s.idleAt, query)
	delete(s.confirmedAt, query)
	s.mu.Unlock()
}

// setAll gives every query the value v from now on, and returns when.
func (s *standin) setAll(v float64) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	now := s.now()
	s.defs = append(s.defs, change{at: now, seq: s.seq, v: v})
	clear(s.activeAt)
	clear(s.idleAt)
	clear(s.confirmedAt)
	return now
}

// active returns when query was first answered with an active value since
// its value last changed.
func (s *standin) active(query string) (time.Time, bool) {
	return s.firstAt(s.activeAt, query)
}

// idle returns when query was first answered with an idle value since its
// value last changed: the daemon's first idle reading of it.
func (s *standin) idle(query string) (time.Time, bool) {
	return s.firstAt(s.idleAt, query)
}

// confirmed returns when the first confirmation query over query came
// since its value last changed.
func (s *standin) confirmed(query string) (time.Time, bool) {
	return s.firstAt(s.confirmedAt, query)
}

func (s *standin) firstAt(m map[string]time.Time, query string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := m[query]
	return t, ok
}

// reset zeroes the counters.
func (s *standin) reset() {
	s.mu.Lock()
	clear(s.counts)
	s.total, s.health, s.confirm, s.bad, s.conns = 0, 0, 0, 0, 0
	s.mu.Unlock()
}

// standinCounts is a snapshot of the counters.
type standinCounts struct {
	total, health, confirm, bad int64
	conns                       int64 // TCP connections accepted
	distinct                    int   // distinct workload queries seen
	maxPerQuery                 int64
}

func (s *standin) snapshot() standinCounts {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := standinCounts{total: s.total, health: s.health, confirm: s.confirm, bad: s.bad, conns: s.conns, distinct: len(s.counts)}
	for _, n := range s.counts {
		c.maxPerQuery = max(c.maxPerQuery, n)
	}
	return c
}
