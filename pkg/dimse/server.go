package dimse

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pacsflow/pacsflow/pkg/dimse/pdu"
	"github.com/pacsflow/pacsflow/pkg/dimse/ul"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

// StoreHandler receives C-STORE requests.
//
// HandleStore is called on the association's goroutine with the data set as
// a stream, in the transfer syntax of the presentation context and exactly
// as received. data returns io.EOF only once the whole data set has
// arrived; if the association breaks first, Read returns an error and the
// handler must not keep what it wrote. A handler that returns Success must
// have read data to io.EOF; otherwise the server answers a failure.
//
// A non-nil error becomes a failure status: the Status of a *StatusError,
// else Processing Failure. A panic is recovered and answered the same way.
// ctx ends when the association is aborted or the server closed.
type StoreHandler interface {
	HandleStore(ctx context.Context, req *StoreIndication, data io.Reader) (Result, error)
}

// StoreFunc adapts a function to StoreHandler.
type StoreFunc func(ctx context.Context, req *StoreIndication, data io.Reader) (Result, error)

// HandleStore implements StoreHandler.
func (f StoreFunc) HandleStore(ctx context.Context, req *StoreIndication, data io.Reader) (Result, error) {
	return f(ctx, req, data)
}

// AssociationInfo identifies the association a request came on.
type AssociationInfo struct {
	// ID is unique per association of this process, for logs and events.
	ID         string
	CallingAE  string
	CalledAE   string
	RemoteAddr net.Addr
	// UserIdentity is what the requestor presented, if anything.
	UserIdentity *pdu.UserIdentity
}

// StoreIndication is one C-STORE request as the handler sees it.
type StoreIndication struct {
	StoreRequest
	// TransferSyntaxUID is the presentation context's transfer syntax: the
	// encoding of the data set stream.
	TransferSyntaxUID string
	Association       *AssociationInfo
}

// ServerConfig configures a Server. The zero value of each field has the
// documented default.
type ServerConfig struct {
	// AETitle is the called AE title this server answers to. Required
	// unless AnyCalledAE is set.
	AETitle string
	// AnyCalledAE accepts associations whatever the called AE title.
	AnyCalledAE bool
	// Access decides which peers may associate. Nil admits every peer.
	Access Authorizer
	// MaxAssociations bounds concurrent associations; requests beyond it get
	// a transient A-ASSOCIATE-RJ (local limit exceeded). Default 64.
	MaxAssociations int
	// MaxPending bounds connections that have not yet completed association
	// negotiation, beyond MaxAssociations; more are closed at once, which
	// defeats floods of half-open connections. Default 64.
	MaxPending int
	// Store handles C-STORE. Nil offers Verification only.
	Store StoreHandler
	// AcceptUnknownSOPClasses accepts any abstract syntax that is a valid
	// UID as a storage SOP class, for SOP classes newer than this build.
	AcceptUnknownSOPClasses bool
	// TransferSyntaxes is the preference order among native transfer
	// syntaxes; native syntaxes not listed are refused. Encapsulated
	// syntaxes are accepted as proposed. Default DefaultTransferSyntaxes.
	TransferSyntaxes []string
	// AssociationEnded, if set, is called on the association's goroutine
	// once an established association has ended, released or not; err is
	// nil after a normal release.
	AssociationEnded func(info *AssociationInfo, err error)
	// UL holds the upper layer parameters; IdleTimeout defaults to 5 minutes
	// for servers.
	UL ul.Config
	// Logger receives association and error logs. Default slog.Default().
	Logger *slog.Logger
}

// Validate checks the configuration.
func (c *ServerConfig) Validate() error {
	if !c.AnyCalledAE {
		if err := pdu.ValidateAETitle(c.AETitle); err != nil {
			return fmt.Errorf("server AE title: %w", err)
		}
	}
	if c.MaxAssociations < 0 || c.MaxPending < 0 {
		return errors.New("association limits must not be negative")
	}
	for _, ts := range c.TransferSyntaxes {
		if !uid.IsKnownTransferSyntax(ts) {
			return fmt.Errorf("transfer syntax %q is not known", ts)
		}
	}
	return nil
}

// Server is a DICOM C-ECHO and C-STORE service class provider.
type Server struct {
	cfg    ServerConfig
	log    *slog.Logger
	policy contextPolicy

	active  atomic.Int64 // established or negotiating associations
	pending atomic.Int64 // connections still negotiating

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	cancels   map[*context.CancelCauseFunc]struct{} // one per connection being served
	closing   bool
	wg        sync.WaitGroup
}

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("dimse: server closed")

