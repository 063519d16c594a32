//go:build tensorflow

package model

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
)

// These tests run the real reference model (model/reference) through TensorFlow's C API and
// compare it with Python TensorFlow. They need the project's venv: ./scripts/test.sh sets
// PACSFLOW_PYTHON.

// python runs one of the model/ scripts with the venv's Python.
func python(t testing.TB, script string, args ...string) string {
	t.Helper()
	py := os.Getenv("PACSFLOW_PYTHON")
	if py == "" {
		t.Fatal("PACSFLOW_PYTHON is not set: run ./scripts/test.sh, or set it to a Python with tensorflow-cpu (.venv/bin/python)")
	}
	cmd := exec.Command(py, append([]string{filepath.Join(repoRoot(t), "model", script)}, args...)...)
	cmd.Env = append(os.Environ(), "TF_CPP_MIN_LOG_LEVEL=2")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", script, strings.Join(args, " "), err, out)
	}
	return string(out)
}

var (
	refOnce  sync.Once
	refModel *Model
	refErr   error
)

// openReference loads the reference model once for the tests that only read it.
func openReference(t testing.TB) *Model {
	t.Helper()
	dir := referenceDir(t)
	refOnce.Do(func() { refModel, refErr = Open(context.Background(), dir, Options{}) })
	if refErr != nil {
		t.Fatalf("open reference model: %v", refErr)
	}
	return refModel
}

func TestReferenceMatchesPython(t *testing.T) {
	matchesPython(t, openReference(t), referenceDir(t), 1e-5)
}

// matchesPython runs every signature of m, loaded from dir, on the inputs
// model/reference_outputs.py runs Python TensorFlow on, and compares the outputs: integers
// exactly, floats within tol.
func matchesPython(t *testing.T, m *Model, dir string, tol float64) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "ref.json")
	python(t, "reference_outputs.py", "--model", dir, "--out", out)
	runs, err := ReadReferenceRuns(out)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := slices.Sorted(maps.Keys(runs)), slices.Sorted(maps.Keys(m.Contract().Signatures)); !slices.Equal(got, want) {
		t.Fatalf("Python ran %v, the contract lists %v", got, want)
	}
	for sig, run := range runs {
		got, err := m.Runtime().Run(context.Background(), sig, run.Inputs)
		if err != nil {
			t.Fatalf("Go run %s: %v", sig, err)
		}
		for _, d := range CompareOutputs(got, run.Outputs) {
			switch {
			case d.Err != nil:
				t.Errorf("%s: %v", sig, d.Err)
			case !d.Float && d.FirstDiff >= 0:
				t.Errorf("%s %s: Go %v, Python %v", sig, d.Name, got[d.Name].I32, run.Outputs[d.Name].I32)
			case d.Float:
				t.Logf("%s %s: max |Go − Python| = %.3g", sig, d.Name, d.MaxAbs)
				if d.MaxAbs > tol {
					t.Errorf("%s %s: max abs difference %g > %g", sig, d.Name, d.MaxAbs, tol)
				}
			}
		}
	}
}

// phantom is one image the understand test set has, from model/phantoms.py.
type phantom struct {
	Image    Image
	Labels   map[string]bool
	Report   string
	Question string
	Answer   string
}

// phantoms renders n phantoms with model/phantoms.py and reads them back.
func phantoms(t testing.TB, n, seed int) []phantom {
	t.Helper()
	dir := t.TempDir()
	python(t, "phantoms.py", "--out", dir, "--n", fmt.Sprint(n), "--seed", fmt.Sprint(seed))
	return readPhantoms(t, dir)
}

