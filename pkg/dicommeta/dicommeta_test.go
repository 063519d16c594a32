package dicommeta

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/pacsflow/pacsflow/pkg/part10"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

// TestParseFiles parses the suyashkumar test files in every native transfer
// syntax, whole and as prefixes, against what dcmdump reads in them.
func TestParseFiles(t *testing.T) {
	for _, s := range samples(t) {
		t.Run(s.name, func(t *testing.T) {
			r, err := part10.NewReader(bytes.NewReader(s.data))
			if err != nil {
				t.Fatal(err)
			}
			d := dcmdump(t, s.path)
			want := d.instance(t, r.Meta.TransferSyntaxUID)
			got, err := Parse(s.data, true)
			if err != nil {
				t.Fatalf("Parse of the whole file: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("Parse of the whole file:\n got %+v\nwant %+v", got, want)
			}

			enough := checkPrefixes(t, s.data, want)
			// The elements Parse reads end before pixel data, which ends
			// these files.
			limit := len(s.data)
			if r.Meta.TransferSyntaxUID != uid.DeflatedExplicitVRLittleEndian {
				pixels, err := strconv.Atoi(strings.TrimSuffix(d["7fe0,0010 length"], ","))
				if err != nil {
					t.Fatalf("dcmdump length of Pixel Data: %v", err)
				}
				limit -= pixels
			}
			if enough > limit {
				t.Errorf("Parse needed %d bytes; pixel data starts before %d", enough, limit)
			}

			// As the ingest service calls it: its own header and the data set.
			ingest := append(part10.AppendHeader(nil, &r.Meta), s.data[r.DataSetOffset:]...)
			checkPrefixes(t, ingest, want)
		})
	}
}

// checkPrefixes parses prefixes of data, growing a byte at a time, and
// checks that they need more until one is enough, and that from then on
// all give want. It returns the length of the shortest one that is enough.
func checkPrefixes(t *testing.T, data []byte, want *Instance) int {
	t.Helper()
	enough := -1
	for n := 0; n <= len(data) && (enough < 0 || n < enough+256); n++ {
		got, err := Parse(data[:n], false)
		switch {
		case err == nil && enough < 0:
			enough = n
			fallthrough
		case err == nil:
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("prefix of %d bytes:\n got %+v\nwant %+v", n, got, want)
			}
		case enough >= 0:
			t.Fatalf("prefix of %d bytes: %v, after %d bytes were enough", n, err, enough)
		case !errors.Is(err, ErrNeedMore):
			t.Fatalf("prefix of %d bytes: %v, want ErrNeedMore", n, err)
		}
	}
	if enough < 0 {
		t.Fatalf("no prefix of the %d bytes was enough", len(data))
	}
	if got, err := Parse(data, false); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("whole data, not complete: %+v, %v", got, err)
	}
	return enough
}

// stopDataSet is a data set with the attributes Parse reads (nested ones
// included), followed by the header of a 4 GB Pixel Data element, and the
// offset of that header.
func stopDataSet(e enc) (ds []byte, stop int) {
	ds = bytes.Join([][]byte{
		e.str(0x00080005, "CS", "ISO_IR 100"),
		e.str(0x00080008, "CS", `ORIGINAL\PRIMARY\AXIAL`),
		e.classAndInstance(),
		e.str(0x00080020, "DA", "20240131"),
		e.str(0x00080060, "CS", "CT"),
		e.seq(0x00081115, true, e.item(true, e.str(0x00081150, "UI", uid.CTImageStorage))),
		e.str(0x00100010, "PN", "Doe^Jane"),
		e.str(0x00120062, "CS", "YES"),
		e.studyAndSeries(),
		e.str(0x00200013, "IS", "7"),
		e.us(0x00280010, 512),
		e.us(0x00280011, 256),
		e.seq(0x00400275, false, e.item(false, e.str(0x00401003, "SH", "HIGH"))),
	}, nil)
	return append(ds, e.hdr(0x7FE00010, "OW", 0xFFFFFFF0)...), len(ds)
}

