package deid

import (
	"bytes"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/pacsflow/pacsflow/pkg/uid"
)

// testKey is a fixed key, so that a failure reproduces.
func testKey(seed byte) []byte {
	return bytes.Repeat([]byte{seed, seed ^ 0x5a, 0x17, 0xc3}, 8)
}

func newDeid(t testing.TB, c Config) *Deidentifier {
	t.Helper()
	d, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Config
		want string // a part of the error; "" for a valid configuration
	}{
		{"no key", Config{}, "at least 32 bytes"},
		{"short key", Config{Key: make([]byte, 31)}, "key is 31 bytes"},
		{"minimal", Config{Key: make([]byte, 32)}, ""},
		{"shift", Config{Key: testKey(1), DateMode: DateShift, MaxShiftDays: 36500}, ""},
		{"unknown mode", Config{Key: testKey(1), DateMode: "blur"}, `date mode "blur"`},
		{"negative shift", Config{Key: testKey(1), MaxShiftDays: -1}, "max shift of -1 days"},
		{"huge shift", Config{Key: testKey(1), MaxShiftDays: 36501}, "max shift of 36501 days"},
		{"everything wrong", Config{Key: []byte("k"), DateMode: "x", MaxShiftDays: -5}, "key is 1 bytes"},
	} {
		err := tc.c.Validate()
		_, newErr := New(tc.c)
		switch {
		case tc.want == "" && (err != nil || newErr != nil):
			t.Errorf("%s: %v / %v", tc.name, err, newErr)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || newErr == nil):
			t.Errorf("%s: error %v, want one containing %q (New: %v)", tc.name, err, tc.want, newErr)
		}
	}
}

func TestDefaults(t *testing.T) {
	d := newDeid(t, Config{Key: testKey(1)})
	if d.mode != DateRemove || d.maxShift != DefaultMaxShiftDays {
		t.Fatalf("defaults: mode %q, max shift %d", d.mode, d.maxShift)
	}
}

func TestKeyNeitherPrintedNorShared(t *testing.T) {
	key := []byte(strings.Repeat("SECRET-KEY-MATERIAL-", 2))
	c := Config{Key: key, DateMode: DateShift}
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c), fmt.Sprint(newDeid(t, c))} {
		if strings.Contains(s, "SECRET") || strings.Contains(s, fmt.Sprint(key[:4])) {
			t.Errorf("key printed: %s", s)
		}
	}
	d := newDeid(t, c)
	before := d.PseudonymizeUID("1.2.3")
	key[0] ^= 0xff // the caller reuses its buffer
	if after := d.PseudonymizeUID("1.2.3"); after != before {
		t.Fatal("the Deidentifier shares the caller's key buffer")
	}
}

// restarted returns two Deidentifiers built from separate copies of the
// same key bytes, as two runs of the service would.
func restarted(t *testing.T, mode DateMode) (*Deidentifier, *Deidentifier) {
	return newDeid(t, Config{Key: testKey(7), DateMode: mode}), newDeid(t, Config{Key: testKey(7), DateMode: mode})
}

