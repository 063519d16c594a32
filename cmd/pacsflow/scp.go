package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/pacsflow/pacsflow/pkg/dimse"
)

// listenerFlags are the flags of every command that runs a DICOM SCP.
type listenerFlags struct {
	addr, ae, allow, transferSyntaxes         *string
	tlsAddr, tlsCert, tlsKey, tlsClientCA     *string
	anyCalledAE, allowAnyAE, acceptUnknownSOP *bool
	maxAssoc                                  *int
	maxPDU                                    *uint
	idle, artim                               *time.Duration
}

// addListenerFlags adds the SCP flags to fs; addrFlag names the flag of the
// DICOM listen address.
func addListenerFlags(fs *flag.FlagSet, addrFlag string) *listenerFlags {
	return &listenerFlags{
		addr:             fs.String(addrFlag, "127.0.0.1:11112", "DICOM listen address HOST:PORT; beyond loopback it needs --allow or --allow-any-ae"),
		ae:               fs.String("ae", "PACSFLOW", "AE title this SCP answers to (the called AE)"),
		anyCalledAE:      fs.Bool("any-called-ae", false, "accept any called AE title"),
		allow:            fs.String("allow", "", "calling AE allow-list: AE or AE@ADDR[/BITS], comma-separated (e.g. CT1@10.0.0.0/8,MR1)"),
		allowAnyAE:       fs.Bool("allow-any-ae", false, "accept any calling AE from any address (required to listen beyond loopback without --allow)"),
		maxAssoc:         fs.Int("max-associations", 64, "maximum concurrent associations; more get a transient A-ASSOCIATE-RJ"),
		maxPDU:           fs.Uint("max-pdu", 256<<10, "maximum P-DATA-TF length advertised and accepted, bytes"),
		acceptUnknownSOP: fs.Bool("accept-unknown-sop-classes", false, "accept SOP classes this build does not know as storage classes"),
		transferSyntaxes: fs.String("transfer-syntaxes", "", "native transfer syntax UIDs in order of preference, comma-separated (default: Explicit LE, Implicit LE, Deflated, Explicit BE); encapsulated syntaxes are always accepted as proposed"),
		idle:             fs.Duration("idle-timeout", 5*time.Minute, "abort an association the peer leaves idle this long"),
		artim:            fs.Duration("artim", 30*time.Second, "ARTIM timer: wait for A-ASSOCIATE-RQ, release and close"),
		tlsAddr:          fs.String("tls-addr", "", "DICOM TLS listen address HOST:PORT (TLS 1.2+); needs --tls-cert and --tls-key"),
		tlsCert:          fs.String("tls-cert", "", "TLS certificate (PEM)"),
		tlsKey:           fs.String("tls-key", "", "TLS private key (PEM)"),
		tlsClientCA:      fs.String("tls-client-ca", "", "require client certificates signed by these CAs (PEM)"),
	}
}

func (f *listenerFlags) serverConfig(store dimse.StoreHandler) (dimse.ServerConfig, error) {
	cfg := dimse.ServerConfig{
		AETitle:                 *f.ae,
		AnyCalledAE:             *f.anyCalledAE,
		MaxAssociations:         *f.maxAssoc,
		Store:                   store,
		AcceptUnknownSOPClasses: *f.acceptUnknownSOP,
	}
	cfg.UL.MaxPDataLength = uint32(*f.maxPDU)
	cfg.UL.IdleTimeout = *f.idle
	cfg.UL.ARTIM = *f.artim
	if *f.transferSyntaxes != "" {
		cfg.TransferSyntaxes = strings.Split(*f.transferSyntaxes, ",")
	}
	if *f.allow != "" {
		l, err := dimse.ParseAllowList(*f.allow)
		if err != nil {
			return cfg, err
		}
		cfg.Access = l
	}
	if *f.allow == "" && !*f.allowAnyAE {
		for _, addr := range []string{*f.addr, *f.tlsAddr} {
			if addr != "" && !isLoopback(addr) {
				return cfg, fmt.Errorf("listening on %s beyond loopback needs a calling AE allow-list (--allow) or --allow-any-ae", addr)
			}
		}
	}
	return cfg, nil
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// listen opens the plain and, if configured, the TLS listener, and says
// where they listen.
func (f *listenerFlags) listen(stdout io.Writer) ([]net.Listener, error) {
	ln, err := net.Listen("tcp", *f.addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", *f.addr, err)
	}
	fmt.Fprintf(stdout, "DICOM SCP %s listening on %s\n", *f.ae, ln.Addr())
	lns := []net.Listener{ln}
	if *f.tlsAddr == "" {
		return lns, nil
	}
	tc, err := dimse.TLSConfig(*f.tlsCert, *f.tlsKey, *f.tlsClientCA)
	if err == nil {
		var tln net.Listener
		if tln, err = net.Listen("tcp", *f.tlsAddr); err == nil {
			fmt.Fprintf(stdout, "DICOM TLS SCP %s listening on %s\n", *f.ae, tln.Addr())
			return append(lns, tls.NewListener(tln, tc)), nil
		}
		err = fmt.Errorf("listen on %s: %w", *f.tlsAddr, err)
	}
	_ = ln.Close()
	return nil, err
}

// serveDICOM serves associations on lns until ctx ends, then shuts down:
// no new associations, active ones get up to 10 s to finish, the rest are
// aborted. It returns once every association has ended.
func serveDICOM(ctx context.Context, srv *dimse.Server, lns []net.Listener, log *slog.Logger) error {
	errc := make(chan error, len(lns))
	for _, l := range lns {
		go func() { errc <- srv.Serve(context.WithoutCancel(ctx), l) }()
	}
	var failed error
	select {
	case <-ctx.Done():
		log.Info("shutting down: no new associations; waiting up to 10s for active ones")
	case failed = <-errc:
		log.Error("DICOM listener failed; shutting down", "err", failed)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	n := len(lns)
	if failed != nil {
		n--
	}
	for range n {
		if err := <-errc; err != nil && !errors.Is(err, dimse.ErrServerClosed) && failed == nil {
			failed = err
		}
	}
	return failed
}
