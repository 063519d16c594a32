package pdu

import "fmt"

// User information sub-item types (PS3.7 Annex D.3.3, PS3.8 Annex D.1).
const (
	subMaxLength              byte = 0x51
	subImplementationClassUID byte = 0x52
	subAsyncOpsWindow         byte = 0x53
	subRoleSelection          byte = 0x54
	subImplementationVersion  byte = 0x55
	subExtendedNegotiation    byte = 0x56
	subCommonExtended         byte = 0x57
	subUserIdentityRQ         byte = 0x58
	subUserIdentityAC         byte = 0x59
)

// UserInformation is the user information item (0x50) with its sub-items.
// A nil pointer field means the sub-item is absent.
type UserInformation struct {
	// MaxLength is the largest P-DATA-TF PDU length (the length field, not
	// counting the 6-byte header) the sender will accept; 0 means no limit.
	MaxLength                  *uint32
	ImplementationClassUID     string
	ImplementationVersionName  string
	AsyncOpsWindow             *AsyncOpsWindow
	RoleSelections             []RoleSelection
	ExtendedNegotiations       []ExtendedNegotiation
	CommonExtendedNegotiations []CommonExtendedNegotiation
	UserIdentity               *UserIdentity
	UserIdentityResponse       *UserIdentityResponse
	Unknown                    []RawItem
}

// AsyncOpsWindow is the asynchronous operations window negotiation, PS3.7 D.3.3.3.
type AsyncOpsWindow struct {
	MaxInvoked   uint16
	MaxPerformed uint16
}

// RoleSelection is the SCP/SCU role selection negotiation, PS3.7 D.3.3.4.
type RoleSelection struct {
	SOPClassUID string
	SCU         bool
	SCP         bool
}

// ExtendedNegotiation is the SOP class extended negotiation, PS3.7 D.3.3.5.
type ExtendedNegotiation struct {
	SOPClassUID string
	Info        []byte
}

// CommonExtendedNegotiation is the SOP class common extended negotiation,
// PS3.7 D.3.3.6.
type CommonExtendedNegotiation struct {
	SOPClassUID              string
	ServiceClassUID          string
	RelatedGeneralSOPClasses []string
}

// UserIdentityType says what the primary field of a user identity holds, PS3.7 D.3.3.7.
type UserIdentityType byte

const (
	IdentityUsername         UserIdentityType = 1
	IdentityUsernamePassword UserIdentityType = 2
	IdentityKerberos         UserIdentityType = 3
	IdentitySAML             UserIdentityType = 4
	IdentityJWT              UserIdentityType = 5
)

// UserIdentity is the user identity negotiation sub-item of an A-ASSOCIATE-RQ.
type UserIdentity struct {
	Type                      UserIdentityType
	PositiveResponseRequested bool
	Primary                   []byte
	Secondary                 []byte
}

// UserIdentityResponse is the user identity sub-item of an A-ASSOCIATE-AC.
type UserIdentityResponse struct {
	ServerResponse []byte
}

// Uint32 returns a pointer to v, for UserInformation.MaxLength.
func Uint32(v uint32) *uint32 { return &v }

