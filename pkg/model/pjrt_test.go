//go:build tensorflow && cgo

package model

import (
	"context"
	"os"
	"testing"
)

// TestPJRTMatchesTensorFlow derives the reference model's StableHLO (model/export_stablehlo.py,
// batch size 2 only, so that the test's batch of 3 is cut in two and its second half padded),
// runs every signature through a PJRT plugin and compares with Python TensorFlow. On the
// development machine and in CI the plugin is XLA's CPU plugin (./scripts/test.sh installs it
// into .venv and sets PACSFLOW_PJRT_PLUGIN); bench/gpu runs the same comparison on a GPU.
func TestPJRTMatchesTensorFlow(t *testing.T) {
	plugin := os.Getenv("PACSFLOW_PJRT_PLUGIN")
	if plugin == "" {
		t.Fatal("PACSFLOW_PJRT_PLUGIN is not set: run ./scripts/test.sh, which installs XLA's CPU PJRT plugin into .venv, or set it to a PJRT plugin library")
	}
	dir := modelCopy(t)
	python(t, "export_stablehlo.py", "--model", dir, "--batch-sizes", "2")
	m, err := Open(context.Background(), dir, Options{Runtime: RuntimePJRT, PJRTPlugin: plugin})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	matchesPython(t, m, dir, 1e-3)
}
