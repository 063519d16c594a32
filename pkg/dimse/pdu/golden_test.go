package pdu

import (
	"bytes"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
)

// The golden PDUs below are written by hand from PS3.8 §9.3 and PS3.7 Annex
// D.3.3, one field per line with its meaning beside it, in the style of
// pynetdicom's tests/encoded_pdu_items.py. They are never produced by the
// code under test.

// hx decodes space-separated hex byte pairs. Each argument is one field of
// a golden PDU, so that its meaning can be written beside it.
func hx(fields ...string) []byte {
	var b []byte
	for _, f := range fields {
		for _, p := range strings.Fields(f) {
			v, err := strconv.ParseUint(p, 16, 8)
			if err != nil || len(p) != 2 {
				panic(fmt.Sprintf("bad hex byte %q in %q", p, f))
			}
			b = append(b, byte(v))
		}
	}
	return b
}

// ASCII values used by the golden PDUs, in hex.
const (
	hexAppContext   = "31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 33 2e 31 2e 31 2e 31"                   // "1.2.840.10008.3.1.1.1" (21)
	hexVerification = "31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 31 2e 31"                               // "1.2.840.10008.1.1" (17)
	hexImplicitLE   = "31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 31 2e 32"                               // "1.2.840.10008.1.2" (17)
	hexExplicitLE   = "31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 31 2e 32 2e 31"                         // "1.2.840.10008.1.2.1" (19)
	hexJPEGBaseline = "31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 31 2e 32 2e 34 2e 35 30"                // "1.2.840.10008.1.2.4.50" (22)
	hexCTImage      = "31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 35 2e 31 2e 34 2e 31 2e 31 2e 32"       // "1.2.840.10008.5.1.4.1.1.2" (25)
	hexEnhancedCT   = "31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 35 2e 31 2e 34 2e 31 2e 31 2e 32 2e 31" // "1.2.840.10008.5.1.4.1.1.2.1" (27)
	hexStorageSvc   = "31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 34 2e 32"                               // "1.2.840.10008.4.2" (17)
	hexDCMTKClass   = "31 2e 32 2e 32 37 36 2e 30 2e 37 32 33 30 30 31 30 2e 33 2e 30 2e 33 2e 36 2e 37" // "1.2.276.0.7230010.3.0.3.6.7" (27)
	hexDCMTKVersion = "4f 46 46 49 53 5f 44 43 4d 54 4b 5f 33 36 37"                                     // "OFFIS_DCMTK_367" (15)
	hexAnySCP       = "41 4e 59 2d 53 43 50 20 20 20 20 20 20 20 20 20"                                  // "ANY-SCP" padded to 16 with spaces
	hexEchoSCU      = "45 43 48 4f 53 43 55 20 20 20 20 20 20 20 20 20"                                  // "ECHOSCU" padded to 16 with spaces
	hexZeros16      = "00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"
)

// UIDs of the expected structs.
const (
	verification = "1.2.840.10008.1.1"
	implicitLE   = "1.2.840.10008.1.2"
	explicitLE   = "1.2.840.10008.1.2.1"
	jpegBaseline = "1.2.840.10008.1.2.4.50"
	ctImage      = "1.2.840.10008.5.1.4.1.1.2"
	enhancedCT   = "1.2.840.10008.5.1.4.1.1.2.1"
	storageSvc   = "1.2.840.10008.4.2"
	dcmtkClass   = "1.2.276.0.7230010.3.0.3.6.7"
	dcmtkVersion = "OFFIS_DCMTK_367"
)

// goldenCase is a PDU and its exact encoding.
type goldenCase struct {
	name string
	pdu  PDU
	wire []byte
}

