package synth

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"time"

	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/pacsflow/pacsflow/pkg/dicomwrite"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

// SOP classes of the series.
const (
	crImageStorage = "1.2.840.10008.5.1.4.1.1.1"
	dxImageStorage = "1.2.840.10008.5.1.4.1.1.1.1" // For Presentation
)

// field is the width and height in mm that the radiographs span, whatever their size: about
// that of a chest detector.
const field = 350.0

// derivation is the Derivation Description of every instance.
const derivation = "Synthetic chest phantom rendered by pacsflow synth (model/phantoms.py); not a patient"

// study is what the instances of one study share.
type study struct {
	d                               deriver
	uid, accession, patientID, name string
	sex, birthDate, age, studyID    string
	when                            time.Time
}

func newStudy(seed uint64, i int) study {
	d := deriver{seed, i}
	when := d.studyTime()
	years := 25 + d.intn("age", 65)
	return study{
		d:         d,
		uid:       d.uid("study"),
		accession: "SYN" + d.digits("accession", 12),
		patientID: "SYN" + d.digits("patient id", 10),
		name:      fmt.Sprintf("SYNTH^P%04d", i+1),
		sex:       [...]string{"F", "M"}[d.intn("sex", 2)],
		birthDate: when.AddDate(-years, 0, -d.intn("birthday", 365)).Format("20060102"),
		age:       fmt.Sprintf("%03dY", years),
		studyID:   strconv.Itoa(i + 1),
		when:      when,
	}
}

// series is one series of a study.
type series struct {
	number             int
	modality, sopClass string
	description        string
	uid                string
	when               time.Time
}

func (s study) series(number int, modality, sopClass, description string) series {
	return series{
		number: number, modality: modality, sopClass: sopClass, description: description,
		uid:  s.d.uid(fmt.Sprintf("series %d", number)),
		when: s.when.Add(time.Duration(number-1) * 5 * time.Minute),
	}
}

func (s study) instanceUID(se series, instance int) string {
	return s.d.uid(fmt.Sprintf("instance %d.%d", se.number, instance))
}

// dir is the series' folder relative to the output folder, slash separated.
func (s study) dir(se series) string {
	return path.Join(s.uid, fmt.Sprintf("%d-%s", se.number, se.modality))
}

// common returns the attributes every instance has: SOP Common, Patient, Patient Study,
// General Study, General Series, General Equipment and the parts of General Image and Image
// Pixel that do not depend on the pixels.
func (s study) common(se series, instance int) dicomwrite.DataSet {
	content := se.when.Add(time.Duration(instance) * 10 * time.Second)
	date, clock := content.Format("20060102"), content.Format("150405")
	var ds dicomwrite.DataSet
	// SOP Common
	ds.Text(tag.SOPClassUID, se.sopClass)
	ds.Text(tag.SOPInstanceUID, s.instanceUID(se, instance))
	ds.Text(tag.InstanceCreationDate, date)
	ds.Text(tag.InstanceCreationTime, clock)
	ds.Text(tag.SyntheticData, "YES")
	// Patient, Patient Study
	ds.Text(tag.PatientName, s.name)
	ds.Text(tag.PatientID, s.patientID)
	ds.Text(tag.IssuerOfPatientID, "PACSFLOW SYNTH")
	ds.Text(tag.PatientBirthDate, s.birthDate)
	ds.Text(tag.PatientSex, s.sex)
	ds.Text(tag.PatientAge, s.age)
	// General Study
	ds.Text(tag.StudyInstanceUID, s.uid)
	ds.Text(tag.StudyDate, s.when.Format("20060102"))
	ds.Text(tag.StudyTime, s.when.Format("150405"))
	ds.Text(tag.ReferringPhysicianName)
	ds.Text(tag.StudyID, s.studyID)
	ds.Text(tag.AccessionNumber, s.accession)
	ds.Text(tag.StudyDescription, "SYNTHETIC CHEST PHANTOM")
	// General Series
	ds.Text(tag.Modality, se.modality)
	ds.Text(tag.SeriesInstanceUID, se.uid)
	ds.Integer(tag.SeriesNumber, se.number)
	ds.Text(tag.SeriesDate, se.when.Format("20060102"))
	ds.Text(tag.SeriesTime, se.when.Format("150405"))
	ds.Text(tag.SeriesDescription, se.description)
	ds.Text(tag.BodyPartExamined, "CHEST")
	// General Equipment
	ds.Text(tag.Manufacturer, "pacsflow synth")
	ds.Text(tag.ManufacturerModelName, "pacsflow synth")
	ds.Text(tag.StationName, "SYNTH")
	ds.Text(tag.SoftwareVersions, uid.ImplementationVersionName)
	// General Image
	ds.Integer(tag.InstanceNumber, instance)
	ds.Text(tag.ContentDate, date)
	ds.Text(tag.ContentTime, clock)
	ds.Text(tag.DerivationDescription, derivation)
	ds.Text(tag.BurnedInAnnotation, "NO")
	ds.Text(tag.LossyImageCompression, "00")
	// Image Pixel
	ds.US(tag.SamplesPerPixel, 1)
	ds.US(tag.BitsAllocated, 16)
	return ds
}

