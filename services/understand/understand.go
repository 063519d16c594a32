// Package understand is the understand service: for every study event
// (pacs.study.received, pacs.study.updated) it reads the study's images from
// storage, runs the model's understand signature on those the model accepts,
// batching images across studies, and publishes what the model found
// (ai.findings), a draft report (ai.report.draft) and a triage level
// (ai.triage). It also answers questions about analyzed studies on ai.ask.
//
// Results are idempotent: a study event handled again (after a crash, or
// on two replicas) publishes the same events with the same IDs, which
// JetStream drops as duplicates within its duplicate window; consumers that
// replay beyond it see the same ID twice. The analysis of each study
// generation is kept in a key-value bucket: a pacs.study.updated event
// lists only the new instances, and its result merges them with the
// previous generation's, so that it supersedes the earlier result for the
// whole study.
package understand

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pacsflow/pacsflow/pkg/batch"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/model"
	"github.com/pacsflow/pacsflow/pkg/storage"
	"github.com/pacsflow/pacsflow/pkg/triage"
)

// Model is what the service needs of the model; *model.Model fills it.
type Model interface {
	Contract() *model.Contract
	Understand(ctx context.Context, images []model.Image) ([]model.Understanding, error)
	Ask(ctx context.Context, images []model.Image, questions []string) ([]string, error)
}

