package synth

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/pacsflow/pacsflow/pkg/imaging"
	"github.com/pacsflow/pacsflow/pkg/model"
	"github.com/pacsflow/pacsflow/pkg/part10"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

// These tests run the embedded generator with the project's Python: ./scripts/test.sh, or
// `. scripts/deps.sh && need_tensorflow`, sets PACSFLOW_PYTHON to .venv/bin/python.

func python(t testing.TB) Python {
	t.Helper()
	py := os.Getenv("PACSFLOW_PYTHON")
	if py == "" {
		t.Fatal("PACSFLOW_PYTHON is not set: run ./scripts/test.sh, or set it to a Python with numpy (.venv/bin/python, made by ./scripts/build.sh)")
	}
	return Python{Interpreter: py}
}

// write runs Write into a new folder and returns the folder and the result.
func write(t *testing.T, cfg Config) (string, *Result) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "out")
	res, err := Write(context.Background(), dir, cfg, python(t))
	if err != nil {
		t.Fatalf("Write(%+v): %v", cfg, err)
	}
	return dir, res
}

// files returns every file under dir by its slash-separated path, with its content.
func files(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		out[filepath.ToSlash(rel)] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func parse(t *testing.T, b []byte) dicom.Dataset {
	t.Helper()
	ds, err := dicom.Parse(bytes.NewReader(b), int64(len(b)), nil, dicom.SkipPixelData())
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return ds
}

// value returns an element's values as strings ("" when absent).
func value(ds dicom.Dataset, tg tag.Tag) string {
	e, err := ds.FindElementByTag(tg)
	if err != nil {
		return ""
	}
	switch v := e.Value.GetValue().(type) {
	case []string:
		return strings.Join(v, `\`)
	case []int:
		s := make([]string, len(v))
		for i, n := range v {
			s[i] = itoa(n)
		}
		return strings.Join(s, `\`)
	}
	return e.Value.String()
}

var itoa = strconv.Itoa

// TestDeterministic: the same Config writes the same bytes; another seed gives other UIDs, all
// valid and all different.
func TestDeterministic(t *testing.T) {
	cfg := Config{Studies: 2, Size: 96, CTSlices: 2, Finding: FindingAny, Seed: 7}
	dirA, resA := write(t, cfg)
	dirB, _ := write(t, cfg)
	a, b := files(t, dirA), files(t, dirB)
	if len(a) != 2*(2*2+2)+1 || len(a) != resA.Instances+1 {
		t.Fatalf("%d files (Result says %d instances), want %d instances and truth.json", len(a), resA.Instances, 2*(2*2+2))
	}
	for name, content := range a {
		if !bytes.Equal(content, b[name]) {
			t.Errorf("%s differs between two runs with the same seed", name)
		}
	}

	cfg.Seed = 8
	_, resC := write(t, cfg)
	uids := func(tr Truth) []string {
		var out []string
		for _, s := range tr.Studies {
			out = append(out, s.StudyInstanceUID)
			for _, f := range s.Files {
				out = append(out, f.SeriesInstanceUID, f.SOPInstanceUID)
			}
		}
		return out
	}
	seen := map[string]bool{}
	for _, u := range uids(resA.Truth) {
		if err := uid.Validate(u); err != nil || !strings.HasPrefix(u, "2.25.") {
			t.Errorf("UID %q: %v, want a valid 2.25 UID", u, err)
		}
		seen[u] = true
	}
	for _, u := range uids(resC.Truth) {
		if seen[u] {
			t.Errorf("UID %s appears with seed 7 and with seed 8", u)
		}
	}
	// Series UIDs repeat once per instance; everything else is unique.
	var sops []string
	for _, s := range resA.Truth.Studies {
		for _, f := range s.Files {
			sops = append(sops, f.SOPInstanceUID)
		}
	}
	if slices.Sort(sops); len(slices.Compact(sops)) != resA.Instances {
		t.Errorf("SOP Instance UIDs repeat: %d distinct of %d", len(sops), resA.Instances)
	}
}

// TestFindingModes: the label sets each mode gives, over many studies.
func TestFindingModes(t *testing.T) {
	const n = 200
	combos := func(finding string) map[[3]bool]int {
		out := map[[3]bool]int{}
		cfg := Config{Studies: n, Finding: finding, Seed: 3}
		for i := range n {
			out[cfg.flags(i)]++
		}
		return out
	}
	random := combos(FindingRandom)
	if len(random) != 8 {
		t.Errorf("random: %d of the 8 combinations in %d studies: %v", len(random), n, random)
	}
	perLabel := [3]int{}
	for c, k := range random {
		for l := range c {
			if c[l] {
				perLabel[l] += k
			}
		}
	}
	for l, k := range perLabel {
		if k < n/2-40 || k > n/2+40 { // p = 0.5: 40 is more than 5 standard deviations
			t.Errorf("random: %s in %d of %d studies", Labels[l], k, n)
		}
	}
	if none := combos(FindingNone); len(none) != 1 || none[[3]bool{}] != n {
		t.Errorf("none: %v", none)
	}
	anyC := combos(FindingAny)
	if len(anyC) != 7 || anyC[[3]bool{}] != 0 {
		t.Errorf("any: %v, want the 7 non-empty combinations", anyC)
	}
	for l, label := range Labels {
		want := [3]bool{}
		want[l] = true
		if got := combos(label); len(got) != 1 || got[want] != n {
			t.Errorf("%s: %v", label, got)
		}
	}
	mixed := Config{Finding: FindingMixed}
	wantMixed := [][3]bool{{}, {true, false, false}, {}, {false, true, false}, {}, {false, false, true}, {}, {true, false, false}}
	for i, want := range wantMixed {
		if got := mixed.flags(i); got != want {
			t.Errorf("mixed study %d: %v, want %v", i+1, got, want)
		}
	}

	err := Config{Studies: 1, Finding: "pneumothorax"}.Validate()
	if err == nil || !strings.Contains(err.Error(), strings.Join(FindingChoices(), ", ")) {
		t.Errorf("unknown finding: %v, want an error listing %v", err, FindingChoices())
	}
}

// TestTruth: truth.json is what Write returns, and its labels, findings and reports agree with
// the mode asked for.
func TestTruth(t *testing.T) {
	dir, res := write(t, Config{Studies: 6, Size: 64, ImagesPerSeries: 1, Finding: FindingMixed, Seed: 11})
	b, err := os.ReadFile(filepath.Join(dir, TruthFile))
	if err != nil {
		t.Fatal(err)
	}
	var truth Truth
	if err := json.Unmarshal(b, &truth); err != nil {
		t.Fatalf("truth.json: %v", err)
	}
	want, _ := json.Marshal(res.Truth)
	if got, _ := json.Marshal(truth); !bytes.Equal(got, want) {
		t.Errorf("truth.json differs from the Truth Write returned:\n%s\n%s", got, want)
	}
	if truth.Generator != "pacsflow synth" || truth.Seed != 11 || truth.Finding != FindingMixed || len(truth.Studies) != 6 {
		t.Errorf("truth.json header: %+v", truth)
	}
	for i, s := range truth.Studies {
		var present []string
		for _, l := range Labels {
			if s.Labels[l] {
				present = append(present, l)
			}
		}
		var found []string
		for l, f := range s.Findings {
			found = append(found, l)
			if f.Box[0] >= f.Box[2] || f.Box[1] >= f.Box[3] || f.Box[0] < 0 || f.Box[3] > 1 || (f.Side != "right" && f.Side != "left") || f.Zone == "" {
				t.Errorf("study %d: %s at %+v", i+1, l, f)
			}
		}
		slices.Sort(found)
		wantPresent := []string(nil)
		if i%2 == 1 {
			wantPresent = []string{Labels[i/2%3]}
		}
		switch {
		case !slices.Equal(present, wantPresent):
			t.Errorf("study %d: labels %v, want %v", i+1, present, wantPresent)
		case !slices.Equal(found, present):
			t.Errorf("study %d: findings %v, labels %v", i+1, found, present)
		case (len(present) == 0) != (s.Report == "no acute findings ."):
			t.Errorf("study %d: report %q for findings %v", i+1, s.Report, present)
		case len(present) == 1 && !strings.Contains(s.Report, present[0]):
			t.Errorf("study %d: report %q does not name %s", i+1, s.Report, present[0])
		case s.PatientName != "SYNTH^P000"+itoa(i+1) || s.AccessionNumber == "" || s.PatientID == "":
			t.Errorf("study %d: patient %q %q, accession %q", i+1, s.PatientName, s.PatientID, s.AccessionNumber)
		}
		if len(s.Files) != 2 {
			t.Fatalf("study %d: %d files, want a CR and a DX", i+1, len(s.Files))
		}
		for _, f := range s.Files {
			want := s.StudyInstanceUID + "/1-CR/1.dcm"
			if f.Modality == "DX" {
				want = s.StudyInstanceUID + "/2-DX/1.dcm"
			}
			if f.Path != want {
				t.Errorf("study %d: %s file at %s, want %s", i+1, f.Modality, f.Path, want)
			}
		}
	}
}

// TestInstances: the attributes of the CR and DX images, and their pixels through
// pkg/imaging as the pipeline reads them: the DX image stores 4095 − v and says
// MONOCHROME1, so after Preprocess both give the same image, which is the phantom's.
func TestInstances(t *testing.T) {
	const size = 128
	cfg := Config{Studies: 1, Size: size, ImagesPerSeries: 2, Finding: FindingAny, Seed: 5}
	dir, res := write(t, cfg)
	st := res.Truth.Studies[0]
	read := func(f File) []byte {
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(f.Path)))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	byPath := map[string][]byte{}
	for _, f := range st.Files {
		b := read(f)
		byPath[strings.TrimPrefix(f.Path, st.StudyInstanceUID+"/")] = b
		meta, _, err := part10.ParseHeader(b)
		if err != nil {
			t.Fatalf("%s: %v", f.Path, err)
		}
		ds := parse(t, b)
		wantClass := map[string]string{"CR": crImageStorage, "DX": dxImageStorage}[f.Modality]
		for _, c := range []struct {
			what, got, want string
		}{
			{"transfer syntax", meta.TransferSyntaxUID, uid.ExplicitVRLittleEndian},
			{"implementation class", meta.ImplementationClassUID, uid.ImplementationClassUID},
			{"media storage SOP class", meta.MediaStorageSOPClassUID, wantClass},
			{"media storage SOP instance", meta.MediaStorageSOPInstanceUID, f.SOPInstanceUID},
			{"SOP class", value(ds, tag.SOPClassUID), wantClass},
			{"SOP instance", value(ds, tag.SOPInstanceUID), f.SOPInstanceUID},
			{"study", value(ds, tag.StudyInstanceUID), st.StudyInstanceUID},
			{"series", value(ds, tag.SeriesInstanceUID), f.SeriesInstanceUID},
			{"modality", value(ds, tag.Modality), f.Modality},
			{"accession", value(ds, tag.AccessionNumber), st.AccessionNumber},
			{"patient name", value(ds, tag.PatientName), st.PatientName},
			{"patient ID", value(ds, tag.PatientID), st.PatientID},
			{"image type", value(ds, tag.ImageType), `DERIVED\SECONDARY`},
			{"burned in annotation", value(ds, tag.BurnedInAnnotation), "NO"},
			{"synthetic data", value(ds, tag.SyntheticData), "YES"},
			{"manufacturer", value(ds, tag.Manufacturer), "pacsflow synth"},
			{"bits", value(ds, tag.BitsAllocated) + "/" + value(ds, tag.BitsStored) + "/" + value(ds, tag.HighBit) + "/" + value(ds, tag.PixelRepresentation), "16/12/11/0"},
			{"pixel spacing", value(ds, tag.PixelSpacing), `2.734375\2.734375`},
			{"window", value(ds, tag.WindowCenter) + "/" + value(ds, tag.WindowWidth), "2048/4096"},
		} {
			if c.got != c.want {
				t.Errorf("%s: %s %q, want %q", f.Path, c.what, c.got, c.want)
			}
		}
		if d := value(ds, tag.SeriesDescription); !strings.HasPrefix(d, "SYNTHETIC") {
			t.Errorf("%s: Series Description %q does not say SYNTHETIC", f.Path, d)
		}
		for _, e := range ds.Elements {
			if e.Tag.Group%2 == 1 {
				t.Errorf("%s: private element %v", f.Path, e.Tag)
			}
		}
	}

	contract, err := model.ReadContract(filepath.Join(repoRoot(), "model", "reference"))
	if err != nil {
		t.Fatal(err)
	}
	ph, err := python(t).Render(context.Background(), []PhantomSpec{{Seed: st.PhantomSeed, Flags: cfg.flags(0), Variants: 2}})
	if err != nil {
		t.Fatal(err)
	}
	for k := range 2 {
		name := itoa(k+1) + ".dcm"
		cr, err := imaging.Decode(byPath["1-CR/"+name])
		if err != nil {
			t.Fatal(err)
		}
		dx, err := imaging.Decode(byPath["2-DX/"+name])
		if err != nil {
			t.Fatal(err)
		}
		if cr.Photometric != "MONOCHROME2" || dx.Photometric != "MONOCHROME1" || cr.Rows != size || dx.Cols != size || cr.Modality != "CR" || dx.Modality != "DX" {
			t.Fatalf("image %d: CR %s %d×%d %s, DX %s %d×%d %s", k+1, cr.Modality, cr.Rows, cr.Cols, cr.Photometric, dx.Modality, dx.Rows, dx.Cols, dx.Photometric)
		}
		for i := range cr.Values {
			if cr.Values[i]+dx.Values[i] != maxStored || cr.Values[i] < 0 {
				t.Fatalf("image %d pixel %d: CR %v, DX %v: want DX = 4095 − CR", k+1, i, cr.Values[i], dx.Values[i])
			}
		}
		a, b := contract.Preprocessing.Input(cr), contract.Preprocessing.Input(dx)
		var sum, worst float64
		for i := range a.Pixels {
			if math.Abs(float64(a.Pixels[i]-b.Pixels[i])) > 1e-6 {
				t.Fatalf("image %d pixel %d: CR gives %v, DX %v after Preprocess", k+1, i, a.Pixels[i], b.Pixels[i])
			}
			d := math.Abs(float64(a.Pixels[i]) - float64(ph[0].Images[k][i])/maxStored)
			sum += d
			worst = max(worst, d)
		}
		// Up to 128 and back to 64 samples each pixel a quarter pixel to either side: it
		// smooths by an eighth of the second difference per axis, most at the ribs' edges.
		if mean := sum / float64(len(a.Pixels)); mean > 0.008 || worst > 0.1 {
			t.Errorf("image %d: Preprocess differs from the phantom by %.4f on average, %.4f at most", k+1, mean, worst)
		}
	}
	if bytes.Equal(byPath["1-CR/1.dcm"][len(byPath["1-CR/1.dcm"])-2*size*size:], byPath["1-CR/2.dcm"][len(byPath["1-CR/2.dcm"])-2*size*size:]) {
		t.Error("images 1 and 2 of the CR series have the same pixels; image 2 should be blurred")
	}
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// TestCTSeries: the CT slices parse, carry their geometry and show the body in HU.
func TestCTSeries(t *testing.T) {
	dir, res := write(t, Config{Studies: 1, Size: 64, ImagesPerSeries: 1, CTSlices: 3, Finding: FindingNone, Seed: 9})
	var frame string
	n := 0
	for _, f := range res.Truth.Studies[0].Files {
		if f.Modality != "CT" {
			continue
		}
		n++
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(f.Path)))
		if err != nil {
			t.Fatal(err)
		}
		ds := parse(t, b)
		z := itoa(-5 * (n - 1))
		for _, c := range []struct{ what, got, want string }{
			{"path", f.Path[strings.Index(f.Path, "/")+1:], "3-CT/" + itoa(n) + ".dcm"},
			{"SOP class", value(ds, tag.SOPClassUID), uid.CTImageStorage},
			{"image type", value(ds, tag.ImageType), `DERIVED\SECONDARY\AXIAL`},
			{"instance number", value(ds, tag.InstanceNumber), itoa(n)},
			{"slice location", value(ds, tag.SliceLocation), z},
			{"image position", value(ds, tag.ImagePositionPatient), `-174.6582031\-174.6582031\` + z},
			{"image orientation", value(ds, tag.ImageOrientationPatient), `1\0\0\0\1\0`},
			{"pixel representation", value(ds, tag.PixelRepresentation), "1"},
			{"rescale", value(ds, tag.RescaleIntercept) + "/" + value(ds, tag.RescaleSlope), "-1024/1"},
			{"size", value(ds, tag.Rows) + "x" + value(ds, tag.Columns), "512x512"},
		} {
			if c.got != c.want {
				t.Errorf("%s: %s %q, want %q", f.Path, c.what, c.got, c.want)
			}
		}
		if fr := value(ds, tag.FrameOfReferenceUID); uid.Validate(fr) != nil || (frame != "" && fr != frame) {
			t.Errorf("%s: Frame of Reference UID %q, want one valid UID for the series (%q)", f.Path, fr, frame)
		} else {
			frame = fr
		}
		img, err := imaging.Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		hu := map[float32]int{}
		for _, v := range img.Values {
			hu[v]++
		}
		for _, want := range []float32{huAir, huFat, huSoft, huLung, huBone} {
			if hu[want] == 0 {
				t.Errorf("%s: no pixel of %v HU; values %v", f.Path, want, hu)
			}
		}
		if len(hu) != 5 {
			t.Errorf("%s: values %v, want only the five tissues", f.Path, hu)
		}
	}
	if n != 3 {
		t.Errorf("%d CT slices, want 3", n)
	}
}

// TestUpsample: bilinear resizing with aligned pixel centres.
func TestUpsample(t *testing.T) {
	src := []uint16{0, 400, 800, 1200}
	if got, want := upsample(src, 2, 4), []uint16{0, 100, 300, 400, 200, 300, 500, 600, 600, 700, 900, 1000, 800, 900, 1100, 1200}; !slices.Equal(got, want) {
		t.Errorf("2×2 to 4×4: %v, want %v", got, want)
	}
	phantom := make([]uint16, PhantomSize*PhantomSize)
	for i := range phantom {
		phantom[i] = uint16(i * 7 % maxStored)
	}
	if got := upsample(phantom, PhantomSize, PhantomSize); !slices.Equal(got, phantom) {
		t.Error("resizing to the same size changes the image")
	}
	flat := slices.Repeat([]uint16{1234}, PhantomSize*PhantomSize)
	for _, v := range upsample(flat, PhantomSize, 512) {
		if v != 1234 {
			t.Fatalf("a flat image upsampled has %d, want 1234", v)
		}
	}
	if got := invert([]uint16{0, 1, 4095}); !slices.Equal(got, []uint16{4095, 4094, 0}) {
		t.Errorf("invert: %v", got)
	}
}

// TestWriteRefuses: bad configs and a folder in use are refused before anything is written.
func TestWriteRefuses(t *testing.T) {
	for _, cfg := range []Config{
		{Studies: 0},
		{Studies: 1, Size: 32},
		{Studies: 1, Size: MaxSize + 1},
		{Studies: 1, ImagesPerSeries: -1},
		{Studies: 1, CTSlices: -1},
		{Studies: 1, Finding: "all"},
	} {
		if err := cfg.Validate(); err == nil {
			t.Errorf("%+v: valid", cfg)
		}
		dir := filepath.Join(t.TempDir(), "out")
		if _, err := Write(context.Background(), dir, cfg, Python{Interpreter: "no-such-python"}); err == nil {
			t.Errorf("Write(%+v) succeeded", cfg)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Write(%+v) created the output folder (%v)", cfg, err)
		}
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Write(context.Background(), dir, Config{Studies: 1}, python(t)); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("Write into a folder in use: %v, want a refusal", err)
	}
}

// TestPythonErrors: a missing interpreter or one without numpy says how to get one.
func TestPythonErrors(t *testing.T) {
	specs := []PhantomSpec{{Seed: 1, Variants: 1}}
	_, err := Python{Interpreter: filepath.Join(t.TempDir(), "python")}.Render(context.Background(), specs)
	if !errors.Is(err, ErrNoPython) || !strings.Contains(err.Error(), "./scripts/build.sh") {
		t.Errorf("missing interpreter: %v, want ErrNoPython with a hint at ./scripts/build.sh", err)
	}
	fake := filepath.Join(t.TempDir(), "python")
	script := "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'numpy'\" >&2\nexit 1\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = Python{Interpreter: fake}.Render(context.Background(), specs)
	if !errors.Is(err, ErrNoNumpy) || !strings.Contains(err.Error(), "./scripts/build.sh") {
		t.Errorf("no numpy: %v, want ErrNoNumpy with a hint at ./scripts/build.sh", err)
	}
}
