package imaging

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/pacsflow/pacsflow/internal/dicomtest"
	"github.com/pacsflow/pacsflow/pkg/model"
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

var preprocessing = model.Preprocessing{
	ImageSize: [2]int{4, 4}, Channels: 1, ValueRange: [2]float64{0, 1}, Window: model.Window{Center: 2048, Width: 4096},
}

func TestDecodeAndPreprocess(t *testing.T) {
	tests := []struct {
		name  string
		image dicomtest.Image
		p     model.Preprocessing
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
		}, model.Preprocessing{ImageSize: [2]int{4, 4}, Channels: 3, ValueRange: [2]float64{-1, 1}, Window: model.Window{Center: 2048, Width: 4096}},
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
			if len(im.Pixels) != 16*ch {
				t.Fatalf("%d pixels", len(im.Pixels))
			}
			for y := range 4 {
				for x := range 4 {
					for c := range ch {
						got, want := float64(im.Pixels[(y*4+x)*ch+c]), tt.want(y, x)
						if math.Abs(got-want) > 1e-5 {
							t.Errorf("(%d,%d,%d) = %.6f, want %.6f", y, x, c, got, want)
						}
					}
				}
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
