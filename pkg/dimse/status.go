package dimse

import "fmt"

// Status is a DIMSE status code, PS3.7 Annex C.
type Status uint16

// Status codes used by C-ECHO and C-STORE (PS3.4 Table B.2-1, PS3.7 Annex C).
const (
	StatusSuccess                  Status = 0x0000
	StatusWarningCoercion          Status = 0xB000
	StatusWarningElementsDiscarded Status = 0xB006
	StatusWarningDataSetMismatch   Status = 0xB007
	// StatusOutOfResources: Refused, out of resources (A7xx).
	StatusOutOfResources Status = 0xA700
	// StatusDataSetMismatch: Error, data set does not match SOP class (A9xx).
	// pacsflow also answers it when the data set's SOP Instance UID is not
	// the command's Affected SOP Instance UID.
	StatusDataSetMismatch Status = 0xA900
	// StatusCannotUnderstand: Error, cannot understand (Cxxx).
	StatusCannotUnderstand      Status = 0xC000
	StatusProcessingFailure     Status = 0x0110
	StatusDuplicateInstance     Status = 0x0111
	StatusInvalidSOPInstance    Status = 0x0117
	StatusSOPClassNotSupported  Status = 0x0122
	StatusNotAuthorized         Status = 0x0124
	StatusUnrecognizedOperation Status = 0x0211
)

// IsSuccess reports whether s is Success.
func (s Status) IsSuccess() bool { return s == StatusSuccess }

// IsWarning reports whether s is a warning: the operation was performed.
func (s Status) IsWarning() bool {
	return s == 0x0001 || s&0xF000 == 0xB000 || s == 0x0107 || s == 0x0116
}

// IsFailure reports whether s is neither success, warning, pending nor cancel.
func (s Status) IsFailure() bool {
	return !s.IsSuccess() && !s.IsWarning() && s != 0xFE00 && s != 0xFF00 && s != 0xFF01
}

func (s Status) String() string {
	var kind string
	switch {
	case s.IsSuccess():
		return "Success (0x0000)"
	case s.IsWarning():
		kind = "Warning"
	case s&0xFF00 == 0xA700:
		kind = "Refused: out of resources"
	case s&0xFF00 == 0xA900:
		kind = "Error: data set does not match SOP class"
	case s&0xF000 == 0xC000:
		kind = "Error: cannot understand"
	case s == StatusProcessingFailure:
		kind = "Failure: processing failure"
	case s == StatusDuplicateInstance:
		kind = "Failure: duplicate SOP instance"
	case s == StatusSOPClassNotSupported:
		kind = "Refused: SOP class not supported"
	case s == StatusNotAuthorized:
		kind = "Refused: not authorized"
	case s == StatusUnrecognizedOperation:
		kind = "Failure: unrecognized operation"
	default:
		kind = "Failure"
	}
	return fmt.Sprintf("%s (0x%04X)", kind, uint16(s))
}

// Result is what a service handler answers: a status and, for failures, a
// comment that goes to the peer as ErrorComment (at most 64 characters).
type Result struct {
	Status  Status
	Comment string
}

// StatusError carries a DIMSE status through an error return, so that a
// handler can say which failure status the peer gets.
type StatusError struct {
	Status Status
	Err    error
}

func (e *StatusError) Error() string { return fmt.Sprintf("%s: %v", e.Status, e.Err) }
func (e *StatusError) Unwrap() error { return e.Err }

// Fail returns a *StatusError with status s wrapping err.
func Fail(s Status, err error) error { return &StatusError{Status: s, Err: err} }
