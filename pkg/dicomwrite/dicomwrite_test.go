package dicomwrite

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/pacsflow/pacsflow/pkg/part10"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

// TestEncoding: the bytes of each kind of element, Explicit VR Little Endian (PS3.5 §7.1.2):
// tag, VR, then a 16-bit length, or for the long VRs two reserved bytes and a 32-bit length;
// values padded to even length (PS3.5 §6.2) and elements in tag order.
func TestEncoding(t *testing.T) {
	for _, c := range []struct {
		name  string
		build func(d *DataSet)
		want  string
	}{
		{"UI padded with NUL", func(d *DataSet) { d.Text(tag.SOPInstanceUID, "1.2.3") },
			"\x08\x00\x18\x00UI\x06\x00" + "1.2.3\x00"},
		{"CS padded with space", func(d *DataSet) { d.Text(tag.PatientSex, "F") },
			"\x10\x00\x40\x00CS\x02\x00" + "F "},
		{"even length unpadded", func(d *DataSet) { d.Text(tag.Modality, "OT") },
			"\x08\x00\x60\x00CS\x02\x00" + "OT"},
		{"empty Type 2", func(d *DataSet) { d.Text(tag.AccessionNumber) },
			"\x08\x00\x50\x00SH\x00\x00"},
		{"values joined by backslashes", func(d *DataSet) { d.Text(tag.ImageType, "DERIVED", "SECONDARY") },
			"\x08\x00\x08\x00CS\x12\x00" + `DERIVED\SECONDARY `},
		{"DS", func(d *DataSet) { d.Decimal(tag.PixelSpacing, 0.5, 2.734375) },
			"\x28\x00\x30\x00DS\x0c\x00" + `0.5\2.734375`},
		{"DS of 10 significant digits", func(d *DataSet) { d.Decimal(tag.SliceLocation, -1.0/3) },
			"\x20\x00\x41\x10DS\x0e\x00" + "-0.3333333333 "},
		{"IS", func(d *DataSet) { d.Integer(tag.InstanceNumber, 7) },
			"\x20\x00\x13\x00IS\x02\x00" + "7 "},
		{"US", func(d *DataSet) { d.US(tag.Rows, 512) },
			"\x28\x00\x10\x00US\x02\x00" + "\x00\x02"},
		{"SS", func(d *DataSet) { d.SS(tag.PixelIntensityRelationshipSign, -1) },
			"\x28\x00\x41\x10SS\x02\x00" + "\xff\xff"},
		{"UT: long header", func(d *DataSet) { d.Text(tag.TextValue, "abc") },
			"\x40\x00\x60\xa1UT\x00\x00\x04\x00\x00\x00" + "abc "},
		{"OW pixel data: long header", func(d *DataSet) { d.Pixels([]uint16{1, 0x0203}) },
			"\xe0\x7f\x10\x00OW\x00\x00\x04\x00\x00\x00" + "\x01\x00\x03\x02"},
		{"empty sequence", func(d *DataSet) { d.Sequence(tag.AcquisitionContextSequence) },
			"\x40\x00\x55\x05SQ\x00\x00\x00\x00\x00\x00"},
		{"sequence of defined lengths", func(d *DataSet) { d.Sequence(tag.AnatomicRegionSequence, Code("T-D3000", "SRT", "Chest")) },
			"\x08\x00\x18\x22SQ\x00\x00\x32\x00\x00\x00" + // 8 + 42
				"\xfe\xff\x00\xe0\x2a\x00\x00\x00" + // item of 16 + 12 + 14
				"\x08\x00\x00\x01SH\x08\x00T-D3000 " +
				"\x08\x00\x02\x01SH\x04\x00SRT " +
				"\x08\x00\x04\x01LO\x06\x00Chest "},
		{"nested sequence: its long header counts in the item's length", func(d *DataSet) {
			var item DataSet
			item.Sequence(tag.PurposeOfReferenceCodeSequence, Code("1", "DCM", "x"))
			item.Text(tag.ReferencedSOPInstanceUID, "1.2")
			d.Sequence(tag.SourceImageSequence, item)
		},
			"\x08\x00\x12\x21SQ\x00\x00\x48\x00\x00\x00" + // 8 + 64
				"\xfe\xff\x00\xe0\x40\x00\x00\x00" + // item of 12 + 52, in tag order
				"\x08\x00\x55\x11UI\x04\x00" + "1.2\x00" +
				"\x40\x00\x70\xa1SQ\x00\x00\x28\x00\x00\x00" + // 8 + 32
				"\xfe\xff\x00\xe0\x20\x00\x00\x00" +
				"\x08\x00\x00\x01SH\x02\x001 " +
				"\x08\x00\x02\x01SH\x04\x00DCM " +
				"\x08\x00\x04\x01LO\x02\x00x "},
		{"ascending tag order", func(d *DataSet) {
			d.US(tag.Columns, 2)
			d.Text(tag.Modality, "OT")
			d.US(tag.Rows, 1)
		},
			"\x08\x00\x60\x00CS\x02\x00OT" + "\x28\x00\x10\x00US\x02\x00\x01\x00" + "\x28\x00\x11\x00US\x02\x00\x02\x00"},
		{"private block", func(d *DataSet) {
			p := d.PrivateBlock(0x0039, 0x10, "PACSFLOW GENERATE 1")
			p.UL(0x07, 5)
			p.Text(0x02, "UT", "x")
			p.Text(0x01, "LO", "ab")
		},
			"\x39\x00\x10\x00LO\x14\x00" + "PACSFLOW GENERATE 1 " +
				"\x39\x00\x01\x10LO\x02\x00" + "ab" +
				"\x39\x00\x02\x10UT\x00\x00\x02\x00\x00\x00" + "x " +
				"\x39\x00\x07\x10UL\x04\x00" + "\x05\x00\x00\x00"},
		{"private block 0xA5 of group 0x0073", func(d *DataSet) { d.PrivateBlock(0x0073, 0xa5, "X").Text(0xff, "SH", "y") },
			"\x73\x00\xa5\x00LO\x02\x00" + "X " + "\x73\x00\xff\xa5SH\x02\x00" + "y "},
	} {
		t.Run(c.name, func(t *testing.T) {
			var d DataSet
			c.build(&d)
			if err := d.check(); err != nil {
				t.Fatal(err)
			}
			if got := d.appendTo(nil); !bytes.Equal(got, []byte(c.want)) {
				t.Errorf("\n got % x\nwant % x", got, c.want)
			}
			if d.size() != len(c.want) {
				t.Errorf("size %d, encoded %d", d.size(), len(c.want))
			}
		})
	}
}

