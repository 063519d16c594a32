// Package part10 reads and writes the DICOM file format of PS3.10: a
// 128-byte preamble, the "DICM" prefix and the File Meta Information
// (group 0002, Explicit VR Little Endian), followed by the data set in the
// transfer syntax the meta information names.
//
// Only the meta information is interpreted: data sets pass through as bytes,
// which is what network transfer and storage need.
package part10

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// PreambleLen is the length of the preamble before the "DICM" prefix.
const PreambleLen = 128

// maxMetaLen bounds the file meta information; real ones are a few hundred bytes.
const maxMetaLen = 64 << 10

// Meta is the File Meta Information of PS3.10 §7.1.
type Meta struct {
	MediaStorageSOPClassUID      string
	MediaStorageSOPInstanceUID   string
	TransferSyntaxUID            string
	ImplementationClassUID       string
	ImplementationVersionName    string
	SourceApplicationEntityTitle string
}

// ErrNotPart10 reports input without the "DICM" prefix after the preamble.
var ErrNotPart10 = errors.New("not a DICOM Part 10 file")

// Meta element tags.
const (
	tagGroupLength    = 0x00020000
	tagVersion        = 0x00020001
	tagSOPClass       = 0x00020002
	tagSOPInstance    = 0x00020003
	tagTransferSyntax = 0x00020010
	tagImplClass      = 0x00020012
	tagImplVersion    = 0x00020013
	tagSourceAE       = 0x00020016
)

// Reader is a Part 10 stream positioned at the start of its data set.
type Reader struct {
	Meta Meta
	// DataSetOffset is where the data set starts in the stream.
	DataSetOffset int64
	br            *bufio.Reader
}

// Read reads the data set.
func (r *Reader) Read(p []byte) (int, error) { return r.br.Read(p) }

// WriteTo copies the data set to w.
func (r *Reader) WriteTo(w io.Writer) (int64, error) { return r.br.WriteTo(w) }

// NewReader reads the preamble and file meta information from rd. The
// returned Reader yields the data set.
func NewReader(rd io.Reader) (*Reader, error) {
	return newReader(bufio.NewReaderSize(rd, 64<<10))
}

// ParseHeader reads the preamble and file meta information at the start of
// b, and returns the meta information and where the data set starts.
func ParseHeader(b []byte) (Meta, int64, error) {
	// A small buffer: the header is a few hundred bytes and b is in memory.
	r, err := newReader(bufio.NewReaderSize(bytes.NewReader(b), 512))
	if err != nil {
		return Meta{}, 0, err
	}
	return r.Meta, r.DataSetOffset, nil
}

func newReader(br *bufio.Reader) (*Reader, error) {
	head := make([]byte, PreambleLen+4)
	if _, err := io.ReadFull(br, head); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: shorter than the preamble", ErrNotPart10)
		}
		return nil, err
	}
	if string(head[PreambleLen:]) != "DICM" {
		return nil, fmt.Errorf("%w: no DICM prefix", ErrNotPart10)
	}
	r := &Reader{br: br, DataSetOffset: PreambleLen + 4}
	var metaEnd int64 = -1
	for metaEnd < 0 || r.DataSetOffset < metaEnd {
		peek, err := br.Peek(2)
		if err != nil || binary.LittleEndian.Uint16(peek) != 0x0002 {
			if metaEnd >= 0 {
				return nil, fmt.Errorf("file meta information ends before its group length says")
			}
			break // no group length: the meta ends where group 0002 does
		}
		tag, val, n, err := readExplicitLE(br)
		if err != nil {
			return nil, fmt.Errorf("file meta information: %w", err)
		}
		r.DataSetOffset += n
		if r.DataSetOffset-PreambleLen-4 > maxMetaLen {
			return nil, fmt.Errorf("file meta information longer than %d bytes", maxMetaLen)
		}
		switch tag {
		case tagGroupLength:
			if len(val) != 4 {
				return nil, fmt.Errorf("file meta group length of %d bytes", len(val))
			}
			metaEnd = r.DataSetOffset + int64(binary.LittleEndian.Uint32(val))
		case tagSOPClass:
			r.Meta.MediaStorageSOPClassUID = trim(val)
		case tagSOPInstance:
			r.Meta.MediaStorageSOPInstanceUID = trim(val)
		case tagTransferSyntax:
			r.Meta.TransferSyntaxUID = trim(val)
		case tagImplClass:
			r.Meta.ImplementationClassUID = trim(val)
		case tagImplVersion:
			r.Meta.ImplementationVersionName = trim(val)
		case tagSourceAE:
			r.Meta.SourceApplicationEntityTitle = trim(val)
		}
	}
	if r.Meta.TransferSyntaxUID == "" || r.Meta.MediaStorageSOPClassUID == "" || r.Meta.MediaStorageSOPInstanceUID == "" {
		return nil, fmt.Errorf("file meta information lacks the SOP class, SOP instance or transfer syntax UID")
	}
	return r, nil
}

