package ul

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pacsflow/pacsflow/pkg/dimse/pdu"
)

// standardTable is PS3.8 Table 9-10 as printed: for each event, the action
// in each state where the standard gives one. It is written out separately
// from the implementation's table so that each can check the other.
const standardTable = `
Evt1:  Sta1=AE-1
Evt2:  Sta4=AE-2
Evt3:  Sta2=AA-1 Sta3=AA-8 Sta5=AE-3 Sta6=AA-8 Sta7=AA-8 Sta8=AA-8 Sta9=AA-8 Sta10=AA-8 Sta11=AA-8 Sta12=AA-8 Sta13=AA-6
Evt4:  Sta2=AA-1 Sta3=AA-8 Sta5=AE-4 Sta6=AA-8 Sta7=AA-8 Sta8=AA-8 Sta9=AA-8 Sta10=AA-8 Sta11=AA-8 Sta12=AA-8 Sta13=AA-6
Evt5:  Sta1=AE-5
Evt6:  Sta2=AE-6 Sta3=AA-8 Sta5=AA-8 Sta6=AA-8 Sta7=AA-8 Sta8=AA-8 Sta9=AA-8 Sta10=AA-8 Sta11=AA-8 Sta12=AA-8 Sta13=AA-7
Evt7:  Sta3=AE-7
Evt8:  Sta3=AE-8
Evt9:  Sta6=DT-1 Sta8=AR-7
Evt10: Sta2=AA-1 Sta3=AA-8 Sta5=AA-8 Sta6=DT-2 Sta7=AR-6 Sta8=AA-8 Sta9=AA-8 Sta10=AA-8 Sta11=AA-8 Sta12=AA-8 Sta13=AA-6
Evt11: Sta6=AR-1
Evt12: Sta2=AA-1 Sta3=AA-8 Sta5=AA-8 Sta6=AR-2 Sta7=AR-8 Sta8=AA-8 Sta9=AA-8 Sta10=AA-8 Sta11=AA-8 Sta12=AA-8 Sta13=AA-6
Evt13: Sta2=AA-1 Sta3=AA-8 Sta5=AA-8 Sta6=AA-8 Sta7=AR-3 Sta8=AA-8 Sta9=AA-8 Sta10=AR-10 Sta11=AR-3 Sta12=AA-8 Sta13=AA-6
Evt14: Sta8=AR-4 Sta9=AR-9 Sta12=AR-4
Evt15: Sta3=AA-1 Sta4=AA-2 Sta5=AA-1 Sta6=AA-1 Sta7=AA-1 Sta8=AA-1 Sta9=AA-1 Sta10=AA-1 Sta11=AA-1 Sta12=AA-1
Evt16: Sta2=AA-2 Sta3=AA-3 Sta5=AA-3 Sta6=AA-3 Sta7=AA-3 Sta8=AA-3 Sta9=AA-3 Sta10=AA-3 Sta11=AA-3 Sta12=AA-3 Sta13=AA-2
Evt17: Sta2=AA-5 Sta3=AA-4 Sta4=AA-4 Sta5=AA-4 Sta6=AA-4 Sta7=AA-4 Sta8=AA-4 Sta9=AA-4 Sta10=AA-4 Sta11=AA-4 Sta12=AA-4 Sta13=AR-5
Evt18: Sta2=AA-2 Sta13=AA-2
Evt19: Sta2=AA-1 Sta3=AA-8 Sta5=AA-8 Sta6=AA-8 Sta7=AA-8 Sta8=AA-8 Sta9=AA-8 Sta10=AA-8 Sta11=AA-8 Sta12=AA-8 Sta13=AA-7
`

func parseStandardTable(t *testing.T) map[Event]map[State]string {
	t.Helper()
	out := map[Event]map[State]string{}
	for _, line := range strings.Split(strings.TrimSpace(standardTable), "\n") {
		f := strings.Fields(line)
		var ev int
		if _, err := fmt.Sscanf(f[0], "Evt%d:", &ev); err != nil {
			t.Fatalf("bad table line %q", line)
		}
		row := map[State]string{}
		for _, cell := range f[1:] {
			var st int
			var act string
			if _, err := fmt.Sscanf(strings.Replace(cell, "=", " ", 1), "Sta%d %s", &st, &act); err != nil {
				t.Fatalf("bad cell %q", cell)
			}
			row[State(st)] = act
		}
		out[Event(ev)] = row
	}
	return out
}

// effect is what an action must do, from PS3.8 Tables 9-6 to 9-9.
type effect struct {
	next  State
	sends pdu.Type // 0: sends nothing
	close bool     // closes the transport connection
	artim int      // +1 started, -1 stopped, 0 unchanged
}

