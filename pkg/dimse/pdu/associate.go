package pdu

import (
	"fmt"
	"strings"
)

// Item types of the A-ASSOCIATE-RQ/AC variable field (PS3.8 §9.3.2, §9.3.3).
const (
	itemApplicationContext byte = 0x10
	itemPresentationRQ     byte = 0x20
	itemPresentationAC     byte = 0x21
	itemAbstractSyntax     byte = 0x30
	itemTransferSyntax     byte = 0x40
	itemUserInformation    byte = 0x50
)

// ProtocolVersion is the only protocol version of the DICOM upper layer:
// bit 0 of the 16-bit field.
const ProtocolVersion uint16 = 0x0001

// ApplicationContextName is the single DICOM application context, PS3.7 Annex A.2.1.
const ApplicationContextName = "1.2.840.10008.3.1.1.1"

// aeFieldLen is the fixed width of the called and calling AE title fields.
const aeFieldLen = 16

// associateFixedLen is the fixed part of an A-ASSOCIATE-RQ/AC body: protocol
// version, reserved, called AE, calling AE and 32 reserved bytes.
const associateFixedLen = 2 + 2 + aeFieldLen + aeFieldLen + 32

// RawItem is an item or sub-item of a type this package does not interpret.
// The standard asks receivers to ignore such items; they are kept so that a
// decoded PDU encodes back to an equivalent one.
type RawItem struct {
	Type byte
	Data []byte
}

// PresentationContextRQ proposes one abstract syntax with the transfer
// syntaxes the requestor can use for it.
type PresentationContextRQ struct {
	ID               byte
	AbstractSyntax   string
	TransferSyntaxes []string
}

// Result is the result/reason field of a presentation context in an
// A-ASSOCIATE-AC (PS3.8 Table 9-18).
type Result byte

const (
	ResultAcceptance                 Result = 0
	ResultUserRejection              Result = 1
	ResultNoReason                   Result = 2 // provider rejection
	ResultAbstractSyntaxNotSupported Result = 3 // provider rejection
	ResultTransferSyntaxNotSupported Result = 4 // provider rejection
)

func (r Result) String() string {
	switch r {
	case ResultAcceptance:
		return "acceptance"
	case ResultUserRejection:
		return "user rejection"
	case ResultNoReason:
		return "no reason (provider rejection)"
	case ResultAbstractSyntaxNotSupported:
		return "abstract syntax not supported (provider rejection)"
	case ResultTransferSyntaxNotSupported:
		return "transfer syntaxes not supported (provider rejection)"
	}
	return fmt.Sprintf("reserved result %d", byte(r))
}

// PresentationContextAC answers one proposed presentation context.
// TransferSyntax is significant only when Result is ResultAcceptance.
type PresentationContextAC struct {
	ID             byte
	Result         Result
	TransferSyntax string
}

// AssociateRQ is the A-ASSOCIATE-RQ PDU.
type AssociateRQ struct {
	ProtocolVersion      uint16
	CalledAE             string
	CallingAE            string
	ApplicationContext   string
	PresentationContexts []PresentationContextRQ
	UserInfo             UserInformation
	Unknown              []RawItem
}

// AssociateAC is the A-ASSOCIATE-AC PDU. CalledAE and CallingAE echo the
// request; the standard says the requestor shall not test them.
type AssociateAC struct {
	ProtocolVersion      uint16
	CalledAE             string
	CallingAE            string
	ApplicationContext   string
	PresentationContexts []PresentationContextAC
	UserInfo             UserInformation
	Unknown              []RawItem
}

// Type implements PDU.
func (*AssociateRQ) Type() Type { return TypeAssociateRQ }

// Type implements PDU.
func (*AssociateAC) Type() Type { return TypeAssociateAC }

