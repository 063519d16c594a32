package genimage

import (
	"bytes"
	"fmt"
	"image/png"

	"github.com/pacsflow/pacsflow/pkg/imaging"
)

// PNG renders a greyscale DICOM object, such as one Write made, as an 8-bit greyscale PNG of
// its size, for previews: its middle frame (imaging.Decode) through imaging.Render at its own
// size, where the resize is the identity. Write's window spans the stored range, so that a model value v
// becomes the grey level round(255·v), give or take one.
func PNG(obj []byte) ([]byte, error) {
	f, err := imaging.Decode(obj)
	if err != nil {
		return nil, fmt.Errorf("render PNG: %w", err)
	}
	img := imaging.Render(f, 0)
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		return nil, fmt.Errorf("render PNG: %w", err)
	}
	return b.Bytes(), nil
}