// projection returns a CR or DX image of the phantom's rendering img, resized to size.
func (s study) projection(se series, instance int, img []uint16, size int) dicomwrite.DataSet {
	ds := s.common(se, instance)
	spacing := field / float64(size)
	ds.Text(tag.ImageType, "DERIVED", "SECONDARY")
	ds.Text(tag.ViewPosition, "PA")
	ds.Text(tag.PatientOrientation, "L", "F")
	ds.Text(tag.KVP, "120")
	ds.Decimal(tag.ImagerPixelSpacing, spacing, spacing)
	ds.Decimal(tag.PixelSpacing, spacing, spacing)
	ds.US(tag.Rows, uint16(size))
	ds.US(tag.Columns, uint16(size))
	ds.US(tag.BitsStored, 12)
	ds.US(tag.HighBit, 11)
	ds.US(tag.PixelRepresentation, 0)
	ds.Decimal(tag.WindowCenter, 2048)
	ds.Decimal(tag.WindowWidth, 4096)
	px := upsample(img, PhantomSize, size)
	if se.modality == "CR" {
		ds.Text(tag.PhotometricInterpretation, "MONOCHROME2")
		ds.Pixels(px)
		return ds
	}
	// DX Series, DX Anatomy Imaged, DX Image, DX Detector, DX Positioning and Acquisition
	// Context: the attributes of Type 1 and 2 that a CR image does not have, the Type 2 ones
	// empty where a modality would need to know more than a phantom tells.
	ds.Text(tag.PresentationIntentType, "FOR PRESENTATION")
	ds.Text(tag.ImageLaterality, "U")
	ds.Text(tag.PhotometricInterpretation, "MONOCHROME1")
	// The phantom's brightness is attenuation, a logarithm of the beam intensity; stored
	// inverted, lower values mean less intensity.
	ds.Text(tag.PixelIntensityRelationship, "LOG")
	ds.SS(tag.PixelIntensityRelationshipSign, 1)
	ds.Decimal(tag.RescaleIntercept, 0)
	ds.Decimal(tag.RescaleSlope, 1)
	ds.Text(tag.RescaleType, "US")
	ds.Text(tag.PresentationLUTShape, "INVERSE")
	ds.Sequence(tag.AnatomicRegionSequence, dicomwrite.Code("43799004", "SCT", "Chest"))
	ds.Sequence(tag.ViewCodeSequence, dicomwrite.Code("399348003", "SCT", "postero-anterior"))
	ds.Text(tag.PositionerType)
	ds.Text(tag.DetectorType)
	ds.Sequence(tag.AcquisitionContextSequence)
	ds.Pixels(invert(px))
	return ds
}

