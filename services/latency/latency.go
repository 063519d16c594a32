// Package latency records how long studies take to pass the stages of the
// pipeline, as one histogram by stage, pacsflow_study_latency_seconds{stage}.
//
// Every stage is timed from the receipt of the study's first instance to
// the time of the event that marks the stage, both read from the events
// themselves: the record is the same whichever process or replica
// published them, and a consumer that lags behind does not inflate it.
// The pipeline's stages are received → completed (pacs.study.received) →
// inferred (ai.findings) → triaged (ai.triage) → on_worklist
// (worklist.updated.triaged: the worklist shows the triage); each stage's
// event carries the study's first receipt. Only a study's first result is
// timed: the results for a pacs.study.updated (generation 2 and on) come
// after instances that arrived late, not after the first receipt.
package latency

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/pacsflow/pacsflow/pkg/events"
)

// stage is a step a study reaches when an event of its type is published.
type stage struct {
	name      string
	eventType string
	subjects  string
}

var stages = []stage{
	{name: "completed", eventType: events.TypeStudyReceived, subjects: events.SubjectStudyReceived + ".>"},
	{name: "inferred", eventType: events.TypeAIFindings, subjects: events.SubjectAIFindings + ".>"},
	{name: "triaged", eventType: events.TypeAITriage, subjects: events.SubjectAITriage + ".>"},
	// The worklist shows the model's triage: the notify service applied it.
	{name: "on_worklist", eventType: events.TypeWorklistUpdated, subjects: events.SubjectWorklistUpdated + "." + events.WorklistTriaged + ".>"},
}

// timing is what the recorder reads of a stage's event data: the data of
// every stage's event type has these two fields.
type timing struct {
	FirstReceivedAt time.Time `json:"first_received_at"`
	Generation      int       `json:"generation"`
}

// Config configures the recorder.
type Config struct {
	// Stream is the events stream. Default "PACSFLOW".
	Stream string
	// Durable names the consumer; replicas share it, so each study is
	// recorded once across them. Default "study-latency".
	Durable string
	// MeterProvider receives the histogram. Default: OpenTelemetry's
	// global provider (pacsflow's /metrics).
	MeterProvider metric.MeterProvider
	Logger        *slog.Logger
	// now is the time a new consumer starts from; tests set it.
	now func() time.Time
}

// Run records the stages of the studies whose events are published from
// now on (a new recorder does not replay the stream's history; a
// restarted one resumes where it stopped) until ctx ends.
func Run(ctx context.Context, js jetstream.JetStream, cfg Config) error {
	if cfg.Durable == "" {
		cfg.Durable = "study-latency"
	}
	if cfg.MeterProvider == nil {
		cfg.MeterProvider = otel.GetMeterProvider()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	hist, err := cfg.MeterProvider.Meter("github.com/pacsflow/pacsflow/services/latency").Float64Histogram(
		"pacsflow_study_latency", metric.WithUnit("s"),
		metric.WithDescription("Time from the receipt of a study's first instance to the event of each stage it reached: completed (pacs.study.received), inferred (ai.findings), triaged (ai.triage), on_worklist (worklist.updated.triaged)."),
		metric.WithExplicitBucketBoundaries(.5, 1, 2, 2.5, 3, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600))
	if err != nil {
		return fmt.Errorf("study latency histogram: %w", err)
	}
	byType := make(map[string]stage, len(stages))
	subjects := make([]string, 0, len(stages))
	for _, s := range stages {
		byType[s.eventType] = s
		subjects = append(subjects, s.subjects)
	}
	return events.Consume(ctx, js, events.ConsumerConfig{
		Stream:         cfg.Stream,
		Durable:        cfg.Durable,
		FilterSubjects: subjects,
		StartTime:      cfg.now(),
		Logger:         cfg.Logger,
	}, func(ctx context.Context, d *events.Delivery) error {
		s, ok := byType[d.Event.Type]
		if !ok {
			return nil // another version of a stage's event: not this recorder's to time
		}
		var tm timing
		if err := json.Unmarshal(d.Event.Data, &tm); err != nil {
			return events.Poison(fmt.Errorf("event %s: %w", d.Event.ID, err))
		}
		if tm.Generation > 1 {
			return nil
		}
		first := tm.FirstReceivedAt
		if first.IsZero() || d.Event.Time.IsZero() {
			return events.Poison(fmt.Errorf("event %s: no time or first receipt to time the %s stage", d.Event.ID, s.name))
		}
		// A redelivery after a lost acknowledgement would count a study
		// twice; only the first delivery is recorded.
		if d.Deliveries == 1 {
			hist.Record(ctx, d.Event.Time.Sub(first).Seconds(), metric.WithAttributes(attribute.String("stage", s.name)))
		}
		return nil
	})
}