// Config configures the service. Zero values take the defaults given.
type Config struct {
	Model Model
	// Objects is where ingest stores the instances.
	Objects storage.Reader
	// Policy sets the triage thresholds. Default triage.DefaultPolicy().
	Policy *triage.Policy
	// Batch bounds the model's batches, which mix images of every study in
	// flight. Default: 32 images, 5 ms wait, 1 batch at a time.
	Batch batch.Config
	// Studies is how many studies this process analyzes at once: their
	// images fill the batches. Default 4.
	Studies int
	// Decoders is how many images are fetched and decoded at once.
	// Default: one per CPU.
	Decoders int
	// MaxInstanceBytes skips larger instances with a reason rather than
	// reading them into memory. Default 1 GiB.
	MaxInstanceBytes int64
	// Streams are the event streams, as given to events.Provision.
	Streams events.StreamConfig
	// Durable names the consumer; replicas share it. Default "understand".
	Durable string
	// AckWait, MaxDeliver and MaxAckPending configure the consumer (see
	// events.ConsumerConfig). MaxAckPending bounds the studies delivered
	// and not yet settled across all replicas: the back-pressure on the
	// stream. Default 64.
	AckWait       time.Duration
	MaxDeliver    int
	MaxAckPending int
	// Bucket is the key-value bucket of the analyses. Default
	// "pacsflow-understand".
	Bucket     string
	KVReplicas int
	// Source is the CloudEvents source of the results.
	Source     string
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

func (c Config) withDefaults() (Config, error) {
	if c.Model == nil || c.Objects == nil {
		return c, errors.New("understand: a model and a store are required")
	}
	if c.Policy == nil {
		p := triage.DefaultPolicy()
		c.Policy = &p
	}
	if c.Batch.MaxSize == 0 {
		c.Batch.MaxSize = 32
	}
	if c.Batch.MaxWait == 0 {
		c.Batch.MaxWait = 5 * time.Millisecond
	}
	if c.Batch.Workers == 0 {
		c.Batch.Workers = 1
	}
	if c.Studies <= 0 {
		c.Studies = 4
	}
	if c.Decoders <= 0 {
		c.Decoders = runtime.GOMAXPROCS(0)
	}
	if c.MaxInstanceBytes <= 0 {
		c.MaxInstanceBytes = 1 << 30
	}
	if c.Durable == "" {
		c.Durable = "understand"
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = 64
	}
	if c.Bucket == "" {
		c.Bucket = "pacsflow-understand"
	}
	if c.KVReplicas == 0 {
		c.KVReplicas = 1
	}
	if c.Source == "" {
		c.Source = "pacsflow/understand"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	return c, nil
}

// Service is the understand service. Create it with New, run it with Run.
type Service struct {
	cfg      Config
	contract *model.Contract
	ref      events.ModelRef
	// modelKey names the model in record keys and event IDs: a result
	// made with another model or version is another result.
	modelKey string
	accepted map[string]bool
	batcher  *batch.Batcher[model.Image, model.Understanding]
	decoders chan struct{}
	js       jetstream.JetStream
	kv       jetstream.KeyValue
	pub      *events.Publisher
	log      *slog.Logger
	m        *metrics
}

// New checks cfg and creates the bucket of analyses.
func New(ctx context.Context, js jetstream.JetStream, cfg Config) (*Service, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	c := cfg.Model.Contract()
	if !c.Has(model.SigUnderstand) {
		return nil, fmt.Errorf("understand: model %s %s has no %s signature", c.Model.Name, c.Model.Version, model.SigUnderstand)
	}
	s := &Service{
		cfg:      cfg,
		contract: c,
		ref:      events.ModelRef{Name: c.Model.Name, Version: c.Model.Version, ContractVersion: c.ContractVersion, IntendedUse: c.Model.IntendedUse},
		accepted: map[string]bool{},
		decoders: make(chan struct{}, cfg.Decoders),
		js:       js,
		pub:      events.NewPublisher(js, cfg.Source),
		log:      cfg.Logger.With("service", "understand"),
	}
	// JetStream first: a New that fails there leaves nothing behind, so
	// start-up can call it again.
	s.kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      cfg.Bucket,
		Description: "pacsflow understand: the analysis of each study generation, per model",
		History:     1,
		// An analysis is needed as long as its study's events are kept:
		// for the study's next generation and for ai.ask.
		TTL:      cfg.Streams.MaxAge,
		Replicas: cfg.KVReplicas,
		Storage:  jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("understand: bucket %s: %w", cfg.Bucket, err)
	}
	s.modelKey = c.Key()
	for _, m := range c.Preprocessing.AcceptedModalities {
		s.accepted[m] = true
	}
	if s.m, err = newMetrics(cfg.Registerer); err != nil {
		return nil, fmt.Errorf("understand: %w", err)
	}
	s.batcher, err = batch.New(cfg.Batch, cfg.Model.Understand, s.m.observeBatch)
	if err != nil {
		return nil, fmt.Errorf("understand: %w", err)
	}
	return s, nil
}

// Run analyzes studies, and answers ai.ask requests, until ctx ends; it
// then lets the studies in progress finish or go back to the stream.
func (s *Service) Run(ctx context.Context) error {
	ask, err := s.serveAsk(ctx)
	if err != nil {
		return err
	}
	if ask != nil {
		defer func() { _ = ask.Stop() }()
	}
	// The batcher outlives the consumer, whose handlers wait for it.
	bctx, stopBatcher := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { _ = s.batcher.Run(bctx) })
	defer wg.Wait()
	defer stopBatcher()
	return events.Consume(ctx, s.js, events.ConsumerConfig{
		Stream:         s.cfg.Streams.StreamName(),
		Durable:        s.cfg.Durable,
		FilterSubjects: []string{events.SubjectStudyReceived + ".>", events.SubjectStudyUpdated + ".>"},
		AckWait:        s.cfg.AckWait,
		MaxDeliver:     s.cfg.MaxDeliver,
		MaxAckPending:  s.cfg.MaxAckPending,
		Concurrency:    s.cfg.Studies,
		Logger:         s.cfg.Logger,
	}, s.handle)
}

// waitForPrevious is the delivery from which a study generation whose
// previous generation has no analysis yet is analyzed without it: after
// the first backoffs (1 s, 5 s) the previous one is most likely dead-
// lettered or gone from the stream, and the result then covers only the
// generations analyzed.
const waitForPrevious = 3

