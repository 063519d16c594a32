package events

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The analytics events are the de-identified projection of the events
// above (DICOM PS3.15 Annex E; the decisions per field are in package
// deid). They live on their own subjects, in their own stream, so that a
// subscriber is granted those and never the pacs.> subjects that carry PHI.
// Their types mirror the PHI types minus what the profile removes; a field
// that is kept holds a pseudonym wherever the profile replaces the value.

// Subject roots of the analytics events.
const (
	SubjectAnalyticsInstanceStored = "analytics.instance.stored"
	SubjectAnalyticsStudyReceived  = "analytics.study.received"
	SubjectAnalyticsStudyUpdated   = "analytics.study.updated"
)

// Analytics event types (CloudEvents type attribute), versioned.
const (
	TypeAnalyticsInstanceStored = "org.pacsflow.analytics.instance.stored.v1"
	TypeAnalyticsStudyReceived  = "org.pacsflow.analytics.study.received.v1"
	TypeAnalyticsStudyUpdated   = "org.pacsflow.analytics.study.updated.v1"
)

// AnalyticsStreamName is the default name of the stream of analytics
// events.
const AnalyticsStreamName = "PACSFLOW_ANALYTICS"

// analyticsStreamSubjects are the subjects the analytics stream captures;
// none of them is captured by the PHI stream.
var analyticsStreamSubjects = []string{"analytics.>"}

// AnalyticsInstanceSubject is analytics.instance.stored.<modality>. Unlike
// the PHI subject it names no AE title, which identifies a device.
func AnalyticsInstanceSubject(modality string) string {
	return SubjectAnalyticsInstanceStored + "." + Token(modality)
}

// AnalyticsStudySubject is <root>.<modalities>, the modalities sorted and
// joined with '+' as in StudySubject, e.g. analytics.study.received.CT+SR.
func AnalyticsStudySubject(root string, modalities []string) string {
	mods := make([]string, len(modalities))
	for i, m := range modalities {
		mods[i] = Token(m)
	}
	sort.Strings(mods)
	return root + "." + Token(strings.Join(mods, "+"))
}

// ProvisionAnalytics creates the analytics stream, or updates it to cfg,
// as Provision does for the events stream; cfg.Name defaults to
// AnalyticsStreamName, and cfg.DeadLetters does not apply (a dead letter
// of the projection is a PHI event: it belongs with the PHI stream's). A
// separate stream, rather than more subjects in the PHI one, lets
// JetStream permissions (which name streams) admit analytics consumers to
// it alone, and gives it its own retention.
func ProvisionAnalytics(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.Stream, error) {
	if cfg.Name == "" {
		cfg.Name = AnalyticsStreamName
	}
	cfg = cfg.withDefaults()
	if cfg.Retention == jetstream.WorkQueuePolicy {
		return nil, fmt.Errorf("provision stream %s: work-queue retention allows one consumer per subject; use limits or interest", cfg.Name)
	}
	st, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        cfg.Name,
		Description: "pacsflow de-identified analytics events (DICOM PS3.15 Annex E; CloudEvents 1.0, binary mode)",
		Subjects:    analyticsStreamSubjects,
		Storage:     jetstream.FileStorage,
		Retention:   cfg.Retention,
		Replicas:    cfg.Replicas,
		MaxAge:      cfg.MaxAge,
		MaxBytes:    orUnlimited(cfg.MaxBytes),
		Duplicates:  cfg.Duplicates,
		Discard:     jetstream.DiscardOld,
	})
	if err != nil {
		return nil, fmt.Errorf("provision stream %s: %w", cfg.Name, err)
	}
	return st, nil
}

// AnalyticsPatient is Patient de-identified: only a pseudonym of the
// Patient ID, so that one patient's studies link.
type AnalyticsPatient struct {
	// ID is a keyed pseudonym of the Patient ID; absent when it was.
	ID string `json:"id,omitempty"`
}

// AnalyticsStudy is Study de-identified.
type AnalyticsStudy struct {
	// StudyInstanceUID is a pseudonym UID, also the event's ce-subject.
	StudyInstanceUID string `json:"study_instance_uid"`
	// AccessionNumber is a keyed pseudonym.
	AccessionNumber string `json:"accession_number,omitempty"`
	// Date is the Study Date shifted by the patient's offset, or absent
	// when dates are removed.
	Date string `json:"date,omitempty"`
	// Time is the Study Time when dates are shifted, absent when removed.
	Time                       string `json:"time,omitempty"`
	RequestedProcedurePriority string `json:"requested_procedure_priority,omitempty"`
}

