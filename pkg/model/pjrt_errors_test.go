//go:build cgo

package model

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// stableHLOCopy copies the reference model into a temporary folder with a StableHLO manifest
// of one module per signature (batch size 1) whose bytes are module, derived, by the
// manifest's digest, from the copy's saved_model.pb, or from another one if stale.
func stableHLOCopy(t *testing.T, module []byte, stale bool) string {
	t.Helper()
	dir := modelCopy(t)
	c, err := ReadContract(dir)
	if err != nil {
		t.Fatal(err)
	}
	pb, err := os.ReadFile(filepath.Join(dir, "saved_model.pb"))
	if err != nil {
		t.Fatal(err)
	}
	if stale {
		pb = append(pb, 0)
	}
	m := map[string]any{"format": stableHLOFormat, "saved_model_sha256": sha256Hex(pb), "batch_sizes": []int{1}}
	sigs := map[string]any{}
	sdir := filepath.Join(dir, StableHLODir)
	if err := os.MkdirAll(sdir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, def := range c.Signatures {
		var inputs []string
		for in := range def.Inputs {
			inputs = append(inputs, in)
		}
		sigs[name] = map[string]any{"inputs": inputs, "modules": map[string]string{"1": name + ".b1.mlirbc"}}
		if err := os.WriteFile(filepath.Join(sdir, name+".b1.mlirbc"), module, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m["signatures"] = sigs
	b, _ := json.Marshal(m)
	if err := os.WriteFile(filepath.Join(sdir, "manifest.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// modelCopy copies the reference model, without StableHLO modules, into a temporary folder.
func modelCopy(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(referenceDir(t))); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, StableHLODir)); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestPJRTErrors: each way the pjrt runtime cannot start says why and what to do.
func TestPJRTErrors(t *testing.T) {
	notAPlugin := filepath.Join(t.TempDir(), "plugin.so")
	if err := os.WriteFile(notAPlugin, []byte("not a shared library"), 0o644); err != nil {
		t.Fatal(err)
	}
	garbage := []byte("not StableHLO")
	for _, tc := range []struct {
		name   string
		dir    string
		plugin string
		want   string
	}{
		{"no modules", modelCopy(t), notAPlugin, "derive them with model/export_stablehlo.py"},
		{"stale modules", stableHLOCopy(t, garbage, true), notAPlugin, "derived from another export of the model"},
		{"no plugin named", stableHLOCopy(t, garbage, false), "", "needs a PJRT plugin (--pjrt-plugin)"},
		{"plugin missing", stableHLOCopy(t, garbage, false), filepath.Join(t.TempDir(), "missing.so"), "no such file"},
		{"not a plugin", stableHLOCopy(t, garbage, false), notAPlugin, "load PJRT plugin"},
	} {
		_, err := Open(context.Background(), tc.dir, Options{Runtime: RuntimePJRT, PJRTPlugin: tc.plugin})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
	// A module the plugin cannot compile, with a real plugin (./scripts/test.sh installs XLA's
	// CPU plugin and sets PACSFLOW_PJRT_PLUGIN).
	if plugin := os.Getenv("PACSFLOW_PJRT_PLUGIN"); plugin != "" {
		_, err := Open(context.Background(), stableHLOCopy(t, garbage, false), Options{Runtime: RuntimePJRT, PJRTPlugin: plugin})
		if err == nil || !strings.Contains(err.Error(), "compile ") || !strings.Contains(err.Error(), ".b1.mlirbc") {
			t.Errorf("a module that is not StableHLO: %v, want a compile error naming the module", err)
		}
	} else {
		t.Log("PACSFLOW_PJRT_PLUGIN is not set: the compile error of a bad module is not checked")
	}
}
