package benchkit

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Counter names the series of a counter metric to sum: those of metric Name,
// and when Label is set only those whose label Label has value Value.
type Counter struct {
	Name, Label, Value string
}

// value is the counter's sum in reg.
func (c Counter) value(reg prometheus.Gatherer) (float64, error) {
	mfs, err := reg.Gather()
	if err != nil {
		return 0, fmt.Errorf("metrics: %w", err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != c.Name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := c.Label == ""
			for _, l := range m.GetLabel() {
				match = match || l.GetName() == c.Label && l.GetValue() == c.Value
			}
			if match {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum, nil
}

// Settled waits, up to 10 s, until counter c of a service's registry reg
// reaches n; what names what it counts in the error ("studies analyzed"). A
// subscriber sees a service's result event before its publisher has
// JetStream's acknowledgement; stopping the service then would cancel that
// publish, and the work, done, would go back to the stream as if it had
// failed.
func Settled(ctx context.Context, reg prometheus.Gatherer, c Counter, n int, what string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		v, err := c.value(reg)
		if err != nil {
			return err
		}
		if v >= float64(n) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the service counts %.0f %s, want %d: %w", v, what, n, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Histogram returns the sample count and sum of histogram name of reg, and
// its cumulative counts by upper bound.
func Histogram(reg prometheus.Gatherer, name string) (count uint64, sum float64, buckets map[float64]uint64, err error) {
	mfs, err := reg.Gather()
	if err != nil {
		return 0, 0, nil, fmt.Errorf("metrics: %w", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.GetMetric()) == 0 {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		buckets = map[float64]uint64{}
		for _, bk := range h.GetBucket() {
			buckets[bk.GetUpperBound()] = bk.GetCumulativeCount()
		}
		return h.GetSampleCount(), h.GetSampleSum(), buckets, nil
	}
	return 0, 0, nil, fmt.Errorf("metrics: no %s", name)
}

// Batches describes a run's model batches from the service's metrics.
type Batches struct {
	Count           uint64
	MeanSize, BusyS float64 // BusyS: the seconds the model ran, all batches together
	MeanMs          float64 // model time per batch
	MeanWaitMs      float64 // batch wait per batch; 0 without a wait histogram
	Sizes           string  // batches per size range, "1-1:160,2-4:3"
}

// BatchesOf reads the batch histograms of a service's registry reg, named
// by prefix ("pacsflow_understand"): PREFIX_batch_size and
// PREFIX_batch_seconds, and PREFIX_batch_wait_seconds where withWait.
func BatchesOf(reg prometheus.Gatherer, prefix string, withWait bool) (Batches, error) {
	var st Batches
	n, sum, buckets, err := Histogram(reg, prefix+"_batch_size")
	if err != nil {
		return st, err
	}
	_, run, _, err := Histogram(reg, prefix+"_batch_seconds")
	if err != nil {
		return st, err
	}
	wait := 0.0
	if withWait {
		if _, wait, _, err = Histogram(reg, prefix+"_batch_wait_seconds"); err != nil {
			return st, err
		}
	}
	st.Count, st.BusyS = n, run
	if n > 0 {
		st.MeanSize, st.MeanMs, st.MeanWaitMs = sum/float64(n), 1000*run/float64(n), 1000*wait/float64(n)
	}
	bounds := make([]float64, 0, len(buckets))
	for ub := range buckets {
		bounds = append(bounds, ub)
	}
	sort.Float64s(bounds)
	var parts []string
	prevB, prevN := 0.0, uint64(0)
	for _, ub := range bounds {
		if c := buckets[ub] - prevN; c > 0 {
			parts = append(parts, fmt.Sprintf("%g-%g:%d", prevB+1, ub, c))
		}
		prevB, prevN = ub, buckets[ub]
	}
	if c := n - prevN; c > 0 {
		parts = append(parts, fmt.Sprintf(">%g:%d", prevB, c))
	}
	st.Sizes = strings.Join(parts, ",")
	return st, nil
}