// AnalyticsAssociation is Association de-identified: pseudonyms, and no
// source address.
type AnalyticsAssociation struct {
	ID        string `json:"id"`
	CallingAE string `json:"calling_ae"`
	CalledAE  string `json:"called_ae"`
}

// AnalyticsObject is StoredObject de-identified: no bucket or key, so no
// location of PHI bytes, and instead of the SHA-256 a keyed pseudonym of
// it, named so that nobody takes it for a digest of the file.
type AnalyticsObject struct {
	Backend string `json:"backend,omitempty"`
	Size    int64  `json:"size"`
	// DigestPseudonym is a keyed pseudonym of the object's SHA-256: equal
	// for equal bytes, useless for matching a file one holds.
	DigestPseudonym string `json:"digest_pseudonym"`
}

// AnalyticsInstanceStored is the data of analytics.instance.stored.
type AnalyticsInstanceStored struct {
	Patient           AnalyticsPatient `json:"patient"`
	Study             AnalyticsStudy   `json:"study"`
	SeriesInstanceUID string           `json:"series_instance_uid"`
	SeriesNumber      int              `json:"series_number,omitempty"`
	Modality          string           `json:"modality,omitempty"`
	BodyPartExamined  string           `json:"body_part_examined,omitempty"`
	SOPClassUID       string           `json:"sop_class_uid"`
	SOPInstanceUID    string           `json:"sop_instance_uid"`
	InstanceNumber    int              `json:"instance_number,omitempty"`
	NumberOfFrames    int              `json:"number_of_frames,omitempty"`
	TransferSyntaxUID string           `json:"transfer_syntax_uid"`
	Object            AnalyticsObject  `json:"object"`
	// ReplacesDigestPseudonym is the replaced version's
	// object.digest_pseudonym.
	ReplacesDigestPseudonym string               `json:"replaces_digest_pseudonym,omitempty"`
	Association             AnalyticsAssociation `json:"association"`
	// ReceivedAt is shifted with the patient's dates, or absent.
	ReceivedAt time.Time `json:"received_at,omitzero"`
}

// AnalyticsInstanceRef is InstanceRef de-identified.
type AnalyticsInstanceRef struct {
	SOPInstanceUID    string          `json:"sop_instance_uid"`
	SOPClassUID       string          `json:"sop_class_uid"`
	InstanceNumber    int             `json:"instance_number,omitempty"`
	NumberOfFrames    int             `json:"number_of_frames,omitempty"`
	TransferSyntaxUID string          `json:"transfer_syntax_uid"`
	Object            AnalyticsObject `json:"object"`
	ReceivedAt        time.Time       `json:"received_at,omitzero"`
}

// AnalyticsSeriesManifest is SeriesManifest de-identified: no description.
type AnalyticsSeriesManifest struct {
	SeriesInstanceUID string                 `json:"series_instance_uid"`
	SeriesNumber      int                    `json:"series_number,omitempty"`
	Modality          string                 `json:"modality,omitempty"`
	BodyPartExamined  string                 `json:"body_part_examined,omitempty"`
	NumInstances      int                    `json:"num_instances"`
	Bytes             int64                  `json:"bytes"`
	Instances         []AnalyticsInstanceRef `json:"instances"`
}

// AnalyticsStudyReceived is the data of analytics.study.received and
// analytics.study.updated, with the meaning of StudyReceived.
type AnalyticsStudyReceived struct {
	Patient         AnalyticsPatient          `json:"patient"`
	Study           AnalyticsStudy            `json:"study"`
	Modalities      []string                  `json:"modalities"`
	Series          []AnalyticsSeriesManifest `json:"series"`
	NumSeries       int                       `json:"num_series"`
	NumInstances    int                       `json:"num_instances"`
	Bytes           int64                     `json:"bytes"`
	CallingAEs      []string                  `json:"calling_aes"`
	CalledAEs       []string                  `json:"called_aes"`
	Associations    []string                  `json:"associations"`
	FirstReceivedAt time.Time                 `json:"first_received_at,omitzero"`
	LastReceivedAt  time.Time                 `json:"last_received_at,omitzero"`
	Trigger         string                    `json:"trigger"`
	Generation      int                       `json:"generation"`
}