// goldenPDUs covers every PDU type in full.
func goldenPDUs() []goldenCase {
	return []goldenCase{
		{
			name: "A-ASSOCIATE-RQ with every item and sub-item",
			pdu: &AssociateRQ{
				ProtocolVersion:    1,
				CalledAE:           "ANY-SCP",
				CallingAE:          "ECHOSCU",
				ApplicationContext: ApplicationContextName,
				PresentationContexts: []PresentationContextRQ{
					{ID: 1, AbstractSyntax: verification, TransferSyntaxes: []string{implicitLE, explicitLE}},
					{ID: 3, AbstractSyntax: ctImage, TransferSyntaxes: []string{explicitLE}},
				},
				UserInfo: UserInformation{
					MaxLength:                 Uint32(16384),
					ImplementationClassUID:    dcmtkClass,
					AsyncOpsWindow:            &AsyncOpsWindow{MaxInvoked: 5, MaxPerformed: 3},
					RoleSelections:            []RoleSelection{{SOPClassUID: ctImage, SCU: true}},
					ImplementationVersionName: dcmtkVersion,
					ExtendedNegotiations:      []ExtendedNegotiation{{SOPClassUID: ctImage, Info: []byte{2, 0, 0, 0, 1, 0}}},
					CommonExtendedNegotiations: []CommonExtendedNegotiation{
						{SOPClassUID: enhancedCT, ServiceClassUID: storageSvc, RelatedGeneralSOPClasses: []string{ctImage}},
					},
					UserIdentity: &UserIdentity{
						Type:                      IdentityUsernamePassword,
						PositiveResponseRequested: true,
						Primary:                   []byte("pacsflow"),
						Secondary:                 []byte("secret"),
					},
				},
			},
			wire: hx(
				"01 00",                   // PDU type A-ASSOCIATE-RQ, reserved
				"00 00 01 d7",             // PDU length 471
				"00 01",                   // protocol version 1
				"00 00",                   // reserved
				hexAnySCP,                 // called AE title
				hexEchoSCU,                // calling AE title
				hexZeros16,                // reserved, 32 bytes
				hexZeros16,                // (continued)
				"10 00 00 15",             // application context item, reserved, length 21
				hexAppContext,             // "1.2.840.10008.3.1.1.1"
				"20 00 00 45",             // presentation context item (RQ), reserved, length 69
				"01 00 00 00",             // context ID 1, three reserved bytes
				"30 00 00 11",             // abstract syntax sub-item, reserved, length 17
				hexVerification,           // "1.2.840.10008.1.1" Verification
				"40 00 00 11",             // transfer syntax sub-item, reserved, length 17
				hexImplicitLE,             // "1.2.840.10008.1.2" Implicit VR Little Endian
				"40 00 00 13",             // transfer syntax sub-item, reserved, length 19
				hexExplicitLE,             // "1.2.840.10008.1.2.1" Explicit VR Little Endian
				"20 00 00 38",             // presentation context item (RQ), reserved, length 56
				"03 00 00 00",             // context ID 3, three reserved bytes
				"30 00 00 19",             // abstract syntax sub-item, reserved, length 25
				hexCTImage,                // "1.2.840.10008.5.1.4.1.1.2" CT Image Storage
				"40 00 00 13",             // transfer syntax sub-item, reserved, length 19
				hexExplicitLE,             // "1.2.840.10008.1.2.1"
				"50 00 00 f1",             // user information item, reserved, length 241
				"51 00 00 04",             // maximum length sub-item, reserved, length 4
				"00 00 40 00",             // maximum length received 16384
				"52 00 00 1b",             // implementation class UID sub-item, reserved, length 27
				hexDCMTKClass,             // "1.2.276.0.7230010.3.0.3.6.7"
				"53 00 00 04",             // asynchronous operations window sub-item, reserved, length 4
				"00 05",                   // maximum number of operations invoked 5
				"00 03",                   // maximum number of operations performed 3
				"54 00 00 1d",             // SCP/SCU role selection sub-item, reserved, length 29
				"00 19",                   // SOP class UID length 25
				hexCTImage,                // "1.2.840.10008.5.1.4.1.1.2"
				"01",                      // SCU role: supported
				"00",                      // SCP role: not supported
				"55 00 00 0f",             // implementation version name sub-item, reserved, length 15
				hexDCMTKVersion,           // "OFFIS_DCMTK_367"
				"56 00 00 21",             // SOP class extended negotiation sub-item, reserved, length 33
				"00 19",                   // SOP class UID length 25
				hexCTImage,                // "1.2.840.10008.5.1.4.1.1.2"
				"02 00 00 00 01 00",       // service class application information (PS3.4 B.3.1: level of support 2, signature level 0, coercion 1)
				"57 00 00 4d",             // SOP class common extended negotiation sub-item, sub-item version 0, length 77
				"00 1b",                   // SOP class UID length 27
				hexEnhancedCT,             // "1.2.840.10008.5.1.4.1.1.2.1" Enhanced CT Image Storage
				"00 11",                   // service class UID length 17
				hexStorageSvc,             // "1.2.840.10008.4.2" Storage Service Class
				"00 1b",                   // related general SOP class identification length 27
				"00 19",                   // related general SOP class UID length 25
				hexCTImage,                // "1.2.840.10008.5.1.4.1.1.2"
				"58 00 00 14",             // user identity negotiation sub-item (RQ), reserved, length 20
				"02",                      // user identity type 2: username and passcode
				"01",                      // positive response requested
				"00 08",                   // primary field length 8
				"70 61 63 73 66 6c 6f 77", // "pacsflow"
				"00 06",                   // secondary field length 6
				"73 65 63 72 65 74",       // "secret"
			),
		},
		{
			name: "A-ASSOCIATE-AC with accepted and rejected contexts and every AC sub-item",
			pdu: &AssociateAC{
				ProtocolVersion:    1,
				CalledAE:           "ANY-SCP",
				CallingAE:          "ECHOSCU",
				ApplicationContext: ApplicationContextName,
				PresentationContexts: []PresentationContextAC{
					{ID: 1, Result: ResultAcceptance, TransferSyntax: implicitLE},
					{ID: 3, Result: ResultTransferSyntaxNotSupported},
					{ID: 5, Result: ResultUserRejection},
				},
				UserInfo: UserInformation{
					MaxLength:                 Uint32(32768),
					ImplementationClassUID:    dcmtkClass,
					AsyncOpsWindow:            &AsyncOpsWindow{MaxInvoked: 1, MaxPerformed: 1},
					RoleSelections:            []RoleSelection{{SOPClassUID: ctImage, SCU: true}},
					ImplementationVersionName: dcmtkVersion,
					ExtendedNegotiations:      []ExtendedNegotiation{{SOPClassUID: ctImage, Info: []byte{2, 0, 0, 0, 1, 0}}},
					UserIdentityResponse:      &UserIdentityResponse{ServerResponse: []byte("token:pacsflow")},
				},
			},
			wire: hx(
				"02 00",             // PDU type A-ASSOCIATE-AC, reserved
				"00 00 01 32",       // PDU length 306
				"00 01",             // protocol version 1
				"00 00",             // reserved
				hexAnySCP,           // called AE title, echoed from the RQ
				hexEchoSCU,          // calling AE title, echoed from the RQ
				hexZeros16,          // reserved, 32 bytes
				hexZeros16,          // (continued)
				"10 00 00 15",       // application context item, reserved, length 21
				hexAppContext,       // "1.2.840.10008.3.1.1.1"
				"21 00 00 19",       // presentation context item (AC), reserved, length 25
				"01 00 00 00",       // context ID 1, reserved, result 0 acceptance, reserved
				"40 00 00 11",       // transfer syntax sub-item, reserved, length 17
				hexImplicitLE,       // "1.2.840.10008.1.2"
				"21 00 00 08",       // presentation context item (AC), reserved, length 8
				"03 00 04 00",       // context ID 3, reserved, result 4 transfer syntaxes not supported, reserved
				"40 00 00 00",       // transfer syntax sub-item, empty: not significant when rejected
				"21 00 00 08",       // presentation context item (AC), reserved, length 8
				"05 00 01 00",       // context ID 5, reserved, result 1 user rejection, reserved
				"40 00 00 00",       // transfer syntax sub-item, empty
				"50 00 00 9c",       // user information item, reserved, length 156
				"51 00 00 04",       // maximum length sub-item, reserved, length 4
				"00 00 80 00",       // maximum length received 32768
				"52 00 00 1b",       // implementation class UID sub-item, reserved, length 27
				hexDCMTKClass,       // "1.2.276.0.7230010.3.0.3.6.7"
				"53 00 00 04",       // asynchronous operations window sub-item, reserved, length 4
				"00 01",             // maximum number of operations invoked 1
				"00 01",             // maximum number of operations performed 1
				"54 00 00 1d",       // SCP/SCU role selection sub-item, reserved, length 29
				"00 19",             // SOP class UID length 25
				hexCTImage,          // "1.2.840.10008.5.1.4.1.1.2"
				"01",                // SCU role: accepted
				"00",                // SCP role: rejected
				"55 00 00 0f",       // implementation version name sub-item, reserved, length 15
				hexDCMTKVersion,     // "OFFIS_DCMTK_367"
				"56 00 00 21",       // SOP class extended negotiation sub-item, reserved, length 33
				"00 19",             // SOP class UID length 25
				hexCTImage,          // "1.2.840.10008.5.1.4.1.1.2"
				"02 00 00 00 01 00", // service class application information
				"59 00 00 10",       // user identity negotiation sub-item (AC), reserved, length 16
				"00 0e",             // server response length 14
				"74 6f 6b 65 6e 3a 70 61 63 73 66 6c 6f 77", // "token:pacsflow"
			),
		},
		{
			name: "A-ASSOCIATE-RJ permanent, by the service-user, called AE not recognized",
			pdu:  &AssociateRJ{Result: RejectPermanent, Source: RejectSourceUser, Reason: RejectCalledAENotRecognized},
			wire: hx(
				"03 00",       // PDU type A-ASSOCIATE-RJ, reserved
				"00 00 00 04", // PDU length 4
				"00",          // reserved
				"01",          // result 1: rejected-permanent
				"01",          // source 1: DICOM UL service-user
				"07",          // reason 7: called AE title not recognized
			),
		},
		{
			name: "A-ASSOCIATE-RJ transient, by the presentation provider, local limit exceeded",
			pdu:  &AssociateRJ{Result: RejectTransient, Source: RejectSourceProviderPresenta, Reason: RejectLocalLimitExceeded},
			wire: hx(
				"03 00",       // PDU type A-ASSOCIATE-RJ, reserved
				"00 00 00 04", // PDU length 4
				"00",          // reserved
				"02",          // result 2: rejected-transient
				"03",          // source 3: DICOM UL service-provider (presentation related function)
				"02",          // reason 2: local limit exceeded
			),
		},
		{
			name: "P-DATA-TF with a command and a data set in four PDVs",
			pdu: &PDataTF{Items: []PDV{
				{ContextID: 1, Command: true, Data: []byte{0x00, 0x00, 0x00, 0x00}},
				{ContextID: 1, Command: true, Last: true, Data: []byte{0xaa, 0xbb}},
				{ContextID: 3, Data: []byte{0xcc}},
				{ContextID: 3, Last: true, Data: []byte{0xdd, 0xee, 0xff}},
			}},
			wire: hx(
				"04 00",       // PDU type P-DATA-TF, reserved
				"00 00 00 22", // PDU length 34
				"00 00 00 06", // PDV item length 6
				"01",          // presentation context ID 1
				"01",          // message control header: command, not last
				"00 00 00 00", // command fragment
				"00 00 00 04", // PDV item length 4
				"01",          // presentation context ID 1
				"03",          // message control header: command, last
				"aa bb",       // command fragment
				"00 00 00 03", // PDV item length 3
				"03",          // presentation context ID 3
				"00",          // message control header: data set, not last
				"cc",          // data set fragment
				"00 00 00 05", // PDV item length 5
				"03",          // presentation context ID 3
				"02",          // message control header: data set, last
				"dd ee ff",    // data set fragment
			),
		},
		{
			name: "P-DATA-TF with one PDV",
			pdu:  &PDataTF{Items: []PDV{{ContextID: 255, Last: true, Data: []byte("DICM")}}},
			wire: hx(
				"04 00",       // PDU type P-DATA-TF, reserved
				"00 00 00 0a", // PDU length 10
				"00 00 00 06", // PDV item length 6
				"ff",          // presentation context ID 255
				"02",          // message control header: data set, last
				"44 49 43 4d", // "DICM"
			),
		},
		{
			name: "A-RELEASE-RQ",
			pdu:  ReleaseRQ{},
			wire: hx(
				"05 00",       // PDU type A-RELEASE-RQ, reserved
				"00 00 00 04", // PDU length 4
				"00 00 00 00", // reserved
			),
		},
		{
			name: "A-RELEASE-RP",
			pdu:  ReleaseRP{},
			wire: hx(
				"06 00",       // PDU type A-RELEASE-RP, reserved
				"00 00 00 04", // PDU length 4
				"00 00 00 00", // reserved
			),
		},
		{
			name: "A-ABORT by the service-user",
			pdu:  &Abort{Source: AbortSourceUser, Reason: AbortNotSpecified},
			wire: hx(
				"07 00",       // PDU type A-ABORT, reserved
				"00 00 00 04", // PDU length 4
				"00 00",       // reserved
				"00",          // source 0: DICOM UL service-user
				"00",          // reason: not significant for the service-user
			),
		},
		{
			name: "A-ABORT by the service-provider, unexpected PDU",
			pdu:  &Abort{Source: AbortSourceProvider, Reason: AbortUnexpectedPDU},
			wire: hx(
				"07 00",       // PDU type A-ABORT, reserved
				"00 00 00 04", // PDU length 4
				"00 00",       // reserved
				"02",          // source 2: DICOM UL service-provider
				"02",          // reason 2: unexpected PDU
			),
		},
	}
}

