package ul

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/pacsflow/pacsflow/pkg/dimse/pdu"
)

const ctUID = "1.2.840.10008.5.1.4.1.1.2"

func testRQ() *pdu.AssociateRQ {
	return &pdu.AssociateRQ{
		ProtocolVersion:    pdu.ProtocolVersion,
		CalledAE:           "SCP",
		CallingAE:          "SCU",
		ApplicationContext: pdu.ApplicationContextName,
		PresentationContexts: []pdu.PresentationContextRQ{
			{ID: 1, AbstractSyntax: ctUID, TransferSyntaxes: []string{"1.2.840.10008.1.2.1"}},
			{ID: 3, AbstractSyntax: "1.2.3.4", TransferSyntaxes: []string{"1.2.840.10008.1.2"}},
		},
	}
}

// acceptAll accepts the first context and rejects the others.
func acceptAll(_ context.Context, rq *pdu.AssociateRQ) (*pdu.AssociateAC, *pdu.AssociateRJ) {
	ac := &pdu.AssociateAC{ProtocolVersion: 1, CalledAE: rq.CalledAE, CallingAE: rq.CallingAE, ApplicationContext: pdu.ApplicationContextName}
	for i, pc := range rq.PresentationContexts {
		r := pdu.PresentationContextAC{ID: pc.ID, Result: pdu.ResultAbstractSyntaxNotSupported}
		if i == 0 {
			r = pdu.PresentationContextAC{ID: pc.ID, Result: pdu.ResultAcceptance, TransferSyntax: pc.TransferSyntaxes[0]}
		}
		ac.PresentationContexts = append(ac.PresentationContexts, r)
	}
	return ac, nil
}

// pair connects a requestor and an acceptor over loopback TCP.
func pair(t *testing.T, scu, scp Config) (*Association, *Association) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		a   *Association
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- res{nil, err}
			return
		}
		a, err := Accept(context.Background(), c, scp, acceptAll)
		ch <- res{a, err}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	req, err := Request(context.Background(), c, scu, testRQ())
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatalf("accept: %v", r.err)
	}
	t.Cleanup(func() { req.Close(); r.a.Close() })
	return req, r.a
}

func TestEstablishAndRelease(t *testing.T) {
	scu, scp := pair(t, Config{MaxPDataLength: 16384}, Config{MaxPDataLength: 32768})
	if scu.State() != Sta6 || scp.State() != Sta6 {
		t.Fatalf("states %s/%s, want Sta6", scu.State(), scp.State())
	}
	if scu.MaxPDVData() != 32768-pdu.PDVHeaderLen || scp.MaxPDVData() != 16384-pdu.PDVHeaderLen {
		t.Errorf("max PDV data %d/%d: each side must send within the other's maximum", scu.MaxPDVData(), scp.MaxPDVData())
	}
	if _, ok := scu.Context(1); !ok {
		t.Error("requestor lacks accepted context 1")
	}
	if _, ok := scp.Context(3); ok {
		t.Error("rejected context 3 is usable")
	}
	done := make(chan error, 1)
	go func() {
		_, err := scp.NextPDV()
		if !errors.Is(err, ErrReleaseRequested) {
			done <- err
			return
		}
		done <- scp.RespondRelease()
	}()
	if err := scu.Release(); err != nil {
		t.Fatalf("release: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("acceptor: %v", err)
	}
	if scu.State() != Sta1 || scp.State() != Sta1 {
		t.Fatalf("states %s/%s after release, want Sta1", scu.State(), scp.State())
	}
}

// Both sides ask for release at once: PS3.8 §7.2 release collision, which
// runs through Sta9/Sta11 on the requestor and Sta10/Sta12 on the acceptor.
func TestReleaseCollision(t *testing.T) {
	var scuTrace, scpTrace []Transition
	var mu sync.Mutex
	rec := func(dst *[]Transition) func(Transition) {
		return func(tr Transition) { mu.Lock(); *dst = append(*dst, tr); mu.Unlock() }
	}
	scu, scp := pair(t, Config{Trace: rec(&scuTrace)}, Config{Trace: rec(&scpTrace)})
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, a := range []*Association{scu, scp} {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = a.Release() }()
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("release errors: requestor %v, acceptor %v", errs[0], errs[1])
	}
	visited := func(tr []Transition, st State) bool {
		for _, x := range tr {
			if x.To == st {
				return true
			}
		}
		return false
	}
	if !visited(scuTrace, Sta9) || !visited(scuTrace, Sta11) {
		t.Errorf("requestor did not pass Sta9 and Sta11: %v", scuTrace)
	}
	if !visited(scpTrace, Sta10) || !visited(scpTrace, Sta12) {
		t.Errorf("acceptor did not pass Sta10 and Sta12: %v", scpTrace)
	}
}

