// Package dimse implements the DICOM message service element (PS3.7): the
// command sets of C-ECHO and C-STORE, their fragmentation and reassembly
// over an upper layer association, and the C-ECHO and C-STORE service
// class user (Client) and provider (Server).
//
// A C-STORE provider hands each data set to its handler as a stream while
// P-DATA arrives: an instance is never held whole in memory.
package dimse

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/pacsflow/pacsflow/pkg/uid"
)

// Command set element tags (group 0000), PS3.7 §E.1.
const (
	TagCommandGroupLength        uint32 = 0x00000000
	TagAffectedSOPClassUID       uint32 = 0x00000002
	TagRequestedSOPClassUID      uint32 = 0x00000003
	TagCommandField              uint32 = 0x00000100
	TagMessageID                 uint32 = 0x00000110
	TagMessageIDBeingRespondedTo uint32 = 0x00000120
	TagMoveDestination           uint32 = 0x00000600
	TagPriority                  uint32 = 0x00000700
	TagCommandDataSetType        uint32 = 0x00000800
	TagStatus                    uint32 = 0x00000900
	TagOffendingElement          uint32 = 0x00000901
	TagErrorComment              uint32 = 0x00000902
	TagErrorID                   uint32 = 0x00000903
	TagAffectedSOPInstanceUID    uint32 = 0x00001000
	TagRequestedSOPInstanceUID   uint32 = 0x00001001
	TagMoveOriginatorAETitle     uint32 = 0x00001030
	TagMoveOriginatorMessageID   uint32 = 0x00001031
)

// CommandField values, PS3.7 §E.1.
const (
	CStoreRQ  uint16 = 0x0001
	CStoreRSP uint16 = 0x8001
	CGetRQ    uint16 = 0x0010
	CFindRQ   uint16 = 0x0020
	CMoveRQ   uint16 = 0x0021
	CEchoRQ   uint16 = 0x0030
	CEchoRSP  uint16 = 0x8030
	CCancelRQ uint16 = 0x0FFF
)

// Priority values of a C-STORE-RQ.
const (
	PriorityMedium uint16 = 0x0000
	PriorityHigh   uint16 = 0x0001
	PriorityLow    uint16 = 0x0002
)

// noDataSet is the CommandDataSetType value meaning that no data set follows.
const noDataSet uint16 = 0x0101

// MaxCommandLength bounds a reassembled command set. Real command sets are a
// few hundred bytes; the bound keeps a peer from filling memory with command
// fragments.
const MaxCommandLength = 64 << 10

// Element is one element of a command set.
type Element struct {
	Tag   uint32
	Value []byte
}

// Command is a DIMSE command set: its elements in order, without the
// CommandGroupLength, which encoding computes.
type Command struct {
	Elements []Element
}

// ErrMalformedCommand is wrapped by every command decoding error.
var ErrMalformedCommand = errors.New("malformed DIMSE command set")

// DecodeCommand decodes a command set encoded in Implicit VR Little Endian
// (PS3.7 §6.3.1). A CommandGroupLength, when present, must be first and
// must match the bytes that follow it. The result does not alias b.
func DecodeCommand(b []byte) (*Command, error) {
	b = append([]byte(nil), b...)
	c := &Command{}
	seen := make(map[uint32]bool, 12)
	for off := 0; off < len(b); {
		if len(b)-off < 8 {
			return nil, fmt.Errorf("%w: %d stray bytes at offset %d", ErrMalformedCommand, len(b)-off, off)
		}
		group := binary.LittleEndian.Uint16(b[off:])
		elem := binary.LittleEndian.Uint16(b[off+2:])
		n := binary.LittleEndian.Uint32(b[off+4:])
		if group != 0 {
			return nil, fmt.Errorf("%w: element (%04X,%04X) outside group 0000", ErrMalformedCommand, group, elem)
		}
		if uint64(n) > uint64(len(b)-off-8) {
			return nil, fmt.Errorf("%w: element (0000,%04X) length %d runs past the %d remaining bytes", ErrMalformedCommand, elem, n, len(b)-off-8)
		}
		tag := uint32(elem)
		if seen[tag] {
			return nil, fmt.Errorf("%w: element (0000,%04X) appears twice", ErrMalformedCommand, elem)
		}
		seen[tag] = true
		val := b[off+8 : off+8+int(n) : off+8+int(n)]
		off += 8 + int(n)
		if tag == TagCommandGroupLength {
			if len(c.Elements) != 0 {
				return nil, fmt.Errorf("%w: CommandGroupLength is not the first element", ErrMalformedCommand)
			}
			if n != 4 || binary.LittleEndian.Uint32(val) != uint32(len(b)-off) {
				return nil, fmt.Errorf("%w: CommandGroupLength does not match the %d bytes that follow it", ErrMalformedCommand, len(b)-off)
			}
			continue
		}
		c.Elements = append(c.Elements, Element{Tag: tag, Value: val})
	}
	if _, ok := c.Uint16(TagCommandField); !ok {
		return nil, fmt.Errorf("%w: no CommandField", ErrMalformedCommand)
	}
	if _, ok := c.Uint16(TagCommandDataSetType); !ok {
		return nil, fmt.Errorf("%w: no CommandDataSetType", ErrMalformedCommand)
	}
	return c, nil
}