// sop returns a data set with the UIDs Encode needs.
func sop() DataSet {
	var d DataSet
	d.Text(tag.SOPClassUID, uid.CTImageStorage)
	d.Text(tag.SOPInstanceUID, "1.2.3")
	return d
}

// TestEncode: the file meta information repeats the SOP Class and Instance UIDs, and the data set
// follows it.
func TestEncode(t *testing.T) {
	d := sop()
	d.Text(tag.Modality, "CT")
	b, err := d.Encode()
	if err != nil {
		t.Fatal(err)
	}
	meta, offset, err := part10.ParseHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	want := part10.Meta{
		MediaStorageSOPClassUID: uid.CTImageStorage, MediaStorageSOPInstanceUID: "1.2.3",
		TransferSyntaxUID: uid.ExplicitVRLittleEndian, ImplementationClassUID: uid.ImplementationClassUID,
		ImplementationVersionName: uid.ImplementationVersionName,
	}
	if meta != want {
		t.Errorf("meta %+v, want %+v", meta, want)
	}
	if got := b[offset:]; !bytes.Equal(got, d.appendTo(nil)) {
		t.Errorf("data set % x, want % x", got, d.appendTo(nil))
	}
}

// TestEncodeRefuses: what Encode reports, naming the element.
func TestEncodeRefuses(t *testing.T) {
	for _, c := range []struct {
		name  string
		build func() DataSet
		want  string
	}{
		{"no SOP Instance UID", func() DataSet {
			var d DataSet
			d.Text(tag.SOPClassUID, uid.CTImageStorage)
			return d
		}, "lacks the SOP Class or SOP Instance UID"},
		{"element twice", func() DataSet {
			d := sop()
			d.Text(tag.Modality, "CT")
			d.Text(tag.Modality, "MR")
			return d
		}, "element (0008,0060) appears twice"},
		{"element twice in an item", func() DataSet {
			d := sop()
			item := Code("1", "DCM", "x")
			item.Text(tag.CodeValue, "2")
			d.Sequence(tag.AnatomicRegionSequence, item)
			return d
		}, "item 1 of (0008,2218): element (0008,0100) appears twice"},
		{"too long for a 16-bit length", func() DataSet {
			d := sop()
			d.Text(tag.ImageComments, strings.Repeat("x", 1<<16))
			return d
		}, "element (0020,4000) of 65536 bytes is too long for VR LT"},
		{"private block in an even group", func() DataSet {
			d := sop()
			d.PrivateBlock(0x0038, 0x10, "X")
			return d
		}, "element (0038,0010): group 0038 cannot hold private elements"},
		{"private block in group 0007", func() DataSet {
			d := sop()
			d.PrivateBlock(0x0007, 0x10, "X")
			return d
		}, "element (0007,0010): group 0007 cannot hold private elements"},
		{"private block below 0x10", func() DataSet {
			d := sop()
			d.PrivateBlock(0x0039, 0x0f, "X")
			return d
		}, "private element (0039,000f) is in a block below 0x10"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := c.build().Encode()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Encode: %v, want an error with %q", err, c.want)
			}
		})
	}
	// A long VR takes the value that a short one refuses.
	d := sop()
	d.Text(tag.TextValue, strings.Repeat("x", 1<<16))
	if _, err := d.Encode(); err != nil {
		t.Errorf("UT of 65536 bytes: %v", err)
	}
}

