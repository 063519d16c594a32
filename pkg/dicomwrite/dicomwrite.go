// Package dicomwrite builds DICOM data sets and encodes them as Part 10 files in Explicit VR
// Little Endian, with the file meta information pacsflow writes (pkg/part10).
//
// A DataSet is a list of data elements, added in any order and encoded in ascending tag order
// (PS3.5 §7.1). The VR of a standard element comes from the data dictionary of
// github.com/suyashkumar/dicom, so that it cannot disagree with what readers expect; callers
// pass tag constants, so a tag missing from the dictionary is a bug and panics. Private data
// elements, which no dictionary knows, are added through a Private block with the VR the caller
// gives (PS3.5 §7.8).
//
// Values are encoded as PS3.5 §6.2 says: several values of a string VR are joined by
// backslashes, and a value of odd length is padded to even length with a NUL for UI and a
// space for the other string VRs. Sequences and their items have defined lengths (PS3.5 §7.5).
//
// The package writes what it is given: it checks only what would make the encoding itself
// wrong (see DataSet.Encode), not whether the attributes make a valid IOD.
package dicomwrite

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/pacsflow/pacsflow/pkg/part10"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

// element is one data element: its value encoded and padded to even length, or, for a
// sequence, its items, encoded when the data set is. private marks the elements of a Private
// block, whose tags Encode checks.
type element struct {
	tag     tag.Tag
	vr      string
	value   []byte
	items   []DataSet
	private bool
}

// DataSet is a data set being built. The zero value is an empty data set, ready to use. Adding
// an element whose tag is already there is not refused at once: Encode reports it.
type DataSet struct {
	elements []element
}

func vrOf(t tag.Tag) string { return tag.MustFind(t).VRs[0] }

func (d *DataSet) add(t tag.Tag, vr string, value []byte) {
	d.elements = append(d.elements, element{tag: t, vr: vr, value: value})
}

// Text adds a standard element of a string VR (AE, AS, CS, DA, DS, DT, IS, LO, LT, PN, SH, ST,
// TM, UC, UI, UR, UT) with the values given; without values it is empty, as a Type 2 attribute
// is sent when its value is unknown. Values must not contain a backslash unless the VR is one
// of the single-valued LT, ST, UR and UT, where it is an ordinary character.
func (d *DataSet) Text(t tag.Tag, values ...string) {
	d.add(t, vrOf(t), textValue(vrOf(t), values))
}