// Encode returns the command set in Implicit VR Little Endian, led by its
// CommandGroupLength.
func (c *Command) Encode() []byte {
	n := 0
	for _, e := range c.Elements {
		n += 8 + len(e.Value)
	}
	b := make([]byte, 0, 12+n)
	b = appendElement(b, TagCommandGroupLength, binary.LittleEndian.AppendUint32(nil, uint32(n)))
	for _, e := range c.Elements {
		b = appendElement(b, e.Tag, e.Value)
	}
	return b
}

func appendElement(b []byte, tag uint32, v []byte) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(tag>>16))
	b = binary.LittleEndian.AppendUint16(b, uint16(tag))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(v)))
	return append(b, v...)
}

func (c *Command) get(tag uint32) ([]byte, bool) {
	for _, e := range c.Elements {
		if e.Tag == tag {
			return e.Value, true
		}
	}
	return nil, false
}

// Uint16 returns the value of a US element; ok is false when the element is
// absent or not 2 bytes long.
func (c *Command) Uint16(tag uint32) (uint16, bool) {
	v, ok := c.get(tag)
	if !ok || len(v) != 2 {
		return 0, false
	}
	return binary.LittleEndian.Uint16(v), true
}

// String returns the value of a UI, AE or LO element without its padding.
func (c *Command) String(tag uint32) (string, bool) {
	v, ok := c.get(tag)
	if !ok {
		return "", false
	}
	return strings.TrimRight(strings.TrimLeft(string(v), " "), " \x00"), true
}

func (c *Command) set(tag uint32, v []byte) {
	for i := range c.Elements {
		if c.Elements[i].Tag == tag {
			c.Elements[i].Value = v
			return
		}
	}
	c.Elements = append(c.Elements, Element{Tag: tag, Value: v})
}

// SetUint16 sets a US element.
func (c *Command) SetUint16(tag uint32, v uint16) {
	c.set(tag, binary.LittleEndian.AppendUint16(nil, v))
}

// SetUID sets a UI element, padded to even length with a NUL (PS3.5 §9.1).
func (c *Command) SetUID(tag uint32, v string) { c.set(tag, pad(v, 0)) }

// SetText sets an AE, CS or LO element, padded to even length with a space.
func (c *Command) SetText(tag uint32, v string) { c.set(tag, pad(v, ' ')) }

func pad(v string, with byte) []byte {
	b := []byte(v)
	if len(b)%2 == 1 {
		b = append(b, with)
	}
	return b
}

// Field returns the CommandField.
func (c *Command) Field() uint16 { v, _ := c.Uint16(TagCommandField); return v }

// HasDataSet reports whether a data set follows the command (PS3.7 §E.1:
// any CommandDataSetType other than 0101H).
func (c *Command) HasDataSet() bool {
	v, ok := c.Uint16(TagCommandDataSetType)
	return ok && v != noDataSet
}

// MessageID returns the MessageID of a request.
func (c *Command) MessageID() (uint16, bool) { return c.Uint16(TagMessageID) }

// Status returns the Status of a response.
func (c *Command) Status() (Status, bool) {
	v, ok := c.Uint16(TagStatus)
	return Status(v), ok
}

// sorted re-orders elements by tag, as PS3.5 §7.1 requires of encoders.
func (c *Command) sorted() *Command {
	for i := 1; i < len(c.Elements); i++ {
		for j := i; j > 0 && c.Elements[j].Tag < c.Elements[j-1].Tag; j-- {
			c.Elements[j], c.Elements[j-1] = c.Elements[j-1], c.Elements[j]
		}
	}
	return c
}

// newCommand starts a command set with its CommandField and data set type.
func newCommand(field uint16, hasDataSet bool) *Command {
	c := &Command{}
	c.SetUint16(TagCommandField, field)
	dst := noDataSet
	if hasDataSet {
		dst = 0x0000
	}
	c.SetUint16(TagCommandDataSetType, dst)
	return c
}

