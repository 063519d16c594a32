package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/pacsflow/pacsflow/pkg/dicommeta"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/storage"
)

// studyInstances is a study's instance list, kept beside its entry for the
// study view and the previews: the study events list each instance once,
// and the entry itself stays small for the list.
type studyInstances struct {
	Series []seriesInstances `json:"series"`
	// Truncated says instances beyond maxInstances were left out.
	Truncated bool `json:"truncated,omitempty"`
}

type seriesInstances struct {
	SeriesInstanceUID string          `json:"series_instance_uid"`
	SeriesNumber      int             `json:"series_number,omitempty"`
	Modality          string          `json:"modality,omitempty"`
	Description       string          `json:"description,omitempty"`
	Instances         []instanceEntry `json:"instances"`
}

type instanceEntry struct {
	SOPInstanceUID string `json:"sop_instance_uid"`
	InstanceNumber int    `json:"instance_number,omitempty"`
	Frames         int    `json:"frames,omitempty"`
	// Key is the instance's object key in storage.
	Key string `json:"key"`
}

// maxInstances bounds a study's instance list, so that its value stays
// within NATS's default 1 MB message size; the previews need the key
// images, which come first in any study the model reads.
const maxInstances = 2000

// syntheticPrefix is how much of an instance is read to tell whether it is
// synthetic: Image Type and Conversion Type are in group 0008, near the
// start.
const syntheticPrefix = 64 << 10

// handle applies one event to the worklist.
func (s *Service) handle(ctx context.Context, d *events.Delivery) error {
	switch d.Event.Type {
	case events.TypeStudyReceived, events.TypeStudyUpdated:
		var st events.StudyReceived
		if err := decode(d, &st); err != nil {
			return err
		}
		return s.onStudy(ctx, d, &st)
	case events.TypeAIFindings:
		var f events.AIFindings
		if err := decode(d, &f); err != nil {
			return err
		}
		return s.apply(ctx, d, f.Study.StudyInstanceUID, func(e *Entry) change {
			ai := e.result(f.Study, f.Modalities, f.FirstReceivedAt, f.Model)
			if f.Generation <= ai.FindingsGeneration {
				return change{}
			}
			ai.FindingsGeneration, ai.Findings = f.Generation, f.Findings
			return change{events.WorklistFindings, f.Generation}
		})
	case events.TypeAIReportDraft:
		var r events.AIReportDraft
		if err := decode(d, &r); err != nil {
			return err
		}
		return s.apply(ctx, d, r.Study.StudyInstanceUID, func(e *Entry) change {
			ai := e.result(r.Study, r.Modalities, r.FirstReceivedAt, r.Model)
			if r.Generation <= ai.ReportGeneration {
				return change{}
			}
			ai.ReportGeneration, ai.Report, ai.MachineGenerated = r.Generation, r.Text, r.MachineGenerated
			ai.KeyImage = &ImageRef{SOPInstanceUID: r.SOPInstanceUID, Frame: r.Frame}
			return change{events.WorklistReport, r.Generation}
		})
	case events.TypeAITriage:
		var t events.AITriage
		if err := decode(d, &t); err != nil {
			return err
		}
		return s.apply(ctx, d, t.Study.StudyInstanceUID, func(e *Entry) change {
			ai := e.result(t.Study, t.Modalities, t.FirstReceivedAt, t.Model)
			if t.Generation <= ai.TriageGeneration {
				return change{}
			}
			ai.TriageGeneration, ai.Level, ai.Score, ai.Reason = t.Generation, t.Level, t.Score, t.Reason
			ai.TriagedAt = d.Event.Time
			return change{events.WorklistTriaged, t.Generation}
		})
	}
	return nil // another version of an event: not this service's contract
}

func decode(d *events.Delivery, v any) error {
	if err := json.Unmarshal(d.Event.Data, v); err != nil {
		return events.Poison(fmt.Errorf("event %s: %w", d.Event.ID, err))
	}
	return nil
}

// result returns the entry's model result, created if missing, and lists
// the study from the result's own fields when no study event did yet.
func (e *Entry) result(st events.Study, modalities []string, first time.Time, m events.ModelRef) *AIResult {
	if e.Generation == 0 {
		e.Study, e.Modalities = st, modalities
		if e.FirstReceivedAt.IsZero() || first.Before(e.FirstReceivedAt) {
			e.FirstReceivedAt = first
		}
	}
	if e.AI == nil {
		e.AI = &AIResult{}
	}
	e.AI.Model = m
	return e.AI
}

