package status

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"k8s.io/apimachinery/pkg/util/duration"
	"sigs.k8s.io/yaml"
)

// TableOptions choose the table's columns and the moment ages count to.
type TableOptions struct {
	// Wide adds THRESHOLD and QUERY.
	Wide bool
	// Namespace adds NAMESPACE first, as kubectl does with -A.
	Namespace bool
	Now       time.Time
}

// none marks an empty cell, as in kubectl.
const none = "<none>"

// PrintTable writes rows as kubectl writes a table: upper-case headers,
// columns three spaces apart.
func PrintTable(w io.Writer, rows []Row, o TableOptions) error {
	// kubectl's tabwriter settings (minwidth 6, tabwidth 4, padding 3).
	tw := tabwriter.NewWriter(w, 6, 4, 3, ' ', 0)
	header := []string{"KIND", "NAME", "STATE", "REPLICAS", "ORIGINAL", "ASLEEP-SINCE", "LAST-EVENT", "EVENT-AGE"}
	if o.Namespace {
		header = append([]string{"NAMESPACE"}, header...)
	}
	if o.Wide {
		header = append(header, "THRESHOLD", "QUERY")
	}
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		cells := []string{r.Kind, r.Name, r.State, strconv.Itoa(int(r.Replicas)), orNone(r.OriginalReplicas), asleepSince(r, o.Now)}
		if r.LastEvent != nil {
			cells = append(cells, r.LastEvent.Reason, age(r.LastEvent.Time, o.Now))
		} else {
			cells = append(cells, none, none)
		}
		if o.Namespace {
			cells = append([]string{r.Namespace}, cells...)
		}
		if o.Wide {
			cells = append(cells, orNone(r.Threshold), orNone(r.Query))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

func orNone(s string) string {
	if s == "" {
		return none
	}
	return s
}

func asleepSince(r Row, now time.Time) string {
	switch {
	case !r.Asleep:
		return none
	case r.AsleepSince == nil:
		return "<unknown>"
	}
	return age(*r.AsleepSince, now)
}

// age tells how long ago t was, as kubectl's AGE column does.
func age(t, now time.Time) string {
	if t.IsZero() {
		return "<unknown>"
	}
	return duration.HumanDuration(now.Sub(t))
}

// list is the shape of -o json and -o yaml, like a kubectl List: jq
// '.items[]' works on both.
type list struct {
	Items []Row `json:"items"`
}

// PrintJSON writes rows as indented JSON.
func PrintJSON(w io.Writer, rows []Row) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "    ")
	return enc.Encode(list{Items: nonNil(rows)})
}

// PrintYAML writes rows as YAML, with the same field names as JSON.
func PrintYAML(w io.Writer, rows []Row) error {
	out, err := yaml.Marshal(list{Items: nonNil(rows)})
	if err != nil {
		return err
	}
	_, err = w.Write(out)
	return err
}

func nonNil(rows []Row) []Row {
	if rows == nil {
		return []Row{}
	}
	return rows
}
