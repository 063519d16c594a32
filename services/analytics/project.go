// Package analytics projects pacsflow's events, which carry PHI, onto
// their de-identified analytics events (DICOM PS3.15 Annex E, Basic
// Application Level Confidentiality Profile; package deid documents the
// action taken on every field). The projection is a pure function of the
// event and the configuration: a consumer of the pacs.> subjects calls
// Project for each event and publishes the result to the analytics stream
// (events.ProvisionAnalytics).
package analytics

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/pacsflow/pacsflow/pkg/deid"
	"github.com/pacsflow/pacsflow/pkg/events"
)

// ErrUnsupportedType reports an event of a type that has no projection; a
// consumer acknowledges and skips it.
var ErrUnsupportedType = errors.New("no analytics projection for this event type")

// Projector projects events with one de-identification configuration. It
// is safe for concurrent use.
type Projector struct {
	d *deid.Deidentifier
}

// New returns a Projector for a valid configuration.
func New(cfg deid.Config) (*Projector, error) {
	d, err := deid.New(cfg)
	if err != nil {
		return nil, err
	}
	return &Projector{d: d}, nil
}

// Project returns the analytics event of ev: its data de-identified, on
// its analytics subject, with the analytics type. Its ID is derived from
// ev's ID with the key, so a retried projection is de-duplicated by
// JetStream; its ce-subject is the pseudonym of the Study Instance UID;
// its time is ev's time shifted with the patient's dates, or zero when
// dates are removed (the publisher then stamps the time of publication,
// which reveals no more than the message's arrival does). Its Source is
// left empty for the publisher to name the projecting service: ev's source
// names an ingest host. The same ev and configuration give the same event,
// in any process.
//
// Publish the result under a new trace (for example a span started with
// trace.WithNewRoot), not under the trace context of ev's message: a
// propagated trace ID would link the analytics message to the PHI message
// and to the ingest spans, whose attributes name UIDs.
//
// Errors carry no value of the event: ErrUnsupportedType for other event
// types, or a description of data that cannot be projected.
func (p *Projector) Project(ev *events.Received) (*events.Event, error) {
	switch ev.Type {
	case events.TypeInstanceStored:
		var in events.InstanceStored
		if err := json.Unmarshal(ev.Data, &in); err != nil {
			return nil, fmt.Errorf("decode %s data: %w", ev.Type, err)
		}
		return p.instance(ev, &in)
	case events.TypeStudyReceived:
		return p.studyEvent(ev, events.TypeAnalyticsStudyReceived, events.SubjectAnalyticsStudyReceived)
	case events.TypeStudyUpdated:
		return p.studyEvent(ev, events.TypeAnalyticsStudyUpdated, events.SubjectAnalyticsStudyUpdated)
	}
	return nil, fmt.Errorf("%w: %q", ErrUnsupportedType, ev.Type)
}

// errNoStudy reports data without a Study Instance UID, which would leave
// the analytics event without a subject.
var errNoStudy = errors.New("event data lacks a Study Instance UID")

// patientKey selects the patient's date offset: the Patient ID, or, for a
// patient without one, the study, so that patients without an ID do not
// all share an offset. The prefixes keep the two kinds of key apart.
func patientKey(p events.Patient, studyUID string) string {
	if p.ID != "" {
		return "patient-id:" + p.ID
	}
	return "study-instance-uid:" + studyUID
}

func (p *Projector) instance(ev *events.Received, in *events.InstanceStored) (*events.Event, error) {
	if in.Study.StudyInstanceUID == "" {
		return nil, fmt.Errorf("%s: %w", ev.Type, errNoStudy)
	}
	pk := patientKey(in.Patient, in.Study.StudyInstanceUID)
	d := p.d
	out := &events.AnalyticsInstanceStored{
		Patient:                 p.patient(in.Patient),
		Study:                   p.study(pk, in.Study),
		SeriesInstanceUID:       d.PseudonymizeUID(in.SeriesInstanceUID),
		SeriesNumber:            in.SeriesNumber,
		Modality:                deid.CodeString(in.Modality),
		BodyPartExamined:        deid.CodeString(in.BodyPartExamined),
		SOPClassUID:             in.SOPClassUID,
		SOPInstanceUID:          d.PseudonymizeUID(in.SOPInstanceUID),
		InstanceNumber:          in.InstanceNumber,
		NumberOfFrames:          in.NumberOfFrames,
		TransferSyntaxUID:       in.TransferSyntaxUID,
		Object:                  p.object(in.Object),
		ReplacesDigestPseudonym: d.PseudonymizeDigest(in.ReplacesSHA256),
		Association: events.AnalyticsAssociation{
			ID:        d.PseudonymizeID(in.Association.ID),
			CallingAE: d.PseudonymizeID(in.Association.CallingAE),
			CalledAE:  d.PseudonymizeID(in.Association.CalledAE),
		},
		ReceivedAt: d.ShiftTime(pk, in.ReceivedAt),
	}
	return &events.Event{
		ID:          d.EventID(ev.ID),
		Type:        events.TypeAnalyticsInstanceStored,
		Subject:     out.Study.StudyInstanceUID,
		Time:        d.ShiftTime(pk, ev.Time),
		NATSSubject: events.AnalyticsInstanceSubject(out.Modality),
		Data:        out,
	}, nil
}

