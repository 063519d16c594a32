package understand

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pacsflow/pacsflow/pkg/batch"
)

// metrics are the understand service's Prometheus metrics.
type metrics struct {
	studies    *prometheus.CounterVec
	images     *prometheus.CounterVec
	triage     *prometheus.CounterVec
	studyTime  prometheus.Histogram
	batchSize  prometheus.Histogram
	batchWait  prometheus.Histogram
	batchRun   prometheus.Histogram
	batchFails prometheus.Counter
	asks       *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	secs := []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	m := &metrics{
		studies: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pacsflow_understand_studies_total",
			Help: "Study events handled, by outcome: analyzed, republished (handled again after a crash), superseded (a later generation was analyzed first), not_applicable (no modality the model accepts), synthetic (only synthetic images: no result)."},
			[]string{"outcome"}),
		images: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pacsflow_understand_images_total",
			Help: "Instances of analyzed studies, by outcome: analyzed or skipped (the ai.findings event says why)."}, []string{"outcome"}),
		triage: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pacsflow_understand_triage_total",
			Help: "Studies triaged, by level."}, []string{"level"}),
		studyTime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pacsflow_understand_study_seconds",
			Help: "Time to analyze a study generation: fetching, decoding, inference.", Buckets: secs}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pacsflow_understand_batch_size",
			Help: "Images per model batch.", Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128}}),
		batchWait: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pacsflow_understand_batch_wait_seconds",
			Help: "Time a batch's first image waited for the batch to start.", Buckets: secs}),
		batchRun: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pacsflow_understand_batch_seconds",
			Help: "Time the model took for a batch.", Buckets: secs}),
		batchFails: prometheus.NewCounter(prometheus.CounterOpts{Name: "pacsflow_understand_batch_failures_total",
			Help: "Model batches that failed (their studies are retried)."}),
		asks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pacsflow_understand_ask_requests_total",
			Help: "ai.ask requests, by outcome: answered, not_found, bad_request, failed."}, []string{"outcome"}),
	}
	for _, c := range []prometheus.Collector{m.studies, m.images, m.triage, m.studyTime, m.batchSize, m.batchWait, m.batchRun, m.batchFails, m.asks} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) observeBatch(s batch.Stats) {
	if s.Err != nil {
		m.batchFails.Inc()
		return
	}
	m.batchSize.Observe(float64(s.Size))
	m.batchWait.Observe(s.Waited.Seconds())
	m.batchRun.Observe(s.Ran.Seconds())
}

func (m *metrics) observeStudy(r *record, a *analysis) {
	m.studies.WithLabelValues("analyzed").Inc()
	m.images.WithLabelValues("analyzed").Add(float64(a.images))
	m.images.WithLabelValues("skipped").Add(float64(len(a.skipped)))
	m.triage.WithLabelValues(r.Triage.Level).Inc()
	m.studyTime.Observe(r.Findings.Timings.Total)
}
