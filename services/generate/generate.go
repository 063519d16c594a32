// Package generate is the generate service: it answers ai.augmentation.requested
// events by running the model's generate signature (synthesize, restore,
// convert), batching images across requests, writes each image as a new DICOM
// instance of a synthetic study (package genimage: marked synthetic in
// standard attributes and a private block), stores it like an ingested
// instance, and publishes ai.augmentation.generated with the object
// references and the parameters.
//
// Requests name a study; the service keeps its own index of the studies'
// images, from the study events, to find the source image. Policy rules turn
// findings into requests ("for every study with a nodule, synthesize 4
// variants"). The same request gives the same images under the same UIDs and
// storage keys: idempotent.
package generate

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pacsflow/pacsflow/pkg/batch"
	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/genimage"
	"github.com/pacsflow/pacsflow/pkg/imaging"
	"github.com/pacsflow/pacsflow/pkg/model"
	"github.com/pacsflow/pacsflow/pkg/storage"
)

// Model is what the service needs of the model; *model.Model fills it.
type Model interface {
	Contract() *model.Contract
	Generate(ctx context.Context, reqs []model.GenerateRequest) ([]model.Image, error)
}

// Store keeps the generated instances and reads the sources; storage.Store
// fills it.
type Store interface {
	Put(ctx context.Context, key string, r io.Reader) (storage.Object, error)
	Open(ctx context.Context, key string) (io.ReadCloser, storage.Object, error)
	Stat(ctx context.Context, key string) (storage.Object, error)
}