func TestUnderstandAskGenerate(t *testing.T) {
	m := openReference(t)
	ctx := context.Background()
	ps := phantoms(t, 8, 4242)
	imgs := make([]Image, len(ps))
	for i, p := range ps {
		imgs[i] = p.Image
	}
	us, err := m.Understand(ctx, imgs)
	if err != nil {
		t.Fatal(err)
	}
	correct := 0
	for i, u := range us {
		if len(u.Findings) != len(m.Contract().Labels) || u.Report == "" {
			t.Fatalf("understand %d: %+v", i, u)
		}
		for _, f := range u.Findings {
			if f.Probability < 0 || f.Probability > 1 || f.Box[0] > f.Box[2] || f.Box[1] > f.Box[3] {
				t.Errorf("understand %d: finding %+v out of range", i, f)
			}
			if (f.Probability > 0.5) == ps[i].Labels[f.Label] {
				correct++
			}
		}
		t.Logf("phantom %d %v: %q (reference %q)", i, ps[i].Labels, u.Report, ps[i].Report)
	}
	// The reference model separates its synthetic findings almost perfectly (model/MODEL_CARD.md):
	// most of 24 decisions must be right, or the runtime is feeding it the wrong pixels.
	if total := len(us) * len(m.Contract().Labels); correct < total*3/4 {
		t.Errorf("%d of %d finding decisions right", correct, total)
	}

	questions := make([]string, len(ps))
	for i, p := range ps {
		questions[i] = p.Question
	}
	answers, err := m.Ask(ctx, imgs, questions)
	if err != nil {
		t.Fatal(err)
	}
	right := 0
	for i, a := range answers {
		t.Logf("%q → %q (reference %q)", questions[i], a, ps[i].Answer)
		if strings.EqualFold(a, ps[i].Answer) {
			right++
		}
	}
	if right < len(ps)/2 {
		t.Errorf("%d of %d answers right", right, len(ps))
	}

	reqs := []GenerateRequest{
		{Task: "synthesize", Condition: "nodule", Seed: 7},
		{Task: "synthesize", Condition: "nodule", Seed: 7},
		{Task: "synthesize", Condition: "nodule", Seed: 8},
		{Task: "restore", Source: &imgs[0], Seed: 1},
		{Task: "convert", Source: &imgs[1], Seed: 1},
	}
	gen, err := m.Generate(ctx, reqs)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(gen[0].Pixels, gen[1].Pixels) {
		t.Error("the same seed gave different images")
	}
	if slices.Equal(gen[0].Pixels, gen[2].Pixels) {
		t.Error("different seeds gave the same image")
	}
	if _, err := m.Generate(ctx, []GenerateRequest{{Task: "restore", Seed: 1}}); err == nil {
		t.Error("restore without a source image accepted")
	}
	if _, err := m.Generate(ctx, []GenerateRequest{{Task: "colorize", Seed: 1}}); err == nil {
		t.Error("unknown task accepted")
	}
}

func TestRunRejectsBadInputs(t *testing.T) {
	m := openReference(t)
	ctx := context.Background()
	rt := m.Runtime()
	good := &Tensor{Shape: []int64{1, 64, 64, 1}, F32: make([]float32, 64*64)}
	tests := []struct {
		name   string
		sig    string
		inputs map[string]*Tensor
		want   string
	}{
		{"unknown signature", "segment", map[string]*Tensor{"images": good}, "no such signature"},
		{"missing input", SigAsk, map[string]*Tensor{"images": good}, `input "question_tokens" is missing`},
		{"wrong dtype", SigUnderstand, map[string]*Tensor{"images": {Shape: []int64{1, 64, 64, 1}, I32: make([]int32, 64*64)}}, `input "images" is int32`},
		{"wrong shape", SigUnderstand, map[string]*Tensor{"images": {Shape: []int64{1, 32, 32, 1}, F32: make([]float32, 32*32)}}, `input "images" has shape [1 32 32 1]`},
		{"short data", SigUnderstand, map[string]*Tensor{"images": {Shape: []int64{2, 64, 64, 1}, F32: make([]float32, 64*64)}}, "has 4096 values for shape"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := rt.Run(ctx, tt.sig, tt.inputs)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Run = %v, want an error containing %q", err, tt.want)
			}
		})
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := m.Understand(cancelled, []Image{{Pixels: good.F32}}); !errors.Is(err, context.Canceled) {
		t.Errorf("Understand with a cancelled context = %v", err)
	}
	if _, err := m.Understand(ctx, []Image{{Pixels: make([]float32, 10)}}); err == nil || !strings.Contains(err.Error(), "image 0 has 10 values") {
		t.Errorf("Understand with a short image = %v", err)
	}
}

// copyDir copies a model directory so that a test can damage the copy.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