func TestAbortBothWays(t *testing.T) {
	for _, requestorAborts := range []bool{true, false} {
		scu, scp := pair(t, Config{}, Config{})
		from, to := scu, scp
		if !requestorAborts {
			from, to = scp, scu
		}
		done := make(chan error, 1)
		go func() { _, err := to.NextPDV(); done <- err }()
		if err := from.Abort(errors.New("test")); err != nil {
			t.Fatalf("abort: %v", err)
		}
		var ae *AbortError
		if err := <-done; !errors.As(err, &ae) || !ae.Remote || ae.Source != pdu.AbortSourceUser {
			t.Fatalf("requestorAborts=%v: peer got %v, want a remote service-user AbortError", requestorAborts, err)
		}
		if from.State() != Sta1 || to.State() != Sta1 {
			t.Fatalf("states %s/%s after abort, want Sta1", from.State(), to.State())
		}
	}
}

// A connection that never sends an A-ASSOCIATE-RQ is closed when ARTIM expires.
func TestARTIMExpiresWithoutRequest(t *testing.T) {
	client, server := tcpPair(t)
	start := time.Now()
	_, err := Accept(context.Background(), server, Config{ARTIM: 100 * time.Millisecond}, acceptAll)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("Accept: %v, want ErrTimeout", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("ARTIM of 100ms took %s", time.Since(start))
	}
	if _, err := client.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("client read %v, want EOF: the acceptor must close the transport", err)
	}
}

func TestIdleTimeoutAborts(t *testing.T) {
	scu, scp := pair(t, Config{}, Config{IdleTimeout: 100 * time.Millisecond})
	_, err := scp.NextPDV()
	if !errors.Is(err, ErrIdleTimeout) {
		t.Fatalf("NextPDV: %v, want ErrIdleTimeout", err)
	}
	var ae *AbortError
	if _, err := scu.NextPDV(); !errors.As(err, &ae) || !ae.Remote {
		t.Fatalf("requestor got %v, want the acceptor's A-ABORT", err)
	}
}