var stopWant = Instance{
	SOPClassUID:                testClass,
	SOPInstanceUID:             testInstance,
	StudyInstanceUID:           testStudy,
	SeriesInstanceUID:          testSeries,
	PatientName:                "Doe^Jane",
	PatientIdentityRemoved:     "YES",
	StudyDate:                  "20240131",
	Modality:                   "CT",
	RequestedProcedurePriority: "HIGH",
	ImageType:                  []string{"ORIGINAL", "PRIMARY", "AXIAL"},
	SpecificCharacterSet:       []string{"ISO_IR 100"},
	InstanceNumber:             7,
	NumberOfFrames:             1,
	Rows:                       512,
	Columns:                    256,
}

// TestParseStops checks that Parse needs exactly the tag of the first
// element past (0040,1003), and never reads its value.
func TestParseStops(t *testing.T) {
	for _, sx := range syntaxes {
		t.Run(uid.Name(sx.ts), func(t *testing.T) {
			ds, stop := stopDataSet(sx.enc)
			f := file(t, sx.ts, ds)
			want := stopWant
			want.TransferSyntaxUID = sx.ts
			for _, complete := range []bool{false, true} {
				var got *Instance
				var err error
				if n := totalAlloc(func() { got, err = Parse(f, complete) }); n > 4<<20 {
					t.Errorf("Parse(complete=%v) allocated %d bytes", complete, n)
				}
				if err != nil || !reflect.DeepEqual(*got, want) {
					t.Fatalf("Parse(complete=%v) = %+v, %v; want %+v", complete, got, err, want)
				}
			}
			if sx.ts == uid.DeflatedExplicitVRLittleEndian {
				checkPrefixes(t, f, &want) // compressed offsets are not those of ds
				return
			}
			stop += len(f) - len(ds)
			for _, c := range []struct {
				n        int
				complete bool
				want     error
			}{
				{stop + 3, false, ErrNeedMore},
				{stop + 3, true, ErrMalformed},
				{stop + 4, false, nil},
				{stop, false, ErrNeedMore},
				{stop, true, nil}, // a data set without pixel data
			} {
				if _, err := Parse(f[:c.n], c.complete); !errors.Is(err, c.want) {
					t.Errorf("Parse of %d bytes (stop at %d), complete=%v: %v, want %v", c.n, stop, c.complete, err, c.want)
				}
			}
		})
	}
}

// nested is an element inside depth levels of sequences.
func nested(e enc, depth int, undef bool) []byte {
	b := e.str(0x00100010, "PN", "X")
	for range depth {
		b = e.seq(0x00081115, undef, e.item(undef, b))
	}
	return b
}

