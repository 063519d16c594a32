package dicomtest

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pacsflow/pacsflow/pkg/part10"
)

// Sample is a Part 10 file split into its meta information and data set.
type Sample struct {
	Path    string
	Meta    part10.Meta
	DataSet []byte
}

// ReadSample reads the Part 10 file at path.
func ReadSample(t testing.TB, path string) Sample {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := part10.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	ds, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return Sample{Path: path, Meta: r.Meta, DataSet: ds}
}

// SamplePaths returns testdata/1.dcm to 6.dcm of the module
// github.com/suyashkumar/dicom: real images in Explicit VR Little Endian,
// Implicit VR Little Endian and Deflated Explicit VR Little Endian.
func SamplePaths(t testing.TB) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/suyashkumar/dicom").Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		t.Fatalf("cannot locate the module github.com/suyashkumar/dicom (%v): run go mod download", err)
	}
	var paths []string
	for i := 1; i <= 6; i++ {
		paths = append(paths, filepath.Join(dir, "testdata", fmt.Sprintf("%d.dcm", i)))
	}
	return paths
}
