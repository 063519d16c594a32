//go:build tensorflow

package model

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkUnderstand measures the understand signature on the reference model through the
// Go runtime, at the batch sizes bench/model.sh compares with Python TensorFlow. The images
// are those model/bench.py uses: a constant mid-grey (0.5), so both sides do the same work.
func BenchmarkUnderstand(b *testing.B) {
	m := openReference(b)
	p := m.Contract().Preprocessing
	for _, batch := range []int{1, 8, 32} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			imgs := make([]Image, batch)
			for i := range imgs {
				px := make([]float32, p.ImageSize[0]*p.ImageSize[1]*p.Channels)
				for j := range px {
					px[j] = 0.5
				}
				imgs[i] = Image{Pixels: px}
			}
			ctx := context.Background()
			if _, err := m.Understand(ctx, imgs); err != nil { // warm-up: first run builds kernels
				b.Fatal(err)
			}
			b.ResetTimer()
			start := time.Now()
			for b.Loop() {
				if _, err := m.Understand(ctx, imgs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*batch)/time.Since(start).Seconds(), "images/s")
		})
	}
}

// BenchmarkOpen measures loading the reference model (contract check and TensorFlow session).
func BenchmarkOpen(b *testing.B) {
	dir := referenceDir(b)
	for b.Loop() {
		m, err := Open(dir, Options{})
		if err != nil {
			b.Fatal(err)
		}
		m.Close()
	}
}
