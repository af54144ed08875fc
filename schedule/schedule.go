// Package schedule reads office hours in kube-downscaler's well-known
// syntax, such as "Mon-Fri 08:00-19:00 Europe/Berlin", and answers whether a
// moment falls inside them and when they next begin.
//
// The grammar, one or more ranges separated by commas:
//
//	hours = range *( "," range )
//	range = days SP from "-" to SP zone
//	days  = day [ "-" day ]   ; Mon Tue Wed Thu Fri Sat Sun, any case
//	from  = HH ":" MM         ; 00:00 to 23:59
//	to    = HH ":" MM         ; 00:01 to 24:00
//	zone  = an IANA time zone name, such as UTC or Europe/Berlin
//
// A day range may wrap around the week ("Fri-Mon"). A range whose end is
// before its start crosses midnight ("Mon-Fri 22:00-06:00"). As in
// kube-downscaler, a moment is inside a range when its weekday, read on the
// range's wall clock, is one of the range's days and its time of day is
// inside the times: so "Mon-Fri 22:00-06:00" covers Monday 00:00-06:00 and
// Friday 22:00-24:00, and not Saturday morning. Write "Mon-Sat" for that.
//
// Time zones come from the system's tz database or, failing that, from the
// copy embedded with time/tzdata, which the program's main package imports.
// kube-downscaler's absolute ranges (ISO 8601 dates) and its "always" and
// "never" keywords are not accepted.
package schedule

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Hours is a set of weekly windows, each on the wall clock of its own time
// zone. The zero value is empty; use Parse.
type Hours struct {
	windows []window
}

type window struct {
	firstDay, lastDay time.Weekday
	// days has bit d set for each weekday d the window covers.
	days uint8
	// from and to are seconds since midnight on the wall clock; to may be
	// 24h. to < from means the window crosses midnight.
	from, to int
	loc      *time.Location
}

// Error says which range of the text is wrong and why.
type Error struct {
	// Range is the offending range as written, and Index its position
	// (1-based) among Count ranges.
	Range        string
	Index, Count int
	Reason       string
}

func (e *Error) Error() string {
	if e.Count <= 1 {
		return e.Reason
	}
	return fmt.Sprintf("range %d (%q): %s", e.Index, e.Range, e.Reason)
}

var dayNames = [7]string{"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"}

// Parse reads office hours. The error, an *Error, names the range and the
// part that is wrong.
func Parse(s string) (*Hours, error) {
	parts := strings.Split(s, ",")
	if strings.TrimSpace(s) == "" {
		return nil, &Error{Count: 1, Reason: `is empty; write ranges such as "Mon-Fri 08:00-19:00 Europe/Berlin"`}
	}
	h := &Hours{windows: make([]window, 0, len(parts))}
	for i, p := range parts {
		w, reason := parseRange(p)
		if reason != "" {
			return nil, &Error{Range: strings.TrimSpace(p), Index: i + 1, Count: len(parts), Reason: reason}
		}
		h.windows = append(h.windows, w)
	}
	return h, nil
}

// parseRange reads one range; a non-empty reason says what is wrong.
func parseRange(s string) (window, string) {
	fields := strings.Fields(s)
	switch {
	case len(fields) == 0:
		return window{}, "is empty (two commas, or a comma at either end)"
	case len(fields) < 3:
		return window{}, fmt.Sprintf("has %d of its 3 parts; write days, times and a time zone, e.g. \"Mon-Fri 08:00-19:00 UTC\"", len(fields))
	case len(fields) > 3:
		return window{}, fmt.Sprintf("has %d parts; write days, times and a time zone, e.g. \"Mon-Fri 08:00-19:00 UTC\", and separate ranges with commas", len(fields))
	}
	var w window
	var reason string
	if w.firstDay, w.lastDay, reason = parseDays(fields[0]); reason != "" {
		return window{}, reason
	}
	for d := w.firstDay; ; d = (d + 1) % 7 {
		w.days |= 1 << d
		if d == w.lastDay {
			break
		}
	}
	if w.from, w.to, reason = parseTimes(fields[1]); reason != "" {
		return window{}, reason
	}
	if w.loc, reason = parseZone(fields[2]); reason != "" {
		return window{}, reason
	}
	return w, ""
}