// NewServer validates cfg and returns a Server.
func NewServer(cfg ServerConfig) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.MaxAssociations == 0 {
		cfg.MaxAssociations = 64
	}
	if cfg.MaxPending == 0 {
		cfg.MaxPending = 64
	}
	if cfg.UL.IdleTimeout == 0 {
		cfg.UL.IdleTimeout = 5 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	pref := cfg.TransferSyntaxes
	if len(pref) == 0 {
		pref = DefaultTransferSyntaxes
	}
	return &Server{
		cfg:       cfg,
		log:       cfg.Logger,
		policy:    contextPolicy{storage: cfg.Store != nil, acceptUnknown: cfg.AcceptUnknownSOPClasses, preference: pref},
		listeners: map[net.Listener]struct{}{},
		cancels:   map[*context.CancelCauseFunc]struct{}{},
	}, nil
}

// Serve accepts connections on ln and serves each association on its own
// goroutine until Shutdown or Close; it then returns ErrServerClosed. ctx
// is the parent of every association's context: cancelling it aborts them.
// For DICOM TLS pass a listener from tls.NewListener.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if !s.track(ln) {
		return ErrServerClosed
	}
	defer s.untrack(ln)
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.isClosing() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", "err", err, "backoff", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("accept on %s: %w", ln.Addr(), err)
		}
		backoff = 0
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveConn(ctx, conn)
		}()
	}
}

// Shutdown stops accepting associations, then waits for the active ones to
// end (peers release them) until ctx is done, and then aborts those left.
// It returns once every association goroutine has returned.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for ln := range s.listeners {
		_ = ln.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	n := len(s.cancels)
	for cancel := range s.cancels {
		(*cancel)(ErrServerClosed)
	}
	s.mu.Unlock()
	if n > 0 {
		s.log.Warn("aborting associations still active at shutdown", "count", n)
	}
	<-done
	return ctx.Err()
}

// Close aborts every association and stops the server at once.
func (s *Server) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := s.Shutdown(ctx)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// ActiveAssociations reports the associations being negotiated or served.
func (s *Server) ActiveAssociations() int { return int(s.active.Load()) }

func (s *Server) track(ln net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.listeners[ln] = struct{}{}
	return true
}

func (s *Server) untrack(ln net.Listener) {
	s.mu.Lock()
	delete(s.listeners, ln)
	s.mu.Unlock()
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// ServeConn serves one association on a connection that was accepted
// elsewhere, and closes it. It returns when the association has ended.
func (s *Server) ServeConn(ctx context.Context, conn net.Conn) {
	s.wg.Add(1)
	defer s.wg.Done()
	s.serveConn(ctx, conn)
}

func (s *Server) serveConn(ctx context.Context, conn net.Conn) {
	log := s.log.With("remote", conn.RemoteAddr().String())
	if s.pending.Add(1) > int64(s.cfg.MaxPending)+int64(s.cfg.MaxAssociations) {
		s.pending.Add(-1)
		log.Warn("connection refused: too many connections awaiting association")
		_ = conn.Close()
		return
	}
	s.active.Add(1)
	defer s.active.Add(-1)

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if !s.register(&cancel) {
		_ = conn.Close()
		return
	}
	defer s.unregister(&cancel)
	info := &AssociationInfo{ID: newAssociationID(), RemoteAddr: conn.RemoteAddr()}
	log = log.With("assoc", info.ID)
	a, err := ul.Accept(ctx, conn, s.cfg.UL, func(ctx context.Context, rq *pdu.AssociateRQ) (*pdu.AssociateAC, *pdu.AssociateRJ) {
		return s.negotiate(ctx, conn, rq, info, log)
	})
	s.pending.Add(-1)
	if err != nil {
		log.Info("association not established", "calling_ae", info.CallingAE, "called_ae", info.CalledAE, "err", err)
		return
	}
	log = log.With("calling_ae", info.CallingAE, "called_ae", info.CalledAE)
	log.Info("association established", "contexts", len(a.Contexts()))
	err = s.serveAssociation(ctx, a, info, log)
	if s.cfg.AssociationEnded != nil {
		s.cfg.AssociationEnded(info, err)
	}
}

// register records how to abort a connection at forced shutdown.
func (s *Server) register(cancel *context.CancelCauseFunc) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.cancels[cancel] = struct{}{}
	return true
}

func (s *Server) unregister(cancel *context.CancelCauseFunc) {
	s.mu.Lock()
	delete(s.cancels, cancel)
	s.mu.Unlock()
}