// AppendTo implements PDU.
func (p *AssociateRQ) AppendTo(b []byte) ([]byte, error) {
	b, start, err := appendAssociateFixed(b, TypeAssociateRQ, p.ProtocolVersion, p.CalledAE, p.CallingAE, p.ApplicationContext)
	if err != nil {
		return nil, err
	}
	for i := range p.PresentationContexts {
		pc := &p.PresentationContexts[i]
		at := len(b)
		b = append(b, itemPresentationRQ, 0, 0, 0, pc.ID, 0, 0, 0)
		if b, err = appendUIDItem(b, itemAbstractSyntax, pc.AbstractSyntax); err != nil {
			return nil, err
		}
		for _, ts := range pc.TransferSyntaxes {
			if b, err = appendUIDItem(b, itemTransferSyntax, ts); err != nil {
				return nil, err
			}
		}
		if err := finishItem(b, at); err != nil {
			return nil, err
		}
	}
	return finishAssociate(b, start, &p.UserInfo, p.Unknown)
}

// AppendTo implements PDU.
func (p *AssociateAC) AppendTo(b []byte) ([]byte, error) {
	b, start, err := appendAssociateFixed(b, TypeAssociateAC, p.ProtocolVersion, p.CalledAE, p.CallingAE, p.ApplicationContext)
	if err != nil {
		return nil, err
	}
	for i := range p.PresentationContexts {
		pc := &p.PresentationContexts[i]
		at := len(b)
		b = append(b, itemPresentationAC, 0, 0, 0, pc.ID, 0, byte(pc.Result), 0)
		if b, err = appendUIDItem(b, itemTransferSyntax, pc.TransferSyntax); err != nil {
			return nil, err
		}
		if err := finishItem(b, at); err != nil {
			return nil, err
		}
	}
	return finishAssociate(b, start, &p.UserInfo, p.Unknown)
}

func appendAssociateFixed(b []byte, t Type, version uint16, called, calling, appContext string) ([]byte, int, error) {
	b, start := appendHeader(b, t)
	b = append(b, byte(version>>8), byte(version), 0, 0)
	var err error
	if b, err = appendAE(b, called); err != nil {
		return nil, 0, fmt.Errorf("called AE: %w", err)
	}
	if b, err = appendAE(b, calling); err != nil {
		return nil, 0, fmt.Errorf("calling AE: %w", err)
	}
	b = append(b, make([]byte, 32)...)
	if appContext != "" {
		if b, err = appendUIDItem(b, itemApplicationContext, appContext); err != nil {
			return nil, 0, err
		}
	}
	return b, start, nil
}

func finishAssociate(b []byte, start int, ui *UserInformation, unknown []RawItem) ([]byte, error) {
	var err error
	if b, err = ui.appendTo(b); err != nil {
		return nil, err
	}
	for _, it := range unknown {
		if b, err = appendItem(b, it.Type, it.Data); err != nil {
			return nil, err
		}
	}
	return finishPDU(b, start)
}

// appendAE appends a 16-byte AE title field, padded with spaces. Only the
// length is enforced here: which titles are acceptable is the caller's policy
// (see ValidateAETitle).
func appendAE(b []byte, ae string) ([]byte, error) {
	if len(ae) > aeFieldLen {
		return nil, fmt.Errorf("AE title %q is longer than 16 characters", ae)
	}
	b = append(b, ae...)
	for i := len(ae); i < aeFieldLen; i++ {
		b = append(b, ' ')
	}
	return b, nil
}

// ValidateAETitle checks an AE title against PS3.5 Table 6.2-1: at most 16
// characters of the default repertoire, no backslash, no control characters,
// not all spaces.
func ValidateAETitle(ae string) error {
	if len(ae) > aeFieldLen {
		return fmt.Errorf("AE title %q is longer than 16 characters", ae)
	}
	if strings.TrimSpace(ae) == "" {
		return fmt.Errorf("AE title is empty")
	}
	for i := 0; i < len(ae); i++ {
		c := ae[i]
		if c < 0x20 || c > 0x7E || c == '\\' {
			return fmt.Errorf("AE title %q contains the invalid byte 0x%02X", ae, c)
		}
	}
	return nil
}

