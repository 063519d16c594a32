// Package ul is the DICOM upper layer protocol for TCP/IP (PS3.8 §9): the
// association over a transport connection, driven by the state machine of
// PS3.8 §9.2 written as its transition table, with the ARTIM timer, release
// collisions and A-ABORT in both directions.
//
// The package moves PDUs and presentation data values; it does not know
// DIMSE messages or SOP classes.
package ul

import (
	"fmt"
)

// State is a state of the upper layer state machine, PS3.8 Table 9-1.
type State uint8

// States, with the standard's names.
const (
	Sta1      State = iota + 1 // Idle
	Sta2                       // Transport connection open (awaiting A-ASSOCIATE-RQ PDU)
	Sta3                       // Awaiting local A-ASSOCIATE response primitive
	Sta4                       // Awaiting transport connection opening to complete
	Sta5                       // Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU
	Sta6                       // Association established and ready for data transfer
	Sta7                       // Awaiting A-RELEASE-RP PDU
	Sta8                       // Awaiting local A-RELEASE response primitive
	Sta9                       // Release collision requestor side: awaiting A-RELEASE response primitive
	Sta10                      // Release collision acceptor side: awaiting A-RELEASE-RP PDU
	Sta11                      // Release collision requestor side: awaiting A-RELEASE-RP PDU
	Sta12                      // Release collision acceptor side: awaiting A-RELEASE response primitive
	Sta13                      // Awaiting transport connection close indication
	numStates = Sta13
)

func (s State) String() string { return fmt.Sprintf("Sta%d", uint8(s)) }

// Event is an event of the state machine, PS3.8 Table 9-2.
type Event uint8

// Events, with the standard's names.
const (
	Evt1      Event = iota + 1 // A-ASSOCIATE request (local user)
	Evt2                       // Transport connect confirmation (local transport service)
	Evt3                       // A-ASSOCIATE-AC PDU (received on transport connection)
	Evt4                       // A-ASSOCIATE-RJ PDU (received on transport connection)
	Evt5                       // Transport connection indication (local transport service)
	Evt6                       // A-ASSOCIATE-RQ PDU (received on transport connection)
	Evt7                       // A-ASSOCIATE response primitive (accept)
	Evt8                       // A-ASSOCIATE response primitive (reject)
	Evt9                       // P-DATA request primitive
	Evt10                      // P-DATA-TF PDU (received on transport connection)
	Evt11                      // A-RELEASE request primitive
	Evt12                      // A-RELEASE-RQ PDU (received on transport connection)
	Evt13                      // A-RELEASE-RP PDU (received on transport connection)
	Evt14                      // A-RELEASE response primitive
	Evt15                      // A-ABORT request primitive
	Evt16                      // A-ABORT PDU (received on transport connection)
	Evt17                      // Transport connection closed indication (local transport service)
	Evt18                      // ARTIM timer expired (Association reject/release timer)
	Evt19                      // Unrecognized or invalid PDU received
	numEvents = Evt19
)

func (e Event) String() string { return fmt.Sprintf("Evt%d", uint8(e)) }

// fromPDU reports whether the event is the receipt of a PDU. Only those
// are the peer's doing: a local primitive or transport event in a state
// that does not admit it is a programming error of this side, answered with
// an error rather than an abort.
func (e Event) fromPDU() bool {
	switch e {
	case Evt3, Evt4, Evt6, Evt10, Evt12, Evt13, Evt16, Evt19:
		return true
	}
	return false
}

// Action names of PS3.8 Table 9-6 to 9-9.
const (
	actNone = iota
	actAE1
	actAE2
	actAE3
	actAE4
	actAE5
	actAE6
	actAE7
	actAE8
	actDT1
	actDT2
	actAR1
	actAR2
	actAR3
	actAR4
	actAR5
	actAR6
	actAR7
	actAR8
	actAR9
	actAR10
	actAA1
	actAA2
	actAA3
	actAA4
	actAA5
	actAA6
	actAA7
	actAA8
	numActions
)

var actionNames = [numActions]string{
	"", "AE-1", "AE-2", "AE-3", "AE-4", "AE-5", "AE-6", "AE-7", "AE-8",
	"DT-1", "DT-2",
	"AR-1", "AR-2", "AR-3", "AR-4", "AR-5", "AR-6", "AR-7", "AR-8", "AR-9", "AR-10",
	"AA-1", "AA-2", "AA-3", "AA-4", "AA-5", "AA-6", "AA-7", "AA-8",
}

