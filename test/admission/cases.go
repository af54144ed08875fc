// Package admission holds the cases on which the admission policy of
// deploy/admission and the daemon's annotation parser must agree. The
// informer's unit test runs the parser on each, the e2e suite the policy
// in a real kube-apiserver.
package admission

import (
	"fmt"
	"maps"
	"strings"
)

// Case is one set of zeroscaler.io/ annotations.
type Case struct {
	Name string
	// Set adds to (or, with the same keys, replaces) Base.
	Set map[string]string
	// Message is empty when the daemon accepts the annotations, else its
	// InvalidScalingConfig text, which the policy gives too unless
	// DaemonOnly.
	Message string
	// DaemonOnly: the policy cannot check this and accepts it; only the
	// daemon refuses it.
	DaemonOnly bool
}

// Base is a complete, valid configuration each case starts from.
var Base = map[string]string{
	"zeroscaler.io/query":     "sum(rate(http_requests_total[2m]))",
	"zeroscaler.io/threshold": "1",
}

// Annotations returns Base with the case's annotations set.
func (c Case) Annotations() map[string]string {
	a := maps.Clone(Base)
	maps.Copy(a, c.Set)
	return a
}

// Refused reports whether the policy refuses the case.
func (c Case) Refused() bool { return c.Message != "" && !c.DaemonOnly }

// Message formats an annotation's refusal as informer.FieldError does.
func Message(annotation, value, reason string) string {
	return fmt.Sprintf("annotation %s: %q %s", annotation, value, reason)
}

const (
	threshold = "zeroscaler.io/threshold"
	cooldown  = "zeroscaler.io/cooldown-period"
	polling   = "zeroscaler.io/polling-interval"
	minRep    = "zeroscaler.io/min-replicas"
	paused    = "zeroscaler.io/paused"
	exclude   = "zeroscaler.io/exclude"
	group     = "zeroscaler.io/group"
	hours     = "zeroscaler.io/awake-hours"

	notFinite  = "is not a finite number"
	notBool    = `is not a boolean ("true" or "false")`
	notDur     = "is not a Go duration such as 30s or 5m"
	short      = "is shorter than 1s"
	notPos     = "is not a positive integer"
	groupName  = "is not a group name: lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63 characters"
	officeHour = `is not office hours such as "Mon-Fri 08:00-19:00 Europe/Berlin": `
)

func good(annotation, value string) Case {
	return Case{Name: annotation + "=" + value, Set: map[string]string{annotation: value}}
}

func bad(annotation, value, reason string) Case {
	return Case{Name: annotation + "=" + value, Set: map[string]string{annotation: value}, Message: Message(annotation, value, reason)}
}

func badHours(value, reason string) Case { return bad(hours, value, officeHour+reason) }

