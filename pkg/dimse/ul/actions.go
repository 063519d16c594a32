package ul

import (
	"errors"
	"fmt"

	"github.com/pacsflow/pacsflow/pkg/dimse/pdu"
)

// actions implements PS3.8 Tables 9-6 to 9-9. Each returns the next state;
// an error means the transport failed and the association is in Sta1.
var actions = [numActions]func(a *Association, in *input) (State, error){
	actAE1: func(a *Association, in *input) (State, error) {
		// The caller opened the transport connection before Request.
		return Sta4, nil
	},
	actAE2: func(a *Association, in *input) (State, error) {
		return a.sendThen(in.p, Sta5)
	},
	actAE3: func(a *Association, in *input) (State, error) {
		a.ac = in.p.(*pdu.AssociateAC)
		a.indicate(indAccepted, in.p)
		return Sta6, nil
	},
	actAE4: func(a *Association, in *input) (State, error) {
		a.indicate(indRejected, in.p)
		a.setErr(&RejectedError{AssociateRJ: *in.p.(*pdu.AssociateRJ), Remote: true})
		a.closeTransport()
		return Sta1, nil
	},
	actAE5: func(a *Association, in *input) (State, error) {
		a.startARTIM()
		return Sta2, nil
	},
	actAE6: func(a *Association, in *input) (State, error) {
		a.stopARTIM()
		rq := in.p.(*pdu.AssociateRQ)
		if rq.ProtocolVersion&pdu.ProtocolVersion == 0 {
			rj := &pdu.AssociateRJ{Result: pdu.RejectPermanent, Source: pdu.RejectSourceProviderACSE, Reason: pdu.RejectProtocolVersionNotSupported}
			a.setErr(&RejectedError{AssociateRJ: *rj})
			a.startARTIM()
			return a.sendThen(rj, Sta13)
		}
		a.indicate(indAssociate, rq)
		return Sta3, nil
	},
	actAE7: func(a *Association, in *input) (State, error) {
		return a.sendThen(in.p, Sta6)
	},
	actAE8: func(a *Association, in *input) (State, error) {
		a.startARTIM()
		return a.sendThen(in.p, Sta13)
	},
	actDT1: func(a *Association, in *input) (State, error) {
		return a.writeThen(in.raw, Sta6)
	},
	actDT2: func(a *Association, in *input) (State, error) {
		a.indicate(indPData, in.p)
		return Sta6, nil
	},
	actAR1: func(a *Association, in *input) (State, error) {
		return a.sendThen(in.p, Sta7)
	},
	actAR2: func(a *Association, in *input) (State, error) {
		a.indicate(indRelease, in.p)
		return Sta8, nil
	},
	actAR3: func(a *Association, in *input) (State, error) {
		a.indicate(indReleaseConfirm, in.p)
		a.closeTransport()
		return Sta1, nil
	},
	actAR4: func(a *Association, in *input) (State, error) {
		a.startARTIM()
		return a.sendThen(in.p, Sta13)
	},
	actAR5: func(a *Association, in *input) (State, error) {
		a.stopARTIM()
		return Sta1, nil
	},
	actAR6: func(a *Association, in *input) (State, error) {
		a.indicate(indPData, in.p)
		return Sta7, nil
	},
	actAR7: func(a *Association, in *input) (State, error) {
		return a.writeThen(in.raw, Sta8)
	},
	actAR8: func(a *Association, in *input) (State, error) {
		a.indicate(indRelease, in.p)
		if a.requestor {
			return Sta9, nil
		}
		return Sta10, nil
	},
	actAR9: func(a *Association, in *input) (State, error) {
		return a.sendThen(in.p, Sta11)
	},
	actAR10: func(a *Association, in *input) (State, error) {
		a.indicate(indReleaseConfirm, in.p)
		return Sta12, nil
	},
	actAA1: func(a *Association, in *input) (State, error) {
		ab, local := in.p.(*pdu.Abort)
		if !local {
			// AA-1 answers a PDU other than A-ASSOCIATE-RQ in Sta2.
			ab = providerAbort(in)
		}
		a.setErr(&AbortError{Source: ab.Source, Reason: ab.Reason, Cause: in.cause})
		a.startARTIM()
		return a.sendAbort(ab)
	},
	actAA2: func(a *Association, in *input) (State, error) {
		a.stopARTIM()
		if ab, ok := in.p.(*pdu.Abort); ok {
			a.setErr(&AbortError{Remote: true, Source: ab.Source, Reason: ab.Reason})
		}
		a.closeTransport()
		return Sta1, nil
	},
	actAA3: func(a *Association, in *input) (State, error) {
		ab := in.p.(*pdu.Abort)
		a.indicate(indAbort, in.p)
		a.setErr(&AbortError{Remote: true, Source: ab.Source, Reason: ab.Reason})
		a.closeTransport()
		return Sta1, nil
	},
	actAA4: func(a *Association, in *input) (State, error) {
		a.indicate(indPAbort, nil)
		a.setErr(in.cause)
		a.closeTransport()
		return Sta1, nil
	},
	actAA5: func(a *Association, in *input) (State, error) {
		a.stopARTIM()
		a.setErr(fmt.Errorf("%w before sending an A-ASSOCIATE-RQ", ErrPeerClosed))
		a.closeTransport()
		return Sta1, nil
	},
	actAA6: func(a *Association, in *input) (State, error) {
		return Sta13, nil
	},
	actAA7: func(a *Association, in *input) (State, error) {
		return a.sendAbort(providerAbort(in))
	},
	actAA8: func(a *Association, in *input) (State, error) {
		ab := providerAbort(in)
		if in.cause == nil && in.p != nil {
			in.cause = &unexpectedPDUError{in.p.Type(), a.state}
		}
		a.indicate(indPAbort, nil)
		a.setErr(&AbortError{Source: ab.Source, Reason: ab.Reason, Cause: in.cause})
		a.startARTIM()
		return a.sendAbort(ab)
	},
}

// providerAbort is the A-ABORT this side sends when the peer broke the
// protocol: an unparseable PDU, or a valid one the state does not admit.
func providerAbort(in *input) *pdu.Abort {
	reason := pdu.AbortUnexpectedPDU
	if in.cause != nil {
		reason = abortReasonFor(in.cause)
	}
	return &pdu.Abort{Source: pdu.AbortSourceProvider, Reason: reason}
}

func (a *Association) indicate(ind indication, p pdu.PDU) {
	a.ind, a.indPDU = ind, p
}

func (a *Association) sendThen(p pdu.PDU, next State) (State, error) {
	if err := a.send(p); err != nil {
		return a.transportFailed(err)
	}
	return next, nil
}

func (a *Association) writeThen(b []byte, next State) (State, error) {
	if err := a.write(b); err != nil {
		return a.transportFailed(err)
	}
	return next, nil
}

// sendAbort sends an A-ABORT and waits in Sta13 for the peer to close. If
// the write fails the peer is gone already and the association ends at once.
func (a *Association) sendAbort(ab *pdu.Abort) (State, error) {
	if err := a.send(ab); err != nil {
		a.stopARTIM()
		a.closeTransport()
		return Sta1, nil
	}
	return Sta13, nil
}

func (a *Association) transportFailed(err error) (State, error) {
	var intr *interruptError
	if errors.As(err, &intr) {
		a.abortOnInterrupt(intr.cause)
		return Sta1, a.err
	}
	a.setErr(err)
	a.closeTransport()
	return Sta1, err
}
