package ul

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/pacsflow/pacsflow/pkg/dimse/pdu"
)

// Config holds the upper layer parameters of one association.
type Config struct {
	// MaxPDataLength is the maximum P-DATA-TF length this side advertises
	// and accepts (the "maximum length received" of PS3.8 Annex D.1).
	// Default 256 KiB.
	MaxPDataLength uint32
	// MaxSendPDataLength caps the P-DATA-TF PDUs this side sends when the
	// peer advertises no limit. Default 256 KiB.
	MaxSendPDataLength uint32
	// ARTIM is the association request/reject/release timer. It also bounds
	// the wait for an A-ASSOCIATE-AC/RJ and for an A-RELEASE-RP, which the
	// standard leaves to implementations. Default 30 s.
	ARTIM time.Duration
	// IdleTimeout aborts an established association on which the peer sends
	// nothing for this long while this side waits for it. 0 disables it.
	IdleTimeout time.Duration
	// WriteTimeout bounds each write to the transport. Default 60 s.
	WriteTimeout time.Duration
	// Logger receives transition traces at debug level. Default: discard.
	Logger *slog.Logger
	// Trace, if set, is called after every transition of the state machine.
	Trace func(Transition)
}

// Transition records one step of the state machine.
type Transition struct {
	From   State
	Event  Event
	Action string
	To     State
}

func (t Transition) String() string {
	return fmt.Sprintf("%s + %s -> %s -> %s", t.From, t.Event, t.Action, t.To)
}

// readBufferSize is the transport read buffer of an association.
const readBufferSize = 64 << 10

// Defaults of Config.
const (
	DefaultMaxPDataLength = 256 << 10
	DefaultARTIM          = 30 * time.Second
	DefaultWriteTimeout   = 60 * time.Second
	// minPDataLength is the smallest maximum length a peer may advertise:
	// below it a P-DATA-TF cannot carry a PDV header and one byte.
	minPDataLength = pdu.PDVHeaderLen + 1
)

