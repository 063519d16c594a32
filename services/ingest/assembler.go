package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/pacsflow/pacsflow/pkg/events"
)

// The assembler decides when a study has been received, correctly across
// several ingest replicas. Its state lives in one JetStream KV bucket:
//
//   - per study a header (key: the Study Instance UID with '.' as '_'),
//     changed only by compare-and-set, holding merges that are idempotent
//     (first/last receipt, the AE titles, the instance count each ended
//     association published) and what was last reported;
//   - per stored instance version an entry (key: header key, '.', SOP
//     Instance UID with '_', '.', 16 hex digits of its SHA-256) holding the
//     instance's event data; its revision orders it against reports.
//
// Entries come from the pacs.instance.stored events through one durable
// consumer that all replicas share (each event is handled by one of them,
// and handling is idempotent, so a redelivery changes nothing). Every
// replica watches the headers and arms a timer per study; when it fires,
// the replica claims the report with compare-and-set, publishes the study
// event with an ID derived from the study and the report's generation (so
// a retried publish is de-duplicated), and records it. A claim older than
// claimTimeout is taken over, so a replica that dies mid-report delays the
// study, never loses it.
type assembler struct {
	kv      jetstream.KeyValue
	js      jetstream.JetStream
	pub     *events.Publisher
	stream  string
	quiet   time.Duration
	maxWait time.Duration
	replica string
	log     *slog.Logger
	metrics *metrics
	now     func() time.Time

	mu       sync.Mutex
	timers   map[string]*time.Timer // header key -> pending evaluation
	inFlight map[string]bool        // header key -> being evaluated now
	// changed marks studies whose header changed while they were being
	// evaluated: the timer that change armed stands, since the evaluation
	// may have read the header before it.
	changed map[string]bool
}

const (
	consumerName = "ingest-study-assembler"
	claimTimeout = 30 * time.Second
	fetchBatch   = 512
	fetchWait    = 2 * time.Millisecond
)

// studyHeader is the per-study state.
type studyHeader struct {
	StudyInstanceUID string `json:"study_instance_uid"`
	// FirstAt and LastAt bound the receipt times of the study's instances
	// not yet reported (PendingSince) and of all of them.
	FirstAt      time.Time `json:"first_at"`
	LastAt       time.Time `json:"last_at"`
	PendingSince time.Time `json:"pending_since,omitempty"`
	// Merges counts merged instance entries; Reported is its value when the
	// last report was claimed: the study is dirty while Merges > Reported.
	Merges   int64 `json:"merges"`
	Reported int64 `json:"reported"`
	// Associations maps association IDs to the number of instance events
	// they published for this study, set when the association ended.
	Associations map[string]int `json:"associations,omitempty"`
	Generation   int            `json:"generation"`
	// ReportedRev is the highest entry revision included in a report.
	ReportedRev uint64 `json:"reported_rev"`
	Claim       *claim `json:"claim,omitempty"`
}

type claim struct {
	Generation int       `json:"generation"`
	Replica    string    `json:"replica"`
	At         time.Time `json:"at"`
}

func (c *claim) same(o *claim) bool {
	return o != nil && c.Generation == o.Generation && c.Replica == o.Replica && c.At.Equal(o.At)
}

func (h *studyHeader) dirty() bool { return h.Merges > h.Reported }

// headerKey is a study's key in the bucket: UIDs only hold digits and dots,
// so replacing the dots keeps it unique and makes it one KV token.
func headerKey(study string) string { return strings.ReplaceAll(study, ".", "_") }

func entryKey(study, sop, sha string) string {
	return headerKey(study) + "." + strings.ReplaceAll(sop, ".", "_") + "." + sha[:16]
}

// entry is what the bucket keeps per stored instance version: the event's
// data, and its trace context, which the study's report continues.
type entry struct {
	events.InstanceStored
	TraceParent string `json:"traceparent,omitempty"`
	rev         uint64
}

