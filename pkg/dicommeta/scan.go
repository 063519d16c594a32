package dicommeta

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/suyashkumar/dicom/pkg/tag"
)

// maxDepth bounds the nesting of sequences. The parser recurses once per
// level without a bound of its own, and a Go stack overflow is fatal rather
// than a recoverable panic; real data sets nest a handful of levels.
const maxDepth = 64

// lastScannedTag is the last top-level tag Parse reads, Requested Procedure
// Priority (0040,1003): everything the pipeline needs lies before it, and
// what follows (a structured report's content sequence (0040,A730),
// functional groups, overlays, pixel data) can be megabytes long.
var lastScannedTag = tag.Tag{Group: 0x0040, Element: 0x1003}

// scan is the result of a scanner run over the top level of a data set.
type scan struct {
	// tags are the top-level elements before the stop, in data set order.
	tags []tag.Tag
	// stopped tells whether a top-level tag past lastScannedTag was seen;
	// stopTag is that tag and end is where it starts. Otherwise the data
	// set ended normally at end.
	stopped bool
	stopTag tag.Tag
	end     int
}

// header is an element header as the parser reads it.
type header struct {
	tag    tag.Tag
	vr     string
	kind   tag.VRKind
	length uint32 // tag.VLUndefinedLength when undefined
	value  int    // offset of the value
}

// scanner frames a decoded data set (b) the way the suyashkumar parser will
// read it, without reading values, so that Parse can hand the parser only
// input it is known to handle. The parser needs this for three reasons:
//   - it allocates an element's declared length before it reads the value
//     (a string declaring 4 GB allocates 4 GB, however short the input),
//     and in deflated data sets it stops checking lengths against the input
//     at all;
//   - it reads a whole element once it has read its tag, so without knowing
//     where the elements of interest end it would read on into pixel data;
//   - it recurses without bound into nested sequences, and logs or panics on
//     some malformed structures.
//
// The scanner therefore mirrors the parser's reading rules (implicit VRs
// from the parser's own dictionary, items always read as implicit, tag.GetVRKind
// to decide how a value is read), rejects every structure on which the two
// could disagree, and checks that each declared length lies within its
// enclosing value and within b.
type scanner struct {
	b []byte
	// complete tells whether b is the whole data set; otherwise running out
	// of b means more is needed rather than that the data set is malformed.
	complete bool
	bo       binary.ByteOrder
	implicit bool
}

// run scans the top level of the data set up to the first tag past
// lastScannedTag, or to its end.
func (s *scanner) run() (scan, error) {
	var res scan
	pos := 0
	for {
		if pos == len(s.b) && s.complete {
			res.end = pos
			return res, nil
		}
		if err := s.need(pos, 4, math.MaxInt, span{name: "the tag of a top-level element"}); err != nil {
			return scan{}, err
		}
		t := s.tagAt(pos)
		// Pixel Data (7FE0,0010) and its float variants (7FE0,0008/0009)
		// are past the last group too, so this also keeps the parser away
		// from pixel data.
		if t.Group > lastScannedTag.Group || t.Group == lastScannedTag.Group && t.Element > lastScannedTag.Element {
			res.stopped, res.stopTag, res.end = true, t, pos
			return res, nil
		}
		h, err := s.header(pos, math.MaxInt)
		if err != nil {
			return scan{}, err
		}
		// Parser.Next reads the character set with MustGetStrings, which
		// logs and panics unless the value was read as strings.
		if t == tag.SpecificCharacterSet && !readAsStrings(h.kind) {
			return scan{}, malformedf("Specific Character Set %v has VR %q", t, h.vr)
		}
		if pos, err = s.value(h, math.MaxInt, 0); err != nil {
			return scan{}, err
		}
		res.tags = append(res.tags, t)
	}
}

// value skips the value of the element h, which lies in an enclosing value
// ending at end, and returns the offset after it.
func (s *scanner) value(h header, end, depth int) (int, error) {
	switch {
	case h.length == tag.VLUndefinedLength:
		switch h.kind {
		case tag.VRSequence, tag.VRUnknown: // the parser reads an undefined-length UN as a sequence
			return s.sequence(h, end, depth)
		case tag.VRBytes:
			return s.fragments(h, end, false)
		case tag.VRPixelData:
			return s.fragments(h, end, true)
		}
		// The parser would refuse some of these, but it allocates 4 GB for
		// an undefined-length DA first.
		return 0, malformedf("%v with VR %q has undefined length", h.tag, h.vr)
	case h.kind == tag.VRSequence:
		return s.sequence(h, end, depth)
	}
	if err := s.need(h.value, int64(h.length), end, span{"the value", h.tag, true}); err != nil {
		return 0, err
	}
	return h.value + int(h.length), nil
}