func (u *UserInformation) appendTo(b []byte) ([]byte, error) {
	at := len(b)
	b = append(b, itemUserInformation, 0, 0, 0)
	if u.MaxLength != nil {
		b = append(b, subMaxLength, 0, 0, 4)
		b = append(b, 0, 0, 0, 0)
		putUint32(b[len(b)-4:], *u.MaxLength)
	}
	var err error
	if u.ImplementationClassUID != "" {
		if b, err = appendUIDItem(b, subImplementationClassUID, u.ImplementationClassUID); err != nil {
			return nil, err
		}
	}
	if w := u.AsyncOpsWindow; w != nil {
		b = append(b, subAsyncOpsWindow, 0, 0, 4, byte(w.MaxInvoked>>8), byte(w.MaxInvoked), byte(w.MaxPerformed>>8), byte(w.MaxPerformed))
	}
	for _, r := range u.RoleSelections {
		sub := len(b)
		b = append(b, subRoleSelection, 0, 0, 0)
		if b, err = appendLenPrefixed(b, r.SOPClassUID); err != nil {
			return nil, err
		}
		b = append(b, boolByte(r.SCU), boolByte(r.SCP))
		if err := finishItem(b, sub); err != nil {
			return nil, err
		}
	}
	if u.ImplementationVersionName != "" {
		if b, err = appendUIDItem(b, subImplementationVersion, u.ImplementationVersionName); err != nil {
			return nil, err
		}
	}
	for _, e := range u.ExtendedNegotiations {
		sub := len(b)
		b = append(b, subExtendedNegotiation, 0, 0, 0)
		if b, err = appendLenPrefixed(b, e.SOPClassUID); err != nil {
			return nil, err
		}
		b = append(b, e.Info...)
		if err := finishItem(b, sub); err != nil {
			return nil, err
		}
	}
	for _, e := range u.CommonExtendedNegotiations {
		if b, err = e.appendTo(b); err != nil {
			return nil, err
		}
	}
	if id := u.UserIdentity; id != nil {
		sub := len(b)
		b = append(b, subUserIdentityRQ, 0, 0, 0, byte(id.Type), boolByte(id.PositiveResponseRequested))
		if b, err = appendLenPrefixed(b, string(id.Primary)); err != nil {
			return nil, err
		}
		if b, err = appendLenPrefixed(b, string(id.Secondary)); err != nil {
			return nil, err
		}
		if err := finishItem(b, sub); err != nil {
			return nil, err
		}
	}
	if r := u.UserIdentityResponse; r != nil {
		sub := len(b)
		b = append(b, subUserIdentityAC, 0, 0, 0)
		if b, err = appendLenPrefixed(b, string(r.ServerResponse)); err != nil {
			return nil, err
		}
		if err := finishItem(b, sub); err != nil {
			return nil, err
		}
	}
	for _, it := range u.Unknown {
		if b, err = appendItem(b, it.Type, it.Data); err != nil {
			return nil, err
		}
	}
	return b, finishItem(b, at)
}

func (e *CommonExtendedNegotiation) appendTo(b []byte) ([]byte, error) {
	sub := len(b)
	b = append(b, subCommonExtended, 0, 0, 0)
	var err error
	if b, err = appendLenPrefixed(b, e.SOPClassUID); err != nil {
		return nil, err
	}
	if b, err = appendLenPrefixed(b, e.ServiceClassUID); err != nil {
		return nil, err
	}
	list := len(b)
	b = append(b, 0, 0)
	for _, uid := range e.RelatedGeneralSOPClasses {
		if b, err = appendLenPrefixed(b, uid); err != nil {
			return nil, err
		}
	}
	n := len(b) - list - 2
	if n > 0xFFFF {
		return nil, fmt.Errorf("related general SOP class list of %d bytes does not fit a 16-bit length", n)
	}
	putUint16(b[list:], uint16(n))
	return b, finishItem(b, sub)
}

