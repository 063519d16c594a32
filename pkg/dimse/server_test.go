package dimse

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pacsflow/pacsflow/pkg/dimse/pdu"
	"github.com/pacsflow/pacsflow/pkg/dimse/ul"
	"github.com/pacsflow/pacsflow/pkg/uid"
)

// received is what a recording handler saw of one C-STORE.
type received struct {
	req StoreIndication
	sha [32]byte
	n   int64
	err error // the error Read returned, if not io.EOF
}

// recorder is a StoreHandler that hashes each data set as it streams in.
type recorder struct {
	mu   sync.Mutex
	got  []received
	then func(req *StoreIndication) (Result, error) // what to answer; nil: Success
}

func (r *recorder) HandleStore(ctx context.Context, req *StoreIndication, data io.Reader) (Result, error) {
	h := sha256.New()
	n, err := io.Copy(h, data)
	rec := received{req: *req, n: n, err: err}
	copy(rec.sha[:], h.Sum(nil))
	r.mu.Lock()
	r.got = append(r.got, rec)
	r.mu.Unlock()
	if err != nil {
		return Result{}, err
	}
	if r.then != nil {
		return r.then(req)
	}
	return Result{Status: StatusSuccess}, nil
}

func (r *recorder) all() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.got...)
}

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// startServer runs a Server on a loopback port until the test ends.
func startServer(t testing.TB, cfg ServerConfig) (*Server, string) {
	t.Helper()
	if cfg.AETitle == "" {
		cfg.AETitle = "TESTSCP"
	}
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		_ = srv.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return srv, ln.Addr().String()
}

var ctProposal = Proposal{AbstractSyntax: uid.CTImageStorage, TransferSyntaxes: []string{uid.ExplicitVRLittleEndian}}
var echoProposal = Proposal{AbstractSyntax: uid.Verification, TransferSyntaxes: []string{uid.ImplicitVRLittleEndian}}

func dial(t testing.TB, addr string, props ...Proposal) *Client {
	t.Helper()
	c, err := Dial(context.Background(), addr, ClientConfig{CallingAE: "TESTSCU", CalledAE: "TESTSCP"}, props)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.a.Close() })
	return c
}

// pattern is a deterministic pseudo-random data set of n bytes, produced on
// the fly so that the sender holds none of it either.
type pattern struct {
	n, off int64
}

func (p *pattern) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	b = b[:min(int64(len(b)), p.n-p.off)]
	for i := range b {
		x := uint64(p.off + int64(i))
		b[i] = byte(x*2654435761>>13 ^ x)
	}
	p.off += int64(len(b))
	return len(b), nil
}