// run consumes instance events and watches headers until ctx ends.
func (a *assembler) run(ctx context.Context) error {
	cons, err := a.js.CreateOrUpdateConsumer(ctx, a.stream, jetstream.ConsumerConfig{
		Durable:       consumerName,
		Description:   "ingest: merges stored instances into study state",
		FilterSubject: events.SubjectInstanceStored + ".>",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxAckPending: 4 * fetchBatch,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return fmt.Errorf("study assembler consumer: %w", err)
	}
	w, err := a.kv.Watch(ctx, "*")
	if err != nil {
		return fmt.Errorf("watch study headers: %w", err)
	}
	defer func() { _ = w.Stop() }()
	defer a.stopTimers()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for e := range w.Updates() {
			if e != nil && e.Operation() == jetstream.KeyValuePut {
				a.schedule(ctx, e)
			}
		}
	}()
	defer wg.Wait()

	// Messages keeps what the server sent in its own buffer, so waiting
	// for more with a timeout never drops one (a short Fetch would: the
	// server counts unread messages as delivered and resends them only
	// after AckWait, which would delay their studies by 30 s).
	it, err := cons.Messages(jetstream.PullMaxMessages(fetchBatch))
	if err != nil {
		return fmt.Errorf("study assembler: %w", err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		m, err := it.Next()
		switch {
		case errors.Is(err, jetstream.ErrMsgIteratorClosed):
			return nil
		case err != nil:
			a.log.Warn("study assembler: waiting for events", "err", err)
			sleep(ctx, time.Second)
			continue
		}
		msgs := []jetstream.Msg{m}
		for len(msgs) < fetchBatch {
			m, err := it.Next(jetstream.NextMaxWait(fetchWait))
			if err != nil {
				break
			}
			msgs = append(msgs, m)
		}
		a.merge(ctx, msgs)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// merge writes the entries of a batch of instance events and merges them
// into their study headers, then acknowledges them. A message that cannot
// be decoded is terminated: redelivering it cannot help.
func (a *assembler) merge(ctx context.Context, msgs []jetstream.Msg) {
	byStudy := map[string][]entry{}
	acks := map[string][]jetstream.Msg{}
	for _, m := range msgs {
		rcv, err := events.Decode(m.Subject(), m.Headers(), m.Data())
		d := entry{TraceParent: m.Headers().Get("traceparent")}
		if err == nil {
			err = json.Unmarshal(rcv.Data, &d.InstanceStored)
		}
		if err != nil || d.Study.StudyInstanceUID == "" || len(d.Object.SHA256) < 16 {
			a.log.Error("study assembler: undecodable instance event", "subject", m.Subject(), "err", err)
			_ = m.Term()
			continue
		}
		study := d.Study.StudyInstanceUID
		byStudy[study] = append(byStudy[study], d)
		acks[study] = append(acks[study], m)
	}
	for study, ds := range byStudy {
		err := a.mergeStudy(ctx, study, ds)
		for _, m := range acks[study] {
			if err != nil {
				_ = m.NakWithDelay(time.Second)
			} else {
				_ = m.Ack()
			}
		}
		if err != nil {
			a.log.Warn("study assembler: merge failed; will retry", "study", study, "err", err)
		}
	}
}

func (a *assembler) mergeStudy(ctx context.Context, study string, ds []entry) error {
	for i := range ds {
		b, err := json.Marshal(&ds[i])
		if err != nil {
			return err
		}
		if err := a.putEntry(ctx, entryKey(study, ds[i].SOPInstanceUID, ds[i].Object.SHA256), b); err != nil {
			return fmt.Errorf("write instance entry: %w", err)
		}
	}
	return a.updateHeader(ctx, study, func(h *studyHeader) bool {
		if !h.dirty() {
			h.PendingSince = time.Time{} // a new pending period starts
		}
		for _, d := range ds {
			t := d.ReceivedAt
			if h.FirstAt.IsZero() || t.Before(h.FirstAt) {
				h.FirstAt = t
			}
			if t.After(h.LastAt) {
				h.LastAt = t
			}
			if h.PendingSince.IsZero() || t.Before(h.PendingSince) {
				h.PendingSince = t
			}
			h.Merges++
		}
		return true
	})
}

// putEntry writes an instance entry unless the bucket holds it already: an
// event delivered again, after a merge that failed once its entry had
// landed (an acknowledgement lost in a leader election), must not give the
// entry a new revision, which would list the instance again in the study's
// next report. The same key with other data (the version of an instance
// stored again after another version) is written anew.
func (a *assembler) putEntry(ctx context.Context, key string, b []byte) error {
	_, err := a.kv.Create(ctx, key, b)
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return err
	}
	cur, err := a.kv.Get(ctx, key)
	if err != nil || bytes.Equal(cur.Value(), b) {
		return err
	}
	_, err = a.kv.Put(ctx, key, b)
	return err
}

// associationEnded records how many instance events an ended association
// published for each study it touched.
func (a *assembler) associationEnded(ctx context.Context, assoc string, perStudy map[string]int) error {
	var errs []error
	for study, n := range perStudy {
		err := a.updateHeader(ctx, study, func(h *studyHeader) bool {
			if h.Associations == nil {
				h.Associations = map[string]int{}
			}
			if h.Associations[assoc] == n {
				return false
			}
			h.Associations[assoc] = n
			return true
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("study %s: %w", study, err))
		}
	}
	return errors.Join(errs...)
}

// updateHeader applies change to the study's header with compare-and-set,
// retrying when another writer got in first. change returns false when
// there is nothing to write.
func (a *assembler) updateHeader(ctx context.Context, study string, change func(*studyHeader) bool) error {
	key := headerKey(study)
	for attempt := 0; attempt < 64; attempt++ {
		h, rev, err := a.header(ctx, key)
		if err != nil {
			return err
		}
		if h.StudyInstanceUID == "" {
			h.StudyInstanceUID = study
		}
		if !change(&h) {
			return nil
		}
		b, err := json.Marshal(&h)
		if err != nil {
			return err
		}
		if rev == 0 {
			_, err = a.kv.Create(ctx, key, b)
		} else {
			_, err = a.kv.Update(ctx, key, b, rev)
		}
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue
		}
		if err != nil {
			return fmt.Errorf("update study header: %w", err)
		}
		return nil
	}
	return errors.New("update study header: too many concurrent writers")
}

func (a *assembler) header(ctx context.Context, key string) (studyHeader, uint64, error) {
	var h studyHeader
	e, err := a.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return h, 0, nil
	}
	if err != nil {
		return h, 0, fmt.Errorf("read study header: %w", err)
	}
	if err := json.Unmarshal(e.Value(), &h); err != nil {
		return h, 0, fmt.Errorf("study header %s: %w", key, err)
	}
	return h, e.Revision(), nil
}

