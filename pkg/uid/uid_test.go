package uid

import (
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"1.2.840.10008.5.1.4.1.1.2", true},
		{"2.25.270544226845766470212785437163931377923", true},
		{"0.1", true},
		{"1.2.3." + strings.Repeat("9", 58), true}, // exactly 64
		{"1.2.3." + strings.Repeat("9", 59), false},
		{"", false},
		{"1..2", false},
		{".1.2", false},
		{"1.2.", false},
		{"1.02", false},
		{"../../etc/passwd", false},
		{"1.2/3", false},
		{"1.2.3;rm -rf", false},
		{"1.2.3\x00", false},
		{"1.2.3 ", false},
	} {
		if err := Validate(tc.in); (err == nil) != tc.ok {
			t.Errorf("Validate(%q) = %v, want ok=%v", tc.in, err, tc.ok)
		}
	}
}

func TestNew(t *testing.T) {
	a, b := New(), New()
	if a == b {
		t.Fatal("two new UIDs are equal")
	}
	for _, u := range []string{a, b} {
		if err := Validate(u); err != nil || !strings.HasPrefix(u, "2.25.") {
			t.Errorf("New() = %q: %v", u, err)
		}
	}
}

func TestRegistries(t *testing.T) {
	for _, s := range []string{CTImageStorage, EnhancedCTImageStorage, MRImageStorage, SecondaryCaptureImageStorage,
		"1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.104.1", "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.481.5"} {
		if !IsStorage(s) {
			t.Errorf("%s (%s) is not a storage SOP class", s, Name(s))
		}
	}
	for _, s := range []string{Verification, "1.2.840.10008.1.20.1", "1.2.840.10008.5.1.4.1.2.2.1", "1.2.840.10008.1.3.10"} {
		if IsStorage(s) {
			t.Errorf("%s (%s) counted as a storage SOP class", s, Name(s))
		}
	}
	if n := len(StorageSOPClasses()); n < 150 {
		t.Errorf("only %d storage SOP classes", n)
	}
	for _, ts := range []string{"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.110"} {
		if !IsEncapsulatedTransferSyntax(ts) || IsNativeTransferSyntax(ts) {
			t.Errorf("%s is not classed as encapsulated", ts)
		}
	}
	for _, ts := range []string{ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian} {
		if !IsNativeTransferSyntax(ts) || IsEncapsulatedTransferSyntax(ts) {
			t.Errorf("%s is not classed as native", ts)
		}
	}
	for uid := range storageSOPClasses {
		if err := Validate(uid); err != nil {
			t.Errorf("registry entry %q: %v", uid, err)
		}
	}
}
