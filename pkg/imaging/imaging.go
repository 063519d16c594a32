// Package imaging turns the pixels of a DICOM instance into the images a model takes: it
// decodes one frame with github.com/suyashkumar/dicom, applies the modality rescale, the VOI
// window and MONOCHROME1 inversion, and resizes to the model's input (schemas/model-contract.md,
// "Images").
package imaging

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/frame"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/pacsflow/pacsflow/pkg/part10"
)

// ErrUnsupported marks an instance whose pixels pacsflow cannot decode or the model cannot
// take; the error says why, for the skip reason in events.
var ErrUnsupported = errors.New("unsupported image")

func unsupported(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUnsupported, fmt.Sprintf(format, args...))
}

// transferSyntaxes are those whose pixel data Decode reads: the native ones, and JPEG
// Baseline, which Go's image/jpeg decodes. Others need transcoding before they reach pacsflow.
const (
	jpegBaseline = "1.2.840.10008.1.2.4.50"
	bigEndian    = "1.2.840.10008.1.2.2"
)

var transferSyntaxes = map[string]string{
	"1.2.840.10008.1.2":      "Implicit VR Little Endian",
	"1.2.840.10008.1.2.1":    "Explicit VR Little Endian",
	"1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
	"1.2.840.10008.1.2.2":    "Explicit VR Big Endian",
	"1.2.840.10008.1.2.4.50": "JPEG Baseline (Process 1)",
}

// Frame is one greyscale frame in modality units (after Rescale Slope and Intercept, the
// frame's own in an enhanced multi-frame instance), with what the rest of preprocessing needs
// to know about it.
type Frame struct {
	Rows, Cols int
	Values     []float32
	// Index is which frame of the instance this is (0-based), of NumberOfFrames.
	Index, NumberOfFrames int
	Modality              string
	Photometric           string
	// Window is the frame's first VOI window, if it has one: from its functional groups
	// (per-frame, else shared) in an enhanced multi-frame instance, else the top level's.
	Window *Window
}

// Decode parses a Part 10 instance and returns its middle frame (the only one for a
// single-frame image): for a multi-frame instance, the middle frame is the one most likely to
// show the anatomy the study is about. Errors that wrap ErrUnsupported name what pacsflow
// cannot decode; others mean the instance is not valid DICOM.
func Decode(instance []byte) (f *Frame, err error) {
	meta, _, err := part10.ParseHeader(instance)
	if err != nil {
		return nil, fmt.Errorf("read file meta information: %w", err)
	}
	if _, ok := transferSyntaxes[meta.TransferSyntaxUID]; !ok {
		return nil, unsupported("transfer syntax %s cannot be decoded (pacsflow decodes %s); transcode it first, e.g. with dcmdjpeg or dcmdjpls",
			meta.TransferSyntaxUID, strings.Join(slices.Sorted(maps.Values(transferSyntaxes)), ", "))
	}
	defer func() {
		// The parser is known to panic on some malformed input; an instance that crashes it
		// is one pacsflow cannot read, not a reason to stop the service.
		if p := recover(); p != nil {
			f, err = nil, fmt.Errorf("%w: the DICOM parser failed: %v", ErrUnsupported, p)
		}
	}()
	var opts []dicom.ParseOption
	native := meta.TransferSyntaxUID != jpegBaseline
	if native {
		// The parser unpacks native pixel data one sample at a time, every frame; taking
		// the raw bytes and unpacking the one frame needed is several times faster.
		opts = append(opts, dicom.SkipProcessingPixelDataValue())
	}
	ds, err := dicom.Parse(bytes.NewReader(instance), int64(len(instance)), nil, opts...)
	if err != nil {
		return nil, fmt.Errorf("parse instance: %w", err)
	}
	return frameOf(&ds, meta.TransferSyntaxUID == bigEndian)
}