// schedule arms the evaluation of a study whose header changed.
func (a *assembler) schedule(ctx context.Context, e jetstream.KeyValueEntry) {
	var h studyHeader
	if err := json.Unmarshal(e.Value(), &h); err != nil {
		a.log.Error("study assembler: bad header", "key", e.Key(), "err", err)
		return
	}
	if !h.dirty() {
		return
	}
	due := a.due(&h)
	if h.Claim != nil && h.Claim.Replica != a.replica {
		// Another replica is reporting; look again when its claim would expire.
		if exp := h.Claim.At.Add(claimTimeout); exp.After(due) {
			due = exp
		}
	}
	a.arm(ctx, e.Key(), h.StudyInstanceUID, time.Until(due))
}

// due is when a dirty study is next to be evaluated: after the quiet
// period, or at the maximum wait if that comes first.
func (a *assembler) due(h *studyHeader) time.Time {
	due := h.LastAt.Add(a.quiet)
	if forced := h.PendingSince.Add(a.maxWait); forced.Before(due) {
		due = forced
	}
	return due
}

func (a *assembler) arm(ctx context.Context, key, study string, d time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.timers == nil {
		a.timers = map[string]*time.Timer{}
	}
	if t, ok := a.timers[key]; ok {
		t.Stop()
	}
	if a.inFlight[key] {
		if a.changed == nil {
			a.changed = map[string]bool{}
		}
		a.changed[key] = true
	}
	a.timers[key] = time.AfterFunc(max(d, 0), func() {
		if ctx.Err() != nil || !a.begin(key) {
			return
		}
		retryAt, err := a.evaluate(ctx, study)
		changed := a.end(key)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			a.log.Warn("study assembler: report failed; retrying", "study", study, "err", err)
			retryAt = time.Now().Add(time.Second)
		}
		if !changed && !retryAt.IsZero() {
			a.arm(ctx, key, study, time.Until(retryAt))
		}
	})
}

