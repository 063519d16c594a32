package pdu

import "fmt"

// PDV is one presentation data value item of a P-DATA-TF PDU (PS3.8 §9.3.5.1
// and Annex E.2): a fragment of a DIMSE command or data set.
type PDV struct {
	ContextID byte
	// Command is bit 0 of the message control header: the fragment belongs to
	// the command set, not to the data set.
	Command bool
	// Last is bit 1: this is the last fragment of its command or data set.
	Last bool
	// Data aliases the Reader's buffer when the PDV was decoded by a Reader:
	// it is valid until the next call to Reader.Next.
	Data []byte
}

// PDVHeaderLen is the item length field plus the presentation context ID and
// the message control header that precede a PDV's data.
const PDVHeaderLen = 6

func (v *PDV) controlHeader() byte {
	var h byte
	if v.Command {
		h |= 0x01
	}
	if v.Last {
		h |= 0x02
	}
	return h
}

// PDataTF is the P-DATA-TF PDU.
type PDataTF struct {
	Items []PDV
}

// Type implements PDU.
func (*PDataTF) Type() Type { return TypePDataTF }

// AppendTo implements PDU.
func (p *PDataTF) AppendTo(b []byte) ([]byte, error) {
	if len(p.Items) == 0 {
		return nil, fmt.Errorf("P-DATA-TF needs at least one PDV")
	}
	b, start := appendHeader(b, TypePDataTF)
	for i := range p.Items {
		v := &p.Items[i]
		if uint64(len(v.Data))+2 > 0xFFFFFFFF {
			return nil, fmt.Errorf("PDV of %d bytes does not fit a 32-bit item length", len(v.Data))
		}
		b = AppendPDVHeader(b, v.ContextID, v.Command, v.Last, len(v.Data))
		b = append(b, v.Data...)
	}
	return finishPDU(b, start)
}

// AppendPDVHeader appends the item header of a PDV whose data is n bytes
// long. Senders that stream data straight into a PDU buffer use it with
// PutPDataHeader to avoid an extra copy.
func AppendPDVHeader(b []byte, contextID byte, command, last bool, n int) []byte {
	v := PDV{ContextID: contextID, Command: command, Last: last}
	var l [4]byte
	putUint32(l[:], uint32(n)+2)
	return append(b, l[0], l[1], l[2], l[3], contextID, v.controlHeader())
}

// PutPDataHeader writes the header of a P-DATA-TF PDU whose body (its PDV
// items) is bodyLen bytes long into b[:HeaderLen].
func PutPDataHeader(b []byte, bodyLen int) {
	b[0], b[1] = byte(TypePDataTF), 0
	putUint32(b[2:], uint32(bodyLen))
}

// decodePDataTF splits body into PDV items that alias it, reusing p's item
// slice to avoid allocations per PDU.
func decodePDataTF(body []byte, p *PDataTF) error {
	items := p.Items[:0]
	for off := 0; off < len(body); {
		if len(body)-off < 4 {
			return &MalformedError{TypePDataTF, HeaderLen + off, "truncated PDV item length"}
		}
		n := getUint32(body[off:])
		if n < 2 {
			return &MalformedError{TypePDataTF, HeaderLen + off, fmt.Sprintf("PDV item length %d is below the 2 bytes of its own header", n)}
		}
		if uint64(n) > uint64(len(body)-off-4) {
			return &MalformedError{TypePDataTF, HeaderLen + off, fmt.Sprintf("PDV item length %d runs past the PDU's %d remaining bytes", n, len(body)-off-4)}
		}
		ctrl := body[off+5]
		items = append(items, PDV{
			ContextID: body[off+4],
			Command:   ctrl&0x01 != 0,
			Last:      ctrl&0x02 != 0,
			Data:      body[off+6 : off+4+int(n) : off+4+int(n)],
		})
		off += 4 + int(n)
	}
	p.Items = items
	if len(items) == 0 {
		return &MalformedError{TypePDataTF, HeaderLen, "P-DATA-TF without PDV items"}
	}
	return nil
}
