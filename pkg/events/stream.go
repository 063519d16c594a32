package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// StreamConfig configures the stream that keeps pacsflow's events.
type StreamConfig struct {
	// Name of the stream. Default "PACSFLOW".
	Name string
	// Replicas: 1 on a single server, 3 on a cluster. Default 1.
	Replicas int
	// MaxAge discards events older than this; 0 keeps them forever.
	MaxAge time.Duration
	// MaxBytes caps the stream; the oldest events go first. 0: no cap.
	MaxBytes int64
	// Duplicates is the window in which JetStream drops a message whose
	// Nats-Msg-Id it has seen. Default 2 minutes.
	Duplicates time.Duration
}

// Subjects the stream captures.
var streamSubjects = []string{"pacs.>"}

func (c StreamConfig) withDefaults() StreamConfig {
	if c.Name == "" {
		c.Name = "PACSFLOW"
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.Duplicates == 0 {
		c.Duplicates = 2 * time.Minute
	}
	return c
}

// Provision creates the event stream, or updates it to cfg; calling it again
// with the same configuration changes nothing, so every service calls it at
// start-up.
func Provision(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.Stream, error) {
	cfg = cfg.withDefaults()
	st, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        cfg.Name,
		Description: "pacsflow events (CloudEvents 1.0, binary mode)",
		Subjects:    streamSubjects,
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Replicas:    cfg.Replicas,
		MaxAge:      cfg.MaxAge,
		MaxBytes:    orUnlimited(cfg.MaxBytes),
		Duplicates:  cfg.Duplicates,
		Discard:     jetstream.DiscardOld,
	})
	if err != nil {
		return nil, fmt.Errorf("provision stream %s: %w", cfg.Name, err)
	}
	return st, nil
}

func orUnlimited(n int64) int64 {
	if n == 0 {
		return -1
	}
	return n
}

// Publisher publishes events and waits for JetStream's acknowledgement.
type Publisher struct {
	js     jetstream.JetStream
	source string
}

// NewPublisher returns a Publisher whose events name source as their
// CloudEvents source.
func NewPublisher(js jetstream.JetStream, source string) *Publisher {
	return &Publisher{js: js, source: source}
}

// Source is the CloudEvents source of this publisher's events.
func (p *Publisher) Source() string { return p.source }

// ErrNotStored reports a publish that JetStream did not acknowledge.
var ErrNotStored = errors.New("event not stored by JetStream")

// Publish stores e in the stream and returns once JetStream has
// acknowledged it. duplicate is true when JetStream had already stored an
// event with the same ID within the duplicate window (so nothing new was
// stored, and the earlier copy stands). e.Source is filled in if empty.
func (p *Publisher) Publish(ctx context.Context, e *Event) (duplicate bool, err error) {
	if e.Source == "" {
		e.Source = p.source
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	m, err := e.Message()
	if err != nil {
		return false, err
	}
	ctx, span := tracer().Start(ctx, "publish "+e.Type, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(messagingAttributes(e.NATSSubject, e.ID, e.Type)...))
	defer span.End()
	InjectContext(ctx, m.Header)
	ack, err := p.js.PublishMsg(ctx, m)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "not stored")
		return false, fmt.Errorf("%w: publish %s %s: %w", ErrNotStored, e.Type, e.ID, err)
	}
	span.SetAttributes(attribute.Bool("messaging.nats.duplicate", ack.Duplicate), attribute.Int64("messaging.nats.stream_sequence", int64(ack.Sequence)))
	return ack.Duplicate, nil
}
