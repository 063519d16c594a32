package ul

import (
	"errors"
	"fmt"

	"github.com/pacsflow/pacsflow/pkg/dimse/pdu"
)

var (
	// ErrInvalidPrimitive reports a local primitive issued in a state that
	// does not admit it (PS3.8 Table 9-10 has no action for the pair).
	ErrInvalidPrimitive = errors.New("primitive not valid in this association state")
	// ErrReleaseRequested is returned by NextPDV when the peer sent an
	// A-RELEASE-RQ. The association is in Sta8; answer with RespondRelease.
	ErrReleaseRequested = errors.New("peer requested release of the association")
	// ErrPeerClosed reports that the transport connection closed without
	// release or abort: the A-P-ABORT indication of AA-4.
	ErrPeerClosed = errors.New("peer closed the transport connection")
	// ErrIdleTimeout reports that the peer sent nothing for the configured
	// idle time; this side aborted the association.
	ErrIdleTimeout = errors.New("association idle timeout")
	// ErrTimeout reports that the peer did not answer an association or
	// release request in time (the ARTIM timer's duration).
	ErrTimeout = errors.New("timed out waiting for the peer")
	// ErrClosed is returned by operations on an association that has ended.
	ErrClosed = errors.New("association is closed")
)

// AbortError reports an association ended by A-ABORT.
type AbortError struct {
	// Remote is true when the peer sent the A-ABORT PDU, false when this
	// side sent it.
	Remote bool
	Source pdu.AbortSource
	Reason pdu.AbortReason
	// Cause is what made this side abort: a protocol error, a timeout, the
	// caller's context. Nil for remote aborts.
	Cause error
}

func (e *AbortError) Error() string {
	who := "peer"
	if !e.Remote {
		who = "this side"
	}
	msg := fmt.Sprintf("association aborted by %s", who)
	if e.Source == pdu.AbortSourceProvider || e.Reason != pdu.AbortNotSpecified {
		msg += fmt.Sprintf(" (service-provider: %s)", e.Reason)
	}
	if e.Cause != nil {
		msg += ": " + e.Cause.Error()
	}
	return msg
}

func (e *AbortError) Unwrap() error { return e.Cause }

// RejectedError reports an A-ASSOCIATE-RJ, sent or received.
type RejectedError struct {
	pdu.AssociateRJ
	// Remote is true when the peer rejected this side's request.
	Remote bool
}

func (e *RejectedError) Error() string {
	kind := "permanently"
	if e.Result == pdu.RejectTransient {
		kind = "transiently"
	}
	who := "peer"
	if !e.Remote {
		who = "this side"
	}
	return fmt.Sprintf("association %s rejected by %s: %s (result %d, source %d, reason %d)", kind, who, e.Explain(), e.Result, e.Source, e.Reason)
}

// abortReasonFor maps a PDU decoding error to the reason of the A-ABORT
// that answers it (PS3.8 Table 9-26).
func abortReasonFor(err error) pdu.AbortReason {
	var tooLarge *pdu.TooLargeError
	var malformed *pdu.MalformedError
	var unexpected *unexpectedPDUError
	switch {
	case errors.Is(err, pdu.ErrUnknownType):
		return pdu.AbortUnrecognizedPDU
	case errors.As(err, &unexpected):
		return pdu.AbortUnexpectedPDU
	case errors.As(err, &tooLarge), errors.As(err, &malformed):
		return pdu.AbortInvalidPDUParameterValue
	}
	return pdu.AbortUnexpectedPDUParameter
}

// unexpectedPDUError describes a well-formed PDU received in a state where
// the state machine does not expect it.
type unexpectedPDUError struct {
	t  pdu.Type
	st State
}

func (e *unexpectedPDUError) Error() string {
	return fmt.Sprintf("unexpected %s in %s", e.t, e.st)
}
