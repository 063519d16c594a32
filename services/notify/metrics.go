package notify

import "github.com/prometheus/client_golang/prometheus"

// metrics are the notify service's Prometheus metrics.
type metrics struct {
	events     *prometheus.CounterVec
	entries    *prometheus.GaugeVec
	clients    prometheus.Gauge
	deliveries *prometheus.CounterVec
	requests   *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pacsflow_notify_events_total",
			Help: "Events applied to the worklist, by type and outcome: applied, unchanged (seen before, or superseded), republished (its announcement sent again after a redelivery), synthetic (a study of synthetic images, kept off the worklist)."},
			[]string{"type", "outcome"}),
		entries: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "pacsflow_notify_worklist_entries",
			Help: "Studies on the worklist, by level and status (this replica's view)."}, []string{"level", "status"}),
		clients: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pacsflow_notify_stream_clients",
			Help: "Pages and clients following the worklist's live changes (Server-Sent Events)."}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pacsflow_notify_webhook_attempts_total",
			Help: "Webhook delivery attempts, by rule and outcome: delivered, retrying, failed (dead-lettered or refused by the receiver)."},
			[]string{"rule", "outcome"}),
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "pacsflow_notify_http_request_seconds",
			Help:    "Time to answer the worklist API and page, by route.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}}, []string{"route"}),
	}
	for _, c := range []prometheus.Collector{m.events, m.entries, m.clients, m.deliveries, m.requests} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
