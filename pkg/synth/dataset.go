package synth

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/pacsflow/pacsflow/pkg/part10"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

// element is one top-level data element, its value encoded and padded to even length.
type element struct {
	tag   tag.Tag
	vr    string
	value []byte
}

// dataSet collects the elements of one instance. The VR of each element comes from the DICOM
// dictionary of github.com/suyashkumar/dicom, so that it cannot disagree with what readers
// expect; every tag here is a constant, so a tag missing from the dictionary is a bug.
type dataSet []element

func vrOf(t tag.Tag) string { return tag.MustFind(t).VRs[0] }

// text adds a string element; several values are joined by backslashes. UIs are padded with a
// NUL and other string VRs with a space, as PS3.5 §6.2 says.
func (d *dataSet) text(t tag.Tag, values ...string) {
	vr := vrOf(t)
	v := []byte(strings.Join(values, `\`))
	if len(v)%2 == 1 {
		if vr == "UI" {
			v = append(v, 0)
		} else {
			v = append(v, ' ')
		}
	}
	*d = append(*d, element{t, vr, v})
}

// decimal adds a DS element from numbers, each written in at most the 16 characters a DS
// value may have.
func (d *dataSet) decimal(t tag.Tag, values ...float64) {
	s := make([]string, len(values))
	for i, v := range values {
		s[i] = strconv.FormatFloat(v, 'g', 10, 64)
	}
	d.text(t, s...)
}

// integer adds an IS element.
func (d *dataSet) integer(t tag.Tag, v int) { d.text(t, strconv.Itoa(v)) }

// us adds a US element.
func (d *dataSet) us(t tag.Tag, v uint16) {
	*d = append(*d, element{t, vrOf(t), binary.LittleEndian.AppendUint16(nil, v)})
}

// ss adds an SS element.
func (d *dataSet) ss(t tag.Tag, v int16) {
	*d = append(*d, element{t, vrOf(t), binary.LittleEndian.AppendUint16(nil, uint16(v))})
}

// sequence adds a sequence of the items, each encoded with defined lengths. Without items it
// is empty, as a Type 2 sequence is sent when there is nothing to put in it.
func (d *dataSet) sequence(t tag.Tag, items ...dataSet) {
	var v []byte
	for _, item := range items {
		body := appendElements(nil, item)
		v = binary.LittleEndian.AppendUint16(v, tag.Item.Group)
		v = binary.LittleEndian.AppendUint16(v, tag.Item.Element)
		v = binary.LittleEndian.AppendUint32(v, uint32(len(body)))
		v = append(v, body...)
	}
	*d = append(*d, element{t, vrOf(t), v})
}

// code returns a Code Sequence Macro item (PS3.3 Table 8.8-1).
func code(value, scheme, meaning string) dataSet {
	var item dataSet
	item.text(tag.CodeValue, value)
	item.text(tag.CodingSchemeDesignator, scheme)
	item.text(tag.CodeMeaning, meaning)
	return item
}

// pixels adds native 16-bit Pixel Data.
func (d *dataSet) pixels(values []uint16) {
	b := make([]byte, 0, 2*len(values))
	for _, v := range values {
		b = binary.LittleEndian.AppendUint16(b, v)
	}
	*d = append(*d, element{tag.PixelData, "OW", b})
}

// longVR reports the VRs with a reserved field and a 32-bit length, PS3.5 §7.1.2.
func longVR(vr string) bool {
	switch vr {
	case "OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV":
		return true
	}
	return false
}

// encode returns the Part 10 file of the data set in Explicit VR Little Endian, with the file
// meta information that pacsflow writes (part10.AppendHeader). The data set must hold the SOP
// Class and SOP Instance UIDs, which the meta information repeats.
func (d dataSet) encode() ([]byte, error) {
	var meta part10.Meta
	size := 0
	for _, e := range d {
		switch e.tag {
		case tag.SOPClassUID:
			meta.MediaStorageSOPClassUID = strings.TrimRight(string(e.value), "\x00")
		case tag.SOPInstanceUID:
			meta.MediaStorageSOPInstanceUID = strings.TrimRight(string(e.value), "\x00")
		}
		size += 12 + len(e.value)
	}
	if meta.MediaStorageSOPClassUID == "" || meta.MediaStorageSOPInstanceUID == "" {
		return nil, fmt.Errorf("data set lacks the SOP Class or SOP Instance UID")
	}
	if err := d.check(); err != nil {
		return nil, err
	}
	meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
	meta.ImplementationClassUID = uid.ImplementationClassUID
	meta.ImplementationVersionName = uid.ImplementationVersionName
	b := make([]byte, 0, part10.PreambleLen+512+size)
	return appendElements(part10.AppendHeader(b, &meta), d), nil
}

// check reports an element that appears twice or is too long for its VR's length field.
func (d dataSet) check() error {
	seen := map[tag.Tag]bool{}
	for _, e := range d {
		if seen[e.tag] {
			return fmt.Errorf("element %v appears twice", e.tag)
		}
		seen[e.tag] = true
		if !longVR(e.vr) && len(e.value) > 0xffff {
			return fmt.Errorf("element %v of %d bytes is too long for VR %s", e.tag, len(e.value), e.vr)
		}
	}
	return nil
}

// appendElements appends the elements to b in ascending tag order, as PS3.5 §7.1 requires.
func appendElements(b []byte, d dataSet) []byte {
	els := slices.Clone(d)
	slices.SortFunc(els, func(a, b element) int { return a.tag.Compare(b.tag) })
	for _, e := range els {
		b = binary.LittleEndian.AppendUint16(b, e.tag.Group)
		b = binary.LittleEndian.AppendUint16(b, e.tag.Element)
		b = append(b, e.vr...)
		if longVR(e.vr) {
			b = append(b, 0, 0)
			b = binary.LittleEndian.AppendUint32(b, uint32(len(e.value)))
		} else {
			b = binary.LittleEndian.AppendUint16(b, uint16(len(e.value)))
		}
		b = append(b, e.value...)
	}
	return b
}
