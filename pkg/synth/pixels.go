package synth

import "math"

// maxStored is the largest value of the radiographs' 12 stored bits.
const maxStored = 1<<12 - 1

// upsample resizes a square image of n×n values to size×size by bilinear interpolation, pixel
// centres aligned (as TensorFlow's resize with half_pixel_centers, and pkg/imaging, do): so
// that a reader resizing back to n×n gets close to the phantom the model was trained on.
func upsample(src []uint16, n, size int) []uint16 {
	out := make([]uint16, size*size)
	scale := float64(n) / float64(size)
	// Both axes use the same weights: compute them once.
	lo, hi, frac := make([]int, size), make([]int, size), make([]float64, size)
	for i := range size {
		f := min(max((float64(i)+0.5)*scale-0.5, 0), float64(n-1))
		lo[i] = int(f)
		hi[i] = min(lo[i]+1, n-1)
		frac[i] = f - float64(lo[i])
	}
	for y := range size {
		top, bottom, dy := src[lo[y]*n:], src[hi[y]*n:], frac[y]
		for x := range size {
			x0, x1, dx := lo[x], hi[x], frac[x]
			t := float64(top[x0])*(1-dx) + float64(top[x1])*dx
			b := float64(bottom[x0])*(1-dx) + float64(bottom[x1])*dx
			out[y*size+x] = uint16(math.Round(t*(1-dy) + b*dy))
		}
	}
	return out
}

// invert turns MONOCHROME2 values into MONOCHROME1 ones: the stored value of a pixel shown
// white is the lowest.
func invert(v []uint16) []uint16 {
	out := make([]uint16, len(v))
	for i, x := range v {
		out[i] = maxStored - x
	}
	return out
}

// CT slices: ctSize² pixels over a ctField mm field of view, ctSliceSpacing mm apart, values
// in Hounsfield units stored as HU − ctIntercept.
const (
	ctSize         = 512
	ctField        = 350.0
	ctSliceSpacing = 5.0
	ctIntercept    = -1024
)

// Hounsfield units of the CT phantom's tissues.
const (
	huAir  = -1000
	huFat  = -100
	huSoft = 40
	huLung = -850
	huBone = 700
)

// ctSlice renders slice k of n of a plain body: an elliptic trunk with a rim of fat, two lungs
// that are largest in the middle slices, the heart between them and a vertebral body behind.
// width scales the trunk, so that patients differ. Values are HU − ctIntercept as stored
// (signed 16-bit, always positive here).
func ctSlice(k, n int, width float64) []uint16 {
	// The lungs grow from the apex to mid-chest and shrink towards the diaphragm.
	lung := math.Sin(math.Pi * (float64(k) + 0.5) / float64(n))
	type ellipse struct{ cx, cy, rx, ry float64 }
	inside := func(e ellipse, x, y float64) bool {
		dx, dy := (x-e.cx)/e.rx, (y-e.cy)/e.ry
		return dx*dx+dy*dy <= 1
	}
	// Millimetres from the centre of the field; x to the patient's left, y to the back.
	trunk := ellipse{0, 10, 150 * width, 105 * width}
	innerTrunk := ellipse{trunk.cx, trunk.cy, trunk.rx - 12, trunk.ry - 12}
	lungs := [2]ellipse{
		{-70 * width, 0, 50 * width * (0.4 + 0.6*lung), 70 * width * (0.4 + 0.6*lung)},
		{70 * width, 0, 48 * width * (0.4 + 0.6*lung), 70 * width * (0.4 + 0.6*lung)},
	}
	heart := ellipse{15 * width, -15, 45 * width, 40 * width}
	vertebra := ellipse{0, 80 * width, 18, 16}
	out := make([]uint16, ctSize*ctSize)
	px := ctField / ctSize
	for row := range ctSize {
		y := (float64(row)+0.5)*px - ctField/2
		for col := range ctSize {
			x := (float64(col)+0.5)*px - ctField/2
			hu := huAir
			switch {
			case !inside(trunk, x, y):
			case inside(vertebra, x, y):
				hu = huBone
			case lung > 0.3 && inside(heart, x, y):
				hu = huSoft
			case inside(lungs[0], x, y) || inside(lungs[1], x, y):
				hu = huLung
			case inside(innerTrunk, x, y):
				hu = huSoft
			default:
				hu = huFat
			}
			out[row*ctSize+col] = uint16(hu - ctIntercept)
		}
	}
	return out
}