func frameOf(ds *dicom.Dataset, bigEndian bool) (*Frame, error) {
	f := &Frame{Modality: text(ds, tag.Modality), Photometric: text(ds, tag.PhotometricInterpretation)}
	if f.Photometric != "MONOCHROME1" && f.Photometric != "MONOCHROME2" {
		return nil, unsupported("photometric interpretation %q is not greyscale (MONOCHROME1 or MONOCHROME2)", f.Photometric)
	}
	e, err := ds.FindElementByTag(tag.PixelData)
	if err != nil {
		return nil, unsupported("no pixel data")
	}
	info, ok := e.Value.GetValue().(dicom.PixelDataInfo)
	switch {
	case !ok || info.ParseErr != nil:
		return nil, unsupported("pixel data cannot be read: %v", info.ParseErr)
	case info.IntentionallyUnprocessed:
		err = f.fromNative(info.UnprocessedValueData, ds, bigEndian)
	case len(info.Frames) == 0 || !info.Frames[0].Encapsulated:
		return nil, unsupported("no pixel data frames")
	default:
		f.NumberOfFrames = len(info.Frames)
		f.Index = len(info.Frames) / 2
		err = f.fromJPEG(info.Frames[f.Index])
	}
	if err != nil {
		return nil, err
	}
	// Enhanced multi-frame IODs (Enhanced CT, MR, XA...) keep the rescale and the window in
	// the Multi-frame Functional Groups (PS3.3 C.7.6.16), not at the top level: the selected
	// frame's item of the Per-frame Functional Groups Sequence (item N is frame N+1) overrides
	// the Shared Functional Groups Sequence, which overrides the top level.
	perFrame := item(ds.Elements, tag.PerFrameFunctionalGroupsSequence, f.Index)
	shared := item(ds.Elements, tag.SharedFunctionalGroupsSequence, 0)
	slope, intercept := 1.0, 0.0
	for _, els := range sources(perFrame, shared, tag.PixelValueTransformationSequence, ds.Elements) {
		// Slope and intercept come from the same place: they describe one transformation,
		// and a default for the one missing is truer to it than the other level's value.
		s, okS := value(els, tag.RescaleSlope)
		b, okB := value(els, tag.RescaleIntercept)
		if okS || okB {
			if okS {
				slope = s
			}
			if okB {
				intercept = b
			}
			break
		}
	}
	if slope == 0 {
		slope = 1 // a zero slope is an encoding error; ignoring it keeps the image readable
	}
	for i, v := range f.Values {
		f.Values[i] = float32(float64(v)*slope + intercept)
	}
	for _, els := range sources(perFrame, shared, tag.FrameVOILUTSequence, ds.Elements) {
		// A level whose window cannot be used (no centre, a width under 1) is passed over
		// rather than left windowless, so a damaged per-frame item falls back on the shared one.
		c, okC := value(els, tag.WindowCenter)
		w, okW := value(els, tag.WindowWidth)
		if okC && okW && w >= 1 {
			f.Window = &Window{Center: c, Width: w}
			break
		}
	}
	return f, nil
}

// sources returns where the selected frame's attributes of one functional group macro may be,
// most specific first: the first item of sequence seq (the macro) in the frame's per-frame
// functional group, then in the shared one, then the top level of the data set. A level
// that is absent is nil, where lookups find nothing. An array, not a slice, so that it needs
// no allocation of its own.
func sources(perFrame, shared []*dicom.Element, seq tag.Tag, top []*dicom.Element) [3][]*dicom.Element {
	return [3][]*dicom.Element{item(perFrame, seq, 0), item(shared, seq, 0), top}
}

// item returns the elements of item i of the sequence t in els, or nil where there is none.
// A damaged instance may have t with another VR, too few items or none: each is only absence
// here, never a panic; and it only indexes what the parser built, so what it allocates does
// not grow with what the sequence holds.
func item(els []*dicom.Element, t tag.Tag, i int) []*dicom.Element {
	e := find(els, t)
	if e == nil || e.Value == nil {
		return nil
	}
	items, ok := e.Value.GetValue().([]*dicom.SequenceItemValue)
	if !ok || i < 0 || i >= len(items) || items[i] == nil {
		return nil
	}
	elems, _ := items[i].GetValue().([]*dicom.Element)
	return elems
}

