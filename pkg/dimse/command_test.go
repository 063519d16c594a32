package dimse_test

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/pacsflow/pacsflow/pkg/dimse"
)

// The golden command sets below are written by hand from PS3.7 §6.3.1 and
// Annex E (Implicit VR Little Endian: tag group and element, 32-bit value
// length, value; all little endian), one element field per line with its
// meaning beside it. They are never produced by the code under test.

// cmdHex decodes space-separated hex byte pairs, one field per argument.
func cmdHex(fields ...string) []byte {
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

const (
	hexVerificationNUL = "31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 31 2e 31 00"                         // "1.2.840.10008.1.1" and a NUL pad
	hexCTImageNUL      = "31 2e 32 2e 38 34 30 2e 31 30 30 30 38 2e 35 2e 31 2e 34 2e 31 2e 31 2e 32 00" // "1.2.840.10008.5.1.4.1.1.2" and a NUL pad
	hexInstanceNUL     = "31 2e 32 2e 33 2e 34 00"                                                       // "1.2.3.4" and a NUL pad
)

const (
	ctImage  = "1.2.840.10008.5.1.4.1.1.2"
	instance = "1.2.3.4"
)

// el is an expected element of a decoded command.
func el(tag uint32, value string) dimse.Element {
	return dimse.Element{Tag: tag, Value: []byte(value)}
}

var storeRQ = dimse.StoreRequest{MessageID: 7, Priority: dimse.PriorityMedium, AffectedSOPClassUID: ctImage, AffectedSOPInstanceUID: instance}

var commandGoldens = []struct {
	name string
	cmd  *dimse.Command
	wire []byte
	// elements is what DecodeCommand must give, written out independently
	// of the constructors.
	elements []dimse.Element
}{
	{
		name: "C-ECHO-RQ",
		cmd:  dimse.NewCEchoRQ(1),
		wire: cmdHex(
			"00 00 00 00",      // (0000,0000) CommandGroupLength
			"04 00 00 00",      // value length 4
			"38 00 00 00",      // 56 bytes of command follow
			"00 00 02 00",      // (0000,0002) AffectedSOPClassUID
			"12 00 00 00",      // value length 18
			hexVerificationNUL, // "1.2.840.10008.1.1" Verification, NUL padded to even length
			"00 00 00 01",      // (0000,0100) CommandField
			"02 00 00 00",      // value length 2
			"30 00",            // 0030H C-ECHO-RQ
			"00 00 10 01",      // (0000,0110) MessageID
			"02 00 00 00",      // value length 2
			"01 00",            // 1
			"00 00 00 08",      // (0000,0800) CommandDataSetType
			"02 00 00 00",      // value length 2
			"01 01",            // 0101H: no data set
		),
		elements: []dimse.Element{
			el(dimse.TagAffectedSOPClassUID, "1.2.840.10008.1.1\x00"),
			el(dimse.TagCommandField, "\x30\x00"),
			el(dimse.TagMessageID, "\x01\x00"),
			el(dimse.TagCommandDataSetType, "\x01\x01"),
		},
	},
	{
		name: "C-ECHO-RSP",
		cmd:  dimse.NewCEchoRSP(dimse.NewCEchoRQ(0x1234), dimse.StatusSuccess),
		wire: cmdHex(
			"00 00 00 00",      // (0000,0000) CommandGroupLength
			"04 00 00 00",      // value length 4
			"42 00 00 00",      // 66 bytes of command follow
			"00 00 02 00",      // (0000,0002) AffectedSOPClassUID
			"12 00 00 00",      // value length 18
			hexVerificationNUL, // "1.2.840.10008.1.1"
			"00 00 00 01",      // (0000,0100) CommandField
			"02 00 00 00",      // value length 2
			"30 80",            // 8030H C-ECHO-RSP
			"00 00 20 01",      // (0000,0120) MessageIDBeingRespondedTo
			"02 00 00 00",      // value length 2
			"34 12",            // 1234H
			"00 00 00 08",      // (0000,0800) CommandDataSetType
			"02 00 00 00",      // value length 2
			"01 01",            // 0101H: no data set
			"00 00 00 09",      // (0000,0900) Status
			"02 00 00 00",      // value length 2
			"00 00",            // 0000H Success
		),
		elements: []dimse.Element{
			el(dimse.TagAffectedSOPClassUID, "1.2.840.10008.1.1\x00"),
			el(dimse.TagCommandField, "\x30\x80"),
			el(dimse.TagMessageIDBeingRespondedTo, "\x34\x12"),
			el(dimse.TagCommandDataSetType, "\x01\x01"),
			el(dimse.TagStatus, "\x00\x00"),
		},
	},
	{
		name: "C-STORE-RQ",
		cmd:  dimse.NewCStoreRQ(storeRQ),
		wire: cmdHex(
			"00 00 00 00",  // (0000,0000) CommandGroupLength
			"04 00 00 00",  // value length 4
			"5a 00 00 00",  // 90 bytes of command follow
			"00 00 02 00",  // (0000,0002) AffectedSOPClassUID
			"1a 00 00 00",  // value length 26
			hexCTImageNUL,  // "1.2.840.10008.5.1.4.1.1.2" CT Image Storage, NUL padded
			"00 00 00 01",  // (0000,0100) CommandField
			"02 00 00 00",  // value length 2
			"01 00",        // 0001H C-STORE-RQ
			"00 00 10 01",  // (0000,0110) MessageID
			"02 00 00 00",  // value length 2
			"07 00",        // 7
			"00 00 00 07",  // (0000,0700) Priority
			"02 00 00 00",  // value length 2
			"00 00",        // 0000H medium
			"00 00 00 08",  // (0000,0800) CommandDataSetType
			"02 00 00 00",  // value length 2
			"00 00",        // 0000H: a data set follows
			"00 00 00 10",  // (0000,1000) AffectedSOPInstanceUID
			"08 00 00 00",  // value length 8
			hexInstanceNUL, // "1.2.3.4", NUL padded
		),
		elements: []dimse.Element{
			el(dimse.TagAffectedSOPClassUID, ctImage+"\x00"),
			el(dimse.TagCommandField, "\x01\x00"),
			el(dimse.TagMessageID, "\x07\x00"),
			el(dimse.TagPriority, "\x00\x00"),
			el(dimse.TagCommandDataSetType, "\x00\x00"),
			el(dimse.TagAffectedSOPInstanceUID, instance+"\x00"),
		},
	},
	{
		name: "C-STORE-RQ of a C-MOVE sub-operation",
		cmd: dimse.NewCStoreRQ(dimse.StoreRequest{
			MessageID: 9, Priority: dimse.PriorityHigh, AffectedSOPClassUID: ctImage, AffectedSOPInstanceUID: instance,
			MoveOriginatorAETitle: "MOVESCU", MoveOriginatorMessageID: 3,
		}),
		wire: cmdHex(
			"00 00 00 00",             // (0000,0000) CommandGroupLength
			"04 00 00 00",             // value length 4
			"74 00 00 00",             // 116 bytes of command follow
			"00 00 02 00",             // (0000,0002) AffectedSOPClassUID
			"1a 00 00 00",             // value length 26
			hexCTImageNUL,             // "1.2.840.10008.5.1.4.1.1.2"
			"00 00 00 01",             // (0000,0100) CommandField
			"02 00 00 00",             // value length 2
			"01 00",                   // 0001H C-STORE-RQ
			"00 00 10 01",             // (0000,0110) MessageID
			"02 00 00 00",             // value length 2
			"09 00",                   // 9
			"00 00 00 07",             // (0000,0700) Priority
			"02 00 00 00",             // value length 2
			"01 00",                   // 0001H high
			"00 00 00 08",             // (0000,0800) CommandDataSetType
			"02 00 00 00",             // value length 2
			"00 00",                   // 0000H: a data set follows
			"00 00 00 10",             // (0000,1000) AffectedSOPInstanceUID
			"08 00 00 00",             // value length 8
			hexInstanceNUL,            // "1.2.3.4"
			"00 00 30 10",             // (0000,1030) MoveOriginatorApplicationEntityTitle
			"08 00 00 00",             // value length 8
			"4d 4f 56 45 53 43 55 20", // "MOVESCU", space padded to even length
			"00 00 31 10",             // (0000,1031) MoveOriginatorMessageID
			"02 00 00 00",             // value length 2
			"03 00",                   // 3
		),
		elements: []dimse.Element{
			el(dimse.TagAffectedSOPClassUID, ctImage+"\x00"),
			el(dimse.TagCommandField, "\x01\x00"),
			el(dimse.TagMessageID, "\x09\x00"),
			el(dimse.TagPriority, "\x01\x00"),
			el(dimse.TagCommandDataSetType, "\x00\x00"),
			el(dimse.TagAffectedSOPInstanceUID, instance+"\x00"),
			el(dimse.TagMoveOriginatorAETitle, "MOVESCU "),
			el(dimse.TagMoveOriginatorMessageID, "\x03\x00"),
		},
	},
	{
		name: "C-STORE-RSP success",
		cmd:  dimse.NewCStoreRSP(storeRQ, dimse.Result{Status: dimse.StatusSuccess}),
		wire: cmdHex(
			"00 00 00 00",  // (0000,0000) CommandGroupLength
			"04 00 00 00",  // value length 4
			"5a 00 00 00",  // 90 bytes of command follow
			"00 00 02 00",  // (0000,0002) AffectedSOPClassUID
			"1a 00 00 00",  // value length 26
			hexCTImageNUL,  // "1.2.840.10008.5.1.4.1.1.2"
			"00 00 00 01",  // (0000,0100) CommandField
			"02 00 00 00",  // value length 2
			"01 80",        // 8001H C-STORE-RSP
			"00 00 20 01",  // (0000,0120) MessageIDBeingRespondedTo
			"02 00 00 00",  // value length 2
			"07 00",        // 7
			"00 00 00 08",  // (0000,0800) CommandDataSetType
			"02 00 00 00",  // value length 2
			"01 01",        // 0101H: no data set
			"00 00 00 09",  // (0000,0900) Status
			"02 00 00 00",  // value length 2
			"00 00",        // 0000H Success
			"00 00 00 10",  // (0000,1000) AffectedSOPInstanceUID
			"08 00 00 00",  // value length 8
			hexInstanceNUL, // "1.2.3.4"
		),
		elements: []dimse.Element{
			el(dimse.TagAffectedSOPClassUID, ctImage+"\x00"),
			el(dimse.TagCommandField, "\x01\x80"),
			el(dimse.TagMessageIDBeingRespondedTo, "\x07\x00"),
			el(dimse.TagCommandDataSetType, "\x01\x01"),
			el(dimse.TagStatus, "\x00\x00"),
			el(dimse.TagAffectedSOPInstanceUID, instance+"\x00"),
		},
	},
	{
		name: "C-STORE-RSP failure with an error comment",
		cmd:  dimse.NewCStoreRSP(storeRQ, dimse.Result{Status: dimse.StatusOutOfResources, Comment: "disk full"}),
		wire: cmdHex(
			"00 00 00 00",                   // (0000,0000) CommandGroupLength
			"04 00 00 00",                   // value length 4
			"6c 00 00 00",                   // 108 bytes of command follow
			"00 00 02 00",                   // (0000,0002) AffectedSOPClassUID
			"1a 00 00 00",                   // value length 26
			hexCTImageNUL,                   // "1.2.840.10008.5.1.4.1.1.2"
			"00 00 00 01",                   // (0000,0100) CommandField
			"02 00 00 00",                   // value length 2
			"01 80",                         // 8001H C-STORE-RSP
			"00 00 20 01",                   // (0000,0120) MessageIDBeingRespondedTo
			"02 00 00 00",                   // value length 2
			"07 00",                         // 7
			"00 00 00 08",                   // (0000,0800) CommandDataSetType
			"02 00 00 00",                   // value length 2
			"01 01",                         // 0101H: no data set
			"00 00 00 09",                   // (0000,0900) Status
			"02 00 00 00",                   // value length 2
			"00 a7",                         // A700H Refused: out of resources
			"00 00 02 09",                   // (0000,0902) ErrorComment
			"0a 00 00 00",                   // value length 10
			"64 69 73 6b 20 66 75 6c 6c 20", // "disk full", space padded to even length
			"00 00 00 10",                   // (0000,1000) AffectedSOPInstanceUID
			"08 00 00 00",                   // value length 8
			hexInstanceNUL,                  // "1.2.3.4"
		),
		elements: []dimse.Element{
			el(dimse.TagAffectedSOPClassUID, ctImage+"\x00"),
			el(dimse.TagCommandField, "\x01\x80"),
			el(dimse.TagMessageIDBeingRespondedTo, "\x07\x00"),
			el(dimse.TagCommandDataSetType, "\x01\x01"),
			el(dimse.TagStatus, "\x00\xa7"),
			el(dimse.TagErrorComment, "disk full "),
			el(dimse.TagAffectedSOPInstanceUID, instance+"\x00"),
		},
	},
}

// goldenWire returns the golden encoding of the named command.
func goldenWire(name string) []byte {
	for _, c := range commandGoldens {
		if c.name == name {
			return c.wire
		}
	}
	panic("no golden command " + name)
}

// TestCommandGolden checks that the constructors encode to the golden
// bytes and that DecodeCommand gives the golden elements back.
func TestCommandGolden(t *testing.T) {
	for _, c := range commandGoldens {
		t.Run(c.name, func(t *testing.T) {
			if got := c.cmd.Encode(); !bytes.Equal(got, c.wire) {
				t.Errorf("Encode:\n got %x\nwant %x", got, c.wire)
			}
			got, err := dimse.DecodeCommand(c.wire)
			if err != nil {
				t.Fatalf("DecodeCommand: %v", err)
			}
			if want := (&dimse.Command{Elements: c.elements}); !reflect.DeepEqual(got, want) {
				t.Errorf("DecodeCommand:\n got %v\nwant %v", got.Elements, want.Elements)
			}
			if !reflect.DeepEqual(got, c.cmd) {
				t.Errorf("DecodeCommand differs from the constructor:\n got %v\nwant %v", got.Elements, c.cmd.Elements)
			}
		})
	}
}

// TestCommandAccessors reads the golden commands through the accessors.
func TestCommandAccessors(t *testing.T) {
	rsp, err := dimse.DecodeCommand(goldenWire("C-STORE-RSP failure with an error comment"))
	if err != nil {
		t.Fatal(err)
	}
	if f := rsp.Field(); f != dimse.CStoreRSP {
		t.Errorf("Field = %04X", f)
	}
	if rsp.HasDataSet() {
		t.Errorf("HasDataSet with CommandDataSetType 0101H")
	}
	if s, ok := rsp.Status(); !ok || s != dimse.StatusOutOfResources {
		t.Errorf("Status = %v, %v", s, ok)
	}
	if s, ok := rsp.String(dimse.TagErrorComment); !ok || s != "disk full" {
		t.Errorf("ErrorComment = %q, %v: want the padding trimmed", s, ok)
	}
	if s, ok := rsp.String(dimse.TagAffectedSOPInstanceUID); !ok || s != instance {
		t.Errorf("AffectedSOPInstanceUID = %q, %v: want the NUL trimmed", s, ok)
	}
	if _, ok := rsp.MessageID(); ok {
		t.Errorf("a response has a MessageID")
	}
	if _, ok := rsp.Uint16(dimse.TagAffectedSOPClassUID); ok {
		t.Errorf("Uint16 of a 26-byte element")
	}

	// Any CommandDataSetType but 0101H announces a data set (PS3.7 E.1).
	for _, v := range []uint16{0x0000, 0x0001, 0x0102, 0xFEFE} {
		c := dimse.NewCEchoRQ(1)
		c.SetUint16(dimse.TagCommandDataSetType, v)
		if !c.HasDataSet() {
			t.Errorf("CommandDataSetType %04X: no data set", v)
		}
	}

	// An error comment goes with failures only, and at most 64 characters.
	if c := dimse.NewCStoreRSP(storeRQ, dimse.Result{Status: dimse.StatusSuccess, Comment: "ignored"}); !bytes.Equal(c.Encode(), goldenWire("C-STORE-RSP success")) {
		t.Errorf("success with a comment:\n got %x\nwant %x", c.Encode(), goldenWire("C-STORE-RSP success"))
	}
	long := strings.Repeat("x", 100)
	c := dimse.NewCStoreRSP(storeRQ, dimse.Result{Status: dimse.StatusCannotUnderstand, Comment: long})
	if s, _ := c.String(dimse.TagErrorComment); s != long[:64] {
		t.Errorf("ErrorComment of %d characters, want 64", len(s))
	}
}

// without returns a copy of c less the element tag.
func without(c *dimse.Command, tag uint32) *dimse.Command {
	out := &dimse.Command{}
	for _, e := range c.Elements {
		if e.Tag != tag {
			out.Elements = append(out.Elements, e)
		}
	}
	return out
}

func TestParseCStoreRQ(t *testing.T) {
	move := dimse.StoreRequest{
		MessageID: 9, Priority: dimse.PriorityHigh, AffectedSOPClassUID: ctImage, AffectedSOPInstanceUID: instance,
		MoveOriginatorAETitle: "MOVESCU", MoveOriginatorMessageID: 3,
	}
	for _, c := range []struct {
		name string
		wire []byte
		want dimse.StoreRequest
	}{
		{"C-STORE-RQ", goldenWire("C-STORE-RQ"), storeRQ},
		{"C-STORE-RQ of a C-MOVE sub-operation", goldenWire("C-STORE-RQ of a C-MOVE sub-operation"), move},
	} {
		cmd, err := dimse.DecodeCommand(c.wire)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got, err := dimse.ParseCStoreRQ(cmd); err != nil || got != c.want {
			t.Errorf("%s: ParseCStoreRQ = %+v, %v, want %+v", c.name, got, err, c.want)
		}
	}

	good := dimse.NewCStoreRQ(storeRQ)
	noDataSet := dimse.NewCStoreRQ(storeRQ)
	noDataSet.SetUint16(dimse.TagCommandDataSetType, 0x0101)
	emptyInstance := dimse.NewCStoreRQ(storeRQ)
	emptyInstance.SetUID(dimse.TagAffectedSOPInstanceUID, "\x00")
	shortMessageID := without(good, dimse.TagMessageID)
	shortMessageID.Elements = append(shortMessageID.Elements, dimse.Element{Tag: dimse.TagMessageID, Value: []byte{7}})
	for _, c := range []struct {
		name string
		cmd  *dimse.Command
		want string
	}{
		{"missing MessageID", without(good, dimse.TagMessageID), "without MessageID"},
		{"MessageID of 1 byte", shortMessageID, "without MessageID"},
		{"missing AffectedSOPClassUID", without(good, dimse.TagAffectedSOPClassUID), "without AffectedSOPClassUID"},
		{"missing AffectedSOPInstanceUID", without(good, dimse.TagAffectedSOPInstanceUID), "without AffectedSOPInstanceUID"},
		{"AffectedSOPInstanceUID of padding only", emptyInstance, "without AffectedSOPInstanceUID"},
		{"no data set", noDataSet, "without a data set"},
		{"no CommandDataSetType", without(good, dimse.TagCommandDataSetType), "without a data set"},
		{"C-ECHO-RQ", dimse.NewCEchoRQ(1), "is not C-STORE-RQ"},
	} {
		_, err := dimse.ParseCStoreRQ(c.cmd)
		if !errors.Is(err, dimse.ErrMalformedCommand) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: ParseCStoreRQ error %v, want ErrMalformedCommand %q", c.name, err, c.want)
		}
	}
}