// Data larger than the peer's maximum length is split into PDVs, the last
// flagged, whether sent from a slice or streamed from a reader whose length
// is an exact multiple of the fragment size.
func TestFragmentation(t *testing.T) {
	const maxLen = 1024
	scu, scp := pair(t, Config{}, Config{MaxPDataLength: maxLen})
	frag := maxLen - pdu.PDVHeaderLen
	for _, size := range []int{0, 1, frag - 1, frag, frag + 1, 3 * frag, 3*frag + 7} {
		data := bytes.Repeat([]byte{0xAB, 0xCD, 0xEF}, size/3+1)[:size]
		for _, streamed := range []bool{false, true} {
			errc := make(chan error, 1)
			go func() {
				if streamed {
					_, err := scu.SendFrom(1, false, bytes.NewReader(data))
					errc <- err
				} else {
					errc <- scu.Send(1, false, data)
				}
			}()
			var got []byte
			pdvs := 0
			for {
				v, err := scp.NextPDV()
				if err != nil {
					t.Fatalf("size %d: %v", size, err)
				}
				pdvs++
				if len(v.Data) > frag || v.Command || v.ContextID != 1 {
					t.Fatalf("size %d: PDV of %d bytes (max %d), command=%v, context %d", size, len(v.Data), frag, v.Command, v.ContextID)
				}
				got = append(got, v.Data...)
				if v.Last {
					break
				}
			}
			if err := <-errc; err != nil {
				t.Fatalf("size %d streamed=%v: send: %v", size, streamed, err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("size %d streamed=%v: received %d bytes that differ from the %d sent", size, streamed, len(got), len(data))
			}
			if want := max(1, (size+frag-1)/frag); pdvs != want {
				t.Errorf("size %d streamed=%v: %d PDVs, want %d", size, streamed, pdvs, want)
			}
		}
	}
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// Bad input after establishment, written by a hand-driven requestor, makes
// the acceptor send an A-ABORT with the matching reason (PS3.8 Table 9-26).
func TestProtocolErrorsAbort(t *testing.T) {
	rqBytes, err := pdu.Encode(testRQ())
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		after  []byte // sent once the association is established
		reason pdu.AbortReason
	}{
		{"unknown PDU type", []byte{0x47, 0x45, 0x54, 0x20, 0x2F, 0x20}, pdu.AbortUnrecognizedPDU},
		{"P-DATA beyond the maximum length", []byte{0x04, 0, 0x7F, 0xFF, 0xFF, 0xFF}, pdu.AbortInvalidPDUParameterValue},
		{"PDV item length 1", []byte{0x04, 0, 0, 0, 0, 5, 0, 0, 0, 1, 1}, pdu.AbortInvalidPDUParameterValue},
		{"release request of wrong length", []byte{0x05, 0, 0, 0, 0, 2, 0, 0}, pdu.AbortInvalidPDUParameterValue},
		{"second A-ASSOCIATE-RQ", rqBytes, pdu.AbortUnexpectedPDU},
		{"PDV on a rejected context", []byte{0x04, 0, 0, 0, 0, 7, 0, 0, 0, 3, 3, 3, 0}, pdu.AbortUnexpectedPDUParameter},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			client, server := tcpPair(t)
			accepted := make(chan *Association, 1)
			go func() {
				a, err := Accept(context.Background(), server, Config{ARTIM: time.Second}, acceptAll)
				if err != nil {
					t.Errorf("accept: %v", err)
				}
				accepted <- a
			}()
			if _, err := client.Write(rqBytes); err != nil {
				t.Fatal(err)
			}
			rd := pdu.NewReader(client)
			if p, err := rd.Next(); err != nil || p.Type() != pdu.TypeAssociateAC {
				t.Fatalf("expected A-ASSOCIATE-AC, got %v, %v", p, err)
			}
			a := <-accepted
			if _, err := client.Write(tc.after); err != nil {
				t.Fatal(err)
			}
			errc := make(chan error, 1)
			go func() { _, err := a.NextPDV(); errc <- err }()
			p, err := rd.Next()
			if err != nil {
				t.Fatalf("reading the acceptor's answer: %v", err)
			}
			if ab, ok := p.(*pdu.Abort); !ok || ab.Reason != tc.reason {
				t.Fatalf("acceptor sent %v, want A-ABORT with reason %s", p, tc.reason)
			}
			client.Close() // what a peer does on A-ABORT; the acceptor then leaves Sta13
			var ae *AbortError
			if err := <-errc; !errors.As(err, &ae) || ae.Remote || ae.Reason != tc.reason || ae.Source != pdu.AbortSourceProvider {
				t.Fatalf("NextPDV: %v, want a local provider abort with reason %s", err, tc.reason)
			}
		})
	}
}

