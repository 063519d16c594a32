package imaging

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/pacsflow/pacsflow/internal/dicomtest"
	"github.com/pacsflow/pacsflow/pkg/part10"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

const crClass = "1.2.840.10008.5.1.4.1.1.1" // Computed Radiography Image Storage

// part10File encodes im as a Part 10 file in transfer syntax ts.
func part10File(im *dicomtest.Image, ts string) []byte {
	in := dicomtest.Instance{
		SOPClassUID: crClass, SOPInstanceUID: "1.2.3.4.5", StudyInstanceUID: "1.2.3.4", SeriesInstanceUID: "1.2.3.4.1",
		Modality: "CR", Image: im,
	}
	b := part10.AppendHeader(nil, &part10.Meta{
		MediaStorageSOPClassUID: crClass, MediaStorageSOPInstanceUID: in.SOPInstanceUID,
		TransferSyntaxUID: ts, ImplementationClassUID: uid.ImplementationClassUID,
	})
	return append(b, in.DataSet()...)
}

// ramp is a rows×cols×frames image whose value at (frame, y, x) is f(frame, y, x).
func ramp(rows, cols, frames int, f func(fr, y, x int) uint16) []uint16 {
	v := make([]uint16, 0, rows*cols*max(frames, 1))
	for fr := range max(frames, 1) {
		for y := range rows {
			for x := range cols {
				v = append(v, f(fr, y, x))
			}
		}
	}
	return v
}

var preprocessing = Target{
	Size: [2]int{4, 4}, Channels: 1, ValueRange: [2]float64{0, 1}, Window: Window{Center: 2048, Width: 4096},
}

func TestDecodeAndPreprocess(t *testing.T) {
	tests := []struct {
		name  string
		image dicomtest.Image
		p     Target
		want  func(y, x int) float64 // expected model input at (y, x), channel 0
	}{
		{"12-bit MONOCHROME2, the contract's window", dicomtest.Image{
			Rows: 4, Cols: 4, BitsStored: 12, Photometric: "MONOCHROME2",
			Values: ramp(4, 4, 0, func(_, y, x int) uint16 { return uint16(y*1000 + x*10) }),
		}, preprocessing, func(y, x int) float64 { return float64(y*1000+x*10) / 4095 }},
		{"MONOCHROME1 is inverted", dicomtest.Image{
			Rows: 4, Cols: 4, BitsStored: 12, Photometric: "MONOCHROME1",
			Values: ramp(4, 4, 0, func(_, y, x int) uint16 { return uint16(y*1000 + x*10) }),
		}, preprocessing, func(y, x int) float64 { return 1 - float64(y*1000+x*10)/4095 }},
		{"rescale, then the data set's window", dicomtest.Image{
			Rows: 4, Cols: 4, BitsStored: 12, Photometric: "MONOCHROME2",
			RescaleSlope: "2", RescaleIntercept: "-1024", WindowCenter: "40", WindowWidth: "401",
			Values: ramp(4, 4, 0, func(_, y, x int) uint16 { return uint16(412 + 100*y + x) }),
		}, preprocessing, func(y, x int) float64 {
			hu := float64(412+100*y+x)*2 - 1024
			return math.Min(math.Max((hu-39.5)/400+0.5, 0), 1)
		}},
		{"signed, bits above Bits Stored ignored", dicomtest.Image{
			Rows: 4, Cols: 4, BitsStored: 12, Signed: true, Photometric: "MONOCHROME2",
			WindowCenter: "0", WindowWidth: "4096",
			// -2048..: two's complement in 12 bits, with an overlay bit set in bit 15.
			Values: ramp(4, 4, 0, func(_, y, x int) uint16 { return uint16((y*4+x)*100-800)&0xFFF | 0x8000 }),
		}, preprocessing, func(y, x int) float64 { return (float64((y*4+x)*100-800)+0.5)/4095 + 0.5 }},
		{"the middle frame of three", dicomtest.Image{
			Rows: 4, Cols: 4, Frames: 3, BitsStored: 12, Photometric: "MONOCHROME2",
			Values: ramp(4, 4, 3, func(fr, _, _ int) uint16 { return uint16(fr * 1000) }),
		}, preprocessing, func(int, int) float64 { return 1000.0 / 4095 }},
		{"downsized 8×8 → 4×4 by 2×2 averages", dicomtest.Image{
			Rows: 8, Cols: 8, BitsStored: 12, Photometric: "MONOCHROME2",
			Values: ramp(8, 8, 0, func(_, y, x int) uint16 { return uint16(y*100 + x) }),
		}, preprocessing, func(y, x int) float64 { return (float64(2*y*100+2*x) + 50.5) / 4095 }},
		{"three channels", dicomtest.Image{
			Rows: 4, Cols: 4, BitsStored: 12, Photometric: "MONOCHROME2",
			Values: ramp(4, 4, 0, func(_, y, x int) uint16 { return uint16(y*1000 + x*10) }),
		}, Target{Size: [2]int{4, 4}, Channels: 3, ValueRange: [2]float64{-1, 1}, Window: Window{Center: 2048, Width: 4096}},
			func(y, x int) float64 { return -1 + 2*float64(y*1000+x*10)/4095 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Decode(part10File(&tt.image, uid.ExplicitVRLittleEndian))
			if err != nil {
				t.Fatal(err)
			}
			if f.Modality != "CR" || f.NumberOfFrames != max(tt.image.Frames, 1) {
				t.Errorf("frame %+v", f)
			}
			im := Preprocess(f, tt.p)
			ch := tt.p.Channels
			if len(im) != 16*ch {
				t.Fatalf("%d pixels", len(im))
			}
			for y := range 4 {
				for x := range 4 {
					for c := range ch {
						got, want := float64(im[(y*4+x)*ch+c]), tt.want(y, x)
						if math.Abs(got-want) > 1e-5 {
							t.Errorf("(%d,%d,%d) = %.6f, want %.6f", y, x, c, got, want)
						}
					}
				}
			}
		})
	}
}