// parseAE trims the padding of an AE title field. Leading and trailing
// spaces are not significant (PS3.5 Table 6.2-1).
func parseAE(b []byte) string {
	return strings.Trim(string(b), " \x00")
}

// parseUID trims the trailing NUL some implementations pad UIDs with.
func parseUID(b []byte) string {
	return strings.TrimRight(string(b), "\x00 ")
}

func appendItem(b []byte, t byte, data []byte) ([]byte, error) {
	if len(data) > 0xFFFF {
		return nil, fmt.Errorf("item 0x%02X of %d bytes does not fit a 16-bit length", t, len(data))
	}
	b = append(b, t, 0, byte(len(data)>>8), byte(len(data)))
	return append(b, data...), nil
}

func appendUIDItem(b []byte, t byte, uid string) ([]byte, error) {
	if len(uid) > 0xFFFF {
		return nil, fmt.Errorf("item 0x%02X of %d bytes does not fit a 16-bit length", t, len(uid))
	}
	b = append(b, t, 0, byte(len(uid)>>8), byte(len(uid)))
	return append(b, uid...), nil
}

// finishItem fills in the 16-bit length of the item that starts at b[at].
func finishItem(b []byte, at int) error {
	n := len(b) - at - 4
	if n > 0xFFFF {
		return fmt.Errorf("item 0x%02X of %d bytes does not fit a 16-bit length", b[at], n)
	}
	putUint16(b[at+2:], uint16(n))
	return nil
}

// itemCursor walks a sequence of items that have a 1-byte type, a reserved
// byte and a 16-bit length. base is the offset of data within the PDU, for
// error messages.
type itemCursor struct {
	t    Type
	data []byte
	off  int
	base int
}

// next returns the next item's type, its value and its offset; ok is false
// at the end. A length that runs past the data is an error.
func (c *itemCursor) next() (typ byte, val []byte, at int, ok bool, err error) {
	if c.off >= len(c.data) {
		return 0, nil, 0, false, nil
	}
	at = c.base + c.off
	if len(c.data)-c.off < 4 {
		return 0, nil, at, false, &MalformedError{c.t, at, "truncated item header"}
	}
	typ = c.data[c.off]
	n := int(getUint16(c.data[c.off+2:]))
	if n > len(c.data)-c.off-4 {
		return 0, nil, at, false, &MalformedError{c.t, at, fmt.Sprintf("item 0x%02X length %d runs past the %d remaining bytes", typ, n, len(c.data)-c.off-4)}
	}
	val = c.data[c.off+4 : c.off+4+n]
	c.off += 4 + n
	return typ, val, at, true, nil
}

// associateCommon is what RQ and AC share after decoding.
type associateCommon struct {
	version    uint16
	called     string
	calling    string
	appContext string
	userInfo   UserInformation
	unknown    []RawItem
}

// decodeAssociate decodes the fixed part and the items common to RQ and AC;
// pc is called for each presentation context item of the PDU's own kind.
func decodeAssociate(t Type, body []byte, pcType byte, pc func(val []byte, at int) error) (*associateCommon, error) {
	if len(body) < associateFixedLen {
		return nil, &MalformedError{t, HeaderLen, fmt.Sprintf("body of %d bytes is shorter than the %d-byte fixed part", len(body), associateFixedLen)}
	}
	c := &associateCommon{
		version: getUint16(body),
		called:  parseAE(body[4:20]),
		calling: parseAE(body[20:36]),
	}
	cur := itemCursor{t: t, data: body[associateFixedLen:], base: HeaderLen + associateFixedLen}
	var sawAppContext, sawUserInfo bool
	for {
		typ, val, at, ok, err := cur.next()
		if err != nil {
			return nil, err
		}
		if !ok {
			return c, nil
		}
		switch typ {
		case itemApplicationContext:
			if sawAppContext {
				return nil, &MalformedError{t, at, "second application context item"}
			}
			sawAppContext = true
			c.appContext = parseUID(val)
		case pcType:
			if err := pc(val, at); err != nil {
				return nil, err
			}
		case itemUserInformation:
			if sawUserInfo {
				return nil, &MalformedError{t, at, "second user information item"}
			}
			sawUserInfo = true
			if err := c.userInfo.decode(t, val, at+4); err != nil {
				return nil, err
			}
		default:
			c.unknown = append(c.unknown, RawItem{Type: typ, Data: append([]byte(nil), val...)})
		}
	}
}

