// Package dicomtest builds small DICOM data sets for tests: a few
// identifying attributes and pixel data, encoded in Explicit VR Little
// Endian, as an instance would travel over a DIMSE association.
package dicomtest

import (
	"encoding/binary"
	"fmt"
	"sort"
	"strconv"

	"github.com/pacsflow/pacsflow/pkg/part10"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

// Instance describes a test instance.
type Instance struct {
	SOPClassUID, SOPInstanceUID         string
	StudyInstanceUID, SeriesInstanceUID string
	Modality, PatientID, PatientName    string
	AccessionNumber, StudyDescription   string
	SeriesNumber, InstanceNumber        int
	// Priority is the Requested Procedure Priority (STAT, HIGH, ROUTINE...).
	Priority string
	// PixelBytes is the length of the pixel data (even); its content is
	// derived from the SOP Instance UID so that instances differ.
	PixelBytes int
	// Salt changes the pixel data without changing any attribute, to make
	// a different payload under the same UIDs.
	Salt byte
	// Image, when set, replaces PixelBytes with a real greyscale image.
	Image *Image
}

// Image is the Image Pixel module of a greyscale instance, 16 bits allocated.
type Image struct {
	Rows, Cols  int
	Frames      int // Number of Frames; 0 leaves the attribute out (one frame)
	BitsStored  int
	Signed      bool
	Photometric string // MONOCHROME1 or MONOCHROME2
	// Values are the stored values, frames one after another, rows in order.
	Values []uint16
	// RescaleSlope, RescaleIntercept, WindowCenter and WindowWidth are written as
	// decimal strings when not empty.
	RescaleSlope, RescaleIntercept, WindowCenter, WindowWidth string
}

func (im *Image) elements() []element {
	els := []element{
		{0x00280002, "US", le16(1)},
		str(0x00280004, "CS", im.Photometric),
		{0x00280010, "US", le16(uint16(im.Rows))},
		{0x00280011, "US", le16(uint16(im.Cols))},
		{0x00280100, "US", le16(16)},
		{0x00280101, "US", le16(uint16(im.BitsStored))},
		{0x00280102, "US", le16(uint16(im.BitsStored - 1))},
		{0x00280103, "US", le16(map[bool]uint16{false: 0, true: 1}[im.Signed])},
	}
	if im.Frames > 0 {
		els = append(els, str(0x00280008, "IS", itoa(im.Frames)))
	}
	for _, ds := range []struct {
		tag uint32
		v   string
	}{{0x00281050, im.WindowCenter}, {0x00281051, im.WindowWidth}, {0x00281052, im.RescaleIntercept}, {0x00281053, im.RescaleSlope}} {
		if ds.v != "" {
			els = append(els, str(ds.tag, "DS", ds.v))
		}
	}
	pix := make([]byte, 0, 2*len(im.Values))
	for _, v := range im.Values {
		pix = binary.LittleEndian.AppendUint16(pix, v)
	}
	return append(els, element{0x7FE00010, "OW", pix})
}

type element struct {
	tag uint32
	vr  string
	val []byte
}

// DataSet encodes the instance in Explicit VR Little Endian.
func (in Instance) DataSet() []byte {
	els := []element{
		str(0x00080016, "UI", in.SOPClassUID),
		str(0x00080018, "UI", in.SOPInstanceUID),
		str(0x00080050, "SH", in.AccessionNumber),
		str(0x00080060, "CS", in.Modality),
		str(0x00081030, "LO", in.StudyDescription),
		str(0x00100010, "PN", in.PatientName),
		str(0x00100020, "LO", in.PatientID),
		str(0x0020000D, "UI", in.StudyInstanceUID),
		str(0x0020000E, "UI", in.SeriesInstanceUID),
		str(0x00200011, "IS", itoa(in.SeriesNumber)),
		str(0x00200013, "IS", itoa(in.InstanceNumber)),
		str(0x00400003, "TM", ""), // an empty element, as modalities send
	}
	if in.Priority != "" {
		els = append(els, str(0x00401003, "SH", in.Priority))
	}
	if in.Image != nil {
		els = append(els, in.Image.elements()...)
	} else {
		els = append(els, in.noisePixels()...)
	}
	sort.Slice(els, func(i, j int) bool { return els[i].tag < els[j].tag })
	var b []byte
	for _, e := range els {
		b = binary.LittleEndian.AppendUint16(b, uint16(e.tag>>16))
		b = binary.LittleEndian.AppendUint16(b, uint16(e.tag))
		b = append(b, e.vr...)
		switch e.vr {
		case "OB", "OW", "SQ", "UN", "UT":
			b = append(b, 0, 0)
			b = binary.LittleEndian.AppendUint32(b, uint32(len(e.val)))
		default:
			b = binary.LittleEndian.AppendUint16(b, uint16(len(e.val)))
		}
		b = append(b, e.val...)
	}
	return b
}

// Part10 encodes the instance as a Part 10 file in Explicit VR Little
// Endian, as storage keeps it.
func (in Instance) Part10() []byte {
	b := part10.AppendHeader(nil, &part10.Meta{
		MediaStorageSOPClassUID: in.SOPClassUID, MediaStorageSOPInstanceUID: in.SOPInstanceUID,
		TransferSyntaxUID: uid.ExplicitVRLittleEndian, ImplementationClassUID: uid.ImplementationClassUID,
	})
	return append(b, in.DataSet()...)
}

// noisePixels is a 2-row image of pseudo-random bytes, PixelBytes long.
func (in Instance) noisePixels() []element {
	pix := make([]byte, in.PixelBytes+in.PixelBytes%2)
	seed := uint32(in.Salt)
	for _, c := range in.SOPInstanceUID {
		seed = seed*31 + uint32(c)
	}
	for i := range pix {
		seed = seed*1664525 + 1013904223
		pix[i] = byte(seed >> 24)
	}
	return []element{
		{0x00280010, "US", le16(2)},
		{0x00280011, "US", le16(uint16(max(in.PixelBytes/4, 1)))},
		{0x00280100, "US", le16(16)},
		{0x7FE00010, "OB", pix},
	}
}

func str(tag uint32, vr, v string) element {
	b := []byte(v)
	if len(b)%2 == 1 {
		pad := byte(' ')
		if vr == "UI" {
			pad = 0
		}
		b = append(b, pad)
	}
	return element{tag, vr, b}
}

func le16(v uint16) []byte { return binary.LittleEndian.AppendUint16(nil, v) }

func itoa(n int) string {
	if n == 0 {
		return ""
	}
	return strconv.Itoa(n)
}

// Study returns the instances of a new study of CT images: series x
// perSeries instances with fresh UIDs, each with pixelBytes of pixel data.
func Study(series, perSeries, pixelBytes int) []Instance {
	study := uid.New()
	var out []Instance
	for s := 1; s <= series; s++ {
		seriesUID := fmt.Sprintf("%s.%d", study, s)
		for i := 1; i <= perSeries; i++ {
			out = append(out, Instance{
				SOPClassUID: uid.CTImageStorage, SOPInstanceUID: fmt.Sprintf("%s.%d", seriesUID, i),
				StudyInstanceUID: study, SeriesInstanceUID: seriesUID,
				Modality: "CT", PatientID: "PAT-1", PatientName: "DOE^JANE", AccessionNumber: "ACC-1", StudyDescription: "CT HEAD",
				SeriesNumber: s, InstanceNumber: i, PixelBytes: pixelBytes,
			})
		}
	}
	return out
}
