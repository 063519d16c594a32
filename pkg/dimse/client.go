package dimse

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/pacsflow/pacsflow/pkg/dimse/pdu"
	"github.com/pacsflow/pacsflow/pkg/dimse/ul"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

// Proposal is one presentation context a Client proposes.
type Proposal struct {
	AbstractSyntax   string
	TransferSyntaxes []string
}

// ClientConfig configures a Client.
type ClientConfig struct {
	CallingAE string
	CalledAE  string
	// UserIdentity is sent in the A-ASSOCIATE-RQ when set.
	UserIdentity *pdu.UserIdentity
	// TLS, when set, runs the association over DICOM TLS.
	TLS *tls.Config
	UL  ul.Config
}

// Validate checks the configuration.
func (c *ClientConfig) Validate() error {
	if err := pdu.ValidateAETitle(c.CallingAE); err != nil {
		return fmt.Errorf("calling AE title: %w", err)
	}
	if err := pdu.ValidateAETitle(c.CalledAE); err != nil {
		return fmt.Errorf("called AE title: %w", err)
	}
	return nil
}

// Client is the requestor side of one association: a C-ECHO and C-STORE
// service class user. It is not safe for concurrent use; open one Client
// per concurrent association.
type Client struct {
	a     *ul.Association
	c     conn
	msgID uint16
}

// ErrNoContext reports that the peer accepted no presentation context for
// the SOP class and transfer syntax of a request.
var ErrNoContext = errors.New("no accepted presentation context")

