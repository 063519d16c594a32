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

// StreamConfig configures the streams that keep pacsflow's events and
// their dead letters.
type StreamConfig struct {
	// Name of the events stream. Default "PACSFLOW". The dead-letter and
	// advisory streams are named after it (see DeadLetterStream and
	// AdvisoryStream).
	Name string
	// Replicas of every stream: 1 on a single server, 3 on a cluster.
	// Default 1.
	Replicas int
	// Retention is the events stream's retention policy. The default,
	// jetstream.LimitsPolicy, keeps events until MaxAge or MaxBytes
	// whoever has read them, so that a new subscriber can replay history.
	// jetstream.InterestPolicy drops an event once every consumer has
	// acknowledged it: smaller, but a later subscriber finds nothing to
	// replay. jetstream.WorkQueuePolicy is refused: it allows one consumer
	// per subject, and every service consumes the same events.
	Retention jetstream.RetentionPolicy
	// MaxAge discards events older than this; 0 keeps them forever.
	MaxAge time.Duration
	// MaxBytes caps the stream; the oldest events go first. 0: no cap.
	MaxBytes int64
	// Duplicates is the window in which JetStream drops a message whose
	// Nats-Msg-Id it has seen. Default 2 minutes.
	Duplicates time.Duration
	// DeadLetters limits the dead-letter stream.
	DeadLetters DeadLetterLimits
}

// DeadLetterLimits limit the dead-letter stream, and the advisory stream
// that the dead-letter reconciler reads, which keeps its advisories as
// long as dead letters are kept (so that a reconciler that was down
// catches up).
type DeadLetterLimits struct {
	// MaxAge discards dead letters older than this; 0 keeps them forever.
	MaxAge time.Duration
	// MaxBytes caps the dead-letter stream; 0: no cap. A full dead-letter
	// stream refuses new dead letters rather than dropping old ones: the
	// messages concerned are then neither acknowledged nor terminated, and
	// the reconciler records them once there is room again (pacsflow dlq
	// replay --purge, or a larger cap).
	MaxBytes int64
	// Duplicates is the window in which a dead letter recorded twice (by
	// the consumer and by the reconciler) is stored once. Default 2
	// minutes; older ones are found by their subject.
	Duplicates time.Duration
}

// Subjects the stream captures: the archive's events, the model's results
// and the worklist's changes, which name the same studies and are kept as
// long. Not all of
// ai.>: a stream that captured the requests to ai.ask would answer them
// with its own acknowledgements.
var streamSubjects = []string{"pacs.>", SubjectAIFindings + ".>", SubjectAIReportDraft + ".>", SubjectAITriage + ".>", "ai.augmentation.>", SubjectWorklistUpdated + ".>"}

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
	if c.DeadLetters.Duplicates == 0 {
		c.DeadLetters.Duplicates = 2 * time.Minute
	}
	return c
}

// Provision creates the events stream, the dead-letter stream and the
// advisory stream, or updates them to cfg; calling it again with the same
// configuration changes nothing, so every service calls it at start-up. It
// returns the events stream.
func Provision(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.Stream, error) {
	cfg = cfg.withDefaults()
	if cfg.Retention == jetstream.WorkQueuePolicy {
		return nil, fmt.Errorf("provision stream %s: work-queue retention allows one consumer per subject; use limits or interest", cfg.Name)
	}
	st, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        cfg.Name,
		Description: "pacsflow events (CloudEvents 1.0, binary mode)",
		Subjects:    streamSubjects,
		Storage:     jetstream.FileStorage,
		Retention:   cfg.Retention,
		Replicas:    cfg.Replicas,
		MaxAge:      cfg.MaxAge,
		MaxBytes:    orUnlimited(cfg.MaxBytes),
		Duplicates:  cfg.Duplicates,
		Discard:     jetstream.DiscardOld,
	})
	if err != nil {
		return nil, fmt.Errorf("provision stream %s: %w", cfg.Name, err)
	}
	if err := provisionDeadLetters(ctx, js, cfg); err != nil {
		return nil, err
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
	// Only a recorded trace travels on: the header costs every message a
	// few percent of the event path, which an unsampled trace need not pay
	// (its consumers then take their own sampling decision).
	if span.SpanContext().IsSampled() {
		InjectContext(ctx, m.Header)
	}
	ack, err := p.js.PublishMsg(ctx, m)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "not stored")
		return false, fmt.Errorf("%w: publish %s %s: %w", ErrNotStored, e.Type, e.ID, err)
	}
	if ack.Duplicate {
		span.SetAttributes(attribute.Bool("messaging.nats.duplicate", true))
	}
	return ack.Duplicate, nil
}

// StreamName is the name of the events stream cfg configures.
func (c StreamConfig) StreamName() string { return c.withDefaults().Name }