// stdFixed is the fixed part of the A-ASSOCIATE-RQ/AC bodies that wrap the
// item and sub-item cases.
var stdFixed = hx(
	"00 01",    // protocol version 1
	"00 00",    // reserved
	hexAnySCP,  // called AE title
	hexEchoSCU, // calling AE title
	hexZeros16, // reserved, 32 bytes
	hexZeros16, // (continued)
)

// assocPDU wraps items in an A-ASSOCIATE-RQ or -AC with the given fixed
// part. Only the PDU length is computed; everything else is written out by
// the callers.
func assocPDU(t Type, fixed []byte, items ...[]byte) []byte {
	body := bytes.Join(append([][]byte{fixed}, items...), nil)
	return append(hx(fmt.Sprintf("%02x 00 %02x %02x %02x %02x", byte(t), len(body)>>24, byte(len(body)>>16), byte(len(body)>>8), byte(len(body)))), body...)
}

// userInfo wraps sub-items in a user information item, computing its length.
func userInfo(subs ...[]byte) []byte {
	data := bytes.Join(subs, nil)
	return append(hx("50 00", fmt.Sprintf("%02x %02x", byte(len(data)>>8), byte(len(data)))), data...)
}

// emptyUserInfo is the user information item that the encoder always writes.
var emptyUserInfo = hx("50 00 00 00") // user information item, reserved, length 0