func TestOpenDamagedModel(t *testing.T) {
	ref := referenceDir(t)
	tests := []struct {
		name   string
		damage func(t *testing.T, dir string)
		want   string
	}{
		{"corrupt variables", func(t *testing.T, dir string) {
			files, _ := filepath.Glob(filepath.Join(dir, "variables", "variables.data-*"))
			if len(files) == 0 {
				t.Fatal("no variables data file")
			}
			if err := os.WriteFile(files[0], []byte("not a tensor bundle"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, "load SavedModel"},
		{"no variables index", func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, "variables", "variables.index")); err != nil {
				t.Fatal(err)
			}
		}, "no variables/variables.index"},
		{"truncated saved_model.pb", func(t *testing.T, dir string) {
			p := filepath.Join(dir, "saved_model.pb")
			b, _ := os.ReadFile(p)
			if err := os.WriteFile(p, b[:len(b)/2], 0o644); err != nil {
				t.Fatal(err)
			}
		}, "saved_model.pb is corrupt"},
		{"contract disagrees with the SavedModel", func(t *testing.T, dir string) {
			p := filepath.Join(dir, ContractFile)
			var c map[string]any
			b, _ := os.ReadFile(p)
			if err := json.Unmarshal(b, &c); err != nil {
				t.Fatal(err)
			}
			c["labels"] = []string{"nodule", "effusion", "fracture", "mass"}
			out, _ := json.Marshal(c)
			if err := os.WriteFile(p, out, 0o644); err != nil {
				t.Fatal(err)
			}
		}, "want float32[?,4,4]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := copyDir(t, ref)
			tt.damage(t, dir)
			m, err := Open(context.Background(), dir, Options{})
			if err == nil {
				m.Close()
				t.Fatal("Open accepted a damaged model")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Open = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestConcurrentUse runs every signature from many goroutines at once (run it with -race) and
// checks each result equals the same call made alone.
func TestConcurrentUse(t *testing.T) {
	m := openReference(t)
	ctx := context.Background()
	ps := phantoms(t, 4, 99)
	imgs := []Image{ps[0].Image, ps[1].Image, ps[2].Image, ps[3].Image}
	wantU, err := m.Understand(ctx, imgs)
	if err != nil {
		t.Fatal(err)
	}
	wantA, err := m.Ask(ctx, imgs, []string{"is there a nodule ?", "how many findings ?", "where is the effusion ?", "is there a fracture ?"})
	if err != nil {
		t.Fatal(err)
	}
	wantG, err := m.Generate(ctx, []GenerateRequest{{Task: "synthesize", Condition: "effusion", Seed: 3}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 16 {
		wg.Go(func() {
			for range 3 {
				switch g % 3 {
				case 0:
					u, err := m.Understand(ctx, imgs)
					if err != nil || u[g%4].Report != wantU[g%4].Report || u[g%4].Findings[0] != wantU[g%4].Findings[0] {
						errs <- fmt.Errorf("understand: %v %+v", err, u)
						return
					}
				case 1:
					a, err := m.Ask(ctx, imgs, []string{"is there a nodule ?", "how many findings ?", "where is the effusion ?", "is there a fracture ?"})
					if err != nil || !slices.Equal(a, wantA) {
						errs <- fmt.Errorf("ask: %v %v", err, a)
						return
					}
				default:
					gen, err := m.Generate(ctx, []GenerateRequest{{Task: "synthesize", Condition: "effusion", Seed: 3}})
					if err != nil || !slices.Equal(gen[0].Pixels, wantG[0].Pixels) {
						errs <- fmt.Errorf("generate: %v", err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestTrainingSmoke proves model/train.py still produces a model that fills the contract: a
// two-step training run, exported, loaded and run from Go.
func TestTrainingSmoke(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "smoke")
	python(t, "train.py", "--steps", "2", "--out", dir)
	m, err := Open(context.Background(), dir, Options{})
	if err != nil {
		t.Fatalf("the freshly trained model does not load: %v", err)
	}
	defer m.Close()
	ref := openReference(t).Contract()
	if got := m.Contract(); !slices.Equal(slices.Sorted(maps.Keys(got.Signatures)), slices.Sorted(maps.Keys(ref.Signatures))) || !slices.Equal(got.Labels, ref.Labels) {
		t.Errorf("the trained model's contract %+v differs from the committed reference's %+v", got, ref)
	}
	blank := Image{Pixels: make([]float32, 64*64)}
	if _, err := m.Understand(context.Background(), []Image{blank}); err != nil {
		t.Error(err)
	}
	if _, err := m.Ask(context.Background(), []Image{blank}, []string{"is there a nodule ?"}); err != nil {
		t.Error(err)
	}
	if _, err := m.Generate(context.Background(), []GenerateRequest{{Task: "convert", Source: &blank}}); err != nil {
		t.Error(err)
	}
}

// TestReexport: model/reexport.py exports the reference model again with the current network
// code; the weights are the committed ones and the results are the reference model's.
func TestReexport(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "reexported")
	python(t, "reexport.py", "--from", referenceDir(t), "--out", dir)
	weights := filepath.Join("variables", "variables.data-00000-of-00001")
	a, errA := os.ReadFile(filepath.Join(referenceDir(t), weights))
	b, errB := os.ReadFile(filepath.Join(dir, weights))
	if errA != nil || errB != nil || !bytes.Equal(a, b) {
		t.Errorf("re-exported weights differ from the reference's (%v, %v)", errA, errB)
	}
	m, err := Open(context.Background(), dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	images := []Image{{Pixels: make([]float32, 64*64)}, {Pixels: make([]float32, 64*64)}}
	for i := range images[1].Pixels {
		images[1].Pixels[i] = float32(i%64) / 64
	}
	got, err := m.Understand(context.Background(), images)
	if err != nil {
		t.Fatal(err)
	}
	want, err := openReference(t).Understand(context.Background(), images)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("re-exported model: %+v\nreference: %+v", got, want)
	}
}

// TestModelCardFigures runs the script behind model/MODEL_CARD.md on a small held-out set and
// checks it reports every figure, each better than chance.
func TestModelCardFigures(t *testing.T) {
	out := filepath.Join(t.TempDir(), "eval.json")
	python(t, "evaluate.py", "--model", referenceDir(t), "--n", "48", "--json", out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", b)
	checkMetrics(t, got)
}

// TestWrappedExample exports the exporter recipe's worked example and runs it from Go: an
// understand-only model.
func TestWrappedExample(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "wrapped")
	python(t, filepath.Join("examples", "wrap_keras_classifier.py"), "--out", dir)
	m, err := Open(context.Background(), dir, Options{})
	if err != nil {
		t.Fatalf("the wrapped example does not load: %v", err)
	}
	defer m.Close()
	ps := phantoms(t, 2, 5)
	u, err := m.Understand(context.Background(), []Image{ps[0].Image, ps[1].Image})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("wrapped example: %q, %q", u[0].Report, u[1].Report)
	if _, err := m.Ask(context.Background(), []Image{ps[0].Image}, []string{"is there a nodule ?"}); !errors.Is(err, errNoSignature) {
		t.Errorf("Ask on an understand-only model = %v", err)
	}
}

// readPhantoms reads what `model/phantoms.py --out dir` wrote: 12-bit pixels, and labels from
// which each phantom gets a yes/no question about one finding.
func readPhantoms(t testing.TB, dir string) []phantom {
	t.Helper()
	var index struct {
		Rows, Columns int
		Phantoms      []struct {
			File   string          `json:"file"`
			Labels map[string]bool `json:"labels"`
			Report string          `json:"report"`
		} `json:"phantoms"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &index); err != nil {
		t.Fatal(err)
	}
	labels := []string{"nodule", "effusion", "fracture"}
	out := make([]phantom, len(index.Phantoms))
	for i, p := range index.Phantoms {
		raw, err := os.ReadFile(filepath.Join(dir, p.File))
		if err != nil {
			t.Fatal(err)
		}
		if len(raw) != 2*index.Rows*index.Columns {
			t.Fatalf("%s has %d bytes", p.File, len(raw))
		}
		px := make([]float32, index.Rows*index.Columns)
		for j := range px {
			// The window the contract names (centre 2048, width 4096) maps 0..4095 onto 0..1.
			px[j] = float32(uint16(raw[2*j])|uint16(raw[2*j+1])<<8) / 4095
		}
		label := labels[i%len(labels)]
		answer := "no"
		if p.Labels[label] {
			answer = "yes"
		}
		out[i] = phantom{Image: Image{Pixels: px}, Labels: p.Labels, Report: p.Report,
			Question: "is there a " + label + " ?", Answer: answer}
	}
	return out
}

// checkMetrics checks that evaluate.py reported every model-card figure and that each is
// clearly better than chance (a coin for findings and yes/no answers, no box overlap, no
// gain from restoring or converting).
func checkMetrics(t *testing.T, m map[string]any) {
	t.Helper()
	num := func(path ...string) float64 {
		var v any = m
		for _, p := range path {
			obj, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("evaluate.py JSON has no %v", path)
			}
			v = obj[p]
		}
		f, ok := v.(float64)
		if !ok {
			t.Fatalf("evaluate.py JSON: %v is %v, not a number", path, v)
		}
		return f
	}
	above := func(name string, got, floor float64) {
		if !(got > floor) {
			t.Errorf("%s = %.3f, want more than %.3f", name, got, floor)
		}
	}
	for _, l := range []string{"nodule", "effusion", "fracture"} {
		above("AUC "+l, num("auc", l), 0.7)
		above("faithfulness "+l, num("faithfulness", l), 0.3)
	}
	above("mean box IoU", num("box_iou", "mean"), 0.2)
	above("report token accuracy", num("report_token_accuracy"), 0.5)
	num("report_exact_match")
	above("VQA accuracy", num("vqa_accuracy"), 0.5)
	above("restoration PSNR gain (dB)", num("restore_psnr_gain_db"), 1)
	above("conversion PSNR over the unconverted image (dB)", num("convert_psnr_db")-num("convert_psnr_identity_db"), 0)
	above("normal prompt clean rate", num("normal_prompt_clean_rate"), 0.25) // weak: see model/MODEL_CARD.md
	num("unrequested_finding_rate")
	num("synthesize_psnr_db")
}
