package generate

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pacsflow/pacsflow/pkg/batch"
)

// metrics are the generate service's Prometheus metrics.
type metrics struct {
	requests, images, policy *prometheus.CounterVec
	batchSize, batchRun      prometheus.Histogram
	batchFails               prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pacsflow_generate_requests_total",
			Help: "Requests answered, by task."}, []string{"task"}),
		images: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pacsflow_generate_images_total",
			Help: "Images generated and stored, by task."}, []string{"task"}),
		policy: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pacsflow_generate_policy_requests_total",
			Help: "Requests made by policy rules, by rule label."}, []string{"label"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pacsflow_generate_batch_size",
			Help: "Images per model batch.", Buckets: []float64{1, 2, 4, 8, 16, 32, 64}}),
		batchRun: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pacsflow_generate_batch_seconds",
			Help: "Time the model took for a batch.", Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}}),
		batchFails: prometheus.NewCounter(prometheus.CounterOpts{Name: "pacsflow_generate_batch_failures_total",
			Help: "Model batches that failed (their requests are retried)."}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.images, m.policy, m.batchSize, m.batchRun, m.batchFails} {
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
	m.batchRun.Observe(s.Ran.Seconds())
}