// begin marks a study as being evaluated by this replica; a timer that
// fires meanwhile re-arms itself instead of evaluating twice at once.
func (a *assembler) begin(key string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.inFlight == nil {
		a.inFlight = map[string]bool{}
	}
	if a.inFlight[key] {
		if t, ok := a.timers[key]; ok {
			t.Reset(50 * time.Millisecond)
		}
		return false
	}
	a.inFlight[key] = true
	return true
}

// end ends a study's evaluation and tells whether its header changed
// meanwhile.
func (a *assembler) end(key string) (changed bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.inFlight, key)
	changed = a.changed[key]
	delete(a.changed, key)
	return changed
}

func (a *assembler) stopTimers() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, t := range a.timers {
		t.Stop()
		delete(a.timers, k)
	}
}

// evaluate reports the study if it is due: claim, publish, record. When
// it is not due yet and no header change is bound to come first (the
// maximum wait, another replica's claim), it returns when to look again.
func (a *assembler) evaluate(ctx context.Context, study string) (retryAt time.Time, err error) {
	key := headerKey(study)
	h, rev, err := a.header(ctx, key)
	if err != nil || rev == 0 || !h.dirty() {
		return time.Time{}, err
	}
	now := a.now()
	if h.Claim != nil && h.Claim.Replica != a.replica && now.Sub(h.Claim.At) < claimTimeout {
		// Another replica is reporting. A claim of this replica's own is
		// stale (its evaluations of a study are serialized): one whose
		// report failed, or made before a restart with the same name
		// (hostname:pid, as a container's first process has); it is taken
		// over at once.
		return h.Claim.At.Add(claimTimeout), nil
	}
	entries, err := a.entries(ctx, key)
	if err != nil {
		return time.Time{}, err
	}
	trigger := ""
	switch {
	case now.Sub(h.LastAt) >= a.quiet && a.associationsDone(&h, entries):
		trigger = events.TriggerQuietPeriod
	case now.Sub(h.PendingSince) >= a.maxWait:
		trigger = events.TriggerMaxWait
	case now.Sub(h.LastAt) < a.quiet:
		// Early: a timer reset while another evaluation ran.
		return a.due(&h), nil
	default:
		// Associations still open: their end changes the header and
		// re-arms the timer; the maximum wait is the backstop.
		return h.PendingSince.Add(a.maxWait), nil
	}
	gen := h.Generation + 1
	reportedMerges := h.Merges
	h.Claim = &claim{Generation: gen, Replica: a.replica, At: now}
	b, err := json.Marshal(&h)
	if err != nil {
		return time.Time{}, err
	}
	if _, err := a.kv.Update(ctx, key, b, rev); err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return time.Time{}, nil // someone else changed it: their change re-arms us
		}
		return time.Time{}, fmt.Errorf("claim report: %w", err)
	}
	ev, maxRev, ok := a.studyEvent(&h, entries, gen, trigger)
	ctx, span := reportSpan(ctx, study, entries)
	defer span.End()
	if ok {
		dup, err := a.pub.Publish(ctx, ev)
		if err != nil {
			return time.Time{}, err
		}
		if !dup {
			a.metrics.studyEvents.WithLabelValues(ev.Type, trigger).Inc()
			a.metrics.studyLatency.Observe(a.now().Sub(h.LastAt).Seconds())
		}
		a.log.Info("study reported", "study", study, "type", ev.Type, "generation", gen, "trigger", trigger,
			"instances", ev.Data.(*events.StudyReceived).NumInstances, "duplicate", dup)
	}
	return time.Time{}, a.updateHeader(ctx, study, func(cur *studyHeader) bool {
		if cur.Generation >= gen || !h.Claim.same(cur.Claim) {
			return false // recorded already, or the claim was taken over
		}
		if ok {
			cur.Generation = gen
		}
		cur.Reported = reportedMerges
		cur.ReportedRev = max(cur.ReportedRev, maxRev)
		cur.PendingSince = time.Time{}
		if cur.dirty() {
			cur.PendingSince = cur.LastAt
		}
		cur.Claim = nil
		return true
	})
}

