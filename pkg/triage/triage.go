// Package triage turns a study's finding probabilities and its DICOM priority into a triage
// level (STAT, URGENT, ROUTINE), a score to order studies within a level, and the reason in
// words.
package triage

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Level is a triage level; higher is more urgent.
type Level int

// Levels, least urgent first.
const (
	Routine Level = iota
	Urgent
	Stat
)

func (l Level) String() string {
	switch l {
	case Stat:
		return "STAT"
	case Urgent:
		return "URGENT"
	}
	return "ROUTINE"
}

// Threshold is the probability at which a finding makes a study URGENT, and the one at which
// it makes it STAT.
type Threshold struct {
	Urgent, Stat float64
}

// Policy maps finding labels to thresholds; labels it does not name use Default.
type Policy struct {
	Thresholds map[string]Threshold
	Default    Threshold
}

// DefaultPolicy makes any finding at probability 0.5 URGENT and at 0.9 STAT.
func DefaultPolicy() Policy {
	return Policy{Thresholds: map[string]Threshold{}, Default: Threshold{Urgent: 0.5, Stat: 0.9}}
}

// ParsePolicy reads "label=URGENT:STAT,..." (e.g. "nodule=0.5:0.95,fracture=0.4:0.8") over the
// default policy; "*=URGENT:STAT" sets the default. STAT may be above 1 to never reach STAT.
func ParsePolicy(s string) (Policy, error) {
	p := DefaultPolicy()
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		label, values, ok := strings.Cut(part, "=")
		u, st, ok2 := strings.Cut(values, ":")
		urgent, err1 := strconv.ParseFloat(u, 64)
		stat, err2 := strconv.ParseFloat(st, 64)
		if !ok || !ok2 || err1 != nil || err2 != nil || label == "" {
			return Policy{}, fmt.Errorf("triage threshold %q: want label=URGENT:STAT, e.g. nodule=0.5:0.9", part)
		}
		if urgent < 0 || urgent > stat {
			return Policy{}, fmt.Errorf("triage threshold %q: want 0 ≤ URGENT ≤ STAT", part)
		}
		t := Threshold{Urgent: urgent, Stat: stat}
		if label == "*" {
			p.Default = t
		} else {
			p.Thresholds[label] = t
		}
	}
	return p, nil
}

// Threshold is the threshold the policy sets for label.
func (p Policy) Threshold(label string) Threshold {
	if t, ok := p.Thresholds[label]; ok {
		return t
	}
	return p.Default
}

// Finding is one label's probability for the study.
type Finding struct {
	Label       string
	Probability float64
}

// Result is a study's triage.
type Result struct {
	Level Level
	// Score orders studies within a level: the highest finding probability, in [0,1].
	Score float64
	// Reason says in words what set the level.
	Reason string
}

// ParseLevel reads STAT, URGENT or ROUTINE (any case).
func ParseLevel(s string) (Level, error) {
	for _, l := range []Level{Routine, Urgent, Stat} {
		if strings.EqualFold(strings.TrimSpace(s), l.String()) {
			return l, nil
		}
	}
	return Routine, fmt.Errorf("triage level %q: want STAT, URGENT or ROUTINE", s)
}

// PriorityLevel is the least level a DICOM Requested Procedure Priority (0040,1003) asks for:
// STAT is STAT, HIGH is URGENT, anything else ROUTINE.
func PriorityLevel(priority string) Level {
	switch strings.ToUpper(strings.TrimSpace(priority)) {
	case "STAT":
		return Stat
	case "HIGH":
		return Urgent
	}
	return Routine
}

// Assess triages a study: the level is the most urgent that any finding reaches under the
// policy or that the DICOM priority asks for.
func (p Policy) Assess(findings []Finding, dicomPriority string) Result {
	var (
		r       Result
		reasons []string
	)
	sorted := slices.SortedFunc(slices.Values(findings), func(a, b Finding) int {
		return cmp.Or(cmp.Compare(b.Probability, a.Probability), strings.Compare(a.Label, b.Label))
	})
	for _, f := range sorted {
		r.Score = max(r.Score, f.Probability)
		t := p.Threshold(f.Label)
		switch {
		case f.Probability >= t.Stat:
			r.Level = max(r.Level, Stat)
			reasons = append(reasons, fmt.Sprintf("%s %.2f ≥ STAT threshold %.2f", f.Label, f.Probability, t.Stat))
		case f.Probability >= t.Urgent:
			r.Level = max(r.Level, Urgent)
			reasons = append(reasons, fmt.Sprintf("%s %.2f ≥ URGENT threshold %.2f", f.Label, f.Probability, t.Urgent))
		}
	}
	if pl := PriorityLevel(dicomPriority); pl > Routine {
		reasons = append(reasons, fmt.Sprintf("requested procedure priority %s", strings.ToUpper(strings.TrimSpace(dicomPriority))))
		r.Level = max(r.Level, pl)
	}
	if len(reasons) == 0 {
		r.Reason = "no finding reached its URGENT threshold"
		if len(sorted) > 0 {
			r.Reason += fmt.Sprintf(" (highest: %s %.2f)", sorted[0].Label, sorted[0].Probability)
		}
	} else {
		r.Reason = strings.Join(reasons, "; ")
	}
	return r
}
