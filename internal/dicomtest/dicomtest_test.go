package dicomtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pacsflow/pacsflow/pkg/part10"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

// The data sets must be valid DICOM to an independent parser.
func TestDataSetReadsWithDCMTK(t *testing.T) {
	dcmdump, err := exec.LookPath("dcmdump")
	if err != nil {
		t.Fatal("dcmdump not found: install DCMTK (apt-get install dcmtk) or run ./scripts/test.sh")
	}
	in := Study(1, 1, 100)[0]
	in.Priority = "STAT"
	b := part10.AppendHeader(nil, &part10.Meta{MediaStorageSOPClassUID: in.SOPClassUID, MediaStorageSOPInstanceUID: in.SOPInstanceUID,
		TransferSyntaxUID: uid.ExplicitVRLittleEndian, ImplementationClassUID: uid.ImplementationClassUID})
	path := filepath.Join(t.TempDir(), "x.dcm")
	if err := os.WriteFile(path, append(b, in.DataSet()...), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(dcmdump, "-q", "-E", path).CombinedOutput()
	if err != nil {
		t.Fatalf("dcmdump: %v\n%s", err, out)
	}
	for _, want := range []string{in.StudyInstanceUID, in.SOPInstanceUID, "[DOE^JANE]", "[CT]", "[STAT]", "PixelData"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("dcmdump output lacks %q:\n%s", want, out)
		}
	}
}
