package telemetry

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel"
)

func TestSetupExportsTracesAndMetrics(t *testing.T) {
	var posts atomic.Int32
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/traces" && r.Method == http.MethodPost {
			posts.Add(1)
		}
	}))
	defer collector.Close()
	prevT, prevM := otel.GetTracerProvider(), otel.GetMeterProvider()
	defer func() { otel.SetTracerProvider(prevT); otel.SetMeterProvider(prevM) }()

	reg := prometheus.NewRegistry()
	shutdown, err := Setup(context.Background(), Config{ServiceName: "test", OTLPEndpoint: collector.URL, SampleRatio: 1, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	_, span := otel.Tracer("test").Start(context.Background(), "work")
	span.End()
	counter, err := otel.Meter("test").Int64Counter("pacsflow_test_things")
	if err != nil {
		t.Fatal(err)
	}
	counter.Add(context.Background(), 3)

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "pacsflow_test_things") && mf.GetMetric()[0].GetCounter().GetValue() == 3 {
			found = true
		}
	}
	if !found {
		t.Error("the OpenTelemetry counter is not on the Prometheus registry")
	}
	if err := shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if posts.Load() == 0 {
		t.Error("no trace reached the OTLP endpoint")
	}
}

// Without an endpoint no tracer provider is installed: spans cost nothing.
func TestNoEndpointNoTracing(t *testing.T) {
	prevT := otel.GetTracerProvider()
	shutdown, err := Setup(context.Background(), Config{ServiceName: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(context.Background())
	_, span := otel.Tracer("test").Start(context.Background(), "work")
	defer span.End()
	if span.SpanContext().IsValid() || otel.GetTracerProvider() != prevT {
		t.Fatal("a tracer provider was installed without an endpoint")
	}
}
