package events

// Benchmarks of the event path on an embedded JetStream (file storage,
// fsync every 2 minutes as the server's default):
//
//	go test -run '^$' -bench . -benchtime 20000x ./pkg/events/
//
// Each runs once per variant in benchVariants: "untraced" with the global
// no-op tracer provider (the default of a process without an OTLP
// endpoint), "traced" recording every span through a batching processor, as
// pkg/telemetry sets up, into an exporter that drops them (publish and
// consume spans both come from the package itself). A variant sets the
// process up; another dimension (compression, a tracing sampler) is one
// more entry.

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/pacsflow/pacsflow/pkg/natsserver"
	"github.com/pacsflow/pacsflow/pkg/natsserver/natstest"
)

type benchVariant struct {
	name string
	// setup prepares the process for the variant, undone at the end of b.
	setup func(b *testing.B)
}

var benchVariants = []benchVariant{
	{name: "untraced", setup: func(*testing.B) {}},
	{name: "traced", setup: installTracing(sdktrace.AlwaysSample())},
	// pkg/telemetry's default: a tenth of the traces recorded.
	{name: "traced-10pct", setup: installTracing(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0.1)))},
}

// installTracing records the spans the sampler keeps and drops them at
// export.
func installTracing(sampler sdktrace.Sampler) func(b *testing.B) {
	return func(b *testing.B) {
		tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sampler), sdktrace.WithBatcher(discardExporter{}))
		prev := otel.GetTracerProvider()
		otel.SetTracerProvider(tp)
		b.Cleanup(func() {
			otel.SetTracerProvider(prev)
			_ = tp.Shutdown(context.Background())
		})
	}
}

type discardExporter struct{}

func (discardExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardExporter) Shutdown(context.Context) error                             { return nil }

// benchStream starts an embedded server with the streams provisioned.
func benchStream(b *testing.B) jetstream.JetStream {
	b.Helper()
	js := natstest.Start(b, natsserver.Config{}).JS
	if _, err := Provision(context.Background(), js, StreamConfig{}); err != nil {
		b.Fatal(err)
	}
	return js
}

// benchEvent is an instance event of a realistic size (about 1.3 KB).
func benchEvent(i int) *Event {
	uid := "1.2.826.0.1.3680043.8.498." + strconv.Itoa(i)
	return &Event{
		ID: "instance/" + uid, Type: TypeInstanceStored, Subject: "1.2.826.0.1.3680043.8.498",
		NATSSubject: InstanceStoredSubject("CT", "PACSFLOW"),
		Data: &InstanceStored{
			Patient:           Patient{ID: "MRN-0042", Name: "DOE^JANE", BirthDate: "19500704", Sex: "F"},
			Study:             Study{StudyInstanceUID: "1.2.826.0.1.3680043.8.498", AccessionNumber: "ACC-2026-0001", Description: "CT HEAD W/O CONTRAST"},
			SeriesInstanceUID: "1.2.826.0.1.3680043.8.498.1", Modality: "CT", SOPClassUID: "1.2.840.10008.5.1.4.1.1.2",
			SOPInstanceUID: uid, TransferSyntaxUID: "1.2.840.10008.1.2.1",
			Object:      StoredObject{Backend: "objectstore", Bucket: "pacsflow-instances", Key: "1.2.826.0.1.3680043.8.498/" + uid, Size: 528150, SHA256: fmt.Sprintf("%064x", i)},
			Association: Association{ID: "970ff715f3b74955", CallingAE: "CT_SCANNER_1", CalledAE: "PACSFLOW", SourceAddress: "127.0.0.1:57048"},
			ReceivedAt:  time.Now(),
		},
	}
}

// BenchmarkPublish: one publisher, each event acknowledged by JetStream
// before the next, as ingest publishes.
func BenchmarkPublish(b *testing.B) {
	for _, v := range benchVariants {
		b.Run(v.name, func(b *testing.B) {
			v.setup(b)
			p := NewPublisher(benchStream(b), "bench")
			ctx := context.Background()
			b.ResetTimer()
			for i := range b.N {
				if _, err := p.Publish(ctx, benchEvent(i)); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkConsume: Consume works off a backlog of b.N events with an
// empty handler; each acknowledgement is confirmed by JetStream.
func BenchmarkConsume(b *testing.B) {
	for _, v := range benchVariants {
		for _, conc := range []int{1, 8} {
			b.Run(fmt.Sprintf("%s/concurrency=%d", v.name, conc), func(b *testing.B) {
				v.setup(b)
				js := benchStream(b)
				p := NewPublisher(js, "bench")
				for i := range b.N {
					if _, err := p.Publish(context.Background(), benchEvent(i)); err != nil {
						b.Fatal(err)
					}
				}
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				var handled atomic.Int64
				all := make(chan struct{})
				h := Handler(func(context.Context, *Delivery) error {
					if handled.Add(1) == int64(b.N) {
						close(all)
					}
					return nil
				})
				done := make(chan error, 1)
				b.ResetTimer()
				go func() { done <- Consume(ctx, js, ConsumerConfig{Durable: "bench", Concurrency: conc}, h) }()
				select {
				case <-all:
				case err := <-done:
					b.Fatalf("Consume returned early: %v", err)
				}
				b.StopTimer()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
				cancel()
				if err := <-done; err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}

// BenchmarkPublishToReceipt: the time from calling Publish to the durable
// pull consumer's handler receiving the event, one event at a time (no
// queueing): p50 and p99 in microseconds.
func BenchmarkPublishToReceipt(b *testing.B) {
	for _, v := range benchVariants {
		b.Run(v.name, func(b *testing.B) {
			v.setup(b)
			js := benchStream(b)
			p := NewPublisher(js, "bench")
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			received := make(chan time.Time, 1)
			h := Handler(func(context.Context, *Delivery) error {
				received <- time.Now()
				return nil
			})
			done := make(chan error, 1)
			go func() { done <- Consume(ctx, js, ConsumerConfig{Durable: "bench"}, h) }()
			// Warm up: the consumer exists and has a pull request waiting.
			if _, err := p.Publish(ctx, benchEvent(-1)); err != nil {
				b.Fatal(err)
			}
			<-received
			lat := make([]time.Duration, b.N)
			b.ResetTimer()
			for i := range b.N {
				start := time.Now()
				if _, err := p.Publish(ctx, benchEvent(i)); err != nil {
					b.Fatal(err)
				}
				lat[i] = (<-received).Sub(start)
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
			cancel()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		})
	}
}
