package synth

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"time"

	"github.com/suyashkumar/dicom/pkg/tag"

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
func (s study) common(se series, instance int) dataSet {
	content := se.when.Add(time.Duration(instance) * 10 * time.Second)
	date, clock := content.Format("20060102"), content.Format("150405")
	var ds dataSet
	// SOP Common
	ds.text(tag.SOPClassUID, se.sopClass)
	ds.text(tag.SOPInstanceUID, s.instanceUID(se, instance))
	ds.text(tag.InstanceCreationDate, date)
	ds.text(tag.InstanceCreationTime, clock)
	ds.text(tag.SyntheticData, "YES")
	// Patient, Patient Study
	ds.text(tag.PatientName, s.name)
	ds.text(tag.PatientID, s.patientID)
	ds.text(tag.IssuerOfPatientID, "PACSFLOW SYNTH")
	ds.text(tag.PatientBirthDate, s.birthDate)
	ds.text(tag.PatientSex, s.sex)
	ds.text(tag.PatientAge, s.age)
	// General Study
	ds.text(tag.StudyInstanceUID, s.uid)
	ds.text(tag.StudyDate, s.when.Format("20060102"))
	ds.text(tag.StudyTime, s.when.Format("150405"))
	ds.text(tag.ReferringPhysicianName)
	ds.text(tag.StudyID, s.studyID)
	ds.text(tag.AccessionNumber, s.accession)
	ds.text(tag.StudyDescription, "SYNTHETIC CHEST PHANTOM")
	// General Series
	ds.text(tag.Modality, se.modality)
	ds.text(tag.SeriesInstanceUID, se.uid)
	ds.integer(tag.SeriesNumber, se.number)
	ds.text(tag.SeriesDate, se.when.Format("20060102"))
	ds.text(tag.SeriesTime, se.when.Format("150405"))
	ds.text(tag.SeriesDescription, se.description)
	ds.text(tag.BodyPartExamined, "CHEST")
	// General Equipment
	ds.text(tag.Manufacturer, "pacsflow synth")
	ds.text(tag.ManufacturerModelName, "pacsflow synth")
	ds.text(tag.StationName, "SYNTH")
	ds.text(tag.SoftwareVersions, uid.ImplementationVersionName)
	// General Image
	ds.integer(tag.InstanceNumber, instance)
	ds.text(tag.ContentDate, date)
	ds.text(tag.ContentTime, clock)
	ds.text(tag.DerivationDescription, derivation)
	ds.text(tag.BurnedInAnnotation, "NO")
	ds.text(tag.LossyImageCompression, "00")
	// Image Pixel
	ds.us(tag.SamplesPerPixel, 1)
	ds.us(tag.BitsAllocated, 16)
	return ds
}

// projection returns a CR or DX image of the phantom's rendering img, resized to size.
func (s study) projection(se series, instance int, img []uint16, size int) dataSet {
	ds := s.common(se, instance)
	spacing := field / float64(size)
	ds.text(tag.ImageType, "DERIVED", "SECONDARY")
	ds.text(tag.ViewPosition, "PA")
	ds.text(tag.PatientOrientation, "L", "F")
	ds.text(tag.KVP, "120")
	ds.decimal(tag.ImagerPixelSpacing, spacing, spacing)
	ds.decimal(tag.PixelSpacing, spacing, spacing)
	ds.us(tag.Rows, uint16(size))
	ds.us(tag.Columns, uint16(size))
	ds.us(tag.BitsStored, 12)
	ds.us(tag.HighBit, 11)
	ds.us(tag.PixelRepresentation, 0)
	ds.decimal(tag.WindowCenter, 2048)
	ds.decimal(tag.WindowWidth, 4096)
	px := upsample(img, PhantomSize, size)
	if se.modality == "CR" {
		ds.text(tag.PhotometricInterpretation, "MONOCHROME2")
		ds.pixels(px)
		return ds
	}
	// DX Series, DX Anatomy Imaged, DX Image, DX Detector, DX Positioning and Acquisition
	// Context: the attributes of Type 1 and 2 that a CR image does not have, the Type 2 ones
	// empty where a modality would need to know more than a phantom tells.
	ds.text(tag.PresentationIntentType, "FOR PRESENTATION")
	ds.text(tag.ImageLaterality, "U")
	ds.text(tag.PhotometricInterpretation, "MONOCHROME1")
	// The phantom's brightness is attenuation, a logarithm of the beam intensity; stored
	// inverted, lower values mean less intensity.
	ds.text(tag.PixelIntensityRelationship, "LOG")
	ds.ss(tag.PixelIntensityRelationshipSign, 1)
	ds.decimal(tag.RescaleIntercept, 0)
	ds.decimal(tag.RescaleSlope, 1)
	ds.text(tag.RescaleType, "US")
	ds.text(tag.PresentationLUTShape, "INVERSE")
	ds.sequence(tag.AnatomicRegionSequence, code("43799004", "SCT", "Chest"))
	ds.sequence(tag.ViewCodeSequence, code("399348003", "SCT", "postero-anterior"))
	ds.text(tag.PositionerType)
	ds.text(tag.DetectorType)
	ds.sequence(tag.AcquisitionContextSequence)
	ds.pixels(invert(px))
	return ds
}

// ct returns slice k (0-based) of the CT series: Frame of Reference, Image Plane and CT Image.
func (s study) ct(se series, k, n int, width float64, frameOfReference string) dataSet {
	ds := s.common(se, k+1)
	spacing := ctField / ctSize
	z := float64(-k) * ctSliceSpacing // from the apex towards the feet; float64(-0) is 0, not −0
	ds.text(tag.ImageType, "DERIVED", "SECONDARY", "AXIAL")
	ds.text(tag.PatientPosition, "HFS")
	ds.text(tag.FrameOfReferenceUID, frameOfReference)
	ds.text(tag.PositionReferenceIndicator)
	ds.integer(tag.AcquisitionNumber, 1)
	ds.text(tag.KVP, "120")
	ds.decimal(tag.SliceThickness, ctSliceSpacing)
	ds.decimal(tag.ImagePositionPatient, -ctField/2+spacing/2, -ctField/2+spacing/2, z)
	ds.decimal(tag.ImageOrientationPatient, 1, 0, 0, 0, 1, 0)
	ds.decimal(tag.SliceLocation, z)
	ds.decimal(tag.PixelSpacing, spacing, spacing)
	ds.text(tag.PhotometricInterpretation, "MONOCHROME2")
	ds.us(tag.Rows, ctSize)
	ds.us(tag.Columns, ctSize)
	ds.us(tag.BitsStored, 16)
	ds.us(tag.HighBit, 15)
	ds.us(tag.PixelRepresentation, 1)
	ds.decimal(tag.WindowCenter, huSoft)
	ds.decimal(tag.WindowWidth, 400)
	ds.decimal(tag.RescaleIntercept, ctIntercept)
	ds.decimal(tag.RescaleSlope, 1)
	ds.text(tag.RescaleType, "HU")
	ds.pixels(ctSlice(k, n, width))
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
	write := func(se series, instance int, ds dataSet) error {
		b, err := ds.encode()
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