// Config configures the service. Zero values take the defaults given.
type Config struct {
	Model Model
	Store Store
	// Backend and Bucket name the store in the events (events.BackendFS or
	// events.BackendObjectStore).
	Backend, Bucket string
	// Objects configures the generated objects (their UID root).
	Objects genimage.Config
	// Policy turns findings into requests; empty: none.
	Policy []Rule
	// Batch bounds the model's batches. Default: 16 images, 5 ms, 1 worker.
	Batch batch.Config
	// Requests is how many requests this process works on at once; their
	// images fill the batches. Default 8 (bench/generate.sh: with 4 requests
	// of 4 images, batches of 16 stay half full).
	Requests int
	// Streams are the event streams, as given to events.Provision.
	Streams events.StreamConfig
	// MaxDeliver is the attempts at a request before its dead letter.
	// Default 5.
	MaxDeliver int
	// KVReplicas and the stream's MaxAge configure the study index.
	KVReplicas int
	Source     string
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

func (c Config) withDefaults() (Config, error) {
	if c.Model == nil || c.Store == nil {
		return c, errors.New("generate: a model and a store are required")
	}
	if c.Backend == "" {
		return c, errors.New("generate: the store's backend name is required")
	}
	if c.Batch.MaxSize == 0 {
		c.Batch.MaxSize = 16
	}
	if c.Batch.MaxWait == 0 {
		c.Batch.MaxWait = 5 * time.Millisecond
	}
	if c.Batch.Workers == 0 {
		c.Batch.Workers = 1
	}
	if c.Requests <= 0 {
		c.Requests = 8
	}
	if c.KVReplicas == 0 {
		c.KVReplicas = 1
	}
	if c.Source == "" {
		c.Source = "pacsflow/generate"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	return c, nil
}

// Service is the generate service. Create it with New, run it with Run.
type Service struct {
	cfg      Config
	contract *model.Contract
	ref      events.ModelRef
	modelKey string
	accepted map[string]bool
	batcher  *batch.Batcher[model.GenerateRequest, model.Image]
	js       jetstream.JetStream
	index    *index
	pub      *events.Publisher
	log      *slog.Logger
	m        *metrics
}

// New checks cfg and creates the study index's bucket.
func New(ctx context.Context, js jetstream.JetStream, cfg Config) (*Service, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	c := cfg.Model.Contract()
	if !c.Has(model.SigGenerate) {
		return nil, fmt.Errorf("generate: model %s %s has no %s signature", c.Model.Name, c.Model.Version, model.SigGenerate)
	}
	for _, r := range cfg.Policy {
		if _, ok := c.GenerateTasks[r.Task]; !ok {
			return nil, fmt.Errorf("generate: policy rule %s: the model has no task %q", r, r.Task)
		}
	}
	s := &Service{
		cfg: cfg, contract: c, js: js, accepted: map[string]bool{},
		ref: events.ModelRef{Name: c.Model.Name, Version: c.Model.Version, ContractVersion: c.ContractVersion, IntendedUse: c.Model.IntendedUse},
		pub: events.NewPublisher(js, cfg.Source),
		log: cfg.Logger.With("service", "generate"),
	}
	// JetStream first: a New that fails there leaves nothing behind, so
	// start-up can call it again.
	if s.index, err = openIndex(ctx, js, cfg.KVReplicas, cfg.Streams.MaxAge); err != nil {
		return nil, fmt.Errorf("generate: %w", err)
	}
	s.modelKey = c.Key()
	for _, m := range c.Preprocessing.AcceptedModalities {
		s.accepted[m] = true
	}
	if s.m, err = newMetrics(cfg.Registerer); err != nil {
		return nil, fmt.Errorf("generate: %w", err)
	}
	if s.batcher, err = batch.New(cfg.Batch, cfg.Model.Generate, s.m.observeBatch); err != nil {
		return nil, fmt.Errorf("generate: %w", err)
	}
	return s, nil
}

// Run indexes studies, applies the policy and answers requests until ctx
// ends.
func (s *Service) Run(ctx context.Context) error {
	bctx, stopBatcher := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { _ = s.batcher.Run(bctx) })
	defer wg.Wait()
	defer stopBatcher()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var consumers sync.WaitGroup
	run := func(cfg events.ConsumerConfig, h events.Handler) {
		cfg.Stream, cfg.Logger = s.cfg.Streams.StreamName(), s.cfg.Logger
		consumers.Go(func() {
			if err := events.Consume(ctx, s.js, cfg, h); err != nil {
				cancel(err)
			}
		})
	}
	run(events.ConsumerConfig{Durable: "generate-index",
		FilterSubjects: []string{events.SubjectStudyReceived + ".>", events.SubjectStudyUpdated + ".>"}}, s.index.handle)
	run(events.ConsumerConfig{Durable: "generate", FilterSubjects: []string{events.SubjectAugmentationRequested + ".>"},
		Concurrency: s.cfg.Requests, MaxDeliver: s.cfg.MaxDeliver}, s.handle)
	if len(s.cfg.Policy) > 0 {
		run(events.ConsumerConfig{Durable: "generate-policy", FilterSubjects: []string{events.SubjectAIFindings + ".>"}}, s.applyPolicy)
	}
	consumers.Wait()
	if err := context.Cause(ctx); !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// handle answers one request.
func (s *Service) handle(ctx context.Context, d *events.Delivery) error {
	if d.Event.Type != events.TypeAugmentationRequested {
		return nil
	}
	var r events.AugmentationRequested
	if err := json.Unmarshal(d.Event.Data, &r); err != nil {
		return events.Poison(fmt.Errorf("request %s: %w", d.Event.ID, err))
	}
	if err := s.check(&r); err != nil {
		return events.Poison(err)
	}
	start := time.Now()
	src, err := s.source(ctx, &r)
	if err != nil {
		return err
	}
	out, err := s.generate(ctx, &r, src)
	if err != nil {
		return fmt.Errorf("request %s: %w", r.RequestID, err)
	}
	e := &events.Event{
		ID: fmt.Sprintf("ai-augmentation/%s/%s", r.RequestID, s.modelKey), Type: events.TypeAugmentationGenerated,
		Subject: out.StudyInstanceUID, NATSSubject: events.AugmentationSubject(events.SubjectAugmentationGenerated, r.Task),
		Time: out.GeneratedAt, Data: out,
	}
	if _, err := s.pub.Publish(ctx, e); err != nil {
		return err
	}
	s.m.requests.WithLabelValues(r.Task).Inc()
	s.m.images.WithLabelValues(r.Task).Add(float64(len(out.Objects)))
	s.log.Info("generated", "request", r.RequestID, "task", r.Task, "images", len(out.Objects), "source_study", r.StudyInstanceUID,
		"study", out.StudyInstanceUID, "seconds", time.Since(start).Seconds())
	return nil
}

// check refuses a request no retry can answer.
func (s *Service) check(r *events.AugmentationRequested) error {
	if err := Validate(r); err != nil {
		return err
	}
	if _, ok := s.contract.GenerateTasks[r.Task]; !ok {
		return fmt.Errorf("request %s: model %s has no task %q", r.RequestID, s.ref.Name, r.Task)
	}
	return nil
}

// Validate checks a request against its event schema (task, count, seed
// bounds), as a requester should before publishing it.
func Validate(r *events.AugmentationRequested) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("request %s: %w", r.RequestID, err)
	}
	if err := events.ValidateData(events.TypeAugmentationRequested, b); err != nil {
		return fmt.Errorf("request %s: %w", r.RequestID, err)
	}
	return nil
}

// source is the image a request derives from, read from storage.
type source struct {
	ref   indexedInstance
	meta  *genimage.Source
	image *model.Image // nil for synthesize: the model draws from noise alone
}