// handle analyzes one study event and publishes its results.
func (s *Service) handle(ctx context.Context, d *events.Delivery) error {
	if d.Event.Type != events.TypeStudyReceived && d.Event.Type != events.TypeStudyUpdated {
		return nil // another version of a study event: not this service's contract
	}
	var st events.StudyReceived
	if err := json.Unmarshal(d.Event.Data, &st); err != nil {
		return events.Poison(fmt.Errorf("study event %s: %w", d.Event.ID, err))
	}
	uid := st.Study.StudyInstanceUID
	log := s.log.With("study", uid, "generation", st.Generation)
	if !slices.ContainsFunc(st.Modalities, func(m string) bool { return s.accepted[m] }) {
		s.m.studies.WithLabelValues("not_applicable").Inc()
		log.Debug("no modality the model accepts", "modalities", st.Modalities)
		return nil
	}
	key := s.recordKey(uid)
	prev, rev, err := s.load(ctx, key)
	if err != nil {
		return err
	}
	switch {
	case prev != nil && prev.Generation == st.Generation:
		// Analyzed before a crash or a lost acknowledgement: the same
		// events again, which JetStream drops as duplicates.
		s.m.studies.WithLabelValues("republished").Inc()
		return s.publish(ctx, prev)
	case prev != nil && prev.Generation > st.Generation:
		s.m.studies.WithLabelValues("superseded").Inc()
		log.Info("a later generation of the study is analyzed already", "analyzed", prev.Generation)
		return nil
	case st.Generation > 1 && (prev == nil || prev.Generation < st.Generation-1):
		if d.Deliveries < waitForPrevious {
			return fmt.Errorf("study %s generation %d: the analysis of generation %d is not done yet", uid, st.Generation, st.Generation-1)
		}
		log.Warn("analyzing without the previous generation's analysis", "analyzed", prevGeneration(prev))
	}
	start := time.Now()
	a, err := s.analyze(ctx, &st)
	if err != nil {
		return fmt.Errorf("study %s generation %d: %w", uid, st.Generation, err)
	}
	if prev == nil && a.images == 0 && a.synthetic > 0 && a.synthetic == len(a.skipped) {
		// Generated images sent back in: no result, so that they never
		// reach a triage or a worklist.
		s.m.studies.WithLabelValues("synthetic").Inc()
		log.Info("only synthetic images: no result", "images", a.synthetic)
		return nil
	}
	rec := s.result(&st, prev, a, d.Event.Time, start)
	if err := s.save(ctx, key, rec, rev); err != nil {
		return err
	}
	if err := s.publish(ctx, rec); err != nil {
		return err
	}
	s.m.observeStudy(rec, a)
	log.Info("analyzed", "images", a.images, "skipped", len(a.skipped), "triage", rec.Triage.Level, "score", rec.Triage.Score,
		"seconds", rec.Findings.Timings.Total)
	return nil
}

func prevGeneration(r *record) int {
	if r == nil {
		return 0
	}
	return r.Generation
}

// publish publishes a study's results, the triage last: a consumer that
// sees it can find the findings and the draft already stored.
func (s *Service) publish(ctx context.Context, r *record) error {
	uid := r.Findings.Study.StudyInstanceUID
	id := func(kind string) string {
		return fmt.Sprintf("%s/%s/%d/%s", kind, uid, r.Generation, s.modelKey)
	}
	evs := []*events.Event{{
		ID: id("ai-findings"), Type: events.TypeAIFindings,
		NATSSubject: events.StudySubject(events.SubjectAIFindings, r.Findings.Modalities, r.CalledAE),
		Data:        &r.Findings,
	}}
	if r.Report != nil {
		evs = append(evs, &events.Event{
			ID: id("ai-report"), Type: events.TypeAIReportDraft,
			NATSSubject: events.StudySubject(events.SubjectAIReportDraft, r.Report.Modalities, r.CalledAE),
			Data:        r.Report,
		})
	}
	evs = append(evs, &events.Event{
		ID: id("ai-triage"), Type: events.TypeAITriage,
		NATSSubject: events.AITriageSubject(r.Triage.Level, r.Triage.Modalities, r.CalledAE),
		Data:        &r.Triage,
	})
	for _, e := range evs {
		e.Subject, e.Time = uid, r.Findings.AnalyzedAt
		if _, err := s.pub.Publish(ctx, e); err != nil {
			return err
		}
	}
	return nil
}

