package dicommeta

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/pacsflow/pacsflow/pkg/part10"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

// Test UIDs of the synthesized data sets.
const (
	testClass    = uid.CTImageStorage
	testInstance = "1.2.826.0.1.3680043.2.1125.1.1"
	testStudy    = "1.2.826.0.1.3680043.2.1125.1.2"
	testSeries   = "1.2.826.0.1.3680043.2.1125.1.3"
)

// enc encodes data set elements in one of the native transfer syntaxes.
type enc struct {
	bo       binary.AppendByteOrder
	explicit bool
}

var (
	implicitLE = enc{binary.LittleEndian, false}
	explicitLE = enc{binary.LittleEndian, true}
	explicitBE = enc{binary.BigEndian, true}
)

// syntaxes are the native transfer syntaxes with the encoding of their
// (inflated) data set.
var syntaxes = []struct {
	ts  string
	enc enc
}{
	{uid.ImplicitVRLittleEndian, implicitLE},
	{uid.ExplicitVRLittleEndian, explicitLE},
	{uid.ExplicitVRBigEndian, explicitBE},
	{uid.DeflatedExplicitVRLittleEndian, explicitLE},
}

var longVR = map[string]bool{"OB": true, "OD": true, "OF": true, "OL": true, "OV": true, "OW": true,
	"SQ": true, "SV": true, "UC": true, "UN": true, "UR": true, "UT": true, "UV": true}

// hdr encodes an element header declaring length n, whatever follows.
func (e enc) hdr(t uint32, vr string, n uint32) []byte {
	b := e.bo.AppendUint16(nil, uint16(t>>16))
	b = e.bo.AppendUint16(b, uint16(t))
	switch {
	case !e.explicit || t>>16 == 0xFFFE:
		return e.bo.AppendUint32(b, n)
	case longVR[vr]:
		b = append(b, vr[0], vr[1], 0, 0)
		return e.bo.AppendUint32(b, n)
	}
	b = append(b, vr...)
	return e.bo.AppendUint16(b, uint16(n))
}

// el encodes an element with value v.
func (e enc) el(t uint32, vr string, v []byte) []byte {
	return append(e.hdr(t, vr, uint32(len(v))), v...)
}

// str encodes a string element, padded to even length.
func (e enc) str(t uint32, vr, s string) []byte {
	v := []byte(s)
	if len(v)%2 == 1 {
		pad := byte(' ')
		if vr == "UI" {
			pad = 0
		}
		v = append(v, pad)
	}
	return e.el(t, vr, v)
}

// us encodes a US element.
func (e enc) us(t uint32, n uint16) []byte { return e.el(t, "US", e.bo.AppendUint16(nil, n)) }

const undefined = 0xFFFFFFFF

// seq encodes a sequence of the given encoded items, of undefined length
// when undef.
func (e enc) seq(t uint32, undef bool, items ...[]byte) []byte {
	body := bytes.Join(items, nil)
	if undef {
		b := append(e.hdr(t, "SQ", undefined), body...)
		return append(b, e.hdr(0xFFFEE0DD, "", 0)...)
	}
	return append(e.hdr(t, "SQ", uint32(len(body))), body...)
}

// item encodes a sequence item holding the encoded elements.
func (e enc) item(undef bool, elements ...[]byte) []byte {
	body := bytes.Join(elements, nil)
	if undef {
		b := append(e.hdr(0xFFFEE000, "", undefined), body...)
		return append(b, e.hdr(0xFFFEE00D, "", 0)...)
	}
	return append(e.hdr(0xFFFEE000, "", uint32(len(body))), body...)
}

// classAndInstance encodes the SOP Class and SOP Instance UIDs, which
// belong after any (0008,0005) to (0008,0008) elements.
func (e enc) classAndInstance() []byte {
	return append(e.str(0x00080016, "UI", testClass), e.str(0x00080018, "UI", testInstance)...)
}