func patternSHA(n int64) [32]byte {
	h := sha256.New()
	_, _ = io.Copy(h, &pattern{n: n})
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

func TestEchoAndStore(t *testing.T) {
	rec := &recorder{}
	_, addr := startServer(t, ServerConfig{Store: rec})
	c := dial(t, addr, echoProposal, ctProposal)
	st, err := c.Echo(context.Background())
	if err != nil || st != StatusSuccess {
		t.Fatalf("echo: %v %v", st, err)
	}
	sizes := []int64{0, 2, 1 << 10, 3<<20 + 18}
	for i, n := range sizes {
		req := StoreRequest{AffectedSOPClassUID: uid.CTImageStorage, AffectedSOPInstanceUID: fmt.Sprintf("1.2.3.%d", i), Priority: PriorityHigh}
		res, err := c.Store(context.Background(), req, uid.ExplicitVRLittleEndian, &pattern{n: n})
		if err != nil || res.Status != StatusSuccess {
			t.Fatalf("store %d bytes: %v %v", n, res, err)
		}
	}
	if err := c.Release(); err != nil {
		t.Fatal(err)
	}
	got := rec.all()
	if len(got) != len(sizes) {
		t.Fatalf("handler saw %d stores, want %d", len(got), len(sizes))
	}
	for i, g := range got {
		if g.err != nil || g.n != sizes[i] || g.sha != patternSHA(sizes[i]) {
			t.Errorf("store %d: %d bytes, err %v, digest match %v", i, g.n, g.err, g.sha == patternSHA(sizes[i]))
		}
		if g.req.TransferSyntaxUID != uid.ExplicitVRLittleEndian || g.req.Priority != PriorityHigh ||
			g.req.Association.CallingAE != "TESTSCU" || g.req.Association.CalledAE != "TESTSCP" || g.req.Association.ID == "" {
			t.Errorf("store %d: indication %+v %+v", i, g.req, g.req.Association)
		}
	}
}

// Data sets have even length (PS3.5 §7): a deflated one of odd length is
// padded with a NUL (PS3.5 §A.5), any other is refused before it is complete.
func TestOddLengthDataSets(t *testing.T) {
	rec := &recorder{}
	_, addr := startServer(t, ServerConfig{Store: rec})
	deflated := Proposal{AbstractSyntax: uid.CTImageStorage, TransferSyntaxes: []string{uid.DeflatedExplicitVRLittleEndian}}
	c := dial(t, addr, ctProposal, deflated)
	res, err := c.Store(context.Background(), StoreRequest{AffectedSOPClassUID: uid.CTImageStorage, AffectedSOPInstanceUID: "1.2.1"}, uid.DeflatedExplicitVRLittleEndian, bytes.NewReader([]byte{1, 2, 3}))
	if err != nil || res.Status != StatusSuccess {
		t.Fatalf("deflated store: %v %v", res, err)
	}
	if g := rec.all()[0]; g.n != 4 || g.sha != sha256.Sum256([]byte{1, 2, 3, 0}) {
		t.Fatalf("received %d bytes, want the 3 sent and a NUL", g.n)
	}
	_, err = c.Store(context.Background(), StoreRequest{AffectedSOPClassUID: uid.CTImageStorage, AffectedSOPInstanceUID: "1.2.2"}, uid.ExplicitVRLittleEndian, &pattern{n: 1<<20 + 1})
	if !errors.Is(err, ErrOddLength) {
		t.Fatalf("odd native data set: %v, want ErrOddLength", err)
	}
	waitFor(t, func() bool { return len(rec.all()) == 2 })
	if g := rec.all()[1]; g.err == nil {
		t.Fatal("the receiver saw a complete data set")
	}
}

// A data set far larger than memory the server could spend streams
// through: the handler sees it as it arrives, and allocation stays small.
func TestStoreStreamsLargeDataSet(t *testing.T) {
	rec := &recorder{}
	_, addr := startServer(t, ServerConfig{Store: rec})
	c := dial(t, addr, ctProposal)
	const size = 256 << 20
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	res, err := c.Store(context.Background(), StoreRequest{AffectedSOPClassUID: uid.CTImageStorage, AffectedSOPInstanceUID: "1.2.3"}, uid.ExplicitVRLittleEndian, &pattern{n: size})
	runtime.ReadMemStats(&after)
	if err != nil || res.Status != StatusSuccess {
		t.Fatalf("store: %v %v", res, err)
	}
	if g := rec.all()[0]; g.n != size || g.sha != patternSHA(size) {
		t.Fatalf("handler got %d bytes", g.n)
	}
	// Client and server share this process: both sides together.
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
		t.Errorf("sending and receiving %d MiB allocated %d MiB: the data set is being buffered", size>>20, alloc>>20)
	}
}

