package ingest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/pacsflow/pacsflow/pkg/dicommeta"
	"github.com/pacsflow/pacsflow/pkg/dimse"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/part10"
	"github.com/pacsflow/pacsflow/pkg/storage"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

const firstPrefix = 64 << 10

// HandleStore implements dimse.StoreHandler. In order: find the instance's
// identifying attributes in the first bytes of the stream, stream the Part
// 10 file into storage, publish its event and record it. It answers
// Success only after the storage write and the event's publication are
// both acknowledged; on any failure it removes what it stored.
func (s *Service) HandleStore(ctx context.Context, req *dimse.StoreIndication, data io.Reader) (res dimse.Result, err error) {
	start := time.Now()
	outcome := "stored"
	defer func() {
		if err != nil {
			var se *dimse.StatusError
			outcome = "error"
			if errors.As(err, &se) {
				outcome = fmt.Sprintf("%04X", uint16(se.Status))
			}
		}
		s.metrics.instances.WithLabelValues(outcome).Inc()
		s.metrics.handle.Observe(time.Since(start).Seconds())
	}()
	if err := s.guard.check(ctx); err != nil {
		return dimse.Result{}, dimse.Fail(dimse.StatusOutOfResources, err)
	}
	head, meta, err := s.readMetadata(req, data)
	if err != nil {
		return dimse.Result{}, err
	}
	if meta.SOPInstanceUID != req.AffectedSOPInstanceUID || meta.SOPClassUID != req.AffectedSOPClassUID {
		return dimse.Result{}, dimse.Fail(dimse.StatusDataSetMismatch, fmt.Errorf(
			"data set is %s %s, the command says %s %s", meta.SOPClassUID, meta.SOPInstanceUID, req.AffectedSOPClassUID, req.AffectedSOPInstanceUID))
	}
	key, err := storage.InstanceKey(meta.StudyInstanceUID, meta.SeriesInstanceUID, meta.SOPInstanceUID, newVersionID())
	if err != nil {
		return dimse.Result{}, dimse.Fail(dimse.StatusCannotUnderstand, err)
	}

	putStart := time.Now()
	src := &sourceReader{r: data}
	if s.cfg.MaxInstanceBytes > 0 {
		src.limit = max(1, s.cfg.MaxInstanceBytes-int64(len(head)))
	}
	body := io.MultiReader(bytes.NewReader(head), src)
	obj, err := s.store.Put(ctx, key, body)
	s.metrics.store.Observe(time.Since(putStart).Seconds())
	if err != nil {
		return dimse.Result{}, s.putFailure(key, err)
	}

	rec, err := s.reg.lookup(ctx, meta.SOPInstanceUID)
	if err != nil {
		s.discard(key, "registry unavailable")
		s.guard.invalidate()
		return dimse.Result{}, dimse.Fail(dimse.StatusOutOfResources, err)
	}
	if prev, ok := rec.has(obj.SHA256); ok {
		s.discard(key, "duplicate")
		outcome = "duplicate"
		s.log.Info("duplicate instance: identical bytes already stored", "sop_instance", meta.SOPInstanceUID, "key", prev.Key, "assoc", req.Association.ID)
		return dimse.Result{Status: dimse.StatusSuccess}, nil
	}
	ev := s.instanceEvent(req, meta, obj, time.Now())
	if prev, ok := rec.latest(); ok {
		ev.Data.(*events.InstanceStored).ReplacesSHA256 = prev.SHA256
		outcome = "new_version"
		s.log.Warn("instance re-sent with different bytes: kept as a new version", "sop_instance", meta.SOPInstanceUID,
			"previous_sha256", prev.SHA256, "sha256", obj.SHA256, "assoc", req.Association.ID)
	}
	pubStart := time.Now()
	dup, err := s.pub.Publish(ctx, ev)
	s.metrics.publish.Observe(time.Since(pubStart).Seconds())
	if err != nil {
		s.discard(key, "event not published")
		s.guard.invalidate()
		return dimse.Result{}, dimse.Fail(dimse.StatusOutOfResources, err)
	}
	if dup {
		// JetStream already holds this event, from a concurrent or an
		// interrupted earlier store of the same bytes: that copy stands.
		s.discard(key, "event already published")
		outcome = "duplicate"
		return dimse.Result{Status: dimse.StatusSuccess}, nil
	}
	s.countPublished(req.Association.ID, meta.StudyInstanceUID)
	s.metrics.bytes.Add(float64(obj.Size))
	v := storedVersion{SHA256: obj.SHA256, Key: key, Size: obj.Size, StoredAt: ev.Time, EventID: ev.ID}
	if _, _, err := s.reg.record(ctx, meta.SOPInstanceUID, meta.StudyInstanceUID, meta.SeriesInstanceUID, v); err != nil {
		// Stored and announced: Success is true. Only a re-send after the
		// duplicate window could now publish a second event.
		s.log.Warn("instance stored and published but not recorded", "sop_instance", meta.SOPInstanceUID, "err", err)
	}
	return dimse.Result{Status: dimse.StatusSuccess}, nil
}

