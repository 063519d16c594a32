package pdu

import "fmt"

// The A-ASSOCIATE-RJ, A-RELEASE-RQ/RP and A-ABORT PDUs have a fixed 4-byte
// body (PS3.8 §9.3.4, §9.3.6, §9.3.7, §9.3.8). Any other length is malformed.
const fixedBodyLen = 4

// RejectResult is the Result field of an A-ASSOCIATE-RJ.
type RejectResult byte

const (
	RejectPermanent RejectResult = 1
	RejectTransient RejectResult = 2
)

// RejectSource is the Source field of an A-ASSOCIATE-RJ.
type RejectSource byte

const (
	RejectSourceUser             RejectSource = 1 // DICOM UL service-user
	RejectSourceProviderACSE     RejectSource = 2 // DICOM UL service-provider, ACSE related function
	RejectSourceProviderPresenta RejectSource = 3 // DICOM UL service-provider, presentation related function
)

// Reject reasons; their meaning depends on the source (PS3.8 Table 9-21).
const (
	// Source 1, service-user.
	RejectNoReason                  byte = 1
	RejectApplicationContextNotSupp byte = 2
	RejectCallingAENotRecognized    byte = 3
	RejectCalledAENotRecognized     byte = 7
	// Source 2, service-provider (ACSE).
	RejectProtocolVersionNotSupported byte = 2
	// Source 3, service-provider (presentation).
	RejectTemporaryCongestion byte = 1
	RejectLocalLimitExceeded  byte = 2
)

// AssociateRJ is the A-ASSOCIATE-RJ PDU.
type AssociateRJ struct {
	Result RejectResult
	Source RejectSource
	Reason byte
}

// Type implements PDU.
func (*AssociateRJ) Type() Type { return TypeAssociateRJ }

// AppendTo implements PDU.
func (p *AssociateRJ) AppendTo(b []byte) ([]byte, error) {
	b, start := appendHeader(b, TypeAssociateRJ)
	b = append(b, 0, byte(p.Result), byte(p.Source), p.Reason)
	return finishPDU(b, start)
}

func (p *AssociateRJ) String() string {
	return fmt.Sprintf("A-ASSOCIATE-RJ result=%d source=%d reason=%d (%s)", p.Result, p.Source, p.Reason, p.Explain())
}

// Explain gives the standard's wording of the reject reason.
func (p *AssociateRJ) Explain() string {
	switch p.Source {
	case RejectSourceUser:
		switch p.Reason {
		case RejectNoReason:
			return "no reason given"
		case RejectApplicationContextNotSupp:
			return "application context name not supported"
		case RejectCallingAENotRecognized:
			return "calling AE title not recognized"
		case RejectCalledAENotRecognized:
			return "called AE title not recognized"
		}
	case RejectSourceProviderACSE:
		switch p.Reason {
		case 1:
			return "no reason given"
		case RejectProtocolVersionNotSupported:
			return "protocol version not supported"
		}
	case RejectSourceProviderPresenta:
		switch p.Reason {
		case RejectTemporaryCongestion:
			return "temporary congestion"
		case RejectLocalLimitExceeded:
			return "local limit exceeded"
		}
	}
	return "reserved reason"
}

func decodeAssociateRJ(body []byte) (*AssociateRJ, error) {
	if len(body) != fixedBodyLen {
		return nil, &MalformedError{TypeAssociateRJ, HeaderLen, fmt.Sprintf("body of %d bytes, want %d", len(body), fixedBodyLen)}
	}
	return &AssociateRJ{Result: RejectResult(body[1]), Source: RejectSource(body[2]), Reason: body[3]}, nil
}

// ReleaseRQ is the A-RELEASE-RQ PDU.
type ReleaseRQ struct{}

// Type implements PDU.
func (ReleaseRQ) Type() Type { return TypeReleaseRQ }

// AppendTo implements PDU.
func (ReleaseRQ) AppendTo(b []byte) ([]byte, error) { return appendEmpty(b, TypeReleaseRQ) }

// ReleaseRP is the A-RELEASE-RP PDU.
type ReleaseRP struct{}

// Type implements PDU.
func (ReleaseRP) Type() Type { return TypeReleaseRP }

// AppendTo implements PDU.
func (ReleaseRP) AppendTo(b []byte) ([]byte, error) { return appendEmpty(b, TypeReleaseRP) }

func appendEmpty(b []byte, t Type) ([]byte, error) {
	b, start := appendHeader(b, t)
	b = append(b, 0, 0, 0, 0)
	return finishPDU(b, start)
}

func checkEmpty(t Type, body []byte) error {
	if len(body) != fixedBodyLen {
		return &MalformedError{t, HeaderLen, fmt.Sprintf("body of %d bytes, want %d", len(body), fixedBodyLen)}
	}
	return nil
}

// AbortSource is the Source field of an A-ABORT.
type AbortSource byte

const (
	AbortSourceUser     AbortSource = 0 // DICOM UL service-user (initiated abort)
	AbortSourceProvider AbortSource = 2 // DICOM UL service-provider (initiated abort)
)

// AbortReason is the Reason/Diag field of a provider-initiated A-ABORT.
type AbortReason byte

// Abort reasons, PS3.8 Table 9-26.
const (
	AbortNotSpecified             AbortReason = 0
	AbortUnrecognizedPDU          AbortReason = 1
	AbortUnexpectedPDU            AbortReason = 2
	AbortUnrecognizedPDUParameter AbortReason = 4
	AbortUnexpectedPDUParameter   AbortReason = 5
	AbortInvalidPDUParameterValue AbortReason = 6
)

func (r AbortReason) String() string {
	switch r {
	case AbortNotSpecified:
		return "reason not specified"
	case AbortUnrecognizedPDU:
		return "unrecognized PDU"
	case AbortUnexpectedPDU:
		return "unexpected PDU"
	case AbortUnrecognizedPDUParameter:
		return "unrecognized PDU parameter"
	case AbortUnexpectedPDUParameter:
		return "unexpected PDU parameter"
	case AbortInvalidPDUParameterValue:
		return "invalid PDU parameter value"
	}
	return fmt.Sprintf("reserved reason %d", byte(r))
}

// Abort is the A-ABORT PDU.
type Abort struct {
	Source AbortSource
	Reason AbortReason
}

// Type implements PDU.
func (*Abort) Type() Type { return TypeAbort }

// AppendTo implements PDU.
func (p *Abort) AppendTo(b []byte) ([]byte, error) {
	b, start := appendHeader(b, TypeAbort)
	b = append(b, 0, 0, byte(p.Source), byte(p.Reason))
	return finishPDU(b, start)
}

func (p *Abort) String() string {
	if p.Source == AbortSourceUser {
		return "A-ABORT by the service-user"
	}
	return fmt.Sprintf("A-ABORT by the service-provider (source %d): %s", p.Source, p.Reason)
}

func decodeAbort(body []byte) (*Abort, error) {
	if err := checkEmpty(TypeAbort, body); err != nil {
		return nil, err
	}
	return &Abort{Source: AbortSource(body[2]), Reason: AbortReason(body[3])}, nil
}
