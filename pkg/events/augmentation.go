package events

import "time"

// Subject roots of the generate service: requests for generated images, per
// task (ai.augmentation.requested.<task>), and the images made
// (ai.augmentation.generated.<task>).
const (
	SubjectAugmentationRequested = "ai.augmentation.requested"
	SubjectAugmentationGenerated = "ai.augmentation.generated"
)

// Event types of the generate service.
const (
	TypeAugmentationRequested = "org.pacsflow.ai.augmentation.requested.v1"
	TypeAugmentationGenerated = "org.pacsflow.ai.augmentation.generated.v1"
)

// Generate tasks, as the model contract names them.
const (
	TaskSynthesize = "synthesize"
	TaskRestore    = "restore"
	TaskConvert    = "convert"
)

// AugmentationSubject is <root>.<task>.
func AugmentationSubject(root, task string) string { return root + "." + Token(task) }

// AugmentationRequested is the data of ai.augmentation.requested: a request
// for generated images derived from a study.
type AugmentationRequested struct {
	// RequestID identifies the request: the same ID gives the same images,
	// under the same UIDs.
	RequestID string `json:"request_id"`
	// StudyInstanceUID is the study the images derive from.
	StudyInstanceUID string `json:"study_instance_uid"`
	// SOPInstanceUID names the source image; empty: the study's first image
	// of a modality the model accepts.
	SOPInstanceUID string `json:"sop_instance_uid,omitempty"`
	// Task is synthesize, restore or convert.
	Task string `json:"task"`
	// Prompt conditions the generation: for synthesize, the findings wanted
	// ("nodule", "normal").
	Prompt string `json:"prompt,omitempty"`
	// Count is how many images; image i uses seed Seed+i (a seed is at most
	// 2^53, so that every JSON reader keeps it exact).
	Count int   `json:"count"`
	Seed  int64 `json:"seed"`
	// RequestedBy says where the request came from: cli, http, or
	// policy:<rule>.
	RequestedBy string    `json:"requested_by"`
	RequestedAt time.Time `json:"requested_at"`
}

// GeneratedObject is one generated image, stored as a DICOM instance.
type GeneratedObject struct {
	SOPInstanceUID    string       `json:"sop_instance_uid"`
	SeriesInstanceUID string       `json:"series_instance_uid"`
	Seed              int64        `json:"seed"`
	Object            StoredObject `json:"object"`
}

// AugmentationGenerated is the data of ai.augmentation.generated: the
// images made for a request, each a new DICOM instance of a new study marked
// synthetic in its attributes (docs/synthetic-objects.md). They are never
// clinical images: never triaged, never on a worklist.
type AugmentationGenerated struct {
	RequestID string `json:"request_id"`
	Task      string `json:"task"`
	Prompt    string `json:"prompt,omitempty"`
	// SourceStudyInstanceUID and SourceSOPInstanceUID name what the images
	// derive from.
	SourceStudyInstanceUID string `json:"source_study_instance_uid"`
	SourceSOPInstanceUID   string `json:"source_sop_instance_uid,omitempty"`
	// StudyInstanceUID is the synthetic study the images belong to.
	StudyInstanceUID string            `json:"study_instance_uid"`
	Objects          []GeneratedObject `json:"objects"`
	Model            ModelRef          `json:"model"`
	// Synthetic is always true.
	Synthetic   bool      `json:"synthetic"`
	GeneratedAt time.Time `json:"generated_at"`
}