func (c Config) withDefaults() Config {
	if c.MaxPDataLength == 0 {
		c.MaxPDataLength = DefaultMaxPDataLength
	}
	if c.MaxSendPDataLength == 0 {
		c.MaxSendPDataLength = DefaultMaxPDataLength
	}
	if c.ARTIM == 0 {
		c.ARTIM = DefaultARTIM
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Context is an accepted presentation context.
type Context struct {
	ID             byte
	AbstractSyntax string
	TransferSyntax string
}

// indication is what the last action reports to the local user.
type indication uint8

const (
	indNone indication = iota
	indAssociate
	indAccepted
	indRejected
	indPData
	indRelease
	indReleaseConfirm
	indAbort
	indPAbort
)

// input is what an event carries into its action.
type input struct {
	p     pdu.PDU // the PDU received, or the one a local primitive sends
	raw   []byte  // an encoded P-DATA-TF for DT-1 and AR-7
	cause error   // why this side aborts (Evt15, Evt19) or what closed the transport
}

// Association is one DICOM association over one transport connection.
//
// Its methods are meant for one goroutine, except Watch and Close, which
// may be called from any goroutine to interrupt it.
type Association struct {
	conn      net.Conn
	cfg       Config
	rd        *pdu.Reader
	requestor bool
	state     State

	artimAt  time.Time // zero while the ARTIM timer is stopped
	desynced bool      // the byte stream no longer starts at a PDU boundary
	intr     atomic.Pointer[error]

	rq       *pdu.AssociateRQ
	ac       *pdu.AssociateAC
	contexts map[byte]Context
	maxSend  uint32 // largest P-DATA-TF length the peer accepts

	ind    indication
	indPDU pdu.PDU
	pdvs   []pdu.PDV
	err    error // why the association ended, once in Sta1

	wbuf  []byte
	frame []byte
}

func newAssociation(conn net.Conn, cfg Config, requestor bool) *Association {
	cfg = cfg.withDefaults()
	// Buffering lets one read take a PDU header together with what follows;
	// large PDU bodies bypass the buffer.
	rd := pdu.NewReader(bufio.NewReaderSize(conn, readBufferSize))
	rd.MaxPDataLength = cfg.MaxPDataLength
	return &Association{conn: conn, cfg: cfg, rd: rd, requestor: requestor, state: Sta1}
}

// Negotiator decides on an A-ASSOCIATE-RQ. It returns the A-ASSOCIATE-AC to
// send, or the A-ASSOCIATE-RJ. The upper layer fills in the maximum length.
type Negotiator func(ctx context.Context, rq *pdu.AssociateRQ) (*pdu.AssociateAC, *pdu.AssociateRJ)

// Accept runs the acceptor side of association establishment on a transport
// connection that has just been opened by the peer. On success the
// association is in Sta6. On failure the connection is closed and the error
// is a *RejectedError, an *AbortError, ErrPeerClosed or ErrTimeout.
// ctx bounds the whole association: when it is done, the association is aborted.
func Accept(ctx context.Context, conn net.Conn, cfg Config, negotiate Negotiator) (*Association, error) {
	a := newAssociation(conn, cfg, false)
	a.Watch(ctx)
	if err := a.fire(Evt5, input{}); err != nil {
		return nil, a.fail(err)
	}
	for a.state == Sta2 {
		a.step()
	}
	if a.state != Sta3 {
		return nil, a.finish()
	}
	rq := a.indPDU.(*pdu.AssociateRQ)
	a.rq = rq
	ac, rj := negotiate(ctx, rq)
	if rj != nil {
		if err := a.fire(Evt8, input{p: rj}); err != nil {
			return nil, a.fail(err)
		}
		a.err = &RejectedError{AssociateRJ: *rj}
		return nil, a.finish()
	}
	if ac.UserInfo.MaxLength == nil {
		ac.UserInfo.MaxLength = pdu.Uint32(a.cfg.MaxPDataLength)
	}
	if err := a.establish(rq, ac); err != nil {
		a.abortWith(pdu.AbortSourceUser, pdu.AbortNotSpecified, err)
		return nil, a.finish()
	}
	if err := a.fire(Evt7, input{p: ac}); err != nil {
		return nil, a.fail(err)
	}
	return a, nil
}

// Request runs the requestor side of association establishment on a
// transport connection the caller has opened (so AE-1 and Evt2 have
// happened). On success the association is in Sta6. A rejection is returned
// as a *RejectedError with Remote set.
func Request(ctx context.Context, conn net.Conn, cfg Config, rq *pdu.AssociateRQ) (*Association, error) {
	a := newAssociation(conn, cfg, true)
	a.Watch(ctx)
	if rq.UserInfo.MaxLength == nil {
		rq.UserInfo.MaxLength = pdu.Uint32(a.cfg.MaxPDataLength)
	}
	a.rq = rq
	if err := a.fire(Evt1, input{}); err != nil {
		return nil, a.fail(err)
	}
	if err := a.fire(Evt2, input{p: rq}); err != nil {
		return nil, a.fail(err)
	}
	for a.state == Sta5 {
		a.step()
	}
	if a.state != Sta6 {
		return nil, a.finish()
	}
	if err := a.establish(rq, a.ac); err != nil {
		a.abortWith(pdu.AbortSourceUser, pdu.AbortNotSpecified, err)
		return nil, a.finish()
	}
	return a, nil
}

// establish records the accepted presentation contexts and the peer's limit.
func (a *Association) establish(rq *pdu.AssociateRQ, ac *pdu.AssociateAC) error {
	a.ac = ac
	peer := rq.UserInfo.MaxLength
	if a.requestor {
		peer = ac.UserInfo.MaxLength
	}
	a.maxSend = a.cfg.MaxSendPDataLength
	if peer != nil && *peer != 0 {
		if *peer < minPDataLength {
			return fmt.Errorf("peer's maximum length %d cannot carry a PDV", *peer)
		}
		a.maxSend = min(a.maxSend, *peer)
	}
	proposed := make(map[byte]string, len(rq.PresentationContexts))
	for _, pc := range rq.PresentationContexts {
		proposed[pc.ID] = pc.AbstractSyntax
	}
	a.contexts = make(map[byte]Context)
	for _, pc := range ac.PresentationContexts {
		if pc.Result != pdu.ResultAcceptance {
			continue
		}
		as, ok := proposed[pc.ID]
		if !ok {
			return fmt.Errorf("accepted presentation context %d was not proposed", pc.ID)
		}
		a.contexts[pc.ID] = Context{ID: pc.ID, AbstractSyntax: as, TransferSyntax: pc.TransferSyntax}
	}
	return nil
}

// Watch arranges for the association to be aborted when ctx is done:
// blocked reads and writes return, and the operation in progress aborts.
// The returned function stops watching, as for context.AfterFunc.
func (a *Association) Watch(ctx context.Context) (stop func() bool) {
	return context.AfterFunc(ctx, func() { a.interrupt(context.Cause(ctx)) })
}

func (a *Association) interrupt(cause error) {
	a.intr.CompareAndSwap(nil, &cause)
	_ = a.conn.SetDeadline(time.Unix(1, 0))
}

func (a *Association) interrupted() error {
	if p := a.intr.Load(); p != nil {
		return *p
	}
	return nil
}

// Close closes the transport connection at once, without A-RELEASE or
// A-ABORT. It is safe to call from any goroutine.
func (a *Association) Close() error {
	a.interrupt(ErrClosed)
	return a.conn.Close()
}

// State reports the current state of the state machine.
func (a *Association) State() State { return a.state }

// Request returns the A-ASSOCIATE-RQ of this association.
func (a *Association) AssociateRQ() *pdu.AssociateRQ { return a.rq }

// AssociateAC returns the A-ASSOCIATE-AC of this association.
func (a *Association) AssociateAC() *pdu.AssociateAC { return a.ac }

// Context returns the accepted presentation context with the given ID.
func (a *Association) Context(id byte) (Context, bool) {
	c, ok := a.contexts[id]
	return c, ok
}

// Contexts returns the accepted presentation contexts in no particular order.
func (a *Association) Contexts() []Context {
	out := make([]Context, 0, len(a.contexts))
	for _, c := range a.contexts {
		out = append(out, c)
	}
	return out
}

// RemoteAddr is the peer's transport address.
func (a *Association) RemoteAddr() net.Addr { return a.conn.RemoteAddr() }

// Conn is the transport connection, for inspection (TLS state, addresses).
func (a *Association) Conn() net.Conn { return a.conn }

// MaxPDVData is the largest PDV payload one P-DATA-TF to the peer can carry.
func (a *Association) MaxPDVData() int { return int(a.maxSend) - pdu.PDVHeaderLen }

// NextPDV returns the next presentation data value sent by the peer. Its
// Data is valid until the next call. It returns ErrReleaseRequested when the
// peer asks to release the association, and otherwise an error that ends the
// association: *AbortError, ErrPeerClosed, ErrIdleTimeout.
func (a *Association) NextPDV() (pdu.PDV, error) {
	for len(a.pdvs) == 0 {
		if a.state != Sta6 && a.state != Sta7 {
			return pdu.PDV{}, a.closedErr()
		}
		a.step()
		switch a.ind {
		case indPData:
			a.pdvs = a.indPDU.(*pdu.PDataTF).Items
		case indRelease:
			return pdu.PDV{}, ErrReleaseRequested
		case indNone:
		default:
			return pdu.PDV{}, a.finish()
		}
	}
	v := a.pdvs[0]
	a.pdvs = a.pdvs[1:]
	return v, nil
}

// Send sends data as one DIMSE command or data set on presentation context
// pcid, fragmented into as many PDVs as the peer's maximum length requires,
// the last one flagged as such. Each PDU goes out in a single write.
func (a *Association) Send(pcid byte, command bool, data []byte) error {
	max := a.MaxPDVData()
	for {
		n := min(len(data), max)
		last := n == len(data)
		frame := a.pdataFrame(n)
		copy(frame[pdu.HeaderLen+pdu.PDVHeaderLen:], data[:n])
		if err := a.sendFrame(frame, pcid, command, last, n); err != nil {
			return err
		}
		data = data[n:]
		if last {
			return nil
		}
	}
}

// SendFrom streams r as one command or data set on presentation context
// pcid. Data is read straight into the PDU buffer; one byte is read ahead
// so that the last fragment is flagged without knowing the length in
// advance. An error from r leaves the message incomplete: the caller must
// abort the association.
func (a *Association) SendFrom(pcid byte, command bool, r io.Reader) (int64, error) {
	max := a.MaxPDVData()
	var total int64
	var carry [1]byte
	haveCarry := false
	for {
		frame := a.pdataFrame(max)
		data := frame[pdu.HeaderLen+pdu.PDVHeaderLen:]
		n := 0
		if haveCarry {
			data[0] = carry[0]
			n = 1
		}
		m, err := io.ReadFull(r, data[n:])
		n += m
		last := false
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			last = true
		case err != nil:
			return total, fmt.Errorf("read data for P-DATA: %w", err)
		default:
			k, perr := io.ReadFull(r, carry[:])
			switch {
			case perr == io.EOF:
				last = true
			case perr != nil:
				return total, fmt.Errorf("read data for P-DATA: %w", perr)
			}
			haveCarry = k == 1
		}
		if err := a.sendFrame(frame[:pdu.HeaderLen+pdu.PDVHeaderLen+n], pcid, command, last, n); err != nil {
			return total, err
		}
		total += int64(n)
		if last {
			return total, nil
		}
	}
}

// pdataFrame returns a buffer for one P-DATA-TF PDU with one PDV of n bytes.
func (a *Association) pdataFrame(n int) []byte {
	size := pdu.HeaderLen + pdu.PDVHeaderLen + n
	if cap(a.frame) < size {
		a.frame = make([]byte, size)
	}
	return a.frame[:size]
}

func (a *Association) sendFrame(frame []byte, pcid byte, command, last bool, n int) error {
	pdu.PutPDataHeader(frame, pdu.PDVHeaderLen+n)
	pdu.AppendPDVHeader(frame[pdu.HeaderLen:pdu.HeaderLen], pcid, command, last, n)
	return a.fire(Evt9, input{raw: frame})
}

// Release asks the peer to release the association and waits for its
// answer, handling a release collision (PS3.8 §7.2) on either side. P-DATA
// that arrives meanwhile is discarded. The transport is closed afterwards.
func (a *Association) Release() error {
	if err := a.fire(Evt11, input{p: pdu.ReleaseRQ{}}); err != nil {
		return err
	}
	for a.state != Sta1 && a.state != Sta13 {
		a.step()
		switch a.ind {
		case indRelease:
			if a.state == Sta9 {
				if err := a.fire(Evt14, input{p: pdu.ReleaseRP{}}); err != nil {
					return a.fail(err)
				}
			}
		case indReleaseConfirm:
			if a.state == Sta12 {
				if err := a.fire(Evt14, input{p: pdu.ReleaseRP{}}); err != nil {
					return a.fail(err)
				}
			}
		}
	}
	if err := a.finish(); err != nil && !errors.Is(err, ErrClosed) {
		return err
	}
	return nil
}

// RespondRelease answers the peer's A-RELEASE-RQ (after NextPDV returned
// ErrReleaseRequested) and waits for the peer to close the transport.
func (a *Association) RespondRelease() error {
	if err := a.fire(Evt14, input{p: pdu.ReleaseRP{}}); err != nil {
		return err
	}
	if err := a.finish(); err != nil && !errors.Is(err, ErrClosed) {
		return err
	}
	return nil
}

// Abort sends an A-ABORT (service-user source) and closes the transport once
// the peer has closed it or the ARTIM timer expired. cause is recorded as
// the reason this side aborted.
func (a *Association) Abort(cause error) error {
	a.abortWith(pdu.AbortSourceUser, pdu.AbortNotSpecified, cause)
	err := a.finish()
	var ae *AbortError
	if errors.As(err, &ae) && !ae.Remote {
		return nil
	}
	return err
}

func (a *Association) abortWith(src pdu.AbortSource, reason pdu.AbortReason, cause error) {
	if _, err := lookup(Evt15, a.state); err != nil {
		a.closeTransport()
		a.state = Sta1
		return
	}
	if err := a.fire(Evt15, input{p: &pdu.Abort{Source: src, Reason: reason}, cause: cause}); err != nil {
		_ = a.fail(err)
	}
}

// step reads one PDU, or learns that none came, and fires the event.
func (a *Association) step() {
	a.ind, a.indPDU = indNone, nil
	if a.state == Sta13 && a.desynced {
		a.discardUntilClosed()
		return
	}
	if err := a.setReadDeadline(); err != nil {
		a.onReadError(err)
		return
	}
	p, err := a.rd.Next()
	if err != nil {
		a.onReadError(err)
		return
	}
	ev := eventOf(p)
	in := input{p: p}
	if ev == Evt10 && (a.state == Sta6 || a.state == Sta7) {
		if err := a.checkContexts(p.(*pdu.PDataTF)); err != nil {
			ev, in.cause = Evt19, err
		}
	}
	if a.state == Sta2 && ev != Evt6 && ev != Evt16 {
		in.cause = &unexpectedPDUError{p.Type(), a.state}
	}
	if err := a.fire(ev, in); err != nil {
		_ = a.fail(err)
	}
}

func eventOf(p pdu.PDU) Event {
	switch p.Type() {
	case pdu.TypeAssociateAC:
		return Evt3
	case pdu.TypeAssociateRJ:
		return Evt4
	case pdu.TypeAssociateRQ:
		return Evt6
	case pdu.TypePDataTF:
		return Evt10
	case pdu.TypeReleaseRQ:
		return Evt12
	case pdu.TypeReleaseRP:
		return Evt13
	case pdu.TypeAbort:
		return Evt16
	}
	return Evt19
}

// checkContexts refuses PDVs on presentation contexts that were not accepted.
func (a *Association) checkContexts(p *pdu.PDataTF) error {
	for _, v := range p.Items {
		if _, ok := a.contexts[v.ContextID]; !ok {
			return fmt.Errorf("PDV on presentation context %d, which was not accepted", v.ContextID)
		}
	}
	return nil
}

// readDeadline is when the current wait for the peer ends.
func (a *Association) setReadDeadline() error {
	var d time.Time
	switch {
	case !a.artimAt.IsZero():
		d = a.artimAt
	case a.state == Sta5 || a.state == Sta7 || a.state == Sta10 || a.state == Sta11:
		d = time.Now().Add(a.cfg.ARTIM)
	case a.cfg.IdleTimeout > 0:
		d = time.Now().Add(a.cfg.IdleTimeout)
	}
	if err := a.conn.SetReadDeadline(d); err != nil {
		return err
	}
	if cause := a.interrupted(); cause != nil {
		return &interruptError{cause}
	}
	return nil
}

type interruptError struct{ cause error }

func (e *interruptError) Error() string { return "interrupted: " + e.cause.Error() }
func (e *interruptError) Unwrap() error { return e.cause }

// onReadError turns a failed read into the event it stands for.
func (a *Association) onReadError(err error) {
	var tooLarge *pdu.TooLargeError
	var malformed *pdu.MalformedError
	var ne net.Error
	var intr *interruptError
	if errors.As(err, &ne) && ne.Timeout() || errors.As(err, &intr) {
		if cause := a.interrupted(); cause != nil {
			a.abortOnInterrupt(cause)
			return
		}
		switch {
		case !a.artimAt.IsZero():
			if a.err == nil && a.state == Sta2 {
				a.err = fmt.Errorf("%w: no A-ASSOCIATE-RQ within %s", ErrTimeout, a.cfg.ARTIM)
			}
			a.mustFire(Evt18, input{})
		case a.state == Sta6:
			a.abortWith(pdu.AbortSourceUser, pdu.AbortNotSpecified, fmt.Errorf("%w: nothing received for %s", ErrIdleTimeout, a.cfg.IdleTimeout))
		default:
			a.abortWith(pdu.AbortSourceUser, pdu.AbortNotSpecified, fmt.Errorf("%w in %s after %s", ErrTimeout, a.state, a.cfg.ARTIM))
		}
		return
	}
	if errors.Is(err, pdu.ErrUnknownType) || errors.As(err, &tooLarge) || errors.As(err, &malformed) {
		a.desynced = true
		a.mustFire(Evt19, input{cause: err})
		return
	}
	cause := ErrPeerClosed
	if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		cause = fmt.Errorf("%w: %w", ErrPeerClosed, err)
	}
	a.mustFire(Evt17, input{cause: cause})
}