// Dial connects to addr and negotiates an association proposing the given
// presentation contexts (IDs are assigned in order: 1, 3, 5, ...). ctx
// bounds the connection and negotiation only.
func Dial(ctx context.Context, addr string, cfg ClientConfig, proposals []Proposal) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(proposals) == 0 || len(proposals) > 128 {
		return nil, fmt.Errorf("%d presentation contexts proposed; 1 to 128 are possible", len(proposals))
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	if cfg.TLS != nil {
		tc := tls.Client(conn, cfg.TLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			_ = conn.Close()
			return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
		}
		conn = tc
	}
	rq := &pdu.AssociateRQ{
		ProtocolVersion:    pdu.ProtocolVersion,
		CalledAE:           cfg.CalledAE,
		CallingAE:          cfg.CallingAE,
		ApplicationContext: pdu.ApplicationContextName,
		UserInfo: pdu.UserInformation{
			ImplementationClassUID:    uid.ImplementationClassUID,
			ImplementationVersionName: uid.ImplementationVersionName,
			UserIdentity:              cfg.UserIdentity,
		},
	}
	for i, p := range proposals {
		rq.PresentationContexts = append(rq.PresentationContexts, pdu.PresentationContextRQ{
			ID: byte(2*i + 1), AbstractSyntax: p.AbstractSyntax, TransferSyntaxes: p.TransferSyntaxes,
		})
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	a, err := ul.Request(context.Background(), conn, cfg.UL, rq)
	if !stop() && err != nil {
		return nil, fmt.Errorf("associate with %s: %w", addr, errors.Join(ctx.Err(), err))
	}
	if err != nil {
		return nil, fmt.Errorf("associate with %s: %w", addr, err)
	}
	return &Client{a: a, c: newConn(a)}, nil
}

// Association exposes the negotiated association (contexts, limits).
func (c *Client) Association() *ul.Association { return c.a }

// contextFor finds an accepted context for the SOP class and, if ts is
// not empty, that transfer syntax.
func (c *Client) contextFor(sopClass, ts string) (ul.Context, error) {
	for _, pc := range c.a.Contexts() {
		if pc.AbstractSyntax == sopClass && (ts == "" || pc.TransferSyntax == ts) {
			return pc, nil
		}
	}
	if ts == "" {
		return ul.Context{}, fmt.Errorf("%w for %s", ErrNoContext, uid.Name(sopClass))
	}
	return ul.Context{}, fmt.Errorf("%w for %s in %s", ErrNoContext, uid.Name(sopClass), uid.Name(ts))
}

func (c *Client) nextID() uint16 {
	c.msgID++
	if c.msgID == 0 {
		c.msgID = 1
	}
	return c.msgID
}

// Echo sends a C-ECHO-RQ and returns the response status.
func (c *Client) Echo(ctx context.Context) (Status, error) {
	pc, err := c.contextFor(uid.Verification, "")
	if err != nil {
		return 0, err
	}
	defer c.a.Watch(ctx)()
	id := c.nextID()
	if err := c.c.writeCommand(pc.ID, NewCEchoRQ(id)); err != nil {
		return 0, fmt.Errorf("send C-ECHO-RQ: %w", err)
	}
	rsp, err := c.response(CEchoRSP, id)
	if err != nil {
		return 0, err
	}
	st, _ := rsp.Status()
	return st, nil
}

// Store sends one C-STORE-RQ with the data set read from data, which must
// be encoded in transferSyntax, and returns the peer's result. An error
// means the association is no longer usable.
func (c *Client) Store(ctx context.Context, req StoreRequest, transferSyntax string, data io.Reader) (Result, error) {
	pc, err := c.contextFor(req.AffectedSOPClassUID, transferSyntax)
	if err != nil {
		return Result{}, err
	}
	defer c.a.Watch(ctx)()
	req.MessageID = c.nextID()
	if err := c.c.writeCommand(pc.ID, NewCStoreRQ(req)); err != nil {
		return Result{}, fmt.Errorf("send C-STORE-RQ: %w", err)
	}
	if _, err := c.a.SendFrom(pc.ID, false, &evenReader{r: data, deflated: transferSyntax == uid.DeflatedExplicitVRLittleEndian}); err != nil {
		_ = c.a.Abort(err)
		return Result{}, fmt.Errorf("send data set of %s: %w", req.AffectedSOPInstanceUID, err)
	}
	rsp, err := c.response(CStoreRSP, req.MessageID)
	if err != nil {
		return Result{}, err
	}
	st, _ := rsp.Status()
	comment, _ := rsp.String(TagErrorComment)
	return Result{Status: st, Comment: comment}, nil
}

// evenReader makes a data set's length even, as PS3.5 §7 requires: a
// deflated data set is a byte stream and gets the trailing NUL of PS3.5
// §A.5; any other encoding of odd length is broken, and sending stops with
// an error rather than deliver it.
type evenReader struct {
	r        io.Reader
	deflated bool
	n        int64
	padded   bool
}

// ErrOddLength reports a native data set of odd length.
var ErrOddLength = errors.New("data set has an odd length")

func (e *evenReader) Read(p []byte) (int, error) {
	if e.padded {
		return 0, io.EOF
	}
	n, err := e.r.Read(p)
	e.n += int64(n)
	if err != io.EOF || e.n%2 == 0 {
		return n, err
	}
	if !e.deflated {
		return n, fmt.Errorf("%w (%d bytes)", ErrOddLength, e.n)
	}
	if n < len(p) {
		p[n] = 0
		e.padded = true
		return n + 1, nil
	}
	return n, nil
}

// response reads the response to message id.
func (c *Client) response(field, id uint16) (*Command, error) {
	_, rsp, err := c.c.readCommand()
	if err != nil {
		if errors.Is(err, ErrProtocol) || errors.Is(err, ErrMalformedCommand) {
			_ = c.a.Abort(err)
		}
		return nil, fmt.Errorf("read response: %w", err)
	}
	got, _ := rsp.Uint16(TagMessageIDBeingRespondedTo)
	_, hasStatus := rsp.Status()
	if rsp.Field() != field || got != id || !hasStatus || rsp.HasDataSet() {
		err := fmt.Errorf("%w: expected response 0x%04X to message %d, got 0x%04X to %d", ErrProtocol, field, id, rsp.Field(), got)
		_ = c.a.Abort(err)
		return nil, err
	}
	return rsp, nil
}

// Release releases the association.
func (c *Client) Release() error { return c.a.Release() }

// Abort aborts the association.
func (c *Client) Abort() error { return c.a.Abort(errors.New("aborted by the local user")) }

// ClientTLSConfig returns a client configuration for DICOM TLS: the server
// is verified against caFile (the system roots when empty), and the client
// presents certFile/keyFile when they are set.
func ClientTLSConfig(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if caFile != "" {
		pool, err := loadCertPool(caFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("load TLS key pair: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

func loadCertPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read CA certificates: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no PEM certificate in %s", file)
	}
	return pool, nil
}