var actionEffects = map[string]effect{
	"AE-1":  {next: Sta4},
	"AE-2":  {next: Sta5, sends: pdu.TypeAssociateRQ},
	"AE-3":  {next: Sta6},
	"AE-4":  {next: Sta1, close: true},
	"AE-5":  {next: Sta2, artim: +1},
	"AE-6":  {next: Sta3, artim: -1}, // the acceptable case; the other is tested apart
	"AE-7":  {next: Sta6, sends: pdu.TypeAssociateAC},
	"AE-8":  {next: Sta13, sends: pdu.TypeAssociateRJ, artim: +1},
	"DT-1":  {next: Sta6, sends: pdu.TypePDataTF},
	"DT-2":  {next: Sta6},
	"AR-1":  {next: Sta7, sends: pdu.TypeReleaseRQ},
	"AR-2":  {next: Sta8},
	"AR-3":  {next: Sta1, close: true},
	"AR-4":  {next: Sta13, sends: pdu.TypeReleaseRP, artim: +1},
	"AR-5":  {next: Sta1, artim: -1},
	"AR-6":  {next: Sta7},
	"AR-7":  {next: Sta8, sends: pdu.TypePDataTF},
	"AR-8":  {}, // Sta9 or Sta10 by role: tested apart
	"AR-9":  {next: Sta11, sends: pdu.TypeReleaseRP},
	"AR-10": {next: Sta12},
	"AA-1":  {next: Sta13, sends: pdu.TypeAbort, artim: +1},
	"AA-2":  {next: Sta1, close: true, artim: -1},
	"AA-3":  {next: Sta1, close: true},
	"AA-4":  {next: Sta1},
	"AA-5":  {next: Sta1, artim: -1},
	"AA-6":  {next: Sta13},
	"AA-7":  {next: Sta13, sends: pdu.TypeAbort},
	"AA-8":  {next: Sta13, sends: pdu.TypeAbort, artim: +1},
}

// fakeConn records what is written and whether it was closed.
type fakeConn struct {
	net.Conn
	out    bytes.Buffer
	closed bool
}

func (c *fakeConn) Write(b []byte) (int, error) {
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.out.Write(b)
}
func (c *fakeConn) Close() error                     { c.closed = true; return nil }
func (c *fakeConn) SetDeadline(time.Time) error      { return nil }
func (c *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fakeConn) SetWriteDeadline(time.Time) error { return nil }
func (c *fakeConn) RemoteAddr() net.Addr             { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 104} }

// inputFor builds the input an event carries.
func inputFor(ev Event) input {
	rq := &pdu.AssociateRQ{ProtocolVersion: 1, CalledAE: "SCP", CallingAE: "SCU", ApplicationContext: pdu.ApplicationContextName}
	frame := make([]byte, pdu.HeaderLen+pdu.PDVHeaderLen+1)
	pdu.PutPDataHeader(frame, pdu.PDVHeaderLen+1)
	pdu.AppendPDVHeader(frame[pdu.HeaderLen:pdu.HeaderLen], 1, true, true, 1)
	switch ev {
	case Evt2:
		return input{p: rq}
	case Evt3, Evt7:
		return input{p: &pdu.AssociateAC{ProtocolVersion: 1, CalledAE: "SCP", CallingAE: "SCU"}}
	case Evt4, Evt8:
		return input{p: &pdu.AssociateRJ{Result: pdu.RejectPermanent, Source: pdu.RejectSourceUser, Reason: pdu.RejectNoReason}}
	case Evt6:
		return input{p: rq}
	case Evt9:
		return input{raw: frame}
	case Evt10:
		return input{p: &pdu.PDataTF{Items: []pdu.PDV{{ContextID: 1, Command: true, Last: true, Data: []byte{0}}}}}
	case Evt11, Evt12:
		return input{p: pdu.ReleaseRQ{}}
	case Evt13, Evt14:
		return input{p: pdu.ReleaseRP{}}
	case Evt15:
		return input{p: &pdu.Abort{Source: pdu.AbortSourceUser}, cause: errors.New("local abort")}
	case Evt16:
		return input{p: &pdu.Abort{Source: pdu.AbortSourceProvider, Reason: pdu.AbortUnexpectedPDU}}
	case Evt17:
		return input{cause: ErrPeerClosed}
	case Evt19:
		return input{cause: &pdu.MalformedError{Type: pdu.TypePDataTF, Reason: "test"}}
	}
	return input{}
}

// machineIn returns an association in state st over a fake connection.
func machineIn(st State, requestor bool, artimRunning bool) (*Association, *fakeConn, *[]Transition) {
	fc := &fakeConn{}
	var trace []Transition
	a := newAssociation(fc, Config{Trace: func(t Transition) { trace = append(trace, t) }}, requestor)
	a.state = st
	if artimRunning {
		a.startARTIM()
	}
	return a, fc, &trace
}

