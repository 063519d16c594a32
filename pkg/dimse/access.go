package dimse

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/pacsflow/pacsflow/pkg/dimse/pdu"
)

// Peer describes the requestor of an association, for access control.
type Peer struct {
	CallingAE string
	CalledAE  string
	Addr      net.Addr
	// UserIdentity is the user identity negotiation sub-item, if the
	// requestor sent one (PS3.7 §D.3.3.7).
	UserIdentity *pdu.UserIdentity
	// TLS is the connection state when the association runs over DICOM TLS.
	TLS *tls.ConnectionState
}

// Authorizer decides whether a peer may open an association. A nil error
// admits it; serverResponse is sent back when the requestor asked for a
// positive user identity response (for Kerberos, SAML and JWT identities it
// carries the server's token; for the others it is empty). An error rejects
// the association: a *Rejection chooses the A-ASSOCIATE-RJ fields, any other
// error gives "calling AE title not recognized".
type Authorizer interface {
	Authorize(ctx context.Context, p *Peer) (serverResponse []byte, err error)
}

// Rejection is an Authorizer's refusal with the A-ASSOCIATE-RJ to send.
type Rejection struct {
	RJ     pdu.AssociateRJ
	Reason string
}

func (r *Rejection) Error() string { return r.Reason }

// rejectionFor maps an Authorizer error to the A-ASSOCIATE-RJ to send.
func rejectionFor(err error) pdu.AssociateRJ {
	var rej *Rejection
	if errors.As(err, &rej) {
		return rej.RJ
	}
	return pdu.AssociateRJ{Result: pdu.RejectPermanent, Source: pdu.RejectSourceUser, Reason: pdu.RejectCallingAENotRecognized}
}

// AllowList admits listed calling AE titles, each optionally only from
// some source addresses.
type AllowList struct {
	entries map[string][]netip.Prefix
}

// ParseAllowList parses a comma-separated list of entries "AE" or
// "AE@ADDR[/BITS]" (several entries may name the same AE), for example
// "CT1@10.1.2.0/24,MR1,PACS@192.168.7.10".
func ParseAllowList(spec string) (*AllowList, error) {
	l := &AllowList{entries: map[string][]netip.Prefix{}}
	for _, item := range strings.Split(spec, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		ae, addr, hasAddr := strings.Cut(item, "@")
		if err := pdu.ValidateAETitle(ae); err != nil {
			return nil, fmt.Errorf("allow-list entry %q: %w", item, err)
		}
		if _, seen := l.entries[ae]; !seen {
			l.entries[ae] = nil
		}
		if !hasAddr {
			continue
		}
		var pfx netip.Prefix
		var err error
		if strings.Contains(addr, "/") {
			pfx, err = netip.ParsePrefix(addr)
		} else {
			var a netip.Addr
			a, err = netip.ParseAddr(addr)
			pfx = netip.PrefixFrom(a, a.BitLen())
		}
		if err != nil {
			return nil, fmt.Errorf("allow-list entry %q: %w", item, err)
		}
		l.entries[ae] = append(l.entries[ae], pfx.Masked())
	}
	if len(l.entries) == 0 {
		return nil, fmt.Errorf("allow-list %q names no AE title", spec)
	}
	return l, nil
}

// Authorize implements Authorizer.
func (l *AllowList) Authorize(_ context.Context, p *Peer) ([]byte, error) {
	prefixes, ok := l.entries[p.CallingAE]
	if !ok {
		return nil, &Rejection{
			RJ:     pdu.AssociateRJ{Result: pdu.RejectPermanent, Source: pdu.RejectSourceUser, Reason: pdu.RejectCallingAENotRecognized},
			Reason: fmt.Sprintf("calling AE %q is not on the allow-list", p.CallingAE),
		}
	}
	if len(prefixes) == 0 {
		return nil, nil
	}
	ap, err := netip.ParseAddrPort(p.Addr.String())
	if err == nil {
		for _, pfx := range prefixes {
			if pfx.Contains(ap.Addr().Unmap()) {
				return nil, nil
			}
		}
	}
	return nil, &Rejection{
		RJ:     pdu.AssociateRJ{Result: pdu.RejectPermanent, Source: pdu.RejectSourceUser, Reason: pdu.RejectCallingAENotRecognized},
		Reason: fmt.Sprintf("calling AE %q is not allowed from %s", p.CallingAE, p.Addr),
	}
}

// TLSConfig returns a server configuration for DICOM TLS (PS3.15 §B.12:
// TLS 1.2 or later). When clientCAFile is set, clients must present a
// certificate signed by one of its CAs.
func TLSConfig(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS key pair: %w", err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if clientCAFile != "" {
		pool, err := loadCertPool(clientCAFile)
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}