// reportSpan starts the span of a study report as a child of the trace of
// its newest instance: the C-STORE that completed the study leads on to the
// study event and to whatever consumes it.
func reportSpan(ctx context.Context, study string, entries []entry) (context.Context, trace.Span) {
	var newest entry
	for _, e := range entries {
		if e.ReceivedAt.After(newest.ReceivedAt) {
			newest = e
		}
	}
	if newest.TraceParent != "" {
		ctx = events.ExtractContext(ctx, nats.Header{"traceparent": []string{newest.TraceParent}})
	}
	return otel.Tracer(instrumentation).Start(ctx, "study report", trace.WithAttributes(
		attribute.String("dicom.study_instance_uid", study), attribute.Int("pacsflow.entries", len(entries))))
}

// associationsDone reports whether every association that delivered an
// unreported instance has ended and its instances have all been merged.
func (a *assembler) associationsDone(h *studyHeader, entries []entry) bool {
	merged := map[string]int{}
	pending := map[string]bool{}
	for _, e := range entries {
		merged[e.Association.ID]++
		if e.rev > h.ReportedRev {
			pending[e.Association.ID] = true
		}
	}
	for id := range pending {
		n, ended := h.Associations[id]
		if !ended || merged[id] < n {
			return false
		}
	}
	return true
}

// entries reads the instance entries of a study.
func (a *assembler) entries(ctx context.Context, key string) ([]entry, error) {
	w, err := a.kv.Watch(ctx, key+".>", jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("read study entries: %w", err)
	}
	defer func() { _ = w.Stop() }()
	var out []entry
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("read study entries: watcher closed")
			}
			if e == nil {
				return out, nil
			}
			var d entry
			if err := json.Unmarshal(e.Value(), &d); err != nil {
				return nil, fmt.Errorf("instance entry %s: %w", e.Key(), err)
			}
			d.rev = e.Revision()
			out = append(out, d)
		}
	}
}