// studyAndSeries encodes the Study and Series Instance UIDs.
func (e enc) studyAndSeries() []byte {
	return append(e.str(0x0020000D, "UI", testStudy), e.str(0x0020000E, "UI", testSeries)...)
}

// file is a Part 10 file of data set ds (encoded for ts, deflated here when
// ts says so), with the header part10.AppendHeader writes.
func file(tb testing.TB, ts string, ds []byte) []byte {
	tb.Helper()
	b := metaHeader(ts)
	if ts != uid.DeflatedExplicitVRLittleEndian {
		return append(b, ds...)
	}
	var z bytes.Buffer
	w, err := flate.NewWriter(&z, flate.DefaultCompression)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := w.Write(ds); err != nil {
		tb.Fatal(err)
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	return append(b, z.Bytes()...)
}

// metaHeader is the preamble and file meta information for a test data set.
func metaHeader(ts string) []byte {
	return part10.AppendHeader(nil, &part10.Meta{
		MediaStorageSOPClassUID:    testClass,
		MediaStorageSOPInstanceUID: testInstance,
		TransferSyntaxUID:          ts,
		ImplementationClassUID:     uid.ImplementationClassUID,
	})
}

// totalAlloc returns how many bytes f allocates.
func totalAlloc(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// sample is one of the suyashkumar test files converted to one transfer syntax.
type sample struct {
	name string
	path string
	data []byte
}

// dcmconvFlags are dcmconv's options for the native transfer syntaxes.
var dcmconvFlags = []struct{ name, flag string }{
	{"explicit", "+te"}, {"implicit", "+ti"}, {"bigendian", "+tb"}, {"deflated", "+td"},
}

// needDCMTK fails the test when the DCMTK tools the tests use are missing.
func needDCMTK(tb testing.TB) {
	tb.Helper()
	for _, tool := range []string{"dcmconv", "dcmdump"} {
		if _, err := exec.LookPath(tool); err != nil {
			tb.Fatalf("%s not found (%v): install DCMTK (apt-get install dcmtk)", tool, err)
		}
	}
}

// samples converts the six test files of the suyashkumar module to each
// native transfer syntax, in a temporary directory.
func samples(tb testing.TB) []sample {
	tb.Helper()
	needDCMTK(tb)
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/suyashkumar/dicom").Output()
	if err != nil {
		tb.Fatalf("locating the suyashkumar/dicom module: %v", err)
	}
	testdata := filepath.Join(strings.TrimSpace(string(out)), "testdata")
	dir := tb.TempDir()
	var res []sample
	for i := 1; i <= 6; i++ {
		src := filepath.Join(testdata, fmt.Sprintf("%d.dcm", i))
		for _, c := range dcmconvFlags {
			name := fmt.Sprintf("%d-%s", i, c.name)
			dst := filepath.Join(dir, name+".dcm")
			if out, err := exec.Command("dcmconv", c.flag, src, dst).CombinedOutput(); err != nil {
				tb.Fatalf("dcmconv %s %s: %v\n%s", c.flag, src, err, out)
			}
			data, err := os.ReadFile(dst)
			if err != nil {
				tb.Fatal(err)
			}
			res = append(res, sample{name: name, path: dst, data: data})
		}
	}
	return res
}

// dump is what dcmdump prints of a file: top-level values of the data set
// by tag ("0010,0010") and their lengths ("7fe0,0010 length", with a
// trailing comma), and values in the first item of top-level sequences
// ("0040,0275/0040,1003").
type dump map[string]string

// dcmdump runs dcmdump on path and collects its values.
func dcmdump(tb testing.TB, path string) dump {
	tb.Helper()
	out, err := exec.Command("dcmdump", "-q", "-M", "+L", "-Un", path).Output()
	if err != nil {
		tb.Fatalf("dcmdump %s: %v", path, err)
	}
	d := dump{}
	var seq string // current top-level sequence
	items := 0     // items seen in it
	for line := range strings.Lines(string(out)) {
		line = strings.TrimRight(line, "\n")
		indent := len(line) - len(strings.TrimLeft(line, " "))
		rest := line[indent:]
		if len(rest) < 15 || rest[0] != '(' || rest[10] != ')' {
			continue
		}
		t := rest[1:10]
		hash := strings.LastIndex(rest, "#")
		value := strings.TrimSpace(rest[15:hash])
		switch {
		case strings.HasPrefix(value, "["):
			value = strings.TrimSuffix(strings.TrimPrefix(value, "["), "]")
		case strings.HasPrefix(value, "("): // (no value available), (Sequence ...)
			value = ""
		}
		switch {
		case indent == 0 && strings.HasPrefix(t, "fffe"):
		case indent == 0:
			d[t] = value
			d[t+" length"] = strings.Fields(rest[hash+1:])[0] // "56448," or "u/l,"
			seq, items = t, 0
		case indent == 2 && t == "fffe,e000":
			items++
		case indent == 4 && items == 1:
			d[seq+"/"+t] = value
		}
	}
	return d
}

// instance is the Instance the dump describes, by the rules of Parse. Only
// the data set's values are in d, so the transfer syntax is passed.
func (d dump) instance(tb testing.TB, ts string) *Instance {
	tb.Helper()
	in := &Instance{
		SOPClassUID:                d["0008,0016"],
		SOPInstanceUID:             d["0008,0018"],
		StudyInstanceUID:           d["0020,000d"],
		SeriesInstanceUID:          d["0020,000e"],
		TransferSyntaxUID:          ts,
		PatientID:                  d["0010,0020"],
		PatientName:                d["0010,0010"],
		PatientBirthDate:           d["0010,0030"],
		PatientSex:                 d["0010,0040"],
		PatientIdentityRemoved:     d["0012,0062"],
		AccessionNumber:            d["0008,0050"],
		StudyDate:                  d["0008,0020"],
		StudyTime:                  d["0008,0030"],
		StudyDescription:           d["0008,1030"],
		StudyID:                    d["0020,0010"],
		ReferringPhysicianName:     d["0008,0090"],
		Modality:                   d["0008,0060"],
		BodyPartExamined:           d["0018,0015"],
		SeriesDescription:          d["0008,103e"],
		SeriesDate:                 d["0008,0021"],
		SeriesTime:                 d["0008,0031"],
		Manufacturer:               d["0008,0070"],
		InstitutionName:            d["0008,0080"],
		StationName:                d["0008,1010"],
		PhotometricInterpretation:  d["0028,0004"],
		RequestedProcedurePriority: d["0040,1003"],
		ImageType:                  d.list("0008,0008"),
		ConversionType:             d["0008,0064"],
		SpecificCharacterSet:       d.list("0008,0005"),
		SeriesNumber:               d.int(tb, "0020,0011"),
		InstanceNumber:             d.int(tb, "0020,0013"),
		NumberOfFrames:             d.int(tb, "0028,0008"),
		Rows:                       d.int(tb, "0028,0010"),
		Columns:                    d.int(tb, "0028,0011"),
		BitsAllocated:              d.int(tb, "0028,0100"),
		SamplesPerPixel:            d.int(tb, "0028,0002"),
	}
	if in.RequestedProcedurePriority == "" {
		in.RequestedProcedurePriority = d["0040,0275/0040,1003"]
	}
	if in.NumberOfFrames == 0 && in.Rows > 0 {
		in.NumberOfFrames = 1
	}
	return in
}

func (d dump) list(t string) []string {
	if d[t] == "" {
		return nil
	}
	return strings.Split(d[t], `\`)
}

func (d dump) int(tb testing.TB, t string) int {
	tb.Helper()
	v, ok := d[t]
	if !ok || v == "" {
		return 0
	}
	n, err := strconv.Atoi(strings.Split(v, `\`)[0])
	if err != nil {
		tb.Fatalf("dcmdump value of (%s) %q: %v", t, v, err)
	}
	return n
}