func TestHandlerFailuresNeverSucceed(t *testing.T) {
	cases := []struct {
		name    string
		handler StoreFunc
		want    Status
	}{
		{"plain error", func(ctx context.Context, r *StoreIndication, d io.Reader) (Result, error) {
			_, _ = io.Copy(io.Discard, d)
			return Result{}, errors.New("disk on fire")
		}, StatusProcessingFailure},
		{"status error", func(ctx context.Context, r *StoreIndication, d io.Reader) (Result, error) {
			_, _ = io.Copy(io.Discard, d)
			return Result{}, Fail(StatusOutOfResources, errors.New("broker unavailable"))
		}, StatusOutOfResources},
		{"status error claiming success", func(ctx context.Context, r *StoreIndication, d io.Reader) (Result, error) {
			_, _ = io.Copy(io.Discard, d)
			return Result{}, Fail(StatusSuccess, errors.New("confused"))
		}, StatusProcessingFailure},
		{"panic", func(ctx context.Context, r *StoreIndication, d io.Reader) (Result, error) {
			panic("boom")
		}, StatusProcessingFailure},
		{"success without reading", func(ctx context.Context, r *StoreIndication, d io.Reader) (Result, error) {
			return Result{Status: StatusSuccess}, nil
		}, StatusProcessingFailure},
		{"early failure without reading", func(ctx context.Context, r *StoreIndication, d io.Reader) (Result, error) {
			return Result{}, Fail(StatusDataSetMismatch, errors.New("not for us"))
		}, StatusDataSetMismatch},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, addr := startServer(t, ServerConfig{Store: tc.handler})
			c := dial(t, addr, echoProposal, ctProposal)
			res, err := c.Store(context.Background(), StoreRequest{AffectedSOPClassUID: uid.CTImageStorage, AffectedSOPInstanceUID: "1.2.3"}, uid.ExplicitVRLittleEndian, &pattern{n: 1 << 20})
			if err != nil {
				t.Fatal(err)
			}
			if res.Status != tc.want {
				t.Fatalf("status %s, want %s", res.Status, tc.want)
			}
			if res.Comment == "" {
				t.Error("failure without an error comment")
			}
			// The association is still usable.
			if st, err := c.Echo(context.Background()); err != nil || st != StatusSuccess {
				t.Fatalf("echo after failure: %v %v", st, err)
			}
		})
	}
}

// rawAssociate opens a connection and negotiates by hand, for tests that
// must send what a well-behaved client never would.
func rawAssociate(t *testing.T, addr string, rq *pdu.AssociateRQ) (net.Conn, *pdu.Reader, pdu.PDU) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	b, err := pdu.Encode(rq)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(b); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	rd := pdu.NewReader(conn)
	p, err := rd.Next()
	if err != nil {
		t.Fatalf("reading the answer to A-ASSOCIATE-RQ: %v", err)
	}
	return conn, rd, p
}

func requestFor(called, calling string, pcs ...pdu.PresentationContextRQ) *pdu.AssociateRQ {
	return &pdu.AssociateRQ{
		ProtocolVersion: pdu.ProtocolVersion, CalledAE: called, CallingAE: calling,
		ApplicationContext: pdu.ApplicationContextName, PresentationContexts: pcs,
		UserInfo: pdu.UserInformation{MaxLength: pdu.Uint32(16384), ImplementationClassUID: "1.2.3"},
	}
}

var ctContext = pdu.PresentationContextRQ{ID: 1, AbstractSyntax: uid.CTImageStorage, TransferSyntaxes: []string{uid.ExplicitVRLittleEndian}}

func wantReject(t *testing.T, p pdu.PDU, result pdu.RejectResult, src pdu.RejectSource, reason byte) {
	t.Helper()
	rj, ok := p.(*pdu.AssociateRJ)
	if !ok {
		t.Fatalf("got %v, want A-ASSOCIATE-RJ", p)
	}
	if rj.Result != result || rj.Source != src || rj.Reason != reason {
		t.Fatalf("got %v, want result %d source %d reason %d", rj, result, src, reason)
	}
}

func TestAssociationRejections(t *testing.T) {
	allow, err := ParseAllowList("TESTSCU,REMOTE@10.0.0.0/8")
	if err != nil {
		t.Fatal(err)
	}
	_, addr := startServer(t, ServerConfig{Store: &recorder{}, Access: allow})

	_, _, p := rawAssociate(t, addr, requestFor("WRONGAE", "TESTSCU", ctContext))
	wantReject(t, p, pdu.RejectPermanent, pdu.RejectSourceUser, pdu.RejectCalledAENotRecognized)

	_, _, p = rawAssociate(t, addr, requestFor("TESTSCP", "STRANGER", ctContext))
	wantReject(t, p, pdu.RejectPermanent, pdu.RejectSourceUser, pdu.RejectCallingAENotRecognized)

	_, _, p = rawAssociate(t, addr, requestFor("TESTSCP", "REMOTE", ctContext))
	wantReject(t, p, pdu.RejectPermanent, pdu.RejectSourceUser, pdu.RejectCallingAENotRecognized)

	rq := requestFor("TESTSCP", "TESTSCU", ctContext)
	rq.ApplicationContext = "1.2.3.4"
	_, _, p = rawAssociate(t, addr, rq)
	wantReject(t, p, pdu.RejectPermanent, pdu.RejectSourceUser, pdu.RejectApplicationContextNotSupp)
}