// NewCEchoRQ builds a C-ECHO-RQ, PS3.7 §9.3.5.1.
func NewCEchoRQ(messageID uint16) *Command {
	c := newCommand(CEchoRQ, false)
	c.SetUID(TagAffectedSOPClassUID, uid.Verification)
	c.SetUint16(TagMessageID, messageID)
	return c.sorted()
}

// NewCEchoRSP builds a C-ECHO-RSP, PS3.7 §9.3.5.2.
func NewCEchoRSP(rq *Command, status Status) *Command {
	c := newCommand(CEchoRSP, false)
	c.SetUID(TagAffectedSOPClassUID, uid.Verification)
	id, _ := rq.MessageID()
	c.SetUint16(TagMessageIDBeingRespondedTo, id)
	c.SetUint16(TagStatus, uint16(status))
	return c.sorted()
}

// StoreRequest is the content of a C-STORE-RQ, PS3.7 §9.3.1.1.
type StoreRequest struct {
	MessageID              uint16
	Priority               uint16
	AffectedSOPClassUID    string
	AffectedSOPInstanceUID string
	// MoveOriginatorAETitle and MoveOriginatorMessageID are set when the
	// C-STORE is a sub-operation of a C-MOVE.
	MoveOriginatorAETitle   string
	MoveOriginatorMessageID uint16
}

// NewCStoreRQ builds a C-STORE-RQ.
func NewCStoreRQ(r StoreRequest) *Command {
	c := newCommand(CStoreRQ, true)
	c.SetUID(TagAffectedSOPClassUID, r.AffectedSOPClassUID)
	c.SetUint16(TagMessageID, r.MessageID)
	c.SetUint16(TagPriority, r.Priority)
	c.SetUID(TagAffectedSOPInstanceUID, r.AffectedSOPInstanceUID)
	if r.MoveOriginatorAETitle != "" {
		c.SetText(TagMoveOriginatorAETitle, r.MoveOriginatorAETitle)
		c.SetUint16(TagMoveOriginatorMessageID, r.MoveOriginatorMessageID)
	}
	return c.sorted()
}

// ParseCStoreRQ checks that c is a well-formed C-STORE-RQ and extracts it.
func ParseCStoreRQ(c *Command) (StoreRequest, error) {
	var r StoreRequest
	var ok bool
	if c.Field() != CStoreRQ {
		return r, fmt.Errorf("%w: CommandField 0x%04X is not C-STORE-RQ", ErrMalformedCommand, c.Field())
	}
	if r.MessageID, ok = c.MessageID(); !ok {
		return r, fmt.Errorf("%w: C-STORE-RQ without MessageID", ErrMalformedCommand)
	}
	if r.AffectedSOPClassUID, ok = c.String(TagAffectedSOPClassUID); !ok || r.AffectedSOPClassUID == "" {
		return r, fmt.Errorf("%w: C-STORE-RQ without AffectedSOPClassUID", ErrMalformedCommand)
	}
	if r.AffectedSOPInstanceUID, ok = c.String(TagAffectedSOPInstanceUID); !ok || r.AffectedSOPInstanceUID == "" {
		return r, fmt.Errorf("%w: C-STORE-RQ without AffectedSOPInstanceUID", ErrMalformedCommand)
	}
	if !c.HasDataSet() {
		return r, fmt.Errorf("%w: C-STORE-RQ without a data set", ErrMalformedCommand)
	}
	r.Priority, _ = c.Uint16(TagPriority)
	r.MoveOriginatorAETitle, _ = c.String(TagMoveOriginatorAETitle)
	r.MoveOriginatorMessageID, _ = c.Uint16(TagMoveOriginatorMessageID)
	return r, nil
}

// NewCStoreRSP builds a C-STORE-RSP answering r, PS3.7 §9.3.1.2.
func NewCStoreRSP(r StoreRequest, res Result) *Command {
	c := newCommand(CStoreRSP, false)
	c.SetUID(TagAffectedSOPClassUID, r.AffectedSOPClassUID)
	c.SetUint16(TagMessageIDBeingRespondedTo, r.MessageID)
	c.SetUint16(TagStatus, uint16(res.Status))
	c.SetUID(TagAffectedSOPInstanceUID, r.AffectedSOPInstanceUID)
	if res.Comment != "" && !res.Status.IsSuccess() {
		c.SetText(TagErrorComment, truncate(res.Comment, 64))
	}
	return c.sorted()
}

// truncate shortens s to at most n bytes; ErrorComment is an LO of 64 characters.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