func stdRQ(f func(*AssociateRQ)) *AssociateRQ {
	p := &AssociateRQ{ProtocolVersion: 1, CalledAE: "ANY-SCP", CallingAE: "ECHOSCU"}
	f(p)
	return p
}

func stdAC(f func(*AssociateAC)) *AssociateAC {
	p := &AssociateAC{ProtocolVersion: 1, CalledAE: "ANY-SCP", CallingAE: "ECHOSCU"}
	f(p)
	return p
}

// goldenItems covers each item and user information sub-item on its own,
// wrapped in the smallest A-ASSOCIATE-RQ or -AC that carries it.
func goldenItems() []goldenCase {
	rq := func(items ...[]byte) []byte { return assocPDU(TypeAssociateRQ, stdFixed, items...) }
	ac := func(items ...[]byte) []byte { return assocPDU(TypeAssociateAC, stdFixed, items...) }
	return []goldenCase{
		{
			name: "application context",
			pdu:  stdRQ(func(p *AssociateRQ) { p.ApplicationContext = ApplicationContextName }),
			wire: rq(hx(
				"10 00 00 15", // application context item, reserved, length 21
				hexAppContext, // "1.2.840.10008.3.1.1.1"
			), emptyUserInfo),
		},
		{
			name: "presentation context RQ with one transfer syntax",
			pdu: stdRQ(func(p *AssociateRQ) {
				p.PresentationContexts = []PresentationContextRQ{{ID: 1, AbstractSyntax: verification, TransferSyntaxes: []string{implicitLE}}}
			}),
			wire: rq(hx(
				"20 00 00 2e",   // presentation context item (RQ), reserved, length 46
				"01 00 00 00",   // context ID 1, three reserved bytes
				"30 00 00 11",   // abstract syntax sub-item, reserved, length 17
				hexVerification, // "1.2.840.10008.1.1"
				"40 00 00 11",   // transfer syntax sub-item, reserved, length 17
				hexImplicitLE,   // "1.2.840.10008.1.2"
			), emptyUserInfo),
		},
		{
			name: "presentation context RQ with three transfer syntaxes",
			pdu: stdRQ(func(p *AssociateRQ) {
				p.PresentationContexts = []PresentationContextRQ{{ID: 7, AbstractSyntax: ctImage, TransferSyntaxes: []string{jpegBaseline, explicitLE, implicitLE}}}
			}),
			wire: rq(hx(
				"20 00 00 67",   // presentation context item (RQ), reserved, length 103
				"07 00 00 00",   // context ID 7, three reserved bytes
				"30 00 00 19",   // abstract syntax sub-item, reserved, length 25
				hexCTImage,      // "1.2.840.10008.5.1.4.1.1.2"
				"40 00 00 16",   // transfer syntax sub-item, reserved, length 22
				hexJPEGBaseline, // "1.2.840.10008.1.2.4.50" JPEG Baseline
				"40 00 00 13",   // transfer syntax sub-item, reserved, length 19
				hexExplicitLE,   // "1.2.840.10008.1.2.1"
				"40 00 00 11",   // transfer syntax sub-item, reserved, length 17
				hexImplicitLE,   // "1.2.840.10008.1.2"
			), emptyUserInfo),
		},
		{
			name: "presentation context AC accepted",
			pdu: stdAC(func(p *AssociateAC) {
				p.PresentationContexts = []PresentationContextAC{{ID: 7, Result: ResultAcceptance, TransferSyntax: jpegBaseline}}
			}),
			wire: ac(hx(
				"21 00 00 1e",   // presentation context item (AC), reserved, length 30
				"07 00 00 00",   // context ID 7, reserved, result 0 acceptance, reserved
				"40 00 00 16",   // transfer syntax sub-item, reserved, length 22
				hexJPEGBaseline, // "1.2.840.10008.1.2.4.50"
			), emptyUserInfo),
		},
		{
			name: "presentation context AC rejected, abstract syntax not supported",
			pdu: stdAC(func(p *AssociateAC) {
				p.PresentationContexts = []PresentationContextAC{{ID: 9, Result: ResultAbstractSyntaxNotSupported}}
			}),
			wire: ac(hx(
				"21 00 00 08", // presentation context item (AC), reserved, length 8
				"09 00 03 00", // context ID 9, reserved, result 3 abstract syntax not supported, reserved
				"40 00 00 00", // transfer syntax sub-item, empty
			), emptyUserInfo),
		},
		{
			name: "maximum length",
			pdu:  stdRQ(func(p *AssociateRQ) { p.UserInfo.MaxLength = Uint32(0x00fedcba) }),
			wire: rq(userInfo(hx(
				"51 00 00 04", // maximum length sub-item, reserved, length 4
				"00 fe dc ba", // maximum length received 16702650, big endian
			))),
		},
		{
			name: "maximum length 0, no limit",
			pdu:  stdRQ(func(p *AssociateRQ) { p.UserInfo.MaxLength = Uint32(0) }),
			wire: rq(userInfo(hx(
				"51 00 00 04", // maximum length sub-item, reserved, length 4
				"00 00 00 00", // maximum length received 0: unlimited
			))),
		},
		{
			name: "implementation class UID",
			pdu:  stdRQ(func(p *AssociateRQ) { p.UserInfo.ImplementationClassUID = dcmtkClass }),
			wire: rq(userInfo(hx(
				"52 00 00 1b", // implementation class UID sub-item, reserved, length 27
				hexDCMTKClass, // "1.2.276.0.7230010.3.0.3.6.7"
			))),
		},
		{
			name: "implementation version name",
			pdu:  stdRQ(func(p *AssociateRQ) { p.UserInfo.ImplementationVersionName = dcmtkVersion }),
			wire: rq(userInfo(hx(
				"55 00 00 0f",   // implementation version name sub-item, reserved, length 15
				hexDCMTKVersion, // "OFFIS_DCMTK_367"
			))),
		},
		{
			name: "asynchronous operations window",
			pdu:  stdRQ(func(p *AssociateRQ) { p.UserInfo.AsyncOpsWindow = &AsyncOpsWindow{MaxInvoked: 0x0102, MaxPerformed: 0} }),
			wire: rq(userInfo(hx(
				"53 00 00 04", // asynchronous operations window sub-item, reserved, length 4
				"01 02",       // maximum number of operations invoked 258
				"00 00",       // maximum number of operations performed 0: unlimited
			))),
		},
		{
			name: "two SCP/SCU role selections",
			pdu: stdRQ(func(p *AssociateRQ) {
				p.UserInfo.RoleSelections = []RoleSelection{{SOPClassUID: ctImage, SCU: true, SCP: true}, {SOPClassUID: verification, SCP: true}}
			}),
			wire: rq(userInfo(hx(
				"54 00 00 1d",   // SCP/SCU role selection sub-item, reserved, length 29
				"00 19",         // SOP class UID length 25
				hexCTImage,      // "1.2.840.10008.5.1.4.1.1.2"
				"01",            // SCU role: supported
				"01",            // SCP role: supported
				"54 00 00 15",   // SCP/SCU role selection sub-item, reserved, length 21
				"00 11",         // SOP class UID length 17
				hexVerification, // "1.2.840.10008.1.1"
				"00",            // SCU role: not supported
				"01",            // SCP role: supported
			))),
		},
		{
			name: "SOP class extended negotiation",
			pdu: stdRQ(func(p *AssociateRQ) {
				p.UserInfo.ExtendedNegotiations = []ExtendedNegotiation{{SOPClassUID: ctImage, Info: []byte{0x02, 0x00, 0x03}}}
			}),
			wire: rq(userInfo(hx(
				"56 00 00 1e", // SOP class extended negotiation sub-item, reserved, length 30
				"00 19",       // SOP class UID length 25
				hexCTImage,    // "1.2.840.10008.5.1.4.1.1.2"
				"02 00 03",    // service class application information, opaque
			))),
		},
		{
			name: "SOP class extended negotiation without application information",
			pdu: stdRQ(func(p *AssociateRQ) {
				p.UserInfo.ExtendedNegotiations = []ExtendedNegotiation{{SOPClassUID: ctImage}}
			}),
			wire: rq(userInfo(hx(
				"56 00 00 1b", // SOP class extended negotiation sub-item, reserved, length 27
				"00 19",       // SOP class UID length 25
				hexCTImage,    // "1.2.840.10008.5.1.4.1.1.2"
			))),
		},
		{
			name: "SOP class common extended negotiation with two related classes",
			pdu: stdRQ(func(p *AssociateRQ) {
				p.UserInfo.CommonExtendedNegotiations = []CommonExtendedNegotiation{
					{SOPClassUID: enhancedCT, ServiceClassUID: storageSvc, RelatedGeneralSOPClasses: []string{ctImage, verification}},
				}
			}),
			wire: rq(userInfo(hx(
				"57 00 00 60",   // SOP class common extended negotiation sub-item, version 0, length 96
				"00 1b",         // SOP class UID length 27
				hexEnhancedCT,   // "1.2.840.10008.5.1.4.1.1.2.1"
				"00 11",         // service class UID length 17
				hexStorageSvc,   // "1.2.840.10008.4.2"
				"00 2e",         // related general SOP class identification length 46
				"00 19",         // related general SOP class UID length 25
				hexCTImage,      // "1.2.840.10008.5.1.4.1.1.2"
				"00 11",         // related general SOP class UID length 17
				hexVerification, // "1.2.840.10008.1.1"
			))),
		},
		{
			name: "SOP class common extended negotiation without related classes",
			pdu: stdRQ(func(p *AssociateRQ) {
				p.UserInfo.CommonExtendedNegotiations = []CommonExtendedNegotiation{{SOPClassUID: enhancedCT, ServiceClassUID: storageSvc}}
			}),
			wire: rq(userInfo(hx(
				"57 00 00 32", // SOP class common extended negotiation sub-item, version 0, length 50
				"00 1b",       // SOP class UID length 27
				hexEnhancedCT, // "1.2.840.10008.5.1.4.1.1.2.1"
				"00 11",       // service class UID length 17
				hexStorageSvc, // "1.2.840.10008.4.2"
				"00 00",       // related general SOP class identification length 0
			))),
		},
		{
			name: "user identity RQ, username only",
			pdu: stdRQ(func(p *AssociateRQ) {
				p.UserInfo.UserIdentity = &UserIdentity{Type: IdentityUsername, Primary: []byte("pacsflow")}
			}),
			wire: rq(userInfo(hx(
				"58 00 00 0e",             // user identity negotiation sub-item (RQ), reserved, length 14
				"01",                      // user identity type 1: username
				"00",                      // no positive response requested
				"00 08",                   // primary field length 8
				"70 61 63 73 66 6c 6f 77", // "pacsflow"
				"00 00",                   // secondary field length 0
			))),
		},
		{
			name: "user identity RQ, JWT with response requested",
			pdu: stdRQ(func(p *AssociateRQ) {
				p.UserInfo.UserIdentity = &UserIdentity{Type: IdentityJWT, PositiveResponseRequested: true, Primary: []byte("e30.e30.")}
			}),
			wire: rq(userInfo(hx(
				"58 00 00 0e",             // user identity negotiation sub-item (RQ), reserved, length 14
				"05",                      // user identity type 5: JSON web token
				"01",                      // positive response requested
				"00 08",                   // primary field length 8
				"65 33 30 2e 65 33 30 2e", // "e30.e30." (an unsigned JWT of two empty objects)
				"00 00",                   // secondary field length 0
			))),
		},
		{
			name: "user identity AC",
			pdu: stdAC(func(p *AssociateAC) {
				p.UserInfo.UserIdentityResponse = &UserIdentityResponse{ServerResponse: []byte{0xde, 0xad}}
			}),
			wire: ac(userInfo(hx(
				"59 00 00 04", // user identity negotiation sub-item (AC), reserved, length 4
				"00 02",       // server response length 2
				"de ad",       // server response, opaque
			))),
		},
		{
			name: "unknown user information sub-item kept as RawItem",
			pdu: stdRQ(func(p *AssociateRQ) {
				p.UserInfo.Unknown = []RawItem{{Type: 0x5a, Data: []byte{1, 2, 3}}, {Type: 0xf0}}
			}),
			wire: rq(userInfo(hx(
				"5a 00 00 03", // sub-item of the unassigned type 5AH, reserved, length 3
				"01 02 03",    // its value, kept as is
				"f0 00 00 00", // sub-item of the unassigned type F0H, reserved, length 0
			))),
		},
		{
			name: "unknown item kept as RawItem",
			pdu: stdAC(func(p *AssociateAC) {
				p.Unknown = []RawItem{{Type: 0x60, Data: []byte{0xca, 0xfe}}}
			}),
			wire: ac(emptyUserInfo, hx(
				"60 00 00 02", // item of the unassigned type 60H, reserved, length 2
				"ca fe",       // its value, kept as is
			)),
		},
	}
}

