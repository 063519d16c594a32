package genimage

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/pacsflow/pacsflow/pkg/dicommeta"
	"github.com/pacsflow/pacsflow/pkg/part10"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

// SourceOf reads the Source of a Part 10 instance. The attributes come from pkg/dicommeta,
// which reads them robustly from any transfer syntax pacsflow knows and decodes their character
// set; Patient Identity Removed, which it does not read, from the instance's top-level elements
// (see IsSynthetic). Errors wrap dicommeta's: the instance is malformed, or a UID is missing.
func SourceOf(instance []byte) (*Source, error) {
	in, err := dicommeta.Parse(instance, true)
	if err != nil {
		return nil, fmt.Errorf("read source instance: %w", err)
	}
	vals, err := topLevel(instance, func(t tag.Tag) bool { return t == tag.PatientIdentityRemoved })
	if err != nil {
		return nil, fmt.Errorf("read source instance: %w", err)
	}
	return &Source{
		StudyInstanceUID: in.StudyInstanceUID, SeriesInstanceUID: in.SeriesInstanceUID,
		SOPInstanceUID: in.SOPInstanceUID, SOPClassUID: in.SOPClassUID,
		Modality:    in.Modality,
		PatientName: in.PatientName, PatientID: in.PatientID, PatientBirthDate: in.PatientBirthDate, PatientSex: in.PatientSex,
		StudyDescription:       in.StudyDescription,
		PatientIdentityRemoved: vals[tag.PatientIdentityRemoved] == "YES",
	}, nil
}

// IsSynthetic reports whether the instance is one Write made, and why: it carries the private
// block, or Image Comments that start as Write's do, or Conversion Type SYN with Secondary
// Capture Device Manufacturer "pacsflow" (see the package doc). Synthetic Data YES alone does
// not count: pkg/synth's phantoms have it too.
//
// Every marker lies before group 0040, so instance may also be a prefix of an instance that
// reaches that group, such as the one ingest buffers for pkg/dicommeta. IsSynthetic reads only
// the element headers and the few values it needs, checking every length against the input: it
// is safe on input from the network. Its error says where an instance is malformed.
func IsSynthetic(instance []byte) (bool, string, error) {
	vals, err := topLevel(instance, func(t tag.Tag) bool {
		return t == tag.ImageComments || t == tag.ConversionType || t == tag.SecondaryCaptureDeviceManufacturer ||
			t.Group == PrivateGroup && t.Element >= 0x10 && t.Element <= 0xff
	})
	if err != nil {
		return false, "", fmt.Errorf("look for synthetic markers: %w", err)
	}
	for el := uint16(0x10); el <= 0xff; el++ {
		t := tag.Tag{Group: PrivateGroup, Element: el}
		if vals[t] == PrivateCreator {
			return true, fmt.Sprintf("private block %q at %v", PrivateCreator, t), nil
		}
	}
	if c := vals[tag.ImageComments]; strings.HasPrefix(c, commentPrefix) {
		return true, fmt.Sprintf("Image Comments %q", c), nil
	}
	if vals[tag.ConversionType] == conversionType && vals[tag.SecondaryCaptureDeviceManufacturer] == manufacturer {
		return true, fmt.Sprintf("Conversion Type %s (synthetic image) by Secondary Capture Device Manufacturer %q", conversionType, manufacturer), nil
	}
	return false, "", nil
}

// Bounds of what topLevel reads.
const (
	// stopGroup is the group at whose first element topLevel stops.
	stopGroup = 0x0040
	// maxInflated bounds what is inflated of a deflated data set, as pkg/dicommeta does: the
	// elements before group 0040 take a few kilobytes.
	maxInflated = dicommeta.MaxMetadataLen
	// maxDepth bounds the nesting of sequences; real data sets nest a handful of levels.
	maxDepth = 64
)

// Item and delimiter tags, PS3.5 §7.5.
var (
	itemTag          = tag.Tag{Group: 0xfffe, Element: 0xe000}
	itemDelimTag     = tag.Tag{Group: 0xfffe, Element: 0xe00d}
	sequenceDelimTag = tag.Tag{Group: 0xfffe, Element: 0xe0dd}
)

const undefinedLength = 0xffffffff

