package events

import "time"

// SubjectWorklistUpdated is the root of the notify service's worklist
// events, published on worklist.updated.<change>.<level>: a subscriber to
// worklist.updated.triaged.STAT sees every study that became STAT.
const SubjectWorklistUpdated = "worklist.updated"

// TypeWorklistUpdated is the event type of a worklist change.
const TypeWorklistUpdated = "org.pacsflow.worklist.updated.v1"

// Worklist changes: what made an entry change.
const (
	// WorklistAdded: a study event or a model result listed the study.
	WorklistAdded = "added"
	// WorklistStudy: a later study event (pacs.study.updated) changed it.
	WorklistStudy = "study"
	// WorklistFindings, WorklistReport, WorklistTriaged: a model result
	// arrived; triaged is the one that takes the entry out of pending.
	WorklistFindings = "findings"
	WorklistReport   = "report"
	WorklistTriaged  = "triaged"
	// WorklistStatus: a reader set the reading status.
	WorklistStatus = "status"
)

// WorklistUpdatedSubject is worklist.updated.<change>.<level>.
func WorklistUpdatedSubject(change, level string) string {
	return SubjectWorklistUpdated + "." + Token(change) + "." + Token(level)
}

// WorklistUpdated is the data of worklist.updated: a study's worklist entry
// changed. It names the study and its place on the list, never the
// patient: the entry itself is read through the notify service's API.
type WorklistUpdated struct {
	StudyInstanceUID string `json:"study_instance_uid"`
	// Change is added, study, findings, report, triaged or status.
	Change string `json:"change"`
	// Revision is the entry's revision in the worklist bucket: it grows
	// with every change, so a consumer keeps the highest it saw.
	Revision int64 `json:"revision"`
	// Generation is the generation of the latest study event of the entry.
	Generation int `json:"generation"`
	// Level and Score order the worklist; Level comes from the DICOM
	// priority while Pending (no model triage yet).
	Level   string  `json:"level"`
	Score   float64 `json:"score"`
	Pending bool    `json:"pending"`
	// Status is the reading status: new, in_review or done.
	Status string `json:"status"`
	// Modalities are the study's modalities, sorted; never nil.
	Modalities []string `json:"modalities"`
	// FirstReceivedAt is the receipt of the study's first instance: the
	// start of the study's latency.
	FirstReceivedAt time.Time `json:"first_received_at"`
}
