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

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/pacsflow/pacsflow/pkg/dicommeta"
	"github.com/pacsflow/pacsflow/pkg/dimse"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/part10"
	"github.com/pacsflow/pacsflow/pkg/storage"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

const firstPrefix = 64 << 10

const instrumentation = "github.com/pacsflow/pacsflow/services/ingest"

// HandleStore implements dimse.StoreHandler. In order: find the instance's
// identifying attributes in the first bytes of the stream, stream the Part
// 10 file into storage, publish its event and record it. It answers
// Success only after the storage write and the event's publication are
// both acknowledged; on any failure it removes what it stored.
func (s *Service) HandleStore(ctx context.Context, req *dimse.StoreIndication, data io.Reader) (res dimse.Result, err error) {
	start := time.Now()
	outcome := "stored"
	ctx, span := otel.Tracer(instrumentation).Start(ctx, "C-STORE", trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(
		attribute.String("dicom.sop_instance_uid", req.AffectedSOPInstanceUID),
		attribute.String("dicom.calling_ae", req.Association.CallingAE),
		attribute.String("dicom.called_ae", req.Association.CalledAE),
		attribute.String("dicom.association", req.Association.ID)))
	defer func() {
		if err != nil {
			var se *dimse.StatusError
			outcome = "error"
			if errors.As(err, &se) {
				outcome = fmt.Sprintf("%04X", uint16(se.Status))
			}
			span.RecordError(err)
			span.SetStatus(codes.Error, outcome)
		}
		span.SetAttributes(attribute.String("pacsflow.outcome", outcome))
		span.End()
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
	if why := meta.Synthetic(); why != "" && !s.syntheticAllowed(req.Association.CallingAE) {
		// The peer sees the start of this in its 64-character Error Comment.
		return dimse.Result{}, dimse.Fail(dimse.StatusNotAuthorized, fmt.Errorf(
			"synthetic image refused (%s): AE %q may not send them (allowed: --synthetic-ae)", why, req.Association.CallingAE))
	}
	key, err := storage.InstanceKey(meta.StudyInstanceUID, meta.SeriesInstanceUID, meta.SOPInstanceUID, newVersionID())
	if err != nil {
		return dimse.Result{}, dimse.Fail(dimse.StatusCannotUnderstand, err)
	}

	src := &sourceReader{r: data, limit: -1}
	if s.cfg.MaxInstanceBytes > 0 {
		src.limit = s.cfg.MaxInstanceBytes - int64(len(head))
		if src.limit < 0 {
			return dimse.Result{}, dimse.Fail(dimse.StatusOutOfResources, fmt.Errorf("%w of %d bytes", errTooLarge, s.cfg.MaxInstanceBytes))
		}
	}
	putStart := time.Now()
	body := io.MultiReader(bytes.NewReader(head), src)
	putCtx, putSpan := otel.Tracer(instrumentation).Start(ctx, "storage put", trace.WithAttributes(attribute.String("pacsflow.key", key)))
	obj, err := s.store.Put(putCtx, key, body)
	putSpan.End()
	s.metrics.store.Observe(time.Since(putStart).Seconds())
	if err != nil {
		return dimse.Result{}, s.putFailure(key, err)
	}

	sop := meta.SOPInstanceUID
	ver, existing, err := s.reg.reserve(ctx, sop, meta.StudyInstanceUID, meta.SeriesInstanceUID,
		storedVersion{SHA256: obj.SHA256, Key: key, Size: obj.Size, StoredAt: time.Now()})
	if err != nil {
		// No version names the object, so no event can: it can go.
		s.discard(key, "registry unavailable")
		s.guard.invalidate()
		return dimse.Result{}, dimse.Fail(dimse.StatusOutOfResources, err)
	}
	switch {
	case existing && ver.Published:
		s.discard(key, "duplicate")
		outcome = "duplicate"
		s.log.Info("duplicate instance: identical bytes already stored", "sop_instance", sop, "key", ver.Key, "assoc", req.Association.ID)
		return dimse.Result{Status: dimse.StatusSuccess}, nil
	case existing:
		// An earlier store of these bytes did not finish publishing: finish
		// it, with the earlier object unless that one is gone.
		if ver, err = s.adoptIfMissing(ctx, sop, ver, obj); err != nil {
			s.guard.invalidate()
			return dimse.Result{}, dimse.Fail(dimse.StatusOutOfResources, err)
		}
	}
	if ver.Replaces != "" {
		outcome = "new_version"
		s.log.Warn("instance re-sent with different bytes: kept as a new version", "sop_instance", sop,
			"previous_sha256", ver.Replaces, "sha256", ver.SHA256, "assoc", req.Association.ID)
	}
	ev := s.instanceEvent(req, meta, ver.storedVersion, time.Now())
	pubStart := time.Now()
	dup, err := s.pub.Publish(ctx, ev)
	s.metrics.publish.Observe(time.Since(pubStart).Seconds())
	if err != nil {
		// The event may have been stored even so (a lost acknowledgement):
		// the object stays, and a re-send of the instance publishes again.
		s.guard.invalidate()
		return dimse.Result{}, dimse.Fail(dimse.StatusOutOfResources, err)
	}
	if !dup {
		s.countPublished(req.Association.ID, meta.StudyInstanceUID)
		s.metrics.bytes.Add(float64(ver.Size))
	}
	// Stored and announced: Success is true now. The confirmation only saves
	// a re-send from publishing again, so it need not delay the answer.
	select {
	case s.confirms <- confirmation{sop: sop, ver: ver}:
	default:
		s.confirm(ctx, confirmation{sop: sop, ver: ver})
	}
	return dimse.Result{Status: dimse.StatusSuccess}, nil
}

// confirmation marks a version whose event JetStream acknowledged.
type confirmation struct {
	sop string
	ver reservation
}

func (s *Service) confirm(ctx context.Context, c confirmation) {
	if err := s.reg.update(ctx, c.sop, c.ver, func(v *storedVersion) { v.Published = true }); err != nil {
		// A re-send then publishes once more, which JetStream drops within
		// its duplicate window.
		s.log.Warn("instance stored and published, but its version not confirmed", "sop_instance", c.sop, "err", err)
	}
}

// confirmLoop records confirmations until ctx ends; those still queued
// then stay pending, which a re-send of their instance resolves.
func (s *Service) confirmLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case c := <-s.confirms:
			s.confirm(ctx, c)
		}
	}
}