// onStudy lists a study, or updates its entry for a later generation. A
// study of synthetic images (what the generate service makes) never
// enters the worklist.
func (s *Service) onStudy(ctx context.Context, d *events.Delivery, st *events.StudyReceived) error {
	uid := st.Study.StudyInstanceUID
	why, err := s.synthetic(ctx, st)
	if err != nil {
		return err
	}
	if why != "" {
		s.m.events.WithLabelValues(d.Event.Type, "synthetic").Inc()
		s.log.Info("synthetic study kept off the worklist", "study", uid, "why", why)
		return nil
	}
	// The instances first: once the entry is listed, its view finds them.
	if _, _, _, err := modify(ctx, s.instances, uid, func(old *studyInstances) (*studyInstances, bool, error) {
		return mergeInstances(old, st.Series)
	}); err != nil {
		return err
	}
	return s.apply(ctx, d, uid, func(e *Entry) change {
		if st.Generation <= e.Generation {
			return change{}
		}
		c := change{events.WorklistStudy, st.Generation}
		if e.Generation == 0 && e.AI == nil {
			c.what = events.WorklistAdded
		}
		e.Patient, e.Study, e.Modalities = st.Patient, st.Study, st.Modalities
		for _, ae := range st.CalledAEs {
			if !slices.Contains(e.CalledAEs, ae) {
				e.CalledAEs = append(e.CalledAEs, ae)
			}
		}
		e.NumSeries, e.NumInstances = st.NumSeries, st.NumInstances
		if e.FirstReceivedAt.IsZero() || st.FirstReceivedAt.Before(e.FirstReceivedAt) {
			e.FirstReceivedAt = st.FirstReceivedAt
		}
		e.LastReceivedAt = st.LastReceivedAt
		e.Generation = st.Generation
		return c
	})
}

// mergeInstances adds the series and instances of a study event to a
// study's list; an instance already listed is left as it is, so that the
// event handled again changes nothing.
func mergeInstances(old *studyInstances, series []events.SeriesManifest) (*studyInstances, bool, error) {
	list := &studyInstances{}
	if old != nil {
		list = old
	}
	n := 0
	for _, se := range list.Series {
		n += len(se.Instances)
	}
	changed := false
	for _, se := range series {
		i := slices.IndexFunc(list.Series, func(x seriesInstances) bool { return x.SeriesInstanceUID == se.SeriesInstanceUID })
		if i < 0 {
			list.Series = append(list.Series, seriesInstances{SeriesInstanceUID: se.SeriesInstanceUID, SeriesNumber: se.SeriesNumber,
				Modality: se.Modality, Description: se.Description})
			i, changed = len(list.Series)-1, true
		}
		for _, in := range se.Instances {
			known := slices.ContainsFunc(list.Series[i].Instances, func(x instanceEntry) bool { return x.SOPInstanceUID == in.SOPInstanceUID })
			switch {
			case known:
			case n >= maxInstances:
				changed = changed || !list.Truncated
				list.Truncated = true
			default:
				list.Series[i].Instances = append(list.Series[i].Instances, instanceEntry{SOPInstanceUID: in.SOPInstanceUID,
					InstanceNumber: in.InstanceNumber, Frames: in.NumberOfFrames, Key: in.Object.Key})
				n++
				changed = true
			}
		}
	}
	return list, changed, nil
}

// synthetic says why a study event's images are synthetic, or "": the
// first instance of each series is enough, since the generate service
// writes whole synthetic series in studies of their own. An instance
// missing from storage counts as clinical: a real study must not be lost
// from the worklist because one object is gone.
func (s *Service) synthetic(ctx context.Context, st *events.StudyReceived) (string, error) {
	for _, se := range st.Series {
		if len(se.Instances) == 0 {
			continue
		}
		key := se.Instances[0].Object.Key
		prefix, complete, err := readPrefix(ctx, s.cfg.Objects, key, syntheticPrefix)
		if errors.Is(err, storage.ErrNotFound) {
			s.log.Warn("instance missing from storage; its study is listed", "study", st.Study.StudyInstanceUID, "key", key)
			continue
		}
		if err != nil {
			return "", fmt.Errorf("read %s: %w", key, err)
		}
		if m, err := dicommeta.Parse(prefix, complete); err == nil && m.Synthetic() != "" {
			return fmt.Sprintf("series %s: %s", se.SeriesInstanceUID, m.Synthetic()), nil
		}
	}
	return "", nil
}