func TestPseudonymizeUID(t *testing.T) {
	a, b := restarted(t, DateRemove)
	other := newDeid(t, Config{Key: testKey(8)})
	inputs := []string{
		"1.2.826.0.1.3680043.8.498.12345678901234567890",
		"1.2.3",
		"2.25.270544226845766470212785437163931377923",
		"1.2.3." + strings.Repeat("9", 58),
		"not a UID at all", // invalid input still gives a valid UID
		"1.2.3\x00",
	}
	for _, in := range inputs {
		p := a.PseudonymizeUID(in)
		if err := uid.Validate(p); err != nil {
			t.Errorf("PseudonymizeUID(%q) = %q: %v", in, p, err)
		}
		if !strings.HasPrefix(p, "2.25.") || len(p) > 44 {
			t.Errorf("PseudonymizeUID(%q) = %q: want 2.25. and at most 44 characters", in, p)
		}
		if p == in {
			t.Errorf("PseudonymizeUID(%q) returned its input", in)
		}
		if again := b.PseudonymizeUID(in); again != p {
			t.Errorf("PseudonymizeUID(%q) after a restart: %q, before %q", in, again, p)
		}
		if o := other.PseudonymizeUID(in); o == p {
			t.Errorf("PseudonymizeUID(%q) is %q under two keys", in, p)
		}
		if pp := a.PseudonymizeUID(p); pp == p {
			t.Errorf("a pseudonym is its own pseudonym: %q", p)
		}
		// The integer is a UUID of version 8 and variant 10xx, PS3.5 §B.2.
		n, ok := new(big.Int).SetString(strings.TrimPrefix(p, "2.25."), 10)
		if !ok || n.BitLen() > 128 {
			t.Fatalf("%q is not a 128-bit integer", p)
		}
		var u [16]byte
		n.FillBytes(u[:])
		if u[6]>>4 != 8 || u[8]>>6 != 2 {
			t.Errorf("%q: UUID version %d, variant bits %b", p, u[6]>>4, u[8]>>6)
		}
	}
	if p := a.PseudonymizeUID(""); p != "" {
		t.Errorf("an absent UID became %q", p)
	}
}

func TestPseudonymizeUIDNoCollisions(t *testing.T) {
	d := newDeid(t, Config{Key: testKey(3)})
	const n = 100_000
	seen := make(map[string]string, n)
	for i := range n {
		in := fmt.Sprintf("1.2.826.0.1.3680043.10.543.%d", i)
		p := d.PseudonymizeUID(in)
		if err := uid.Validate(p); err != nil {
			t.Fatalf("%q: %v", p, err)
		}
		if prev, dup := seen[p]; dup {
			t.Fatalf("%q and %q share the pseudonym %q", prev, in, p)
		}
		seen[p] = in
	}
}

func TestPseudonymizeID(t *testing.T) {
	a, b := restarted(t, DateRemove)
	other := newDeid(t, Config{Key: testKey(8)})
	seen := map[string]bool{}
	for _, in := range []string{"MRN-0042", "0042", "ACC-2026-0001", "CT_SCANNER_1", "970ff715f3b74955", " "} {
		p := a.PseudonymizeID(in)
		if !strings.HasPrefix(p, IDPrefix) || len(p) != len(IDPrefix)+16 || strings.Contains(p, in) {
			t.Errorf("PseudonymizeID(%q) = %q", in, p)
		}
		if b.PseudonymizeID(in) != p || other.PseudonymizeID(in) == p {
			t.Errorf("PseudonymizeID(%q): not stable across restarts, or equal across keys", in)
		}
		if seen[p] {
			t.Errorf("PseudonymizeID(%q) = %q again", in, p)
		}
		seen[p] = true
	}
	if a.PseudonymizeID("") != "" {
		t.Error("an absent ID got a pseudonym")
	}
}

func TestDomainsSeparate(t *testing.T) {
	d := newDeid(t, Config{Key: testKey(1)})
	const in = "1.2.840.10008.1.2"
	// Same encoding, so equal if the domains were not separate.
	if d.PseudonymizeDigest(in) == d.EventID(in) {
		t.Error("digest and event ID pseudonyms of one input are equal")
	}
	seen := map[string]string{}
	for _, dom := range []string{domainUID, domainID, domainDigest, domainEvent, domainShift} {
		h := string(d.mac(dom, in))
		if prev, dup := seen[h]; dup {
			t.Errorf("domains %q and %q hash alike", prev, dom)
		}
		seen[h] = dom
	}
}

