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
	// ID is Patient ID (0010,0020).
	ID string `json:"id,omitempty"`
	// Name is Patient's Name (0010,0010), DICOM PN: family^given^middle^prefix^suffix.
	Name string `json:"name,omitempty"`
	// BirthDate is Patient's Birth Date (0010,0030), DICOM DA: YYYYMMDD.
	BirthDate string `json:"birth_date,omitempty"`
	// Sex is Patient's Sex (0010,0040): M, F or O.
	Sex string `json:"sex,omitempty"`
}

// Study holds study-level attributes.
type Study struct {
	// StudyInstanceUID is Study Instance UID (0020,000D).
	StudyInstanceUID string `json:"study_instance_uid"`
	// AccessionNumber is Accession Number (0008,0050).
	AccessionNumber string `json:"accession_number,omitempty"`
	// StudyID is Study ID (0020,0010).
	StudyID string `json:"study_id,omitempty"`
	// Date is Study Date (0008,0020), DICOM DA: YYYYMMDD, as sent.
	Date string `json:"date,omitempty"`
	// Time is Study Time (0008,0030), DICOM TM: HHMMSS.FFFFFF, as sent.
	Time string `json:"time,omitempty"`
	// Description is Study Description (0008,1030).
	Description string `json:"description,omitempty"`
	// ReferringPhysicianName is Referring Physician's Name (0008,0090).
	ReferringPhysicianName string `json:"referring_physician_name,omitempty"`
	// RequestedProcedurePriority is STAT, HIGH, ROUTINE, MEDIUM or LOW when
	// the modality sent it.
	RequestedProcedurePriority string `json:"requested_procedure_priority,omitempty"`
}

// Association identifies the DICOM association an instance arrived on.
type Association struct {
	// ID is unique per association of the ingest process that served it.
	ID string `json:"id"`
	// CallingAE is the sender's AE title.
	CallingAE string `json:"calling_ae"`
	// CalledAE is the AE title the sender addressed.
	CalledAE string `json:"called_ae"`
	// SourceAddress is the sender's IP address and port.
	SourceAddress string `json:"source_address"`
}

// Storage backends an event names.
const (
	BackendFS          = "fs"
	BackendObjectStore = "objectstore"
)

// Study report triggers.
const (
	// TriggerQuietPeriod: the study's associations ended and no instance
	// came for the quiet period.
	TriggerQuietPeriod = "quiet-period"
	// TriggerMaxWait: the maximum wait since the first unreported instance
	// passed first.
	TriggerMaxWait = "max-wait"
)

// StoredObject locates an instance's bytes in storage: a Part 10 file.
type StoredObject struct {
	// Backend is BackendFS or BackendObjectStore.
	Backend string `json:"backend"`
	// Bucket names the object store bucket.
	Bucket string `json:"bucket,omitempty"`
	// Key is the object's key in the backend: STUDY/SERIES/INSTANCE.VERSION.
	Key string `json:"key"`
	// Size is the Part 10 file's length in bytes.
	Size int64 `json:"size"`
	// SHA256 is the Part 10 file's SHA-256, lowercase hex.
	SHA256 string `json:"sha256"`
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
	Patient Patient `json:"patient"`
	Study   Study   `json:"study"`
	// Modalities are the modalities of the whole study, sorted; never nil.
	Modalities []string `json:"modalities"`
	// Series lists the series with instances to report, each with at least
	// one instance; never empty.
	Series []SeriesManifest `json:"series"`
	// NumSeries, NumInstances and Bytes count the whole study.
	NumSeries    int   `json:"num_series"`
	NumInstances int   `json:"num_instances"`
	Bytes        int64 `json:"bytes"`
	// CallingAEs are the AE titles that sent the instances listed; never nil.
	CallingAEs []string `json:"calling_aes"`
	// CalledAEs are the AE titles they addressed; never nil.
	CalledAEs []string `json:"called_aes"`
	// Associations are the IDs of the associations that delivered them;
	// never nil.
	Associations []string `json:"associations"`
	// FirstReceivedAt and LastReceivedAt bound the receipt of all the
	// study's instances, not only of those listed.
	FirstReceivedAt time.Time `json:"first_received_at"`
	LastReceivedAt  time.Time `json:"last_received_at"`
	// Trigger is TriggerQuietPeriod or TriggerMaxWait.
	Trigger string `json:"trigger"`
	// Generation counts the study events emitted for this study: 1 for
	// pacs.study.received, 2 and on for each pacs.study.updated.
	Generation int `json:"generation"`
}
