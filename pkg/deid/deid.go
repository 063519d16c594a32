package deid

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base32"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// DateMode says what becomes of dates and times.
type DateMode string

const (
	// DateRemove empties dates and times: the Basic Profile's action Z for
	// Study Date and Study Time. The default.
	DateRemove DateMode = "remove"
	// DateShift moves every date and timestamp of a patient back by the
	// same whole number of days, which keeps the intervals between them:
	// the Retain Longitudinal Temporal Information with Modified Dates
	// Option, action C. See the package documentation for what it does not
	// protect against.
	DateShift DateMode = "shift"
)

const (
	// MinKeyLen is the shortest key accepted: 256 bits, the output size of
	// the HMAC-SHA-256 it keys.
	MinKeyLen = 32
	// DefaultMaxShiftDays bounds the date shift unless configured.
	DefaultMaxShiftDays = 365
	// maxMaxShiftDays keeps shifted dates within years DA can write.
	maxMaxShiftDays = 36500
)

// Config configures a Deidentifier.
type Config struct {
	// Key is the secret of every keyed hash: at least MinKeyLen random
	// bytes, from the deployment's secret store. Whoever holds it can
	// re-identify by hashing candidate values, so it never goes to analytics
	// subscribers. The same key gives the same pseudonyms after a restart;
	// another key gives unrelated ones (rotating it unlinks all history).
	Key []byte
	// DateMode is DateRemove (also when empty) or DateShift.
	DateMode DateMode
	// MaxShiftDays bounds the shift of DateShift: each patient's dates move
	// back by 1 to MaxShiftDays days. 0 means DefaultMaxShiftDays; at most
	// 36500.
	MaxShiftDays int
}

// String describes c without its key, so that logging a configuration
// does not leak the secret.
func (c Config) String() string {
	return fmt.Sprintf("deid.Config{Key: %d bytes redacted, DateMode: %q, MaxShiftDays: %d}", len(c.Key), c.DateMode, c.MaxShiftDays)
}

// GoString is String, for %#v.
func (c Config) GoString() string { return c.String() }

// Validate reports what is wrong with c, if anything.
func (c Config) Validate() error {
	var errs []error
	if len(c.Key) < MinKeyLen {
		errs = append(errs, fmt.Errorf("deid: key is %d bytes; it must be at least %d bytes (256 bits) of secret random data", len(c.Key), MinKeyLen))
	}
	switch c.DateMode {
	case "", DateRemove, DateShift:
	default:
		errs = append(errs, fmt.Errorf("deid: date mode %q is neither %q nor %q", c.DateMode, DateShift, DateRemove))
	}
	if c.MaxShiftDays < 0 || c.MaxShiftDays > maxMaxShiftDays {
		errs = append(errs, fmt.Errorf("deid: max shift of %d days is outside 1..%d (0 for the default %d)", c.MaxShiftDays, maxMaxShiftDays, DefaultMaxShiftDays))
	}
	return errors.Join(errs...)
}

// Deidentifier applies the keyed transformations of the profile. It holds
// its own copy of the key and is safe for concurrent use. Its outputs
// depend only on the key, the configuration and the input, never on time
// or state, so that separate processes and restarts agree.
type Deidentifier struct {
	key      []byte
	mode     DateMode
	maxShift int
}

// New returns a Deidentifier for a valid configuration.
func New(c Config) (*Deidentifier, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	d := &Deidentifier{key: append([]byte(nil), c.Key...), mode: c.DateMode, maxShift: c.MaxShiftDays}
	if d.mode == "" {
		d.mode = DateRemove
	}
	if d.maxShift == 0 {
		d.maxShift = DefaultMaxShiftDays
	}
	return d, nil
}

// String describes d without its key.
func (d *Deidentifier) String() string {
	return fmt.Sprintf("deid.Deidentifier{DateMode: %q, MaxShiftDays: %d}", d.mode, d.maxShift)
}

// Domains of the keyed hash. Each kind of value is hashed in its own
// domain, so that one input used in two roles (an event ID, a UID, a
// digest) gives unrelated outputs, and no output of one kind can be
// computed from another.
const (
	domainUID    = "uid"
	domainID     = "id"
	domainDigest = "sha256"
	domainEvent  = "event-id"
	domainShift  = "date-shift"
)

// mac is HMAC-SHA-256 under the key of domain, a NUL, and s. Domains hold
// no NUL, so (domain, s) is encoded unambiguously.
func (d *Deidentifier) mac(domain, s string) []byte {
	m := hmac.New(sha256.New, d.key)
	m.Write([]byte(domain))
	m.Write([]byte{0})
	m.Write([]byte(s))
	return m.Sum(nil)
}

// PseudonymizeUID replaces a UID (action U) with "2.25." and the decimal
// integer of a UUID made from the keyed hash of u, as PS3.5 §B.2 derives
// UIDs from UUIDs. The UUID is of version 8 (RFC 9562, content defined by
// the implementation): 122 bits of the hash, the other 6 mark version and
// variant. The result is a valid UID of at most 44 characters, the same for
// the same key and u (so references between instances stay consistent
// across events and restarts), unrelated across keys, and equal to u only
// with probability 2^-122. The input need not be a valid UID. An empty UID
// (absent) stays empty.
func (d *Deidentifier) PseudonymizeUID(u string) string {
	if u == "" {
		return ""
	}
	b := d.mac(domainUID, u)[:16]
	b[6] = b[6]&0x0f | 0x80 // version 8
	b[8] = b[8]&0x3f | 0x80 // variant 10xx of RFC 9562
	return "2.25." + new(big.Int).SetBytes(b).String()
}

