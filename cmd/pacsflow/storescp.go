package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pacsflow/pacsflow/pkg/dimse"
	"github.com/pacsflow/pacsflow/pkg/part10"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

func runStoreSCP(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("storescp --dir DIR [flags]",
		"Receives DICOM instances over C-STORE (and answers C-ECHO) and writes each into DIR as a\n"+
			"Part 10 file named <SOPInstanceUID>.dcm: a file meta header built from the association,\n"+
			"then the data set exactly as received, in the transfer syntax the sender chose.\n"+
			"Files appear under their final name only once complete (written to a temporary name, then renamed).", stderr)
	dir := fs.String("dir", "", "folder to write received instances into (required; created if missing)")
	fsync := fs.Bool("fsync", false, "fsync each file and the folder before answering Success (slower, survives power loss)")
	lf := addListenerFlags(fs)
	level, format := logFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log, err := newLogger(stderr, *level, *format)
	if err != nil {
		return err
	}
	if *dir == "" {
		fs.Usage()
		return errUsage
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", *dir, err)
	}
	store := &dirStore{dir: *dir, fsync: *fsync}
	cfg, err := lf.serverConfig(store)
	if err != nil {
		return err
	}
	cfg.Logger = log
	srv, err := dimse.NewServer(cfg)
	if err != nil {
		return err
	}
	return lf.serve(ctx, srv, log, stdout)
}

// dirStore writes each received instance as a Part 10 file.
type dirStore struct {
	dir   string
	fsync bool
}

func (d *dirStore) HandleStore(ctx context.Context, req *dimse.StoreIndication, data io.Reader) (dimse.Result, error) {
	if err := uid.Validate(req.AffectedSOPInstanceUID); err != nil {
		return dimse.Result{}, dimse.Fail(dimse.StatusCannotUnderstand, fmt.Errorf("affected SOP instance UID: %w", err))
	}
	f, err := os.CreateTemp(d.dir, ".incoming-*")
	if err != nil {
		return dimse.Result{}, dimse.Fail(dimse.StatusOutOfResources, err)
	}
	tmp := f.Name()
	err = d.write(f, req, data)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = dimse.Fail(dimse.StatusOutOfResources, cerr)
	}
	if err == nil {
		err = d.commit(tmp, filepath.Join(d.dir, req.AffectedSOPInstanceUID+".dcm"))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return dimse.Result{}, err
	}
	return dimse.Result{Status: dimse.StatusSuccess}, nil
}

// commit gives a complete file its final name.
func (d *dirStore) commit(tmp, final string) error {
	if err := os.Rename(tmp, final); err != nil {
		return dimse.Fail(dimse.StatusOutOfResources, err)
	}
	if d.fsync {
		if err := syncDir(d.dir); err != nil {
			return dimse.Fail(dimse.StatusOutOfResources, err)
		}
	}
	return nil
}

func (d *dirStore) write(f *os.File, req *dimse.StoreIndication, data io.Reader) error {
	hdr := part10.AppendHeader(nil, &part10.Meta{
		MediaStorageSOPClassUID:      req.AffectedSOPClassUID,
		MediaStorageSOPInstanceUID:   req.AffectedSOPInstanceUID,
		TransferSyntaxUID:            req.TransferSyntaxUID,
		ImplementationClassUID:       uid.ImplementationClassUID,
		ImplementationVersionName:    uid.ImplementationVersionName,
		SourceApplicationEntityTitle: req.Association.CallingAE,
	})
	// CreateTemp makes the file private; received instances are ordinary files.
	if err := f.Chmod(0o644); err != nil {
		return dimse.Fail(dimse.StatusOutOfResources, err)
	}
	if _, err := f.Write(hdr); err != nil {
		return dimse.Fail(dimse.StatusOutOfResources, err)
	}
	if _, err := io.Copy(chunkedWriter{f}, data); err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return dimse.Fail(dimse.StatusOutOfResources, err)
		}
		return fmt.Errorf("receive data set: %w", err)
	}
	if d.fsync {
		if err := f.Sync(); err != nil {
			return dimse.Fail(dimse.StatusOutOfResources, err)
		}
	}
	return nil
}

// chunkedWriter writes to a file in pieces of at most 64 KiB. Measured on
// the large corpus (bench/), whole 256 KiB fragments written at once ran at
// 700-1600 MB/s, varying from run to run, and the same data in 64 KiB
// writes at a steady 1600-1800 MB/s: each piece is copied into the page
// cache while it is still in the CPU cache.
type chunkedWriter struct{ w io.Writer }

func (c chunkedWriter) Write(p []byte) (int, error) {
	const chunk = 64 << 10
	n := 0
	for len(p) > 0 {
		m, err := c.w.Write(p[:min(len(p), chunk)])
		n += m
		if err != nil {
			return n, err
		}
		p = p[m:]
	}
	return n, nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// listenerFlags are the flags of every command that runs a DICOM SCP.
type listenerFlags struct {
	addr, ae, allow, transferSyntaxes         *string
	tlsAddr, tlsCert, tlsKey, tlsClientCA     *string
	anyCalledAE, allowAnyAE, acceptUnknownSOP *bool
	maxAssoc                                  *int
	maxPDU                                    *uint
	idle, artim                               *time.Duration
}

func addListenerFlags(fs interface {
	String(string, string, string) *string
	Bool(string, bool, string) *bool
	Int(string, int, string) *int
	Uint(string, uint, string) *uint
	Duration(string, time.Duration, string) *time.Duration
}) *listenerFlags {
	return &listenerFlags{
		addr:             fs.String("addr", "127.0.0.1:11112", "DICOM listen address HOST:PORT; beyond loopback it needs --allow or --allow-any-ae"),
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

// serve listens on the plain and TLS addresses and serves until ctx ends,
// then shuts down: stop accepting, let associations finish for up to 10 s,
// abort the rest.
func (f *listenerFlags) serve(ctx context.Context, srv *dimse.Server, log interface {
	Info(string, ...any)
}, stdout io.Writer) error {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}()
	ln, err := net.Listen("tcp", *f.addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *f.addr, err)
	}
	lns = append(lns, ln)
	fmt.Fprintf(stdout, "DICOM SCP %s listening on %s\n", *f.ae, ln.Addr())
	if *f.tlsAddr != "" {
		tc, err := dimse.TLSConfig(*f.tlsCert, *f.tlsKey, *f.tlsClientCA)
		if err != nil {
			return err
		}
		tln, err := net.Listen("tcp", *f.tlsAddr)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", *f.tlsAddr, err)
		}
		lns = append(lns, tls.NewListener(tln, tc))
		fmt.Fprintf(stdout, "DICOM TLS SCP %s listening on %s\n", *f.ae, tln.Addr())
	}
	errc := make(chan error, len(lns))
	for _, l := range lns {
		go func() { errc <- srv.Serve(context.WithoutCancel(ctx), l) }()
	}
	select {
	case <-ctx.Done():
	case err := <-errc:
		_ = srv.Close()
		return err
	}
	log.Info("shutting down: no new associations; waiting up to 10s for active ones")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	for range lns {
		if err := <-errc; err != nil && !errors.Is(err, dimse.ErrServerClosed) {
			return err
		}
	}
	return nil
}
