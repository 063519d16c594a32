package dicommeta

import (
	"bytes"
	"strings"
	"testing"

	"github.com/pacsflow/pacsflow/pkg/part10"
)

// BenchmarkParse parses what the ingest service first buffers of a CT
// instance (the enhanced CT 5.dcm of the suyashkumar test files): its own
// header and the first 64 KiB of the data set.
func BenchmarkParse(b *testing.B) {
	for _, s := range samples(b) {
		name, ok := strings.CutPrefix(s.name, "5-")
		if !ok {
			continue
		}
		r, err := part10.NewReader(bytes.NewReader(s.data))
		if err != nil {
			b.Fatal(err)
		}
		prefix := append(part10.AppendHeader(nil, &r.Meta), s.data[r.DataSetOffset:][:64<<10]...)
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Parse(prefix, false); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