// studyEvent builds the report of generation gen: the whole study for the
// first, the entries newer than the last report for the others. ok is
// false when a later report has nothing new to say.
func (a *assembler) studyEvent(h *studyHeader, entries []entry, gen int, trigger string) (*events.Event, uint64, bool) {
	latest := map[string]entry{} // SOP Instance UID -> newest version
	var maxRev uint64
	for _, e := range entries {
		maxRev = max(maxRev, e.rev)
		if cur, ok := latest[e.SOPInstanceUID]; !ok || e.ReceivedAt.After(cur.ReceivedAt) {
			latest[e.SOPInstanceUID] = e
		}
	}
	data := &events.StudyReceived{Trigger: trigger, Generation: gen}
	series := map[string]*events.SeriesManifest{}
	callings, calleds, assocs, mods := set{}, set{}, set{}, set{}
	var newest entry
	seriesAll := set{}
	for _, e := range latest {
		data.NumInstances++
		data.Bytes += e.Object.Size
		seriesAll.add(e.SeriesInstanceUID)
		mods.add(e.Modality)
		if e.ReceivedAt.After(newest.ReceivedAt) {
			newest = e
		}
		if data.FirstReceivedAt.IsZero() || e.ReceivedAt.Before(data.FirstReceivedAt) {
			data.FirstReceivedAt = e.ReceivedAt
		}
		if e.ReceivedAt.After(data.LastReceivedAt) {
			data.LastReceivedAt = e.ReceivedAt
		}
		if gen > 1 && e.rev <= h.ReportedRev {
			continue
		}
		s := series[e.SeriesInstanceUID]
		if s == nil {
			s = &events.SeriesManifest{SeriesInstanceUID: e.SeriesInstanceUID, SeriesNumber: e.SeriesNumber, Modality: e.Modality,
				Description: e.SeriesDescription, BodyPartExamined: e.BodyPartExamined}
			series[e.SeriesInstanceUID] = s
		}
		s.Instances = append(s.Instances, events.InstanceRef{
			SOPInstanceUID: e.SOPInstanceUID, SOPClassUID: e.SOPClassUID, InstanceNumber: e.InstanceNumber,
			NumberOfFrames: e.NumberOfFrames, TransferSyntaxUID: e.TransferSyntaxUID, Object: e.Object, ReceivedAt: e.ReceivedAt,
		})
		s.NumInstances++
		s.Bytes += e.Object.Size
		callings.add(e.Association.CallingAE)
		calleds.add(e.Association.CalledAE)
		assocs.add(e.Association.ID)
	}
	if len(series) == 0 {
		return nil, maxRev, false
	}
	data.Patient, data.Study = newest.Patient, newest.Study
	data.NumSeries = len(seriesAll)
	data.Modalities = mods.sorted()
	data.CallingAEs, data.CalledAEs, data.Associations = callings.sorted(), calleds.sorted(), assocs.sorted()
	for _, s := range series {
		sort.Slice(s.Instances, func(i, j int) bool {
			x, y := s.Instances[i], s.Instances[j]
			if x.InstanceNumber != y.InstanceNumber {
				return x.InstanceNumber < y.InstanceNumber
			}
			return x.SOPInstanceUID < y.SOPInstanceUID
		})
		data.Series = append(data.Series, *s)
	}
	sort.Slice(data.Series, func(i, j int) bool {
		x, y := data.Series[i], data.Series[j]
		if x.SeriesNumber != y.SeriesNumber {
			return x.SeriesNumber < y.SeriesNumber
		}
		return x.SeriesInstanceUID < y.SeriesInstanceUID
	})
	typ, root := events.TypeStudyReceived, events.SubjectStudyReceived
	if gen > 1 {
		typ, root = events.TypeStudyUpdated, events.SubjectStudyUpdated
	}
	calledAE := ""
	if len(data.CalledAEs) > 0 {
		calledAE = data.CalledAEs[0]
	}
	return &events.Event{
		ID:          fmt.Sprintf("study/%s/%d", h.StudyInstanceUID, gen),
		Type:        typ,
		Subject:     h.StudyInstanceUID,
		Time:        a.now(),
		NATSSubject: events.StudySubject(root, data.Modalities, calledAE),
		Data:        data,
	}, maxRev, true
}

// set is a set of non-empty strings.
type set map[string]struct{}

func (s set) add(v string) {
	if v != "" {
		s[v] = struct{}{}
	}
}

func (s set) sorted() []string {
	out := make([]string, 0, len(s))
	for v := range s {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}
