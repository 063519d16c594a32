// Package webhook delivers pacsflow events to HTTP endpoints, signed so that a receiver can
// tell a delivery came from pacsflow, was not altered, and is not an old one played again.
//
// A delivery is a POST of a JSON body with three headers:
//
//	Pacsflow-Event:     study.triaged
//	Pacsflow-Delivery:  the delivery's ID, the same on every retry of it
//	Pacsflow-Signature: t=1700000000,v1=33d775e205e3d8f92bbb3fc8bf0c1ed18fb2d924dd2ca872e4955b62181255b1
//
// t is when the delivery was signed, in Unix seconds. v1 is the lowercase hex
// HMAC-SHA256, keyed with the endpoint's secret, of t exactly as written in the header, a
// '.', and the body bytes exactly as sent. The timestamp is inside the MAC so that it cannot
// be refreshed: a captured delivery verifies only while t is within the receiver's tolerance
// of its clock, so replays are limited to that window, and the receiver closes it by
// de-duplicating on Pacsflow-Delivery (retries carry the same ID too).
//
// A receiver must verify the raw body before decoding it (re-encoded JSON does not verify)
// with [Verify] and a tolerance of a few minutes. The header may hold several v1 entries and
// Verify accepts several secrets, so a secret can be rotated without a moment when
// deliveries fail: the receiver accepts the old and the new secret, the sender moves to the
// new one, then the receiver drops the old. Keys other than t and v1 are ignored, which
// leaves room for a later scheme to be sent beside v1.
package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Header names of a delivery.
const (
	// HeaderSignature holds "t=<unix seconds>,v1=<hex HMAC-SHA256>"; see the package doc.
	HeaderSignature = "Pacsflow-Signature"
	// HeaderDelivery holds the delivery ID, stable across retries: receivers de-duplicate on it.
	HeaderDelivery = "Pacsflow-Delivery"
	// HeaderEvent names what happened, e.g. "study.triaged".
	HeaderEvent = "Pacsflow-Event"
)

// Errors of Verify, matched with errors.Is; those returned are wrapped with the details.
var (
	ErrNoSignature = errors.New("webhook: no " + HeaderSignature + " header")
	ErrMalformed   = errors.New("webhook: malformed " + HeaderSignature + " header")
	ErrTimestamp   = errors.New("webhook: signature timestamp outside the tolerance")
	ErrMismatch    = errors.New("webhook: no signature matches the body with any secret")
)

// Sign returns the Pacsflow-Signature value for body sent at t.
func Sign(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Verify checks a Pacsflow-Signature header value against body: one of its v1 signatures
// must match with one of the secrets, and its timestamp must be within tolerance of now,
// earlier or later (clocks differ). Empty secrets are skipped, so that an unset "previous
// secret" during a rotation does not let anyone sign; with no other secret Verify fails.
//
// The error wraps ErrNoSignature, ErrMalformed (saying what is wrong), ErrMismatch or
// ErrTimestamp. The signature is checked before the timestamp, so ErrTimestamp means a
// delivery that pacsflow did sign, but too long ago or ahead of now: a replay or a clock out
// of step.
func Verify(header string, body []byte, now time.Time, tolerance time.Duration, secrets ...[]byte) error {
	if !hasSecret(secrets) {
		return errors.New("webhook: Verify needs a non-empty secret")
	}
	h, err := parseHeader(header)
	if err != nil {
		return err
	}
	if !h.matches(body, secrets) {
		return ErrMismatch
	}
	// Sub saturates rather than overflows, so absurd timestamps still compare correctly.
	age := now.Sub(time.Unix(h.unix, 0))
	switch {
	case age > tolerance:
		return fmt.Errorf("%w: signed %v ago, tolerance %v", ErrTimestamp, age, tolerance)
	case age < -tolerance:
		return fmt.Errorf("%w: signed %v in the future, tolerance %v", ErrTimestamp, age.Abs(), tolerance)
	}
	return nil
}

type header struct {
	ts   string // as written: it is what was signed
	unix int64
	v1   [][sha256.Size]byte
}

func parseHeader(s string) (header, error) {
	var h header
	if strings.TrimSpace(s) == "" {
		return h, ErrNoSignature
	}
	seenT := false
	for part := range strings.SplitSeq(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return h, fmt.Errorf("%w: element %s is not key=value", ErrMalformed, clip(part))
		}
		switch k {
		case "t":
			if seenT {
				return h, fmt.Errorf("%w: more than one t=", ErrMalformed)
			}
			seenT = true
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return h, fmt.Errorf("%w: t=%s is not a time in Unix seconds", ErrMalformed, clip(v))
			}
			h.ts, h.unix = v, n
		case "v1":
			if len(v) != 2*sha256.Size {
				return h, fmt.Errorf("%w: v1 has %d characters, want %d hex digits (HMAC-SHA256)", ErrMalformed, len(v), 2*sha256.Size)
			}
			var sig [sha256.Size]byte
			if _, err := hex.Decode(sig[:], []byte(v)); err != nil {
				return h, fmt.Errorf("%w: v1 is not hex: %v", ErrMalformed, err)
			}
			h.v1 = append(h.v1, sig)
		}
	}
	switch {
	case !seenT:
		return h, fmt.Errorf("%w: no t= timestamp", ErrMalformed)
	case len(h.v1) == 0:
		return h, fmt.Errorf("%w: no v1= signature", ErrMalformed)
	}
	return h, nil
}

// clip quotes s for an error, cut short: s comes from the network, and errors go to logs.
func clip(s string) string {
	const n = 40
	if len(s) > n {
		return strconv.Quote(s[:n]) + "…"
	}
	return strconv.Quote(s)
}

func (h header) matches(body []byte, secrets [][]byte) bool {
	for _, secret := range secrets {
		if len(secret) == 0 {
			continue
		}
		want := mac(secret, h.ts, body)
		for _, sig := range h.v1 {
			if hmac.Equal(want, sig[:]) {
				return true
			}
		}
	}
	return false
}

func hasSecret(secrets [][]byte) bool {
	for _, s := range secrets {
		if len(s) > 0 {
			return true
		}
	}
	return false
}
