package genimage

import (
	"fmt"

	"github.com/pacsflow/pacsflow/pkg/dicommeta"
)

// SourceOf reads the Source of a Part 10 instance: its UIDs, Modality, patient (Patient's Name,
// ID, Birth Date and Sex), Study Description, and Patient Identity Removed (0012,0062). They come
// from pkg/dicommeta, which reads them robustly from any transfer syntax pacsflow knows and
// decodes their character set, as ingest reads the instance. Errors wrap dicommeta's: the
// instance is malformed, or a UID is missing.
func SourceOf(instance []byte) (*Source, error) {
	in, err := dicommeta.Parse(instance, true)
	if err != nil {
		return nil, fmt.Errorf("read source instance: %w", err)
	}
	return &Source{
		StudyInstanceUID: in.StudyInstanceUID, SeriesInstanceUID: in.SeriesInstanceUID,
		SOPInstanceUID: in.SOPInstanceUID, SOPClassUID: in.SOPClassUID,
		Modality:    in.Modality,
		PatientName: in.PatientName, PatientID: in.PatientID, PatientBirthDate: in.PatientBirthDate, PatientSex: in.PatientSex,
		StudyDescription:       in.StudyDescription,
		PatientIdentityRemoved: in.PatientIdentityRemoved == "YES",
	}, nil
}
