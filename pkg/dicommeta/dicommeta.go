// Package dicommeta extracts the metadata the ingest pipeline needs (UIDs
// for the storage key, patient, study and series attributes for events)
// from the beginning of a DICOM instance, without reading its pixel data.
//
// Parse takes a Part 10 prefix: the preamble and file meta information
// (as part10.AppendHeader writes them for a received data set) followed by
// the first bytes of the data set. It reads the top-level elements with
// github.com/suyashkumar/dicom up to the first one past Requested Procedure Priority (0040,1003), which
// is before any pixel data, and tells the caller when the prefix is too short
// to get there.
//
// The parser is only given input that a framing pass of this package has
// checked first (see scanner): the parser allocates declared lengths before
// reading them, ignores lengths in deflated data sets, recurses without
// bound and panics on some malformed input, and none of that may reach a
// service that parses data sets from the network.
package dicommeta

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/pacsflow/pacsflow/pkg/part10"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

// MaxMetadataLen bounds the data set bytes Parse reads, after inflation for
// Deflated Explicit VR Little Endian: the elements up to the end of group
// 0040 must fit in it. Real ones take a few kilobytes, and the ingest
// service buffers at most 4 MiB; the bound keeps a deflated prefix from
// inflating without limit, and the parser's allocations (some 150 bytes per
// element, on top of the values) in proportion.
const MaxMetadataLen = 4 << 20

// maxMetaInfoLen bounds the file meta information, as part10 does.
const maxMetaInfoLen = 64 << 10

var (
	// ErrNeedMore reports a prefix that ends before Parse could read all
	// the elements it needs: call again with a longer one.
	ErrNeedMore = errors.New("dicommeta: prefix too short")
	// ErrMalformed reports input that is not a DICOM Part 10 prefix, or a
	// data set Parse cannot read. The error says what is wrong and where.
	ErrMalformed = errors.New("dicommeta: malformed DICOM")
	// ErrMissingUID reports a data set whose SOP Class, SOP Instance, Study
	// Instance or Series Instance UID is absent or not a valid UID. The
	// error names each one.
	ErrMissingUID = errors.New("dicommeta: missing or invalid UID")
)

// Instance is the metadata of one instance. Strings are valid UTF-8, decoded
// with the data set's Specific Character Set; multi-valued attributes read
// into a string keep their values separated by backslashes. Attributes that
// are absent, empty, or whose value cannot be read as the field's type are
// zero.
type Instance struct {
	SOPClassUID       string `json:"sop_class_uid"`
	SOPInstanceUID    string `json:"sop_instance_uid"`
	StudyInstanceUID  string `json:"study_instance_uid"`
	SeriesInstanceUID string `json:"series_instance_uid"`
	// TransferSyntaxUID comes from the file meta information.
	TransferSyntaxUID string `json:"transfer_syntax_uid"`

	PatientID        string `json:"patient_id,omitempty"`
	PatientName      string `json:"patient_name,omitempty"`
	PatientBirthDate string `json:"patient_birth_date,omitempty"`
	PatientSex       string `json:"patient_sex,omitempty"`
	// PatientIdentityRemoved is (0012,0062): YES when the instance was
	// de-identified, which an image derived from it must say too.
	PatientIdentityRemoved string `json:"patient_identity_removed,omitempty"`
	AccessionNumber        string `json:"accession_number,omitempty"`
	StudyDate              string `json:"study_date,omitempty"`
	StudyTime              string `json:"study_time,omitempty"`
	StudyDescription       string `json:"study_description,omitempty"`
	StudyID                string `json:"study_id,omitempty"`
	ReferringPhysicianName string `json:"referring_physician_name,omitempty"`
	Modality               string `json:"modality,omitempty"`
	BodyPartExamined       string `json:"body_part_examined,omitempty"`
	SeriesDescription      string `json:"series_description,omitempty"`
	SeriesDate             string `json:"series_date,omitempty"`
	SeriesTime             string `json:"series_time,omitempty"`
	Manufacturer           string `json:"manufacturer,omitempty"`
	InstitutionName        string `json:"institution_name,omitempty"`
	StationName            string `json:"station_name,omitempty"`
	// RequestedProcedurePriority is (0040,1003) at the top level or, when
	// absent there, in the first item of the Request Attributes Sequence
	// (0040,0275).
	RequestedProcedurePriority string `json:"requested_procedure_priority,omitempty"`
	PhotometricInterpretation  string `json:"photometric_interpretation,omitempty"`

	ImageType []string `json:"image_type,omitempty"`
	// ConversionType is (0008,0064) of the SC Equipment module: SYN marks a
	// synthetic image.
	ConversionType string `json:"conversion_type,omitempty"`
	// SpecificCharacterSet keeps empty values: an empty first value means
	// the default repertoire before ISO 2022 extensions.
	SpecificCharacterSet []string `json:"specific_character_set,omitempty"`

	SeriesNumber   int `json:"series_number,omitempty"`
	InstanceNumber int `json:"instance_number,omitempty"`
	// NumberOfFrames is 1 for an image (Rows present, or Pixel Data seen)
	// without a positive Number of Frames.
	NumberOfFrames  int `json:"number_of_frames,omitempty"`
	Rows            int `json:"rows,omitempty"`
	Columns         int `json:"columns,omitempty"`
	BitsAllocated   int `json:"bits_allocated,omitempty"`
	SamplesPerPixel int `json:"samples_per_pixel,omitempty"`
}