// Cases are the shared cases.
var Cases = []Case{
	{Name: "base"},

	good(threshold, "0"),
	good(threshold, "0.5"),
	good(threshold, " 2 "),
	good(threshold, "-1.5e3"),
	good(threshold, "1_000"),
	good(threshold, ".5"),
	good(threshold, "0x1p-2"),
	good(threshold, "1e-300"),
	good(threshold, "0e999999"),
	good(threshold, "1.7e308"),
	bad(threshold, "abc", notFinite),
	bad(threshold, "", notFinite),
	bad(threshold, "1,5", notFinite),
	bad(threshold, "1__0", notFinite),
	bad(threshold, "0x1", notFinite),
	bad(threshold, "NaN", notFinite),
	bad(threshold, "-Inf", notFinite),
	bad(threshold, "1e400", notFinite),
	bad(threshold, "1.8e308", notFinite),
	bad(threshold, "1e-400", "is too close to zero to be told from it; use 0 or a larger number"),
	bad(threshold, "1e-310", "is too close to zero to be read exactly; use 0 or a larger number"),
	{Name: "threshold just over the largest float64", Set: map[string]string{threshold: "1.7976931348623159e308"},
		Message: Message(threshold, "1.7976931348623159e308", notFinite), DaemonOnly: true},

	good(cooldown, "30s"),
	good(cooldown, " 5m "),
	good(cooldown, "1h30m"),
	good(cooldown, "1s"),
	good(cooldown, "1000ms"),
	good(cooldown, "100000s"),
	bad(cooldown, "30", notDur),
	bad(cooldown, "5 m", notDur),
	bad(cooldown, "1d", notDur),
	bad(cooldown, "", notDur),
	bad(cooldown, "500ms", short),
	bad(cooldown, "0", short),
	bad(cooldown, "-5m", short),
	good(polling, "2s"),
	good(polling, "1.5s"),
	bad(polling, "0.5s", short),
	bad(polling, "x", notDur),

	good(minRep, "1"),
	good(minRep, "+3"),
	good(minRep, "007"),
	good(minRep, "2147483647"),
	bad(minRep, "0", notPos),
	bad(minRep, "-1", notPos),
	bad(minRep, "-0", notPos),
	bad(minRep, "1.5", notPos),
	bad(minRep, "2147483648", notPos),
	bad(minRep, "abc", notPos),
	bad(minRep, "", notPos),

	good(paused, "true"),
	good(paused, "False"),
	good(paused, " 1 "),
	good(paused, "t"),
	bad(paused, "yes", notBool),
	bad(paused, "on", notBool),
	good(exclude, "false"),
	bad(exclude, "maybe", notBool),

	good(group, "shop"),
	good(group, "a-1"),
	good(group, strings.Repeat("a", 63)),
	bad(group, "Shop", groupName),
	bad(group, "a_b", groupName),
	bad(group, "-a", groupName),
	bad(group, "namespace:x", groupName),
	bad(group, strings.Repeat("a", 64), groupName),

	good(hours, "Mon-Fri 08:00-19:00 Europe/Berlin"),
	good(hours, "mon-fri 22:00-06:00 UTC, Sat 00:00-24:00 UTC"),
	good(hours, "Fri-Mon 00:00-24:00 UTC"),
	good(hours, "SUN  10:00-11:00\tUTC"),
	badHours("", `is empty; write ranges such as "Mon-Fri 08:00-19:00 Europe/Berlin"`),
	badHours("Mon-Fri", `has 1 of its 3 parts; write days, times and a time zone, e.g. "Mon-Fri 08:00-19:00 UTC"`),
	badHours("Mon-Fri 08:00-19:00 UTC extra", `has 4 parts; write days, times and a time zone, e.g. "Mon-Fri 08:00-19:00 UTC", and separate ranges with commas`),
	badHours("Mo-Fr 08:00-19:00 UTC", `"Mo" is not a weekday (Mon, Tue, Wed, Thu, Fri, Sat, Sun) or a range of them such as Mon-Fri`),
	badHours("Mon-Fry 08:00-19:00 UTC", `"Fry" is not a weekday (Mon, Tue, Wed, Thu, Fri, Sat, Sun)`),
	badHours("Mon-Fri 0800 UTC", `"0800" is not a time range such as 08:00-19:00`),
	badHours("Mon-Fri 8:00-19:00 UTC", `"8:00" is not a time of day from 00:00 to 23:59 (HH:MM)`),
	badHours("Mon-Fri 24:00-19:00 UTC", `"24:00" is not a time of day from 00:00 to 23:59 (HH:MM)`),
	badHours("Mon-Fri 08:00-24:01 UTC", `"24:01" is not a time of day from 00:00 to 24:00 (HH:MM)`),
	badHours("Mon-Fri 08:60-19:00 UTC", `"08:60" is not a time of day from 00:00 to 23:59 (HH:MM)`),
	badHours("Mon-Fri 08:00-08:00 UTC", `"08:00-08:00" starts and ends at the same time; write 00:00-24:00 for a whole day`),
	badHours("Mon-Fri 08:00-19:00 Local", `"Local" is not allowed; name the time zone, e.g. UTC or Europe/Berlin`),
	badHours("Mon-Fri 08:00-19:00 UTC,", `range 2 (""): is empty (two commas, or a comma at either end)`),
	badHours("Mon 08:00-19:00 UTC, Tue 25:00-26:00 UTC", `range 2 ("Tue 25:00-26:00 UTC"): "25:00" is not a time of day from 00:00 to 23:59 (HH:MM)`),
	{Name: "awake-hours in an unknown time zone", Set: map[string]string{hours: "Mon-Fri 08:00-19:00 Mars/Olympus"},
		Message: Message(hours, "Mon-Fri 08:00-19:00 Mars/Olympus", officeHour+`"Mars/Olympus" is not a time zone name such as UTC or Europe/Berlin`), DaemonOnly: true},

	bad("zeroscaler.io/query", "  ", "is empty; it must be a PromQL query"),
	{Name: "server-address not on the allow-list", Set: map[string]string{"zeroscaler.io/server-address": "http://elsewhere.invalid:9090"},
		Message: "annotation zeroscaler.io/server-address: \"http://elsewhere.invalid:9090\"", DaemonOnly: true},
}
