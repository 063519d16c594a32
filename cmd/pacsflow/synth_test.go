package main_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pacsflow/pacsflow/pkg/synth"
)

// TestSynth: `pacsflow synth` writes the studies truth.json lists, which DCMTK's dcmdump reads
// without a warning; the same flags write the same files, and a bad --finding is refused with
// the choices. It needs a Python with numpy: ./scripts/test.sh sets PACSFLOW_PYTHON.
func TestSynth(t *testing.T) {
	requireTools(t, "dcmdump")
	py := os.Getenv("PACSFLOW_PYTHON")
	if py == "" {
		t.Fatal("PACSFLOW_PYTHON is not set: run ./scripts/test.sh, or set it to a Python with numpy (.venv/bin/python, made by ./scripts/build.sh)")
	}
	bin := buildPacsflow(t)
	args := func(dir string, more ...string) []string {
		// childEnv drops PACSFLOW_PYTHON, so the Python is named on the command line.
		return append([]string{"synth", "--out", dir, "--studies", "4", "--finding", "mixed", "--seed", "42",
			"--size", "128", "--ct-slices", "2", "--python", py}, more...)
	}
	dir := filepath.Join(t.TempDir(), "synth")
	p := start(t, bin, args(dir)...)
	p.mustSucceed(t)
	// 4 studies of 2 CR, 2 DX and 2 CT images.
	if out, want := p.stdout.String(), "wrote 4 studies, 24 instances, "; !strings.Contains(out, want) ||
		!strings.Contains(out, "(seed 42, finding mixed): 2 with findings, 2 without; ground truth in "+filepath.Join(dir, "truth.json")) {
		t.Errorf("summary lacks %q or the findings counts:\n%s", want, out)
	}
	if !strings.Contains(p.stderr.String(), "4 of 4 studies written") {
		t.Errorf("no progress on stderr:\n%s", p.stderr.String())
	}

	truthJSON, err := os.ReadFile(filepath.Join(dir, "truth.json"))
	if err != nil {
		t.Fatal(err)
	}
	var truth synth.Truth
	if err := json.Unmarshal(truthJSON, &truth); err != nil {
		t.Fatalf("truth.json: %v", err)
	}
	if len(truth.Studies) != 4 {
		t.Fatalf("truth.json lists %d studies, want 4", len(truth.Studies))
	}
	dumpArgs := []string{"-ll", "warn"}
	modalities := map[string]int{}
	for i, s := range truth.Studies {
		if s.HasFindings() != (i%2 == 1) {
			t.Errorf("study %d: findings %v, want findings in the 2nd and 4th only (--finding mixed)", i+1, s.Findings)
		}
		for _, f := range s.Files {
			modalities[f.Modality]++
			dumpArgs = append(dumpArgs, filepath.Join(dir, filepath.FromSlash(f.Path)))
		}
	}
	if modalities["CR"] != 8 || modalities["DX"] != 8 || modalities["CT"] != 8 {
		t.Errorf("truth.json lists %v files by modality, want 8 of each", modalities)
	}
	cmd := exec.Command("dcmdump", dumpArgs...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil || stderr.Len() > 0 {
		t.Fatalf("dcmdump: %v\n%s", err, stderr.String())
	}
	dump := stdout.String()
	for _, want := range []struct {
		text  string
		count int
	}{
		{"(0002,0010) UI =LittleEndianExplicit", 24},
		{"(0008,0016) UI =ComputedRadiographyImageStorage", 8},
		{"(0008,0016) UI =DigitalXRayImageStorageForPresentation", 8},
		{"(0008,0016) UI =CTImageStorage", 8},
		{"(0028,0004) CS [MONOCHROME1", 8},
		{"(0028,0004) CS [MONOCHROME2", 16},
		{"(0008,0070) LO [pacsflow synth]", 24},
	} {
		if n := strings.Count(dump, want.text); n != want.count {
			t.Errorf("dcmdump shows %q %d times, want %d", want.text, n, want.count)
		}
	}
	for _, s := range truth.Studies {
		for _, f := range s.Files {
			if !strings.Contains(dump, "(0008,0018) UI ["+f.SOPInstanceUID+"]") {
				t.Errorf("dcmdump does not show %s with SOP Instance UID %s", f.Path, f.SOPInstanceUID)
			}
		}
	}

	again := filepath.Join(t.TempDir(), "synth")
	start(t, bin, args(again)...).mustSucceed(t)
	if b, err := os.ReadFile(filepath.Join(again, "truth.json")); err != nil || !bytes.Equal(b, truthJSON) {
		t.Errorf("a second run with the same flags wrote another truth.json (%v)", err)
	}

	help := start(t, bin, "synth", "--help")
	help.mustSucceed(t)
	for _, want := range []string{"Usage: pacsflow synth", "truth.json", "study_instance_uid", "-finding", "-seed", "-ct-slices", "-python", "PACSFLOW_"} {
		if !strings.Contains(help.stderr.String(), want) {
			t.Errorf("synth --help lacks %q:\n%s", want, help.stderr.String())
		}
	}

	bad := start(t, bin, args(filepath.Join(t.TempDir(), "bad"), "--finding", "pneumothorax")...)
	if err := bad.wait(t); exitCode(err) != 1 || !strings.Contains(bad.stderr.String(), "random, none, any, mixed, nodule, effusion, fracture") {
		t.Errorf("--finding pneumothorax: %v, want exit status 1 and the choices:\n%s", err, bad.stderr.String())
	}
}
