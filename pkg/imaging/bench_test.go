package imaging

import (
	"os"
	"testing"
	"time"

	"github.com/pacsflow/pacsflow/internal/dicomtest"
)

// BenchmarkDecodePreprocess measures the pixel pipeline (parse, decode one frame, rescale,
// window, resize to 64×64) on one goroutine, so images/s is per core, for real instances from
// the github.com/suyashkumar/dicom test data: a 512×512 16-bit CT (two frames; the middle one is
// used) and a 2140×1760 16-bit CR.
func BenchmarkDecodePreprocess(b *testing.B) {
	paths := dicomtest.SamplePaths(b)
	p := Target{Size: [2]int{64, 64}, Channels: 1, ValueRange: [2]float64{0, 1}, Window: Window{Center: 2048, Width: 4096}}
	for _, c := range []struct {
		name string
		path string
	}{{"CT512x512", paths[4]}, {"CR2140x1760", paths[3]}} {
		b.Run(c.name, func(b *testing.B) {
			data, err := os.ReadFile(c.path)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := Decode(data); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(data)))
			start := time.Now()
			for b.Loop() {
				f, err := Decode(data)
				if err != nil {
					b.Fatal(err)
				}
				Preprocess(f, p)
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "images/s")
		})
	}
}