// badCommands are command sets DecodeCommand refuses, each with a piece of
// the message that says which rule it breaks.
var badCommands = []struct {
	name string
	wire []byte
	want string
}{
	{
		name: "element outside group 0000",
		wire: cmdHex(
			"08 00 16 00", // (0008,0016) SOPClassUID: a data set element
			"02 00 00 00", // value length 2
			"31 00",       // "1" NUL
		),
		want: "outside group 0000",
	},
	{
		name: "value length past the end",
		wire: cmdHex(
			"00 00 00 01", // (0000,0100) CommandField
			"04 00 00 00", // value length 4
			"01 00",       // 2 bytes only
		),
		want: "runs past",
	},
	{
		name: "value length 0xFFFFFFFF",
		wire: cmdHex(
			"00 00 00 01", // (0000,0100) CommandField
			"ff ff ff ff", // value length 4 GiB - 1
			"01 00",
		),
		want: "runs past",
	},
	{
		name: "stray bytes after the last element",
		wire: cmdHex(
			"00 00 00 01", "02 00 00 00", "30 00", // CommandField C-ECHO-RQ
			"00 00 00 08", "02 00 00 00", "01 01", // CommandDataSetType none
			"00 00 00", // 3 stray bytes
		),
		want: "stray bytes",
	},
	{
		name: "duplicate element",
		wire: cmdHex(
			"00 00 00 01", "02 00 00 00", "30 00", // CommandField C-ECHO-RQ
			"00 00 00 01", "02 00 00 00", "01 00", // CommandField C-STORE-RQ
			"00 00 00 08", "02 00 00 00", "01 01", // CommandDataSetType none
		),
		want: "appears twice",
	},
	{
		name: "group length mismatch",
		wire: cmdHex(
			"00 00 00 00", "04 00 00 00", "10 00 00 00", // CommandGroupLength 16, 20 follow
			"00 00 00 01", "02 00 00 00", "30 00", // CommandField C-ECHO-RQ
			"00 00 00 08", "02 00 00 00", "01 01", // CommandDataSetType none
		),
		want: "does not match",
	},
	{
		name: "group length of 2 bytes",
		wire: cmdHex(
			"00 00 00 00", "02 00 00 00", "14 00", // CommandGroupLength as US
			"00 00 00 01", "02 00 00 00", "30 00", // CommandField C-ECHO-RQ
			"00 00 00 08", "02 00 00 00", "01 01", // CommandDataSetType none
		),
		want: "does not match",
	},
	{
		name: "group length not first",
		wire: cmdHex(
			"00 00 00 01", "02 00 00 00", "30 00", // CommandField C-ECHO-RQ
			"00 00 00 00", "04 00 00 00", "0a 00 00 00", // CommandGroupLength 10
			"00 00 00 08", "02 00 00 00", "01 01", // CommandDataSetType none
		),
		want: "is not the first",
	},
	{
		name: "missing CommandField",
		wire: cmdHex(
			"00 00 10 01", "02 00 00 00", "01 00", // MessageID 1
			"00 00 00 08", "02 00 00 00", "01 01", // CommandDataSetType none
		),
		want: "no CommandField",
	},
	{
		name: "CommandField of 4 bytes",
		wire: cmdHex(
			"00 00 00 01", "04 00 00 00", "30 00 00 00", // CommandField as UL
			"00 00 00 08", "02 00 00 00", "01 01", // CommandDataSetType none
		),
		want: "no CommandField",
	},
	{
		name: "missing CommandDataSetType",
		wire: cmdHex(
			"00 00 00 01", "02 00 00 00", "30 00", // CommandField C-ECHO-RQ
			"00 00 10 01", "02 00 00 00", "01 00", // MessageID 1
		),
		want: "no CommandDataSetType",
	},
	{
		name: "empty",
		wire: nil,
		want: "no CommandField",
	},
}

func TestDecodeCommandErrors(t *testing.T) {
	for _, c := range badCommands {
		cmd, err := dimse.DecodeCommand(c.wire)
		if !errors.Is(err, dimse.ErrMalformedCommand) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: DecodeCommand = %v, %v, want ErrMalformedCommand %q", c.name, cmd, err, c.want)
		}
	}
}

// TestDecodeCommandDoesNotAlias checks the promise that the result does
// not share memory with the input, which callers reuse for the next command.
func TestDecodeCommandDoesNotAlias(t *testing.T) {
	for _, c := range commandGoldens {
		wire := bytes.Clone(c.wire)
		cmd, err := dimse.DecodeCommand(wire)
		if err != nil {
			t.Fatal(err)
		}
		for i := range wire {
			wire[i] = 0xa5
		}
		if want := (&dimse.Command{Elements: c.elements}); !reflect.DeepEqual(cmd, want) {
			t.Errorf("%s: decoded command changed with its input: %v", c.name, cmd.Elements)
		}
	}
}
