package events

import "time"

// Subject roots of the model's results. Each is published per study on
// <root>.<modalities>.<called AE>, like the study events; the triage adds its
// level first: ai.triage.<level>.<modalities>.<called AE>, so that a
// subscriber to ai.triage.STAT.> sees only STAT studies.
const (
	SubjectAIFindings    = "ai.findings"
	SubjectAIReportDraft = "ai.report.draft"
	SubjectAITriage      = "ai.triage"
)

// Event types of the model's results.
const (
	TypeAIFindings    = "org.pacsflow.ai.findings.v1"
	TypeAIReportDraft = "org.pacsflow.ai.report.draft.v1"
	TypeAITriage      = "org.pacsflow.ai.triage.v1"
)

// Triage levels, most urgent first.
const (
	TriageStat    = "STAT"
	TriageUrgent  = "URGENT"
	TriageRoutine = "ROUTINE"
)

// AITriageSubject is ai.triage.<level>.<modalities>.<called AE>.
func AITriageSubject(level string, modalities []string, calledAE string) string {
	return StudySubject(SubjectAITriage+"."+Token(level), modalities, calledAE)
}

// ModelRef names the model a result was made with.
type ModelRef struct {
	Name            string `json:"name"`
	Version         string `json:"version"`
	ContractVersion string `json:"contract_version"`
	// IntendedUse is the model's own statement of what it may be used for;
	// the reference model's says it is not for clinical use.
	IntendedUse string `json:"intended_use"`
}

// Finding is one label's result for a study: the most probable image's.
type Finding struct {
	Label string `json:"label"`
	// Probability is the model's probability that the finding is present.
	Probability float64 `json:"probability"`
	// Present is Probability at or above the label's URGENT threshold.
	Present bool `json:"present"`
	// Box is where the finding is in the image it refers to: y0, x0, y1,
	// x1, normalized to [0,1] of the image's rows and columns.
	Box []float64 `json:"box"`
	// SOPInstanceUID and Frame (1-based) name the image.
	SOPInstanceUID string `json:"sop_instance_uid"`
	Frame          int    `json:"frame"`
}

// SkippedInstance is an instance the model did not see, and why.
type SkippedInstance struct {
	SOPInstanceUID string `json:"sop_instance_uid"`
	Reason         string `json:"reason"`
}

// AITimings are the durations of one study's analysis, in seconds.
type AITimings struct {
	// Wait is from the study event's publication to the start of work.
	Wait float64 `json:"wait"`
	// Decode covers fetching instances and preparing their pixels.
	Decode float64 `json:"decode"`
	// Inference covers the model runs, batching waits included.
	Inference float64 `json:"inference"`
	Total     float64 `json:"total"`
}

// AIFindings is the data of ai.findings: what the model found in a study.
type AIFindings struct {
	Study Study `json:"study"`
	// Generation is the generation of the study event the result is for;
	// a result for a later generation of the same study supersedes it.
	Generation int `json:"generation"`
	// Modalities are the study's modalities, sorted; never nil.
	Modalities []string `json:"modalities"`
	// FirstReceivedAt is the receipt of the study's first instance, from
	// the study event: the start of the study's latency.
	FirstReceivedAt time.Time `json:"first_received_at"`
	Model           ModelRef  `json:"model"`
	// Findings has one entry per model label, in the model's order.
	Findings []Finding `json:"findings"`
	// NumImages counts the images the model analyzed.
	NumImages int               `json:"num_images"`
	Skipped   []SkippedInstance `json:"skipped"`
	Timings   AITimings         `json:"timings"`
	// AnalyzedAt is when the analysis finished.
	AnalyzedAt time.Time `json:"analyzed_at"`
}

// AIReportDraft is the data of ai.report.draft: a machine-generated draft
// report, never a signed one.
type AIReportDraft struct {
	Study Study `json:"study"`
	// Generation is the generation of the study event the result is for;
	// a result for a later generation of the same study supersedes it.
	Generation int `json:"generation"`
	// Modalities are the study's modalities, sorted; never nil.
	Modalities []string `json:"modalities"`
	// FirstReceivedAt is the receipt of the study's first instance, from
	// the study event: the start of the study's latency.
	FirstReceivedAt time.Time `json:"first_received_at"`
	Model           ModelRef  `json:"model"`
	// Text is the draft, decoded from the model's report tokens for the
	// image with the most probable finding.
	Text string `json:"text"`
	// MachineGenerated is always true: a radiologist has not reviewed it.
	MachineGenerated bool `json:"machine_generated"`
	// SOPInstanceUID and Frame (1-based) name the image the text is about.
	SOPInstanceUID string `json:"sop_instance_uid"`
	Frame          int    `json:"frame"`
	// Findings are the structured findings the draft comes from.
	Findings []Finding `json:"findings"`
}

// AITriage is the data of ai.triage: how urgently a radiologist should read
// the study.
type AITriage struct {
	Study Study `json:"study"`
	// Generation is the generation of the study event the result is for;
	// a result for a later generation of the same study supersedes it.
	Generation int `json:"generation"`
	// Modalities are the study's modalities, sorted; never nil.
	Modalities []string `json:"modalities"`
	// FirstReceivedAt is the receipt of the study's first instance, from
	// the study event: the start of the study's latency.
	FirstReceivedAt time.Time `json:"first_received_at"`
	Model           ModelRef  `json:"model"`
	// Level is STAT, URGENT or ROUTINE.
	Level string `json:"level"`
	// Score orders studies within a level: the highest finding probability.
	Score float64 `json:"score"`
	// Reason says in words what set the level.
	Reason string `json:"reason"`
}

// SubjectAIAsk is the subject of the request-reply service that answers
// questions about an analyzed study (a NATS micro service; replicas share
// the requests).
const SubjectAIAsk = "ai.ask"

// AskRequest is the body of a request on ai.ask.
type AskRequest struct {
	StudyInstanceUID string `json:"study_instance_uid"`
	Question         string `json:"question"`
}

// AskReply is the body of the answer to an AskRequest: the model's answer
// about the study's key image, the one its draft report is about.
type AskReply struct {
	StudyInstanceUID string `json:"study_instance_uid"`
	// Generation is the generation of the study's analysis that named the
	// key image.
	Generation     int    `json:"generation"`
	SOPInstanceUID string `json:"sop_instance_uid"`
	Frame          int    `json:"frame"`
	Question       string `json:"question"`
	Answer         string `json:"answer"`
	// MachineGenerated is always true: a radiologist has not reviewed it.
	MachineGenerated bool     `json:"machine_generated"`
	Model            ModelRef `json:"model"`
}
