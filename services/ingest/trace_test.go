package ingest

import (
	"testing"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/pacsflow/pacsflow/internal/dicomtest"
	"github.com/pacsflow/pacsflow/pkg/events"
)

// A study's trace crosses NATS: the C-STORE of its last instance, the
// publish of that instance's event, then (in the assembler, which received
// the event through JetStream) the study report and the publish of the
// study event, each the child of the one before.
func TestTraceAcrossNATS(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev) })

	b := newBroker(t)
	evs := watchEvents(t, b)
	r := startReplica(t, b, replicaOpts{})
	ins := dicomtest.Study(1, 3, 1000)
	allSuccess(t, send(t, r.addr, ins))
	waitFor(t, "study received", func() bool { return len(evs.ofType(events.TypeStudyReceived)) == 1 })
	waitFor(t, "the study event's publish span", func() bool {
		return byName(rec.Ended(), "publish "+events.TypeStudyReceived) != nil
	})

	spans := rec.Ended()
	studyPub := byName(spans, "publish "+events.TypeStudyReceived)
	report := parentOf(spans, studyPub)
	if report == nil || report.Name() != "study report" {
		t.Fatalf("the study event's publish span has parent %v, want the study report", nameOf(report))
	}
	instPub := parentOf(spans, report)
	if instPub == nil || instPub.Name() != "publish "+events.TypeInstanceStored || instPub.SpanKind() != trace.SpanKindProducer {
		t.Fatalf("the study report's parent is %v, want an instance event's publish span (across NATS)", nameOf(instPub))
	}
	cstore := parentOf(spans, instPub)
	if cstore == nil || cstore.Name() != "C-STORE" || cstore.SpanKind() != trace.SpanKindServer {
		t.Fatalf("the instance publish span's parent is %v, want the C-STORE", nameOf(cstore))
	}
	if cstore.SpanContext().TraceID() != studyPub.SpanContext().TraceID() {
		t.Fatal("the study event is not in the trace of its last C-STORE")
	}
	var put bool
	for _, s := range spans {
		if s.Name() == "storage put" && s.Parent().SpanID() == cstore.SpanContext().SpanID() {
			put = true
		}
	}
	if !put {
		t.Error("no storage put span under the C-STORE")
	}
}

func byName(spans []sdktrace.ReadOnlySpan, name string) sdktrace.ReadOnlySpan {
	for _, s := range spans {
		if s.Name() == name {
			return s
		}
	}
	return nil
}

func parentOf(spans []sdktrace.ReadOnlySpan, child sdktrace.ReadOnlySpan) sdktrace.ReadOnlySpan {
	if child == nil {
		return nil
	}
	for _, s := range spans {
		if s.SpanContext().SpanID() == child.Parent().SpanID() {
			return s
		}
	}
	return nil
}

func nameOf(s sdktrace.ReadOnlySpan) string {
	if s == nil {
		return "none"
	}
	return s.Name()
}