// find returns the element t of els (not looking into sequences), or nil.
func find(els []*dicom.Element, t tag.Tag) *dicom.Element {
	for _, e := range els {
		if e != nil && e.Tag == t {
			return e
		}
	}
	return nil
}

// fromNative unpacks the middle frame of native pixel data: Bits Allocated 8, 16 or 32, one
// sample per pixel, values masked to Bits Stored and sign-extended when Pixel Representation
// says they are signed.
func (f *Frame) fromNative(raw []byte, ds *dicom.Dataset, bigEndian bool) error {
	if spp := number(ds, tag.SamplesPerPixel, 1); spp != 1 {
		return unsupported("%v samples per pixel, want 1", spp)
	}
	f.Rows, f.Cols = int(number(ds, tag.Rows, 0)), int(number(ds, tag.Columns, 0))
	allocated := int(number(ds, tag.BitsAllocated, 0))
	stored := int(number(ds, tag.BitsStored, float64(allocated)))
	signed := number(ds, tag.PixelRepresentation, 0) == 1
	if allocated != 8 && allocated != 16 && allocated != 32 {
		return unsupported("%d bits allocated", allocated)
	}
	if stored < 1 || stored > allocated {
		return unsupported("bits stored %d with %d bits allocated", stored, allocated)
	}
	if f.Rows <= 0 || f.Cols <= 0 {
		return unsupported("image of %d×%d", f.Rows, f.Cols)
	}
	size := allocated / 8
	frameBytes := f.Rows * f.Cols * size
	if frameBytes/size/f.Cols != f.Rows || len(raw) < frameBytes {
		return unsupported("pixel data has %d bytes, one %d×%d frame of %d bits needs %d", len(raw), f.Rows, f.Cols, allocated, frameBytes)
	}
	f.NumberOfFrames = max(int(number(ds, tag.NumberOfFrames, 1)), 1)
	if f.NumberOfFrames > len(raw)/frameBytes {
		f.NumberOfFrames = len(raw) / frameBytes // a short last frame is not a frame
	}
	f.Index = f.NumberOfFrames / 2
	px := raw[f.Index*frameBytes : (f.Index+1)*frameBytes]
	var order binary.ByteOrder = binary.LittleEndian
	if bigEndian {
		order = binary.BigEndian
	}
	mask := uint32(1)<<stored - 1
	sign := uint32(1) << (stored - 1)
	f.Values = make([]float32, f.Rows*f.Cols)
	for i := range f.Values {
		var v uint32
		switch size {
		case 1:
			v = uint32(px[i])
		case 2:
			v = uint32(order.Uint16(px[2*i:]))
		default:
			v = order.Uint32(px[4*i:])
		}
		v &= mask // bits above Bits Stored may hold overlays
		if signed && v&sign != 0 {
			f.Values[i] = float32(int64(v) - int64(mask) - 1)
		} else {
			f.Values[i] = float32(v)
		}
	}
	return nil
}

func (f *Frame) fromJPEG(fr *frame.Frame) error {
	img, err := fr.EncapsulatedData.GetImage()
	if err != nil {
		return unsupported("JPEG frame cannot be decoded: %v", err)
	}
	g, ok := img.(*image.Gray)
	if !ok {
		return unsupported("JPEG frame is %T, not greyscale", img)
	}
	b := g.Bounds()
	f.Rows, f.Cols = b.Dy(), b.Dx()
	f.Values = make([]float32, f.Rows*f.Cols)
	for y := range f.Rows {
		for x := range f.Cols {
			f.Values[y*f.Cols+x] = float32(g.Pix[y*g.Stride+x])
		}
	}
	return nil
}

// Window is a VOI window (PS3.3 C.11.2.1.2).
type Window struct {
	Center, Width float64
}

// Target is what Preprocess maps a frame onto: a model's input size, channels and value range
// (model.Preprocessing.Input gives the contract's), and the window of frames without their own.
type Target struct {
	Size       [2]int // rows, columns
	Channels   int
	ValueRange [2]float64
	Window     Window
}

