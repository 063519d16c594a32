package understand

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pacsflow/pacsflow/pkg/dicommeta"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/imaging"
	"github.com/pacsflow/pacsflow/pkg/model"
	"github.com/pacsflow/pacsflow/pkg/storage"
)

// analysis is what the model made of one study generation's instances.
type analysis struct {
	// findings has one entry per label: the image with the highest
	// probability for it, the first in the event's order on a tie.
	findings []events.Finding
	// key is the image with the most probable finding, whose report is
	// the study's draft; nil when no image was analyzed.
	key     *keyImage
	images  int
	skipped []events.SkippedInstance
	// synthetic counts the skipped images that are synthetic.
	synthetic int
	decode    time.Duration
	inference time.Duration
}

// imageResult is one instance's outcome.
type imageResult struct {
	ref     events.InstanceRef
	frame   int // 1-based
	u       *model.Understanding
	skipped string
	decoded time.Time
	// submitted and inferred bound the image's wait for and run in a batch.
	submitted, inferred time.Time
}

// analyze runs the model on the instances the study event lists: their
// decoding overlaps, bounded by Decoders, and each goes to the batcher as
// soon as it is ready. An instance the model cannot take is skipped with a
// reason; a storage or model failure fails the whole study, to be retried.
func (s *Service) analyze(ctx context.Context, st *events.StudyReceived) (*analysis, error) {
	start := time.Now()
	var results []*imageResult
	for _, se := range st.Series {
		for _, in := range se.Instances {
			r := &imageResult{ref: in}
			if !s.accepted[se.Modality] {
				r.skipped = fmt.Sprintf("modality %s is not one the model accepts (%s)", orNone(se.Modality), strings.Join(s.contract.Preprocessing.AcceptedModalities, ", "))
			}
			results = append(results, r)
		}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for _, r := range results {
		if r.skipped != "" {
			continue
		}
		wg.Go(func() {
			if err := s.understandImage(ctx, r); err != nil {
				cancel(err)
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	return s.aggregate(results, start), nil
}

// understandImage fetches, decodes and preprocesses one instance, then runs
// it through the batcher.
func (s *Service) understandImage(ctx context.Context, r *imageResult) error {
	select {
	case s.decoders <- struct{}{}:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	img, frame, reason, err := s.prepare(ctx, r.ref)
	<-s.decoders
	r.decoded = time.Now()
	if err != nil {
		return err
	}
	if reason != "" {
		r.skipped = reason
		return nil
	}
	r.frame = frame
	r.submitted = time.Now()
	u, err := s.batcher.Do(ctx, img)
	if err != nil {
		return fmt.Errorf("understand instance %s: %w", r.ref.SOPInstanceUID, err)
	}
	r.inferred = time.Now()
	r.u = &u
	return nil
}

// prepare reads an instance and turns it into the model's input. It
// returns a skip reason for an instance the model cannot take, and an
// error when storage fails.
func (s *Service) prepare(ctx context.Context, ref events.InstanceRef) (img model.Image, frame int, skip string, err error) {
	if ref.Object.Size > s.cfg.MaxInstanceBytes {
		return img, 0, fmt.Sprintf("the instance has %d bytes, more than the %d the service reads", ref.Object.Size, s.cfg.MaxInstanceBytes), nil
	}
	b, err := storage.ReadAll(ctx, s.cfg.Objects, ref.Object.Key, s.cfg.MaxInstanceBytes)
	if err != nil {
		return img, 0, "", fmt.Errorf("read instance %s: %w", ref.SOPInstanceUID, err)
	}
	if m, err := dicommeta.Parse(b, true); err == nil {
		if why := m.Synthetic(); why != "" {
			return img, 0, syntheticPrefix + why + "): never analyzed or triaged", nil
		}
	}
	f, err := imaging.Decode(b)
	if err != nil {
		// Retrying cannot decode these bytes: the instance is skipped, with
		// the reason, whether pacsflow lacks a decoder or the data is bad.
		return img, 0, err.Error(), nil
	}
	if !s.accepted[f.Modality] {
		return img, 0, fmt.Sprintf("modality %s is not one the model accepts (%s)", orNone(f.Modality), strings.Join(s.contract.Preprocessing.AcceptedModalities, ", ")), nil
	}
	return s.contract.Preprocessing.Input(f), f.Index + 1, "", nil
}

// syntheticPrefix starts the skip reason of a synthetic image.
const syntheticPrefix = "a synthetic image ("

func orNone(modality string) string {
	if modality == "" {
		return "(none)"
	}
	return modality
}

// aggregate reduces the images' results to the study's findings.
func (s *Service) aggregate(results []*imageResult, start time.Time) *analysis {
	a := &analysis{findings: make([]events.Finding, 0, len(s.contract.Labels)), skipped: []events.SkippedInstance{}}
	var firstSubmit, lastDecode, lastInfer time.Time
	best := make([]*imageResult, len(s.contract.Labels))
	for _, r := range results {
		if r.decoded.After(lastDecode) {
			lastDecode = r.decoded
		}
		if r.u == nil {
			a.skipped = append(a.skipped, events.SkippedInstance{SOPInstanceUID: r.ref.SOPInstanceUID, Reason: r.skipped})
			if strings.HasPrefix(r.skipped, syntheticPrefix) {
				a.synthetic++
			}
			continue
		}
		a.images++
		if firstSubmit.IsZero() || r.submitted.Before(firstSubmit) {
			firstSubmit = r.submitted
		}
		if r.inferred.After(lastInfer) {
			lastInfer = r.inferred
		}
		for j := range best {
			if best[j] == nil || r.u.Findings[j].Probability > best[j].u.Findings[j].Probability {
				best[j] = r
			}
		}
		if score := float64(maxProbability(r.u)); a.key == nil || score > a.key.Score {
			a.key = &keyImage{SOPInstanceUID: r.ref.SOPInstanceUID, Frame: r.frame, Object: r.ref.Object, Score: score, Report: r.u.Report}
		}
	}
	if !lastDecode.IsZero() {
		a.decode = lastDecode.Sub(start)
	}
	if a.images == 0 {
		return a
	}
	a.inference = lastInfer.Sub(firstSubmit)
	for j, r := range best {
		f := r.u.Findings[j]
		a.findings = append(a.findings, events.Finding{
			Label: f.Label, Probability: float64(f.Probability),
			Box:            []float64{float64(f.Box[0]), float64(f.Box[1]), float64(f.Box[2]), float64(f.Box[3])},
			SOPInstanceUID: r.ref.SOPInstanceUID, Frame: r.frame,
		})
	}
	return a
}

func maxProbability(u *model.Understanding) float32 {
	var p float32
	for _, f := range u.Findings {
		p = max(p, f.Probability)
	}
	return p
}

// merge keeps, per label, the more probable of an earlier generation's
// finding and this one's (the earlier on a tie). Either may be empty: a
// generation without analyzed images.
func merge(prev, cur []events.Finding) []events.Finding {
	if len(prev) == 0 {
		return append([]events.Finding{}, cur...)
	}
	out := slices.Clone(prev)
	for i := range out {
		if i < len(cur) && cur[i].Label == out[i].Label && cur[i].Probability > out[i].Probability {
			out[i] = cur[i]
		}
	}
	return out
}
