package genimage

import (
	"bytes"
	"fmt"
	"image/png"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	grail "github.com/grailbio/go-dicom"
	"github.com/grailbio/go-dicom/dicomtag"
	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/pacsflow/pacsflow/internal/dicomtest"
	"github.com/pacsflow/pacsflow/pkg/dicommeta"
	"github.com/pacsflow/pacsflow/pkg/dicomwrite"
	"github.com/pacsflow/pacsflow/pkg/imaging"
	"github.com/pacsflow/pacsflow/pkg/part10"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

// The interoperability tests run DCMTK's dcmdump and dcmconv and dicom3tools' dciodvfy, which
// must be in PATH (./scripts/test.sh installs them).

func tool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not in PATH: install it (apt-get install %s) or run ./scripts/test.sh", name, pkg)
	}
	return p
}

// gradient is a rows×cols image whose values run from 0 at the left to 1 at the right.
func gradient(rows, cols int) Image {
	img := Image{Rows: rows, Cols: cols, Values: make([]float32, rows*cols)}
	for i := range img.Values {
		img.Values[i] = float32(i%cols) / float32(cols-1)
	}
	return img
}

func params() Params {
	return Params{
		RequestID: "01J9Z3Q8K6", Task: "synthesize", Prompt: "nodule",
		Seed: 1<<63 + 5, Index: 0, Count: 2, ModelName: "pacsflow-reference", ModelVersion: "1.0.0",
		Time: time.Date(2026, 3, 4, 15, 6, 7, 0, time.FixedZone("CET", 3600)),
	}
}

// source is the Source of sourceInstance.
func source() *Source {
	return &Source{
		StudyInstanceUID: "1.2.826.0.1.3680043.10.1", SeriesInstanceUID: "1.2.826.0.1.3680043.10.1.1",
		SOPInstanceUID: "1.2.826.0.1.3680043.10.1.1.1", SOPClassUID: "1.2.840.10008.5.1.4.1.1.1",
		Modality: "CR", PatientName: "DOE^JANE", PatientID: "PAT-1", StudyDescription: "CHEST PA",
	}
}

// sourceInstance is a clinical-looking instance, as a modality sends one.
func sourceInstance() dicomtest.Instance {
	s := source()
	return dicomtest.Instance{
		SOPClassUID: s.SOPClassUID, SOPInstanceUID: s.SOPInstanceUID,
		StudyInstanceUID: s.StudyInstanceUID, SeriesInstanceUID: s.SeriesInstanceUID,
		Modality: s.Modality, PatientID: s.PatientID, PatientName: s.PatientName, StudyDescription: s.StudyDescription,
		AccessionNumber: "ACC-1", SeriesNumber: 1, InstanceNumber: 1, PixelBytes: 64,
	}
}

func write(t *testing.T, src *Source, img Image, p Params, cfg Config) *Object {
	t.Helper()
	obj, err := Write(src, img, p, cfg)
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	return obj
}

func file(t *testing.T, b []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "x.dcm")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// cases are the objects the interoperability tests check.
var cases = []struct {
	name string
	src  func() *Source
	p    func() Params
}{
	{"with a source", source, params},
	{"without a source", func() *Source { return nil }, params},
	{"de-identified source", func() *Source {
		s := source()
		s.PatientIdentityRemoved = true
		return s
	}, params},
	{"UTF-8 text, no prompt, last of many", func() *Source {
		s := source()
		s.PatientName = "MÜLLER^ANNA"
		return s
	}, func() Params {
		p := params()
		p.Prompt, p.Task, p.Index, p.Count = "", "débruitage", 99, 100
		return p
	}},
}