// The functional group helpers below encode, in Explicit VR Little Endian, what
// internal/dicomtest does not write: the Multi-frame Functional Groups of an enhanced
// multi-frame instance (PS3.3 C.7.6.16).

// element encodes one data element.
func element(tag uint32, vr string, val []byte) []byte {
	b := binary.LittleEndian.AppendUint16(nil, uint16(tag>>16))
	b = binary.LittleEndian.AppendUint16(b, uint16(tag))
	b = append(b, vr...)
	switch vr {
	case "OB", "OW", "SQ", "UN", "UT":
		b = append(b, 0, 0)
		return append(binary.LittleEndian.AppendUint32(b, uint32(len(val))), val...)
	}
	return append(binary.LittleEndian.AppendUint16(b, uint16(len(val))), val...)
}

// decimal encodes a DS element.
func decimal(tag uint32, v string) []byte { return stringElement(tag, "DS", v) }

// stringElement encodes an element of a string VR, padded with a space to even length.
func stringElement(tag uint32, vr, v string) []byte {
	if len(v)%2 == 1 {
		v += " "
	}
	return element(tag, vr, []byte(v))
}

// sequence encodes a sequence of items, each the concatenation of its elements: of undefined
// length with delimitation items, as sample 5.dcm has them, or of defined lengths, so that
// tests cover both ways the parser reads.
func sequence(tag uint32, undefined bool, items ...[]byte) []byte {
	const undefinedLength = 0xFFFFFFFF
	var body []byte
	for _, it := range items {
		body = binary.LittleEndian.AppendUint32(body, 0xE000FFFE)
		if undefined {
			body = binary.LittleEndian.AppendUint32(body, undefinedLength)
			body = append(body, it...)
			body = binary.LittleEndian.AppendUint32(body, 0xE00DFFFE)
			body = binary.LittleEndian.AppendUint32(body, 0)
		} else {
			body = binary.LittleEndian.AppendUint32(body, uint32(len(it)))
			body = append(body, it...)
		}
	}
	if !undefined {
		return element(tag, "SQ", body)
	}
	b := element(tag, "SQ", nil)
	binary.LittleEndian.PutUint32(b[len(b)-4:], undefinedLength)
	b = append(b, body...)
	b = binary.LittleEndian.AppendUint32(b, 0xE0DDFFFE)
	return binary.LittleEndian.AppendUint32(b, 0)
}