// ct returns slice k (0-based) of the CT series: Frame of Reference, Image Plane and CT Image.
func (s study) ct(se series, k, n int, width float64, frameOfReference string) dicomwrite.DataSet {
	ds := s.common(se, k+1)
	spacing := ctField / ctSize
	z := float64(-k) * ctSliceSpacing // from the apex towards the feet; float64(-0) is 0, not −0
	ds.Text(tag.ImageType, "DERIVED", "SECONDARY", "AXIAL")
	ds.Text(tag.PatientPosition, "HFS")
	ds.Text(tag.FrameOfReferenceUID, frameOfReference)
	ds.Text(tag.PositionReferenceIndicator)
	ds.Integer(tag.AcquisitionNumber, 1)
	ds.Text(tag.KVP, "120")
	ds.Decimal(tag.SliceThickness, ctSliceSpacing)
	ds.Decimal(tag.ImagePositionPatient, -ctField/2+spacing/2, -ctField/2+spacing/2, z)
	ds.Decimal(tag.ImageOrientationPatient, 1, 0, 0, 0, 1, 0)
	ds.Decimal(tag.SliceLocation, z)
	ds.Decimal(tag.PixelSpacing, spacing, spacing)
	ds.Text(tag.PhotometricInterpretation, "MONOCHROME2")
	ds.US(tag.Rows, ctSize)
	ds.US(tag.Columns, ctSize)
	ds.US(tag.BitsStored, 16)
	ds.US(tag.HighBit, 15)
	ds.US(tag.PixelRepresentation, 1)
	ds.Decimal(tag.WindowCenter, huSoft)
	ds.Decimal(tag.WindowWidth, 400)
	ds.Decimal(tag.RescaleIntercept, ctIntercept)
	ds.Decimal(tag.RescaleSlope, 1)
	ds.Text(tag.RescaleType, "HU")
	ds.Pixels(ctSlice(k, n, width))
	return ds
}

// writeStudy writes study i, whose phantom ph was rendered from spec, and returns its ground
// truth; it adds the files it writes to res.
func writeStudy(dir string, cfg Config, i int, spec PhantomSpec, ph Phantom, res *Result) (Study, error) {
	if len(ph.Images) != cfg.ImagesPerSeries {
		return Study{}, fmt.Errorf("study %d: the phantom has %d renderings, want %d", i+1, len(ph.Images), cfg.ImagesPerSeries)
	}
	s := newStudy(cfg.Seed, i)
	st := Study{
		StudyInstanceUID: s.uid, AccessionNumber: s.accession, PatientID: s.patientID, PatientName: s.name,
		Labels: map[string]bool{}, Findings: ph.Findings, Report: ph.Report, PhantomSeed: spec.Seed,
	}
	if st.Findings == nil {
		st.Findings = map[string]Location{}
	}
	for k, label := range Labels {
		st.Labels[label] = spec.Flags[k]
	}
	write := func(se series, instance int, ds dicomwrite.DataSet) error {
		b, err := ds.Encode()
		if err != nil {
			return fmt.Errorf("study %d, %s image %d: %w", i+1, se.modality, instance, err)
		}
		rel := path.Join(s.dir(se), strconv.Itoa(instance)+".dcm")
		p := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("study %d: %w", i+1, err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return fmt.Errorf("study %d: %w", i+1, err)
		}
		st.Files = append(st.Files, File{Path: rel, Modality: se.modality, SeriesInstanceUID: se.uid, SOPInstanceUID: s.instanceUID(se, instance)})
		res.Instances++
		res.Bytes += int64(len(b))
		return nil
	}
	for _, se := range []series{
		s.series(1, "CR", crImageStorage, "SYNTHETIC CHEST PA (CR)"),
		s.series(2, "DX", dxImageStorage, "SYNTHETIC CHEST PA (DX)"),
	} {
		for k, img := range ph.Images {
			if err := write(se, k+1, s.projection(se, k+1, img, cfg.Size)); err != nil {
				return Study{}, err
			}
		}
	}
	if cfg.CTSlices > 0 {
		se := s.series(3, "CT", uid.CTImageStorage, "SYNTHETIC CHEST AXIAL (CT)")
		frame := s.d.uid("frame of reference")
		width := 0.9 + 0.2*float64(s.d.intn("body width", 1000))/1000
		for k := range cfg.CTSlices {
			if err := write(se, k+1, s.ct(se, k, cfg.CTSlices, width, frame)); err != nil {
				return Study{}, err
			}
		}
	}
	return st, nil
}
