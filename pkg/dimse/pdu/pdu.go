// Package pdu encodes and decodes the protocol data units of the DICOM upper
// layer (PS3.8 §9.3): A-ASSOCIATE-RQ/AC/RJ, P-DATA-TF, A-RELEASE-RQ/RP and
// A-ABORT, with all their items and sub-items.
//
// The package knows nothing of sockets or of the association state machine:
// it reads from an io.Reader and appends to byte slices. Every length read
// from the wire is checked against the bytes that remain and against the
// caller's limits before anything is allocated.
package pdu

import (
	"errors"
	"fmt"
)

// Type is the PDU-type byte that starts every PDU.
type Type byte

// PDU types, PS3.8 Table 9-11 and following.
const (
	TypeAssociateRQ Type = 0x01
	TypeAssociateAC Type = 0x02
	TypeAssociateRJ Type = 0x03
	TypePDataTF     Type = 0x04
	TypeReleaseRQ   Type = 0x05
	TypeReleaseRP   Type = 0x06
	TypeAbort       Type = 0x07
)

func (t Type) String() string {
	switch t {
	case TypeAssociateRQ:
		return "A-ASSOCIATE-RQ"
	case TypeAssociateAC:
		return "A-ASSOCIATE-AC"
	case TypeAssociateRJ:
		return "A-ASSOCIATE-RJ"
	case TypePDataTF:
		return "P-DATA-TF"
	case TypeReleaseRQ:
		return "A-RELEASE-RQ"
	case TypeReleaseRP:
		return "A-RELEASE-RP"
	case TypeAbort:
		return "A-ABORT"
	}
	return fmt.Sprintf("PDU-type 0x%02X", byte(t))
}

// HeaderLen is the length of the fixed PDU header: type, reserved, 32-bit length.
const HeaderLen = 6

// PDU is one decoded protocol data unit.
type PDU interface {
	// Type reports the PDU-type byte.
	Type() Type
	// AppendTo appends the complete encoded PDU, header included, to b.
	AppendTo(b []byte) ([]byte, error)
}

// Encode returns the complete encoding of p.
func Encode(p PDU) ([]byte, error) { return p.AppendTo(nil) }

// ErrUnknownType reports a PDU whose type byte is none of the seven defined
// ones: the peer gets an A-ABORT with reason "unrecognized PDU".
var ErrUnknownType = errors.New("unrecognized PDU type")

// TooLargeError reports a PDU whose length field exceeds what this side
// accepts. No buffer is allocated for it.
type TooLargeError struct {
	Type   Type
	Length uint32
	Max    uint32
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("%s of %d bytes exceeds the limit of %d bytes", e.Type, e.Length, e.Max)
}

// MalformedError reports a PDU whose content contradicts its own lengths or
// the standard's structure. Offset is relative to the start of the PDU.
type MalformedError struct {
	Type   Type
	Offset int
	Reason string
}

func (e *MalformedError) Error() string {
	return fmt.Sprintf("malformed %s at byte %d: %s", e.Type, e.Offset, e.Reason)
}

// appendHeader appends a PDU header with a placeholder length; finishPDU fills
// the length in once the body has been appended.
func appendHeader(b []byte, t Type) ([]byte, int) {
	start := len(b)
	return append(b, byte(t), 0, 0, 0, 0, 0), start
}

func finishPDU(b []byte, start int) ([]byte, error) {
	n := len(b) - start - HeaderLen
	if uint64(n) > 0xFFFFFFFF {
		return nil, fmt.Errorf("PDU body of %d bytes does not fit a 32-bit length", n)
	}
	putUint32(b[start+2:], uint32(n))
	return b, nil
}

func putUint16(b []byte, v uint16) { b[0], b[1] = byte(v>>8), byte(v) }

func putUint32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
}

func getUint16(b []byte) uint16 { return uint16(b[0])<<8 | uint16(b[1]) }

func getUint32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}