// TestTransitionTable runs every cell of PS3.8 Table 9-10, the empty cells
// included, and checks the action, the next state and its effects.
func TestTransitionTable(t *testing.T) {
	std := parseStandardTable(t)
	for ev := Evt1; ev <= numEvents; ev++ {
		for st := Sta1; st <= numStates; st++ {
			want, listed := std[ev][st]
			t.Run(fmt.Sprintf("%s_%s", ev, st), func(t *testing.T) {
				a, fc, trace := machineIn(st, true, st == Sta2 || st == Sta13)
				err := a.fire(ev, inputFor(ev))
				if !listed {
					if ev.fromPDU() {
						checkAction(t, *trace, "AA-8")
						checkEffect(t, a, fc, actionEffects["AA-8"], true)
						return
					}
					if !errors.Is(err, ErrInvalidPrimitive) || a.state != st || len(*trace) != 0 {
						t.Fatalf("unlisted %s in %s: err=%v state=%s trace=%v; want ErrInvalidPrimitive and no transition", ev, st, err, a.state, *trace)
					}
					return
				}
				if err != nil {
					t.Fatalf("fire: %v", err)
				}
				checkAction(t, *trace, want)
				if want == "AR-8" {
					if a.state != Sta9 {
						t.Fatalf("AR-8 for the requestor went to %s, want Sta9", a.state)
					}
					return
				}
				checkEffect(t, a, fc, actionEffects[want], st == Sta2 || st == Sta13)
			})
		}
	}
}

func checkAction(t *testing.T, trace []Transition, want string) {
	t.Helper()
	if len(trace) != 1 || trace[0].Action != want {
		t.Fatalf("transitions %v, want one with action %s", trace, want)
	}
}

func checkEffect(t *testing.T, a *Association, fc *fakeConn, want effect, artimWasRunning bool) {
	t.Helper()
	if a.state != want.next {
		t.Errorf("next state %s, want %s", a.state, want.next)
	}
	sent := pdu.Type(0)
	if fc.out.Len() > 0 {
		sent = pdu.Type(fc.out.Bytes()[0])
		if _, err := pdu.Decode(fc.out.Bytes()); err != nil {
			t.Errorf("sent bytes do not decode as one PDU: %v", err)
		}
	}
	if sent != want.sends {
		t.Errorf("sent %v, want %v", sent, want.sends)
	}
	if fc.closed != want.close && !(want.next == Sta1 && fc.closed) {
		t.Errorf("transport closed=%v, want %v", fc.closed, want.close)
	}
	running := !a.artimAt.IsZero()
	switch {
	case want.artim > 0 && !running:
		t.Errorf("ARTIM not started")
	case want.artim < 0 && running:
		t.Errorf("ARTIM not stopped")
	case want.artim == 0 && running != artimWasRunning:
		t.Errorf("ARTIM running=%v, want unchanged (%v)", running, artimWasRunning)
	}
}

// TestTransitionTableMatchesStandard checks the implementation's table
// against the standard's text cell by cell.
func TestTransitionTableMatchesStandard(t *testing.T) {
	std := parseStandardTable(t)
	for ev := Evt1; ev <= numEvents; ev++ {
		for st := Sta1; st <= numStates; st++ {
			got := actionNames[table[ev][st]]
			if got != std[ev][st] {
				t.Errorf("%s in %s: table has %q, standard %q", ev, st, got, std[ev][st])
			}
		}
	}
}

func TestAR8ByRole(t *testing.T) {
	for _, tc := range []struct {
		requestor bool
		want      State
	}{{true, Sta9}, {false, Sta10}} {
		a, _, _ := machineIn(Sta7, tc.requestor, false)
		if err := a.fire(Evt12, inputFor(Evt12)); err != nil {
			t.Fatal(err)
		}
		if a.state != tc.want {
			t.Errorf("requestor=%v: release collision went to %s, want %s", tc.requestor, a.state, tc.want)
		}
	}
}

// AE-6 rejects a request the service-provider cannot accept: a protocol
// version without bit 0.
func TestAE6RejectsUnsupportedProtocolVersion(t *testing.T) {
	a, fc, _ := machineIn(Sta2, false, true)
	in := inputFor(Evt6)
	in.p.(*pdu.AssociateRQ).ProtocolVersion = 2
	if err := a.fire(Evt6, in); err != nil {
		t.Fatal(err)
	}
	if a.state != Sta13 {
		t.Fatalf("state %s, want Sta13", a.state)
	}
	p, err := pdu.Decode(fc.out.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	rj, ok := p.(*pdu.AssociateRJ)
	if !ok || rj.Source != pdu.RejectSourceProviderACSE || rj.Reason != pdu.RejectProtocolVersionNotSupported {
		t.Fatalf("sent %v, want A-ASSOCIATE-RJ protocol version not supported", p)
	}
	if a.artimAt.IsZero() {
		t.Error("ARTIM not started after the reject")
	}
}