// sequence skips the items of the sequence h.
func (s *scanner) sequence(h header, end, depth int) (int, error) {
	if depth >= maxDepth {
		return 0, malformedf("%v at data set offset %d: sequences nested more than %d deep", h.tag, h.value, maxDepth)
	}
	pos := h.value
	if h.length != tag.VLUndefinedLength {
		seqEnd, err := s.defined(h, end)
		if err != nil {
			return 0, err
		}
		for pos < seqEnd {
			item, err := s.header(pos, seqEnd)
			if err != nil {
				return 0, err
			}
			// The parser type-asserts every element of a defined-length
			// sequence to an item and panics otherwise.
			if item.tag != tag.Item {
				return 0, malformedf("%v at data set offset %d in sequence %v, where only items may be", item.tag, pos, h.tag)
			}
			if pos, err = s.item(item, seqEnd, depth+1); err != nil {
				return 0, err
			}
		}
		return seqEnd, nil
	}
	for {
		item, err := s.header(pos, end)
		if err != nil {
			return 0, err
		}
		switch item.tag {
		case tag.SequenceDelimitationItem:
			return item.value, nil
		case tag.Item:
			if pos, err = s.item(item, end, depth+1); err != nil {
				return 0, err
			}
		default:
			return 0, malformedf("%v at data set offset %d in sequence %v, where only items may be", item.tag, pos, h.tag)
		}
	}
}

// item skips the elements of the sequence item h.
func (s *scanner) item(h header, end, depth int) (int, error) {
	pos := h.value
	itemEnd := end
	if h.length != tag.VLUndefinedLength {
		var err error
		if itemEnd, err = s.defined(h, end); err != nil {
			return 0, err
		}
	}
	for h.length == tag.VLUndefinedLength || pos < itemEnd {
		e, err := s.header(pos, itemEnd)
		if err != nil {
			return 0, err
		}
		if e.tag == tag.ItemDelimitationItem && h.length == tag.VLUndefinedLength {
			return e.value, nil
		}
		if isDelimiter(e.tag) || e.tag == tag.Item {
			return 0, malformedf("%v at data set offset %d inside an item", e.tag, pos)
		}
		if pos, err = s.value(e, itemEnd, depth); err != nil {
			return 0, err
		}
	}
	return itemEnd, nil
}

// fragments skips the items of an undefined-length OB or OW value, which the
// parser reads as raw items: a tag and a 32-bit length, whatever the
// transfer syntax. Encapsulated pixel data starts with the Basic Offset
// Table item, which the parser reads without looking at its tag.
func (s *scanner) fragments(h header, end int, offsetTable bool) (int, error) {
	pos := h.value
	for first := true; ; first = false {
		if err := s.need(pos, 8, end, span{"an item", h.tag, true}); err != nil {
			return 0, err
		}
		t, length := s.tagAt(pos), s.bo.Uint32(s.b[pos+4:])
		switch {
		case t == tag.SequenceDelimitationItem && !(first && offsetTable):
			if length != 0 {
				return 0, malformedf("sequence delimitation item of %v at data set offset %d has length %d", h.tag, pos, length)
			}
			return pos + 8, nil
		case t != tag.Item:
			// The parser would log this and read on as if it were an item.
			return 0, malformedf("%v at data set offset %d among the items of %v", t, pos, h.tag)
		case length == tag.VLUndefinedLength:
			return 0, malformedf("item of %v at data set offset %d has undefined length", h.tag, pos)
		}
		if err := s.need(pos+8, int64(length), end, span{"an item", h.tag, true}); err != nil {
			return 0, err
		}
		pos += 8 + int(length)
	}
}

// defined checks that the defined-length value of h lies within the
// enclosing value and returns where it ends. Its bytes need not all be in b
// yet: reading into it finds that out.
func (s *scanner) defined(h header, end int) (int, error) {
	if int64(h.length) > int64(end-h.value) {
		return 0, malformedf("%v at data set offset %d declares %d bytes, past the end of its enclosing value", h.tag, h.value, h.length)
	}
	return h.value + int(h.length), nil
}