// TestDciodvfy: dicom3tools' validator reports no error against the Multi-frame Grayscale Word
// SC IOD, but for Synthetic Data (0008,001C), which its 2022 dictionary lacks (see the package
// doc). Its warnings are for the same attribute and for the private elements (not in its
// dictionary, not in the IOD) and for the empty Laterality, unknown for a generated image.
func TestDciodvfy(t *testing.T) {
	dciodvfy := tool(t, "dciodvfy", "dicom3tools")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			obj := write(t, c.src(), gradient(32, 24), c.p(), Config{})
			out, err := exec.Command(dciodvfy, file(t, obj.Part10)).CombinedOutput()
			if err != nil {
				t.Fatalf("dciodvfy: %v\n%s", err, out)
			}
			if !strings.Contains(string(out), "MultiframeGrayscaleWordSCImage") {
				t.Errorf("dciodvfy did not take it for a Multi-frame Grayscale Word SC image:\n%s", out)
			}
			for _, line := range strings.Split(string(out), "\n") {
				if strings.Contains(line, "Error") && !strings.Contains(line, "(0x0008,0x001c)") {
					t.Errorf("dciodvfy: %s", line)
				}
			}
			if t.Failed() {
				t.Logf("dciodvfy output:\n%s", out)
			}
		})
	}
}