// recordKey is the bucket key of a study's analysis by this model.
func (s *Service) recordKey(studyUID string) string {
	return studyUID + "." + s.modelKey
}

// result combines the analysis of a generation with the previous one.
func (s *Service) result(st *events.StudyReceived, prev *record, a *analysis, published time.Time, start time.Time) *record {
	var prevFindings []events.Finding
	var key *keyImage
	numImages := a.images
	skipped := a.skipped
	if prev != nil {
		prevFindings, key = prev.Findings.Findings, prev.KeyImage
		numImages += prev.Findings.NumImages
		skipped = append(slices.Clone(prev.Findings.Skipped), skipped...)
	}
	findings := merge(prevFindings, a.findings)
	if a.key != nil && (key == nil || a.key.Score > key.Score) {
		key = a.key
	}
	for i := range findings {
		findings[i].Present = findings[i].Probability >= s.cfg.Policy.Threshold(findings[i].Label).Urgent
	}
	now := time.Now()
	calledAE := ""
	if len(st.CalledAEs) > 0 {
		calledAE = st.CalledAEs[0]
	}
	r := &record{Generation: st.Generation, CalledAE: calledAE, KeyImage: key}
	r.Findings = events.AIFindings{
		Study: st.Study, Generation: st.Generation, Modalities: st.Modalities, FirstReceivedAt: st.FirstReceivedAt, Model: s.ref,
		Findings: findings, NumImages: numImages, Skipped: skipped,
		Timings: events.AITimings{
			Wait:      max(start.Sub(published), 0).Seconds(),
			Decode:    a.decode.Seconds(),
			Inference: a.inference.Seconds(),
			Total:     now.Sub(start).Seconds(),
		},
		AnalyzedAt: now,
	}
	if key != nil {
		r.Report = &events.AIReportDraft{
			Study: st.Study, Generation: st.Generation, Modalities: st.Modalities, FirstReceivedAt: st.FirstReceivedAt, Model: s.ref,
			Text: key.Report, MachineGenerated: true, SOPInstanceUID: key.SOPInstanceUID, Frame: key.Frame, Findings: findings,
		}
	}
	r.Triage = events.AITriage{
		Study: st.Study, Generation: st.Generation, Modalities: st.Modalities, FirstReceivedAt: st.FirstReceivedAt, Model: s.ref,
	}
	tf := make([]triage.Finding, len(findings))
	for i, f := range findings {
		tf[i] = triage.Finding{Label: f.Label, Probability: f.Probability}
	}
	t := s.cfg.Policy.Assess(tf, st.Study.RequestedProcedurePriority)
	if numImages == 0 {
		t.Reason = fmt.Sprintf("the model analyzed no image of the study (%d skipped, e.g. %s)", len(skipped), firstReason(skipped)) +
			priorityReason(t)
	}
	r.Triage.Level, r.Triage.Score, r.Triage.Reason = t.Level.String(), t.Score, t.Reason
	return r
}

func firstReason(skipped []events.SkippedInstance) string {
	if len(skipped) == 0 {
		return "none listed"
	}
	return skipped[0].Reason
}

// priorityReason keeps the DICOM priority's part of a triage without
// findings: "; requested procedure priority STAT", or "".
func priorityReason(t triage.Result) string {
	if t.Level == triage.Routine {
		return ""
	}
	return "; " + t.Reason
}