const (
	sharedGroups   = 0x52009229 // Shared Functional Groups Sequence
	perFrameGroups = 0x52009230 // Per-frame Functional Groups Sequence
)

// rescaleMacro is a Pixel Value Transformation Sequence (0028,9145) of one item.
func rescaleMacro(slope, intercept string) []byte {
	return sequence(0x00289145, false, slices.Concat(decimal(0x00281052, intercept), decimal(0x00281053, slope), stringElement(0x00281054, "LO", "HU")))
}

// voiMacro is a Frame VOI LUT Sequence (0028,9132) of one item.
func voiMacro(center, width string) []byte {
	return sequence(0x00289132, false, slices.Concat(decimal(0x00281050, center), decimal(0x00281051, width)))
}

// withElements returns im as a Part 10 file with els (encoded elements, in tag order, between
// (0028,1053) and the pixel data, as the functional groups are) inserted before the pixel data.
func withElements(t testing.TB, im *dicomtest.Image, els ...[]byte) []byte {
	t.Helper()
	b := part10File(im, uid.ExplicitVRLittleEndian)
	at := len(b) - 12 - 2*len(im.Values) // Pixel Data is last: tag, VR, reserved, length, values
	if at < 0 || !bytes.HasPrefix(b[at:], []byte{0xE0, 0x7F, 0x10, 0x00, 'O', 'W'}) {
		t.Fatal("withElements: pixel data not where expected at the end of the data set")
	}
	return slices.Concat(b[:at:at], slices.Concat(els...), b[at:])
}

// TestDecodeFunctionalGroups decodes enhanced multi-frame instances: the rescale and window of
// the middle frame come from its Per-frame Functional Groups item, else the shared item, else
// the top level, each macro on its own.
func TestDecodeFunctionalGroups(t *testing.T) {
	// Three frames whose stored values differ by frame, so that the values show which
	// frame was decoded as well as which rescale was applied.
	im := dicomtest.Image{
		Rows: 4, Cols: 4, Frames: 3, BitsStored: 12, Photometric: "MONOCHROME2",
		// The top level has its own rescale and window, for the groups to override.
		RescaleSlope: "1", RescaleIntercept: "0", WindowCenter: "2048", WindowWidth: "4096",
		Values: ramp(4, 4, 3, func(fr, y, x int) uint16 { return uint16(1000*fr + 10*y + x) }),
	}
	shared := func(undefined bool) []byte {
		return sequence(sharedGroups, undefined, slices.Concat(voiMacro("40", "400"), rescaleMacro("2", "-1024")))
	}
	// frames gives each frame its own rescale and window, the middle one's (slope 0.5,
	// intercept 100, window -600/1500) unlike its neighbours'.
	frames := func(undefined bool) []byte {
		return sequence(perFrameGroups, undefined,
			slices.Concat(voiMacro("1", "10"), rescaleMacro("3", "-7")),
			slices.Concat(voiMacro(`-600\40`, `1500\400`), rescaleMacro("0.5", "100")),
			slices.Concat(voiMacro("2", "20"), rescaleMacro("5", "5")))
	}
	tests := []struct {
		name             string
		groups           [][]byte
		slope, intercept float64
		center, width    float64
	}{
		{"shared group overrides the top level", [][]byte{shared(true)}, 2, -1024, 40, 400},
		{"shared group of defined length", [][]byte{shared(false)}, 2, -1024, 40, 400},
		{"middle frame's per-frame group overrides the shared one", [][]byte{shared(true), frames(true)}, 0.5, 100, -600, 1500},
		{"per-frame groups of defined length, without shared ones", [][]byte{frames(false)}, 0.5, 100, -600, 1500},
		{"per-frame rescale, shared window", [][]byte{
			sequence(sharedGroups, true, voiMacro("40", "400")),
			sequence(perFrameGroups, true, rescaleMacro("3", "-7"), rescaleMacro("0.5", "100"), rescaleMacro("5", "5")),
		}, 0.5, 100, 40, 400},
		{"per-frame window, shared rescale", [][]byte{
			sequence(sharedGroups, false, rescaleMacro("2", "-1024")),
			sequence(perFrameGroups, false, voiMacro("1", "10"), voiMacro("-600", "1500"), voiMacro("2", "20")),
		}, 2, -1024, -600, 1500},
		{"per-frame slope alone: intercept 0, not the shared one", [][]byte{
			shared(true),
			sequence(perFrameGroups, true, nil, sequence(0x00289145, false, decimal(0x00281053, "3")), nil),
		}, 3, 0, 40, 400},
		{"per-frame items too few for the middle frame: shared", [][]byte{
			shared(true), sequence(perFrameGroups, true, slices.Concat(voiMacro("1", "10"), rescaleMacro("3", "-7"))),
		}, 2, -1024, 40, 400},
		{"empty rescale macro and unusable window per frame: shared", [][]byte{
			shared(false), sequence(perFrameGroups, false, nil, slices.Concat(voiMacro("7", "0"), sequence(0x00289145, false)), nil),
		}, 2, -1024, 40, 400},
		{"groups that are not sequences: top level", [][]byte{
			element(sharedGroups, "OB", []byte{1, 2, 3, 4}), element(perFrameGroups, "OB", nil),
		}, 1, 0, 2048, 4096},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Decode(withElements(t, &im, tt.groups...))
			if err != nil {
				t.Fatal(err)
			}
			if f.Index != 1 || f.NumberOfFrames != 3 {
				t.Fatalf("frame %d of %d, want 1 of 3", f.Index, f.NumberOfFrames)
			}
			for i, got := range f.Values {
				if want := float32(float64(1000+10*(i/4)+i%4)*tt.slope + tt.intercept); got != want {
					t.Fatalf("value %d = %v, want %v (slope %g, intercept %g, frame 1)", i, got, want, tt.slope, tt.intercept)
				}
			}
			if want := (Window{Center: tt.center, Width: tt.width}); f.Window == nil || *f.Window != want {
				t.Errorf("window %v, want %+v", f.Window, want)
			}
		})
	}
}

