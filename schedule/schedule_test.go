package schedule

import (
	"errors"
	"strings"
	"testing"
	"time"

	_ "time/tzdata" // as in main: the tests must not depend on the host's zoneinfo
)

func mustParse(t testing.TB, s string) *Hours {
	t.Helper()
	h, err := Parse(s)
	if err != nil {
		t.Fatalf("Parse(%q): %v", s, err)
	}
	return h
}

func mustZone(t testing.TB, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

// at reads "2006-01-02 15:04:05" on the wall clock of zone.
func at(t testing.TB, zone, s string) time.Time {
	t.Helper()
	v, err := time.ParseInLocation(time.DateTime, s, mustZone(t, zone))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func utc(t testing.TB, s string) time.Time { return at(t, "UTC", s) }

func TestParseString(t *testing.T) {
	tests := []struct{ in, want string }{
		{"Mon-Fri 08:00-19:00 Europe/Berlin", "Mon-Fri 08:00-19:00 Europe/Berlin"},
		{"  mon-FRI   08:00-19:00   UTC  ", "Mon-Fri 08:00-19:00 UTC"},
		{"Sat 10:00-12:00 UTC", "Sat 10:00-12:00 UTC"},
		{"Sat-Sat 10:00-12:00 UTC", "Sat 10:00-12:00 UTC"},
		{"Fri-Mon 22:00-06:00 America/New_York", "Fri-Mon 22:00-06:00 America/New_York"},
		{"Sun 00:00-24:00 UTC", "Sun 00:00-24:00 UTC"},
		{"Mon-Fri 08:00-12:00 Europe/Berlin,Mon-Fri 13:00-17:00 Asia/Tokyo", "Mon-Fri 08:00-12:00 Europe/Berlin, Mon-Fri 13:00-17:00 Asia/Tokyo"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got := mustParse(t, tt.in).String()
			if got != tt.want {
				t.Fatalf("String() = %q, want %q", got, tt.want)
			}
			// What String writes, Parse reads back to the same.
			if again := mustParse(t, got).String(); again != got {
				t.Fatalf("round trip: %q became %q", got, again)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", `is empty; write ranges such as "Mon-Fri 08:00-19:00 Europe/Berlin"`},
		{"   ", `is empty; write ranges such as "Mon-Fri 08:00-19:00 Europe/Berlin"`},
		{"Mon-Fri 08:00-19:00", `has 2 of its 3 parts; write days, times and a time zone, e.g. "Mon-Fri 08:00-19:00 UTC"`},
		{"Mon-Fri 08:00-19:00 UTC Sat", `has 4 parts; write days, times and a time zone, e.g. "Mon-Fri 08:00-19:00 UTC", and separate ranges with commas`},
		{"Mon-Fry 08:00-19:00 UTC", `"Fry" is not a weekday (Mon, Tue, Wed, Thu, Fri, Sat, Sun)`},
		{"Monday 08:00-19:00 UTC", `"Monday" is not a weekday (Mon, Tue, Wed, Thu, Fri, Sat, Sun) or a range of them such as Mon-Fri`},
		{"Mon-Tue-Wed 08:00-19:00 UTC", `"Tue-Wed" is not a weekday (Mon, Tue, Wed, Thu, Fri, Sat, Sun)`},
		{"Mon-Fri 8:00-19:00 UTC", `"8:00" is not a time of day from 00:00 to 23:59 (HH:MM)`},
		{"Mon-Fri 08:00-25:00 UTC", `"25:00" is not a time of day from 00:00 to 24:00 (HH:MM)`},
		{"Mon-Fri 08:60-19:00 UTC", `"08:60" is not a time of day from 00:00 to 23:59 (HH:MM)`},
		{"Mon-Fri 24:00-08:00 UTC", `"24:00" is not a time of day from 00:00 to 23:59 (HH:MM)`},
		{"Mon-Fri 08:00-24:01 UTC", `"24:01" is not a time of day from 00:00 to 24:00 (HH:MM)`},
		{"Mon-Fri 08:00 UTC", `"08:00" is not a time range such as 08:00-19:00`},
		{"Mon-Fri 08:00-08:00 UTC", `"08:00-08:00" starts and ends at the same time; write 00:00-24:00 for a whole day`},
		{"Mon-Fri 0x:00-19:00 UTC", `"0x:00" is not a time of day from 00:00 to 23:59 (HH:MM)`},
		{"Mon-Fri 08:00-19:00 Europe/Berlln", `"Europe/Berlln" is not a time zone name such as UTC or Europe/Berlin`},
		{"Mon-Fri 08:00-19:00 Local", `"Local" is not allowed; name the time zone, e.g. UTC or Europe/Berlin`},
		{"Mon-Fri 08:00-19:00 ../../etc/passwd", `"../../etc/passwd" is not a time zone name such as UTC or Europe/Berlin`},
		{"Mon-Fri 08:00-19:00 UTC,", `range 2 (""): is empty (two commas, or a comma at either end)`},
		{"Mon-Fri 08:00-19:00 UTC, Sat 10:00-1200 UTC", `range 2 ("Sat 10:00-1200 UTC"): "1200" is not a time of day from 00:00 to 24:00 (HH:MM)`},
		{"2019-04-01T00:00:00+00:00-2019-04-02T00:00:00+00:00", `has 1 of its 3 parts; write days, times and a time zone, e.g. "Mon-Fri 08:00-19:00 UTC"`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			h, err := Parse(tt.in)
			if err == nil {
				t.Fatalf("Parse(%q) = %v, want an error", tt.in, h)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T is not an *Error", err)
			}
			if err.Error() != tt.want {
				t.Fatalf("error\n got %s\nwant %s", err, tt.want)
			}
		})
	}
}

func TestContains(t *testing.T) {
	tests := []struct {
		hours string
		at    time.Time
		want  bool
	}{
		// 2026-03-02 is a Monday; 2026-03-07 a Saturday.
		{"Mon-Fri 08:00-19:00 Europe/Berlin", at(t, "Europe/Berlin", "2026-03-02 07:59:59"), false},
		{"Mon-Fri 08:00-19:00 Europe/Berlin", at(t, "Europe/Berlin", "2026-03-02 08:00:00"), true},
		{"Mon-Fri 08:00-19:00 Europe/Berlin", at(t, "Europe/Berlin", "2026-03-06 18:59:59"), true},
		{"Mon-Fri 08:00-19:00 Europe/Berlin", at(t, "Europe/Berlin", "2026-03-06 19:00:00"), false},
		{"Mon-Fri 08:00-19:00 Europe/Berlin", at(t, "Europe/Berlin", "2026-03-07 10:00:00"), false},
		// The window is on Berlin's clock whatever zone t is in: 07:30 UTC
		// is 08:30 in summer (CEST) but 08:30 is 07:30 UTC in winter (CET).
		{"Mon-Fri 08:00-19:00 Europe/Berlin", utc(t, "2026-07-01 06:30:00"), true},
		{"Mon-Fri 08:00-19:00 Europe/Berlin", utc(t, "2026-01-05 06:30:00"), false},
		{"Mon-Fri 08:00-19:00 Europe/Berlin", utc(t, "2026-01-05 07:00:00"), true},
		// The weekday too is Berlin's: Friday 23:30 UTC is Saturday in Berlin.
		{"Sat 00:00-02:00 Europe/Berlin", utc(t, "2026-03-06 23:30:00"), true},

		// Crossing midnight, read as kube-downscaler does: the moment's own
		// weekday and time of day.
		{"Mon-Fri 22:00-06:00 UTC", utc(t, "2026-03-02 23:00:00"), true},  // Mon night
		{"Mon-Fri 22:00-06:00 UTC", utc(t, "2026-03-03 03:00:00"), true},  // Tue early
		{"Mon-Fri 22:00-06:00 UTC", utc(t, "2026-03-02 03:00:00"), true},  // Mon early
		{"Mon-Fri 22:00-06:00 UTC", utc(t, "2026-03-03 06:00:00"), false}, // end excluded
		{"Mon-Fri 22:00-06:00 UTC", utc(t, "2026-03-03 12:00:00"), false},
		{"Mon-Fri 22:00-06:00 UTC", utc(t, "2026-03-06 23:00:00"), true},  // Fri night
		{"Mon-Fri 22:00-06:00 UTC", utc(t, "2026-03-07 03:00:00"), false}, // Sat early
		{"Mon-Fri 22:00-06:00 UTC", utc(t, "2026-03-08 23:00:00"), false}, // Sun night

		// Day ranges wrapping around the week.
		{"Fri-Mon 10:00-12:00 UTC", utc(t, "2026-03-07 11:00:00"), true},  // Sat
		{"Fri-Mon 10:00-12:00 UTC", utc(t, "2026-03-08 11:00:00"), true},  // Sun
		{"Fri-Mon 10:00-12:00 UTC", utc(t, "2026-03-02 11:00:00"), true},  // Mon
		{"Fri-Mon 10:00-12:00 UTC", utc(t, "2026-03-04 11:00:00"), false}, // Wed

		// 24:00 ends the day.
		{"Sun 00:00-24:00 UTC", utc(t, "2026-03-08 23:59:59"), true},
		{"Sun 00:00-24:00 UTC", utc(t, "2026-03-09 00:00:00"), false},
		{"Sun 00:00-24:00 UTC", utc(t, "2026-03-08 00:00:00"), true},

		// Several ranges in different zones.
		{"Mon-Fri 08:00-12:00 Europe/Berlin, Mon-Fri 09:00-17:00 America/New_York", utc(t, "2026-01-05 12:00:00"), false},
		{"Mon-Fri 08:00-12:00 Europe/Berlin, Mon-Fri 09:00-17:00 America/New_York", utc(t, "2026-01-05 10:00:00"), true},
		{"Mon-Fri 08:00-12:00 Europe/Berlin, Mon-Fri 09:00-17:00 America/New_York", utc(t, "2026-01-05 14:00:00"), true},

		// Europe/Berlin springs forward on 2026-03-29 at 02:00 CET (01:00
		// UTC) to 03:00 CEST: 02:00-03:00 never shows on the clock.
		{"Sun 02:30-04:00 Europe/Berlin", utc(t, "2026-03-29 00:59:59"), false},
		{"Sun 02:30-04:00 Europe/Berlin", utc(t, "2026-03-29 01:00:00"), true},
		{"Sun 02:30-04:00 Europe/Berlin", utc(t, "2026-03-29 01:59:59"), true},
		{"Sun 02:30-04:00 Europe/Berlin", utc(t, "2026-03-29 02:00:00"), false},
		// It falls back on 2026-10-25 at 03:00 CEST (01:00 UTC) to 02:00
		// CET: 02:00-03:00 shows twice.
		{"Sun 02:30-04:00 Europe/Berlin", utc(t, "2026-10-25 00:30:00"), true},  // 02:30 CEST
		{"Sun 02:30-04:00 Europe/Berlin", utc(t, "2026-10-25 01:15:00"), false}, // 02:15 CET
		{"Sun 02:30-04:00 Europe/Berlin", utc(t, "2026-10-25 01:30:00"), true},  // 02:30 CET
		{"Sun 02:30-04:00 Europe/Berlin", utc(t, "2026-10-25 02:59:59"), true},  // 03:59:59 CET
		{"Sun 02:30-04:00 Europe/Berlin", utc(t, "2026-10-25 03:00:00"), false},
	}
	for _, tt := range tests {
		t.Run(tt.hours+" at "+tt.at.UTC().Format(time.DateTime), func(t *testing.T) {
			if got := mustParse(t, tt.hours).Contains(tt.at); got != tt.want {
				t.Fatalf("Contains(%s) = %v, want %v", tt.at, got, tt.want)
			}
		})
	}
}

func TestNextStart(t *testing.T) {
	tests := []struct {
		name  string
		hours string
		after time.Time
		want  time.Time // zero: never
	}{
		{"later today", "Mon-Fri 08:00-19:00 Europe/Berlin",
			at(t, "Europe/Berlin", "2026-03-02 06:00:00"), at(t, "Europe/Berlin", "2026-03-02 08:00:00")},
		{"inside a window: the next day's", "Mon-Fri 08:00-19:00 Europe/Berlin",
			at(t, "Europe/Berlin", "2026-03-02 08:00:00"), at(t, "Europe/Berlin", "2026-03-03 08:00:00")},
		{"after Friday's: Monday's", "Mon-Fri 08:00-19:00 Europe/Berlin",
			at(t, "Europe/Berlin", "2026-03-06 19:00:00"), at(t, "Europe/Berlin", "2026-03-09 08:00:00")},
		{"a week ahead", "Wed 08:00-09:00 UTC",
			utc(t, "2026-03-04 08:00:00"), utc(t, "2026-03-11 08:00:00")},
		{"a second before", "Wed 08:00-09:00 UTC",
			utc(t, "2026-03-04 07:59:59"), utc(t, "2026-03-04 08:00:00")},
		{"the earliest of several zones", "Mon-Fri 09:00-17:00 America/New_York, Mon-Fri 08:00-12:00 Europe/Berlin",
			utc(t, "2026-01-05 00:00:00"), utc(t, "2026-01-05 07:00:00")},
		{"the other zone once the first began", "Mon-Fri 09:00-17:00 America/New_York, Mon-Fri 08:00-12:00 Europe/Berlin",
			utc(t, "2026-01-05 07:00:00"), utc(t, "2026-01-05 14:00:00")},
		{"crossing midnight begins at its start", "Mon-Fri 22:00-06:00 UTC",
			utc(t, "2026-03-02 12:00:00"), utc(t, "2026-03-02 22:00:00")},
		{"crossing midnight on Monday begins at 00:00", "Mon-Fri 22:00-06:00 UTC",
			utc(t, "2026-03-07 12:00:00"), utc(t, "2026-03-09 00:00:00")},
		{"adjacent ranges are one window", "Mon 08:00-12:00 UTC, Mon 12:00-13:00 UTC",
			utc(t, "2026-03-02 09:00:00"), utc(t, "2026-03-09 08:00:00")},
		{"whole days wrapping the week", "Sat-Sun 00:00-24:00 UTC",
			utc(t, "2026-03-02 00:00:00"), utc(t, "2026-03-07 00:00:00")},
		{"every moment: never", "Mon-Sun 00:00-24:00 UTC",
			utc(t, "2026-03-02 00:00:00"), time.Time{}},
		{"every moment, wrapping: never", "Thu-Wed 12:00-12:01 UTC, Mon-Sun 12:01-12:00 UTC",
			utc(t, "2026-03-02 00:00:00"), time.Time{}},

		// Spring forward: 02:30 never shows; the window begins when the
		// clock jumps to 03:00 CEST, at 01:00 UTC.
		{"spring forward skips the start", "Sun 02:30-04:00 Europe/Berlin",
			utc(t, "2026-03-28 12:00:00"), utc(t, "2026-03-29 01:00:00")},
		{"spring forward: a start after the gap", "Sun 08:00-09:00 Europe/Berlin",
			utc(t, "2026-03-28 12:00:00"), utc(t, "2026-03-29 06:00:00")},
		{"spring forward: the next day keeps CEST", "Mon-Fri 08:00-19:00 Europe/Berlin",
			utc(t, "2026-03-27 18:00:00"), utc(t, "2026-03-30 06:00:00")},
		// Fall back: the first 02:30 (CEST, 00:30 UTC) begins the window; at
		// 03:00 CEST the clock shows 02:00 again, outside it, and the second
		// 02:30 (CET, 01:30 UTC) begins it again.
		{"fall back: the first of two", "Sun 02:30-04:00 Europe/Berlin",
			utc(t, "2026-10-24 12:00:00"), utc(t, "2026-10-25 00:30:00")},
		{"fall back: the second of two", "Sun 02:30-04:00 Europe/Berlin",
			utc(t, "2026-10-25 00:30:00"), utc(t, "2026-10-25 01:30:00")},
		{"fall back: then next week's", "Sun 02:30-04:00 Europe/Berlin",
			utc(t, "2026-10-25 01:30:00"), utc(t, "2026-11-01 01:30:00")},
		{"fall back: a repeated hour inside a window is no start", "Sun 01:00-05:00 Europe/Berlin",
			utc(t, "2026-10-24 23:00:00"), utc(t, "2026-11-01 00:00:00")},
		{"fall back: the next day keeps CET", "Mon-Fri 08:00-19:00 Europe/Berlin",
			utc(t, "2026-10-23 18:00:00"), utc(t, "2026-10-26 07:00:00")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := mustParse(t, tt.hours)
			got := h.NextStart(tt.after)
			if !got.Equal(tt.want) {
				t.Fatalf("NextStart(%s) = %s, want %s", tt.after.UTC(), got.UTC(), tt.want.UTC())
			}
			if got.IsZero() {
				return
			}
			if !h.Contains(got) || h.Contains(got.Add(-time.Second)) {
				t.Fatalf("%s is no start: Contains there %v, a second before %v", got, h.Contains(got), h.Contains(got.Add(-time.Second)))
			}
		})
	}
}

// TestNextStartAgreesWithContains walks a year in steps of five minutes
// (every start below falls on one) through zones with clock changes, and
// checks that NextStart finds exactly the moments at which Contains turns
// true.
func TestNextStartAgreesWithContains(t *testing.T) {
	const step = 5 * time.Minute
	for _, s := range []string{
		"Mon-Fri 08:00-19:00 Europe/Berlin",
		"Sun 02:30-04:00 Europe/Berlin",
		"Sat-Mon 22:00-02:30 Europe/Berlin, Wed 12:00-13:00 Australia/Lord_Howe",
		"Sun 01:45-02:15 America/New_York",
	} {
		t.Run(s, func(t *testing.T) {
			h := mustParse(t, s)
			from := utc(t, "2026-01-01 00:00:00")
			next := h.NextStart(from)
			prev := h.Contains(from)
			for m := from.Add(step); m.Before(from.AddDate(1, 0, 0)); m = m.Add(step) {
				in := h.Contains(m)
				if in && !prev {
					if !m.Equal(next) {
						t.Fatalf("the hours begin at %s, NextStart said %s", m.UTC(), next.UTC())
					}
					next = h.NextStart(m)
				} else if !m.Before(next) {
					t.Fatalf("NextStart said %s, but nothing begins there", next.UTC())
				}
				prev = in
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"Mon-Fri 08:00-19:00 Europe/Berlin",
		"Sat 10:00-12:00 UTC, Sun 22:00-06:00 America/New_York",
		"Fri-Mon 00:00-24:00 Asia/Tokyo",
		"Mon-Fri 8:00-19:00 UTC",
		",,",
	} {
		f.Add(s)
	}
	now := time.Date(2026, 3, 29, 0, 30, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		h, err := Parse(s)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || strings.ContainsAny(err.Error(), "\r\n") {
				t.Fatalf("error %q (%T) is not a one-line *Error", err, err)
			}
			return
		}
		again, err := Parse(h.String())
		if err != nil || again.String() != h.String() {
			t.Fatalf("%q: String %q does not read back: %v", s, h.String(), err)
		}
		if n := h.NextStart(now); !n.IsZero() && (!h.Contains(n) || h.Contains(n.Add(-time.Nanosecond)) || !n.After(now)) {
			t.Fatalf("%q: NextStart %s is no start after %s", s, n, now)
		}
	})
}