// readMetadata buffers the beginning of the data set, behind the Part 10
// header of the instance, until its identifying attributes are found. It
// returns the buffered bytes (header included) and the metadata.
func (s *Service) readMetadata(req *dimse.StoreIndication, data io.Reader) ([]byte, *dicommeta.Instance, error) {
	b := part10.AppendHeader(make([]byte, 0, firstPrefix+512), &part10.Meta{
		MediaStorageSOPClassUID:      req.AffectedSOPClassUID,
		MediaStorageSOPInstanceUID:   req.AffectedSOPInstanceUID,
		TransferSyntaxUID:            req.TransferSyntaxUID,
		ImplementationClassUID:       uid.ImplementationClassUID,
		ImplementationVersionName:    uid.ImplementationVersionName,
		SourceApplicationEntityTitle: req.Association.CallingAE,
	})
	headLen := len(b)
	for want := firstPrefix; ; want = min(2*want, s.cfg.MaxMetadataPrefix) {
		have := len(b) - headLen
		b = append(b, make([]byte, want-have)...)
		n, err := io.ReadFull(data, b[headLen+have:])
		b = b[:headLen+have+n]
		complete := errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
		if err != nil && !complete {
			return nil, nil, fmt.Errorf("receive data set: %w", err)
		}
		meta, perr := dicommeta.Parse(b, complete)
		switch {
		case perr == nil:
			return b, meta, nil
		case errors.Is(perr, dicommeta.ErrNeedMore) && !complete && want < s.cfg.MaxMetadataPrefix:
			continue
		case errors.Is(perr, dicommeta.ErrNeedMore):
			return nil, nil, dimse.Fail(dimse.StatusCannotUnderstand, fmt.Errorf("identifying attributes not within the first %d bytes: %w", want, perr))
		default:
			return nil, nil, dimse.Fail(dimse.StatusCannotUnderstand, perr)
		}
	}
}

// putFailure maps a failed storage write to the answer: a broken
// association passes through (no answer can be sent), the rest is A700.
func (s *Service) putFailure(key string, err error) error {
	var src *sourceError
	switch {
	case errors.As(err, &src) && errors.Is(src.err, errTooLarge):
		return dimse.Fail(dimse.StatusOutOfResources, src.err)
	case errors.As(err, &src):
		return fmt.Errorf("receive data set: %w", src.err)
	}
	s.guard.invalidate()
	return dimse.Fail(dimse.StatusOutOfResources, fmt.Errorf("store %s: %w", key, err))
}

// discard deletes an object that will not be referenced.
func (s *Service) discard(key, why string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.store.Delete(ctx, key); err != nil {
		s.log.Warn("could not delete an unreferenced object", "key", key, "why", why, "err", err)
	}
}

func (s *Service) instanceEvent(req *dimse.StoreIndication, m *dicommeta.Instance, obj storage.Object, at time.Time) *events.Event {
	d := &events.InstanceStored{
		Patient: events.Patient{ID: m.PatientID, Name: m.PatientName, BirthDate: m.PatientBirthDate, Sex: m.PatientSex},
		Study: events.Study{
			StudyInstanceUID: m.StudyInstanceUID, AccessionNumber: m.AccessionNumber, StudyID: m.StudyID,
			Date: m.StudyDate, Time: m.StudyTime, Description: m.StudyDescription,
			ReferringPhysicianName: m.ReferringPhysicianName, RequestedProcedurePriority: m.RequestedProcedurePriority,
		},
		SeriesInstanceUID: m.SeriesInstanceUID, SeriesNumber: m.SeriesNumber, SeriesDescription: m.SeriesDescription,
		Modality: m.Modality, BodyPartExamined: m.BodyPartExamined,
		SOPClassUID: m.SOPClassUID, SOPInstanceUID: m.SOPInstanceUID, InstanceNumber: m.InstanceNumber,
		NumberOfFrames: m.NumberOfFrames, TransferSyntaxUID: req.TransferSyntaxUID,
		Object: events.StoredObject{Backend: s.cfg.Backend, Bucket: s.cfg.Bucket, Key: obj.Key, Size: obj.Size, SHA256: obj.SHA256},
		Association: events.Association{
			ID: req.Association.ID, CallingAE: req.Association.CallingAE, CalledAE: req.Association.CalledAE,
			SourceAddress: req.Association.RemoteAddr.String(),
		},
		ReceivedAt: at,
	}
	return &events.Event{
		ID:          "instance/" + m.SOPInstanceUID + "/" + obj.SHA256,
		Type:        events.TypeInstanceStored,
		Subject:     m.StudyInstanceUID,
		Time:        at,
		NATSSubject: events.InstanceStoredSubject(m.Modality, req.Association.CalledAE),
		Data:        d,
	}
}

// newVersionID names a stored version: time-ordered, unique.
func newVersionID() string {
	var r [6]byte
	_, _ = rand.Read(r[:]) // crypto/rand.Read never returns an error
	return fmt.Sprintf("%016x-%s", time.Now().UnixNano(), hex.EncodeToString(r[:]))
}

var errTooLarge = errors.New("instance exceeds the size limit")

// sourceReader marks errors of the network stream, so that a failed
// storage write can tell a broken association from a storage failure, and
// enforces the instance size limit.
type sourceReader struct {
	r     io.Reader
	limit int64 // bytes allowed; 0 means no limit
	n     int64
}

type sourceError struct{ err error }

func (e *sourceError) Error() string { return e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.n += int64(n)
	if s.limit > 0 && s.n > s.limit {
		return n, &sourceError{fmt.Errorf("%w of %d bytes", errTooLarge, s.limit)}
	}
	if err != nil && err != io.EOF {
		return n, &sourceError{err}
	}
	return n, err
}