// TestParsers: both Go parsers and DCMTK read the objects, with the values written.
func TestParsers(t *testing.T) {
	dcmdump := tool(t, "dcmdump", "dcmtk")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src, p := c.src(), c.p()
			obj := write(t, src, gradient(32, 24), p, Config{})

			ds, err := dicom.Parse(bytes.NewReader(obj.Part10), int64(len(obj.Part10)), nil)
			if err != nil {
				t.Fatalf("suyashkumar/dicom: %v", err)
			}
			str := func(tg tag.Tag) string {
				e, err := ds.FindElementByTag(tg)
				if err != nil {
					return ""
				}
				return strings.Trim(strings.Join(e.Value.GetValue().([]string), `\`), " \x00")
			}
			wantName := "SYNTHETIC^PHANTOM"
			if src != nil {
				wantName = src.PatientName
			}
			for _, f := range []struct{ what, got, want string }{
				{"SOP Class", str(tag.SOPClassUID), SOPClassUID},
				{"SOP Instance", str(tag.SOPInstanceUID), obj.SOPInstanceUID},
				{"Study Instance", str(tag.StudyInstanceUID), obj.StudyInstanceUID},
				{"Series Instance", str(tag.SeriesInstanceUID), obj.SeriesInstanceUID},
				{"Patient's Name", str(tag.PatientName), wantName},
				{"Image Type", str(tag.ImageType), `DERIVED\SECONDARY\SYNTHETIC`},
				{"Synthetic Data", str(tag.SyntheticData), "YES"},
				{"Conversion Type", str(tag.ConversionType), "SYN"},
				{"Instance Number", str(tag.InstanceNumber), fmt.Sprint(p.Index + 1)},
				{"Image Comments", str(tag.ImageComments), "SYNTHETIC IMAGE generated by pacsflow-reference 1.0.0, task " + p.Task + ", not for diagnosis"},
				{"Content Date", str(tag.ContentDate) + str(tag.ContentTime) + str(tag.TimezoneOffsetFromUTC), "20260304150607+0100"},
			} {
				if f.got != f.want {
					t.Errorf("suyashkumar/dicom: %s %q, want %q", f.what, f.got, f.want)
				}
			}
			for _, prefix := range []string{"SYNTHETIC - ", "SYNTHETIC "} {
				if d := str(tag.StudyDescription) + "|" + str(tag.SeriesDescription); !strings.Contains(d, prefix) {
					t.Errorf("descriptions %q lack %q", d, prefix)
				}
			}
			if _, err := ds.FindElementByTag(tag.SourceImageSequence); (err == nil) != (src != nil) {
				t.Errorf("Source Image Sequence present: %v, want %v", err == nil, src != nil)
			}

			gds, err := grail.ReadDataSetInBytes(obj.Part10, grail.ReadOptions{})
			if err != nil {
				t.Fatalf("grailbio/go-dicom: %v", err)
			}
			for _, f := range []struct {
				tag  dicomtag.Tag
				want string
			}{
				{dicomtag.SOPInstanceUID, obj.SOPInstanceUID},
				{dicomtag.Tag{Group: PrivateGroup, Element: 0x0010}, PrivateCreator},
				{dicomtag.Tag{Group: PrivateGroup, Element: 0x1006}, p.RequestID},
				{dicomtag.Tag{Group: PrivateGroup, Element: 0x1003}, "9223372036854775813"},
			} {
				e, err := gds.FindElementByTag(f.tag)
				if err != nil {
					t.Errorf("grailbio/go-dicom: %v: %v", f.tag, err)
					continue
				}
				if got, _ := e.GetString(); strings.Trim(got, " \x00") != f.want {
					t.Errorf("grailbio/go-dicom: %v %q, want %q", f.tag, got, f.want)
				}
			}
			if e, err := gds.FindElementByTag(dicomtag.Tag{Group: PrivateGroup, Element: 0x1007}); err != nil || e.MustGetUInt32() != uint32(p.Index) {
				t.Errorf("grailbio/go-dicom: image index %v (%v), want %d", e, err, p.Index)
			}

			cmd := exec.Command(dcmdump, "-E", "+L", file(t, obj.Part10))
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil || stderr.Len() > 0 {
				t.Fatalf("dcmdump: %v\n%s", err, stderr.Bytes())
			}
			for _, want := range []string{
				"(0039,0010) LO [PACSFLOW GENERATE 1]", "(0039,1001) LO [" + p.Task + "]",
				"(0039,1003) LO [9223372036854775813]", "(0039,1004) LO [pacsflow-reference]",
				"(0039,1005) LO [1.0.0]", "(0039,1006) LO [01J9Z3Q8K6]",
				fmt.Sprintf("(0039,1007) UL %d ", p.Index), fmt.Sprintf("(0039,1008) UL %d ", p.Count),
			} {
				if !strings.Contains(string(out), want) {
					t.Errorf("dcmdump output lacks %q", want)
				}
			}
			if p.Prompt != "" && !strings.Contains(string(out), "(0039,1002) UT ["+p.Prompt+"]") {
				t.Errorf("dcmdump output lacks the prompt")
			}
			if t.Failed() {
				t.Logf("dcmdump output:\n%s", out)
			}
		})
	}
}

// TestDeterministic: the same inputs give the same bytes; the UIDs are valid, the study and series
// shared by a request's images from one source, the instance the image's own.
func TestDeterministic(t *testing.T) {
	img := gradient(16, 16)
	a := write(t, source(), img, params(), Config{})
	if b := write(t, source(), img, params(), Config{}); !bytes.Equal(a.Part10, b.Part10) {
		t.Error("the same inputs give different bytes")
	}
	uids := func(o *Object) [3]string { return [3]string{o.StudyInstanceUID, o.SeriesInstanceUID, o.SOPInstanceUID} }
	other := func(change func(p *Params, s *Source)) [3]string {
		p, s := params(), source()
		change(&p, s)
		return uids(write(t, s, img, p, Config{}))
	}
	base := uids(a)
	for _, c := range []struct {
		name string
		uids [3]string
		same [3]bool // study, series, instance
	}{
		{"next index", other(func(p *Params, _ *Source) { p.Index = 1 }), [3]bool{true, true, false}},
		{"other request", other(func(p *Params, _ *Source) { p.RequestID += "x" }), [3]bool{}},
		{"other source", other(func(_ *Params, s *Source) { s.SOPInstanceUID += ".2" }), [3]bool{}},
		{"other prompt, seed and time", other(func(p *Params, _ *Source) {
			p.Prompt, p.Seed, p.Time = "x", 1, p.Time.Add(time.Hour)
		}), [3]bool{true, true, true}},
	} {
		for k, what := range []string{"study", "series", "instance"} {
			if (c.uids[k] == base[k]) != c.same[k] {
				t.Errorf("%s: %s UID %s, first %s; want the same: %v", c.name, what, c.uids[k], base[k], c.same[k])
			}
		}
	}
	for _, u := range base {
		if err := uid.Validate(u); err != nil || !strings.HasPrefix(u, "2.25.") {
			t.Errorf("UID %s: %v, want a valid 2.25 UID", u, err)
		}
	}
	if base[0] == base[1] || base[1] == base[2] {
		t.Errorf("UIDs repeat: %v", base)
	}
}

// TestUIDRoot: under a site's root the UIDs take all 64 characters, and a root too long to
// leave enough of the hash is refused.
func TestUIDRoot(t *testing.T) {
	for _, root := range []string{"1.2.826.0.1.3680043.10.543", "9", strings.Repeat("1", 39)} {
		o := write(t, source(), gradient(4, 4), params(), Config{UIDRoot: root})
		for _, u := range []string{o.StudyInstanceUID, o.SeriesInstanceUID, o.SOPInstanceUID} {
			if err := uid.Validate(u); err != nil || !strings.HasPrefix(u, root+".") || len(u) != uid.MaxLen {
				t.Errorf("root %s: UID %s (%d characters): %v", root, u, len(u), err)
			}
		}
	}
	for _, root := range []string{strings.Repeat("1", 40), "1.02", "2.25."} {
		if _, err := Write(source(), gradient(4, 4), params(), Config{UIDRoot: root}); err == nil || !strings.Contains(err.Error(), "UID root") {
			t.Errorf("root %q: %v, want a refusal", root, err)
		}
	}
}

// TestPixels: imaging.Decode reads round(4095·v) back, values outside [0,1] clamped, and PNG
// renders them as round(255·v) within one grey level.
func TestPixels(t *testing.T) {
	img := gradient(5, 7)
	img.Values[0], img.Values[1] = -0.5, 1.5
	obj := write(t, nil, img, params(), Config{})
	f, err := imaging.Decode(obj.Part10)
	if err != nil {
		t.Fatal(err)
	}
	if f.Rows != 5 || f.Cols != 7 || f.Photometric != "MONOCHROME2" || f.NumberOfFrames > 1 || f.Modality != "OT" {
		t.Fatalf("decoded %d×%d %s, %d frames, modality %s", f.Rows, f.Cols, f.Photometric, f.NumberOfFrames, f.Modality)
	}
	want := func(i int) float64 { return math.Round(float64(min(max(img.Values[i], 0), 1)) * 4095) }
	for i, v := range f.Values {
		if float64(v) != want(i) {
			t.Errorf("pixel %d: %v, want %v", i, v, want(i))
		}
	}

	b, err := PNG(obj.Part10)
	if err != nil {
		t.Fatal(err)
	}
	p, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("the PNG does not decode: %v", err)
	}
	if r := p.Bounds(); r.Dx() != 7 || r.Dy() != 5 {
		t.Fatalf("PNG of %v, want 7×5", r)
	}
	for i := range f.Values {
		g, _, _, _ := p.At(i%7, i/7).RGBA()
		if d := math.Abs(float64(g>>8) - want(i)/4095*255); d > 1 {
			t.Errorf("pixel %d: grey %d, want %.1f", i, g>>8, want(i)/4095*255)
		}
	}
}

// TestPNGWithoutWindow: an image without a window of its own spans its lowest to highest value.
func TestPNGWithoutWindow(t *testing.T) {
	in := sourceInstance()
	in.Image = &dicomtest.Image{Rows: 1, Cols: 3, BitsStored: 12, Photometric: "MONOCHROME1", Values: []uint16{100, 150, 200}}
	b, err := PNG(in.Part10())
	if err != nil {
		t.Fatal(err)
	}
	p, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	for x, want := range []uint32{255, 128, 0} { // MONOCHROME1: the lowest is white
		if g, _, _, _ := p.At(x, 0).RGBA(); g>>8 != want {
			t.Errorf("pixel %d: grey %d, want %d", x, g>>8, want)
		}
	}
}

// TestWriteRefuses: what Write refuses, each named.
func TestWriteRefuses(t *testing.T) {
	for _, c := range []struct {
		name   string
		change func(p *Params, img *Image, s *Source)
		want   string
	}{
		{"no request ID", func(p *Params, _ *Image, _ *Source) { p.RequestID = "" }, "request ID"},
		{"long task", func(p *Params, _ *Image, _ *Source) { p.Task = strings.Repeat("x", 65) }, "longer than 64"},
		{"backslash", func(p *Params, _ *Image, _ *Source) { p.ModelVersion = `1\2` }, "backslash"},
		{"index past count", func(p *Params, _ *Image, _ *Source) { p.Index = 2 }, "image 2 of 2"},
		{"no time", func(p *Params, _ *Image, _ *Source) { p.Time = time.Time{} }, "no request time"},
		{"invalid prompt", func(p *Params, _ *Image, _ *Source) { p.Prompt = "\xff" }, "UTF-8"},
		{"size and values disagree", func(_ *Params, img *Image, _ *Source) { img.Rows = 3 }, "has 16 values"},
		{"too wide", func(_ *Params, img *Image, _ *Source) { img.Cols = 1 << 16 }, "want 1 to 65535"},
		{"NaN", func(_ *Params, img *Image, _ *Source) { img.Values[5] = float32(math.NaN()) }, "value 5 (row 1, column 1) is NaN"},
		{"invalid source UID", func(_ *Params, _ *Image, s *Source) { s.SOPInstanceUID = "1.2.x" }, "source SOP Instance UID"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, img, s := params(), gradient(4, 4), source()
			c.change(&p, &img, s)
			if _, err := Write(s, img, p, Config{}); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Write: %v, want an error with %q", err, c.want)
			}
		})
	}
}

// TestSourceOf: the Source of a modality's instance, and of one that says it was de-identified.
func TestSourceOf(t *testing.T) {
	got, err := SourceOf(sourceInstance().Part10())
	if err != nil {
		t.Fatal(err)
	}
	if want := source(); *got != *want {
		t.Errorf("SourceOf:\n got %+v\nwant %+v", got, want)
	}

	d := minimal(source())
	d.Text(tag.PatientBirthDate, "19700101")
	d.Text(tag.PatientSex, "F")
	d.Text(tag.PatientIdentityRemoved, "YES")
	b, err := d.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if got, err = SourceOf(b); err != nil || !got.PatientIdentityRemoved || got.PatientBirthDate != "19700101" || got.PatientSex != "F" {
		t.Errorf("de-identified source: %+v, %v", got, err)
	}
	if _, err := SourceOf([]byte("not DICOM")); err == nil {
		t.Error("SourceOf accepts what is not DICOM")
	}
}

// minimal is the data set of an instance of s with the attributes SourceOf needs.
func minimal(s *Source) dicomwrite.DataSet {
	var d dicomwrite.DataSet
	d.Text(tag.SOPClassUID, s.SOPClassUID)
	d.Text(tag.SOPInstanceUID, s.SOPInstanceUID)
	d.Text(tag.StudyInstanceUID, s.StudyInstanceUID)
	d.Text(tag.SeriesInstanceUID, s.SeriesInstanceUID)
	d.Text(tag.Modality, s.Modality)
	d.Text(tag.PatientName, s.PatientName)
	d.Text(tag.PatientID, s.PatientID)
	return d
}

// encode returns the Part 10 file of d.
func encode(t *testing.T, d dicomwrite.DataSet) []byte {
	t.Helper()
	b, err := d.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// synthetic is why dicommeta, as ingest, understand and notify read an instance, takes it for a
// synthetic image; "" when it does not.
func synthetic(t *testing.T, instance []byte, complete bool) string {
	t.Helper()
	in, err := dicommeta.Parse(instance, complete)
	if err != nil {
		t.Fatalf("dicommeta.Parse: %v", err)
	}
	return in.Synthetic()
}

// TestSynthetic: the services take every object Write makes for a synthetic image, and neither
// a modality's instance nor a pkg/synth phantom, which is synthetic data meant to pass through
// the pipeline like an acquired image.
func TestSynthetic(t *testing.T) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			obj := write(t, c.src(), gradient(8, 8), c.p(), Config{})
			in, err := dicommeta.Parse(obj.Part10, true)
			if err != nil {
				t.Fatal(err)
			}
			if in.Synthetic() == "" {
				t.Error("the written object is not synthetic to dicommeta")
			}
			// Either marker alone is enough, so that an object a system strips of one is still
			// recognised: both are written.
			if in.ConversionType != "SYN" || !slices.Contains(in.ImageType, "SYNTHETIC") {
				t.Errorf("Conversion Type %q, Image Type %q: want SYN and SYNTHETIC", in.ConversionType, in.ImageType)
			}
		})
	}
	phantom := minimal(source())
	phantom.Text(tag.ImageType, "DERIVED", "SECONDARY")
	phantom.Text(tag.SyntheticData, "YES")
	phantom.Text(tag.StudyDescription, "SYNTHETIC CHEST PHANTOM")
	phantom.Text(tag.SeriesDescription, "SYNTHETIC CHEST PA (CR)")
	phantom.Text(tag.Manufacturer, "pacsflow synth")
	for _, c := range []struct {
		name     string
		instance []byte
	}{
		{"modality's instance", sourceInstance().Part10()},
		{"pkg/synth phantom: Synthetic Data YES, SYNTHETIC descriptions", encode(t, phantom)},
	} {
		t.Run(c.name, func(t *testing.T) {
			if why := synthetic(t, c.instance, true); why != "" {
				t.Errorf("synthetic to dicommeta: %s", why)
			}
		})
	}
}

// TestTransferSyntaxes: SourceOf reads a de-identified source transcoded by DCMTK into each
// native transfer syntax, and the object transcoded the same way is still synthetic to
// dicommeta, whole and as a prefix that ends inside the pixel data, as ingest buffers one.
func TestTransferSyntaxes(t *testing.T) {
	dcmconv := tool(t, "dcmconv", "dcmtk")
	d := minimal(source())
	d.Text(tag.PatientIdentityRemoved, "YES")
	d.Sequence(tag.ReferencedImageSequence, dicomwrite.Code("1", "DCM", "x"), dicomwrite.Code("2", "DCM", "y")) // to read past
	src := encode(t, d)
	obj := write(t, source(), gradient(8, 8), params(), Config{})
	for _, ts := range []struct{ option, uid string }{
		{"+te", uid.ExplicitVRLittleEndian}, {"+ti", uid.ImplicitVRLittleEndian},
		{"+tb", uid.ExplicitVRBigEndian}, {"+td", uid.DeflatedExplicitVRLittleEndian},
	} {
		t.Run(ts.option, func(t *testing.T) {
			conv := func(b []byte) []byte {
				in := file(t, b)
				out := in + ts.option
				if msg, err := exec.Command(dcmconv, ts.option, in, out).CombinedOutput(); err != nil {
					t.Fatalf("dcmconv %s: %v\n%s", ts.option, err, msg)
				}
				b, err := os.ReadFile(out)
				if err != nil {
					t.Fatal(err)
				}
				if meta, _, err := part10.ParseHeader(b); err != nil || meta.TransferSyntaxUID != ts.uid {
					t.Fatalf("dcmconv wrote %+v, %v", meta, err)
				}
				return b
			}
			if s, err := SourceOf(conv(src)); err != nil || !s.PatientIdentityRemoved || s.SOPInstanceUID != source().SOPInstanceUID {
				t.Errorf("SourceOf: %+v, %v", s, err)
			}
			b := conv(obj.Part10)
			if why := synthetic(t, b, true); why == "" {
				t.Error("the transcoded object is not synthetic to dicommeta")
			}
			// Conversion Type and Image Type lie before (0040,1003), where dicommeta stops: a
			// prefix that ends inside the 128 bytes of pixel data has them. The last 100 bytes
			// of so small a deflated stream hold more than pixel data, and dicommeta rightly
			// asks for more of it.
			if ts.uid != uid.DeflatedExplicitVRLittleEndian {
				if why := synthetic(t, b[:len(b)-100], false); why == "" {
					t.Error("a prefix of the transcoded object is not synthetic to dicommeta")
				}
			}
		})
	}
}