// negotiate applies the acceptor policy to an A-ASSOCIATE-RQ, in the order
// of PS3.8 §7.1.1: load, application context, called AE, calling AE, then
// the presentation contexts.
func (s *Server) negotiate(ctx context.Context, conn net.Conn, rq *pdu.AssociateRQ, info *AssociationInfo, log *slog.Logger) (*pdu.AssociateAC, *pdu.AssociateRJ) {
	info.CallingAE, info.CalledAE, info.UserIdentity = rq.CallingAE, rq.CalledAE, rq.UserInfo.UserIdentity
	reject := func(result pdu.RejectResult, src pdu.RejectSource, reason byte, why string) (*pdu.AssociateAC, *pdu.AssociateRJ) {
		log.Warn("association rejected", "calling_ae", rq.CallingAE, "called_ae", rq.CalledAE, "why", why)
		return nil, &pdu.AssociateRJ{Result: result, Source: src, Reason: reason}
	}
	if s.active.Load()-s.pending.Load() >= int64(s.cfg.MaxAssociations) {
		return reject(pdu.RejectTransient, pdu.RejectSourceProviderPresenta, pdu.RejectLocalLimitExceeded,
			fmt.Sprintf("%d associations already active", s.cfg.MaxAssociations))
	}
	if rq.ApplicationContext != pdu.ApplicationContextName {
		return reject(pdu.RejectPermanent, pdu.RejectSourceUser, pdu.RejectApplicationContextNotSupp,
			fmt.Sprintf("application context %q is not DICOM's", rq.ApplicationContext))
	}
	if !s.cfg.AnyCalledAE && rq.CalledAE != s.cfg.AETitle {
		return reject(pdu.RejectPermanent, pdu.RejectSourceUser, pdu.RejectCalledAENotRecognized,
			fmt.Sprintf("called AE %q is not %q", rq.CalledAE, s.cfg.AETitle))
	}
	var serverResponse []byte
	if s.cfg.Access != nil {
		peer := &Peer{CallingAE: rq.CallingAE, CalledAE: rq.CalledAE, Addr: conn.RemoteAddr(), UserIdentity: rq.UserInfo.UserIdentity}
		if tc, ok := conn.(*tls.Conn); ok {
			st := tc.ConnectionState()
			peer.TLS = &st
		}
		var err error
		if serverResponse, err = s.cfg.Access.Authorize(ctx, peer); err != nil {
			rj := rejectionFor(err)
			return reject(rj.Result, rj.Source, rj.Reason, err.Error())
		}
	}
	ac := &pdu.AssociateAC{
		ProtocolVersion:      pdu.ProtocolVersion,
		CalledAE:             rq.CalledAE,
		CallingAE:            rq.CallingAE,
		ApplicationContext:   pdu.ApplicationContextName,
		PresentationContexts: s.policy.negotiate(rq),
	}
	ac.UserInfo = pdu.UserInformation{
		ImplementationClassUID:    uid.ImplementationClassUID,
		ImplementationVersionName: uid.ImplementationVersionName,
		RoleSelections:            roleSelections(rq, ac.PresentationContexts),
	}
	if rq.UserInfo.AsyncOpsWindow != nil {
		// Operations are performed one at a time (PS3.7 §D.3.3.3).
		ac.UserInfo.AsyncOpsWindow = &pdu.AsyncOpsWindow{MaxInvoked: 1, MaxPerformed: 1}
	}
	if id := rq.UserInfo.UserIdentity; id != nil && id.PositiveResponseRequested && s.cfg.Access != nil {
		ac.UserInfo.UserIdentityResponse = &pdu.UserIdentityResponse{ServerResponse: serverResponse}
	}
	return ac, nil
}

// serveAssociation answers DIMSE requests until the association ends; it
// returns nil after a normal release, else why it ended.
func (s *Server) serveAssociation(ctx context.Context, a *ul.Association, info *AssociationInfo, log *slog.Logger) error {
	c := &conn{a: a}
	var stored, failed int
	for {
		pcid, cmd, err := c.readCommand()
		switch {
		case errors.Is(err, ul.ErrReleaseRequested):
			if err := a.RespondRelease(); err != nil {
				log.Warn("release failed", "err", err)
			}
			log.Info("association released", "stored", stored, "failed", failed)
			return nil
		case errors.Is(err, ErrProtocol) || errors.Is(err, ErrMalformedCommand):
			log.Warn("aborting association", "err", err)
			_ = a.Abort(err)
			return err
		case err != nil:
			log.Warn("association ended", "err", err, "stored", stored, "failed", failed)
			return err
		}
		var res Result
		switch cmd.Field() {
		case CEchoRQ:
			res, err = s.echo(c, pcid, cmd)
		case CStoreRQ:
			res, err = s.store(ctx, c, pcid, cmd, info, log)
			if err == nil && res.Status.IsFailure() {
				failed++
			} else if err == nil {
				stored++
			}
		case CCancelRQ:
			continue // nothing runs asynchronously, so nothing to cancel
		default:
			err = s.unsupported(c, pcid, cmd, log)
		}
		if err != nil {
			log.Warn("association ended", "err", err, "stored", stored, "failed", failed)
			if !errors.Is(err, ul.ErrClosed) && a.State() != ul.Sta1 {
				_ = a.Abort(err)
			}
			return err
		}
	}
}

