package pdu

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// The PDUs captured from DCMTK and pynetdicom by testdata/capture.go. They
// are also FuzzReader's seed corpus, where the fuzzer may add files of its
// own; the captured ones are told apart by the prefix of their names.
const corpusDir = "testdata/fuzz/FuzzReader"

var capturedPrefixes = []string{"dcmtk-", "pynetdicom-"}

// readCorpusFile reads a file of Go's fuzzing corpus format holding one []byte.
func readCorpusFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	header, rest, _ := strings.Cut(string(b), "\n")
	value, ok := strings.CutPrefix(strings.TrimSpace(rest), "[]byte(")
	if header != "go test fuzz v1" || !ok || !strings.HasSuffix(value, ")") {
		return nil, fmt.Errorf("%s: not a corpus file of one []byte", path)
	}
	s, err := strconv.Unquote(strings.TrimSuffix(value, ")"))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return []byte(s), nil
}

type capturedPDU struct {
	name string
	wire []byte
}

// capturedPDUs returns the captured PDUs in name order; it fails the test
// when there are none, so that a lost corpus is not taken for a good one.
func capturedPDUs(t *testing.T) []capturedPDU {
	t.Helper()
	entries, err := os.ReadDir(corpusDir)
	if err != nil {
		t.Fatal(err)
	}
	var out []capturedPDU
	for _, e := range entries {
		for _, p := range capturedPrefixes {
			if strings.HasPrefix(e.Name(), p) {
				wire, err := readCorpusFile(filepath.Join(corpusDir, e.Name()))
				if err != nil {
					t.Fatal(err)
				}
				out = append(out, capturedPDU{e.Name(), wire})
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("no captured PDU in %s; run testdata/capture.go", corpusDir)
	}
	return out
}

// typeOfName gives the PDU type that a captured file's name ends with,
// before the number that tells apart files of the same kind.
func typeOfName(name string) Type {
	name = strings.TrimSuffix(strings.TrimRight(name, "0123456789"), "-")
	if strings.Contains(name, "-pdata-") {
		return TypePDataTF
	}
	for kind, t := range map[string]Type{
		"-associate-rq": TypeAssociateRQ,
		"-associate-ac": TypeAssociateAC,
		"-associate-rj": TypeAssociateRJ,
		"-release-rq":   TypeReleaseRQ,
		"-release-rp":   TypeReleaseRP,
		"-abort":        TypeAbort,
	} {
		if strings.HasSuffix(name, kind) {
			return t
		}
	}
	return 0
}

// TestCapturedCorpus decodes every PDU that DCMTK and pynetdicom sent: all
// are valid, of the type their names say, and survive a round trip.
func TestCapturedCorpus(t *testing.T) {
	for _, c := range capturedPDUs(t) {
		p, err := Decode(c.wire)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if p.Type() != typeOfName(c.name) {
			t.Errorf("%s: decoded a %v", c.name, p.Type())
		}
		b, err := Encode(p)
		if err != nil {
			t.Errorf("%s: Encode: %v", c.name, err)
			continue
		}
		if p2, err := Decode(b); err != nil || !reflect.DeepEqual(p2, p) {
			t.Errorf("%s: round trip gives %#v, %v", c.name, p2, err)
		}
	}
}

// TestCapturedStream reads all captured PDUs as one stream with a Reader
// whose P-DATA-TF limit is the 4096 bytes that the capture's SCPs
// advertised, and which the SCUs honoured.
func TestCapturedStream(t *testing.T) {
	captured := capturedPDUs(t)
	var stream []byte
	for _, c := range captured {
		stream = append(stream, c.wire...)
	}
	r := NewReader(bytes.NewReader(stream))
	r.MaxPDataLength = 4096
	for _, c := range captured {
		p, err := r.Next()
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		want, err := Decode(c.wire)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if !reflect.DeepEqual(p, want) {
			t.Errorf("%s: Reader.Next gives %#v, Decode %#v", c.name, p, want)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Errorf("end of stream: %v, want io.EOF", err)
	}
}

// TestCapturedNegotiation checks the items that real peers sent for every
// kind of negotiation: what pynetdicom proposes (testdata/capture.go says
// what it was asked to) and what pynetdicom and DCMTK answer.
func TestCapturedNegotiation(t *testing.T) {
	const (
		pynetdicomClass = "1.2.826.0.1.3680043.9.3811.3.0.4"
		petImage        = "1.2.840.10008.5.1.4.1.1.128"
		storageInfo     = "\x02\x00\x00\x00\x01\x00"
		jwt             = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJwYWNzZmxvdyJ9."
	)
	proposed := UserInformation{
		MaxLength:                 Uint32(4096),
		ImplementationClassUID:    pynetdicomClass,
		ImplementationVersionName: "PYNETDICOM_304",
		AsyncOpsWindow:            &AsyncOpsWindow{MaxInvoked: 5, MaxPerformed: 3},
		RoleSelections:            []RoleSelection{{SOPClassUID: petImage, SCU: true, SCP: true}},
		ExtendedNegotiations:      []ExtendedNegotiation{{SOPClassUID: ctImage, Info: []byte(storageInfo)}},
		CommonExtendedNegotiations: []CommonExtendedNegotiation{
			{SOPClassUID: enhancedCT, ServiceClassUID: storageSvc, RelatedGeneralSOPClasses: []string{ctImage}},
		},
	}
	withIdentity := func(u UserInformation, id *UserIdentity) UserInformation { u.UserIdentity = id; return u }
	dcmtkUserInfo := func(max uint32) UserInformation {
		return UserInformation{MaxLength: Uint32(max), ImplementationClassUID: dcmtkClass, ImplementationVersionName: dcmtkVersion}
	}

	checks := []struct {
		file string
		get  func(PDU) any
		want any
	}{
		{
			file: "pynetdicom-scu-associate-rq",
			get:  func(p PDU) any { return p.(*AssociateRQ).UserInfo },
			want: withIdentity(proposed, &UserIdentity{Type: IdentityJWT, PositiveResponseRequested: true, Primary: []byte(jwt)}),
		},
		{
			file: "pynetdicom-scu-to-dcmtk-associate-rq",
			get:  func(p PDU) any { return p.(*AssociateRQ).UserInfo },
			want: withIdentity(proposed, &UserIdentity{
				Type: IdentityUsernamePassword, PositiveResponseRequested: true, Primary: []byte("pacsflow"), Secondary: []byte("secret"),
			}),
		},
		{
			// pynetdicom answers each negotiation but the common extended
			// one, which has no answer (PS3.7 D.3.3.6).
			file: "pynetdicom-scp-associate-ac",
			get:  func(p PDU) any { return p.(*AssociateAC).UserInfo },
			want: UserInformation{
				MaxLength:                 Uint32(4096),
				ImplementationClassUID:    pynetdicomClass,
				ImplementationVersionName: "PYNETDICOM_304",
				AsyncOpsWindow:            &AsyncOpsWindow{MaxInvoked: 1, MaxPerformed: 1},
				RoleSelections:            []RoleSelection{{SOPClassUID: petImage, SCU: true}},
				ExtendedNegotiations:      []ExtendedNegotiation{{SOPClassUID: ctImage, Info: []byte(storageInfo)}},
				UserIdentityResponse:      &UserIdentityResponse{ServerResponse: []byte("token:" + jwt)},
			},
		},
		{
			file: "dcmtk-echoscu-associate-rq",
			get: func(p PDU) any {
				rq := p.(*AssociateRQ)
				return []any{rq.CalledAE, rq.CallingAE, rq.ApplicationContext, rq.PresentationContexts, rq.UserInfo}
			},
			want: []any{"STORESCP", "ECHOSCU", ApplicationContextName,
				[]PresentationContextRQ{{ID: 1, AbstractSyntax: verification, TransferSyntaxes: []string{implicitLE}}},
				dcmtkUserInfo(16384),
			},
		},
		{
			file: "dcmtk-storescp-echo-associate-ac",
			get:  func(p PDU) any { return p.(*AssociateAC).UserInfo },
			want: dcmtkUserInfo(4096),
		},
		{
			// DCMTK names a transfer syntax even in a rejected context.
			file: "dcmtk-storescp-find-associate-ac",
			get:  func(p PDU) any { return p.(*AssociateAC).PresentationContexts },
			want: []PresentationContextAC{{ID: 1, Result: ResultAbstractSyntaxNotSupported, TransferSyntax: implicitLE}},
		},
		{
			file: "dcmtk-storescp-refuse-associate-rj",
			get:  func(p PDU) any { return *p.(*AssociateRJ) },
			want: AssociateRJ{Result: RejectPermanent, Source: RejectSourceUser, Reason: RejectNoReason},
		},
		{
			file: "pynetdicom-scp-reject-associate-rj",
			get:  func(p PDU) any { return *p.(*AssociateRJ) },
			want: AssociateRJ{Result: RejectPermanent, Source: RejectSourceUser, Reason: RejectCalledAENotRecognized},
		},
		{
			file: "dcmtk-echoscu-aborting-abort",
			get:  func(p PDU) any { return *p.(*Abort) },
			want: Abort{Source: AbortSourceUser, Reason: AbortNotSpecified},
		},
	}

	files := map[string][]byte{}
	for _, c := range capturedPDUs(t) {
		files[c.name] = c.wire
	}
	for _, c := range checks {
		wire, ok := files[c.file]
		if !ok {
			t.Errorf("%s: not in %s; rerun testdata/capture.go", c.file, corpusDir)
			continue
		}
		p, err := Decode(wire)
		if err != nil {
			t.Errorf("%s: %v", c.file, err)
			continue
		}
		if got := c.get(p); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s:\n got %#v\nwant %#v", c.file, got, c.want)
		}
	}
}