// Preprocess turns a frame into a model's input, in row order with the channels last: the VOI
// window (the frame's own, else the target's) mapped linearly onto the value range as PS3.3
// C.11.2.1.2 defines it, MONOCHROME1 inverted so that higher is brighter, bilinear resizing to
// the target's size, and the grey value repeated over the channels.
func Preprocess(f *Frame, t Target) []float32 {
	w := t.Window
	if f.Window != nil {
		w = *f.Window
	}
	lo, hi := t.ValueRange[0], t.ValueRange[1]
	invert := f.Photometric == "MONOCHROME1"
	// Windowing each sample the resize reads, rather than the whole frame first, gives the
	// same values and touches only the pixels the model sees.
	windowed := func(i int) float32 {
		y := voiLinear(float64(f.Values[i]), w)
		if invert {
			y = 1 - y
		}
		return float32(lo + y*(hi-lo))
	}
	h, wd, ch := t.Size[0], t.Size[1], t.Channels
	out := make([]float32, h*wd*ch)
	resizeBilinear(windowed, f.Rows, f.Cols, h, wd, func(i int, v float32) {
		for c := range ch {
			out[i*ch+c] = v
		}
	})
	return out
}

// voiLinear is the LINEAR VOI LUT function of PS3.3 C.11.2.1.2.1 with output range [0,1].
func voiLinear(x float64, w Window) float64 {
	c, width := w.Center, w.Width
	switch {
	case x <= c-0.5-(width-1)/2:
		return 0
	case x > c-0.5+(width-1)/2:
		return 1
	}
	return (x-(c-0.5))/(width-1) + 0.5
}

// resizeBilinear samples src (rows×cols, read through at) at h×w points with pixel centres aligned (as
// TensorFlow's resize with half_pixel_centers does) and hands each value to set in row order.
func resizeBilinear(at func(i int) float32, rows, cols, h, w int, set func(i int, v float32)) {
	sy, sx := float64(rows)/float64(h), float64(cols)/float64(w)
	for y := range h {
		fy := math.Max((float64(y)+0.5)*sy-0.5, 0)
		y0 := min(int(fy), rows-1)
		y1 := min(y0+1, rows-1)
		dy := float32(fy - float64(y0))
		for x := range w {
			fx := math.Max((float64(x)+0.5)*sx-0.5, 0)
			x0 := min(int(fx), cols-1)
			x1 := min(x0+1, cols-1)
			dx := float32(fx - float64(x0))
			top := at(y0*cols+x0)*(1-dx) + at(y0*cols+x1)*dx
			bottom := at(y1*cols+x0)*(1-dx) + at(y1*cols+x1)*dx
			set(y*w+x, top*(1-dy)+bottom*dy)
		}
	}
}

func text(ds *dicom.Dataset, t tag.Tag) string {
	e, err := ds.FindElementByTag(t)
	if err != nil {
		return ""
	}
	if s, ok := e.Value.GetValue().([]string); ok && len(s) > 0 {
		return strings.TrimSpace(s[0])
	}
	return ""
}

// number reads the first value of an integer or decimal-string element, or def.
func number(ds *dicom.Dataset, t tag.Tag, def float64) float64 {
	if v, ok := value(ds.Elements, t); ok {
		return v
	}
	return def
}

// value reads the first value of the integer or decimal-string element t of els, and whether
// there is one. NaN and infinities, which strconv accepts but an IS or DS cannot hold, count
// as none: one of them in a rescale would make every pixel NaN.
func value(els []*dicom.Element, t tag.Tag) (float64, bool) {
	e := find(els, t)
	if e == nil || e.Value == nil {
		return 0, false
	}
	switch v := e.Value.GetValue().(type) {
	case []int:
		if len(v) > 0 {
			return float64(v[0]), true
		}
	case []float64:
		if len(v) > 0 && !math.IsNaN(v[0]) && !math.IsInf(v[0], 0) {
			return v[0], true
		}
	case []string:
		if len(v) > 0 {
			if f, err := strconv.ParseFloat(strings.TrimSpace(v[0]), 64); err == nil && !math.IsNaN(f) && !math.IsInf(f, 0) {
				return f, true
			}
		}
	}
	return 0, false
}