// TestGolden checks each golden PDU three ways: Encode gives the golden
// bytes, Decode gives the struct back, and so does a Reader.
func TestGolden(t *testing.T) {
	for _, c := range append(goldenPDUs(), goldenItems()...) {
		t.Run(c.name, func(t *testing.T) {
			got, err := Encode(c.pdu)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if !bytes.Equal(got, c.wire) {
				t.Errorf("Encode:\n got %x\nwant %x", got, c.wire)
			}
			if c.pdu.Type() != Type(c.wire[0]) {
				t.Errorf("Type() = %v, want %v", c.pdu.Type(), Type(c.wire[0]))
			}
			p, err := Decode(c.wire)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(p, c.pdu) {
				t.Errorf("Decode:\n got %#v\nwant %#v", p, c.pdu)
			}
			r := NewReader(bytes.NewReader(c.wire))
			p, err = r.Next()
			if err != nil {
				t.Fatalf("Reader.Next: %v", err)
			}
			if !reflect.DeepEqual(p, c.pdu) {
				t.Errorf("Reader.Next:\n got %#v\nwant %#v", p, c.pdu)
			}
			if _, err := r.Next(); err != io.EOF {
				t.Errorf("Reader.Next after the only PDU: %v, want io.EOF", err)
			}
		})
	}
}

