package imaging

import (
	"image"
	"math"
	"slices"
)

// Render maps a frame onto 8-bit grey for display, at most maxSide pixels
// on its longer side (0: its own size), through Preprocess: the frame's
// first VOI window with the LINEAR function of PS3.3 C.11.2.1.2.1, or
// without one its lowest to highest value; MONOCHROME1 inverted; bilinear
// resizing.
func Render(f *Frame, maxSide int) *image.Gray {
	rows, cols := f.Rows, f.Cols
	if maxSide > 0 && max(rows, cols) > maxSide {
		scale := float64(maxSide) / float64(max(rows, cols))
		rows, cols = max(1, int(math.Round(float64(rows)*scale))), max(1, int(math.Round(float64(cols)*scale)))
	}
	t := Target{Size: [2]int{rows, cols}, Channels: 1, ValueRange: [2]float64{0, 255}}
	if f.Window == nil {
		// The window whose LINEAR function maps the lowest value to 0 and the highest to 1.
		lo, hi := float64(slices.Min(f.Values)), float64(slices.Max(f.Values))
		t.Window = Window{Center: (lo+hi)/2 + 0.5, Width: hi - lo + 1}
	}
	img := image.NewGray(image.Rect(0, 0, cols, rows))
	for i, v := range Preprocess(f, t) {
		img.Pix[i] = uint8(math.Round(float64(v)))
	}
	return img
}