func TestMaxAssociations(t *testing.T) {
	_, addr := startServer(t, ServerConfig{Store: &recorder{}, MaxAssociations: 2})
	dial(t, addr, ctProposal)
	dial(t, addr, ctProposal)
	_, _, p := rawAssociate(t, addr, requestFor("TESTSCP", "TESTSCU", ctContext))
	wantReject(t, p, pdu.RejectTransient, pdu.RejectSourceProviderPresenta, pdu.RejectLocalLimitExceeded)
}

func TestPresentationContextResults(t *testing.T) {
	_, addr := startServer(t, ServerConfig{Store: &recorder{}})
	rq := requestFor("TESTSCP", "TESTSCU",
		pdu.PresentationContextRQ{ID: 1, AbstractSyntax: "1.2.840.10008.5.1.4.1.2.2.1", TransferSyntaxes: []string{uid.ImplicitVRLittleEndian}}, // C-FIND
		pdu.PresentationContextRQ{ID: 3, AbstractSyntax: uid.CTImageStorage, TransferSyntaxes: []string{"1.2.3.4.5"}},
		pdu.PresentationContextRQ{ID: 5, AbstractSyntax: uid.MRImageStorage, TransferSyntaxes: []string{uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian}},
		pdu.PresentationContextRQ{ID: 7, AbstractSyntax: uid.CTImageStorage, TransferSyntaxes: []string{"1.2.840.10008.1.2.4.90"}},
		pdu.PresentationContextRQ{ID: 9, AbstractSyntax: "1.2.3.4.5.6", TransferSyntaxes: []string{uid.ImplicitVRLittleEndian}},
	)
	rq.UserInfo.RoleSelections = []pdu.RoleSelection{{SOPClassUID: uid.CTImageStorage, SCU: true, SCP: true}}
	rq.UserInfo.AsyncOpsWindow = &pdu.AsyncOpsWindow{MaxInvoked: 5, MaxPerformed: 5}
	_, _, p := rawAssociate(t, addr, rq)
	ac, ok := p.(*pdu.AssociateAC)
	if !ok {
		t.Fatalf("got %v, want A-ASSOCIATE-AC", p)
	}
	want := []pdu.PresentationContextAC{
		{ID: 1, Result: pdu.ResultAbstractSyntaxNotSupported},
		{ID: 3, Result: pdu.ResultTransferSyntaxNotSupported},
		{ID: 5, Result: pdu.ResultAcceptance, TransferSyntax: uid.ExplicitVRLittleEndian},
		{ID: 7, Result: pdu.ResultAcceptance, TransferSyntax: "1.2.840.10008.1.2.4.90"},
		{ID: 9, Result: pdu.ResultAbstractSyntaxNotSupported},
	}
	if fmt.Sprint(ac.PresentationContexts) != fmt.Sprint(want) {
		t.Errorf("contexts\n got %v\nwant %v", ac.PresentationContexts, want)
	}
	if rs := ac.UserInfo.RoleSelections; len(rs) != 1 || !rs[0].SCU || rs[0].SCP {
		t.Errorf("role selection %+v: want SCU accepted, SCP refused", rs)
	}
	if w := ac.UserInfo.AsyncOpsWindow; w == nil || w.MaxInvoked != 1 || w.MaxPerformed != 1 {
		t.Errorf("async window %+v, want 1/1", w)
	}
	if ac.UserInfo.MaxLength == nil || ac.UserInfo.ImplementationClassUID != uid.ImplementationClassUID {
		t.Errorf("user information lacks maximum length or implementation class: %+v", ac.UserInfo)
	}
}

