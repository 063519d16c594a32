package ingest

import "github.com/prometheus/client_golang/prometheus"

// metrics are the ingest service's Prometheus metrics.
type metrics struct {
	associations *prometheus.CounterVec
	rejected     *prometheus.CounterVec
	instances    *prometheus.CounterVec
	bytes        prometheus.Counter
	handle       prometheus.Histogram
	store        prometheus.Histogram
	publish      prometheus.Histogram
	studyEvents  *prometheus.CounterVec
	studyLatency prometheus.Histogram
	freeBytes    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	secs := []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	m := &metrics{
		associations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pacsflow_ingest_associations_total",
			Help: "Associations that ended, by outcome (released, aborted)."}, []string{"outcome"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pacsflow_ingest_associations_rejected_total",
			Help: "Associations refused by back-pressure, by reason."}, []string{"reason"}),
		instances: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pacsflow_ingest_instances_total",
			Help: "C-STORE requests by outcome: stored, new_version, duplicate, or the failure status."}, []string{"outcome"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "pacsflow_ingest_bytes_total",
			Help: "Bytes of instances stored (Part 10 files)."}),
		handle: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pacsflow_ingest_cstore_seconds",
			Help: "Time from the C-STORE request to its response.", Buckets: secs}),
		store: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pacsflow_ingest_storage_put_seconds",
			Help: "Time to stream an instance into storage.", Buckets: secs}),
		publish: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pacsflow_ingest_publish_seconds",
			Help: "Time for JetStream to acknowledge an instance event.", Buckets: secs}),
		studyEvents: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pacsflow_ingest_study_events_total",
			Help: "Study events published, by type and trigger."}, []string{"type", "trigger"}),
		studyLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pacsflow_ingest_study_report_delay_seconds",
			Help:    "Time from a study's last instance to its study event (includes the quiet period).",
			Buckets: []float64{.5, 1, 2, 2.05, 2.1, 2.25, 2.5, 3, 5, 10, 30, 60, 300, 600, 1200}}),
		freeBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pacsflow_ingest_storage_free_bytes",
			Help: "Free storage space as last checked (-1: unknown)."}),
	}
	reg.MustRegister(m.associations, m.rejected, m.instances, m.bytes, m.handle, m.store, m.publish, m.studyEvents, m.studyLatency, m.freeBytes)
	return m
}
