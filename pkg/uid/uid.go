// Package uid holds the DICOM unique identifiers pacsflow needs to know by
// value (transfer syntaxes, SOP classes), validates UIDs received from
// peers, and generates new ones.
package uid

import (
	"crypto/rand"
	"fmt"
	"math/big"
)

// Transfer syntaxes with a native (non-encapsulated) encoding, PS3.5 §A.
const (
	ImplicitVRLittleEndian         = "1.2.840.10008.1.2"
	ExplicitVRLittleEndian         = "1.2.840.10008.1.2.1"
	DeflatedExplicitVRLittleEndian = "1.2.840.10008.1.2.1.99"
	ExplicitVRBigEndian            = "1.2.840.10008.1.2.2" // retired, still sent by old modalities
)

// Well-known SOP classes.
const (
	Verification                 = "1.2.840.10008.1.1"
	CTImageStorage               = "1.2.840.10008.5.1.4.1.1.2"
	EnhancedCTImageStorage       = "1.2.840.10008.5.1.4.1.1.2.1"
	MRImageStorage               = "1.2.840.10008.5.1.4.1.1.4"
	SecondaryCaptureImageStorage = "1.2.840.10008.5.1.4.1.1.7"
)

// Implementation identifies pacsflow in associations and file meta
// information. The class UID is a UUID-derived UID (PS3.5 §B.2) fixed for
// this implementation.
const (
	ImplementationClassUID    = "2.25.270544226845766470212785437163931377923"
	ImplementationVersionName = "PACSFLOW_0_1"
)

// IsStorage reports whether uid is a Storage SOP class of PS3.4 Annex B.
func IsStorage(uid string) bool {
	_, ok := storageSOPClasses[uid]
	return ok
}

// StorageSOPClasses returns the UIDs of all Storage SOP classes known to
// this build.
func StorageSOPClasses() []string {
	out := make([]string, 0, len(storageSOPClasses))
	for u := range storageSOPClasses {
		out = append(out, u)
	}
	return out
}

// IsNativeTransferSyntax reports whether ts is one of the four transfer
// syntaxes that encode the whole data set natively.
func IsNativeTransferSyntax(ts string) bool {
	switch ts {
	case ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian:
		return true
	}
	return false
}

// IsEncapsulatedTransferSyntax reports whether ts is a transfer syntax whose
// pixel data is encapsulated (compressed, or referenced).
func IsEncapsulatedTransferSyntax(ts string) bool {
	_, ok := encapsulatedTransferSyntaxes[ts]
	return ok
}

// IsKnownTransferSyntax reports whether ts is native or encapsulated.
func IsKnownTransferSyntax(ts string) bool {
	return IsNativeTransferSyntax(ts) || IsEncapsulatedTransferSyntax(ts)
}

// Name returns the registry name of a known UID, or the UID itself.
func Name(uid string) string {
	switch uid {
	case ImplicitVRLittleEndian:
		return "Implicit VR Little Endian"
	case ExplicitVRLittleEndian:
		return "Explicit VR Little Endian"
	case DeflatedExplicitVRLittleEndian:
		return "Deflated Explicit VR Little Endian"
	case ExplicitVRBigEndian:
		return "Explicit VR Big Endian"
	case Verification:
		return "Verification SOP Class"
	}
	if n, ok := storageSOPClasses[uid]; ok {
		return n
	}
	if n, ok := encapsulatedTransferSyntaxes[uid]; ok {
		return n
	}
	return uid
}

// MaxLen is the maximum length of a UID, PS3.5 §9.
const MaxLen = 64

// Validate checks that s is a UID as PS3.5 §9.1 defines it: at most 64
// characters, digits and dots, components without leading zeros, no empty
// component. Since UIDs received from peers become storage keys and file
// names, this is also what keeps them from naming paths (no "/", no "..").
func Validate(s string) error {
	if s == "" {
		return fmt.Errorf("empty UID")
	}
	if len(s) > MaxLen {
		return fmt.Errorf("UID of %d characters exceeds %d", len(s), MaxLen)
	}
	start := 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) && s[i] != '.' {
			if s[i] < '0' || s[i] > '9' {
				return fmt.Errorf("UID %q contains %q; only digits and dots are allowed", s, s[i])
			}
			continue
		}
		comp := s[start:i]
		if comp == "" {
			return fmt.Errorf("UID %q has an empty component", s)
		}
		if len(comp) > 1 && comp[0] == '0' {
			return fmt.Errorf("UID %q has a component with a leading zero", s)
		}
		start = i + 1
	}
	return nil
}

// New returns a fresh UID under the 2.25 arc from 128 random bits, as
// PS3.5 §B.2 describes.
func New() string {
	var b [16]byte
	_, _ = rand.Read(b[:])  // crypto/rand.Read never returns an error
	b[6] = b[6]&0x0f | 0x40 // UUID version 4
	b[8] = b[8]&0x3f | 0x80 // UUID variant of RFC 4122
	return "2.25." + new(big.Int).SetBytes(b[:]).String()
}
