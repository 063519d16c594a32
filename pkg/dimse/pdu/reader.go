package pdu

import (
	"errors"
	"fmt"
	"io"
)

// DefaultMaxAssociateLength caps A-ASSOCIATE-RQ/AC PDUs, as DCMTK does: a
// legitimate request with hundreds of presentation contexts stays well below it.
const DefaultMaxAssociateLength = 1 << 20

// Reader reads PDUs from a byte stream, one at a time. It keeps one buffer
// that grows up to the largest PDU admitted by its limits and is reused: the
// PDVs of a returned P-DATA-TF alias it until the next call to Next.
//
// A Reader is not safe for concurrent use.
type Reader struct {
	r   io.Reader
	hdr [HeaderLen]byte
	buf []byte

	pdata PDataTF

	// MaxPDataLength is the largest P-DATA-TF length field accepted: the
	// maximum length this side advertised. 0 means DefaultMaxPDataLength.
	MaxPDataLength uint32
	// MaxAssociateLength caps A-ASSOCIATE-RQ/AC. 0 means DefaultMaxAssociateLength.
	MaxAssociateLength uint32
}

// DefaultMaxPDataLength is the P-DATA-TF limit of a Reader whose
// MaxPDataLength is unset.
const DefaultMaxPDataLength = 1 << 20

// NewReader returns a Reader over r with default limits.
func NewReader(r io.Reader) *Reader { return &Reader{r: r} }

// Next reads one PDU. Errors are *TooLargeError or *MalformedError for bad
// input, ErrUnknownType wrapped with the type byte, io.EOF when the stream
// ends cleanly between PDUs, io.ErrUnexpectedEOF when it ends inside one, or
// the underlying reader's error.
func (r *Reader) Next() (PDU, error) {
	if _, err := io.ReadFull(r.r, r.hdr[:]); err != nil {
		return nil, err
	}
	t := Type(r.hdr[0])
	n := getUint32(r.hdr[2:])
	limit, err := r.limit(t)
	if err != nil {
		return nil, err
	}
	if n > limit {
		return nil, &TooLargeError{Type: t, Length: n, Max: limit}
	}
	body, err := r.readBody(int(n))
	if err != nil {
		return nil, err
	}
	return decodeBody(t, body, &r.pdata)
}

func (r *Reader) limit(t Type) (uint32, error) {
	switch t {
	case TypeAssociateRQ, TypeAssociateAC:
		if r.MaxAssociateLength != 0 {
			return r.MaxAssociateLength, nil
		}
		return DefaultMaxAssociateLength, nil
	case TypePDataTF:
		if r.MaxPDataLength != 0 {
			return r.MaxPDataLength, nil
		}
		return DefaultMaxPDataLength, nil
	case TypeAssociateRJ, TypeReleaseRQ, TypeReleaseRP, TypeAbort:
		// Read what is announced, within reason, so that a wrong length is
		// reported as malformed rather than as too large.
		return 64, nil
	}
	return 0, fmt.Errorf("%w 0x%02X", ErrUnknownType, byte(t))
}

// readBody reads n bytes into the reusable buffer. The buffer grows in steps
// as bytes arrive, so a peer that announces a large PDU and sends little
// costs little memory.
func (r *Reader) readBody(n int) ([]byte, error) {
	const step = 256 << 10
	if cap(r.buf) >= n {
		r.buf = r.buf[:n]
		if _, err := io.ReadFull(r.r, r.buf); err != nil {
			return nil, unexpected(err)
		}
		return r.buf, nil
	}
	r.buf = r.buf[:0]
	for len(r.buf) < n {
		want := min(n-len(r.buf), step)
		if cap(r.buf)-len(r.buf) < want {
			grown := make([]byte, len(r.buf), min(n, max(2*cap(r.buf), len(r.buf)+want)))
			copy(grown, r.buf)
			r.buf = grown
		}
		m, err := io.ReadFull(r.r, r.buf[len(r.buf):len(r.buf)+want])
		r.buf = r.buf[:len(r.buf)+m]
		if err != nil {
			return nil, unexpected(err)
		}
	}
	return r.buf, nil
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Decode decodes one complete PDU from b, which must hold exactly one PDU.
// The limits are those of a default Reader. The result does not alias b
// except for P-DATA-TF, whose PDVs do.
func Decode(b []byte) (PDU, error) {
	if len(b) < HeaderLen {
		return nil, io.ErrUnexpectedEOF
	}
	t := Type(b[0])
	n := getUint32(b[2:])
	var r Reader
	limit, err := r.limit(t)
	if err != nil {
		return nil, err
	}
	if n > limit {
		return nil, &TooLargeError{Type: t, Length: n, Max: limit}
	}
	if uint64(len(b)-HeaderLen) != uint64(n) {
		return nil, &MalformedError{t, 2, fmt.Sprintf("length field %d, but %d bytes follow the header", n, len(b)-HeaderLen)}
	}
	return decodeBody(t, b[HeaderLen:], &PDataTF{})
}

func decodeBody(t Type, body []byte, pdata *PDataTF) (PDU, error) {
	// Each case returns through pduOrNil so that a failed decode yields a
	// nil interface rather than a typed nil pointer.
	switch t {
	case TypeAssociateRQ:
		return pduOrNil(decodeAssociateRQ(body))
	case TypeAssociateAC:
		return pduOrNil(decodeAssociateAC(body))
	case TypeAssociateRJ:
		return pduOrNil(decodeAssociateRJ(body))
	case TypePDataTF:
		if err := decodePDataTF(body, pdata); err != nil {
			return nil, err
		}
		return pdata, nil
	case TypeReleaseRQ:
		if err := checkEmpty(t, body); err != nil {
			return nil, err
		}
		return ReleaseRQ{}, nil
	case TypeReleaseRP:
		if err := checkEmpty(t, body); err != nil {
			return nil, err
		}
		return ReleaseRP{}, nil
	case TypeAbort:
		return pduOrNil(decodeAbort(body))
	}
	return nil, fmt.Errorf("%w 0x%02X", ErrUnknownType, byte(t))
}

func pduOrNil[P PDU](p P, err error) (PDU, error) {
	if err != nil {
		return nil, err
	}
	return p, nil
}