// TestReaderStream reads all golden PDUs from one stream that delivers a
// byte at a time: the Reader must reassemble each PDU and reuse its buffer
// without corrupting a PDU it returned earlier (only P-DATA-TF aliases it).
func TestReaderStream(t *testing.T) {
	cases := append(goldenPDUs(), goldenItems()...)
	var stream []byte
	for _, c := range cases {
		stream = append(stream, c.wire...)
	}
	r := NewReader(iotest.OneByteReader(bytes.NewReader(stream)))
	var kept []PDU
	for _, c := range cases {
		p, err := r.Next()
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if !reflect.DeepEqual(p, c.pdu) {
			t.Fatalf("%s:\n got %#v\nwant %#v", c.name, p, c.pdu)
		}
		if _, ok := p.(*PDataTF); !ok {
			kept = append(kept, p)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Errorf("Next at the end of the stream: %v, want io.EOF", err)
	}
	i := 0
	for _, c := range cases {
		if _, ok := c.pdu.(*PDataTF); ok {
			continue
		}
		if !reflect.DeepEqual(kept[i], c.pdu) {
			t.Errorf("%s changed after later reads:\n got %#v\nwant %#v", c.name, kept[i], c.pdu)
		}
		i++
	}
}

// TestDecodeDoesNotAlias checks the promise of Decode that only P-DATA-TF
// results share memory with the input.
func TestDecodeDoesNotAlias(t *testing.T) {
	for _, c := range append(goldenPDUs(), goldenItems()...) {
		if _, ok := c.pdu.(*PDataTF); ok {
			continue
		}
		wire := bytes.Clone(c.wire)
		p, err := Decode(wire)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		for i := range wire {
			wire[i] = 0xa5
		}
		if !reflect.DeepEqual(p, c.pdu) {
			t.Errorf("%s: decoded PDU changed with its input:\n got %#v\nwant %#v", c.name, p, c.pdu)
		}
	}
}

// TestLenientDecode covers encodings that real peers send and that decode
// to the same struct as the canonical encoding: PS3.8 says reserved fields
// shall not be tested, and AE titles and UIDs come with padding.
func TestLenientDecode(t *testing.T) {
	rq := func(items ...[]byte) []byte { return assocPDU(TypeAssociateRQ, stdFixed, items...) }
	cases := []goldenCase{
		{
			// DCMTK 3.6.7 sends FFH in the third reserved byte of a proposed
			// context (seen in the captured corpus).
			name: "reserved byte of a presentation context RQ set, as DCMTK sends it",
			pdu: stdRQ(func(p *AssociateRQ) {
				p.PresentationContexts = []PresentationContextRQ{{ID: 1, AbstractSyntax: verification, TransferSyntaxes: []string{implicitLE}}}
			}),
			wire: rq(hx(
				"20 00 00 2e",   // presentation context item (RQ), reserved, length 46
				"01 00 ff 00",   // context ID 1, reserved 00 FF 00
				"30 00 00 11",   // abstract syntax sub-item, reserved, length 17
				hexVerification, // "1.2.840.10008.1.1"
				"40 00 00 11",   // transfer syntax sub-item, reserved, length 17
				hexImplicitLE,   // "1.2.840.10008.1.2"
			), emptyUserInfo),
		},
		{
			name: "AE titles with leading spaces and NUL padding, reserved bytes set",
			pdu:  stdRQ(func(p *AssociateRQ) {}),
			wire: assocPDU(TypeAssociateRQ, hx(
				"00 01", // protocol version 1
				"ff ff", // reserved
				"20 20 41 4e 59 2d 53 43 50 20 20 20 20 20 20 20", // called AE "  ANY-SCP", leading spaces are not significant
				"45 43 48 4f 53 43 55 00 00 00 00 00 00 00 00 00", // calling AE "ECHOSCU" padded with NULs
				"ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff", // reserved, 32 bytes
				"ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff", // (continued)
			), emptyUserInfo),
		},
		{
			name: "UIDs padded to even length with a NUL",
			pdu: stdRQ(func(p *AssociateRQ) {
				p.ApplicationContext = ApplicationContextName
				p.PresentationContexts = []PresentationContextRQ{{ID: 1, AbstractSyntax: verification, TransferSyntaxes: []string{implicitLE}}}
			}),
			wire: rq(hx(
				"10 00 00 16",       // application context item, reserved, length 22
				hexAppContext, "00", // "1.2.840.10008.3.1.1.1" NUL
				"20 00 00 30",         // presentation context item (RQ), reserved, length 48
				"01 00 00 00",         // context ID 1, three reserved bytes
				"30 00 00 12",         // abstract syntax sub-item, reserved, length 18
				hexVerification, "00", // "1.2.840.10008.1.1" NUL
				"40 00 00 12",       // transfer syntax sub-item, reserved, length 18
				hexImplicitLE, "00", // "1.2.840.10008.1.2" NUL
			), emptyUserInfo),
		},
		{
			name: "user information sub-items in another order, version name padded",
			pdu: stdRQ(func(p *AssociateRQ) {
				p.UserInfo = UserInformation{MaxLength: Uint32(16384), ImplementationClassUID: dcmtkClass, ImplementationVersionName: dcmtkVersion}
			}),
			wire: rq(userInfo(hx(
				"55 00 00 10",         // implementation version name sub-item, reserved, length 16
				hexDCMTKVersion, "20", // "OFFIS_DCMTK_367" and a padding space
				"52 00 00 1b", // implementation class UID sub-item, reserved, length 27
				hexDCMTKClass, // "1.2.276.0.7230010.3.0.3.6.7"
				"51 00 00 04", // maximum length sub-item, reserved, length 4
				"00 00 40 00", // maximum length received 16384
			))),
		},
		{
			name: "A-ASSOCIATE-RJ with reserved bytes set",
			pdu:  &AssociateRJ{Result: RejectPermanent, Source: RejectSourceUser, Reason: RejectNoReason},
			wire: hx(
				"03 ff",       // PDU type A-ASSOCIATE-RJ, reserved
				"00 00 00 04", // PDU length 4
				"ff",          // reserved
				"01 01 01",    // permanent, service-user, no reason given
			),
		},
		{
			name: "A-RELEASE-RQ with reserved bytes set",
			pdu:  ReleaseRQ{},
			wire: hx(
				"05 ff",       // PDU type A-RELEASE-RQ, reserved
				"00 00 00 04", // PDU length 4
				"ff ff ff ff", // reserved
			),
		},
		{
			name: "A-ABORT with reserved bytes set",
			pdu:  &Abort{Source: AbortSourceProvider, Reason: AbortInvalidPDUParameterValue},
			wire: hx(
				"07 ff",       // PDU type A-ABORT, reserved
				"00 00 00 04", // PDU length 4
				"ff ff",       // reserved
				"02 06",       // service-provider, invalid PDU parameter value
			),
		},
		{
			name: "PDV message control header with reserved bits set",
			pdu:  &PDataTF{Items: []PDV{{ContextID: 1, Last: true, Data: []byte{0x01}}}},
			wire: hx(
				"04 ff",       // PDU type P-DATA-TF, reserved
				"00 00 00 07", // PDU length 7
				"00 00 00 03", // PDV item length 3
				"01",          // presentation context ID 1
				"fe",          // message control header: reserved bits 2-7 set, data set, last
				"01",          // data set fragment
			),
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := Decode(c.wire)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(p, c.pdu) {
				t.Errorf("Decode:\n got %#v\nwant %#v", p, c.pdu)
			}
			p, err = NewReader(bytes.NewReader(c.wire)).Next()
			if err != nil {
				t.Fatalf("Reader.Next: %v", err)
			}
			if !reflect.DeepEqual(p, c.pdu) {
				t.Errorf("Reader.Next:\n got %#v\nwant %#v", p, c.pdu)
			}
		})
	}
}