func parseDays(s string) (first, last time.Weekday, reason string) {
	a, b, isRange := strings.Cut(s, "-")
	var ok bool
	if first, ok = parseDay(a); !ok {
		return 0, 0, fmt.Sprintf("%q is not a weekday (Mon, Tue, Wed, Thu, Fri, Sat, Sun) or a range of them such as Mon-Fri", a)
	}
	if !isRange {
		return first, first, ""
	}
	if last, ok = parseDay(b); !ok {
		return 0, 0, fmt.Sprintf("%q is not a weekday (Mon, Tue, Wed, Thu, Fri, Sat, Sun)", b)
	}
	return first, last, ""
}

func parseDay(s string) (time.Weekday, bool) {
	for d, name := range dayNames {
		if strings.EqualFold(s, name) {
			return time.Weekday(d), true
		}
	}
	return 0, false
}

func parseTimes(s string) (from, to int, reason string) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return 0, 0, fmt.Sprintf("%q is not a time range such as 08:00-19:00", s)
	}
	if from, reason = parseClock(a, false); reason != "" {
		return 0, 0, reason
	}
	if to, reason = parseClock(b, true); reason != "" {
		return 0, 0, reason
	}
	if from == to {
		return 0, 0, fmt.Sprintf("%q starts and ends at the same time; write 00:00-24:00 for a whole day", s)
	}
	return from, to, ""
}

// parseClock reads HH:MM into seconds since midnight. 24:00 is allowed as
// an end only.
func parseClock(s string, end bool) (int, string) {
	bad := func() (int, string) {
		if end {
			return 0, fmt.Sprintf("%q is not a time of day from 00:00 to 24:00 (HH:MM)", s)
		}
		return 0, fmt.Sprintf("%q is not a time of day from 00:00 to 23:59 (HH:MM)", s)
	}
	if len(s) != 5 || s[2] != ':' || !isDigits(s[:2]) || !isDigits(s[3:]) {
		return bad()
	}
	hh, _ := strconv.Atoi(s[:2])
	mm, _ := strconv.Atoi(s[3:])
	switch {
	case mm > 59, hh > 24, hh == 24 && (mm != 0 || !end):
		return bad()
	}
	return hh*3600 + mm*60, ""
}

