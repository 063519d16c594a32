// Package notify is the notify service: it keeps the prioritized
// radiology worklist, serves it to people (a live web page and a JSON API
// with Server-Sent Events) and tells the right people about urgent studies
// (signed webhooks).
//
// The worklist is a JetStream key-value bucket, one entry per study,
// written by a durable consumer of the study events and the model's
// results (pacs.study.received/updated, ai.findings, ai.report.draft,
// ai.triage) with compare-and-set, so that replicas share the consumer and
// never overwrite each other. Every replica serves the API from its own
// copy of the bucket, kept current by a watch: the list is answered from
// memory, and the watch is also what feeds the page's live updates, so a
// change written by any replica reaches every page. Each change is
// announced on worklist.updated.<change>.<level>.
package notify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/storage"
)

// Config configures the service. Zero values take the defaults given.
type Config struct {
	// Objects is where ingest stores the instances: the previews are
	// rendered from them, and a study whose images are synthetic is kept
	// off the worklist.
	Objects storage.Reader
	// Streams are the event streams, as given to events.Provision.
	Streams events.StreamConfig
	// Durable names the worklist's consumer; replicas share it. Default
	// "notify".
	Durable string
	// AckWait and MaxDeliver configure the consumers (see
	// events.ConsumerConfig).
	AckWait    time.Duration
	MaxDeliver int
	// Bucket keeps the entries, InstancesBucket each study's instance
	// list. Defaults "pacsflow-worklist" and "pacsflow-worklist-instances".
	Bucket          string
	InstancesBucket string
	KVReplicas      int
	// MaxAge drops entries this long after their last change; 0 keeps
	// them.
	MaxAge time.Duration
	// Webhooks are the notification rules and how they are delivered.
	Webhooks WebhookConfig
	// Auth is the credential the page and the API require; nil: none,
	// which only a loopback address may serve (see Auth.Exposed).
	Auth *Auth
	// Source is the CloudEvents source of worklist.updated.
	Source     string
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// now is the clock; tests set it.
	now func() time.Time
}

func (c Config) withDefaults() (Config, error) {
	if c.Objects == nil {
		return c, errors.New("notify: a store is required")
	}
	if c.Durable == "" {
		c.Durable = "notify"
	}
	if c.Bucket == "" {
		c.Bucket = "pacsflow-worklist"
	}
	if c.InstancesBucket == "" {
		c.InstancesBucket = "pacsflow-worklist-instances"
	}
	if c.KVReplicas == 0 {
		c.KVReplicas = 1
	}
	if c.Source == "" {
		c.Source = "pacsflow/notify"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	if c.now == nil {
		c.now = time.Now
	}
	var err error
	c.Webhooks, err = c.Webhooks.withDefaults()
	return c, err
}

// Service is the notify service. Create it with New, run it with Run; its
// HTTP routes (Routes) serve once Run has loaded the worklist.
type Service struct {
	cfg        Config
	js         jetstream.JetStream
	entries    jetstream.KeyValue
	instances  jetstream.KeyValue
	deliveries jetstream.KeyValue
	pub        *events.Publisher
	view       *view
	// done is closed when Run returns: the live streams end with it.
	done chan struct{}
	log  *slog.Logger
	m    *metrics
}

// New checks cfg and creates the buckets.
func New(ctx context.Context, js jetstream.JetStream, cfg Config) (*Service, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, js: js, done: make(chan struct{}), pub: events.NewPublisher(js, cfg.Source), log: cfg.Logger.With("service", "notify")}
	// JetStream first: a New that fails there leaves nothing behind, so
	// start-up can call it again.
	buckets := []struct {
		kv          *jetstream.KeyValue
		name, about string
	}{
		{&s.entries, cfg.Bucket, "pacsflow notify: the worklist, one entry per study"},
		{&s.instances, cfg.InstancesBucket, "pacsflow notify: the instances of each study on the worklist"},
		{&s.deliveries, cfg.Webhooks.Bucket, "pacsflow notify: the webhook delivery log"},
	}
	for _, b := range buckets {
		ttl := cfg.MaxAge
		if b.name == cfg.Webhooks.Bucket {
			ttl = cfg.Webhooks.LogMaxAge
		}
		*b.kv, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: b.name, Description: b.about, History: 1, TTL: ttl,
			Replicas: cfg.KVReplicas, Storage: jetstream.FileStorage,
		})
		if err != nil {
			return nil, fmt.Errorf("notify: bucket %s: %w", b.name, err)
		}
	}
	if s.m, err = newMetrics(cfg.Registerer); err != nil {
		return nil, fmt.Errorf("notify: %w", err)
	}
	s.view = newView(cfg.MaxAge, cfg.now, s.m)
	return s, nil
}

// Run keeps the worklist and delivers the notifications until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	defer close(s.done)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	defer wg.Wait()
	fail := func(what string, err error) {
		if err != nil && ctx.Err() == nil {
			cancel(fmt.Errorf("notify: %s: %w", what, err))
		}
	}
	wg.Go(func() { fail("worklist view", s.view.run(ctx, s.entries)) })
	wg.Go(func() { fail("webhooks", s.runWebhooks(ctx)) })
	err := events.Consume(ctx, s.js, events.ConsumerConfig{
		Stream:  s.cfg.Streams.StreamName(),
		Durable: s.cfg.Durable,
		FilterSubjects: []string{events.SubjectStudyReceived + ".>", events.SubjectStudyUpdated + ".>",
			events.SubjectAIFindings + ".>", events.SubjectAIReportDraft + ".>", events.SubjectAITriage + ".>"},
		AckWait:    s.cfg.AckWait,
		MaxDeliver: s.cfg.MaxDeliver,
		// Entries of different studies are independent; the same study's
		// events meet in compare-and-set.
		Concurrency: 4,
		Logger:      s.cfg.Logger,
	}, s.handle)
	if cause := context.Cause(ctx); err == nil && cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return err
}

// Ready reports whether the worklist is loaded and the page can be served.
func (s *Service) Ready(context.Context) error {
	if !s.view.loaded() {
		return errors.New("notify: the worklist is loading")
	}
	return nil
}
