package main_test

import (
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pacsflow/pacsflow/pkg/model"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// TestModelInspect checks `pacsflow model inspect` on the committed reference model against
// a golden file, and on a directory that is not a model.
func TestModelInspect(t *testing.T) {
	bin := buildPacsflow(t)
	ref := filepath.Join("..", "..", "model", "reference")
	out, err := exec.Command(bin, "model", "inspect", ref).Output()
	if err != nil {
		t.Fatalf("model inspect %s: %v\n%s", ref, err, out)
	}
	golden := filepath.Join("testdata", "model-inspect-reference.golden")
	if *update {
		if err := os.WriteFile(golden, out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (go test ./cmd/pacsflow -run TestModelInspect -update writes it)", err)
	}
	if string(out) != string(want) {
		t.Errorf("model inspect printed\n%s\nwant (%s)\n%s", out, golden, want)
	}

	dir := t.TempDir()
	cmd := exec.Command(bin, "model", "inspect", dir)
	got, err := cmd.CombinedOutput()
	if code := exitCode(err); code != 1 {
		t.Fatalf("model inspect on an empty folder exited %d, want 1:\n%s", code, got)
	}
	if !strings.Contains(string(got), "contract check: FAILED: model contract: "+dir+" has no saved_model.pb: not a SavedModel") {
		t.Errorf("model inspect on an empty folder printed:\n%s", got)
	}
}

// TestModelInspectRun loads and runs the reference model when the binary links TensorFlow
// (./scripts/test.sh builds with it), and otherwise checks that it says it cannot.
func TestModelInspectRun(t *testing.T) {
	bin := buildPacsflow(t)
	ref := filepath.Join("..", "..", "model", "reference")
	out, err := exec.Command(bin, "model", "inspect", "--run", ref).CombinedOutput()
	if !model.TensorFlowAvailable {
		if exitCode(err) != 1 || !strings.Contains(string(out), "built without TensorFlow") {
			t.Fatalf("model inspect --run without TensorFlow: %v\n%s", err, out)
		}
		return
	}
	if err != nil {
		t.Fatalf("model inspect --run: %v\n%s", err, out)
	}
	for _, want := range []string{"loaded in ", "ran ask ", "ran generate ", "ran understand ", "resident memory "} {
		if !strings.Contains(string(out), want) {
			t.Errorf("model inspect --run printed no %q:\n%s", want, out)
		}
	}
}
