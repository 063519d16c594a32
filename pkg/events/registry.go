package events

import "reflect"

// Definition describes one event type of the contract.
type Definition struct {
	// Type is the CloudEvents type, versioned.
	Type string
	// Subject is the subject pattern the events are published on.
	Subject string
	// Data is the Go type of the event's data.
	Data reflect.Type
	// Description says what the event means, for the schema and the docs.
	Description string
}

// Definitions lists every event type of the contract. The JSON Schemas in
// schemas/ are generated from it, and tests hold every emitted event to
// them.
func Definitions() []Definition {
	return []Definition{
		{TypeInstanceStored, SubjectInstanceStored + ".<modality>.<called AE>", reflect.TypeFor[InstanceStored](),
			"An instance is in storage and its event is acknowledged by JetStream; published once per stored version."},
		{TypeStudyReceived, SubjectStudyReceived + ".<modalities>.<called AE>", reflect.TypeFor[StudyReceived](),
			"A study has arrived: its associations ended and nothing came for the quiet period, or the maximum wait passed."},
		{TypeStudyUpdated, SubjectStudyUpdated + ".<modalities>.<called AE>", reflect.TypeFor[StudyReceived](),
			"Instances came after the study was reported: series lists only those; the totals count the whole study."},
		{TypeAIFindings, SubjectAIFindings + ".<modalities>.<called AE>", reflect.TypeFor[AIFindings](),
			"What the model found in a study: per label, the probability and where, in the image with the most probable finding. Not reviewed by a radiologist."},
		{TypeAIReportDraft, SubjectAIReportDraft + ".<modalities>.<called AE>", reflect.TypeFor[AIReportDraft](),
			"A machine-generated draft report of a study, with the structured findings it comes from. Never a signed report."},
		{TypeAITriage, SubjectAITriage + ".<level>.<modalities>.<called AE>", reflect.TypeFor[AITriage](),
			"How urgently a radiologist should read a study (STAT, URGENT, ROUTINE), from the model's findings and the DICOM priority, with the reason."},
		{TypeAugmentationRequested, SubjectAugmentationRequested + ".<task>", reflect.TypeFor[AugmentationRequested](),
			"A request for generated images (synthesize, restore, convert) derived from a study: from pacsflow generate request, the HTTP endpoint or a policy rule."},
		{TypeAugmentationGenerated, SubjectAugmentationGenerated + ".<task>", reflect.TypeFor[AugmentationGenerated](),
			"Generated images stored as new DICOM instances of a synthetic study, marked synthetic in their attributes. Never clinical images: never triaged, never on a worklist."},
		{TypeWorklistUpdated, SubjectWorklistUpdated + ".<change>.<level>", reflect.TypeFor[WorklistUpdated](),
			"A study's entry on the radiology worklist changed: listed, updated, given a model result, or given a reading status. Names the study and its place, never the patient."},
		{TypeAnalyticsInstanceStored, SubjectAnalyticsInstanceStored + ".<modality>", reflect.TypeFor[AnalyticsInstanceStored](),
			"The de-identified projection (DICOM PS3.15 Annex E) of an instance stored event, in the analytics stream."},
		{TypeAnalyticsStudyReceived, SubjectAnalyticsStudyReceived + ".<modalities>", reflect.TypeFor[AnalyticsStudyReceived](),
			"The de-identified projection (DICOM PS3.15 Annex E) of a study received event, in the analytics stream."},
		{TypeAnalyticsStudyUpdated, SubjectAnalyticsStudyUpdated + ".<modalities>", reflect.TypeFor[AnalyticsStudyReceived](),
			"The de-identified projection (DICOM PS3.15 Annex E) of a study updated event, in the analytics stream."},
	}
}