func trim(v []byte) string { return strings.Trim(string(v), " \x00") }

// readExplicitLE reads one Explicit VR Little Endian element of the meta group.
func readExplicitLE(br *bufio.Reader) (tag uint32, val []byte, n int64, err error) {
	var h [8]byte
	if _, err = io.ReadFull(br, h[:]); err != nil {
		return 0, nil, 0, unexpected(err)
	}
	tag = uint32(binary.LittleEndian.Uint16(h[0:]))<<16 | uint32(binary.LittleEndian.Uint16(h[2:]))
	vr := string(h[4:6])
	length := uint32(binary.LittleEndian.Uint16(h[6:]))
	n = 8
	if longVR(vr) {
		var l [4]byte
		if _, err = io.ReadFull(br, l[:]); err != nil {
			return 0, nil, 0, unexpected(err)
		}
		length = binary.LittleEndian.Uint32(l[:])
		n += 4
	}
	if length > maxMetaLen {
		return 0, nil, 0, fmt.Errorf("element (%04X,%04X) of %d bytes", tag>>16, tag&0xFFFF, length)
	}
	val = make([]byte, length)
	if _, err = io.ReadFull(br, val); err != nil {
		return 0, nil, 0, unexpected(err)
	}
	return tag, val, n + int64(length), nil
}

// longVR reports the VRs with a reserved field and a 32-bit length, PS3.5 §7.1.2.
func longVR(vr string) bool {
	switch vr {
	case "OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV":
		return true
	}
	return false
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// AppendHeader appends the preamble, the prefix and the file meta
// information for m to b.
func AppendHeader(b []byte, m *Meta) []byte {
	b = append(b, make([]byte, PreambleLen)...)
	b = append(b, "DICM"...)
	lenAt := len(b) + 8
	b = appendElement(b, tagGroupLength, "UL", []byte{0, 0, 0, 0})
	start := len(b)
	b = appendElement(b, tagVersion, "OB", []byte{0, 1})
	b = appendElement(b, tagSOPClass, "UI", pad(m.MediaStorageSOPClassUID, 0))
	b = appendElement(b, tagSOPInstance, "UI", pad(m.MediaStorageSOPInstanceUID, 0))
	b = appendElement(b, tagTransferSyntax, "UI", pad(m.TransferSyntaxUID, 0))
	b = appendElement(b, tagImplClass, "UI", pad(m.ImplementationClassUID, 0))
	if m.ImplementationVersionName != "" {
		b = appendElement(b, tagImplVersion, "SH", pad(m.ImplementationVersionName, ' '))
	}
	if m.SourceApplicationEntityTitle != "" {
		b = appendElement(b, tagSourceAE, "AE", pad(m.SourceApplicationEntityTitle, ' '))
	}
	binary.LittleEndian.PutUint32(b[lenAt:], uint32(len(b)-start))
	return b
}

func appendElement(b []byte, tag uint32, vr string, v []byte) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(tag>>16))
	b = binary.LittleEndian.AppendUint16(b, uint16(tag))
	b = append(b, vr...)
	if longVR(vr) {
		b = append(b, 0, 0)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(v)))
	} else {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(v)))
	}
	return append(b, v...)
}

func pad(s string, with byte) []byte {
	b := []byte(s)
	if len(b)%2 == 1 {
		b = append(b, with)
	}
	return b
}
