package dicommeta

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/pacsflow/pacsflow/pkg/uid"
)

// maxFuzzAlloc is what a Parse may allocate, whatever the input: the
// inflation of MaxMetadataLen and the parser's elements over it.
const maxFuzzAlloc = 256 << 20

// FuzzParse checks that Parse never panics, classifies every failure, and
// allocates in proportion to what it reads rather than to declared lengths.
func FuzzParse(f *testing.F) {
	for _, s := range samples(f) {
		for n := 0; n < len(s.data) && n < 16<<10; n += 997 {
			f.Add(s.data[:n], false)
		}
		f.Add(s.data[:min(len(s.data), 16<<10)], true)
	}
	for _, sx := range syntaxes {
		ds, _ := stopDataSet(sx.enc)
		f.Add(file(f, sx.ts, ds), false)
		f.Add(file(f, sx.ts, bytes.Join([][]byte{sx.enc.classAndInstance(), nested(sx.enc, 70, true), sx.enc.studyAndSeries()}, nil)), true)
	}
	f.Fuzz(func(t *testing.T, b []byte, complete bool) {
		var (
			in  *Instance
			err error
		)
		if n := totalAlloc(func() { in, err = Parse(b, complete) }); n > maxFuzzAlloc {
			t.Fatalf("Parse of %d bytes allocated %d bytes", len(b), n)
		}
		switch {
		case err == nil:
			for _, u := range []string{in.SOPClassUID, in.SOPInstanceUID, in.StudyInstanceUID, in.SeriesInstanceUID} {
				if err := uid.Validate(u); err != nil {
					t.Fatalf("Parse succeeded with an invalid UID: %v", err)
				}
			}
		case errors.Is(err, ErrNeedMore) && complete:
			t.Fatalf("Parse of a complete instance: %v", err)
		case !errors.Is(err, ErrNeedMore) && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrMissingUID):
			t.Fatalf("Parse: unclassified error %v", err)
		}
		// What is enough as a prefix is enough as a whole.
		if err == nil && !complete {
			whole, err := Parse(b, true)
			if err != nil || !reflect.DeepEqual(whole, in) {
				t.Fatalf("Parse(complete) = %+v, %v; as a prefix %+v", whole, err, in)
			}
		}
	})
}