func TestUnknownSOPClassSwitch(t *testing.T) {
	_, addr := startServer(t, ServerConfig{Store: &recorder{}, AcceptUnknownSOPClasses: true})
	_, _, p := rawAssociate(t, addr, requestFor("TESTSCP", "TESTSCU",
		pdu.PresentationContextRQ{ID: 1, AbstractSyntax: "1.2.3.4.5.6", TransferSyntaxes: []string{uid.ImplicitVRLittleEndian}},
		pdu.PresentationContextRQ{ID: 3, AbstractSyntax: "../etc/passwd", TransferSyntaxes: []string{uid.ImplicitVRLittleEndian}}))
	ac := p.(*pdu.AssociateAC)
	if ac.PresentationContexts[0].Result != pdu.ResultAcceptance || ac.PresentationContexts[1].Result != pdu.ResultAbstractSyntaxNotSupported {
		t.Fatalf("contexts %v: want the unknown UID accepted and the non-UID refused", ac.PresentationContexts)
	}
}

type identityCheck struct{ seen chan *Peer }

func (i identityCheck) Authorize(_ context.Context, p *Peer) ([]byte, error) {
	i.seen <- p
	if p.UserIdentity == nil || string(p.UserIdentity.Primary) != "alice" || string(p.UserIdentity.Secondary) != "secret" {
		return nil, &Rejection{RJ: pdu.AssociateRJ{Result: pdu.RejectPermanent, Source: pdu.RejectSourceUser, Reason: pdu.RejectNoReason}, Reason: "bad credentials"}
	}
	return []byte("welcome"), nil
}

func TestUserIdentityHook(t *testing.T) {
	hook := identityCheck{seen: make(chan *Peer, 2)}
	_, addr := startServer(t, ServerConfig{Store: &recorder{}, Access: hook})
	for _, tc := range []struct {
		password string
		ok       bool
	}{{"secret", true}, {"wrong", false}} {
		rq := requestFor("TESTSCP", "TESTSCU", ctContext)
		rq.UserInfo.UserIdentity = &pdu.UserIdentity{Type: pdu.IdentityUsernamePassword, PositiveResponseRequested: true, Primary: []byte("alice"), Secondary: []byte(tc.password)}
		_, _, p := rawAssociate(t, addr, rq)
		peer := <-hook.seen
		if peer.CallingAE != "TESTSCU" || peer.Addr == nil {
			t.Errorf("hook saw %+v", peer)
		}
		if !tc.ok {
			wantReject(t, p, pdu.RejectPermanent, pdu.RejectSourceUser, pdu.RejectNoReason)
			continue
		}
		ac, ok := p.(*pdu.AssociateAC)
		if !ok || ac.UserInfo.UserIdentityResponse == nil || string(ac.UserInfo.UserIdentityResponse.ServerResponse) != "welcome" {
			t.Fatalf("got %v, want an A-ASSOCIATE-AC with the server response", p)
		}
	}
}

