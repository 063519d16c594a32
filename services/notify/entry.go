package notify

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/triage"
)

// Reading statuses of a worklist entry.
const (
	StatusNew      = "new"
	StatusInReview = "in_review"
	StatusDone     = "done"
)

// Entry is one study on the worklist: what the page and the API show, and
// the value kept in the worklist bucket.
type Entry struct {
	StudyInstanceUID string `json:"study_instance_uid"`
	// Revision is the entry's revision in the bucket: it grows with every
	// change (set when read, not stored).
	Revision uint64 `json:"revision"`
	// Change is what changed the entry last: one of events.Worklist*;
	// ChangeGeneration the generation of the study event or model result
	// that did (for a status change, the study's).
	Change           string         `json:"change"`
	ChangeGeneration int            `json:"change_generation"`
	Patient          events.Patient `json:"patient"`
	Study            events.Study   `json:"study"`
	// Modalities are the study's modalities, sorted.
	Modalities      []string  `json:"modalities"`
	CalledAEs       []string  `json:"called_aes"`
	NumSeries       int       `json:"num_series"`
	NumInstances    int       `json:"num_instances"`
	FirstReceivedAt time.Time `json:"first_received_at"`
	LastReceivedAt  time.Time `json:"last_received_at"`
	// Generation is the latest study event's generation.
	Generation int `json:"generation"`
	// Level orders the worklist: the AI triage's level, or while Pending
	// the level the DICOM Requested Procedure Priority asks for.
	Level string `json:"level"`
	// Score orders entries within a level: the triage's score, 0 while
	// pending.
	Score float64 `json:"score"`
	// Pending is true until the study's AI triage arrives.
	Pending bool `json:"pending"`
	// AI is what the model said of the study, nil before any result.
	AI *AIResult `json:"ai,omitempty"`
	// Status is new, in_review or done, set by readers through the API.
	Status   string     `json:"status"`
	StatusBy string     `json:"status_by,omitempty"`
	StatusAt *time.Time `json:"status_at,omitempty"`
	// UpdatedAt is the time of the last change.
	UpdatedAt time.Time `json:"updated_at"`
}

// AIResult gathers the model's results for a study: each part is that of
// the latest generation it arrived for.
type AIResult struct {
	Model events.ModelRef `json:"model"`
	// FindingsGeneration is 0 until ai.findings arrives.
	FindingsGeneration int              `json:"findings_generation,omitempty"`
	Findings           []events.Finding `json:"findings,omitempty"`
	// Summary lists the present findings with their probability, or says
	// that none is.
	Summary string `json:"summary,omitempty"`
	// ReportGeneration is 0 until ai.report.draft arrives.
	ReportGeneration int `json:"report_generation,omitempty"`
	// Report is the machine-generated draft, never a signed report.
	Report           string `json:"report,omitempty"`
	MachineGenerated bool   `json:"machine_generated,omitempty"`
	// KeyImage is the image the draft is about.
	KeyImage *ImageRef `json:"key_image,omitempty"`
	// TriageGeneration is 0 until ai.triage arrives.
	TriageGeneration int       `json:"triage_generation,omitempty"`
	Level            string    `json:"level,omitempty"`
	Score            float64   `json:"score,omitempty"`
	Reason           string    `json:"reason,omitempty"`
	TriagedAt        time.Time `json:"triaged_at,omitzero"`
}

// ImageRef names one frame of an instance.
type ImageRef struct {
	SOPInstanceUID string `json:"sop_instance_uid"`
	Frame          int    `json:"frame"`
}

// levelRank is a level's place in the worklist's order: most urgent first,
// an unknown level after ROUTINE.
func levelRank(level string) int {
	switch level {
	case events.TriageStat:
		return 0
	case events.TriageUrgent:
		return 1
	case events.TriageRoutine:
		return 2
	}
	return 3
}

// compareEntries orders the worklist: triage level, then score (highest
// first), then arrival (oldest first: it has waited longest), then the
// Study Instance UID so that the order is total. Each key is compared only
// when the ones before are equal: the list sorts every entry per request.
func compareEntries(a, b *Entry) int {
	if c := cmp.Compare(levelRank(a.Level), levelRank(b.Level)); c != 0 {
		return c
	}
	if c := cmp.Compare(b.Score, a.Score); c != 0 {
		return c
	}
	if c := a.FirstReceivedAt.Compare(b.FirstReceivedAt); c != 0 {
		return c
	}
	return strings.Compare(a.StudyInstanceUID, b.StudyInstanceUID)
}

// settle sets the fields derived from the others: the level and score
// that order the entry, whether it is pending, and the findings summary.
func (e *Entry) settle() {
	if e.Status == "" {
		e.Status = StatusNew
	}
	if e.AI != nil && e.AI.TriageGeneration > 0 {
		e.Pending = false
		e.Level, e.Score = e.AI.Level, e.AI.Score
	} else {
		e.Pending = true
		e.Level, e.Score = triage.PriorityLevel(e.Study.RequestedProcedurePriority).String(), 0
	}
	if e.AI != nil && e.AI.FindingsGeneration > 0 {
		e.AI.Summary = summarize(e.AI.Findings)
	}
}

// summarize lists the present findings, most probable first.
func summarize(findings []events.Finding) string {
	present := slices.DeleteFunc(slices.Clone(findings), func(f events.Finding) bool { return !f.Present })
	if len(present) == 0 {
		return "no finding above threshold"
	}
	slices.SortStableFunc(present, func(a, b events.Finding) int { return cmp.Compare(b.Probability, a.Probability) })
	parts := make([]string, len(present))
	for i, f := range present {
		parts[i] = fmt.Sprintf("%s %.2f", f.Label, f.Probability)
	}
	return strings.Join(parts, ", ")
}

// validStatus reports whether s is a reading status.
func validStatus(s string) bool {
	return s == StatusNew || s == StatusInReview || s == StatusDone
}

func (f Filter) match(e *Entry) bool {
	if len(f.Levels) > 0 && !slices.Contains(f.Levels, e.Level) ||
		len(f.Statuses) > 0 && !slices.Contains(f.Statuses, e.Status) ||
		len(f.Modalities) > 0 && !slices.ContainsFunc(e.Modalities, func(m string) bool { return slices.Contains(f.Modalities, m) }) {
		return false
	}
	if f.Text == "" {
		return true
	}
	for _, s := range []string{e.Patient.Name, e.Patient.ID, e.Study.AccessionNumber, e.Study.Description, e.StudyInstanceUID} {
		if strings.Contains(strings.ToLower(s), strings.ToLower(f.Text)) {
			return true
		}
	}
	return false
}