func (p *Projector) studyEvent(ev *events.Received, typ, root string) (*events.Event, error) {
	var in events.StudyReceived
	if err := json.Unmarshal(ev.Data, &in); err != nil {
		return nil, fmt.Errorf("decode %s data: %w", ev.Type, err)
	}
	if in.Study.StudyInstanceUID == "" {
		return nil, fmt.Errorf("%s: %w", ev.Type, errNoStudy)
	}
	pk := patientKey(in.Patient, in.Study.StudyInstanceUID)
	d := p.d
	out := &events.AnalyticsStudyReceived{
		Patient:         p.patient(in.Patient),
		Study:           p.study(pk, in.Study),
		Modalities:      codeStrings(in.Modalities),
		Series:          make([]events.AnalyticsSeriesManifest, len(in.Series)),
		NumSeries:       in.NumSeries,
		NumInstances:    in.NumInstances,
		Bytes:           in.Bytes,
		CallingAEs:      p.ids(in.CallingAEs),
		CalledAEs:       p.ids(in.CalledAEs),
		Associations:    p.ids(in.Associations),
		FirstReceivedAt: d.ShiftTime(pk, in.FirstReceivedAt),
		LastReceivedAt:  d.ShiftTime(pk, in.LastReceivedAt),
		Trigger:         in.Trigger,
		Generation:      in.Generation,
	}
	for i, s := range in.Series {
		o := events.AnalyticsSeriesManifest{
			SeriesInstanceUID: d.PseudonymizeUID(s.SeriesInstanceUID),
			SeriesNumber:      s.SeriesNumber,
			Modality:          deid.CodeString(s.Modality),
			BodyPartExamined:  deid.CodeString(s.BodyPartExamined),
			NumInstances:      s.NumInstances,
			Bytes:             s.Bytes,
			Instances:         make([]events.AnalyticsInstanceRef, len(s.Instances)),
		}
		for j, r := range s.Instances {
			o.Instances[j] = events.AnalyticsInstanceRef{
				SOPInstanceUID:    d.PseudonymizeUID(r.SOPInstanceUID),
				SOPClassUID:       r.SOPClassUID,
				InstanceNumber:    r.InstanceNumber,
				NumberOfFrames:    r.NumberOfFrames,
				TransferSyntaxUID: r.TransferSyntaxUID,
				Object:            p.object(r.Object),
				ReceivedAt:        d.ShiftTime(pk, r.ReceivedAt),
			}
		}
		out.Series[i] = o
	}
	return &events.Event{
		ID:          d.EventID(ev.ID),
		Type:        typ,
		Subject:     out.Study.StudyInstanceUID,
		Time:        d.ShiftTime(pk, ev.Time),
		NATSSubject: events.AnalyticsStudySubject(root, out.Modalities),
		Data:        out,
	}, nil
}

func (p *Projector) patient(in events.Patient) events.AnalyticsPatient {
	return events.AnalyticsPatient{ID: p.d.PseudonymizeID(in.ID)}
}

func (p *Projector) study(patientKey string, in events.Study) events.AnalyticsStudy {
	return events.AnalyticsStudy{
		StudyInstanceUID:           p.d.PseudonymizeUID(in.StudyInstanceUID),
		AccessionNumber:            p.d.PseudonymizeID(in.AccessionNumber),
		Date:                       p.d.ShiftDate(patientKey, in.Date),
		Time:                       p.d.TimeOfDay(in.Time),
		RequestedProcedurePriority: priority(in.RequestedProcedurePriority),
	}
}

func (p *Projector) object(in events.StoredObject) events.AnalyticsObject {
	return events.AnalyticsObject{Backend: backend(in.Backend), Size: in.Size, DigestPseudonym: p.d.PseudonymizeDigest(in.SHA256)}
}

// ids pseudonymizes each identifier of a list, keeping order and length.
func (p *Projector) ids(in []string) []string {
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = p.d.PseudonymizeID(s)
	}
	return out
}

// codeStrings keeps the valid codes of a list and drops the others.
func codeStrings(in []string) []string {
	out := make([]string, 0, len(in))
	for _, s := range in {
		if c := deid.CodeString(s); c != "" {
			out = append(out, c)
		}
	}
	return out
}

// priority keeps Requested Procedure Priority only when it is one of the
// defined terms of PS3.3 (a code, not text).
func priority(s string) string {
	switch s {
	case "STAT", "HIGH", "ROUTINE", "MEDIUM", "LOW":
		return s
	}
	return ""
}

// backend keeps the storage backend only when it is one pacsflow names:
// it is configuration, and anything else is unexpected text.
func backend(s string) string {
	switch s {
	case events.BackendFS, events.BackendObjectStore:
		return s
	}
	return ""
}
