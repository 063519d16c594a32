package analytics

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/pacsflow/pacsflow/pkg/deid"
	"github.com/pacsflow/pacsflow/pkg/events"
)

// Config configures the analytics projection service.
type Config struct {
	Deid deid.Config
	// Streams are the streams of the PHI events, as given to
	// events.Provision; the analytics stream takes their limits.
	Streams events.StreamConfig
	// Durable names the consumer; replicas share it. Default
	// "analytics-projector".
	Durable string
	// Source is the CloudEvents source of the analytics events.
	Source string
	Logger *slog.Logger
}

// Run provisions the analytics stream and projects every pacs.> event
// onto it until ctx ends. An event is acknowledged only once its
// projection is stored; an event the projection refuses is dead-lettered.
func Run(ctx context.Context, js jetstream.JetStream, cfg Config) error {
	p, err := New(cfg.Deid)
	if err != nil {
		return fmt.Errorf("analytics: %w", err)
	}
	if cfg.Durable == "" {
		cfg.Durable = "analytics-projector"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	as := cfg.Streams
	as.Name = ""
	if _, err := events.ProvisionAnalytics(ctx, js, as); err != nil {
		return fmt.Errorf("analytics: %w", err)
	}
	pub := events.NewPublisher(js, cfg.Source)
	return events.Consume(ctx, js, events.ConsumerConfig{
		Stream:         cfg.Streams.StreamName(),
		Durable:        cfg.Durable,
		FilterSubjects: []string{"pacs.>"},
		Logger:         cfg.Logger,
	}, func(ctx context.Context, d *events.Delivery) error {
		out, err := p.Project(d.Event)
		if errors.Is(err, ErrUnsupportedType) {
			return nil // an event type without an analytics projection
		}
		if err != nil {
			return events.Poison(err)
		}
		// A new trace: the analytics event must not link to the spans of
		// the PHI event, which name its UIDs.
		ctx = trace.ContextWithSpanContext(ctx, trace.SpanContext{})
		if _, err := pub.Publish(ctx, out); err != nil {
			return err
		}
		return nil
	})
}

// LoadOrCreateKey reads the pseudonymization key from path, creating a
// random 32-byte key there (readable by its owner only) if the file does
// not exist. The key must stay the same for pseudonyms to stay stable:
// back it up with the data.
func LoadOrCreateKey(path string) ([]byte, error) {
	key, err := os.ReadFile(path)
	if err == nil {
		return key, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read pseudonymization key: %w", err)
	}
	key = make([]byte, 32)
	_, _ = rand.Read(key) // crypto/rand.Read never returns an error
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create pseudonymization key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return os.ReadFile(path) // another process created it first
	}
	if err != nil {
		return nil, fmt.Errorf("create pseudonymization key: %w", err)
	}
	if _, err := f.Write(key); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("write pseudonymization key: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("write pseudonymization key: %w", err)
	}
	return key, nil
}