// Parse reads the metadata of the instance whose Part 10 encoding starts
// with part10Prefix. complete tells whether the prefix is the whole
// instance.
//
// Parse reads the top-level elements of the data set up to the first one
// past (0040,1003) (which includes Pixel Data and Float and Double Float
// Pixel Data), or up to the end of the data set; it never reads the value of
// that element. Its errors wrap:
//   - ErrNeedMore if !complete and the prefix ends before that point (a
//     deflated data set whose stream has ended is complete, whatever
//     complete says);
//   - ErrMalformed if the input is not a Part 10 prefix, its transfer syntax
//     is not one pkg/uid knows, or its data set is malformed up to that
//     point, including when complete and it ends inside an element;
//   - ErrMissingUID if the SOP Class, SOP Instance, Study Instance or Series
//     Instance UID is absent or fails uid.Validate.
//
// Parse allocates in proportion to the data set bytes it reads (at most
// MaxMetadataLen), whatever lengths the input declares: up to some 25 times
// as much, for a data set of nothing but tiny elements. It does not panic,
// and is safe for concurrent use.
func Parse(part10Prefix []byte, complete bool) (*Instance, error) {
	meta, dataSet, err := readMetaInfo(part10Prefix, complete)
	if err != nil {
		return nil, err
	}
	var (
		sc       scan
		elements []*dicom.Element
	)
	if meta.TransferSyntaxUID == uid.DeflatedExplicitVRLittleEndian {
		if sc, err = scanDeflated(dataSet, complete); err != nil {
			return nil, err
		}
		// The parser inflates on its own; it reads just the scanned elements.
		elements, err = decode(meta.TransferSyntaxUID, dataSet, sc.tags)
	} else {
		if sc, err = scanPlain(dataSet, complete, encodingOf(meta.TransferSyntaxUID)); err != nil {
			return nil, err
		}
		elements, err = decode(parserTransferSyntax(meta.TransferSyntaxUID), dataSet[:sc.end], sc.tags)
	}
	if err != nil {
		return nil, err
	}
	in := extract(elements)
	in.TransferSyntaxUID = meta.TransferSyntaxUID
	if in.NumberOfFrames <= 0 && (in.Rows > 0 || sc.stopped && isPixelData(sc.stopTag)) {
		in.NumberOfFrames = 1
	}
	if err := checkUIDs(in); err != nil {
		return nil, err
	}
	return in, nil
}