func TestPeerVanishes(t *testing.T) {
	scu, scp := pair(t, Config{}, Config{})
	if err := scu.Send(1, false, []byte{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	scu.Close()
	if v, err := scp.NextPDV(); err != nil || len(v.Data) != 3 {
		t.Fatalf("first PDV: %v %v", v, err)
	}
	if _, err := scp.NextPDV(); !errors.Is(err, ErrPeerClosed) {
		t.Fatalf("NextPDV after the peer closed: %v, want ErrPeerClosed", err)
	}
}

func TestWatchAbortsOnCancel(t *testing.T) {
	scu, scp := pair(t, Config{}, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	scp.Watch(ctx)
	done := make(chan error, 1)
	go func() { _, err := scp.NextPDV(); done <- err }()
	cancel()
	var ae *AbortError
	if err := <-done; !errors.As(err, &ae) || ae.Remote || !errors.Is(err, context.Canceled) {
		t.Fatalf("NextPDV: %v, want a local abort caused by the context", err)
	}
	if _, err := scu.NextPDV(); !errors.As(err, &ae) || !ae.Remote {
		t.Fatalf("requestor got %v, want the A-ABORT", err)
	}
}

func TestRejectedRequest(t *testing.T) {
	client, server := tcpPair(t)
	go func() {
		_, _ = Accept(context.Background(), server, Config{}, func(context.Context, *pdu.AssociateRQ) (*pdu.AssociateAC, *pdu.AssociateRJ) {
			return nil, &pdu.AssociateRJ{Result: pdu.RejectTransient, Source: pdu.RejectSourceProviderPresenta, Reason: pdu.RejectLocalLimitExceeded}
		})
	}()
	_, err := Request(context.Background(), client, Config{}, testRQ())
	var rj *RejectedError
	if !errors.As(err, &rj) || !rj.Remote || rj.Result != pdu.RejectTransient || rj.Reason != pdu.RejectLocalLimitExceeded {
		t.Fatalf("Request: %v, want the transient rejection", err)
	}
}

// writeRecorder checks that every Write carries exactly one whole PDU:
// split writes stall on Nagle's algorithm and delayed ACKs.
type writeRecorder struct {
	net.Conn
	mu     sync.Mutex
	writes int
	bad    []string
}

func (w *writeRecorder) Write(b []byte) (int, error) {
	w.mu.Lock()
	w.writes++
	if len(b) < pdu.HeaderLen || int(b[2])<<24|int(b[3])<<16|int(b[4])<<8|int(b[5]) != len(b)-pdu.HeaderLen {
		w.bad = append(w.bad, fmt.Sprintf("write of %d bytes is not one PDU", len(b)))
	}
	w.mu.Unlock()
	return w.Conn.Write(b)
}

func TestEachPDUInOneWrite(t *testing.T) {
	client, server := tcpPair(t)
	rec := &writeRecorder{Conn: client}
	accepted := make(chan *Association, 1)
	go func() {
		a, err := Accept(context.Background(), server, Config{MaxPDataLength: 4096}, acceptAll)
		if err != nil {
			t.Error(err)
		}
		accepted <- a
	}()
	scu, err := Request(context.Background(), rec, Config{}, testRQ())
	if err != nil {
		t.Fatal(err)
	}
	scp := <-accepted
	go func() {
		for {
			if _, err := scp.NextPDV(); err != nil {
				if errors.Is(err, ErrReleaseRequested) {
					_ = scp.RespondRelease()
				}
				return
			}
		}
	}()
	if err := scu.Send(1, true, make([]byte, 10000)); err != nil {
		t.Fatal(err)
	}
	if _, err := scu.SendFrom(1, false, bytes.NewReader(make([]byte, 50000))); err != nil {
		t.Fatal(err)
	}
	if err := scu.Release(); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.bad) > 0 || rec.writes < 17 {
		t.Fatalf("%d writes, problems: %v", rec.writes, rec.bad)
	}
}