// TestDCMTKReads: dcmdump reads a data set with every kind of element, private block included,
// without a warning, and shows the values written.
func TestDCMTKReads(t *testing.T) {
	dcmdump, err := exec.LookPath("dcmdump")
	if err != nil {
		t.Fatal("dcmdump not found: install DCMTK (apt-get install dcmtk) or run ./scripts/test.sh")
	}
	d := sop()
	d.Text(tag.ImageType, "DERIVED", "SECONDARY")
	d.Text(tag.AccessionNumber)
	d.Text(tag.PatientName, "DOE^JANE")
	d.Decimal(tag.PixelSpacing, 0.5, 0.5)
	d.Integer(tag.InstanceNumber, 3)
	d.US(tag.Rows, 2)
	d.US(tag.Columns, 2)
	d.SS(tag.PixelIntensityRelationshipSign, -1)
	var item DataSet
	item.Text(tag.ReferencedSOPClassUID, uid.CTImageStorage)
	item.Text(tag.ReferencedSOPInstanceUID, "1.2.3.4")
	item.Sequence(tag.PurposeOfReferenceCodeSequence, Code("121322", "DCM", "Source image for image processing operation"))
	d.Sequence(tag.SourceImageSequence, item)
	d.Sequence(tag.AcquisitionContextSequence)
	p := d.PrivateBlock(0x0039, 0x10, "PACSFLOW TEST 1")
	p.Text(0x01, "LO", "odd")
	p.Text(0x02, "UT", "a longer text")
	p.UL(0x03, 70000)
	d.Pixels([]uint16{0, 1, 2, 4095})
	b, err := d.Encode()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "x.dcm")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(dcmdump, "-E", "+L", path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("dcmdump: %v\n%s%s", err, stderr.Bytes(), out)
	}
	for _, want := range []string{
		`[DERIVED\SECONDARY]`, "(0008,0050) SH (no value available)", "[DOE^JANE]", `[0.5\0.5]`, "IS [3]",
		"(0028,0010) US 2", "SS -1", "(Sequence with explicit length #=1)", "[121322]", "[1.2.3.4]",
		"(0039,0010) LO [PACSFLOW TEST 1]", "(0039,1001) LO [odd]", "(0039,1002) UT [a longer text]",
		"(0039,1003) UL 70000", "(7fe0,0010) OW 0000\\0001\\0002\\0fff",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("dcmdump output lacks %q:\n%s", want, out)
		}
	}
}