func isDigits(s string) bool {
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func parseZone(s string) (*time.Location, string) {
	// "Local" would mean the daemon's own zone, which differs between a
	// laptop and a pod; an operator must say which zone they mean.
	if s == "Local" {
		return nil, `"Local" is not allowed; name the time zone, e.g. UTC or Europe/Berlin`
	}
	if loc, ok := zones.Load(s); ok {
		return loc.(*time.Location), ""
	}
	loc, err := time.LoadLocation(s)
	if err != nil {
		return nil, fmt.Sprintf("%q is not a time zone name such as UTC or Europe/Berlin", s)
	}
	loc2, _ := zones.LoadOrStore(s, loc)
	return loc2.(*time.Location), ""
}

// zones caches loaded time zones by name: ten thousand workloads in one
// zone read the tz database once and share one *time.Location, so that two
// parses of the same text compare equal.
var zones sync.Map

// Contains reports whether t is inside the hours.
func (h *Hours) Contains(t time.Time) bool {
	for _, w := range h.windows {
		if w.contains(t) {
			return true
		}
	}
	return false
}

func (w window) contains(t time.Time) bool {
	t = t.In(w.loc)
	if w.days&(1<<t.Weekday()) == 0 {
		return false
	}
	s := t.Hour()*3600 + t.Minute()*60 + t.Second()
	if w.from < w.to {
		return w.from <= s && s < w.to
	}
	return s >= w.from || s < w.to
}

// NextStart returns the first moment after t at which the hours begin: a
// moment inside them whose previous moment is outside. It returns the zero
// Time if there is none, which happens only when the hours cover every
// moment of the week.
//
// Moments count by what the wall clock shows. Where a clock change skips a
// window's start (02:30 on the night clocks go forward), the window begins
// when the clock resumes inside it (03:00). Where a clock change repeats
// it (02:30 on the night clocks go back), the window begins at the first
// 02:30; if the clock then falls back out of the window (from 03:00 to
// 02:00), the window ends and begins again at the second 02:30.
func (h *Hours) NextStart(t time.Time) time.Time {
	var best time.Time
	for _, c := range h.candidates(t) {
		if c.After(t) && (best.IsZero() || c.Before(best)) && h.begins(c) {
			best = c
		}
	}
	return best
}

// begins reports whether the hours begin at c.
func (h *Hours) begins(c time.Time) bool {
	return h.Contains(c) && !h.Contains(c.Add(-time.Nanosecond))
}

// candidates lists every moment in the week after t at which Contains may
// turn true: on each window's wall clock, each day's start time and each
// midnight, and each change of the zone's offset. A wall time that a clock
// change repeats yields both of its moments.
func (h *Hours) candidates(t time.Time) []time.Time {
	var out []time.Time
	// Eight days ahead cover a whole week from any time of day; one day
	// back covers a window that began before t's date on its wall clock.
	const days = 9
	for _, w := range h.windows {
		local := t.In(w.loc)
		y, m, d := local.Date()
		for i := -1; i < days; i++ {
			for _, secs := range []int{w.from, 0} {
				out = appendWallTime(out, y, m, d+i, secs, w.loc)
			}
		}
		limit := t.AddDate(0, 0, days)
		for z := local; ; {
			_, end := z.ZoneBounds()
			if end.IsZero() || end.After(limit) {
				break
			}
			out = append(out, end)
			z = end
		}
	}
	slices.SortFunc(out, func(a, b time.Time) int { return a.Compare(b) })
	return slices.CompactFunc(out, time.Time.Equal)
}

// appendWallTime appends the moments at which loc's clock shows the given
// date and time: one, or two where a clock change repeats it. A wall time
// skipped by a clock change gives a moment that begins rejects, harmlessly.
func appendWallTime(out []time.Time, y int, m time.Month, d, secs int, loc *time.Location) []time.Time {
	u := time.Date(y, m, d, 0, 0, secs, 0, loc)
	out = append(out, u)
	_, off := u.Zone()
	start, end := u.ZoneBounds()
	// The same wall time under the neighbouring zones' offsets; a zone
	// without bounds (UTC) has no neighbours.
	var neighbours []time.Time
	if !start.IsZero() {
		neighbours = append(neighbours, start.Add(-time.Nanosecond))
	}
	if !end.IsZero() {
		neighbours = append(neighbours, end)
	}
	for _, edge := range neighbours {
		_, other := edge.In(loc).Zone()
		if other == off {
			continue
		}
		v := u.Add(time.Duration(off-other) * time.Second)
		if wallEqual(v.In(loc), u) {
			out = append(out, v)
		}
	}
	return out
}

func wallEqual(a, b time.Time) bool {
	ay, am, ad := a.Date()
	by, bm, bd := b.Date()
	return ay == by && am == bm && ad == bd && a.Hour() == b.Hour() && a.Minute() == b.Minute() && a.Second() == b.Second()
}

// String writes the hours in the syntax Parse reads, with canonical day
// names and comma-space separators.
func (h *Hours) String() string {
	if h == nil {
		return ""
	}
	parts := make([]string, len(h.windows))
	for i, w := range h.windows {
		days := dayNames[w.firstDay]
		if w.lastDay != w.firstDay {
			days += "-" + dayNames[w.lastDay]
		}
		parts[i] = fmt.Sprintf("%s %s-%s %s", days, clock(w.from), clock(w.to), w.loc)
	}
	return strings.Join(parts, ", ")
}

func clock(secs int) string {
	return fmt.Sprintf("%02d:%02d", secs/3600, secs%3600/60)
}
