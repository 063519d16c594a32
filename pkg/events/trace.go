package events

import (
	"context"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Trace context travels in the W3C traceparent (and tracestate) headers
// of each message, so a study's trace runs from the C-STORE through every
// consumer. Spans go to the global OpenTelemetry tracer provider, which is
// a no-op unless the process configured an exporter.

const instrumentation = "github.com/pacsflow/pacsflow/pkg/events"

var propagator = propagation.TraceContext{}

// headerCarrier adapts nats.Header to the propagation carrier interface.
type headerCarrier nats.Header

func (c headerCarrier) Get(key string) string { return nats.Header(c).Get(key) }
func (c headerCarrier) Set(key, v string)     { nats.Header(c).Set(key, v) }
func (c headerCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// InjectContext writes the trace context of ctx into h.
func InjectContext(ctx context.Context, h nats.Header) {
	propagator.Inject(ctx, headerCarrier(h))
}

// ExtractContext returns ctx carrying the trace context found in h, as the
// remote parent of the spans a consumer starts.
func ExtractContext(ctx context.Context, h nats.Header) context.Context {
	return propagator.Extract(ctx, headerCarrier(h))
}

func tracer() trace.Tracer { return otel.Tracer(instrumentation) }

// messagingAttributes describe a message for its spans, after the
// OpenTelemetry messaging semantic conventions; few, since every event
// pays for them when tracing is on.
func messagingAttributes(subject, id, typ string) []attribute.KeyValue {
	return []attribute.KeyValue{
		attribute.String("messaging.destination.name", subject),
		attribute.String("messaging.message.id", id),
		attribute.String("cloudevents.event_type", typ),
	}
}

// StartConsumerSpan starts the span of a consumer processing a message:
// a child of the publisher's span found in h. The caller ends it.
func StartConsumerSpan(ctx context.Context, name, subject string, h nats.Header) (context.Context, trace.Span) {
	ctx = ExtractContext(ctx, h)
	return tracer().Start(ctx, name, trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(messagingAttributes(subject, h.Get(HeaderID), h.Get(HeaderType))...))
}