// topLevel returns the values, as text without padding, of the top-level elements before group
// 0040 for which want is true, from a Part 10 instance or a prefix of one that reaches group
// 0040. It frames every element it passes (sequences of undefined length included) and checks
// each length against the input, so malformed input gives an error, never a panic or an
// allocation of a declared length.
func topLevel(instance []byte, want func(tag.Tag) bool) (map[tag.Tag]string, error) {
	meta, offset, err := part10.ParseHeader(instance)
	if err != nil {
		return nil, fmt.Errorf("read file meta information: %w", err)
	}
	w := walker{b: instance[offset:], bo: binary.LittleEndian}
	switch ts := meta.TransferSyntaxUID; {
	case ts == uid.ImplicitVRLittleEndian:
		w.implicit = true
	case ts == uid.ExplicitVRBigEndian:
		w.bo = binary.BigEndian
	case ts == uid.DeflatedExplicitVRLittleEndian:
		// A prefix of the stream ends without its final block: keep what inflated.
		w.b, err = io.ReadAll(io.LimitReader(flate.NewReader(bytes.NewReader(w.b)), maxInflated))
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("inflate the data set: %w", err)
		}
	case !uid.IsKnownTransferSyntax(ts):
		return nil, fmt.Errorf("transfer syntax %q is not one whose encoding is known", ts)
	}
	// Encapsulated transfer syntaxes encode the data set in Explicit VR Little Endian (PS3.5
	// §A.4), the walker's default.
	out := map[tag.Tag]string{}
	for pos := 0; pos < len(w.b); {
		if len(w.b)-pos < 4 {
			return nil, fmt.Errorf("the data set ends inside the tag at offset %d", pos)
		}
		if w.tagAt(pos).Group >= stopGroup {
			break
		}
		h, err := w.header(pos, w.implicit, w.bo)
		if err != nil {
			return nil, err
		}
		end, err := w.skip(h, w.implicit, w.bo, 0)
		if err != nil {
			return nil, err
		}
		if want(h.tag) && h.length != undefinedLength {
			out[h.tag] = strings.Trim(string(w.b[h.value:end]), " \x00")
		}
		pos = end
	}
	return out, nil
}

// walker frames the elements of a decoded data set.
type walker struct {
	b        []byte
	bo       binary.ByteOrder
	implicit bool
}

// elementHeader is an element's tag, VR ("" in implicit VR), length and where its value starts.
type elementHeader struct {
	tag    tag.Tag
	vr     string
	length uint32
	value  int
}

func (w *walker) tagAt(pos int) tag.Tag {
	return tag.Tag{Group: w.bo.Uint16(w.b[pos:]), Element: w.bo.Uint16(w.b[pos+2:])}
}

// header reads the header at pos, in the encoding given: items and delimiters have a tag and a
// 32-bit length whatever the encoding; explicit VR headers have a 16-bit length, or 2 reserved
// bytes and a 32-bit one for the long VRs (PS3.5 §7.1).
func (w *walker) header(pos int, implicit bool, bo binary.ByteOrder) (elementHeader, error) {
	need := func(n int) error {
		if len(w.b)-pos < n {
			return fmt.Errorf("the data set ends inside the header at offset %d", pos)
		}
		return nil
	}
	if err := need(8); err != nil {
		return elementHeader{}, err
	}
	h := elementHeader{tag: tag.Tag{Group: bo.Uint16(w.b[pos:]), Element: bo.Uint16(w.b[pos+2:])}}
	if implicit || h.tag.Group == 0xfffe {
		h.length, h.value = bo.Uint32(w.b[pos+4:]), pos+8
		return h, nil
	}
	h.vr = string(w.b[pos+4 : pos+6])
	switch h.vr {
	case "OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV":
		if err := need(12); err != nil {
			return elementHeader{}, err
		}
		h.length, h.value = bo.Uint32(w.b[pos+8:]), pos+12
	default:
		h.length, h.value = uint32(bo.Uint16(w.b[pos+6:])), pos+8
	}
	return h, nil
}

// skip returns where the element h ends. A value of undefined length is a sequence of items
// (PS3.5 §7.5.2; encapsulated pixel data, whose fragments are items too, is past group 0040),
// encoded as the data set is except in UN, where it is Implicit VR Little Endian (PS3.5 §6.2.2).
func (w *walker) skip(h elementHeader, implicit bool, bo binary.ByteOrder, depth int) (int, error) {
	if h.length != undefinedLength {
		if uint64(h.length) > uint64(len(w.b)-h.value) {
			return 0, fmt.Errorf("element %v of %d bytes at offset %d ends after the data set's %d bytes", h.tag, h.length, h.value, len(w.b))
		}
		return h.value + int(h.length), nil
	}
	if depth == maxDepth {
		return 0, fmt.Errorf("sequence %v at offset %d nests deeper than %d", h.tag, h.value, maxDepth)
	}
	if h.vr == "UN" {
		implicit, bo = true, binary.LittleEndian
	}
	for pos := h.value; ; {
		item, err := w.header(pos, true, bo)
		if err != nil {
			return 0, err
		}
		switch {
		case item.tag == sequenceDelimTag:
			return item.value, nil
		case item.tag != itemTag:
			return 0, fmt.Errorf("%v at offset %d in sequence %v, want an item", item.tag, pos, h.tag)
		case item.length != undefinedLength:
			if pos, err = w.skip(item, implicit, bo, depth+1); err != nil {
				return 0, err
			}
			continue
		}
		// An item of undefined length: its elements up to the item delimiter.
		for pos = item.value; ; {
			e, err := w.header(pos, implicit, bo)
			if err != nil {
				return 0, err
			}
			if e.tag == itemDelimTag {
				pos = e.value
				break
			}
			if pos, err = w.skip(e, implicit, bo, depth+1); err != nil {
				return 0, err
			}
		}
	}
}
