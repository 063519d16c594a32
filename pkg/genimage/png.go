package genimage

import (
	"bytes"
	"fmt"
	"image"
	"image/png"
	"math"
	"slices"

	"github.com/pacsflow/pacsflow/pkg/imaging"
	"github.com/pacsflow/pacsflow/pkg/model"
)

// PNG renders a greyscale DICOM object, such as one Write made, as an 8-bit greyscale PNG of
// its size, for previews. Its middle frame (imaging.Decode) goes through imaging.Preprocess at
// its own size, where the resize is the identity, onto 0 to 255: the frame's first VOI window
// with the LINEAR function of PS3.3 C.11.2.1.2.1, or without one the frame's lowest to highest
// value; MONOCHROME1 inverted. Write's window spans the stored range, so that a model value v
// becomes the grey level round(255·v), give or take one.
func PNG(obj []byte) ([]byte, error) {
	f, err := imaging.Decode(obj)
	if err != nil {
		return nil, fmt.Errorf("render PNG: %w", err)
	}
	p := model.Preprocessing{ImageSize: [2]int{f.Rows, f.Cols}, Channels: 1, ValueRange: [2]float64{0, 255}}
	if f.Window == nil {
		// The window whose LINEAR function maps the lowest value to 0 and the highest to 1.
		lo, hi := float64(slices.Min(f.Values)), float64(slices.Max(f.Values))
		p.Window = model.Window{Center: (lo+hi)/2 + 0.5, Width: hi - lo + 1}
	}
	grey := imaging.Preprocess(f, p)
	img := image.NewGray(image.Rect(0, 0, f.Cols, f.Rows))
	for i, v := range grey.Pixels {
		img.Pix[i] = uint8(math.Round(float64(v)))
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		return nil, fmt.Errorf("render PNG: %w", err)
	}
	return b.Bytes(), nil
}
