package events

import (
	"sort"
	"strings"
	"time"
)

// Subject roots. Published subjects add tokens for filtering, see each
// event's subject function.
const (
	SubjectInstanceStored = "pacs.instance.stored"
	SubjectStudyReceived  = "pacs.study.received"
	SubjectStudyUpdated   = "pacs.study.updated"
)

// Event types (CloudEvents type attribute), versioned.
const (
	TypeInstanceStored = "org.pacsflow.instance.stored.v1"
	TypeStudyReceived  = "org.pacsflow.study.received.v1"
	TypeStudyUpdated   = "org.pacsflow.study.updated.v1"
)

// InstanceStoredSubject is pacs.instance.stored.<modality>.<called AE>.
func InstanceStoredSubject(modality, calledAE string) string {
	return SubjectInstanceStored + "." + Token(modality) + "." + Token(calledAE)
}

// StudySubject is <root>.<modalities>.<called AE>, where modalities are
// the study's modalities sorted and joined with '+', e.g.
// pacs.study.received.CT+SR.ARCHIVE.
func StudySubject(root string, modalities []string, calledAE string) string {
	mods := make([]string, len(modalities))
	for i, m := range modalities {
		mods[i] = Token(m)
	}
	sort.Strings(mods)
	return root + "." + Token(strings.Join(mods, "+")) + "." + Token(calledAE)
}

// Patient holds the patient attributes an event carries (PHI: subscribers
// without clearance use the de-identified stream).
type Patient struct {
	ID        string `json:"id,omitempty"`
	Name      string `json:"name,omitempty"`
	BirthDate string `json:"birth_date,omitempty"`
	Sex       string `json:"sex,omitempty"`
}

// Study holds study-level attributes.
type Study struct {
	StudyInstanceUID       string `json:"study_instance_uid"`
	AccessionNumber        string `json:"accession_number,omitempty"`
	StudyID                string `json:"study_id,omitempty"`
	Date                   string `json:"date,omitempty"`
	Time                   string `json:"time,omitempty"`
	Description            string `json:"description,omitempty"`
	ReferringPhysicianName string `json:"referring_physician_name,omitempty"`
	// RequestedProcedurePriority is STAT, HIGH, ROUTINE, MEDIUM or LOW when
	// the modality sent it.
	RequestedProcedurePriority string `json:"requested_procedure_priority,omitempty"`
}

// Association identifies the DICOM association an instance arrived on.
type Association struct {
	ID            string `json:"id"`
	CallingAE     string `json:"calling_ae"`
	CalledAE      string `json:"called_ae"`
	SourceAddress string `json:"source_address"`
}

// StoredObject locates an instance's bytes in storage: a Part 10 file.
type StoredObject struct {
	// Backend is "fs" or "objectstore"; Bucket names the object store bucket.
	Backend string `json:"backend"`
	Bucket  string `json:"bucket,omitempty"`
	Key     string `json:"key"`
	Size    int64  `json:"size"`
	SHA256  string `json:"sha256"`
}

// InstanceStored is the data of pacs.instance.stored: one instance is in
// storage and will not be lost.
type InstanceStored struct {
	Patient           Patient      `json:"patient"`
	Study             Study        `json:"study"`
	SeriesInstanceUID string       `json:"series_instance_uid"`
	SeriesNumber      int          `json:"series_number,omitempty"`
	SeriesDescription string       `json:"series_description,omitempty"`
	Modality          string       `json:"modality,omitempty"`
	BodyPartExamined  string       `json:"body_part_examined,omitempty"`
	SOPClassUID       string       `json:"sop_class_uid"`
	SOPInstanceUID    string       `json:"sop_instance_uid"`
	InstanceNumber    int          `json:"instance_number,omitempty"`
	NumberOfFrames    int          `json:"number_of_frames,omitempty"`
	TransferSyntaxUID string       `json:"transfer_syntax_uid"`
	Object            StoredObject `json:"object"`
	// ReplacesSHA256 is set when this SOP Instance UID was stored before
	// with other bytes: the earlier version is kept and this is a new one.
	ReplacesSHA256 string      `json:"replaces_sha256,omitempty"`
	Association    Association `json:"association"`
	ReceivedAt     time.Time   `json:"received_at"`
}

// InstanceRef is one instance in a study manifest.
type InstanceRef struct {
	SOPInstanceUID    string       `json:"sop_instance_uid"`
	SOPClassUID       string       `json:"sop_class_uid"`
	InstanceNumber    int          `json:"instance_number,omitempty"`
	NumberOfFrames    int          `json:"number_of_frames,omitempty"`
	TransferSyntaxUID string       `json:"transfer_syntax_uid"`
	Object            StoredObject `json:"object"`
	ReceivedAt        time.Time    `json:"received_at"`
}

// SeriesManifest is one series of a study manifest.
type SeriesManifest struct {
	SeriesInstanceUID string        `json:"series_instance_uid"`
	SeriesNumber      int           `json:"series_number,omitempty"`
	Modality          string        `json:"modality,omitempty"`
	Description       string        `json:"description,omitempty"`
	BodyPartExamined  string        `json:"body_part_examined,omitempty"`
	NumInstances      int           `json:"num_instances"`
	Bytes             int64         `json:"bytes"`
	Instances         []InstanceRef `json:"instances"`
}

// StudyReceived is the data of pacs.study.received: a study has arrived
// completely (its associations ended and nothing came for the quiet
// period, or the maximum wait passed). pacs.study.updated carries the same
// structure for instances that came later: Series then lists only those,
// and the totals count the whole study.
type StudyReceived struct {
	Patient    Patient          `json:"patient"`
	Study      Study            `json:"study"`
	Modalities []string         `json:"modalities"`
	Series     []SeriesManifest `json:"series"`
	// NumSeries, NumInstances and Bytes count the whole study.
	NumSeries    int   `json:"num_series"`
	NumInstances int   `json:"num_instances"`
	Bytes        int64 `json:"bytes"`
	// Associations and the AE titles that delivered the instances listed.
	CallingAEs      []string  `json:"calling_aes"`
	CalledAEs       []string  `json:"called_aes"`
	Associations    []string  `json:"associations"`
	FirstReceivedAt time.Time `json:"first_received_at"`
	LastReceivedAt  time.Time `json:"last_received_at"`
	// Trigger is "quiet-period" when the study's associations ended and no
	// instance came for the quiet period, "max-wait" when the maximum wait
	// since the first instance passed first.
	Trigger string `json:"trigger"`
	// Generation counts the study events emitted for this study: 1 for
	// pacs.study.received, 2 and on for each pacs.study.updated.
	Generation int `json:"generation"`
}