// TestEncodeErrors covers the values that have no encoding.
func TestEncodeErrors(t *testing.T) {
	long := strings.Repeat("1", 0x10000)
	cases := []struct {
		name string
		pdu  PDU
	}{
		{"called AE title of 17 characters", &AssociateRQ{CalledAE: "ABCDEFGHIJKLMNOPQ"}},
		{"calling AE title of 17 characters", &AssociateAC{CallingAE: "ABCDEFGHIJKLMNOPQ"}},
		{"application context UID of 64 KiB", &AssociateRQ{ApplicationContext: long}},
		{"abstract syntax of 64 KiB", &AssociateRQ{PresentationContexts: []PresentationContextRQ{{AbstractSyntax: long}}}},
		{"presentation context RQ over 64 KiB in all", &AssociateRQ{PresentationContexts: []PresentationContextRQ{{TransferSyntaxes: []string{long[:0x8000], long[:0x8000]}}}}},
		{"transfer syntax of 64 KiB in an AC", &AssociateAC{PresentationContexts: []PresentationContextAC{{TransferSyntax: long}}}},
		{"user information over 64 KiB in all", &AssociateRQ{UserInfo: UserInformation{ImplementationClassUID: long[:0x8000], ImplementationVersionName: long[:0x8000]}}},
		{"role selection UID of 64 KiB", &AssociateRQ{UserInfo: UserInformation{RoleSelections: []RoleSelection{{SOPClassUID: long}}}}},
		{"extended negotiation info of 64 KiB", &AssociateRQ{UserInfo: UserInformation{ExtendedNegotiations: []ExtendedNegotiation{{Info: []byte(long)}}}}},
		{"related general SOP classes over 64 KiB", &AssociateRQ{UserInfo: UserInformation{CommonExtendedNegotiations: []CommonExtendedNegotiation{{RelatedGeneralSOPClasses: []string{long[:0x8000], long[:0x8000]}}}}}},
		{"user identity primary field of 64 KiB", &AssociateRQ{UserInfo: UserInformation{UserIdentity: &UserIdentity{Primary: []byte(long)}}}},
		{"user identity server response of 64 KiB", &AssociateAC{UserInfo: UserInformation{UserIdentityResponse: &UserIdentityResponse{ServerResponse: []byte(long)}}}},
		{"unknown item of 64 KiB", &AssociateRQ{Unknown: []RawItem{{Type: 0x60, Data: []byte(long)}}}},
		{"unknown sub-item of 64 KiB", &AssociateRQ{UserInfo: UserInformation{Unknown: []RawItem{{Type: 0x5a, Data: []byte(long)}}}}},
		{"P-DATA-TF without PDV", &PDataTF{}},
	}
	for _, c := range cases {
		if b, err := Encode(c.pdu); err == nil {
			t.Errorf("%s: encoded to %d bytes, want an error", c.name, len(b))
		}
	}
}

