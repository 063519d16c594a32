package model

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

func repoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func referenceDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(repoRoot(t), "model", "reference")
	if _, err := os.Stat(filepath.Join(dir, "saved_model.pb")); err != nil {
		t.Fatalf("the reference model is missing (%v): it is committed under model/reference; rebuild it with python model/train.py --out model/reference", err)
	}
	return dir
}