// transitions is PS3.8 Table 9-10, one row per event. A received PDU in a
// state not listed for its event is answered with AA-8; any other event not
// listed is refused with ErrInvalidPrimitive.
var transitions = map[Event]map[State]int{
	Evt1:  {Sta1: actAE1},
	Evt2:  {Sta4: actAE2},
	Evt3:  {Sta2: actAA1, Sta3: actAA8, Sta5: actAE3, Sta6: actAA8, Sta7: actAA8, Sta8: actAA8, Sta9: actAA8, Sta10: actAA8, Sta11: actAA8, Sta12: actAA8, Sta13: actAA6},
	Evt4:  {Sta2: actAA1, Sta3: actAA8, Sta5: actAE4, Sta6: actAA8, Sta7: actAA8, Sta8: actAA8, Sta9: actAA8, Sta10: actAA8, Sta11: actAA8, Sta12: actAA8, Sta13: actAA6},
	Evt5:  {Sta1: actAE5},
	Evt6:  {Sta2: actAE6, Sta3: actAA8, Sta5: actAA8, Sta6: actAA8, Sta7: actAA8, Sta8: actAA8, Sta9: actAA8, Sta10: actAA8, Sta11: actAA8, Sta12: actAA8, Sta13: actAA7},
	Evt7:  {Sta3: actAE7},
	Evt8:  {Sta3: actAE8},
	Evt9:  {Sta6: actDT1, Sta8: actAR7},
	Evt10: {Sta2: actAA1, Sta3: actAA8, Sta5: actAA8, Sta6: actDT2, Sta7: actAR6, Sta8: actAA8, Sta9: actAA8, Sta10: actAA8, Sta11: actAA8, Sta12: actAA8, Sta13: actAA6},
	Evt11: {Sta6: actAR1},
	Evt12: {Sta2: actAA1, Sta3: actAA8, Sta5: actAA8, Sta6: actAR2, Sta7: actAR8, Sta8: actAA8, Sta9: actAA8, Sta10: actAA8, Sta11: actAA8, Sta12: actAA8, Sta13: actAA6},
	Evt13: {Sta2: actAA1, Sta3: actAA8, Sta5: actAA8, Sta6: actAA8, Sta7: actAR3, Sta8: actAA8, Sta9: actAA8, Sta10: actAR10, Sta11: actAR3, Sta12: actAA8, Sta13: actAA6},
	Evt14: {Sta8: actAR4, Sta9: actAR9, Sta12: actAR4},
	Evt15: {Sta3: actAA1, Sta4: actAA2, Sta5: actAA1, Sta6: actAA1, Sta7: actAA1, Sta8: actAA1, Sta9: actAA1, Sta10: actAA1, Sta11: actAA1, Sta12: actAA1},
	Evt16: {Sta2: actAA2, Sta3: actAA3, Sta5: actAA3, Sta6: actAA3, Sta7: actAA3, Sta8: actAA3, Sta9: actAA3, Sta10: actAA3, Sta11: actAA3, Sta12: actAA3, Sta13: actAA2},
	Evt17: {Sta2: actAA5, Sta3: actAA4, Sta4: actAA4, Sta5: actAA4, Sta6: actAA4, Sta7: actAA4, Sta8: actAA4, Sta9: actAA4, Sta10: actAA4, Sta11: actAA4, Sta12: actAA4, Sta13: actAR5},
	Evt18: {Sta2: actAA2, Sta13: actAA2},
	Evt19: {Sta2: actAA1, Sta3: actAA8, Sta5: actAA8, Sta6: actAA8, Sta7: actAA8, Sta8: actAA8, Sta9: actAA8, Sta10: actAA8, Sta11: actAA8, Sta12: actAA8, Sta13: actAA7},
}

// table is transitions as a dense array for the per-PDU hot path.
var table = func() (t [numEvents + 1][numStates + 1]int) {
	for ev, row := range transitions {
		for st, act := range row {
			t[ev][st] = act
		}
	}
	return t
}()

// lookup returns the action for ev in st, applying the default for pairs
// the table does not list.
func lookup(ev Event, st State) (int, error) {
	if act := table[ev][st]; act != actNone {
		return act, nil
	}
	if !ev.fromPDU() {
		return actNone, fmt.Errorf("%w: %s in %s", ErrInvalidPrimitive, ev, st)
	}
	return actAA8, nil
}