// abortOnInterrupt aborts after Watch's context ended or Close was called.
// The peer gets a bounded moment to read the A-ABORT; its closing is not
// awaited.
func (a *Association) abortOnInterrupt(cause error) {
	if errors.Is(cause, ErrClosed) {
		a.closeTransport()
		a.state = Sta1
		a.setErr(cause)
		return
	}
	_ = a.conn.SetWriteDeadline(time.Now().Add(time.Second))
	if _, err := lookup(Evt15, a.state); err == nil {
		ab := &pdu.Abort{Source: pdu.AbortSourceUser}
		if b, err := ab.AppendTo(nil); err == nil {
			_, _ = a.conn.Write(b)
		}
	}
	a.setErr(&AbortError{Source: pdu.AbortSourceUser, Cause: cause})
	a.closeTransport()
	a.state = Sta1
}

// mustFire fires an event that the table admits in every state where it can
// occur; an error means the connection is unusable.
func (a *Association) mustFire(ev Event, in input) {
	if err := a.fire(ev, in); err != nil {
		_ = a.fail(err)
	}
}

// discardUntilClosed is Sta13 after a PDU could not be parsed: the stream
// has lost its framing, so bytes are discarded until the peer closes the
// transport (Evt17) or the ARTIM timer expires (Evt18).
func (a *Association) discardUntilClosed() {
	if err := a.setReadDeadline(); err != nil {
		a.onReadError(err)
		return
	}
	_, err := io.Copy(io.Discard, a.conn)
	if err == nil {
		err = io.EOF
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		a.mustFire(Evt18, input{})
		return
	}
	a.mustFire(Evt17, input{cause: ErrPeerClosed})
}