// A peer that vanishes in the middle of a data set: the handler's Read
// fails, nothing is reported stored, and the server serves the next peer.
func TestPeerVanishesMidDataSet(t *testing.T) {
	rec := &recorder{}
	_, addr := startServer(t, ServerConfig{Store: rec})
	conn, _, p := rawAssociate(t, addr, requestFor("TESTSCP", "TESTSCU", ctContext))
	if _, ok := p.(*pdu.AssociateAC); !ok {
		t.Fatalf("got %v", p)
	}
	cmd := NewCStoreRQ(StoreRequest{MessageID: 1, AffectedSOPClassUID: uid.CTImageStorage, AffectedSOPInstanceUID: "1.2.3"}).Encode()
	first, _ := (&pdu.PDataTF{Items: []pdu.PDV{{ContextID: 1, Command: true, Last: true, Data: cmd}}}).AppendTo(nil)
	part, _ := (&pdu.PDataTF{Items: []pdu.PDV{{ContextID: 1, Data: make([]byte, 4000)}}}).AppendTo(nil)
	if _, err := conn.Write(append(first, part...)); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	waitFor(t, func() bool { return len(rec.all()) == 1 })
	g := rec.all()[0]
	if g.err == nil || g.n != 4000 {
		t.Fatalf("handler read %d bytes with error %v; want 4000 bytes then an error", g.n, g.err)
	}
	c := dial(t, addr, ctProposal)
	if res, err := c.Store(context.Background(), StoreRequest{AffectedSOPClassUID: uid.CTImageStorage, AffectedSOPInstanceUID: "1.2.4"}, uid.ExplicitVRLittleEndian, &pattern{n: 10}); err != nil || res.Status != StatusSuccess {
		t.Fatalf("next store: %v %v", res, err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Bad input from ANCHORS.md's list: each gets an A-ABORT or is dropped, the
// server keeps serving, and no goroutine is left behind.
func TestMalformedInputKeepsServing(t *testing.T) {
	baseline := runtime.NumGoroutine()
	rec := &recorder{}
	srv, addr := startServer(t, ServerConfig{Store: rec, UL: ul.Config{ARTIM: 500 * time.Millisecond}})
	rqBytes, _ := pdu.Encode(requestFor("TESTSCP", "TESTSCU", ctContext))
	cmd := NewCStoreRQ(StoreRequest{MessageID: 1, AffectedSOPClassUID: uid.CTImageStorage, AffectedSOPInstanceUID: "1.2.3"}).Encode()
	pdata := func(items ...pdu.PDV) []byte { b, _ := (&pdu.PDataTF{Items: items}).AppendTo(nil); return b }
	cases := []struct {
		name      string
		before    []byte // sent instead of a valid A-ASSOCIATE-RQ
		after     []byte // sent after establishment
		wantAbort bool
	}{
		{name: "PDU length 0xFFFFFFFF", before: []byte{1, 0, 0xFF, 0xFF, 0xFF, 0xFF}, wantAbort: true},
		{name: "HTTP request", before: []byte("GET / HTTP/1.1\r\nHost: pacs\r\n\r\n"), wantAbort: true},
		{name: "max length sub-item of 3 bytes", before: badMaxLength(t), wantAbort: true},
		{name: "truncated A-ASSOCIATE-RQ", before: rqBytes[:40]},
		{name: "release request of wrong length", after: []byte{5, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0}, wantAbort: true},
		{name: "abort of wrong length", after: []byte{7, 0, 0, 0, 0, 2, 0, 0}, wantAbort: true},
		{name: "PDV length 0", after: []byte{4, 0, 0, 0, 0, 4, 0, 0, 0, 0}, wantAbort: true},
		{name: "PDV beyond the PDU", after: []byte{4, 0, 0, 0, 0, 8, 0, 0, 0, 0x40, 1, 3, 0, 0}, wantAbort: true},
		{name: "second A-ASSOCIATE-RQ", after: rqBytes, wantAbort: true},
		{name: "data set before a command", after: pdata(pdu.PDV{ContextID: 1, Last: true, Data: []byte{1, 2}}), wantAbort: true},
		{name: "garbage command", after: pdata(pdu.PDV{ContextID: 1, Command: true, Last: true, Data: []byte{1, 2, 3, 4, 5, 6, 7, 8, 9}}), wantAbort: true},
		{name: "command then command", after: append(pdata(pdu.PDV{ContextID: 1, Command: true, Last: true, Data: cmd}), pdata(pdu.PDV{ContextID: 1, Command: true, Last: true, Data: cmd})...), wantAbort: true},
		{name: "abort mid data set", after: append(pdata(pdu.PDV{ContextID: 1, Command: true, Last: true, Data: cmd}, pdu.PDV{ContextID: 1, Data: []byte{1, 2}}), 7, 0, 0, 0, 0, 4, 0, 0, 0, 0)},
		{name: "release mid data set", after: append(pdata(pdu.PDV{ContextID: 1, Command: true, Last: true, Data: cmd}, pdu.PDV{ContextID: 1, Data: []byte{1, 2}}), 5, 0, 0, 0, 0, 4, 0, 0, 0, 0), wantAbort: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			rd := pdu.NewReader(conn)
			if tc.before != nil {
				_, _ = conn.Write(tc.before)
			} else {
				_, _ = conn.Write(rqBytes)
				if p, err := rd.Next(); err != nil || p.Type() != pdu.TypeAssociateAC {
					t.Fatalf("association: %v %v", p, err)
				}
				_, _ = conn.Write(tc.after)
			}
			p, err := rd.Next()
			switch {
			case tc.wantAbort && (err != nil || p.Type() != pdu.TypeAbort):
				t.Fatalf("got %v, %v; want A-ABORT", p, err)
			case !tc.wantAbort && err == nil:
				t.Fatalf("got %v; want the connection closed", p)
			}
		})
	}
	c := dial(t, addr, ctProposal)
	if res, err := c.Store(context.Background(), StoreRequest{AffectedSOPClassUID: uid.CTImageStorage, AffectedSOPInstanceUID: "1.2.9"}, uid.ExplicitVRLittleEndian, &pattern{n: 100}); err != nil || res.Status != StatusSuccess {
		t.Fatalf("store after the bad inputs: %v %v", res, err)
	}
	if err := c.Release(); err != nil {
		t.Fatal(err)
	}
	for _, g := range rec.all() {
		if g.req.AffectedSOPInstanceUID == "1.2.3" && g.err == nil {
			t.Errorf("an incomplete data set was read to EOF")
		}
	}
	waitFor(t, func() bool { return srv.ActiveAssociations() == 0 })
	waitFor(t, func() bool { return runtime.NumGoroutine() <= baseline+2 }) // the server's Serve loop and its closer
}

// badMaxLength is an A-ASSOCIATE-RQ whose maximum length sub-item is 3
// bytes long, the input that crashed DCMTK.
func badMaxLength(t *testing.T) []byte {
	rq := requestFor("TESTSCP", "TESTSCU", ctContext)
	rq.UserInfo.MaxLength = nil
	rq.UserInfo.Unknown = []pdu.RawItem{{Type: 0x51, Data: []byte{0, 0, 1}}}
	b, err := pdu.Encode(rq)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Half-open connections beyond the limits are closed without a read.
func TestHalfOpenFlood(t *testing.T) {
	srv, addr := startServer(t, ServerConfig{Store: &recorder{}, MaxAssociations: 2, MaxPending: 3})
	var conns []net.Conn
	for range 10 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	waitFor(t, func() bool { return srv.ActiveAssociations() == 5 })
	// The admitted connections wait for their A-ASSOCIATE-RQ (ARTIM, 30 s);
	// the others are closed: read all at once for a few seconds.
	var closed atomic.Int32
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err == io.EOF {
				closed.Add(1)
			}
		}()
	}
	wg.Wait()
	if closed := closed.Load(); closed != 5 {
		t.Errorf("%d connections closed at once, want the 5 beyond MaxAssociations+MaxPending", closed)
	}
}

func TestUnsupportedCommand(t *testing.T) {
	_, addr := startServer(t, ServerConfig{Store: &recorder{}})
	c := dial(t, addr, ctProposal)
	find := newCommand(CFindRQ, true)
	find.SetUID(TagAffectedSOPClassUID, uid.CTImageStorage)
	find.SetUint16(TagMessageID, 7)
	if err := c.c.writeCommand(1, find.sorted()); err != nil {
		t.Fatal(err)
	}
	if err := c.a.Send(1, false, []byte{8, 0, 0x52, 0, 0, 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
	rsp, err := c.response(CFindRQ|0x8000, 7)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := rsp.Status(); st != StatusUnrecognizedOperation {
		t.Fatalf("status %s, want Unrecognized Operation", st)
	}
}

func TestShutdownWaitsThenAborts(t *testing.T) {
	srv, addr := startServer(t, ServerConfig{Store: &recorder{}})
	c := dial(t, addr, ctProposal)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want the deadline: an idle association was still open", err)
	}
	if _, err := c.Echo(context.Background()); err == nil {
		t.Fatal("echo after forced shutdown succeeded")
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Fatal("server still accepts connections")
	}
}

func TestTLS(t *testing.T) {
	dir := t.TempDir()
	caCert, caKey := writeCA(t, dir)
	writeLeaf(t, dir, "server", caCert, caKey, true)
	writeLeaf(t, dir, "client", caCert, caKey, false)
	serverTLS, err := TLSConfig(filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key"), filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(ServerConfig{AETitle: "TESTSCP", Store: &recorder{}, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(context.Background(), tls.NewListener(ln, serverTLS)) }()
	t.Cleanup(func() { _ = srv.Close() })
	addr := ln.Addr().String()

	withCert, err := ClientTLSConfig(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "client.pem"), filepath.Join(dir, "client.key"), "localhost")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Dial(context.Background(), addr, ClientConfig{CallingAE: "TESTSCU", CalledAE: "TESTSCP", TLS: withCert}, []Proposal{echoProposal})
	if err != nil {
		t.Fatalf("TLS dial: %v", err)
	}
	if st, err := c.Echo(context.Background()); err != nil || st != StatusSuccess {
		t.Fatalf("echo over TLS: %v %v", st, err)
	}
	_ = c.Release()

	noCert, _ := ClientTLSConfig(filepath.Join(dir, "ca.pem"), "", "", "localhost")
	if c, err := Dial(context.Background(), addr, ClientConfig{CallingAE: "TESTSCU", CalledAE: "TESTSCP", TLS: noCert}, []Proposal{echoProposal}); err == nil {
		_, err = c.Echo(context.Background())
		if err == nil {
			t.Fatal("a client without a certificate was served")
		}
	}
	old := withCert.Clone()
	old.MinVersion, old.MaxVersion = tls.VersionTLS11, tls.VersionTLS11
	if _, err := Dial(context.Background(), addr, ClientConfig{CallingAE: "TESTSCU", CalledAE: "TESTSCP", TLS: old}, []Proposal{echoProposal}); err == nil {
		t.Fatal("TLS 1.1 was accepted")
	}
}

func writeCA(t *testing.T, dir string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, "ca.pem"), "CERTIFICATE", der)
	cert, _ := x509.ParseCertificate(der)
	return cert, key
}

