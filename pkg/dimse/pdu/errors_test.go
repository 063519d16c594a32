package pdu

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"runtime"
	"testing"
	"testing/iotest"
)

// errWant is the error a bad input must give. For a MalformedError the Type
// and the Offset are compared, not the wording of the Reason.
type errWant struct {
	tooLarge  *TooLargeError
	malformed *MalformedError
	is        error
}

func tooLarge(t Type, length, max uint32) errWant {
	return errWant{tooLarge: &TooLargeError{Type: t, Length: length, Max: max}}
}

func malformed(t Type, offset int) errWant {
	return errWant{malformed: &MalformedError{Type: t, Offset: offset}}
}

func is(target error) errWant { return errWant{is: target} }

// mismatch describes how err differs from w, or returns "".
func (w errWant) mismatch(err error) string {
	switch {
	case err == nil:
		return "no error"
	case w.tooLarge != nil:
		var e *TooLargeError
		if !errors.As(err, &e) {
			return fmt.Sprintf("%v (%T), want a *TooLargeError", err, err)
		}
		if *e != *w.tooLarge {
			return fmt.Sprintf("%+v, want %+v", *e, *w.tooLarge)
		}
	case w.malformed != nil:
		var e *MalformedError
		if !errors.As(err, &e) {
			return fmt.Sprintf("%v (%T), want a *MalformedError", err, err)
		}
		if e.Type != w.malformed.Type || e.Offset != w.malformed.Offset {
			return fmt.Sprintf("%v (type %v, offset %d), want type %v, offset %d", err, e.Type, e.Offset, w.malformed.Type, w.malformed.Offset)
		}
	case !errors.Is(err, w.is):
		return fmt.Sprintf("%v, want %v", err, w.is)
	}
	return ""
}

// errReadPastHeader is what headerOnlyReader gives when asked for more than
// the PDU header: a PDU refused on its header alone must not get there.
var errReadPastHeader = errors.New("read past the PDU header")

// headerOnlyReader yields its bytes (a PDU header), then errReadPastHeader.
type headerOnlyReader struct{ data []byte }

