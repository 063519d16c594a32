package pdu

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
)

// The fuzzed Reader's limits: small enough that an iteration stays cheap,
// large enough for every captured PDU.
const (
	fuzzMaxPData     = 64 << 10
	fuzzMaxAssociate = 64 << 10
)

// FuzzReader reads a stream of PDUs from arbitrary bytes. Besides never
// panicking, every PDU read must agree with Decode of its bytes and survive
// an Encode/Decode round trip, and every error must be one of the kinds Next
// documents, given after reading no more than that kind allows.
//
// The seed corpus is the golden and bad inputs of the table tests and, in
// testdata/fuzz/FuzzReader, PDUs captured from DCMTK and pynetdicom. Each
// execution is cheap (at most about 100 µs, for the largest captured
// A-ASSOCIATE-RQ), but the fuzzer minimizes every new interesting input
// for up to -fuzzminimizetime (60 s by default), and its minimizer is
// quadratic in the input's length: an input grown from a 4 KB captured
// P-DATA-TF can hold the progress line still for a minute. Its executions
// are counted when it is done; -fuzzminimizetime=5s shortens the pauses.
func FuzzReader(f *testing.F) {
	for _, c := range append(goldenPDUs(), goldenItems()...) {
		f.Add(c.wire)
	}
	for _, c := range badInputs() {
		f.Add(c.in)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		src := &countingReader{r: bytes.NewReader(data)}
		r := NewReader(src)
		r.MaxPDataLength, r.MaxAssociateLength = fuzzMaxPData, fuzzMaxAssociate
		for {
			start := src.n
			p, err := r.Next()
			if n := cap(r.buf); n > max(fuzzMaxPData, fuzzMaxAssociate) {
				t.Fatalf("Reader buffer of %d bytes, beyond its limits", n)
			}
			read := data[start:src.n]
			if err != nil {
				checkReadError(t, err, read)
				return
			}
			checkPDU(t, p, read)
		}
	})
}

// countingReader counts the bytes the Reader consumed.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// checkReadError checks that err is a documented error of Next and that
// the Reader read what that error implies: nothing for io.EOF, only the
// header for a PDU refused on its header, the whole PDU for a malformed one.
func checkReadError(t *testing.T, err error, read []byte) {
	var tooLarge *TooLargeError
	var bad *MalformedError
	switch {
	case err == io.EOF:
		if len(read) != 0 {
			t.Fatalf("io.EOF after reading %d bytes of a PDU", len(read))
		}
	case err == io.ErrUnexpectedEOF:
	case errors.As(err, &tooLarge):
		if len(read) != HeaderLen {
			t.Fatalf("%v after reading %d bytes, want the header only", err, len(read))
		}
		if tooLarge.Length <= tooLarge.Max || tooLarge.Length != getUint32(read[2:]) || tooLarge.Type != Type(read[0]) {
			t.Fatalf("%+v for the header %x", *tooLarge, read)
		}
	case errors.Is(err, ErrUnknownType):
		if len(read) != HeaderLen {
			t.Fatalf("%v after reading %d bytes, want the header only", err, len(read))
		}
	case errors.As(err, &bad):
		if len(read) < HeaderLen || uint64(len(read)) != HeaderLen+uint64(getUint32(read[2:])) {
			t.Fatalf("%v after reading %d bytes, not one whole PDU", err, len(read))
		}
		if bad.Type != Type(read[0]) || bad.Offset < 0 || bad.Offset > len(read) {
			t.Fatalf("%v: type or offset outside the PDU %x", err, read)
		}
		// Decode reads the same bytes, so it must find the same fault.
		if _, derr := Decode(read); !reflect.DeepEqual(derr, err) {
			t.Fatalf("Reader.Next: %v\nDecode:      %v", err, derr)
		}
	default:
		t.Fatalf("undocumented error %v (%T)", err, err)
	}
}

// checkPDU checks a PDU read from the bytes read: Decode of those bytes
// gives the same, and so does Decode of its encoding.
func checkPDU(t *testing.T, p PDU, read []byte) {
	if p.Type() != Type(read[0]) {
		t.Fatalf("read a %v from a PDU of type %v", p.Type(), Type(read[0]))
	}
	p1, err := Decode(read)
	if err != nil {
		t.Fatalf("Reader.Next accepted what Decode refuses: %v", err)
	}
	if !reflect.DeepEqual(p1, p) {
		t.Fatalf("Reader.Next: %#v\nDecode:      %#v", p, p1)
	}
	b, err := Encode(p)
	if err != nil {
		t.Fatalf("decoded PDU does not encode: %v\n%#v", err, p)
	}
	p2, err := Decode(b)
	if err != nil {
		t.Fatalf("encoding does not decode: %v\n%x", err, b)
	}
	if !reflect.DeepEqual(p2, p) {
		t.Fatalf("round trip changed the PDU:\nfirst  %#v\nsecond %#v", p, p2)
	}
}