func (s *Service) source(ctx context.Context, r *events.AugmentationRequested) (*source, error) {
	study, err := s.index.get(ctx, r.StudyInstanceUID)
	if err != nil {
		return nil, err
	}
	if study == nil {
		// Not indexed yet (its study event is on its way), or unknown: retried,
		// then dead-lettered with this reason.
		return nil, fmt.Errorf("request %s: study %s has not been received", r.RequestID, r.StudyInstanceUID)
	}
	in, ok := study.pick(r.SOPInstanceUID, s.accepted)
	if !ok {
		if r.SOPInstanceUID != "" {
			return nil, events.Poison(fmt.Errorf("request %s: study %s has no instance %s", r.RequestID, r.StudyInstanceUID, r.SOPInstanceUID))
		}
		return nil, events.Poison(fmt.Errorf("request %s: study %s has no image of a modality the model accepts (%v)", r.RequestID, r.StudyInstanceUID, s.contract.Preprocessing.AcceptedModalities))
	}
	b, err := storage.ReadAll(ctx, s.cfg.Store, in.Object.Key, 0)
	if err != nil {
		return nil, fmt.Errorf("request %s: source %s: %w", r.RequestID, in.SOPInstanceUID, err)
	}
	meta, err := genimage.SourceOf(b)
	if err != nil {
		return nil, events.Poison(fmt.Errorf("request %s: source %s: %w", r.RequestID, in.SOPInstanceUID, err))
	}
	src := &source{ref: in, meta: meta}
	if r.Task != events.TaskSynthesize {
		f, err := imaging.Decode(b)
		if err != nil {
			return nil, events.Poison(fmt.Errorf("request %s: source %s: %w", r.RequestID, in.SOPInstanceUID, err))
		}
		img := s.contract.Preprocessing.Input(f)
		src.image = &img
	}
	return src, nil
}

// generate runs the model for each image of the request (through the
// batcher, alongside other requests), writes and stores the objects.
func (s *Service) generate(ctx context.Context, r *events.AugmentationRequested, src *source) (*events.AugmentationGenerated, error) {
	images := make([]model.Image, r.Count)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for i := range images {
		wg.Go(func() {
			img, err := s.batcher.Do(ctx, model.GenerateRequest{Task: r.Task, Condition: r.Prompt, Source: src.image, Seed: uint64(r.Seed) + uint64(i)})
			if err != nil {
				cancel(err)
				return
			}
			images[i] = img
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	size := s.contract.Preprocessing.ImageSize
	out := &events.AugmentationGenerated{
		RequestID: r.RequestID, Task: r.Task, Prompt: r.Prompt,
		SourceStudyInstanceUID: r.StudyInstanceUID, SourceSOPInstanceUID: src.ref.SOPInstanceUID,
		Model: s.ref, Synthetic: true, GeneratedAt: r.RequestedAt,
	}
	for i, img := range images {
		obj, err := genimage.Write(src.meta, genimage.Image{Rows: size[0], Cols: size[1], Values: img.Pixels}, genimage.Params{
			RequestID: r.RequestID, Task: r.Task, Prompt: r.Prompt, Seed: uint64(r.Seed) + uint64(i), Index: i, Count: r.Count,
			ModelName: s.ref.Name, ModelVersion: s.ref.Version, Time: r.RequestedAt,
		}, s.cfg.Objects)
		if err != nil {
			return nil, events.Poison(fmt.Errorf("write image %d: %w", i, err))
		}
		stored, err := s.store(ctx, obj)
		if err != nil {
			return nil, err
		}
		out.StudyInstanceUID = obj.StudyInstanceUID
		out.Objects = append(out.Objects, events.GeneratedObject{
			SOPInstanceUID: obj.SOPInstanceUID, SeriesInstanceUID: obj.SeriesInstanceUID, Seed: r.Seed + int64(i), Object: stored,
		})
	}
	return out, nil
}

// store puts an object under a key made of its UIDs and the digest of its
// bytes: a request handled again finds its objects stored already.
func (s *Service) store(ctx context.Context, obj *genimage.Object) (events.StoredObject, error) {
	sum := sha256.Sum256(obj.Part10)
	digest := hex.EncodeToString(sum[:])
	key, err := storage.InstanceKey(obj.StudyInstanceUID, obj.SeriesInstanceUID, obj.SOPInstanceUID, digest[:16])
	if err != nil {
		return events.StoredObject{}, events.Poison(err)
	}
	o, err := s.cfg.Store.Put(ctx, key, bytes.NewReader(obj.Part10))
	if errors.Is(err, storage.ErrExists) {
		o, err = s.cfg.Store.Stat(ctx, key)
	}
	if err != nil {
		return events.StoredObject{}, fmt.Errorf("store generated instance %s: %w", obj.SOPInstanceUID, err)
	}
	if o.SHA256 != digest {
		return events.StoredObject{}, fmt.Errorf("store generated instance %s: %s holds other bytes", obj.SOPInstanceUID, key)
	}
	return events.StoredObject{Backend: s.cfg.Backend, Bucket: s.cfg.Bucket, Key: key, Size: o.Size, SHA256: digest}, nil
}
