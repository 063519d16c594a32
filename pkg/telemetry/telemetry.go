// Package telemetry installs OpenTelemetry for a pacsflow process: traces
// exported over OTLP/HTTP when an endpoint is configured (off by default),
// and metrics exposed on the process's Prometheus registry.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/url"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
)

// Config configures telemetry.
type Config struct {
	// ServiceName names the process in traces and metrics, e.g. "pacsflow-up".
	ServiceName string
	// OTLPEndpoint is the OTLP/HTTP endpoint traces go to, as a URL such as
	// http://collector:4318. Empty: traces are not recorded at all, which
	// costs nothing.
	OTLPEndpoint string
	// SampleRatio is the share of traces recorded, decided where a trace
	// starts (a C-STORE) and followed by every span after it. Default 0.1:
	// recording every event costs 10-15 % of the event path's throughput
	// (pkg/events benchmarks), a tenth of them about 2 %.
	SampleRatio float64
	// Registerer receives the OpenTelemetry metrics, served by /metrics.
	Registerer prometheus.Registerer
}

// Setup installs the global tracer and meter providers and the W3C trace
// context propagator. The returned function flushes and stops them.
func Setup(ctx context.Context, cfg Config) (shutdown func(context.Context) error, err error) {
	otel.SetTextMapPropagator(propagation.TraceContext{})
	res := resource.NewSchemaless(semconv.ServiceName(cfg.ServiceName))
	var stops []func(context.Context) error

	if cfg.Registerer != nil {
		exp, err := otelprom.New(otelprom.WithRegisterer(cfg.Registerer), otelprom.WithoutScopeInfo())
		if err != nil {
			return nil, fmt.Errorf("telemetry: prometheus exporter: %w", err)
		}
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp), sdkmetric.WithResource(res))
		otel.SetMeterProvider(mp)
		stops = append(stops, mp.Shutdown)
	}
	if cfg.OTLPEndpoint != "" {
		u, err := url.Parse(cfg.OTLPEndpoint)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("telemetry: OTLP endpoint %q is not a URL such as http://collector:4318", cfg.OTLPEndpoint)
		}
		if u.Path == "" || u.Path == "/" {
			u.Path = "/v1/traces" // the OTLP/HTTP path of traces, as collectors expect
		}
		exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(u.String()))
		if err != nil {
			return nil, fmt.Errorf("telemetry: OTLP exporter for %s: %w", cfg.OTLPEndpoint, err)
		}
		ratio := cfg.SampleRatio
		if ratio == 0 {
			ratio = 0.1
		}
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res),
			sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))))
		otel.SetTracerProvider(tp)
		stops = append(stops, tp.Shutdown)
	}
	return func(ctx context.Context) error {
		var errs []error
		for _, stop := range stops {
			errs = append(errs, stop(ctx))
		}
		return errors.Join(errs...)
	}, nil
}