// textValue joins the values with backslashes (PS3.5 §6.4) and pads them to even length: with
// a NUL for UI, with a space for the other string VRs (PS3.5 §6.2).
func textValue(vr string, values []string) []byte {
	v := []byte(strings.Join(values, `\`))
	if len(v)%2 == 1 {
		if vr == "UI" {
			v = append(v, 0)
		} else {
			v = append(v, ' ')
		}
	}
	return v
}

// Decimal adds a DS element with the finite numbers given, each written with 10 significant
// digits: at most the 16 characters of a DS value (PS3.5 §6.2) when the exponent has two
// digits, as it has for magnitudes from 1e-99 to 1e99.
func (d *DataSet) Decimal(t tag.Tag, values ...float64) {
	s := make([]string, len(values))
	for i, v := range values {
		s[i] = strconv.FormatFloat(v, 'g', 10, 64)
	}
	d.Text(t, s...)
}

// Integer adds an IS element; v must fit the range of IS, −2³¹ to 2³¹−1 (PS3.5 §6.2).
func (d *DataSet) Integer(t tag.Tag, v int) { d.Text(t, strconv.Itoa(v)) }

// US adds an element of VR US with one value.
func (d *DataSet) US(t tag.Tag, v uint16) {
	d.add(t, vrOf(t), binary.LittleEndian.AppendUint16(nil, v))
}

// SS adds an element of VR SS with one value.
func (d *DataSet) SS(t tag.Tag, v int16) {
	d.add(t, vrOf(t), binary.LittleEndian.AppendUint16(nil, uint16(v)))
}

// Sequence adds a sequence (VR SQ) of the items; without items it is empty, as a Type 2
// sequence is sent when there is nothing to put in it. The items are encoded with the data set,
// each with defined lengths (PS3.5 §7.5.1), as they are when Sequence is called.
func (d *DataSet) Sequence(t tag.Tag, items ...DataSet) {
	d.elements = append(d.elements, element{tag: t, vr: vrOf(t), items: items})
}

// Code returns a Code Sequence Macro item (PS3.3 Table 8.8-1) of the code value, its coding
// scheme designator and its meaning, for a Sequence.
func Code(value, scheme, meaning string) DataSet {
	var item DataSet
	item.Text(tag.CodeValue, value)
	item.Text(tag.CodingSchemeDesignator, scheme)
	item.Text(tag.CodeMeaning, meaning)
	return item
}

// Pixels adds native Pixel Data (7FE0,0010) of 16-bit samples, VR OW (PS3.5 §8.1.1), in the
// order given: rows one after another, frames one after another.
func (d *DataSet) Pixels(values []uint16) {
	b := make([]byte, 0, 2*len(values))
	for _, v := range values {
		b = binary.LittleEndian.AppendUint16(b, v)
	}
	d.add(tag.PixelData, "OW", b)
}

// Private is a block of private data elements (PS3.5 §7.8.1): in an odd group gggg, the block
// bb that the Private Creator Data Element (gggg,00bb) reserves, whose data elements are
// (gggg,bbxx).
type Private struct {
	d     *DataSet
	group uint16
	block uint8
}

// PrivateBlock adds the Private Creator Data Element (group,00bb), VR LO, whose value names
// the block's owner, and returns the block, to add its data elements. group must be odd and
// not 0001, 0003, 0005, 0007 or FFFF, and block from 0x10 to 0xFF (PS3.5 §7.8.1); Encode
// reports one that is not.
func (d *DataSet) PrivateBlock(group uint16, block uint8, creator string) Private {
	p := Private{d: d, group: group, block: block}
	p.add(tag.Tag{Group: group, Element: uint16(block)}, "LO", textValue("LO", []string{creator}))
	return p
}

func (p Private) add(t tag.Tag, vr string, value []byte) {
	p.d.elements = append(p.d.elements, element{tag: t, vr: vr, value: value, private: true})
}

// Tag returns the tag of the block's data element xx: (gggg,bbxx).
func (p Private) Tag(xx uint8) tag.Tag {
	return tag.Tag{Group: p.group, Element: uint16(p.block)<<8 | uint16(xx)}
}

// Text adds the block's data element xx with a string VR, as DataSet.Text does for a standard
// element; the VR is the caller's, as no dictionary knows a private element's (PS3.5 §7.8.1).
func (p Private) Text(xx uint8, vr string, values ...string) {
	p.add(p.Tag(xx), vr, textValue(vr, values))
}

// UL adds the block's data element xx with VR UL and one value.
func (p Private) UL(xx uint8, v uint32) {
	p.add(p.Tag(xx), "UL", binary.LittleEndian.AppendUint32(nil, v))
}

// longVR reports the VRs with a reserved field and a 32-bit length, PS3.5 §7.1.2.
func longVR(vr string) bool {
	switch vr {
	case "OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV":
		return true
	}
	return false
}

// Encode returns the Part 10 file of the data set in Explicit VR Little Endian, with the file
// meta information that pacsflow writes (part10.AppendHeader): the data set must hold the SOP
// Class and SOP Instance UIDs, which the meta information repeats. Encode reports, naming the
// element:
//   - an element that appears twice in the data set or in one item;
//   - a value too long for its VR's length field, 16 bits or 32 (PS3.5 §7.1.2);
//   - a private block in a group that cannot hold private elements (an even one, 0001, 0003,
//     0005, 0007 or FFFF), or numbered below 0x10 (PS3.5 §7.8.1).
func (d DataSet) Encode() ([]byte, error) {
	var meta part10.Meta
	for _, e := range d.elements {
		switch e.tag {
		case tag.SOPClassUID:
			meta.MediaStorageSOPClassUID = strings.TrimRight(string(e.value), "\x00")
		case tag.SOPInstanceUID:
			meta.MediaStorageSOPInstanceUID = strings.TrimRight(string(e.value), "\x00")
		}
	}
	if meta.MediaStorageSOPClassUID == "" || meta.MediaStorageSOPInstanceUID == "" {
		return nil, errors.New("encode data set: it lacks the SOP Class or SOP Instance UID")
	}
	if err := d.check(); err != nil {
		return nil, fmt.Errorf("encode data set: %w", err)
	}
	meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
	meta.ImplementationClassUID = uid.ImplementationClassUID
	meta.ImplementationVersionName = uid.ImplementationVersionName
	b := make([]byte, 0, part10.PreambleLen+512+d.size())
	return d.appendTo(part10.AppendHeader(b, &meta)), nil
}

// size is the length of the encoded data set: an item's length, and what Encode allocates.
func (d DataSet) size() int {
	n := 0
	for _, e := range d.elements {
		n += 8 + e.length()
		if longVR(e.vr) {
			n += 4 // the reserved field and the longer length
		}
	}
	return n
}

// length is the encoded length of the element's value; for a sequence, its items with their
// 8-byte headers.
func (e element) length() int {
	if e.vr != "SQ" {
		return len(e.value)
	}
	n := 0
	for _, item := range e.items {
		n += 8 + item.size()
	}
	return n
}

// check reports what Encode says it reports, in the data set and, recursively, its items.
func (d DataSet) check() error {
	seen := map[tag.Tag]bool{}
	for _, e := range d.elements {
		if seen[e.tag] {
			return fmt.Errorf("element %v appears twice", e.tag)
		}
		seen[e.tag] = true
		if err := checkPrivate(e); err != nil {
			return err
		}
		n := e.length()
		if !longVR(e.vr) && n > math.MaxUint16 || uint64(n) > math.MaxUint32-1 { // 0xFFFFFFFF is the undefined length
			return fmt.Errorf("element %v of %d bytes is too long for VR %s", e.tag, n, e.vr)
		}
		for i, item := range e.items {
			if err := item.check(); err != nil {
				return fmt.Errorf("item %d of %v: %w", i+1, e.tag, err)
			}
		}
	}
	return nil
}

// checkPrivate checks the tag of an element of a Private block against PS3.5 §7.8.1: the group
// must be odd and able to hold private elements, and the block 0x10 or above (the creators of
// lower ones would be (gggg,0000) to (gggg,000F), their data elements below (gggg,1000)).
func checkPrivate(e element) error {
	switch t, g := e.tag, e.tag.Group; {
	case !e.private:
		return nil
	case g%2 == 0 || g <= 0x0007 || g == 0xffff:
		return fmt.Errorf("element %v: group %04x cannot hold private elements", t, g)
	case t.Element < 0x0010 || t.Element >= 0x0100 && t.Element < 0x1000:
		return fmt.Errorf("private element %v is in a block below 0x10", t)
	}
	return nil
}

// appendTo appends the elements to b in ascending tag order, as PS3.5 §7.1 requires.
func (d DataSet) appendTo(b []byte) []byte {
	els := slices.Clone(d.elements)
	slices.SortFunc(els, func(a, b element) int { return a.tag.Compare(b.tag) })
	for _, e := range els {
		b = binary.LittleEndian.AppendUint16(b, e.tag.Group)
		b = binary.LittleEndian.AppendUint16(b, e.tag.Element)
		b = append(b, e.vr...)
		if longVR(e.vr) {
			b = append(b, 0, 0)
			b = binary.LittleEndian.AppendUint32(b, uint32(e.length()))
		} else {
			b = binary.LittleEndian.AppendUint16(b, uint16(e.length()))
		}
		if e.vr != "SQ" {
			b = append(b, e.value...)
			continue
		}
		for _, item := range e.items {
			b = binary.LittleEndian.AppendUint16(b, tag.Item.Group)
			b = binary.LittleEndian.AppendUint16(b, tag.Item.Element)
			b = binary.LittleEndian.AppendUint32(b, uint32(item.size()))
			b = item.appendTo(b)
		}
	}
	return b
}