func (r *headerOnlyReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, errReadPastHeader
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// badCase is a named bad input and the error it must give.
type badCase struct {
	name string
	in   []byte
	// maxPData and maxAssociate set the Reader's limits when nonzero.
	maxPData, maxAssociate uint32
	want                   errWant
}

// badInputs lists the malformed, oversized and truncated inputs. Offsets
// count from the first byte of the PDU: 74 is the first item after the
// fixed part of an A-ASSOCIATE-RQ/AC, 78 the first sub-item of a user
// information item there, 82 the value of that sub-item.
func badInputs() []badCase {
	rq := func(items ...[]byte) []byte { return assocPDU(TypeAssociateRQ, stdFixed, items...) }
	ac := func(items ...[]byte) []byte { return assocPDU(TypeAssociateAC, stdFixed, items...) }
	appContext := hx("10 00 00 15", hexAppContext) // application context item, length 21
	maxLength := hx("51 00 00 04", "00 00 40 00")  // maximum length sub-item, 16384
	return []badCase{
		// Limits: refused on the header alone.
		{
			name: "A-ASSOCIATE-RQ of length 0xFFFFFFFF",
			in:   hx("01 00", "ff ff ff ff"), // A-ASSOCIATE-RQ, length 4 GiB - 1
			want: tooLarge(TypeAssociateRQ, 0xFFFFFFFF, DefaultMaxAssociateLength),
		},
		{
			name:         "A-ASSOCIATE-AC longer than MaxAssociateLength",
			in:           hx("02 00", "00 00 10 01"), // A-ASSOCIATE-AC, length 4097
			maxAssociate: 4096,
			want:         tooLarge(TypeAssociateAC, 4097, 4096),
		},
		{
			name:     "P-DATA-TF longer than MaxPDataLength",
			in:       hx("04 00", "00 00 40 01"), // P-DATA-TF, length 16385
			maxPData: 16384,
			want:     tooLarge(TypePDataTF, 16385, 16384),
		},
		{
			name: "P-DATA-TF of length 0xFFFFFFFF with the default limit",
			in:   hx("04 00", "ff ff ff ff"), // P-DATA-TF, length 4 GiB - 1
			want: tooLarge(TypePDataTF, 0xFFFFFFFF, DefaultMaxPDataLength),
		},
		{
			name: "A-RELEASE-RQ of length 65",
			in:   hx("05 00", "00 00 00 41"), // A-RELEASE-RQ, length 65
			want: tooLarge(TypeReleaseRQ, 65, 64),
		},
		{
			name: "HTTP request",
			in:   []byte("GET / HTTP/1.1\r\nHost: pacs\r\n\r\n"),
			want: is(ErrUnknownType),
		},
		{
			name: "TLS ClientHello",
			in:   hx("16", "03 01", "02 00", "01 00 01 fc 03 03"), // handshake record, TLS 1.0, length 512, ClientHello
			want: is(ErrUnknownType),
		},
		{
			name: "PDU type 0x00",
			in:   hx("00 00", "00 00 00 04", "00 00 00 00"),
			want: is(ErrUnknownType),
		},
		{
			name: "PDU type 0x08",
			in:   hx("08 00", "00 00 00 04", "00 00 00 00"),
			want: is(ErrUnknownType),
		},

		// Fixed-length PDUs of the wrong length.
		{
			name: "A-RELEASE-RQ of length 0",
			in:   hx("05 00", "00 00 00 00"),
			want: malformed(TypeReleaseRQ, 6),
		},
		{
			name: "A-RELEASE-RP of length 5",
			in:   hx("06 00", "00 00 00 05", "00 00 00 00 00"),
			want: malformed(TypeReleaseRP, 6),
		},
		{
			name: "A-ABORT of length 3",
			in:   hx("07 00", "00 00 00 03", "00 00 00"),
			want: malformed(TypeAbort, 6),
		},
		{
			name: "A-ABORT of length 64",
			in:   append(hx("07 00", "00 00 00 40"), make([]byte, 64)...),
			want: malformed(TypeAbort, 6),
		},
		{
			name: "A-ASSOCIATE-RJ of length 6",
			in:   hx("03 00", "00 00 00 06", "00 01 01 01", "00 00"),
			want: malformed(TypeAssociateRJ, 6),
		},

		// P-DATA-TF.
		{
			name: "P-DATA-TF with no PDV",
			in:   hx("04 00", "00 00 00 00"),
			want: malformed(TypePDataTF, 6),
		},
		{
			name: "PDV item length 0",
			in:   hx("04 00", "00 00 00 06", "00 00 00 00", "01 03"), // PDV length 0, context 1, command last
			want: malformed(TypePDataTF, 6),
		},
		{
			name: "PDV item length 1",
			in:   hx("04 00", "00 00 00 06", "00 00 00 01", "01 03"), // PDV length 1
			want: malformed(TypePDataTF, 6),
		},
		{
			name: "PDV item length beyond the PDU",
			in:   hx("04 00", "00 00 00 08", "00 00 00 08", "01 03", "aa bb"), // PDV length 8, 4 bytes follow
			want: malformed(TypePDataTF, 6),
		},
		{
			name: "second PDV item length beyond the PDU",
			in: hx("04 00", "00 00 00 0e",
				"00 00 00 03", "01 01", "aa", // PDV length 3, command not last
				"00 00 00 09", "01 03", "bb", // PDV length 9, 3 bytes follow
			),
			want: malformed(TypePDataTF, 13),
		},
		{
			name: "PDV item length truncated",
			in: hx("04 00", "00 00 00 09",
				"00 00 00 03", "01 03", "aa", // PDV length 3
				"00 00", // half an item length
			),
			want: malformed(TypePDataTF, 13),
		},

		// A-ASSOCIATE-RQ/AC structure.
		{
			name: "A-ASSOCIATE-RQ shorter than its 68-byte fixed part",
			in:   assocPDU(TypeAssociateRQ, stdFixed[:67]),
			want: malformed(TypeAssociateRQ, 6),
		},
		{
			name: "A-ASSOCIATE-AC of length 0",
			in:   hx("02 00", "00 00 00 00"),
			want: malformed(TypeAssociateAC, 6),
		},
		{
			name: "item length past the end of an A-ASSOCIATE-RQ",
			in:   rq(hx("10 00 00 15", "31 2e 32")), // application context, length 21, 3 bytes follow
			want: malformed(TypeAssociateRQ, 74),
		},
		{
			name: "truncated item header",
			in:   rq(hx("50 00")),
			want: malformed(TypeAssociateRQ, 74),
		},
		{
			name: "duplicate application context item",
			in:   rq(appContext, appContext),
			want: malformed(TypeAssociateRQ, 74+25),
		},
		{
			name: "duplicate user information item",
			in:   rq(emptyUserInfo, emptyUserInfo),
			want: malformed(TypeAssociateRQ, 78),
		},
		{
			name: "presentation context RQ shorter than 4 bytes",
			in:   rq(hx("20 00 00 02", "01 00")),
			want: malformed(TypeAssociateRQ, 74),
		},
		{
			name: "two abstract syntaxes in one presentation context",
			in: rq(hx(
				"20 00 00 2e", "01 00 00 00", // presentation context, length 46, ID 1
				"30 00 00 11", hexVerification, // abstract syntax
				"30 00 00 11", hexVerification, // abstract syntax again
			)),
			want: malformed(TypeAssociateRQ, 103),
		},
		{
			name: "presentation context RQ without an abstract syntax",
			in: rq(hx(
				"20 00 00 19", "01 00 00 00", // presentation context, length 25, ID 1
				"40 00 00 11", hexVerification, // a transfer syntax sub-item and no abstract syntax
			)),
			want: malformed(TypeAssociateRQ, 74),
		},
		{
			name: "user information item inside a presentation context RQ",
			in:   rq(hx("20 00 00 08", "01 00 00 00", "50 00 00 00")),
			want: malformed(TypeAssociateRQ, 82),
		},
		{
			name: "sub-item past the end of its presentation context",
			in:   rq(hx("20 00 00 08", "01 00 00 00", "30 00 00 11"), appContext), // abstract syntax of 17 bytes in a 4-byte remainder
			want: malformed(TypeAssociateRQ, 82),
		},
		{
			name: "presentation context AC shorter than 4 bytes",
			in:   ac(hx("21 00 00 00")),
			want: malformed(TypeAssociateAC, 74),
		},
		{
			name: "two transfer syntaxes in a presentation context AC",
			in:   ac(hx("21 00 00 0c", "01 00 00 00", "40 00 00 00", "40 00 00 00")),
			want: malformed(TypeAssociateAC, 86),
		},
		{
			name: "abstract syntax in a presentation context AC",
			in:   ac(hx("21 00 00 08", "01 00 00 00", "30 00 00 00")),
			want: malformed(TypeAssociateAC, 82),
		},

		// User information sub-items.
		{
			name: "truncated sub-item header",
			in:   rq(userInfo(hx("51 00"))),
			want: malformed(TypeAssociateRQ, 78),
		},
		{
			name: "sub-item length past the user information item",
			in:   rq(userInfo(hx("52 00 00 10", "31"))),
			want: malformed(TypeAssociateRQ, 78),
		},
		{
			name: "maximum length sub-item of 3 bytes",
			in:   rq(userInfo(hx("51 00 00 03", "00 40 00"))),
			want: malformed(TypeAssociateRQ, 78),
		},
		{
			name: "maximum length sub-item of 5 bytes",
			in:   rq(userInfo(hx("51 00 00 05", "00 00 40 00 00"))),
			want: malformed(TypeAssociateRQ, 78),
		},
		{
			name: "duplicate maximum length sub-item",
			in:   rq(userInfo(maxLength, maxLength)),
			want: malformed(TypeAssociateRQ, 86),
		},
		{
			name: "asynchronous operations window of 2 bytes",
			in:   rq(userInfo(hx("53 00 00 02", "00 01"))),
			want: malformed(TypeAssociateRQ, 78),
		},
		{
			name: "role selection whose UID length runs past the sub-item",
			in:   rq(userInfo(hx("54 00 00 08", "00 19", "31 2e 32 2e", "01 00"))), // UID length 25, 6 bytes follow
			want: malformed(TypeAssociateRQ, 82),
		},
		{
			name: "role selection without its role bytes",
			in:   rq(userInfo(hx("54 00 00 04", "00 02", "31 2e"))),
			want: malformed(TypeAssociateRQ, 86),
		},
		{
			name: "role selection with a stray byte",
			in:   rq(userInfo(hx("54 00 00 06", "00 01", "31", "01 00", "00"))),
			want: malformed(TypeAssociateRQ, 87),
		},
		{
			name: "extended negotiation without its UID length",
			in:   rq(userInfo(hx("56 00 00 01", "00"))),
			want: malformed(TypeAssociateRQ, 82),
		},
		{
			name: "common extended negotiation whose related list runs past the sub-item",
			in:   rq(userInfo(hx("57 00 00 08", "00 01", "31", "00 01", "32", "00 05"))), // list length 5, nothing follows
			want: malformed(TypeAssociateRQ, 88),
		},
		{
			name: "common extended negotiation whose related UID runs past the list",
			in:   rq(userInfo(hx("57 00 00 0b", "00 01", "31", "00 01", "32", "00 03", "00 05", "33"))), // UID length 5 in a 3-byte list
			want: malformed(TypeAssociateRQ, 90),
		},
		{
			name: "user identity with truncated secondary field",
			in: rq(userInfo(hx(
				"58 00 00 11", "02 01", // user identity, length 17, username and passcode
				"00 08", "70 61 63 73 66 6c 6f 77", // primary field "pacsflow"
				"00 06", "73 65 63", // secondary field length 6, 3 bytes follow
			))),
			want: malformed(TypeAssociateRQ, 94),
		},
		{
			name: "user identity without secondary field length",
			in:   rq(userInfo(hx("58 00 00 0c", "01 00", "00 08", "70 61 63 73 66 6c 6f 77"))),
			want: malformed(TypeAssociateRQ, 94),
		},
		{
			name: "user identity without its type",
			in:   rq(userInfo(hx("58 00 00 00"))),
			want: malformed(TypeAssociateRQ, 82),
		},
		{
			name: "user identity with a stray byte",
			in:   rq(userInfo(hx("58 00 00 07", "01 00", "00 00", "00 00", "ff"))),
			want: malformed(TypeAssociateRQ, 88),
		},
		{
			name: "duplicate user identity",
			in:   rq(userInfo(hx("58 00 00 06", "01 00 00 00 00 00"), hx("58 00 00 06", "01 00 00 00 00 00"))),
			want: malformed(TypeAssociateRQ, 88),
		},
		{
			name: "user identity response with truncated server response",
			in:   ac(userInfo(hx("59 00 00 03", "00 05", "aa"))),
			want: malformed(TypeAssociateAC, 82),
		},

		// Truncated streams.
		{
			name: "stream ends mid-header",
			in:   hx("01 00 00"),
			want: is(io.ErrUnexpectedEOF),
		},
		{
			name: "stream ends after the header",
			in:   hx("01 00 00 00 00 50"),
			want: is(io.ErrUnexpectedEOF),
		},
		{
			name: "stream ends mid-body",
			in:   hx("05 00 00 00 00 04", "00 00"),
			want: is(io.ErrUnexpectedEOF),
		},
		{
			name: "stream ends mid-body of a P-DATA-TF larger than one growth step",
			in:   append(hx("04 00", "00 04 93 e0"), make([]byte, 100)...), // length 300000
			want: is(io.ErrUnexpectedEOF),
		},
	}
}

// TestBadInputs reads each bad input with a Reader and, where it is one
// complete PDU, decodes it with Decode: both must give the listed error.
// Inputs refused on their header must be refused without reading on.
func TestBadInputs(t *testing.T) {
	for _, c := range badInputs() {
		t.Run(c.name, func(t *testing.T) {
			var src io.Reader = bytes.NewReader(c.in)
			if c.want.tooLarge != nil || c.want.is == ErrUnknownType {
				src = &headerOnlyReader{data: c.in[:HeaderLen]}
			}
			r := NewReader(src)
			r.MaxPDataLength, r.MaxAssociateLength = c.maxPData, c.maxAssociate
			p, err := r.Next()
			if m := c.want.mismatch(err); m != "" {
				t.Errorf("Reader.Next: %s (PDU %#v)", m, p)
			}
			whole := len(c.in) >= HeaderLen && uint64(len(c.in)-HeaderLen) == uint64(getUint32(c.in[2:]))
			if (whole && c.maxPData == 0 && c.maxAssociate == 0) || c.want.is == ErrUnknownType {
				p, err := Decode(c.in)
				if m := c.want.mismatch(err); m != "" {
					t.Errorf("Decode: %s (PDU %#v)", m, p)
				}
			}
		})
	}
}

// TestNoPDUWithError checks that a failed Next or Decode returns a nil
// PDU, not the typed nil pointer of the failed decoder (say a nil
// *AssociateRQ) in a non-nil PDU interface: p != nil would hold beside the
// error, and fmt's %v of p would call String on a nil *AssociateRJ.
func TestNoPDUWithError(t *testing.T) {
	// One report per entry point and PDU type, not one per bad input.
	reported := map[string]bool{}
	check := func(via string, c badCase, p PDU, err error) {
		if err == nil || p == nil {
			return
		}
		key := fmt.Sprintf("%s %T", via, p)
		if !reported[key] {
			reported[key] = true
			t.Errorf("%s returned the PDU %#v with its error (first input: %s)", via, p, c.name)
		}
	}
	for _, c := range badInputs() {
		r := NewReader(bytes.NewReader(c.in))
		r.MaxPDataLength, r.MaxAssociateLength = c.maxPData, c.maxAssociate
		p, err := r.Next()
		check("Reader.Next", c, p, err)
		p, err = Decode(c.in)
		check("Decode", c, p, err)
	}
}

// TestDecodeLengthMismatch covers the inputs that only Decode can see:
// bytes that are not exactly one PDU.
func TestDecodeLengthMismatch(t *testing.T) {
	for _, c := range []struct {
		name string
		in   []byte
		want errWant
	}{
		{"empty", nil, is(io.ErrUnexpectedEOF)},
		{"5 bytes", hx("05 00 00 00 00"), is(io.ErrUnexpectedEOF)},
		{"a byte more than the length field says", hx("05 00", "00 00 00 04", "00 00 00 00", "00"), malformed(TypeReleaseRQ, 2)},
		{"a byte less than the length field says", hx("05 00", "00 00 00 04", "00 00 00"), malformed(TypeReleaseRQ, 2)},
		{"two PDUs", hx("05 00 00 00 00 04 00 00 00 00", "06 00 00 00 00 04 00 00 00 00"), malformed(TypeReleaseRQ, 2)},
		{"A-ASSOCIATE-RQ header of length 0xFFFFFFFF", hx("01 00 ff ff ff ff"), tooLarge(TypeAssociateRQ, 0xFFFFFFFF, DefaultMaxAssociateLength)},
	} {
		p, err := Decode(c.in)
		if m := c.want.mismatch(err); m != "" {
			t.Errorf("%s: %s (PDU %#v)", c.name, m, p)
		}
	}
}

// TestReaderRefusesBeforeAllocating checks that a PDU refused on its
// header costs neither a read of its body nor a buffer for it.
func TestReaderRefusesBeforeAllocating(t *testing.T) {
	for _, hdr := range [][]byte{
		hx("01 00 ff ff ff ff"), // A-ASSOCIATE-RQ, length 4 GiB - 1
		hx("02 00 ff ff ff ff"), // A-ASSOCIATE-AC, length 4 GiB - 1
		hx("04 00 ff ff ff ff"), // P-DATA-TF, length 4 GiB - 1
		hx("07 00 ff ff ff ff"), // A-ABORT, length 4 GiB - 1
		hx("47 45 54 20 2f 20"), // "GET / "
	} {
		r := NewReader(&headerOnlyReader{data: hdr})
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := r.Next()
		runtime.ReadMemStats(&after)
		if err == nil || errors.Is(err, errReadPastHeader) {
			t.Errorf("%x: Next = %v, want a refusal on the header", hdr, err)
		}
		if cap(r.buf) != 0 {
			t.Errorf("%x: the Reader allocated a buffer of %d bytes", hdr, cap(r.buf))
		}
		// Some slack for the error value and the runtime's own allocations.
		if n := after.TotalAlloc - before.TotalAlloc; n > 64<<10 {
			t.Errorf("%x: Next allocated %d bytes", hdr, n)
		}
	}
}

// TestReaderGrowsWithData checks that a peer announcing a P-DATA-TF at the
// limit and sending little costs one growth step of buffer, not the limit.
func TestReaderGrowsWithData(t *testing.T) {
	in := append(hx("04 00", "00 10 00 00"), make([]byte, 10)...) // P-DATA-TF, length 1 MiB, 10 bytes follow
	r := NewReader(bytes.NewReader(in))
	r.MaxPDataLength = 1 << 20
	if _, err := r.Next(); err != io.ErrUnexpectedEOF {
		t.Fatalf("Next = %v, want io.ErrUnexpectedEOF", err)
	}
	if cap(r.buf) > 256<<10 {
		t.Errorf("buffer of %d bytes for 10 bytes received", cap(r.buf))
	}
}

// TestReaderEnds checks the errors at the end of the stream: io.EOF
// itself between PDUs, the underlying reader's error otherwise.
func TestReaderEnds(t *testing.T) {
	if _, err := NewReader(bytes.NewReader(nil)).Next(); err != io.EOF {
		t.Errorf("empty stream: %v, want io.EOF", err)
	}
	release := hx("05 00 00 00 00 04 00 00 00 00") // A-RELEASE-RQ
	r := NewReader(bytes.NewReader(release))
	if p, err := r.Next(); err != nil || !reflect.DeepEqual(p, ReleaseRQ{}) {
		t.Fatalf("Next = %v, %v, want A-RELEASE-RQ", p, err)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Errorf("after the last PDU: %v, want io.EOF", err)
	}

	broken := errors.New("connection reset")
	for _, in := range [][]byte{nil, release[:3], release[:HeaderLen], release[:8]} {
		r := NewReader(io.MultiReader(bytes.NewReader(in), iotest.ErrReader(broken)))
		if _, err := r.Next(); !errors.Is(err, broken) {
			t.Errorf("after %d bytes: %v, want the underlying error", len(in), err)
		}
	}
}