// readMetaInfo reads the file meta information and returns it with the data
// set bytes after it.
func readMetaInfo(b []byte, complete bool) (part10.Meta, []byte, error) {
	const (
		dicmEnd        = part10.PreambleLen + 4
		groupLengthEnd = dicmEnd + 12 // (0002,0000) UL with its 4-byte value
	)
	if len(b) >= dicmEnd && string(b[part10.PreambleLen:dicmEnd]) != "DICM" {
		return part10.Meta{}, nil, malformedf("no DICM prefix after the %d-byte preamble", part10.PreambleLen)
	}
	if len(b) < groupLengthEnd {
		if complete {
			return part10.Meta{}, nil, malformedf("%d bytes are too short for a Part 10 preamble, DICM prefix and file meta group length", len(b))
		}
		return part10.Meta{}, nil, fmt.Errorf("%w: %d bytes end before the file meta group length", ErrNeedMore, len(b))
	}
	// part10.NewReader tolerates a missing group length, but then the end of
	// the meta information cannot be told from the end of a short prefix.
	gl := b[dicmEnd:groupLengthEnd]
	if !bytes.Equal(gl[:8], []byte{0x02, 0x00, 0x00, 0x00, 'U', 'L', 0x04, 0x00}) {
		return part10.Meta{}, nil, malformedf("file meta information does not start with its group length (0002,0000) UL")
	}
	metaLen := binary.LittleEndian.Uint32(gl[8:])
	if metaLen > maxMetaInfoLen {
		return part10.Meta{}, nil, malformedf("file meta group length %d exceeds %d", metaLen, maxMetaInfoLen)
	}
	end := groupLengthEnd + int(metaLen)
	if len(b) < end {
		if complete {
			return part10.Meta{}, nil, malformedf("file meta information of %d bytes ends after the %d-byte input", metaLen, len(b))
		}
		return part10.Meta{}, nil, fmt.Errorf("%w: the prefix ends inside the file meta information", ErrNeedMore)
	}
	meta, _, err := part10.ParseHeader(b[:end])
	if err != nil {
		return part10.Meta{}, nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if !uid.IsKnownTransferSyntax(meta.TransferSyntaxUID) {
		return part10.Meta{}, nil, malformedf("transfer syntax %q is not one whose encoding is known", meta.TransferSyntaxUID)
	}
	return meta, b[end:], nil
}

// encoding is how a transfer syntax that is not deflated encodes the data
// set's elements.
type encoding struct {
	bo       binary.ByteOrder
	implicit bool
}

func encodingOf(ts string) encoding {
	switch ts {
	case uid.ImplicitVRLittleEndian:
		return encoding{binary.LittleEndian, true}
	case uid.ExplicitVRBigEndian:
		return encoding{binary.BigEndian, false}
	}
	// Encapsulated transfer syntaxes encode the data set in Explicit VR
	// Little Endian, PS3.5 §A.4.
	return encoding{binary.LittleEndian, false}
}

// parserTransferSyntax is the transfer syntax the parser is told. Its own
// registry lacks recent encapsulated syntaxes, and it panics on the nil byte
// order it derives for them; since the elements before pixel data are
// Explicit VR Little Endian in all of them, it is told that.
func parserTransferSyntax(ts string) string {
	if uid.IsNativeTransferSyntax(ts) {
		return ts
	}
	return uid.ExplicitVRLittleEndian
}

// scanPlain scans a data set that is not deflated.
func scanPlain(dataSet []byte, complete bool, enc encoding) (scan, error) {
	capped := len(dataSet) > MaxMetadataLen
	if capped {
		dataSet = dataSet[:MaxMetadataLen]
	}
	s := scanner{b: dataSet, complete: complete && !capped, bo: enc.bo, implicit: enc.implicit}
	res, err := s.run()
	if capped && errors.Is(err, ErrNeedMore) {
		return scan{}, malformedf("the data set does not reach past (0040,1003) within its first %d bytes", MaxMetadataLen)
	}
	return res, err
}

// scanDeflated inflates a deflated data set as far as the scan needs,
// doubling what it inflates each time, up to MaxMetadataLen.
func scanDeflated(compressed []byte, complete bool) (scan, error) {
	zr := flate.NewReader(bytes.NewReader(compressed))
	var (
		plain []byte
		rerr  error
	)
	for want := 64 << 10; ; want = min(2*want, MaxMetadataLen) {
		if cap(plain) < want {
			plain = append(make([]byte, 0, want), plain...)
		}
		for len(plain) < want && rerr == nil {
			var n int
			n, rerr = zr.Read(plain[len(plain):want])
			plain = plain[:len(plain)+n]
		}
		// The stream ending (io.EOF) ends the data set, whatever complete says.
		s := scanner{b: plain, complete: rerr == io.EOF, bo: binary.LittleEndian}
		res, err := s.run()
		if !errors.Is(err, ErrNeedMore) {
			return res, err
		}
		switch {
		case rerr == io.ErrUnexpectedEOF && complete:
			return scan{}, malformedf("deflated data set is truncated after %d bytes: %v", len(plain), err)
		case rerr == io.ErrUnexpectedEOF:
			return scan{}, err // a prefix of the stream
		case rerr != nil:
			return scan{}, malformedf("inflating the data set after %d bytes: %v", len(plain), rerr)
		case len(plain) == MaxMetadataLen:
			return scan{}, malformedf("the data set does not reach past (0040,1003) within its first %d inflated bytes", MaxMetadataLen)
		}
	}
}

// parserOptions skip pixel data nested in sequences (an icon image, say),
// whose reading the parser sizes from Rows and Columns rather than from the
// value length; and let unknown character sets fall back to UTF-8 instead
// of failing.
var parserOptions = []dicom.ParseOption{dicom.SkipPixelData(), dicom.AllowUnknownSpecificCharacterSet()}

// parserHeaders are the file meta information the parser is given, one per
// transfer syntax it is told. The parser then never reads the meta
// information of the input, which the scanner does not check.
var parserHeaders = func() map[string][]byte {
	m := make(map[string][]byte)
	for _, ts := range []string{uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian, uid.ExplicitVRBigEndian, uid.DeflatedExplicitVRLittleEndian} {
		m[ts] = part10.AppendHeader(nil, &part10.Meta{
			TransferSyntaxUID:      ts,
			ImplementationClassUID: uid.ImplementationClassUID,
		})
	}
	return m
}()

// decode runs the parser over dataSet, encoded in transfer syntax ts, and
// returns the top-level elements the scan found, which it reads one by one.
func decode(ts string, dataSet []byte, tags []tag.Tag) (elements []*dicom.Element, err error) {
	defer func() {
		// The scan keeps the parser from the panics it is known for; this
		// is for the ones it is not known for yet.
		if r := recover(); r != nil {
			elements, err = nil, malformedf("the DICOM parser panicked: %v", r)
		}
	}()
	hdr := parserHeaders[ts]
	in := io.MultiReader(bytes.NewReader(hdr), bytes.NewReader(dataSet))
	// For a non-deflated data set the length also stops the parser at the
	// end of the scanned elements; once inflating, the parser ignores it.
	p, err := dicom.NewParser(in, int64(len(hdr)+len(dataSet)), nil, parserOptions...)
	if err != nil {
		return nil, malformedf("parser refused the file meta information: %v", err)
	}
	elements = make([]*dicom.Element, 0, len(tags))
	for _, t := range tags {
		e, err := p.Next()
		if err != nil {
			return nil, fmt.Errorf("%w: reading %v: %w", ErrMalformed, t, err)
		}
		if e.Tag != t {
			return nil, malformedf("the parser read %v where the data set has %v", e.Tag, t)
		}
		elements = append(elements, e)
	}
	return elements, nil
}

// extract fills an Instance from the top-level elements.
func extract(elements []*dicom.Element) *Instance {
	in := &Instance{}
	var requestAttributes *dicom.Element
	for _, e := range elements {
		switch e.Tag {
		case tag.SOPClassUID:
			in.SOPClassUID = text(e)
		case tag.SOPInstanceUID:
			in.SOPInstanceUID = text(e)
		case tag.StudyInstanceUID:
			in.StudyInstanceUID = text(e)
		case tag.SeriesInstanceUID:
			in.SeriesInstanceUID = text(e)
		case tag.PatientID:
			in.PatientID = text(e)
		case tag.PatientName:
			in.PatientName = text(e)
		case tag.PatientBirthDate:
			in.PatientBirthDate = text(e)
		case tag.PatientSex:
			in.PatientSex = text(e)
		case tag.PatientIdentityRemoved:
			in.PatientIdentityRemoved = text(e)
		case tag.AccessionNumber:
			in.AccessionNumber = text(e)
		case tag.StudyDate:
			in.StudyDate = text(e)
		case tag.StudyTime:
			in.StudyTime = text(e)
		case tag.StudyDescription:
			in.StudyDescription = text(e)
		case tag.StudyID:
			in.StudyID = text(e)
		case tag.ReferringPhysicianName:
			in.ReferringPhysicianName = text(e)
		case tag.Modality:
			in.Modality = text(e)
		case tag.BodyPartExamined:
			in.BodyPartExamined = text(e)
		case tag.SeriesDescription:
			in.SeriesDescription = text(e)
		case tag.SeriesDate:
			in.SeriesDate = text(e)
		case tag.SeriesTime:
			in.SeriesTime = text(e)
		case tag.Manufacturer:
			in.Manufacturer = text(e)
		case tag.InstitutionName:
			in.InstitutionName = text(e)
		case tag.StationName:
			in.StationName = text(e)
		case tag.PhotometricInterpretation:
			in.PhotometricInterpretation = text(e)
		case tag.RequestedProcedurePriority:
			in.RequestedProcedurePriority = text(e)
		case tag.RequestAttributesSequence:
			requestAttributes = e
		case tag.ImageType:
			in.ImageType = texts(e)
		case tag.ConversionType:
			in.ConversionType = text(e)
		case tag.SpecificCharacterSet:
			in.SpecificCharacterSet = texts(e)
		case tag.SeriesNumber:
			in.SeriesNumber = integer(e)
		case tag.InstanceNumber:
			in.InstanceNumber = integer(e)
		case tag.NumberOfFrames:
			in.NumberOfFrames = integer(e)
		case tag.Rows:
			in.Rows = integer(e)
		case tag.Columns:
			in.Columns = integer(e)
		case tag.BitsAllocated:
			in.BitsAllocated = integer(e)
		case tag.SamplesPerPixel:
			in.SamplesPerPixel = integer(e)
		}
	}
	if in.RequestedProcedurePriority == "" && requestAttributes != nil {
		in.RequestedProcedurePriority = firstItemText(requestAttributes, tag.RequestedProcedurePriority)
	}
	return in
}

// text is the value of a string element, values joined by backslashes,
// without the padding the parser leaves on an all-space value.
func text(e *dicom.Element) string {
	if e.Value.ValueType() != dicom.Strings {
		return ""
	}
	return clean(strings.Join(e.Value.GetValue().([]string), `\`))
}

// texts are the values of a string element; nil when it is empty.
func texts(e *dicom.Element) []string {
	if text(e) == "" {
		return nil
	}
	vs := e.Value.GetValue().([]string)
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = clean(v)
	}
	return out
}

// clean trims DICOM padding and makes the string valid UTF-8: with an
// unknown character set the parser passes the bytes through undecoded.
func clean(s string) string {
	return strings.ToValidUTF8(strings.Trim(s, " \x00"), "\uFFFD")
}

// integer is the first value of a US, SS, UL, SL or IS element, 0 if none.
func integer(e *dicom.Element) int {
	switch e.Value.ValueType() {
	case dicom.Ints:
		if vs := e.Value.GetValue().([]int); len(vs) > 0 {
			return vs[0]
		}
	case dicom.Strings:
		if vs := e.Value.GetValue().([]string); len(vs) > 0 {
			n, err := strconv.Atoi(strings.TrimSpace(vs[0]))
			if err == nil {
				return n
			}
		}
	}
	return 0
}

// firstItemText is the string value of t in the first item of sequence seq.
func firstItemText(seq *dicom.Element, t tag.Tag) string {
	if seq.Value.ValueType() != dicom.Sequences {
		return ""
	}
	items := seq.Value.GetValue().([]*dicom.SequenceItemValue)
	if len(items) == 0 {
		return ""
	}
	for _, e := range items[0].GetValue().([]*dicom.Element) {
		if e.Tag == t {
			return text(e)
		}
	}
	return ""
}

func isPixelData(t tag.Tag) bool {
	return t == tag.PixelData || t == tag.FloatPixelData || t == tag.DoubleFloatPixelData
}

// checkUIDs checks the UIDs the storage key and the C-STORE response depend on.
func checkUIDs(in *Instance) error {
	var problems []string
	for _, u := range []struct {
		name  string
		tag   tag.Tag
		value string
	}{
		{"SOP Class UID", tag.SOPClassUID, in.SOPClassUID},
		{"SOP Instance UID", tag.SOPInstanceUID, in.SOPInstanceUID},
		{"Study Instance UID", tag.StudyInstanceUID, in.StudyInstanceUID},
		{"Series Instance UID", tag.SeriesInstanceUID, in.SeriesInstanceUID},
	} {
		switch err := uid.Validate(u.value); {
		case u.value == "":
			problems = append(problems, fmt.Sprintf("%s %v is missing", u.name, u.tag))
		case err != nil:
			problems = append(problems, fmt.Sprintf("%s %v: %v", u.name, u.tag, err))
		}
	}
	if problems != nil {
		return fmt.Errorf("%w: %s", ErrMissingUID, strings.Join(problems, "; "))
	}
	return nil
}

func malformedf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// Synthetic says why the instance is a synthetic image (made by a model or
// a program, not acquired from a patient), or "" when nothing says so:
// Conversion Type SYN (PS3.3 C.8.6.1, "Synthetic Image"), or SYNTHETIC among
// the values of Image Type, as pacsflow's generate service writes. Synthetic
// Data (0008,001C) alone does not count: test phantoms (pacsflow synth) are
// synthetic data meant to pass through the pipeline like acquired images.
func (in *Instance) Synthetic() string {
	if strings.EqualFold(strings.TrimSpace(in.ConversionType), "SYN") {
		return "Conversion Type SYN"
	}
	for _, v := range in.ImageType {
		if strings.EqualFold(strings.TrimSpace(v), "SYNTHETIC") {
			return "Image Type SYNTHETIC"
		}
	}
	return ""
}
