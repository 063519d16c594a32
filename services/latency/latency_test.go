package latency

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/pacsflow/pacsflow/pkg/events"
	"github.com/pacsflow/pacsflow/pkg/natsserver"
	"github.com/pacsflow/pacsflow/pkg/natsserver/natstest"
)

func studyEvent(uid string, first, at time.Time) *events.Event {
	return &events.Event{
		ID: "study/" + uid + "/1", Type: events.TypeStudyReceived, Subject: uid, Time: at,
		NATSSubject: events.StudySubject(events.SubjectStudyReceived, []string{"CT"}, "PACSFLOW"),
		Data:        &events.StudyReceived{FirstReceivedAt: first, LastReceivedAt: first, Generation: 1},
	}
}

// histogram returns the study latency histogram's data points by stage.
func histogram(t *testing.T, r *sdkmetric.ManualReader) map[string]metricdata.HistogramDataPoint[float64] {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	points := map[string]metricdata.HistogramDataPoint[float64]{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			h, ok := m.Data.(metricdata.Histogram[float64])
			if m.Name != "pacsflow_study_latency" || !ok {
				continue
			}
			for _, p := range h.DataPoints {
				stage, _ := p.Attributes.Value(attribute.Key("stage"))
				points[stage.AsString()] = p
			}
		}
	}
	return points
}

// The completed stage is timed from the study's first receipt to its study
// event, both as the events say; events from before the recorder's first
// start are not replayed into the histogram.
func TestRecordsStudyLatencyFromEvents(t *testing.T) {
	js := natstest.Start(t, natsserver.Config{}).JS
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := events.Provision(ctx, js, events.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	pub := events.NewPublisher(js, "test")
	t0 := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	if _, err := pub.Publish(ctx, studyEvent("1.2.3.1", t0, t0.Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	start := time.Now()

	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- Run(runCtx, js, Config{MeterProvider: mp, now: func() time.Time { return start }})
	}()
	defer func() { stop(); <-done }()

	for i, d := range []time.Duration{3 * time.Second, 7500 * time.Millisecond} {
		uid := "1.2.3." + string(rune('2'+i))
		if _, err := pub.Publish(ctx, studyEvent(uid, t0, t0.Add(d))); err != nil {
			t.Fatal(err)
		}
	}
	for {
		p, ok := histogram(t, reader)["completed"]
		if ok && p.Count == 2 {
			if p.Sum != 10.5 {
				t.Errorf("completed: sum %v s over 2 studies, want 10.5 (3 + 7.5)", p.Sum)
			}
			break
		}
		if ok && p.Count > 2 {
			t.Fatalf("completed: %d studies recorded, want 2: the study from before the start was replayed", p.Count)
		}
		if ctx.Err() != nil {
			t.Fatalf("completed stage not recorded within 30 s: %+v", histogram(t, reader))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Once the consumer has settled everything it was given, the older
	// study is still unrecorded.
	cons, err := js.Consumer(ctx, events.StreamConfig{}.StreamName(), "study-latency")
	if err != nil {
		t.Fatal(err)
	}
	for {
		ci, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ci.NumPending == 0 && ci.NumAckPending == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("consumer did not settle within 30 s: %+v", ci)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if p := histogram(t, reader)["completed"]; p.Count != 2 {
		t.Errorf("completed: %d studies recorded, want 2", p.Count)
	}
}

// The model's results time the inferred and triaged stages, the worklist's
// triaged change the on_worklist stage (its other changes do not); the
// results for a study update (generation 2) are not timed from the first
// receipt.
func TestRecordsResultStages(t *testing.T) {
	js := natstest.Start(t, natsserver.Config{}).JS
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := events.Provision(ctx, js, events.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		done <- Run(runCtx, js, Config{MeterProvider: mp, now: func() time.Time { return start }})
	}()
	defer func() { stop(); <-done }()

	t0 := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	pub := events.NewPublisher(js, "test")
	for gen := 1; gen <= 2; gen++ {
		id := "/1.2.3/" + string(rune('0'+gen))
		for _, e := range []*events.Event{
			{ID: "f" + id, Type: events.TypeAIFindings, Time: t0.Add(time.Duration(gen) * 4 * time.Second),
				NATSSubject: events.StudySubject(events.SubjectAIFindings, []string{"CR"}, "PACSFLOW"),
				Data:        &events.AIFindings{FirstReceivedAt: t0, Generation: gen}},
			{ID: "t" + id, Type: events.TypeAITriage, Time: t0.Add(time.Duration(gen) * 5 * time.Second),
				NATSSubject: events.AITriageSubject("ROUTINE", []string{"CR"}, "PACSFLOW"),
				Data:        &events.AITriage{FirstReceivedAt: t0, Generation: gen}},
			{ID: "w" + id, Type: events.TypeWorklistUpdated, Time: t0.Add(time.Duration(gen) * 6 * time.Second),
				NATSSubject: events.WorklistUpdatedSubject(events.WorklistTriaged, "ROUTINE"),
				Data:        &events.WorklistUpdated{FirstReceivedAt: t0, Generation: gen}},
			{ID: "s" + id, Type: events.TypeWorklistUpdated, Time: t0.Add(time.Duration(gen) * 7 * time.Second),
				NATSSubject: events.WorklistUpdatedSubject(events.WorklistStatus, "ROUTINE"),
				Data:        &events.WorklistUpdated{FirstReceivedAt: t0, Generation: gen}},
		} {
			if _, err := pub.Publish(ctx, e); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Once the consumer has settled all the events, only generation 1 is
	// recorded.
	for {
		ci, err := consumerInfo(ctx, js)
		if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			t.Fatal(err)
		}
		if err == nil && ci.NumPending == 0 && ci.NumAckPending == 0 && ci.Delivered.Stream > 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("consumer did not settle within 30 s: %+v", ci)
		}
		time.Sleep(20 * time.Millisecond)
	}
	h := histogram(t, reader)
	if h["inferred"].Count != 1 || h["triaged"].Count != 1 || h["inferred"].Sum != 4 || h["triaged"].Sum != 5 {
		t.Errorf("inferred %d studies, %v s; triaged %d, %v s; want one each, 4 s and 5 s", h["inferred"].Count, h["inferred"].Sum, h["triaged"].Count, h["triaged"].Sum)
	}
	if h["on_worklist"].Count != 1 || h["on_worklist"].Sum != 6 {
		t.Errorf("on_worklist %d studies, %v s; want one, 6 s", h["on_worklist"].Count, h["on_worklist"].Sum)
	}
}

func consumerInfo(ctx context.Context, js jetstream.JetStream) (*jetstream.ConsumerInfo, error) {
	cons, err := js.Consumer(ctx, events.StreamConfig{}.StreamName(), "study-latency")
	if err != nil {
		return nil, err
	}
	return cons.Info(ctx)
}