func writeLeaf(t *testing.T, dir, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, server bool) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	usage := x509.ExtKeyUsageClientAuth
	if server {
		usage = x509.ExtKeyUsageServerAuth
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name}, DNSNames: []string{"localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{usage}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, name+".pem"), "CERTIFICATE", der)
	kb, _ := x509.MarshalECPrivateKey(key)
	writePEM(t, filepath.Join(dir, name+".key"), "EC PRIVATE KEY", kb)
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestParseAllowList(t *testing.T) {
	for _, bad := range []string{"", "WAYTOOLONGAETITLE123", "CT@notanip", "CT@10.0.0.0/99", "BACK\\SLASH"} {
		if _, err := ParseAllowList(bad); err == nil {
			t.Errorf("ParseAllowList(%q) accepted", bad)
		}
	}
	l, err := ParseAllowList("CT1@10.1.2.0/24, CT1@192.168.0.5 ,MR1")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ae, addr string
		ok       bool
	}{
		{"CT1", "10.1.2.77:4000", true},
		{"CT1", "192.168.0.5:4000", true},
		{"CT1", "192.168.0.6:4000", false},
		{"MR1", "8.8.8.8:1", true},
		{"US1", "10.1.2.3:1", false},
	} {
		ap, _ := net.ResolveTCPAddr("tcp", tc.addr)
		_, err := l.Authorize(context.Background(), &Peer{CallingAE: tc.ae, Addr: ap})
		if (err == nil) != tc.ok {
			t.Errorf("%s from %s: err %v, want ok=%v", tc.ae, tc.addr, err, tc.ok)
		}
	}
}

func BenchmarkEcho(b *testing.B) {
	_, addr := startServer(b, ServerConfig{})
	c := dial(b, addr, echoProposal)
	b.ResetTimer()
	for b.Loop() {
		if st, err := c.Echo(context.Background()); err != nil || st != StatusSuccess {
			b.Fatal(st, err)
		}
	}
}

func BenchmarkStore512KiB(b *testing.B) {
	_, addr := startServer(b, ServerConfig{Store: StoreFunc(func(ctx context.Context, r *StoreIndication, d io.Reader) (Result, error) {
		_, err := io.Copy(io.Discard, d)
		return Result{Status: StatusSuccess}, err
	})})
	c := dial(b, addr, ctProposal)
	data := bytes.Repeat([]byte{1}, 512<<10)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for b.Loop() {
		res, err := c.Store(context.Background(), StoreRequest{AffectedSOPClassUID: uid.CTImageStorage, AffectedSOPInstanceUID: "1.2.3"}, uid.ExplicitVRLittleEndian, bytes.NewReader(data))
		if err != nil || res.Status != StatusSuccess {
			b.Fatal(res, err)
		}
	}
}
