package model

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
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

func TestCompareOutputs(t *testing.T) {
	want := map[string]*Tensor{
		"p":      {Shape: []int64{2}, F32: []float32{0.5, 0.25}},
		"tokens": {Shape: []int64{1, 3}, I32: []int32{4, 5, 2}},
	}
	for _, tc := range []struct {
		name string
		got  map[string]*Tensor
		want []string // per output: "ok", "float DIFF", "token I" or "error"
	}{
		{"equal", want, []string{"ok", "ok"}},
		{"close", map[string]*Tensor{"p": {Shape: []int64{2}, F32: []float32{0.5, 0.375}}, "tokens": want["tokens"]}, []string{"float 0.125", "ok"}},
		{"a token differs", map[string]*Tensor{"p": want["p"], "tokens": {Shape: []int64{1, 3}, I32: []int32{4, 6, 2}}}, []string{"ok", "token 1"}},
		{"missing", map[string]*Tensor{"tokens": want["tokens"]}, []string{"error", "ok"}},
		{"another shape", map[string]*Tensor{"p": {Shape: []int64{1, 2}, F32: []float32{0.5, 0.25}}, "tokens": want["tokens"]}, []string{"error", "ok"}},
		{"another dtype", map[string]*Tensor{"p": want["p"], "tokens": {Shape: []int64{1, 3}, F32: []float32{4, 5, 2}}}, []string{"ok", "error"}},
	} {
		diffs := CompareOutputs(tc.got, want)
		var got []string
		for _, d := range diffs {
			switch {
			case d.Err != nil:
				got = append(got, "error")
			case d.Float && d.MaxAbs > 0:
				got = append(got, fmt.Sprintf("float %g", d.MaxAbs))
			case !d.Float && d.FirstDiff >= 0:
				got = append(got, fmt.Sprintf("token %d", d.FirstDiff))
			default:
				got = append(got, "ok")
			}
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