// TestPDataHeaderHelpers checks the helpers that senders use to write a
// P-DATA-TF in place against the golden single-PDV P-DATA-TF.
func TestPDataHeaderHelpers(t *testing.T) {
	want := hx(
		"04 00",       // PDU type P-DATA-TF, reserved
		"00 00 00 0a", // PDU length 10
		"00 00 00 06", // PDV item length 6
		"ff",          // presentation context ID 255
		"02",          // message control header: data set, last
		"44 49 43 4d", // "DICM"
	)
	b := make([]byte, HeaderLen, HeaderLen+PDVHeaderLen+4)
	PutPDataHeader(b, PDVHeaderLen+4)
	b = AppendPDVHeader(b, 255, false, true, 4)
	b = append(b, "DICM"...)
	if !bytes.Equal(b, want) {
		t.Errorf("got %x, want %x", b, want)
	}
}

// TestValidateAETitle checks the AE title rules of PS3.5 Table 6.2-1.
func TestValidateAETitle(t *testing.T) {
	for _, c := range []struct {
		ae string
		ok bool
	}{
		{"ANY-SCP", true},
		{"ABCDEFGHIJKLMNOP", true},
		{" PADDED ", true},
		{"ABCDEFGHIJKLMNOPQ", false},
		{"", false},
		{"    ", false},
		{`BACK\SLASH`, false},
		{"TAB\tAE", false},
		{"CAFÉ", false},
	} {
		if err := ValidateAETitle(c.ae); (err == nil) != c.ok {
			t.Errorf("ValidateAETitle(%q) = %v, want ok=%v", c.ae, err, c.ok)
		}
	}
}

// TestStrings checks that every defined value has a name of its own.
func TestStrings(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{TypeAssociateRQ.String(), "A-ASSOCIATE-RQ"},
		{TypeAbort.String(), "A-ABORT"},
		{Type(0x47).String(), "PDU-type 0x47"},
		{ResultTransferSyntaxNotSupported.String(), "transfer syntaxes not supported (provider rejection)"},
		{Result(9).String(), "reserved result 9"},
		{AbortUnrecognizedPDU.String(), "unrecognized PDU"},
		{AbortReason(3).String(), "reserved reason 3"},
		{(&AssociateRJ{Result: 1, Source: 1, Reason: 7}).Explain(), "called AE title not recognized"},
		{(&AssociateRJ{Result: 1, Source: 2, Reason: 2}).Explain(), "protocol version not supported"},
		{(&AssociateRJ{Result: 2, Source: 3, Reason: 1}).Explain(), "temporary congestion"},
		{(&AssociateRJ{Result: 1, Source: 3, Reason: 7}).Explain(), "reserved reason"},
		{(&Abort{Source: AbortSourceUser}).String(), "A-ABORT by the service-user"},
		{(&Abort{Source: AbortSourceProvider, Reason: AbortUnexpectedPDU}).String(), "A-ABORT by the service-provider (source 2): unexpected PDU"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}