func TestParseErrors(t *testing.T) {
	e := explicitLE
	// withUIDs is a data set of the required UIDs followed by more, which
	// starts at data set offset uidsLen.
	withUIDs := func(ts string, e enc, more ...[]byte) []byte {
		return file(t, ts, bytes.Join(append([][]byte{e.classAndInstance(), e.studyAndSeries()}, more...), nil))
	}
	uidsLen := len(e.classAndInstance()) + len(e.studyAndSeries())
	valid := withUIDs(uid.ExplicitVRLittleEndian, e)
	notDICOM := []byte(strings.Repeat("This is not DICOM. ", 20))
	deflated := file(t, uid.DeflatedExplicitVRLittleEndian, bytes.Join([][]byte{
		e.classAndInstance(), e.str(0x00100010, "PN", strings.Repeat("A^B", 2000)), e.studyAndSeries(),
	}, nil))
	// 5 MB of elements before (0040,1003), deflated to some 10 kB.
	bomb := make([][]byte, 500_000)
	for i := range bomb {
		bomb[i] = e.us(0x00280002, 1)
	}
	// A final block of the reserved type 3.
	corruptDeflate := append(metaHeader(uid.DeflatedExplicitVRLittleEndian), 0xFF, 0xFF)
	uidCase := func(study, series string) []byte {
		return file(t, uid.ExplicitVRLittleEndian, bytes.Join([][]byte{
			e.classAndInstance(), e.str(0x0020000D, "UI", study), e.str(0x0020000E, "UI", series),
		}, nil))
	}
	for _, c := range []struct {
		name     string
		in       []byte
		complete bool
		want     error
		msg      string
	}{
		{"valid", valid, true, nil, ""},
		{"missing SOP instance UID", file(t, uid.ExplicitVRLittleEndian, append(e.str(0x00080016, "UI", testClass), e.studyAndSeries()...)), true,
			ErrMissingUID, "SOP Instance UID (0008,0018) is missing"},
		{"empty data set", file(t, uid.ExplicitVRLittleEndian, nil), true,
			ErrMissingUID, "SOP Class UID (0008,0016) is missing; SOP Instance UID (0008,0018) is missing; Study Instance UID (0020,000d) is missing; Series Instance UID (0020,000e) is missing"},
		{"empty component", uidCase("1.2.3..4", testSeries), true, ErrMissingUID, `Study Instance UID (0020,000d): UID "1.2.3..4" has an empty component`},
		{"path in UID", uidCase(testStudy, "../x"), true, ErrMissingUID, `Series Instance UID (0020,000e): UID "../x" has an empty component`},
		{"two UIDs", uidCase(testStudy+`\`+testStudy, testSeries), true, ErrMissingUID, `contains '\\'`},
		{"not DICOM", notDICOM, true, ErrMalformed, "no DICM prefix"},
		{"not DICOM, not complete", notDICOM, false, ErrMalformed, "no DICM prefix"},
		{"empty", nil, true, ErrMalformed, "too short"},
		{"empty, not complete", nil, false, ErrNeedMore, "before the file meta group length"},
		{"truncated meta information", valid[:150], true, ErrMalformed, "file meta information of"},
		{"truncated meta information, not complete", valid[:150], false, ErrNeedMore, "inside the file meta information"},
		{"no meta group length", append(bytes.Clone(valid[:132]), valid[144:]...), true, ErrMalformed, "does not start with its group length"},
		{"meta group length of 1 MB", append(append(bytes.Clone(valid[:140]), 0, 0, 16, 0), valid[144:]...), false, ErrMalformed, "exceeds"},
		{"unknown transfer syntax", withUIDs("1.2.3.4.5.6.7.8.9.0", e), true, ErrMalformed, `transfer syntax "1.2.3.4.5.6.7.8.9.0"`},
		{"element past the end", withUIDs(uid.ExplicitVRLittleEndian, e, e.hdr(0x00100010, "PN", 100), []byte("AB")), true,
			ErrMalformed, "data set ends inside the value of (0010,0010)"},
		{"element past the end, not complete", withUIDs(uid.ExplicitVRLittleEndian, e, e.hdr(0x00100010, "PN", 100), []byte("AB")), false,
			ErrNeedMore, "ends inside the value of (0010,0010)"},
		{"element past its item", withUIDs(uid.ExplicitVRLittleEndian, e, e.seq(0x00081115, false,
			append(e.hdr(0xFFFEE000, "", 8), e.hdr(0x00081150, "UI", 10)...))), false,
			ErrMalformed, "past the end of its enclosing value"},
		{"item past its sequence", withUIDs(uid.ExplicitVRLittleEndian, e,
			append(e.hdr(0x00081115, "SQ", 8), e.item(false, e.str(0x00081150, "UI", "1.2"))...)), false,
			ErrMalformed, "past the end of its enclosing value"},
		{"4 GB implicit", withUIDs(uid.ImplicitVRLittleEndian, implicitLE, implicitLE.hdr(0x00100010, "", 0xFFFFFFF0)), false,
			ErrMalformed, fmt.Sprintf("(0010,0010) at data set offset %d declares 4294967280 bytes", uidsLen)},
		{"4 GB UT", withUIDs(uid.ExplicitVRLittleEndian, e, e.hdr(0x00081030, "UT", 0xFFFFFFF0)), true,
			ErrMalformed, "declares 4294967280 bytes"},
		{"4 GB in an item", withUIDs(uid.ExplicitVRLittleEndian, e, e.seq(0x00081115, true,
			append(e.hdr(0xFFFEE000, "", undefined), e.hdr(0x00091010, "OB", 0xFFFFFFF0)...))), false,
			ErrMalformed, "declares 4294967280 bytes"},
		{"4 GB deflated", withUIDs(uid.DeflatedExplicitVRLittleEndian, e, e.hdr(0x00100010, "UN", 0xFFFFFFF0)), false,
			ErrMalformed, "declares 4294967280 bytes"},
		{"undefined-length date", withUIDs(uid.ExplicitVRLittleEndian, e, e.hdr(0x00100030, "DA", 0xFFFF)), true,
			ErrMalformed, `(0010,0030) with VR "DA" has undefined length`},
		{"undefined-length OB without delimiter", withUIDs(uid.ExplicitVRLittleEndian, e,
			e.hdr(0x00282000, "OB", undefined), e.el(0xFFFEE000, "", []byte("ABCD"))), true,
			ErrMalformed, "ends inside an item of (0028,2000)"},
		{"undefined-length OB without delimiter, not complete", withUIDs(uid.ExplicitVRLittleEndian, e,
			e.hdr(0x00282000, "OB", undefined), e.el(0xFFFEE000, "", []byte("ABCD"))), false,
			ErrNeedMore, "ends inside an item of (0028,2000)"},
		{"non-item among OB items", withUIDs(uid.ExplicitVRLittleEndian, e,
			e.hdr(0x00282000, "OB", undefined), e.str(0x00100010, "PN", "X")), true,
			ErrMalformed, fmt.Sprintf("(0010,0010) at data set offset %d among the items of (0028,2000)", uidsLen+12)},
		{"65 nested sequences", withUIDs(uid.ExplicitVRLittleEndian, e, nested(e, 65, true)), true, ErrMalformed, "nested more than 64 deep"},
		{"2000 nested sequences, implicit", withUIDs(uid.ImplicitVRLittleEndian, implicitLE, nested(implicitLE, 2000, true)), true,
			ErrMalformed, "nested more than 64 deep"},
		{"2000 nested sequences, defined lengths", withUIDs(uid.ExplicitVRLittleEndian, e, nested(e, 2000, false)), true,
			ErrMalformed, "nested more than 64 deep"},
		{"2000 nested sequences, big endian, not complete", withUIDs(uid.ExplicitVRBigEndian, explicitBE, nested(explicitBE, 2000, true))[:30000], false,
			ErrMalformed, "nested more than 64 deep"},
		{"element in a sequence", withUIDs(uid.ExplicitVRLittleEndian, e,
			append(e.hdr(0x00081115, "SQ", undefined), e.str(0x00081150, "UI", "1.2")...)), true,
			ErrMalformed, fmt.Sprintf("(0008,1150) at data set offset %d in sequence (0008,1115), where only items may be", uidsLen+12)},
		{"delimiter with a length", withUIDs(uid.ExplicitVRLittleEndian, e,
			e.hdr(0x00081115, "SQ", undefined), e.hdr(0xFFFEE0DD, "", 2)), true,
			ErrMalformed, fmt.Sprintf("(fffe,e0dd) at data set offset %d has a non-zero length", uidsLen+12)},
		{"unknown VR", withUIDs(uid.ExplicitVRLittleEndian, e, e.el(0x00100010, "XY", []byte("AB"))), true,
			ErrMalformed, `unknown VR "XY"`},
		{"64-bit VR", withUIDs(uid.ExplicitVRLittleEndian, e, e.el(0x00101010, "SV", make([]byte, 8))), true,
			ErrMalformed, "VR SV, which the parser reads with a 16-bit length"},
		{"character set as UN", file(t, uid.ExplicitVRLittleEndian, append(e.el(0x00080005, "UN", []byte("ISO_IR 100")), e.classAndInstance()...)), true,
			ErrMalformed, `Specific Character Set (0008,0005) has VR "UN"`},
		{"deflate bomb", withUIDs(uid.DeflatedExplicitVRLittleEndian, e, bomb...), false,
			ErrMalformed, "does not reach past (0040,1003) within its first 4194304 inflated bytes"},
		{"corrupt deflate stream", corruptDeflate, true, ErrMalformed, "inflating the data set"},
		{"truncated deflate stream", deflated[:len(deflated)-40], true, ErrMalformed, "deflated data set is truncated"},
		{"truncated deflate stream, not complete", deflated[:len(deflated)-40], false, ErrNeedMore, "ends inside"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var err error
			if n := totalAlloc(func() { _, err = Parse(c.in, c.complete) }); n > 64<<20 {
				t.Errorf("Parse allocated %d bytes", n)
			}
			if !errors.Is(err, c.want) || c.want != nil && !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("Parse: %v\nwant %v containing %q", err, c.want, c.msg)
			}
		})
	}
}

// TestParseStructures checks structures Parse must read past: the
// undefined-length OB of suyashkumar issue 349, icon pixel data, private
// sequences, nesting up to the limit.
func TestParseStructures(t *testing.T) {
	for _, sx := range syntaxes {
		e := sx.enc
		// ICC Profile: an OB in the parser's dictionary, so in implicit VR
		// too its undefined length means items of bytes, not a sequence.
		fragments := append(e.hdr(0x00282000, "OB", undefined), bytes.Join([][]byte{
			e.el(0xFFFEE000, "", []byte("ABCD")), e.el(0xFFFEE000, "", nil), e.hdr(0xFFFEE0DD, "", 0),
		}, nil)...)
		icon := e.seq(0x00091011, true, e.item(true,
			e.us(0x00280010, 2), e.us(0x00280011, 2),
			append(e.hdr(0x7FE00010, "OB", undefined), bytes.Join([][]byte{
				e.el(0xFFFEE000, "", nil), e.el(0xFFFEE000, "", []byte("JPEG")), e.hdr(0xFFFEE0DD, "", 0),
			}, nil)...),
		))
		nativeIcon := e.seq(0x00091012, false, e.item(false,
			e.us(0x00280010, 2), e.us(0x00280011, 2), e.el(0x7FE00010, "OW", make([]byte, 8))))
		for _, c := range []struct {
			name   string
			middle []byte
		}{
			{"undefined-length OB", fragments},
			{"encapsulated icon", icon},
			{"native icon", nativeIcon},
			{"64 nested sequences", nested(e, 64, true)},
			{"64 nested sequences, defined lengths", nested(e, 64, false)},
			{"empty values", bytes.Join([][]byte{e.el(0x00100010, "PN", nil), e.seq(0x00101002, false), e.seq(0x00101003, true)}, nil)},
		} {
			t.Run(uid.Name(sx.ts)+"/"+c.name, func(t *testing.T) {
				f := file(t, sx.ts, bytes.Join([][]byte{e.classAndInstance(), c.middle, e.studyAndSeries()}, nil))
				in, err := Parse(f, true)
				if err != nil {
					t.Fatal(err)
				}
				if in.SeriesInstanceUID != testSeries {
					t.Fatalf("Series Instance UID %q, want %q", in.SeriesInstanceUID, testSeries)
				}
			})
		}
	}
}

func TestRequestedProcedurePriority(t *testing.T) {
	for _, sx := range syntaxes {
		e := sx.enc
		priority := func(p string) []byte { return e.str(0x00401003, "SH", p) }
		requestAttributes := func(undef bool, items ...[]byte) []byte { return e.seq(0x00400275, undef, items...) }
		for _, c := range []struct {
			name string
			in   []byte
			want string
		}{
			{"top level", priority("STAT"), "STAT"},
			{"first request", requestAttributes(true, e.item(true, e.str(0x00401001, "SH", "RP1"), priority("HIGH"))), "HIGH"},
			{"first request, defined lengths", requestAttributes(false, e.item(false, priority("LOW"))), "LOW"},
			{"second request only", requestAttributes(true, e.item(true), e.item(true, priority("HIGH"))), ""},
			{"both", append(requestAttributes(false, e.item(false, priority("LOW"))), priority("ROUTINE")...), "ROUTINE"},
			{"none", nil, ""},
		} {
			t.Run(uid.Name(sx.ts)+"/"+c.name, func(t *testing.T) {
				f := file(t, sx.ts, bytes.Join([][]byte{e.classAndInstance(), e.studyAndSeries(), c.in}, nil))
				in, err := Parse(f, true)
				if err != nil {
					t.Fatal(err)
				}
				if in.RequestedProcedurePriority != c.want {
					t.Fatalf("RequestedProcedurePriority %q, want %q", in.RequestedProcedurePriority, c.want)
				}
			})
		}
	}
}

func TestCharacterSets(t *testing.T) {
	for _, sx := range syntaxes {
		e := sx.enc
		for _, c := range []struct {
			name    string
			charset string
			value   string // bytes of Patient's Name and Institution Name
			want    string
			wantErr error
		}{
			{"default", "", "Doe^John", "Doe^John", nil},
			{"Latin-1", "ISO_IR 100", "M\xfcller^J\xfcrgen", "Müller^Jürgen", nil},
			{"UTF-8", "ISO_IR 192", "Müller^Jürgen", "Müller^Jürgen", nil},
			{"Cyrillic", "ISO_IR 144", "\xbb\xee\xda\xe1\xd5\xd4\xd5\xd2^\xb0\xdd\xd4\xe0\xd5\xd9", "Люкседев^Андрей", nil},
			// PS3.5 H.3.1: JIS X 0208 through ISO 2022 escapes.
			{"Japanese", `\ISO 2022 IR 87`, "Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B", "Yamada^Tarou=山田^太郎", nil},
			{"unknown", "ISO_IR 999", "Doe^John", "Doe^John", nil},
			{"unknown, not UTF-8", "ISO_IR 999", "M\xfcller", "M\uFFFDller", nil},
			// The parser panics on ISO_IR 166 (Thai): its encoding name is
			// missing from golang.org/x/text's index.
			{"Thai", "ISO_IR 166", "\xca\xc1\xa1\xd2\xc3", "", ErrMalformed},
		} {
			t.Run(uid.Name(sx.ts)+"/"+c.name, func(t *testing.T) {
				var ds [][]byte
				if c.charset != "" {
					ds = append(ds, e.str(0x00080005, "CS", c.charset))
				}
				ds = append(ds, e.classAndInstance(), e.str(0x00080080, "LO", c.value), e.str(0x00100010, "PN", c.value), e.studyAndSeries())
				in, err := Parse(file(t, sx.ts, bytes.Join(ds, nil)), true)
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("Parse: %v, want %v", err, c.wantErr)
				}
				if err != nil {
					return
				}
				if in.PatientName != c.want || in.InstitutionName != c.want {
					t.Fatalf("PatientName %q, InstitutionName %q, want %q", in.PatientName, in.InstitutionName, c.want)
				}
				var wantSet []string
				if c.charset != "" {
					wantSet = strings.Split(c.charset, `\`)
				}
				if !reflect.DeepEqual(in.SpecificCharacterSet, wantSet) {
					t.Fatalf("SpecificCharacterSet %q, want %q", in.SpecificCharacterSet, wantSet)
				}
			})
		}
	}
}

// TestEncapsulated checks an encapsulated transfer syntax, including one
// newer than the parser's registry: the data set is read as Explicit VR
// Little Endian and the encapsulated pixel data is not reached.
func TestEncapsulated(t *testing.T) {
	const htj2k = "1.2.840.10008.1.2.4.201" // High-Throughput JPEG 2000 Lossless, 2023
	for _, ts := range []string{"1.2.840.10008.1.2.4.50", htj2k} {
		if !uid.IsEncapsulatedTransferSyntax(ts) {
			t.Fatalf("pkg/uid does not know %s", ts)
		}
		ds, _ := stopDataSet(explicitLE)
		in, err := Parse(file(t, ts, ds), true)
		if err != nil {
			t.Fatalf("%s: %v", ts, err)
		}
		want := stopWant
		want.TransferSyntaxUID = ts
		if !reflect.DeepEqual(*in, want) {
			t.Fatalf("%s:\n got %+v\nwant %+v", ts, in, want)
		}
	}
}

func TestNumberOfFrames(t *testing.T) {
	e := explicitLE
	for _, c := range []struct {
		name string
		in   []byte
		want int
	}{
		{"not an image", nil, 0},
		{"image", e.us(0x00280010, 16), 1},
		{"pixel data without rows", e.hdr(0x7FE00010, "OW", 8), 1},
		{"multi-frame", append(e.str(0x00280008, "IS", "12"), e.us(0x00280010, 16)...), 12},
	} {
		in, err := Parse(file(t, uid.ExplicitVRLittleEndian, bytes.Join([][]byte{e.classAndInstance(), e.studyAndSeries(), c.in}, nil)), true)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if in.NumberOfFrames != c.want {
			t.Errorf("%s: NumberOfFrames %d, want %d", c.name, in.NumberOfFrames, c.want)
		}
	}
}

func TestInstanceJSON(t *testing.T) {
	b, err := json.Marshal(&stopWant)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"sop_class_uid":"1.2.840.10008.5.1.4.1.1.2","sop_instance_uid":"1.2.826.0.1.3680043.2.1125.1.1",` +
		`"study_instance_uid":"1.2.826.0.1.3680043.2.1125.1.2","series_instance_uid":"1.2.826.0.1.3680043.2.1125.1.3",` +
		`"transfer_syntax_uid":"","patient_name":"Doe^Jane","patient_identity_removed":"YES","study_date":"20240131","modality":"CT",` +
		`"requested_procedure_priority":"HIGH","image_type":["ORIGINAL","PRIMARY","AXIAL"],"specific_character_set":["ISO_IR 100"],` +
		`"instance_number":7,"number_of_frames":1,"rows":512,"columns":256}`
	if string(b) != want {
		t.Fatalf("JSON\n got %s\nwant %s", b, want)
	}
}

// A structured report's content sequence (0040,A730) follows Requested
// Procedure Priority and can be megabytes long: Parse stops at its tag.
func TestParseStopsBeforeSRContent(t *testing.T) {
	for _, sx := range syntaxes {
		if sx.ts == uid.DeflatedExplicitVRLittleEndian {
			continue // compressed offsets differ; the stop rule is the same
		}
		ds, stop := stopDataSet(sx.enc)
		ds = append(ds[:stop], sx.enc.hdr(0x0040A730, "SQ", 0xFFFFFFF0)...)
		f := file(t, sx.ts, ds)
		got, err := Parse(f[:len(f)-len(ds)+stop+4], false)
		if err != nil || got.RequestedProcedurePriority != "HIGH" || got.SOPInstanceUID != testInstance {
			t.Fatalf("%s: Parse = %+v, %v", uid.Name(sx.ts), got, err)
		}
	}
}