func TestDecodeUnsupported(t *testing.T) {
	grey := dicomtest.Image{Rows: 4, Cols: 4, BitsStored: 12, Photometric: "MONOCHROME2", Values: make([]uint16, 16)}
	rgb := grey
	rgb.Photometric = "RGB"
	tests := []struct {
		name string
		file []byte
		want string
	}{
		{"JPEG 2000", part10File(&grey, "1.2.840.10008.1.2.4.90"), "transfer syntax 1.2.840.10008.1.2.4.90 cannot be decoded"},
		{"colour", part10File(&rgb, uid.ExplicitVRLittleEndian), `photometric interpretation "RGB" is not greyscale`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode(tt.file)
			if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Decode = %v, want ErrUnsupported containing %q", err, tt.want)
			}
		})
	}
	if _, err := Decode([]byte("not DICOM")); err == nil || errors.Is(err, ErrUnsupported) {
		t.Errorf("Decode of garbage = %v, want a parse error", err)
	}
}

// FuzzDecode feeds Decode damaged instances: it must return an error or a frame whose size
// matches its rows and columns, never panic.
func FuzzDecode(f *testing.F) {
	grey := dicomtest.Image{Rows: 4, Cols: 4, BitsStored: 12, Photometric: "MONOCHROME2", Values: make([]uint16, 16)}
	f.Add(part10File(&grey, uid.ExplicitVRLittleEndian))
	f.Add(part10File(&grey, uid.ImplicitVRLittleEndian))
	// An enhanced multi-frame instance, so that the fuzzer mutates functional groups too.
	enhanced := grey
	enhanced.Frames, enhanced.Values = 3, make([]uint16, 3*16)
	f.Add(withElements(f, &enhanced,
		sequence(sharedGroups, true, slices.Concat(voiMacro("40", "400"), rescaleMacro("2", "-1024"))),
		sequence(perFrameGroups, false, rescaleMacro("3", "-7"), slices.Concat(voiMacro("1", "10"), rescaleMacro("0.5", "100")), nil)))
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := Decode(b)
		if err != nil {
			return
		}
		if len(fr.Values) != fr.Rows*fr.Cols {
			t.Fatalf("%d values for %d×%d", len(fr.Values), fr.Rows, fr.Cols)
		}
		Preprocess(fr, preprocessing)
	})
}
