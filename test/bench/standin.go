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
)

// standin answers Prometheus' instant-query API from values the benchmark
// sets, and counts the requests it gets. Health queries (min_over_time) are
// answered with 1 and counted apart.
type standin struct {
	URL string

	srv    *http.Server
	served chan struct{}

	mu     sync.Mutex
	def    float64            // value of every query without its own
	values map[string]float64 // per-query values
	counts map[string]int64   // requests per (non-health) query
	total  int64              // non-health requests
	health int64              // health requests
	bad    int64              // requests that were not instant queries
	conns  int64              // TCP connections accepted
	// activeAt is when each query was first answered with a value ≥ 1
	// since its value last changed.
	activeAt map[string]time.Time
}

func startStandin(def float64) (*standin, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for stand-in: %w", err)
	}
	s := &standin{
		URL:      "http://" + l.Addr().String(),
		def:      def,
		values:   map[string]float64{},
		counts:   map[string]int64{},
		activeAt: map[string]time.Time{},
		served:   make(chan struct{}),
	}
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
	q := r.Form.Get("query")
	var v float64
	s.mu.Lock()
	if strings.HasPrefix(q, "min_over_time(") {
		s.health++
		v = 1
	} else {
		s.total++
		s.counts[q]++
		var ok bool
		if v, ok = s.values[q]; !ok {
			v = s.def
		}
		if _, seen := s.activeAt[q]; !seen && v >= 1 {
			s.activeAt[q] = time.Now()
		}
	}
	s.mu.Unlock()
	now := float64(time.Now().UnixMilli()) / 1000
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[%s,"%s"]}]}}`,
		strconv.FormatFloat(now, 'f', 3, 64), strconv.FormatFloat(v, 'g', -1, 64))
}

// set gives one query its own value.
func (s *standin) set(query string, v float64) {
	s.mu.Lock()
	s.values[query] = v
	delete(s.activeAt, query)
	s.mu.Unlock()
}

// setAll gives every query the value v at once.
func (s *standin) setAll(v float64) {
	s.mu.Lock()
	s.def = v
	clear(s.values)
	clear(s.activeAt)
	s.mu.Unlock()
}

// active returns when query was first answered with an active value since
// its value last changed.
func (s *standin) active(query string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.activeAt[query]
	return t, ok
}

// reset zeroes the counters.
func (s *standin) reset() {
	s.mu.Lock()
	clear(s.counts)
	s.total, s.health, s.bad, s.conns = 0, 0, 0, 0
	s.mu.Unlock()
}

// standinCounts is a snapshot of the counters.
type standinCounts struct {
	total, health, bad int64
	conns              int64 // TCP connections accepted
	distinct           int   // distinct non-health queries seen
	maxPerQuery        int64
}

func (s *standin) snapshot() standinCounts {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := standinCounts{total: s.total, health: s.health, bad: s.bad, conns: s.conns, distinct: len(s.counts)}
	for _, n := range s.counts {
		c.maxPerQuery = max(c.maxPerQuery, n)
	}
	return c
}
