package synth

import (
	"crypto/sha256"
	"encoding/binary"
	"math/big"
	"time"
)

// deriver turns the run's seed into every value a study needs. Each value is a hash of the
// seed, the study's index and a name for what it is for, rather than a draw from one random
// stream: a value then stays the same when others are added or removed, and nothing depends on
// a generator's implementation across Go versions.
type deriver struct {
	seed  uint64
	study int
}

func (d deriver) bytes(what string) [sha256.Size]byte {
	h := sha256.New()
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], d.seed)
	binary.LittleEndian.PutUint64(b[8:], uint64(d.study))
	h.Write(b[:])
	h.Write([]byte(what))
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

func (d deriver) uint64(what string) uint64 {
	b := d.bytes(what)
	return binary.LittleEndian.Uint64(b[:8])
}

// intn returns a number in [0, n); the bias of the modulo is below 2⁻⁴⁰ for the small n used.
func (d deriver) intn(what string, n int) int {
	return int(d.uint64(what) % uint64(n))
}

// uid returns a UID under the 2.25 arc (PS3.5 §B.2) whose UUID is name-based: version 8 of
// RFC 9562, its 122 free bits taken from the SHA-256 of the seed, the study and what.
func (d deriver) uid(what string) string {
	sum := d.bytes("uid " + what)
	b := sum[:16]
	b[6] = b[6]&0x0f | 0x80 // UUID version 8
	b[8] = b[8]&0x3f | 0x80 // UUID variant of RFC 9562
	return "2.25." + new(big.Int).SetBytes(b).String()
}

// digits returns n decimal digits.
func (d deriver) digits(what string, n int) string {
	sum := d.bytes(what)
	out := make([]byte, n)
	for i := range out {
		out[i] = '0' + sum[i%len(sum)]%10
	}
	return string(out)
}

// firstStudyDay and studyDays bound the synthetic study dates: six years from 2020.
var firstStudyDay = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)

const studyDays = 6 * 365

// studyTime is when the study took place: a day in the six years from 2020, between 07:00 and
// 19:00.
func (d deriver) studyTime() time.Time {
	day := firstStudyDay.AddDate(0, 0, d.intn("study day", studyDays))
	return day.Add(7*time.Hour + time.Duration(d.intn("study second", 12*3600))*time.Second)
}