func TestPseudonymizeDigestAndEventID(t *testing.T) {
	a, b := restarted(t, DateRemove)
	other := newDeid(t, Config{Key: testKey(8)})
	const sum = "1d4dbfd8c1919be97e02aba680859385f1ee753b9dfcd920774dd17b2b7b2ecd"
	p := a.PseudonymizeDigest(sum)
	if len(p) != 32 || strings.Trim(p, "0123456789abcdef") != "" || strings.Contains(sum, p[:8]) {
		t.Errorf("PseudonymizeDigest = %q", p)
	}
	if b.PseudonymizeDigest(sum) != p || a.PseudonymizeDigest(strings.ToUpper(sum)) != p || other.PseudonymizeDigest(sum) == p {
		t.Error("digest pseudonyms: not stable, case-sensitive, or equal across keys")
	}
	if a.PseudonymizeDigest("") != "" {
		t.Error("an absent digest got a pseudonym")
	}
	const id = "instance/1.2.826.0.1.3680043.8.498.1.2.2/" + sum
	e := a.EventID(id)
	if len(e) != 32 || b.EventID(id) != e || other.EventID(id) == e || a.EventID(id+"x") == e || strings.Contains(id, e[:8]) {
		t.Errorf("EventID = %q: not stable, equal across keys or inputs, or derived visibly", e)
	}
}

// days between two DA values.
func days(t *testing.T, from, to string) int {
	t.Helper()
	f, err1 := time.Parse(daLayout, from)
	g, err2 := time.Parse(daLayout, to)
	if err1 != nil || err2 != nil {
		t.Fatalf("dates %q, %q: %v %v", from, to, err1, err2)
	}
	return int(g.Sub(f).Hours() / 24)
}

func TestShiftDate(t *testing.T) {
	a, b := restarted(t, DateShift)
	dates := []string{"20061219", "20070101", "19991231", "20240229", "20260301"}
	offsets := map[int]int{}
	for p := range 200 {
		key := fmt.Sprintf("patient-%d", p)
		var offset int
		for i, da := range dates {
			s := a.ShiftDate(key, da)
			if s == "" || s == da {
				t.Fatalf("ShiftDate(%q, %q) = %q", key, da, s)
			}
			if b.ShiftDate(key, da) != s {
				t.Fatalf("ShiftDate(%q, %q) differs after a restart", key, da)
			}
			back := days(t, s, da)
			if i == 0 {
				offset = back
			}
			if back != offset || back < 1 || back > DefaultMaxShiftDays {
				t.Fatalf("patient %s: %s moved back %d days, %s %d days; want the same 1..365", key, dates[0], offset, da, back)
			}
			// Intervals between the patient's dates are kept.
			if days(t, a.ShiftDate(key, dates[0]), s) != days(t, dates[0], da) {
				t.Fatalf("interval %s..%s not kept", dates[0], da)
			}
		}
		offsets[offset]++
	}
	// 200 patients over 365 possible offsets: expect about 152 distinct.
	if len(offsets) < 120 {
		t.Errorf("200 patients share %d offsets", len(offsets))
	}
	if a.ShiftDate("x", "20061219 ") != a.ShiftDate("x", "20061219") {
		t.Error("DICOM padding not tolerated")
	}
	other := newDeid(t, Config{Key: testKey(8), DateMode: DateShift})
	same := 0
	for p := range 100 {
		key := fmt.Sprint(p)
		if other.ShiftDate(key, "20061219") == a.ShiftDate(key, "20061219") {
			same++
		}
	}
	if same > 5 {
		t.Errorf("%d of 100 patients have the same offset under two keys", same)
	}
}

func TestShiftDateBounds(t *testing.T) {
	d := newDeid(t, Config{Key: testKey(1), DateMode: DateShift, MaxShiftDays: 1})
	for in, want := range map[string]string{"20240301": "20240229", "20230301": "20230228", "20000101": "19991231"} {
		if got := d.ShiftDate("anyone", in); got != want {
			t.Errorf("shift by one day of %s = %s, want %s", in, got, want)
		}
	}
	d = newDeid(t, Config{Key: testKey(1), DateMode: DateShift, MaxShiftDays: 36500})
	if got := d.ShiftDate("anyone", "19000101"); len(got) != 8 {
		t.Errorf("a long shift of an old date gave %q", got)
	}
}