// adoptIfMissing returns the pending version res with an object that
// exists: its own, and the copy just stored (obj) is discarded; or, if its
// own object is gone, obj, which the registry then records in its place.
func (s *Service) adoptIfMissing(ctx context.Context, sop string, res reservation, obj storage.Object) (reservation, error) {
	_, err := s.store.Stat(ctx, res.Key)
	switch {
	case err == nil:
		if res.Key != obj.Key {
			s.discard(obj.Key, "an earlier copy of the same bytes stands")
		}
		return res, nil
	case !errors.Is(err, storage.ErrNotFound):
		s.discard(obj.Key, "storage unavailable")
		return res, err
	}
	if err := s.reg.update(ctx, sop, res, func(v *storedVersion) { v.Key, v.Size = obj.Key, obj.Size }); err != nil {
		s.discard(obj.Key, "registry unavailable")
		return res, err
	}
	res.Key, res.Size = obj.Key, obj.Size
	return res, nil
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

func (s *Service) instanceEvent(req *dimse.StoreIndication, m *dicommeta.Instance, v storedVersion, at time.Time) *events.Event {
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
		Object:         events.StoredObject{Backend: s.cfg.Backend, Bucket: s.cfg.Bucket, Key: v.Key, Size: v.Size, SHA256: v.SHA256},
		ReplacesSHA256: v.Replaces,
		Association: events.Association{
			ID: req.Association.ID, CallingAE: req.Association.CallingAE, CalledAE: req.Association.CalledAE,
			SourceAddress: req.Association.RemoteAddr.String(),
		},
		ReceivedAt: at,
	}
	return &events.Event{
		ID:          "instance/" + m.SOPInstanceUID + "/" + v.SHA256,
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
	limit int64 // bytes still allowed; negative means no limit
	n     int64
}

type sourceError struct{ err error }

func (e *sourceError) Error() string { return e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.n += int64(n)
	if s.limit >= 0 && s.n > s.limit {
		return n, &sourceError{fmt.Errorf("%w of %d bytes", errTooLarge, s.limit)}
	}
	if err != nil && err != io.EOF {
		return n, &sourceError{err}
	}
	return n, err
}

func (s *Service) syntheticAllowed(callingAE string) bool {
	for _, ae := range s.cfg.SyntheticAEs {
		if ae == "*" || ae == callingAE {
			return true
		}
	}
	return false
}
