package dimse_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/pacsflow/pacsflow/pkg/dimse"
)

// FuzzDecodeCommand decodes arbitrary bytes as a command set. Besides never
// panicking, every error must wrap ErrMalformedCommand, and a decoded
// command must survive Encode and DecodeCommand unchanged, with Encode
// giving the same bytes again. The accessors must cope with whatever
// DecodeCommand accepts.
//
// The seed corpus is the golden and bad commands of the table tests and, in
// testdata/fuzz/FuzzDecodeCommand, command sets captured from DCMTK and
// pynetdicom (see pkg/dimse/pdu/testdata/capture.go).
func FuzzDecodeCommand(f *testing.F) {
	for _, c := range commandGoldens {
		f.Add(c.wire)
	}
	for _, c := range badCommands {
		f.Add(c.wire)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := dimse.DecodeCommand(data)
		if err != nil {
			if !errors.Is(err, dimse.ErrMalformedCommand) {
				t.Fatalf("error %v does not wrap ErrMalformedCommand", err)
			}
			return
		}
		b := c.Encode()
		c2, err := dimse.DecodeCommand(b)
		if err != nil {
			t.Fatalf("encoding does not decode: %v\n%x", err, b)
		}
		if !reflect.DeepEqual(c2, c) {
			t.Fatalf("round trip changed the command:\nfirst  %v\nsecond %v", c.Elements, c2.Elements)
		}
		if b2 := c2.Encode(); !bytes.Equal(b2, b) {
			t.Fatalf("Encode is not stable:\nfirst  %x\nsecond %x", b, b2)
		}
		c.HasDataSet()
		c.Status()
		c.MessageID()
		c.String(dimse.TagAffectedSOPClassUID)
		if r, err := dimse.ParseCStoreRQ(c); err == nil {
			// What ParseCStoreRQ accepted, NewCStoreRQ rebuilds; it writes
			// the move originator only with its AE title.
			want := r
			if want.MoveOriginatorAETitle == "" {
				want.MoveOriginatorMessageID = 0
			}
			if r2, err := dimse.ParseCStoreRQ(dimse.NewCStoreRQ(r)); err != nil || r2 != want {
				t.Fatalf("C-STORE-RQ %+v rebuilds as %+v, %v", r, r2, err)
			}
		} else if !errors.Is(err, dimse.ErrMalformedCommand) {
			t.Fatalf("ParseCStoreRQ error %v does not wrap ErrMalformedCommand", err)
		}
	})
}

// commandCorpusDir holds FuzzDecodeCommand's seed corpus. The fuzzer may add
// files of its own; the captured ones are told apart by their prefix
// (isCaptured).
const commandCorpusDir = "testdata/fuzz/FuzzDecodeCommand"

func isCaptured(name string) bool {
	return strings.HasPrefix(name, "dcmtk-") || strings.HasPrefix(name, "pynetdicom-")
}

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

// TestCapturedCommands decodes every command set that DCMTK and pynetdicom
// sent: each is valid, is the command its file name says, and C-STORE-RQs
// parse.
func TestCapturedCommands(t *testing.T) {
	entries, err := os.ReadDir(commandCorpusDir)
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]uint16{
		"-c-echo-rq":   dimse.CEchoRQ,
		"-c-echo-rsp":  dimse.CEchoRSP,
		"-c-store-rq":  dimse.CStoreRQ,
		"-c-store-rsp": dimse.CStoreRSP,
	}
	n := 0
	for _, e := range entries {
		if !isCaptured(e.Name()) {
			continue
		}
		n++
		wire, err := readCorpusFile(filepath.Join(commandCorpusDir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		c, err := dimse.DecodeCommand(wire)
		if err != nil {
			t.Errorf("%s: %v", e.Name(), err)
			continue
		}
		// The name ends with the command, and a number for repeats.
		kind := strings.TrimSuffix(strings.TrimRight(e.Name(), "0123456789"), "-")
		want, ok := uint16(0), false
		for suffix, f := range fields {
			if strings.HasSuffix(kind, suffix) {
				want, ok = f, true
			}
		}
		if !ok || c.Field() != want {
			t.Errorf("%s: CommandField %04X", e.Name(), c.Field())
		}
		// The peers are conformant: their command sets are encoded as
		// this package encodes them, group length first.
		if b := c.Encode(); !bytes.Equal(b, wire) {
			t.Errorf("%s: re-encodes as\n%x, not\n%x", e.Name(), b, wire)
		}
		switch c.Field() {
		case dimse.CStoreRQ:
			if _, err := dimse.ParseCStoreRQ(c); err != nil {
				t.Errorf("%s: %v", e.Name(), err)
			}
		case dimse.CEchoRSP, dimse.CStoreRSP:
			if s, ok := c.Status(); !ok || s != dimse.StatusSuccess {
				t.Errorf("%s: Status %v, %v", e.Name(), s, ok)
			}
		}
	}
	if n == 0 {
		t.Fatalf("no captured command in %s; run pkg/dimse/pdu/testdata/capture.go", commandCorpusDir)
	}
}