func appendLenPrefixed(b []byte, s string) ([]byte, error) {
	if len(s) > 0xFFFF {
		return nil, fmt.Errorf("field of %d bytes does not fit a 16-bit length", len(s))
	}
	b = append(b, byte(len(s)>>8), byte(len(s)))
	return append(b, s...), nil
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

// fieldReader reads 16-bit length-prefixed fields from a sub-item value.
type fieldReader struct {
	t    Type
	data []byte
	off  int
	base int
}

func (r *fieldReader) field(what string) ([]byte, error) {
	if len(r.data)-r.off < 2 {
		return nil, &MalformedError{r.t, r.base + r.off, "truncated length of " + what}
	}
	n := int(getUint16(r.data[r.off:]))
	if n > len(r.data)-r.off-2 {
		return nil, &MalformedError{r.t, r.base + r.off, fmt.Sprintf("%s length %d runs past the %d remaining bytes", what, n, len(r.data)-r.off-2)}
	}
	v := r.data[r.off+2 : r.off+2+n]
	r.off += 2 + n
	return v, nil
}

func (r *fieldReader) bytes(n int, what string) ([]byte, error) {
	if len(r.data)-r.off < n {
		return nil, &MalformedError{r.t, r.base + r.off, "truncated " + what}
	}
	v := r.data[r.off : r.off+n]
	r.off += n
	return v, nil
}

func (r *fieldReader) rest() []byte { v := r.data[r.off:]; r.off = len(r.data); return v }

func (r *fieldReader) done(what string) error {
	if r.off != len(r.data) {
		return &MalformedError{r.t, r.base + r.off, fmt.Sprintf("%d stray bytes after %s", len(r.data)-r.off, what)}
	}
	return nil
}

// decode parses the sub-items of a user information item; base is the
// offset of data within the PDU.
func (u *UserInformation) decode(t Type, data []byte, base int) error {
	cur := itemCursor{t: t, data: data, base: base}
	seen := map[byte]bool{}
	for {
		typ, val, at, ok, err := cur.next()
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		switch typ {
		case subMaxLength, subImplementationClassUID, subAsyncOpsWindow, subImplementationVersion, subUserIdentityRQ, subUserIdentityAC:
			if seen[typ] {
				return &MalformedError{t, at, fmt.Sprintf("second user information sub-item 0x%02X", typ)}
			}
			seen[typ] = true
		}
		r := fieldReader{t: t, data: val, base: at + 4}
		switch typ {
		case subMaxLength:
			if len(val) != 4 {
				return &MalformedError{t, at, fmt.Sprintf("maximum length sub-item of %d bytes, want 4", len(val))}
			}
			u.MaxLength = Uint32(getUint32(val))
		case subImplementationClassUID:
			u.ImplementationClassUID = parseUID(val)
		case subImplementationVersion:
			u.ImplementationVersionName = parseAE(val)
		case subAsyncOpsWindow:
			if len(val) != 4 {
				return &MalformedError{t, at, fmt.Sprintf("asynchronous operations window sub-item of %d bytes, want 4", len(val))}
			}
			u.AsyncOpsWindow = &AsyncOpsWindow{MaxInvoked: getUint16(val), MaxPerformed: getUint16(val[2:])}
		case subRoleSelection:
			uid, err := r.field("SOP class UID")
			if err != nil {
				return err
			}
			roles, err := r.bytes(2, "SCU/SCP roles")
			if err != nil {
				return err
			}
			if err := r.done("role selection"); err != nil {
				return err
			}
			u.RoleSelections = append(u.RoleSelections, RoleSelection{SOPClassUID: parseUID(uid), SCU: roles[0] != 0, SCP: roles[1] != 0})
		case subExtendedNegotiation:
			uid, err := r.field("SOP class UID")
			if err != nil {
				return err
			}
			u.ExtendedNegotiations = append(u.ExtendedNegotiations, ExtendedNegotiation{SOPClassUID: parseUID(uid), Info: append([]byte(nil), r.rest()...)})
		case subCommonExtended:
			e, err := decodeCommonExtended(&r)
			if err != nil {
				return err
			}
			u.CommonExtendedNegotiations = append(u.CommonExtendedNegotiations, e)
		case subUserIdentityRQ:
			hdr, err := r.bytes(2, "user identity type")
			if err != nil {
				return err
			}
			primary, err := r.field("primary field")
			if err != nil {
				return err
			}
			secondary, err := r.field("secondary field")
			if err != nil {
				return err
			}
			if err := r.done("user identity"); err != nil {
				return err
			}
			u.UserIdentity = &UserIdentity{
				Type:                      UserIdentityType(hdr[0]),
				PositiveResponseRequested: hdr[1] != 0,
				Primary:                   append([]byte(nil), primary...),
				Secondary:                 append([]byte(nil), secondary...),
			}
		case subUserIdentityAC:
			resp, err := r.field("server response")
			if err != nil {
				return err
			}
			if err := r.done("user identity response"); err != nil {
				return err
			}
			u.UserIdentityResponse = &UserIdentityResponse{ServerResponse: append([]byte(nil), resp...)}
		default:
			u.Unknown = append(u.Unknown, RawItem{Type: typ, Data: append([]byte(nil), val...)})
		}
	}
}

func decodeCommonExtended(r *fieldReader) (CommonExtendedNegotiation, error) {
	var e CommonExtendedNegotiation
	uid, err := r.field("SOP class UID")
	if err != nil {
		return e, err
	}
	svc, err := r.field("service class UID")
	if err != nil {
		return e, err
	}
	list, err := r.field("related general SOP class list")
	if err != nil {
		return e, err
	}
	if err := r.done("common extended negotiation"); err != nil {
		return e, err
	}
	e.SOPClassUID, e.ServiceClassUID = parseUID(uid), parseUID(svc)
	lr := fieldReader{t: r.t, data: list, base: r.base + r.off - len(list)}
	for lr.off < len(lr.data) {
		v, err := lr.field("related general SOP class UID")
		if err != nil {
			return e, err
		}
		e.RelatedGeneralSOPClasses = append(e.RelatedGeneralSOPClasses, parseUID(v))
	}
	return e, nil
}
