package main

import (
	"bytes"
	"slices"
)

// fixedSections are the report's sections about the whole run; splice
// never takes them from a partial run.
var fixedSections = []string{"## Machine", "## Method", "## Targets", "## Targets missed", "## Flags", "## Reproduce"}

// section is one "## " heading and what follows it up to the next one.
type section struct {
	heading string
	text    []byte // the whole section, heading included
}

// sections splits a report at its "## " headings; the text before the
// first one is returned as a section with an empty heading.
func sections(doc []byte) []section {
	var out []section
	cur := section{}
	for line := range bytes.Lines(doc) {
		if bytes.HasPrefix(line, []byte("## ")) {
			out = append(out, cur)
			cur = section{heading: string(bytes.TrimRight(line, "\n"))}
		}
		cur.text = append(cur.text, line...)
	}
	return append(out, cur)
}

// splice replaces in old the sections a partial run measured (those of
// partial other than fixedSections), each with note under its heading. A
// section old lacks goes after the one that precedes it in partial, or
// before the targets.
func splice(old, partial []byte, note string) []byte {
	doc := sections(old)
	prev := ""
	for _, s := range sections(partial) {
		if s.heading == "" || slices.Contains(fixedSections, s.heading) {
			if s.heading != "" {
				prev = s.heading
			}
			continue
		}
		heading, body, _ := bytes.Cut(s.text, []byte("\n"))
		s.text = slices.Concat(heading, []byte("\n\n"+note+"\n"), body)
		find := func(h string) int { return slices.IndexFunc(doc, func(x section) bool { return x.heading == h }) }
		switch i, after := find(s.heading), find(prev); {
		case i >= 0:
			doc[i] = s
		case after >= 0 && !slices.Contains(fixedSections, prev):
			doc = slices.Insert(doc, after+1, s)
		default:
			at := slices.IndexFunc(doc, func(x section) bool {
				return x.heading == "## Targets" || x.heading == "## Targets missed" || x.heading == "## Flags"
			})
			if at < 0 {
				at = len(doc)
			}
			doc = slices.Insert(doc, at, s)
		}
		prev = s.heading
	}
	var b bytes.Buffer
	for _, s := range doc {
		b.Write(s.text)
	}
	return b.Bytes()
}
