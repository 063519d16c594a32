package part10

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestHeaderRoundTrip(t *testing.T) {
	m := Meta{
		MediaStorageSOPClassUID:      "1.2.840.10008.5.1.4.1.1.2",
		MediaStorageSOPInstanceUID:   "1.2.3.4.5",
		TransferSyntaxUID:            "1.2.840.10008.1.2.1",
		ImplementationClassUID:       "2.25.1",
		ImplementationVersionName:    "PACSFLOW_0_1",
		SourceApplicationEntityTitle: "CT1",
	}
	data := []byte{0x08, 0x00, 0x18, 0x00, 'U', 'I', 2, 0, '1', 0}
	file := append(AppendHeader(nil, &m), data...)
	r, err := NewReader(bytes.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	if r.Meta != m {
		t.Errorf("meta %+v, want %+v", r.Meta, m)
	}
	if r.DataSetOffset != int64(len(file)-len(data)) {
		t.Errorf("data set offset %d, want %d", r.DataSetOffset, len(file)-len(data))
	}
	got, _ := io.ReadAll(r)
	if !bytes.Equal(got, data) {
		t.Errorf("data set %x, want %x", got, data)
	}
}

// The header must read as a valid Part 10 file to an independent parser.
func TestHeaderReadsWithDCMTK(t *testing.T) {
	dcmdump, err := exec.LookPath("dcmdump")
	if err != nil {
		t.Fatal("dcmdump not found: install DCMTK (apt-get install dcmtk) or run ./scripts/test.sh")
	}
	m := Meta{MediaStorageSOPClassUID: "1.2.840.10008.5.1.4.1.1.7", MediaStorageSOPInstanceUID: "1.2.3", TransferSyntaxUID: "1.2.840.10008.1.2", ImplementationClassUID: "2.25.1", SourceApplicationEntityTitle: "ODD"}
	// (0010,0010) PatientName "DOE^J" in Implicit VR Little Endian.
	file := append(AppendHeader(nil, &m), 0x10, 0, 0x10, 0, 6, 0, 0, 0, 'D', 'O', 'E', '^', 'J', ' ')
	path := filepath.Join(t.TempDir(), "x.dcm")
	if err := os.WriteFile(path, file, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(dcmdump, "-q", path).CombinedOutput()
	if err != nil {
		t.Fatalf("dcmdump: %v\n%s", err, out)
	}
	for _, want := range []string{"LittleEndianImplicit", "[DOE^J]", "AE [ODD]", "1.2.3"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("dcmdump output lacks %q:\n%s", want, out)
		}
	}
}

func TestBadFiles(t *testing.T) {
	good := AppendHeader(nil, &Meta{MediaStorageSOPClassUID: "1.2", MediaStorageSOPInstanceUID: "1.3", TransferSyntaxUID: "1.2.840.10008.1.2", ImplementationClassUID: "2.25.1"})
	noTS := AppendHeader(nil, &Meta{MediaStorageSOPClassUID: "1.2", MediaStorageSOPInstanceUID: "1.3", ImplementationClassUID: "2.25.1"})
	hugeElement := append(append([]byte(nil), good[:PreambleLen+4]...), 0x02, 0, 0x02, 0, 'O', 'B', 0, 0, 0xFF, 0xFF, 0xFF, 0x7F)
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrNotPart10},
		{"no prefix", make([]byte, 200), ErrNotPart10},
		{"truncated meta", good[:len(good)-5], io.ErrUnexpectedEOF},
		{"no transfer syntax", noTS, nil},
		{"element of 2 GiB", hugeElement, nil},
	} {
		_, err := NewReader(bytes.NewReader(tc.in))
		if err == nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

func FuzzNewReader(f *testing.F) {
	f.Add(AppendHeader(nil, &Meta{MediaStorageSOPClassUID: "1.2", MediaStorageSOPInstanceUID: "1.3", TransferSyntaxUID: "1.2.840.10008.1.2", ImplementationClassUID: "2.25.1"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := NewReader(bytes.NewReader(b))
		if err != nil {
			return
		}
		again, err := NewReader(bytes.NewReader(AppendHeader(nil, &r.Meta)))
		if err != nil {
			t.Fatalf("re-encoded header does not read: %v", err)
		}
		if again.Meta != r.Meta {
			t.Fatalf("round trip changed the meta: %+v != %+v", again.Meta, r.Meta)
		}
	})
}