func decodeAssociateRQ(body []byte) (*AssociateRQ, error) {
	p := &AssociateRQ{}
	c, err := decodeAssociate(TypeAssociateRQ, body, itemPresentationRQ, func(val []byte, at int) error {
		if len(val) < 4 {
			return &MalformedError{TypeAssociateRQ, at, "presentation context item shorter than 4 bytes"}
		}
		pc := PresentationContextRQ{ID: val[0]}
		sub := itemCursor{t: TypeAssociateRQ, data: val[4:], base: at + 8}
		sawAbstract := false
		for {
			typ, v, subAt, ok, err := sub.next()
			if err != nil {
				return err
			}
			if !ok {
				break
			}
			switch typ {
			case itemAbstractSyntax:
				if sawAbstract {
					return &MalformedError{TypeAssociateRQ, subAt, "second abstract syntax in one presentation context"}
				}
				sawAbstract = true
				pc.AbstractSyntax = parseUID(v)
			case itemTransferSyntax:
				pc.TransferSyntaxes = append(pc.TransferSyntaxes, parseUID(v))
			default:
				return &MalformedError{TypeAssociateRQ, subAt, fmt.Sprintf("sub-item 0x%02X in a presentation context", typ)}
			}
		}
		if !sawAbstract {
			// PS3.8 §9.3.2.2: exactly one abstract syntax per context.
			return &MalformedError{TypeAssociateRQ, at, "presentation context without an abstract syntax"}
		}
		p.PresentationContexts = append(p.PresentationContexts, pc)
		return nil
	})
	if err != nil {
		return nil, err
	}
	p.ProtocolVersion, p.CalledAE, p.CallingAE = c.version, c.called, c.calling
	p.ApplicationContext, p.UserInfo, p.Unknown = c.appContext, c.userInfo, c.unknown
	return p, nil
}

func decodeAssociateAC(body []byte) (*AssociateAC, error) {
	p := &AssociateAC{}
	c, err := decodeAssociate(TypeAssociateAC, body, itemPresentationAC, func(val []byte, at int) error {
		if len(val) < 4 {
			return &MalformedError{TypeAssociateAC, at, "presentation context item shorter than 4 bytes"}
		}
		pc := PresentationContextAC{ID: val[0], Result: Result(val[2])}
		sub := itemCursor{t: TypeAssociateAC, data: val[4:], base: at + 8}
		sawTS := false
		for {
			typ, v, subAt, ok, err := sub.next()
			if err != nil {
				return err
			}
			if !ok {
				break
			}
			if typ != itemTransferSyntax || sawTS {
				return &MalformedError{TypeAssociateAC, subAt, fmt.Sprintf("unexpected sub-item 0x%02X in an accepted presentation context", typ)}
			}
			sawTS = true
			pc.TransferSyntax = parseUID(v)
		}
		p.PresentationContexts = append(p.PresentationContexts, pc)
		return nil
	})
	if err != nil {
		return nil, err
	}
	p.ProtocolVersion, p.CalledAE, p.CallingAE = c.version, c.called, c.calling
	p.ApplicationContext, p.UserInfo, p.Unknown = c.appContext, c.userInfo, c.unknown
	return p, nil
}