// readPrefix reads up to n bytes of an object, and whether that is all of it.
func readPrefix(ctx context.Context, r storage.Reader, key string, n int) ([]byte, bool, error) {
	rc, _, err := r.Open(ctx, key)
	if err != nil {
		return nil, false, err
	}
	defer rc.Close()
	b := make([]byte, n+1)
	got, err := io.ReadFull(rc, b)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, false, err
	}
	if got > n {
		return b[:n], false, nil
	}
	return b[:got], true, nil
}

// change is what changed an entry (one of events.Worklist*, "" for
// nothing) and the generation of the study event or model result that did.
type change struct {
	what       string
	generation int
}

// apply changes a study's entry with fn and announces the change on
// worklist.updated.
func (s *Service) apply(ctx context.Context, d *events.Delivery, uid string, fn func(e *Entry) change) error {
	if uid == "" {
		return events.Poison(fmt.Errorf("event %s names no study", d.Event.ID))
	}
	e, rev, changed, err := modify(ctx, s.entries, uid, func(old *Entry) (*Entry, bool, error) {
		e := old.clone()
		if e == nil {
			e = &Entry{StudyInstanceUID: uid}
		}
		c := fn(e)
		if c.what == "" {
			return old, false, nil
		}
		e.Change, e.ChangeGeneration, e.UpdatedAt = c.what, c.generation, s.cfg.now().UTC()
		e.settle()
		return e, true, nil
	})
	if err != nil {
		return fmt.Errorf("worklist entry of %s: %w", uid, err)
	}
	switch {
	case changed:
		s.m.events.WithLabelValues(d.Event.Type, "applied").Inc()
	case e != nil && d.Deliveries > 1:
		// Handled before a crash or a lost acknowledgement: the
		// announcement may not have gone out. The same revision gives the
		// same event ID, which JetStream drops if it did.
		s.m.events.WithLabelValues(d.Event.Type, "republished").Inc()
	default:
		s.m.events.WithLabelValues(d.Event.Type, "unchanged").Inc()
		return nil
	}
	return s.announce(ctx, e, rev)
}

// clone copies an entry deeply enough to change it: the model result is
// the only part changed in place.
func (e *Entry) clone() *Entry {
	if e == nil {
		return nil
	}
	c := *e
	if e.AI != nil {
		ai := *e.AI
		c.AI = &ai
	}
	c.CalledAEs = slices.Clone(e.CalledAEs)
	return &c
}

// announce publishes worklist.updated for an entry at a revision.
func (s *Service) announce(ctx context.Context, e *Entry, rev uint64) error {
	mods := e.Modalities
	if mods == nil {
		mods = []string{}
	}
	_, err := s.pub.Publish(ctx, &events.Event{
		ID:          fmt.Sprintf("worklist/%s/%d", e.StudyInstanceUID, rev),
		Type:        events.TypeWorklistUpdated,
		Subject:     e.StudyInstanceUID,
		Time:        e.UpdatedAt,
		NATSSubject: events.WorklistUpdatedSubject(e.Change, e.Level),
		Data: &events.WorklistUpdated{StudyInstanceUID: e.StudyInstanceUID, Change: e.Change, Revision: int64(rev),
			Generation: max(e.ChangeGeneration, 1), Level: e.Level, Score: e.Score, Pending: e.Pending, Status: e.Status,
			Modalities: mods, FirstReceivedAt: e.FirstReceivedAt},
	})
	if err != nil {
		return fmt.Errorf("announce the worklist change of %s: %w", e.StudyInstanceUID, err)
	}
	return nil
}

// errNotListed is a status change for a study not on the worklist.
var errNotListed = errors.New("study not on the worklist")

// changeStatus sets a study's reading status, and announces it.
func (s *Service) changeStatus(ctx context.Context, uid, status, by string) (*Entry, error) {
	e, rev, changed, err := modify(ctx, s.entries, uid, func(old *Entry) (*Entry, bool, error) {
		if old == nil {
			return nil, false, errNotListed
		}
		if old.Status == status {
			return old, false, nil
		}
		e := old.clone()
		now := s.cfg.now().UTC()
		e.Status, e.StatusBy, e.StatusAt = status, by, &now
		e.Change, e.ChangeGeneration, e.UpdatedAt = events.WorklistStatus, e.Generation, now
		e.settle()
		return e, true, nil
	})
	if err != nil {
		return nil, err
	}
	e.Revision = rev
	if !changed {
		return e, nil
	}
	s.log.Info("reading status", "study", uid, "status", status, "by", by)
	return e, s.announce(ctx, e, rev)
}
