package dimse

import (
	"github.com/pacsflow/pacsflow/pkg/dimse/pdu"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

// DefaultTransferSyntaxes is the acceptor's default preference among the
// transfer syntaxes a requestor proposes for one presentation context: the
// lossless native encodings first, then whatever encapsulated syntax the
// requestor proposes, in the requestor's order. Data is never transcoded.
var DefaultTransferSyntaxes = []string{
	uid.ExplicitVRLittleEndian,
	uid.ImplicitVRLittleEndian,
	uid.DeflatedExplicitVRLittleEndian,
	uid.ExplicitVRBigEndian,
}

// contextPolicy decides which presentation contexts an acceptor accepts.
type contextPolicy struct {
	// storage offers the Storage SOP classes; without it only Verification.
	storage bool
	// acceptUnknown accepts any abstract syntax as a storage SOP class.
	acceptUnknown bool
	// preference orders native transfer syntaxes; encapsulated ones the
	// requestor proposes follow in its order.
	preference []string
}

// negotiate answers each proposed presentation context (PS3.8 §9.3.3.2).
func (p *contextPolicy) negotiate(rq *pdu.AssociateRQ) []pdu.PresentationContextAC {
	out := make([]pdu.PresentationContextAC, 0, len(rq.PresentationContexts))
	for _, pc := range rq.PresentationContexts {
		ac := pdu.PresentationContextAC{ID: pc.ID}
		switch {
		case !p.supports(pc.AbstractSyntax):
			ac.Result = pdu.ResultAbstractSyntaxNotSupported
		default:
			if ts := p.choose(pc.TransferSyntaxes); ts != "" {
				ac.Result, ac.TransferSyntax = pdu.ResultAcceptance, ts
			} else {
				ac.Result = pdu.ResultTransferSyntaxNotSupported
			}
		}
		out = append(out, ac)
	}
	return out
}

func (p *contextPolicy) supports(abstract string) bool {
	switch {
	case abstract == uid.Verification:
		return true
	case !p.storage:
		return false
	case uid.IsStorage(abstract):
		return true
	}
	return p.acceptUnknown && uid.Validate(abstract) == nil
}

// choose picks the transfer syntax for one context, or "" if none is acceptable.
func (p *contextPolicy) choose(proposed []string) string {
	for _, want := range p.preference {
		for _, ts := range proposed {
			if ts == want {
				return ts
			}
		}
	}
	for _, ts := range proposed {
		if uid.IsEncapsulatedTransferSyntax(ts) {
			return ts
		}
	}
	return ""
}

// roleSelections answers the requestor's SCP/SCU role proposals for the
// SOP classes it proposed: this side only acts as SCP, so the requestor may
// keep the SCU role and is refused the SCP role (PS3.7 §D.3.3.4).
func roleSelections(rq *pdu.AssociateRQ, accepted []pdu.PresentationContextAC) []pdu.RoleSelection {
	ok := map[string]bool{}
	byID := map[byte]string{}
	for _, pc := range rq.PresentationContexts {
		byID[pc.ID] = pc.AbstractSyntax
	}
	for _, ac := range accepted {
		if ac.Result == pdu.ResultAcceptance {
			ok[byID[ac.ID]] = true
		}
	}
	var out []pdu.RoleSelection
	for _, r := range rq.UserInfo.RoleSelections {
		if ok[r.SOPClassUID] {
			out = append(out, pdu.RoleSelection{SOPClassUID: r.SOPClassUID, SCU: r.SCU, SCP: false})
		}
	}
	return out
}