func TestShiftDateRemovesMalformed(t *testing.T) {
	d := newDeid(t, Config{Key: testKey(1), DateMode: DateShift})
	for _, in := range []string{"", "2006-12-19", "2006.12.19", "20061319", "20060230", "2006121", "200612190", "abcdefgh",
		"20061219\\20061220", "20061219-20061231", "-2061219", "+2061219", " 20061219", "LEAK-DOB"} {
		if got := d.ShiftDate("p", in); got != "" {
			t.Errorf("ShiftDate(%q) = %q, want it removed", in, got)
		}
	}
}

func TestRemoveMode(t *testing.T) {
	d := newDeid(t, Config{Key: testKey(1), DateMode: DateRemove})
	if got := d.ShiftDate("p", "20061219"); got != "" {
		t.Errorf("date kept as %q", got)
	}
	if got := d.ShiftTime("p", time.Date(2026, 11, 27, 5, 30, 8, 0, time.UTC)); !got.IsZero() {
		t.Errorf("timestamp kept as %v", got)
	}
	if got := d.TimeOfDay("111154.812"); got != "" {
		t.Errorf("time of day kept as %q", got)
	}
}

func TestShiftTime(t *testing.T) {
	a, b := restarted(t, DateShift)
	loc := time.FixedZone("UTC+2", 2*3600)
	first := time.Date(2026, 11, 27, 5, 30, 8, 527577794, loc)
	last := first.Add(90*time.Minute + 17*time.Millisecond)
	sf, sl := a.ShiftTime("p1", first), a.ShiftTime("p1", last)
	if sl.Sub(sf) != last.Sub(first) {
		t.Errorf("interval %v became %v", last.Sub(first), sl.Sub(sf))
	}
	if sf.Location() != time.UTC || !b.ShiftTime("p1", first).Equal(sf) {
		t.Errorf("shifted %v: not UTC, or not stable across restarts", sf)
	}
	// Same days as the patient's DA values, time of day kept.
	back := first.UTC().Sub(sf)
	da := first.UTC().Format(daLayout)
	if want := time.Duration(days(t, a.ShiftDate("p1", da), da)) * 24 * time.Hour; back != want {
		t.Errorf("timestamp moved back %v, dates %v", back, want)
	}
	if !a.ShiftTime("p1", time.Time{}).IsZero() {
		t.Error("the zero time was shifted")
	}
}

func TestTimeOfDay(t *testing.T) {
	d := newDeid(t, Config{Key: testKey(1), DateMode: DateShift})
	for _, ok := range []string{"11", "1111", "111154", "111154.8", "111154.812345", "235960", "000000"} {
		if got := d.TimeOfDay(ok); got != ok {
			t.Errorf("TimeOfDay(%q) = %q, want it kept", ok, got)
		}
	}
	if got := d.TimeOfDay("111154.812 "); got != "111154.812" {
		t.Errorf("padded TM gave %q", got)
	}
	for _, bad := range []string{"", "1", "111", "11:11:54", "241154", "116054", "111161", "1111.5", "111154.", "111154.1234567",
		"11115a", "111154.81x", "LEAK-TIME", "111154\\121212"} {
		if got := d.TimeOfDay(bad); got != "" {
			t.Errorf("TimeOfDay(%q) = %q, want it removed", bad, got)
		}
	}
}

func TestCodeString(t *testing.T) {
	for _, ok := range []string{"", "CT", "HEAD", "CHEST_TO_PELVIS", "ABDOMEN PELVIS", "SR"} {
		if CodeString(ok) != ok {
			t.Errorf("CodeString(%q) dropped a code", ok)
		}
	}
	for _, bad := range []string{"Chest", "DOE^JANE", "LEAK-BODY", "ABCDEFGHIJKLMNOPQ", "CT\\MR", "É"} {
		if CodeString(bad) != "" {
			t.Errorf("CodeString(%q) kept text", bad)
		}
	}
}
