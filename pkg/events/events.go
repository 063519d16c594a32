// Package events is pacsflow's event contract on NATS JetStream: the
// subjects, the CloudEvents envelope, the Go types of every event's data,
// and the stream that keeps them.
//
// Envelope: CloudEvents 1.0 in binary content mode. The event's attributes
// travel as ce- headers of the NATS message and the data is the message
// body, JSON. Binary mode was chosen over structured mode because NATS
// headers can be inspected and filtered without parsing the body (the nats
// CLI shows them, consumers route on them), the body stays the plain JSON
// the schema describes, and the JetStream de-duplication header
// (Nats-Msg-Id) sits beside ce-id, which it always equals.
//
// The package knows nothing of DICOM networking.
package events

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// CloudEvents attribute headers (binary content mode over NATS).
const (
	HeaderSpecVersion = "ce-specversion"
	HeaderID          = "ce-id"
	HeaderType        = "ce-type"
	HeaderSource      = "ce-source"
	HeaderSubject     = "ce-subject"
	HeaderTime        = "ce-time"
	HeaderContentType = "content-type"
	specVersion       = "1.0"
	contentTypeJSON   = "application/json"
)

// Event is one event: its CloudEvents attributes and its data.
type Event struct {
	// ID is unique per event. Derived events use a deterministic ID so that
	// a retried publish is de-duplicated by JetStream.
	ID string
	// Type is the versioned event type, e.g. TypeStudyReceived.
	Type string
	// Source names the service instance that emitted it, e.g. "pacsflow/ingest/host-1".
	Source string
	// Subject is the Study Instance UID the event is about.
	Subject string
	Time    time.Time
	// NATSSubject is where the event is published.
	NATSSubject string
	// Data is marshalled to JSON as the message body.
	Data any
}

// Message encodes e as a NATS message in binary content mode. The
// Nats-Msg-Id header carries the event ID for de-duplication.
func (e *Event) Message() (*nats.Msg, error) {
	if e.ID == "" || e.Type == "" || e.Source == "" || e.NATSSubject == "" {
		return nil, errors.New("event lacks id, type, source or subject")
	}
	body, err := json.Marshal(e.Data)
	if err != nil {
		return nil, fmt.Errorf("encode %s data: %w", e.Type, err)
	}
	m := nats.NewMsg(e.NATSSubject)
	m.Data = body
	m.Header.Set(HeaderSpecVersion, specVersion)
	m.Header.Set(HeaderID, e.ID)
	m.Header.Set(HeaderType, e.Type)
	m.Header.Set(HeaderSource, e.Source)
	if e.Subject != "" {
		m.Header.Set(HeaderSubject, e.Subject)
	}
	m.Header.Set(HeaderTime, e.Time.UTC().Format(time.RFC3339Nano))
	m.Header.Set(HeaderContentType, contentTypeJSON)
	m.Header.Set(nats.MsgIdHdr, e.ID)
	return m, nil
}

// Received is an event read back from a message: its attributes, and its
// data still encoded.
type Received struct {
	ID, Type, Source, Subject string
	Time                      time.Time
	NATSSubject               string
	Data                      json.RawMessage
}

// Decode reads the CloudEvents attributes of a message published with
// Event.Message.
func Decode(subject string, h nats.Header, data []byte) (*Received, error) {
	if v := h.Get(HeaderSpecVersion); v != specVersion {
		return nil, fmt.Errorf("message on %s is not a CloudEvents %s event (specversion %q)", subject, specVersion, v)
	}
	r := &Received{
		ID: h.Get(HeaderID), Type: h.Get(HeaderType), Source: h.Get(HeaderSource), Subject: h.Get(HeaderSubject),
		NATSSubject: subject, Data: json.RawMessage(data),
	}
	if r.ID == "" || r.Type == "" || r.Source == "" {
		return nil, fmt.Errorf("event on %s lacks id, type or source", subject)
	}
	if t := h.Get(HeaderTime); t != "" {
		var err error
		if r.Time, err = time.Parse(time.RFC3339Nano, t); err != nil {
			return nil, fmt.Errorf("event %s: time %q: %w", r.ID, t, err)
		}
	}
	return r, nil
}

// Token makes s usable as one token of a NATS subject: characters other
// than ASCII letters, digits, '-', '_' and '+' become '_', and an empty value
// becomes "_". Distinct values can share a token ("CT 1" and "CT_1"); it is
// meant for filtering, the event data carries the exact value.
func Token(s string) string {
	if s == "" {
		return "_"
	}
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '+') {
			b[i] = '_'
		}
	}
	return string(b)
}