func (s *Server) echo(c *conn, pcid byte, cmd *Command) (Result, error) {
	if cmd.HasDataSet() {
		return Result{}, fmt.Errorf("%w: C-ECHO-RQ announces a data set", ErrProtocol)
	}
	if _, ok := cmd.MessageID(); !ok {
		return Result{}, fmt.Errorf("%w: C-ECHO-RQ without MessageID", ErrMalformedCommand)
	}
	return Result{Status: StatusSuccess}, c.writeCommand(pcid, NewCEchoRSP(cmd, StatusSuccess))
}

// unsupported answers a request this server does not implement with
// Unrecognized Operation, after consuming its data set.
func (s *Server) unsupported(c *conn, pcid byte, cmd *Command, log *slog.Logger) error {
	field := cmd.Field()
	if cmd.HasDataSet() {
		if err := newDataSetReader(c.a, pcid).drain(); err != nil {
			return err
		}
	}
	id, ok := cmd.MessageID()
	if !ok || field&0x8000 != 0 {
		return fmt.Errorf("%w: unexpected command 0x%04X", ErrProtocol, field)
	}
	log.Warn("unsupported DIMSE request", "command_field", fmt.Sprintf("0x%04X", field))
	rsp := newCommand(field|0x8000, false)
	if sop, ok := cmd.String(TagAffectedSOPClassUID); ok {
		rsp.SetUID(TagAffectedSOPClassUID, sop)
	}
	rsp.SetUint16(TagMessageIDBeingRespondedTo, id)
	rsp.SetUint16(TagStatus, uint16(StatusUnrecognizedOperation))
	return c.writeCommand(pcid, rsp.sorted())
}

// store runs one C-STORE: the handler consumes the data set as it arrives,
// then the response goes out. A non-nil error means the association cannot
// continue.
func (s *Server) store(ctx context.Context, c *conn, pcid byte, cmd *Command, info *AssociationInfo, log *slog.Logger) (Result, error) {
	req, perr := ParseCStoreRQ(cmd)
	id, hasID := cmd.MessageID()
	if perr != nil && !hasID {
		return Result{}, perr
	}
	r := newDataSetReader(c.a, pcid)
	pc, _ := c.a.Context(pcid)
	var res Result
	switch {
	case perr != nil:
		req.MessageID = id
		res = Result{Status: StatusCannotUnderstand, Comment: perr.Error()}
	case pc.AbstractSyntax != req.AffectedSOPClassUID:
		res = Result{Status: StatusSOPClassNotSupported, Comment: "SOP class differs from the presentation context's"}
	case pc.AbstractSyntax == uid.Verification:
		res = Result{Status: StatusSOPClassNotSupported, Comment: "C-STORE on a Verification context"}
	default:
		ind := &StoreIndication{StoreRequest: req, TransferSyntaxUID: pc.TransferSyntax, Association: info}
		res = s.callStore(ctx, ind, r, log)
	}
	if cmd.HasDataSet() && !r.complete() {
		if err := r.drain(); err != nil {
			log.Warn("instance not stored: data set incomplete", "sop_instance", req.AffectedSOPInstanceUID, "err", err)
			return res, err
		}
		if !res.Status.IsFailure() {
			res = Result{Status: StatusProcessingFailure, Comment: "handler did not read the whole data set"}
			log.Error("store handler returned success without reading the whole data set", "sop_instance", req.AffectedSOPInstanceUID)
		}
	}
	if res.Status.IsFailure() {
		log.Warn("C-STORE failed", "sop_instance", req.AffectedSOPInstanceUID, "status", res.Status.String(), "why", res.Comment)
	} else {
		log.Debug("C-STORE", "sop_instance", req.AffectedSOPInstanceUID, "status", res.Status.String(), "bytes", r.n)
	}
	return res, c.writeCommand(pcid, NewCStoreRSP(req, res))
}

// callStore runs the handler, turning errors and panics into failures.
func (s *Server) callStore(ctx context.Context, ind *StoreIndication, r io.Reader, log *slog.Logger) (res Result) {
	if s.cfg.Store == nil {
		return Result{Status: StatusSOPClassNotSupported, Comment: "storage is not offered"}
	}
	defer func() {
		if p := recover(); p != nil {
			log.Error("store handler panicked", "sop_instance", ind.AffectedSOPInstanceUID, "panic", p, "stack", string(debug.Stack()))
			res = Result{Status: StatusProcessingFailure, Comment: "internal error"}
		}
	}()
	res, err := s.cfg.Store.HandleStore(ctx, ind, r)
	if err != nil {
		st := StatusProcessingFailure
		var se *StatusError
		if errors.As(err, &se) && se.Status.IsFailure() {
			st = se.Status
		}
		return Result{Status: st, Comment: err.Error()}
	}
	return res
}

func newAssociationID() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never returns an error
	return hex.EncodeToString(b[:])
}