// IDPrefix begins every pseudonym of PseudonymizeID, so that a pseudonym
// is recognised as one.
const IDPrefix = "PSN-"

// PseudonymizeID replaces an identifier, such as a Patient ID or an
// Accession Number (action Z with a consistent dummy value, or D), with
// IDPrefix and 80 bits of its keyed hash in base32: 20 characters, the same
// for the same key and s, so that one patient's studies still link. An
// empty identifier (absent) stays empty. The pseudonym fits LO (64
// characters) but not SH (16): it is meant for the analytics events, which
// are JSON, not for writing back into a DICOM data set.
func (d *Deidentifier) PseudonymizeID(s string) string {
	if s == "" {
		return ""
	}
	return IDPrefix + base32.StdEncoding.EncodeToString(d.mac(domainID, s)[:10])
}

// PseudonymizeDigest replaces the hex SHA-256 of a stored object with 128
// bits of its keyed hash, in lowercase hex (32 characters, so it is not
// mistaken for a SHA-256). Equal digests give equal pseudonyms, so
// versions of an instance can still be told apart and matched to what
// they replace, but a holder of a file can no longer find its event by
// hashing it. Hex case does not matter; an empty digest stays empty.
func (d *Deidentifier) PseudonymizeDigest(hexDigest string) string {
	if hexDigest == "" {
		return ""
	}
	return hex.EncodeToString(d.mac(domainDigest, strings.ToLower(hexDigest))[:16])
}

// EventID derives the ID of a projected event from the ID of its source
// event: 128 bits of the keyed hash in lowercase hex. A retried projection
// of the same event gets the same ID, which JetStream de-duplicates, and
// the ID reveals nothing of the source ID (which holds UIDs and digests).
func (d *Deidentifier) EventID(sourceID string) string {
	return hex.EncodeToString(d.mac(domainEvent, sourceID)[:16])
}

// shiftDays is the patient's offset: 1 to maxShift days, from the keyed
// hash of the patient key. Never 0, so that no patient keeps real dates.
func (d *Deidentifier) shiftDays(patientKey string) int {
	h := d.mac(domainShift, patientKey)
	return 1 + int(binary.BigEndian.Uint64(h[:8])%uint64(d.maxShift))
}

// daLayout is DICOM DA, YYYYMMDD, as a Go time layout.
const daLayout = "20060102"

// ShiftDate de-identifies a DA value of the patient identified by
// patientKey. With DateShift it returns the date moved back by the
// patient's offset (the same for every date of that patient and key, so
// intervals between them are kept); with DateRemove it returns "". A
// value that is not YYYYMMDD of a real calendar day once DICOM's space
// padding is trimmed (empty, a range, several values, text) is removed,
// since it cannot be shifted and might be free text.
// patientKey is any string that identifies the patient to the caller; it
// only selects the offset.
func (d *Deidentifier) ShiftDate(patientKey, da string) string {
	if d.mode != DateShift {
		return ""
	}
	da = strings.TrimRight(da, " ")
	if len(da) != len(daLayout) || strings.Trim(da, "0123456789") != "" {
		return ""
	}
	t, err := time.Parse(daLayout, da)
	if err != nil {
		return ""
	}
	return t.AddDate(0, 0, -d.shiftDays(patientKey)).Format(daLayout)
}

// ShiftTime de-identifies a timestamp of the patient identified by
// patientKey, such as the time an instance was received: with DateShift it
// is moved back by the same whole days as the patient's dates (ShiftDate),
// which keeps its time of day and its intervals to the patient's other
// timestamps; with DateRemove, and for the zero time, it is the zero time.
// The result is in UTC.
func (d *Deidentifier) ShiftTime(patientKey string, t time.Time) time.Time {
	if d.mode != DateShift || t.IsZero() {
		return time.Time{}
	}
	return t.UTC().Add(-time.Duration(d.shiftDays(patientKey)) * 24 * time.Hour)
}

// TimeOfDay de-identifies a TM value. With DateRemove it returns "" (action
// Z). With DateShift it returns tm unchanged when it is a well-formed TM
// (HH, HHMM, HHMMSS or HHMMSS.F to HHMMSS.FFFFFF, after trimming padding),
// since a shift by whole days leaves the time of day as it was (action C
// of the Modified Dates Option); anything else is removed, since it might
// be free text.
func (d *Deidentifier) TimeOfDay(tm string) string {
	if d.mode != DateShift {
		return ""
	}
	tm = strings.TrimRight(tm, " ")
	if !validTM(tm) {
		return ""
	}
	return tm
}

// validTM reports whether s is a TM value of PS3.5 §6.2 without the
// retired colon-separated form.
func validTM(s string) bool {
	hms, frac, hasFrac := strings.Cut(s, ".")
	switch {
	case len(hms) != 2 && len(hms) != 4 && len(hms) != 6,
		hasFrac && (len(hms) != 6 || len(frac) < 1 || len(frac) > 6),
		strings.Trim(hms, "0123456789") != "" || strings.Trim(frac, "0123456789") != "":
		return false
	}
	limits := []int{23, 59, 60} // 60: a leap second
	for i := 0; i < len(hms); i += 2 {
		if int(hms[i]-'0')*10+int(hms[i+1]-'0') > limits[i/2] {
			return false
		}
	}
	return true
}

// CodeString returns s when it is a valid CS value (at most 16 characters
// of uppercase letters, digits, space and underscore), and "" otherwise.
// It guards attributes that the profile keeps (K) because their values are
// codes, such as Modality or Body Part Examined: a value that is not a code
// was not written by a conforming application and might be free text.
func CodeString(s string) string {
	if len(s) > 16 {
		return ""
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == ' ' || c == '_') {
			return ""
		}
	}
	return s
}