// header reads the element header at pos as the parser does.
func (s *scanner) header(pos, end int) (header, error) {
	if err := s.need(pos, 8, end, span{name: "an element header"}); err != nil {
		return header{}, err
	}
	h := header{tag: s.tagAt(pos)}
	switch {
	case isDelimiter(h.tag):
		// The parser reads delimiters in the data set's VR encoding; only
		// a zero length reads the same in both.
		if s.bo.Uint32(s.b[pos+4:]) != 0 {
			return header{}, malformedf("%v at data set offset %d has a non-zero length", h.tag, pos)
		}
		h.value = pos + 8
		return h, nil
	case s.implicit || h.tag == tag.Item:
		h.vr = implicitVR(h.tag)
		h.length = s.bo.Uint32(s.b[pos+4:])
		h.value = pos + 8
	default:
		rule, ok := explicitVRs[string(s.b[pos+4:pos+6])]
		switch {
		case !ok:
			return header{}, malformedf("%v at data set offset %d has unknown VR %q", h.tag, pos, s.b[pos+4:pos+6])
		case rule.unsupported:
			return header{}, malformedf("%v at data set offset %d has VR %s, which the parser reads with a 16-bit length", h.tag, pos, rule.name)
		case rule.long:
			if err := s.need(pos, 12, end, span{name: "an element header"}); err != nil {
				return header{}, err
			}
			h.length = s.bo.Uint32(s.b[pos+8:])
			h.value = pos + 12
		default:
			h.length = uint32(s.bo.Uint16(s.b[pos+6:]))
			if h.length == 0xFFFF { // the parser reads this as undefined length
				h.length = tag.VLUndefinedLength
			}
			h.value = pos + 8
		}
		h.vr = rule.name
	}
	h.kind = tag.GetVRKind(h.tag, h.vr)
	if h.length != tag.VLUndefinedLength && h.length > MaxMetadataLen {
		return header{}, malformedf("%v at data set offset %d declares %d bytes, more than the %d bytes of metadata Parse reads", h.tag, pos, h.length, MaxMetadataLen)
	}
	return h, nil
}

// span names the bytes need checks, for its errors; it is formatted only
// then, since need runs for every element.
type span struct {
	name  string
	of    tag.Tag // the element the bytes belong to, if ofTag
	ofTag bool
}

func (sp span) String() string {
	if sp.ofTag {
		return sp.name + " of " + sp.of.String()
	}
	return sp.name
}

// need checks that n bytes from pos lie within the enclosing value, which
// ends at end, and within b.
func (s *scanner) need(pos int, n int64, end int, what span) error {
	if n > int64(end-pos) {
		return malformedf("%s at data set offset %d runs past the end of its enclosing value", what, pos)
	}
	if n > int64(len(s.b)-pos) {
		if s.complete {
			return malformedf("data set ends inside %s at offset %d", what, pos)
		}
		return fmt.Errorf("%w: the data set prefix ends inside %s at offset %d", ErrNeedMore, what, pos)
	}
	return nil
}

func (s *scanner) tagAt(pos int) tag.Tag {
	return tag.Tag{Group: s.bo.Uint16(s.b[pos:]), Element: s.bo.Uint16(s.b[pos+2:])}
}

// implicitVR is the VR the parser gives an element in implicit VR.
func implicitVR(t tag.Tag) string {
	if t == tag.PixelData || t == tag.OverlayData {
		return "OW"
	}
	if info, err := tag.Find(t); err == nil {
		return info.VRs[0]
	}
	return "UN"
}

func isDelimiter(t tag.Tag) bool {
	return t == tag.ItemDelimitationItem || t == tag.SequenceDelimitationItem
}

// readAsStrings tells whether the parser reads values of kind k as strings.
func readAsStrings(k tag.VRKind) bool {
	return k == tag.VRStringList || k == tag.VRString || k == tag.VRDate
}

// vrRule is how the parser frames an explicit VR.
type vrRule struct {
	name string
	// long VRs have a reserved field and a 32-bit length, PS3.5 §7.1.2.
	long bool
	// unsupported are the 64-bit VRs added in 2019: they have a 32-bit
	// length, but the parser frames them with a 16-bit one.
	unsupported bool
}

// explicitVRs are the VRs of PS3.5 Table 6.2-1, keyed by their two bytes.
var explicitVRs = func() map[string]vrRule {
	m := make(map[string]vrRule)
	for _, vr := range []string{"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT",
		"PN", "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US"} {
		m[vr] = vrRule{name: vr}
	}
	for _, vr := range []string{"OB", "OD", "OF", "OL", "OW", "SQ", "UC", "UN", "UR", "UT"} {
		m[vr] = vrRule{name: vr, long: true}
	}
	for _, vr := range []string{"OV", "SV", "UV"} {
		m[vr] = vrRule{name: vr, unsupported: true}
	}
	return m
}()
