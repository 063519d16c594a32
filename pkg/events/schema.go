package events

//go:generate go run ./internal/schemagen

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/pacsflow/pacsflow/schemas"
)

// SchemaError reports event data that the JSON Schema of its type rejects.
type SchemaError struct {
	// Type is the event type.
	Type string
	// Violations are the values the schema rejects, sorted by path.
	Violations []Violation
}

// Violation is a value that a schema rejects.
type Violation struct {
	// Path is the JSON Pointer (RFC 6901) of the value in the data: "" for
	// the whole data, "/series/0/instances/1/object/sha256" for a digest.
	Path string
	// Message says what is wrong with it.
	Message string
}

func (e *SchemaError) Error() string {
	msgs := make([]string, len(e.Violations))
	for i, v := range e.Violations {
		path := v.Path
		if path == "" {
			path = "the top level"
		}
		msgs[i] = "at " + path + ": " + v.Message
	}
	return fmt.Sprintf("%s data does not match its schema: %s", e.Type, strings.Join(msgs, "; "))
}

// compiledSchemas compiles the schema of every event type of Definitions
// from schemas.FS, once: the result serves every validation that follows.
// Formats are asserted because date-time is part of the contract, where
// draft 2020-12 would only annotate it.
var compiledSchemas = sync.OnceValues(func() (map[string]*jsonschema.Schema, error) {
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	out := map[string]*jsonschema.Schema{}
	for _, d := range Definitions() {
		b, err := schemas.FS.ReadFile(schemas.File(d.Type))
		if err != nil {
			return nil, fmt.Errorf("schema of %s: %w", d.Type, err)
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("schema of %s: %w", d.Type, err)
		}
		id := schemas.ID(d.Type)
		if err := c.AddResource(id, doc); err != nil {
			return nil, fmt.Errorf("schema of %s: %w", d.Type, err)
		}
		if out[d.Type], err = c.Compile(id); err != nil {
			return nil, fmt.Errorf("schema of %s: %w", d.Type, err)
		}
	}
	return out, nil
})

// ValidateData checks data, the JSON body of an event of type eventType,
// against the type's JSON Schema in schemas/. It returns a *SchemaError
// naming each value the schema rejects, and another error when the type is
// not one of Definitions or data is not a single JSON value.
func ValidateData(eventType string, data []byte) error {
	all, err := compiledSchemas()
	if err != nil {
		return err
	}
	sch, ok := all[eventType]
	if !ok {
		return fmt.Errorf("event type %q is not one of the contract's types", eventType)
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("%s data is not JSON: %w", eventType, err)
	}
	var ve *jsonschema.ValidationError
	if err := sch.Validate(v); errors.As(err, &ve) {
		se := &SchemaError{Type: eventType, Violations: violations(*ve.DetailedOutput(), nil)}
		sort.Slice(se.Violations, func(i, j int) bool {
			a, b := se.Violations[i], se.Violations[j]
			return a.Path < b.Path || a.Path == b.Path && a.Message < b.Message
		})
		return se
	} else if err != nil {
		return err
	}
	return nil
}

// violations collects the leaves of a validation's output: the values
// that failed, where the inner nodes only say which part of the schema
// they failed in.
func violations(u jsonschema.OutputUnit, out []Violation) []Violation {
	if len(u.Errors) == 0 && u.Error != nil {
		return append(out, Violation{Path: u.InstanceLocation, Message: u.Error.String()})
	}
	for _, c := range u.Errors {
		out = violations(c, out)
	}
	return out
}

// definitions are Definitions by type.
var definitions = sync.OnceValue(func() map[string]Definition {
	m := map[string]Definition{}
	for _, d := range Definitions() {
		m[d.Type] = d
	}
	return m
})

// ValidateMessage checks a message of the event stream, as Decode receives
// it, against the contract of docs/events.md:
//   - the CloudEvents attributes that pacsflow always sets: ce-specversion
//     1.0; ce-id, ce-type and ce-source not empty; ce-time in RFC 3339;
//     ce-subject equal to the data's study.study_instance_uid where the
//     data has one; content-type application/json;
//   - Nats-Msg-Id equal to ce-id, which JetStream de-duplication relies on;
//   - the NATS subject of the form the type's Definition gives: its literal
//     tokens, and a subject-safe token (see Token) for each placeholder;
//   - the data, with ValidateData.
//
// It reports every problem it finds, joined in one error.
func ValidateMessage(subject string, h nats.Header, data []byte) error {
	var errs []error
	problem := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if v := h.Get(HeaderSpecVersion); v != specVersion {
		problem("%s is %q, want %q", HeaderSpecVersion, v, specVersion)
	}
	id, typ := h.Get(HeaderID), h.Get(HeaderType)
	for _, k := range []string{HeaderID, HeaderType, HeaderSource} {
		if h.Get(k) == "" {
			problem("%s is missing", k)
		}
	}
	if t := h.Get(HeaderTime); t == "" {
		problem("%s is missing", HeaderTime)
	} else if _, err := time.Parse(time.RFC3339Nano, t); err != nil {
		problem("%s %q is not an RFC 3339 time", HeaderTime, t)
	}
	if ct := h.Get(HeaderContentType); ct != contentTypeJSON {
		problem("%s is %q, want %q", HeaderContentType, ct, contentTypeJSON)
	}
	if m := h.Get(nats.MsgIdHdr); m != id {
		problem("%s %q differs from %s %q", nats.MsgIdHdr, m, HeaderID, id)
	}
	if d, ok := definitions()[typ]; ok && !subjectMatches(subject, d.Subject) {
		problem("NATS subject %s is not of the form %s", subject, d.Subject)
	}
	var about struct {
		Study *struct {
			UID string `json:"study_instance_uid"`
		} `json:"study"`
	}
	if json.Unmarshal(data, &about) == nil && about.Study != nil && h.Get(HeaderSubject) != about.Study.UID {
		problem("%s %q is not the data's study_instance_uid %q", HeaderSubject, h.Get(HeaderSubject), about.Study.UID)
	}
	if typ != "" {
		if err := ValidateData(typ, data); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("event %q on %s breaks the contract: %w", id, subject, errors.Join(errs...))
	}
	return nil
}

// subjectMatches tells whether subject has the form of pattern, a
// Definition's subject: literal tokens, and placeholders such as
// <called AE> that stand for one subject-safe token each.
func subjectMatches(subject, pattern string) bool {
	got, want := strings.Split(subject, "."), strings.Split(pattern, ".")
	if len(got) != len(want) {
		return false
	}
	for i, w := range want {
		if strings.HasPrefix(w, "<") && strings.HasSuffix(w, ">") {
			if Token(got[i]) != got[i] {
				return false
			}
		} else if got[i] != w {
			return false
		}
	}
	return true
}
