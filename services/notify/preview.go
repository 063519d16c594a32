package notify

import (
	"bytes"
	"errors"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"net/http"

	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/imaging"
	"github.com/pacsflow/pacsflow/pkg/storage"
)

// previewSide bounds the preview's longer side, in pixels.
const previewSide = 1024

// maxPreviewBytes bounds the instance read to render a preview.
const maxPreviewBytes = 1 << 30

// preview renders an image of a study as PNG, with the boxes of the
// findings present in it: ?sop=UID, by default the key image of the draft
// report, else the most probable finding's image, else the first
// instance. It shows the middle frame of a multi-frame instance, the one
// the model read.
func (s *Service) preview(w http.ResponseWriter, r *http.Request) {
	e, list, ok := s.studyOf(w, r)
	if !ok {
		return
	}
	sop := r.URL.Query().Get("sop")
	if sop == "" {
		sop = keyImage(e, list)
	}
	key := objectKey(list, sop)
	if key == "" {
		writeError(w, http.StatusNotFound, "no image "+sop+" in study "+e.StudyInstanceUID)
		return
	}
	b, err := storage.ReadAll(r.Context(), s.cfg.Objects, key, maxPreviewBytes)
	if err != nil {
		status := http.StatusServiceUnavailable
		if errors.Is(err, storage.ErrNotFound) || errors.Is(err, storage.ErrTooLarge) {
			status = http.StatusNotFound
		}
		writeError(w, status, "read "+sop+": "+err.Error())
		return
	}
	f, err := imaging.Decode(b)
	if err != nil {
		writeError(w, http.StatusUnprocessableEntity, "render "+sop+": "+err.Error())
		return
	}
	img := boxes(imaging.Render(f, previewSide), findingsIn(e, sop))
	var out bytes.Buffer
	if err := png.Encode(&out, img); err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "image/png")
	w.Header().Set("Cache-Control", "private, max-age=60")
	_, _ = w.Write(out.Bytes()) // the client went away
}

// keyImage is the image a study's preview shows by default.
func keyImage(e *Entry, list *studyInstances) string {
	if e.AI != nil {
		if e.AI.KeyImage != nil {
			return e.AI.KeyImage.SOPInstanceUID
		}
		var best *events.Finding
		for i, f := range e.AI.Findings {
			if best == nil || f.Probability > best.Probability {
				best = &e.AI.Findings[i]
			}
		}
		if best != nil {
			return best.SOPInstanceUID
		}
	}
	if list != nil {
		for _, se := range list.Series {
			if len(se.Instances) > 0 {
				return se.Instances[0].SOPInstanceUID
			}
		}
	}
	return ""
}

func objectKey(list *studyInstances, sop string) string {
	if list == nil || sop == "" {
		return ""
	}
	for _, se := range list.Series {
		for _, in := range se.Instances {
			if in.SOPInstanceUID == sop {
				return in.Key
			}
		}
	}
	return ""
}

// findingsIn are the present findings located in an image.
func findingsIn(e *Entry, sop string) []events.Finding {
	var out []events.Finding
	if e.AI == nil {
		return nil
	}
	for _, f := range e.AI.Findings {
		if f.Present && f.SOPInstanceUID == sop && len(f.Box) == 4 {
			out = append(out, f)
		}
	}
	return out
}

// boxColor marks findings: a red that stays visible on any grey.
var boxColor = color.RGBA{R: 255, G: 48, B: 48, A: 255}

// boxes draws each finding's box (y0, x0, y1, x1 in [0,1]) two pixels wide
// on a colour copy of the image.
func boxes(grey *image.Gray, findings []events.Finding) image.Image {
	if len(findings) == 0 {
		return grey
	}
	b := grey.Bounds()
	img := image.NewRGBA(b)
	draw.Draw(img, b, grey, b.Min, draw.Src)
	h, w := float64(b.Dy()), float64(b.Dx())
	for _, f := range findings {
		r := image.Rect(int(f.Box[1]*w), int(f.Box[0]*h), int(f.Box[3]*w), int(f.Box[2]*h)).Intersect(b)
		if r.Empty() {
			continue
		}
		for _, edge := range []image.Rectangle{
			image.Rect(r.Min.X, r.Min.Y, r.Max.X, r.Min.Y+2), image.Rect(r.Min.X, r.Max.Y-2, r.Max.X, r.Max.Y),
			image.Rect(r.Min.X, r.Min.Y, r.Min.X+2, r.Max.Y), image.Rect(r.Max.X-2, r.Min.Y, r.Max.X, r.Max.Y),
		} {
			draw.Draw(img, edge.Intersect(r), image.NewUniform(boxColor), image.Point{}, draw.Src)
		}
	}
	return img
}