// finish drives a terminating association (Sta13) to Sta1 and returns why
// it ended; nil means it was released normally.
func (a *Association) finish() error {
	for a.state != Sta1 {
		if a.state != Sta13 {
			a.abortWith(pdu.AbortSourceUser, pdu.AbortNotSpecified, fmt.Errorf("unexpected state %s while finishing", a.state))
			continue
		}
		a.step()
	}
	a.closeTransport()
	return a.err
}

func (a *Association) closedErr() error {
	if a.err != nil {
		return a.err
	}
	return ErrClosed
}

// fail ends the association after a transport failure: the connection is
// closed and err recorded.
func (a *Association) fail(err error) error {
	a.setErr(err)
	a.closeTransport()
	a.state = Sta1
	return a.err
}

func (a *Association) setErr(err error) {
	if a.err == nil {
		a.err = err
	}
}

func (a *Association) closeTransport() {
	if err := a.conn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		a.cfg.Logger.Debug("close transport", "err", err)
	}
}

// fire runs the action that PS3.8 Table 9-10 gives for ev in the current state.
func (a *Association) fire(ev Event, in input) error {
	act, err := lookup(ev, a.state)
	if err != nil {
		return err
	}
	from := a.state
	next, err := actions[act](a, &in)
	a.state = next
	t := Transition{From: from, Event: ev, Action: actionNames[act], To: next}
	if a.cfg.Trace != nil {
		a.cfg.Trace(t)
	}
	if ev != Evt9 && ev != Evt10 {
		a.cfg.Logger.Debug("upper layer transition", "transition", t.String())
	}
	return err
}

// send encodes p and writes it with a single write.
func (a *Association) send(p pdu.PDU) error {
	b, err := p.AppendTo(a.wbuf[:0])
	if err != nil {
		return fmt.Errorf("encode %s: %w", p.Type(), err)
	}
	a.wbuf = b
	return a.write(b)
}

func (a *Association) write(b []byte) error {
	if err := a.conn.SetWriteDeadline(time.Now().Add(a.cfg.WriteTimeout)); err != nil {
		return fmt.Errorf("set write deadline: %w", err)
	}
	if cause := a.interrupted(); cause != nil {
		return &interruptError{cause}
	}
	if _, err := a.conn.Write(b); err != nil {
		if cause := a.interrupted(); cause != nil {
			return &interruptError{cause}
		}
		return fmt.Errorf("write to %s: %w", a.conn.RemoteAddr(), err)
	}
	return nil
}

func (a *Association) startARTIM() { a.artimAt = time.Now().Add(a.cfg.ARTIM) }
func (a *Association) stopARTIM()  { a.artimAt = time.Time{} }
