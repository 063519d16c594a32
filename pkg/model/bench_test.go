//go:build tensorflow

package model

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"
)

// BenchmarkUnderstand measures the understand signature on the reference model through the
// Go runtime, at the batch sizes bench/model.sh compares with Python TensorFlow. The model
// computes the same amount whatever the pixels (greedy decoding always runs its full length),
// so a constant grey image stands for any. MODEL_THREADS=INTRA,INTER sets TensorFlow's thread
// pools, as model/bench.py --threads does (default 0,0: one thread per core).
func BenchmarkUnderstand(b *testing.B) {
	var opts Options
	if t := os.Getenv("MODEL_THREADS"); t != "" {
		if _, err := fmt.Sscanf(t, "%d,%d", &opts.IntraOpThreads, &opts.InterOpThreads); err != nil {
			b.Fatalf("MODEL_THREADS=%q: want INTRA,INTER", t)
		}
	}
	m, err := Open(context.Background(), referenceDir(b), opts)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
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
		m, err := Open(context.Background(), dir, Options{})
		if err != nil {
			b.Fatal(err)
		}
		m.Close()
	}
}
